//! Client certificates for APNs certificate auth, in the two forms Apple's tools give them:
//!
//! - **PEM**: the certificate (and any intermediates) in `certificate_file`, its private key
//!   in `certificate_key_file` (or both in the first file);
//! - **PKCS#12** (`.p12`, what Keychain Access exports from the certificate the Apple
//!   developer portal issued): one file holding key and chain, opened with
//!   `certificate_password`. Modern (PBES2, AES-256-CBC, HMAC-SHA256 MAC) and legacy
//!   (SHA-1 PBE with 3DES or 40-bit RC2, SHA-1 MAC) encryption are both read.
//!
//! Either way the result is one PEM identity (chain, then PKCS#8 key) for the HTTP client,
//! and the leaf certificate's expiry for `pushline_credential_expiry_timestamp_seconds`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use p12_keystore::{KeyStore, Pkcs12ImportPolicy};

/// A client certificate ready for the HTTP client.
pub struct ClientCertificate {
    /// The certificate chain (leaf first) and the private key, as PEM.
    pub identity_pem: Vec<u8>,
    /// When the leaf certificate expires (Unix seconds).
    pub not_after: i64,
}

/// Why a certificate could not be read; `setting` names the part of the configuration at
/// fault (`certificate_file`, `certificate_key_file` or `certificate_password`).
#[derive(Debug, PartialEq, Eq)]
pub struct CertificateError {
    /// The setting (without the `apns.apps[i].` prefix).
    pub setting: &'static str,
    /// What is wrong.
    pub message: String,
}

fn error(setting: &'static str, message: impl Into<String>) -> CertificateError {
    CertificateError {
        setting,
        message: message.into(),
    }
}

/// Whether `bytes` is PEM text rather than DER (a PKCS#12 file is DER).
pub fn is_pem(bytes: &[u8]) -> bool {
    bytes.trim_ascii_start().starts_with(b"-----BEGIN ")
}

/// Reads a client certificate: PEM `certificate` with `key` (PEM, or `None` when the
/// certificate file holds the key too), or a PKCS#12 `certificate` opened with `password`
/// (`None` is the empty password).
pub fn read(
    certificate: &[u8],
    key: Option<&[u8]>,
    password: Option<&str>,
) -> Result<ClientCertificate, CertificateError> {
    if is_pem(certificate) {
        if password.is_some() {
            return Err(error(
                "certificate_password",
                "is only for a PKCS#12 (.p12) certificate_file; this one is PEM",
            ));
        }
        let mut identity_pem = certificate.to_vec();
        match key {
            Some(key) => {
                identity_pem.push(b'\n');
                identity_pem.extend_from_slice(key);
            }
            None if !contains_private_key(certificate) => {
                return Err(error(
                    "certificate_key_file",
                    "is missing: the PEM certificate_file holds no private key",
                ));
            }
            None => {}
        }
        let not_after = leaf_not_after(certificate).map_err(|e| error("certificate_file", e))?;
        return Ok(ClientCertificate {
            identity_pem,
            not_after,
        });
    }
    if key.is_some() {
        return Err(error(
            "certificate_key_file",
            "must not be set: a PKCS#12 (.p12) certificate_file holds the key itself",
        ));
    }
    read_pkcs12(certificate, password.unwrap_or(""))
}

fn read_pkcs12(data: &[u8], password: &str) -> Result<ClientCertificate, CertificateError> {
    let store =
        KeyStore::from_pkcs12(data, password, Pkcs12ImportPolicy::Strict).map_err(|e| match e {
            p12_keystore::error::Error::MacError(_) => error(
                "certificate_password",
                "does not open the PKCS#12 certificate_file (wrong password)",
            ),
            p12_keystore::error::Error::DerError(_)
            | p12_keystore::error::Error::InvalidVersion => error(
                "certificate_file",
                format!("is neither PEM nor PKCS#12 (.p12): {e}"),
            ),
            other => error(
                "certificate_file",
                format!("cannot be read as PKCS#12: {other}"),
            ),
        })?;
    let Some((_, chain)) = store.private_key_chain() else {
        return Err(error(
            "certificate_file",
            "holds no private key with its certificate: export the certificate together with its key from Keychain Access",
        ));
    };
    let Some(leaf) = chain.certs().first() else {
        return Err(error("certificate_file", "holds a key but no certificate"));
    };
    let not_after = x509_parser::parse_x509_certificate(leaf.as_der())
        .map_err(|e| error("certificate_file", format!("not an X.509 certificate: {e}")))?
        .1
        .validity()
        .not_after
        .timestamp();
    let mut identity_pem = Vec::new();
    for cert in chain.certs() {
        identity_pem.extend(pem("CERTIFICATE", cert.as_der()));
    }
    identity_pem.extend(pem("PRIVATE KEY", chain.key().as_der()));
    Ok(ClientCertificate {
        identity_pem,
        not_after,
    })
}

fn contains_private_key(pem: &[u8]) -> bool {
    pem.windows(b"PRIVATE KEY-----".len())
        .any(|w| w == b"PRIVATE KEY-----")
}

/// The `notAfter` (Unix seconds) of the first certificate in PEM text.
pub fn leaf_not_after(pem: &[u8]) -> Result<i64, String> {
    let start = pem
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .position(|w| w == b"-----BEGIN CERTIFICATE-----")
        .ok_or("holds no PEM certificate")?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem[start..])
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

/// `der` as a PEM block labelled `label`.
fn pem(label: &str, der: &[u8]) -> Vec<u8> {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_is_told_from_der() {
        assert!(is_pem(b"\n  -----BEGIN CERTIFICATE-----\n"));
        assert!(!is_pem(&[0x30, 0x82, 0x0a, 0x01]));
    }

    #[test]
    fn pem_blocks_wrap_at_64_columns() {
        let text = String::from_utf8(pem("CERTIFICATE", &[7u8; 100])).expect("ascii");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines.last(), Some(&"-----END CERTIFICATE-----"));
        let body: String = lines[1..lines.len() - 1].concat();
        assert_eq!(STANDARD.decode(body).expect("base64"), vec![7u8; 100]);
    }

    #[test]
    fn garbage_is_neither_pem_nor_pkcs12() {
        let e = read(&[0x30, 0x03, 0x02, 0x01, 0x09], None, Some("x"))
            .err()
            .expect("refused");
        assert_eq!(e.setting, "certificate_file");
    }

    #[test]
    fn a_password_with_a_pem_certificate_is_refused() {
        let e = read(b"-----BEGIN CERTIFICATE-----\n", None, Some("x"))
            .err()
            .expect("refused");
        assert_eq!(e.setting, "certificate_password");
    }

    #[test]
    fn a_pem_certificate_without_a_key_is_refused() {
        let e = read(b"-----BEGIN CERTIFICATE-----\n", None, None)
            .err()
            .expect("refused");
        assert_eq!(e.setting, "certificate_key_file");
    }
}
