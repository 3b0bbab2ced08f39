//! Bearer API-key authentication for the device API. Keys are configured as SHA-256
//! hashes; the presented key is hashed and compared in constant time.

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AuthConfig;
use crate::error::ApiError;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The API key's name (or `insecure` when auth is off).
    pub name: String,
}

/// Checks the request's `Authorization: Bearer <key>`.
#[derive(Clone)]
pub struct Authenticator {
    keys: Vec<(String, [u8; 32])>,
    insecure: bool,
}

impl Authenticator {
    /// From validated configuration.
    pub fn new(config: &AuthConfig) -> Self {
        let keys = config
            .api_keys
            .iter()
            .filter_map(|k| {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(k.sha256.to_ascii_lowercase(), &mut hash).ok()?;
                Some((k.name.clone(), hash))
            })
            .collect();
        Authenticator {
            keys,
            insecure: config.insecure_no_auth,
        }
    }

    /// The caller, or 401.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if self.insecure {
            return Ok(Caller {
                name: "insecure".into(),
            });
        }
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or(ApiError::Unauthorized("missing bearer API key"))?;
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (name, key) in &self.keys {
            if bool::from(key.ct_eq(&hash)) {
                found = Some(name.clone());
            }
        }
        found
            .map(|name| Caller { name })
            .ok_or(ApiError::Unauthorized("unknown API key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKey;

    fn auth() -> Authenticator {
        let sha = hex::encode(Sha256::digest(b"s3cret"));
        Authenticator::new(&AuthConfig {
            api_keys: vec![ApiKey {
                name: "backend".into(),
                sha256: sha,
            }],
            insecure_no_auth: false,
        })
    }

    fn bearer(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            v.parse().expect("header"),
        );
        h
    }

    #[test]
    fn the_right_key_names_its_holder() {
        assert_eq!(
            auth()
                .authenticate(&bearer("Bearer s3cret"))
                .expect("ok")
                .name,
            "backend"
        );
    }

    #[test]
    fn wrong_or_missing_keys_are_refused() {
        assert!(auth().authenticate(&bearer("Bearer nope")).is_err());
        assert!(auth().authenticate(&bearer("Basic s3cret")).is_err());
        assert!(auth().authenticate(&HeaderMap::new()).is_err());
    }
}
