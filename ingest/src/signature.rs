//! `X-Spark-Signature`: lowercase hex HMAC-SHA1 of the raw request body, keyed with the
//! webhook secret. Several secrets may be valid at once (rotation). The comparison is
//! constant-time (`Mac::verify_slice`).

use hmac::{Hmac, Mac};
use pipeline::config::Secret;
use sha1::Sha1;

/// The header Webex signs with.
pub const HEADER: &str = "x-spark-signature";

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Spark-Signature` header.
    #[error("missing X-Spark-Signature header")]
    Missing,
    /// Not 40 hex digits.
    #[error("X-Spark-Signature is not a hex HMAC-SHA1")]
    Malformed,
    /// Well-formed, but no configured secret produces it.
    #[error("X-Spark-Signature does not match")]
    Mismatch,
}

/// Checks `header` (the header's value, if present) against `body` under each secret.
pub fn verify(
    body: &[u8],
    header: Option<&[u8]>,
    secrets: &[Secret],
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let header = std::str::from_utf8(header)
        .map_err(|_| SignatureError::Malformed)?
        .trim();
    let mut expected = [0u8; 20];
    hex::decode_to_slice(header, &mut expected).map_err(|_| SignatureError::Malformed)?;
    let mut matched = false;
    // Check every secret, so timing does not tell which one matched.
    for secret in secrets {
        let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret.expose().as_bytes()) else {
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

/// The signature a sender with `secret` puts on `body` (for tests, tools and load
/// generators).
pub fn sign(body: &[u8], secret: &str) -> String {
    let mut mac =
        Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
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
    fn no_secrets_means_nothing_matches() {
        let header = sign(b"{}", "key");
        assert_eq!(
            verify(b"{}", Some(header.as_bytes()), &[]),
            Err(SignatureError::Mismatch)
        );
    }
}
