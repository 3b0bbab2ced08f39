//! Webhook signatures: `X-Spark-Signature` is the lowercase hex HMAC-SHA1 of the raw
//! request body keyed with the webhook secret; optionally (`webex.sha256_header`) an
//! HMAC-SHA256 in a second header as well. Several secrets may be valid at once
//! (rotation). Comparisons are constant-time (`Mac::verify_slice`) and every secret is
//! tried, so timing tells nothing about which one matched.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use pipeline::config::Secret;
use sha1::Sha1;
use sha2::Sha256;

/// The header Webex signs with.
pub const HEADER: &str = "x-spark-signature";

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature header.
    #[error("missing signature header")]
    Missing,
    /// Not hex of the right length.
    #[error("the signature is not a hex HMAC of the right length")]
    Malformed,
    /// Well-formed, but no configured secret produces it.
    #[error("the signature does not match")]
    Mismatch,
}

/// Checks an `X-Spark-Signature` value (if present) against `body` under each secret.
pub fn verify(
    body: &[u8],
    header: Option<&[u8]>,
    secrets: &[Secret],
) -> Result<(), SignatureError> {
    verify_mac::<Hmac<Sha1>, 20>(body, header, secrets)
}

/// Checks an HMAC-SHA256 value (hex, `sha256=` prefix allowed) against `body`.
pub fn verify_sha256(
    body: &[u8],
    header: Option<&[u8]>,
    secrets: &[Secret],
) -> Result<(), SignatureError> {
    let header = header.map(|h| h.strip_prefix(b"sha256=").unwrap_or(h));
    verify_mac::<Hmac<Sha256>, 32>(body, header, secrets)
}

fn verify_mac<M: Mac + KeyInit, const N: usize>(
    body: &[u8],
    header: Option<&[u8]>,
    secrets: &[Secret],
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let header = std::str::from_utf8(header)
        .map_err(|_| SignatureError::Malformed)?
        .trim();
    let mut expected = [0u8; N];
    hex::decode_to_slice(header, &mut expected).map_err(|_| SignatureError::Malformed)?;
    let mut matched = false;
    for secret in secrets {
        let Ok(mut mac) = <M as KeyInit>::new_from_slice(secret.expose().as_bytes()) else {
            continue;
        };
        mac.update(body);
        matched |= mac.verify_slice(&expected).is_ok();
    }
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn sign_mac<M: Mac + KeyInit>(body: &[u8], secret: &str) -> String {
    let mut mac =
        <M as KeyInit>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The `X-Spark-Signature` a sender with `secret` puts on `body` (tests, tools, load).
pub fn sign(body: &[u8], secret: &str) -> String {
    sign_mac::<Hmac<Sha1>>(body, secret)
}

/// The SHA-256 variant of [`sign`].
pub fn sign_sha256(body: &[u8], secret: &str) -> String {
    sign_mac::<Hmac<Sha256>>(body, secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(values: &[&str]) -> Vec<Secret> {
        values.iter().map(|v| Secret::new(*v)).collect()
    }

    #[test]
    fn known_vector_matches() {
        // HMAC-SHA1("key", "The quick brown fox jumps over the lazy dog")
        let body = b"The quick brown fox jumps over the lazy dog";
        assert_eq!(
            sign(body, "key"),
            "de7c9b85b8b78aa6bc8a7a36f70a90701c9db4d9"
        );
        assert_eq!(
            sign_sha256(body, "key"),
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
        let header = sign(body, "key");
        assert_eq!(
            verify(body, Some(header.as_bytes()), &secrets(&["key"])),
            Ok(())
        );
    }

    #[test]
    fn any_rotated_secret_is_accepted() {
        let body = b"{}";
        let header = sign(body, "new");
        assert_eq!(
            verify(body, Some(header.as_bytes()), &secrets(&["old", "new"])),
            Ok(())
        );
    }

    #[test]
    fn wrong_missing_and_malformed_are_told_apart() {
        let body = b"{}";
        let s = secrets(&["key"]);
        let other = sign(body, "other");
        assert_eq!(
            verify(body, Some(other.as_bytes()), &s),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify(body, None, &s), Err(SignatureError::Missing));
        assert_eq!(
            verify(body, Some(b"xyz"), &s),
            Err(SignatureError::Malformed)
        );
        let tampered = sign(b"{ }", "key");
        assert_eq!(
            verify(body, Some(tampered.as_bytes()), &s),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn sha256_variant_checks_its_own_mac() {
        let body = b"{}";
        let s = secrets(&["key"]);
        let good = sign_sha256(body, "key");
        assert_eq!(verify_sha256(body, Some(good.as_bytes()), &s), Ok(()));
        assert_eq!(
            verify_sha256(body, Some(format!("sha256={good}").as_bytes()), &s),
            Ok(())
        );
        let sha1 = sign(body, "key");
        assert_eq!(
            verify_sha256(body, Some(sha1.as_bytes()), &s),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_sha256(b"{ }", Some(good.as_bytes()), &s),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn no_secrets_means_nothing_matches() {
        let header = sign(b"{}", "key");
        assert_eq!(
            verify(b"{}", Some(header.as_bytes()), &[]),
            Err(SignatureError::Mismatch)
        );
    }
}
