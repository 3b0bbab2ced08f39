//! APNs provider tokens: ES256 JWTs (`kid` = key id, `iss` = team id, `iat`) signed with
//! the team's `.p8` key.
//!
//! Apple rejects tokens older than an hour and answers `TooManyProviderTokenUpdates` to
//! providers that change tokens more often than every 20 minutes, so a token is reused
//! for `token_refresh_secs` and never made per request. `iat` is aligned down to a
//! multiple of that period and ECDSA signing is deterministic (RFC 6979), so every
//! replica presents the same token at the same time. After `ExpiredProviderToken`
//! [`ProviderToken::renew`] signs once with the current time (a second earlier if that is
//! the rejected token's own `iat`), and that token then serves for a whole period.

use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::DecodePrivateKey;

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("not a PKCS#8 P-256 private key (.p8): {0}")]
pub struct KeyError(String);

/// A team's signing key and its current token.
pub struct ProviderToken {
    team_id: String,
    key_id: String,
    key: SigningKey,
    refresh_secs: u64,
    current: RwLock<Option<(u64, Arc<str>)>>,
}

impl ProviderToken {
    /// From the `.p8` file's PEM text.
    pub fn from_p8(
        team_id: &str,
        key_id: &str,
        pem: &str,
        refresh_secs: u64,
    ) -> Result<Self, KeyError> {
        let key = SigningKey::from_pkcs8_pem(pem).map_err(|e| KeyError(e.to_string()))?;
        Ok(ProviderToken {
            team_id: team_id.to_owned(),
            key_id: key_id.to_owned(),
            key,
            refresh_secs: refresh_secs.max(1),
            current: RwLock::new(None),
        })
    }

    /// The token to use at `now_secs`: the cached one while it is younger than the
    /// period (a period's own token until the period ends; a renewed one for a whole
    /// period from its renewal, so a renewal is not followed by another update at the
    /// period's end), else a new one with `iat` at the period's start.
    pub fn current(&self, now_secs: u64) -> Arc<str> {
        let period_start = now_secs - now_secs % self.refresh_secs;
        if let Ok(guard) = self.current.read() {
            if let Some((iat, token)) = guard.as_ref() {
                if *iat <= now_secs && now_secs - *iat < self.refresh_secs {
                    return token.clone();
                }
            }
        }
        self.replace(period_start, None)
    }

    /// After APNs rejected `rejected` as expired: signs a token with `iat = now_secs`,
    /// unless another request already replaced it.
    pub fn renew(&self, now_secs: u64, rejected: &str) -> Arc<str> {
        self.replace(now_secs, Some(rejected))
    }

    fn replace(&self, iat: u64, only_if: Option<&str>) -> Arc<str> {
        let Ok(mut guard) = self.current.write() else {
            return Arc::from(sign(&self.key, &self.key_id, &self.team_id, iat));
        };
        let mut iat = iat;
        if let Some((cached_iat, token)) = guard.as_ref() {
            let someone_else_renewed = only_if.is_some_and(|rejected| &**token != rejected);
            let same_period = only_if.is_none() && *cached_iat >= iat;
            if someone_else_renewed || same_period {
                return token.clone();
            }
            // Signing is deterministic: a renewal dated the second of the token it
            // replaces would be that token again, so it is dated a second earlier.
            if only_if.is_some() && *cached_iat == iat {
                iat = iat.saturating_sub(1);
            }
        }
        let token: Arc<str> = Arc::from(sign(&self.key, &self.key_id, &self.team_id, iat));
        *guard = Some((iat, token.clone()));
        token
    }
}

/// Signs an ES256 provider token.
pub fn sign(key: &SigningKey, key_id: &str, team_id: &str, iat: u64) -> String {
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"ES256","kid":"{key_id}"}}"#));
    let claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"iss":"{team_id}","iat":{iat}}}"#));
    let signing_input = format!("{header}.{claims}");
    let signature: Signature = key.sign(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.to_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::VerifyingKey;
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::{EncodePrivateKey, LineEnding};

    fn pem() -> String {
        let key = SigningKey::from_slice(&[7u8; 32]).expect("key");
        key.to_pkcs8_pem(LineEnding::LF).expect("pem").to_string()
    }

    #[test]
    fn token_verifies_and_carries_kid_iss_iat() {
        let p = ProviderToken::from_p8("TEAM123456", "KEY1234567", &pem(), 1800).expect("key");
        let token = p.current(1_800 * 1000 + 5);
        let parts: Vec<&str> = token.split('.').collect();
        let header =
            String::from_utf8(URL_SAFE_NO_PAD.decode(parts[0]).expect("b64")).expect("utf8");
        let claims =
            String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("utf8");
        assert_eq!(header, r#"{"alg":"ES256","kid":"KEY1234567"}"#);
        assert_eq!(claims, r#"{"iss":"TEAM123456","iat":1800000}"#);
        let signature =
            Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).expect("b64")).expect("sig");
        let verifying = VerifyingKey::from(&SigningKey::from_slice(&[7u8; 32]).expect("key"));
        verifying
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .expect("valid");
    }

    #[test]
    fn token_is_reused_within_a_period_and_identical_across_replicas() {
        let a = ProviderToken::from_p8("T", "K", &pem(), 1800).expect("key");
        let b = ProviderToken::from_p8("T", "K", &pem(), 1800).expect("key");
        let t0 = 1_800 * 500;
        assert_eq!(a.current(t0 + 1), a.current(t0 + 1_799));
        assert_eq!(a.current(t0 + 10), b.current(t0 + 900));
        assert_ne!(a.current(t0 + 1_799), a.current(t0 + 1_800));
    }

    #[test]
    fn renew_signs_once_even_when_many_requests_saw_the_expiry() {
        let p = ProviderToken::from_p8("T", "K", &pem(), 1800).expect("key");
        let old = p.current(1_800 * 10);
        let renewed = p.renew(1_800 * 10 + 100, &old);
        assert_ne!(renewed, old);
        // A second request that also saw `old` rejected gets the renewed token, unchanged.
        assert_eq!(p.renew(1_800 * 10 + 101, &old), renewed);
        // And the renewed token serves the rest of the period, and a whole period from
        // its renewal: no second update right after it at the period's end.
        assert_eq!(p.current(1_800 * 10 + 500), renewed);
        assert_eq!(p.current(1_800 * 11 + 99), renewed);
        assert_ne!(p.current(1_800 * 11 + 100), renewed);
    }

    #[test]
    fn a_renewal_in_the_second_its_token_was_dated_is_a_new_token() {
        // Seen in CI: the first token of a period rejected in the period's first second.
        let p = ProviderToken::from_p8("T", "K", &pem(), 1800).expect("key");
        let start = 1_800 * 10;
        let old = p.current(start);
        let renewed = p.renew(start, &old);
        assert_ne!(renewed, old);
        assert_eq!(
            p.current(start),
            renewed,
            "the rejected token is not used again"
        );
        assert_eq!(p.current(start + 1_798), renewed);
    }

    #[test]
    fn garbage_is_not_a_key() {
        assert!(
            ProviderToken::from_p8(
                "T",
                "K",
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                1800
            )
            .is_err()
        );
    }
}
