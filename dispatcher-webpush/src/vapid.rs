//! VAPID (RFC 8292): every push carries `Authorization: vapid t=<JWT>, k=<public key>`,
//! an ES256 JWT whose `aud` is the push service's origin, `sub` the operator's contact and
//! `exp` at most 24 hours ahead, signed by the app's application server key.
//!
//! A push service sees many pushes from one app, so a token is signed once per origin and
//! reused until it is within a quarter of its lifetime of `exp`. Origins come from
//! subscriptions, which users choose: the cache keeps at most [`MAX_CACHED_ORIGINS`]
//! (by default), forgetting the least recently used.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::DecodePrivateKey;

/// Why an application server key could not be read.
#[derive(Debug, thiserror::Error)]
#[error("not a P-256 application server key (PKCS#8 PEM, or 32 bytes in base64url): {0}")]
pub struct KeyError(String);

/// Most origins whose token an app keeps.
pub const MAX_CACHED_ORIGINS: usize = 1_024;

/// A signed token, its `exp` and when it was last used (seconds).
struct Cached {
    exp: u64,
    token: Arc<str>,
    used: AtomicU64,
}

/// One app's application server key and its tokens, by origin.
pub struct Vapid {
    key: SigningKey,
    public: String,
    subject: String,
    lifetime_secs: u64,
    cache_limit: usize,
    tokens: RwLock<HashMap<String, Cached>>,
}

impl std::fmt::Debug for Vapid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vapid")
            .field("public", &self.public)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl Vapid {
    /// From the key's PKCS#8 PEM text or its raw 32-byte scalar in base64url (the form
    /// `web-push generate-vapid-keys` prints).
    pub fn new(key: &str, subject: &str, lifetime_secs: u64) -> Result<Self, KeyError> {
        let key = key.trim();
        let key = if key.starts_with("-----BEGIN") {
            SigningKey::from_pkcs8_pem(key).map_err(|e| KeyError(e.to_string()))?
        } else {
            let bytes = URL_SAFE_NO_PAD
                .decode(key.trim_end_matches('='))
                .map_err(|e| KeyError(e.to_string()))?;
            SigningKey::from_slice(&bytes).map_err(|e| KeyError(e.to_string()))?
        };
        let public = URL_SAFE_NO_PAD.encode(key.verifying_key().to_encoded_point(false).as_bytes());
        Ok(Vapid {
            key,
            public,
            subject: subject.to_owned(),
            lifetime_secs: lifetime_secs.clamp(60, 86_400),
            cache_limit: MAX_CACHED_ORIGINS,
            tokens: RwLock::new(HashMap::new()),
        })
    }

    /// The same key keeping at most `origins` tokens (at least one).
    pub fn with_cache_limit(mut self, origins: usize) -> Self {
        self.cache_limit = origins.max(1);
        self
    }

    /// The application server's public key, base64url (what browsers subscribe with as
    /// `applicationServerKey`).
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// The `Authorization` header for a push to `origin` at `now_secs`.
    pub fn authorization(&self, origin: &str, now_secs: u64) -> String {
        format!(
            "vapid t={}, k={}",
            self.token(origin, now_secs),
            self.public
        )
    }

    fn token(&self, origin: &str, now_secs: u64) -> Arc<str> {
        let fresh = |exp: u64| exp > now_secs + self.lifetime_secs / 4;
        if let Ok(tokens) = self.tokens.read() {
            if let Some(cached) = tokens.get(origin) {
                if fresh(cached.exp) {
                    cached.used.store(now_secs, Ordering::Relaxed);
                    return cached.token.clone();
                }
            }
        }
        let exp = now_secs + self.lifetime_secs;
        let token: Arc<str> = Arc::from(self.sign(origin, exp));
        if let Ok(mut tokens) = self.tokens.write() {
            tokens.retain(|_, cached| fresh(cached.exp));
            if tokens.len() >= self.cache_limit && !tokens.contains_key(origin) {
                let least_recent = tokens
                    .iter()
                    .min_by_key(|(_, cached)| cached.used.load(Ordering::Relaxed))
                    .map(|(origin, _)| origin.clone());
                if let Some(least_recent) = least_recent {
                    tokens.remove(&least_recent);
                }
            }
            tokens.insert(
                origin.to_owned(),
                Cached {
                    exp,
                    token: token.clone(),
                    used: AtomicU64::new(now_secs),
                },
            );
        }
        token
    }

    fn sign(&self, audience: &str, exp: u64) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = serde_json::json!({ "aud": audience, "exp": exp, "sub": self.subject });
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{claims}");
        let signature: Signature = self.key.sign(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }
}

/// The origin (`scheme://host[:port]`) of an endpoint URL: the token's `aud`.
pub fn origin(endpoint: &reqwest::Url) -> String {
    endpoint.origin().ascii_serialization()
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::VerifyingKey;
    use p256::ecdsa::signature::Verifier;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

    fn claims(token: &str) -> serde_json::Value {
        let claims = token.split('.').nth(1).expect("claims");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).expect("b64")).expect("json")
    }

    #[test]
    fn the_cache_keeps_the_most_recently_used_origins_only() {
        let vapid = Vapid::new(KEY, "mailto:ops@example.com", 43_200)
            .expect("key")
            .with_cache_limit(3);
        let now = 1_000_000;
        let kept = vapid.token("https://a.example", now);
        for (i, origin) in ["https://b.example", "https://c.example"]
            .iter()
            .enumerate()
        {
            vapid.token(origin, now + 1 + i as u64);
        }
        // `a` is used again, so `b` is the least recently used when `d` comes.
        assert_eq!(vapid.token("https://a.example", now + 10), kept);
        vapid.token("https://d.example", now + 11);
        let tokens = vapid.tokens.read().expect("lock");
        assert_eq!(tokens.len(), 3);
        assert!(tokens.contains_key("https://a.example"));
        assert!(!tokens.contains_key("https://b.example"));
    }

    #[test]
    fn the_token_names_the_origin_and_verifies_with_the_public_key() {
        let vapid = Vapid::new(KEY, "mailto:ops@example.com", 43_200).expect("key");
        let header = vapid.authorization("https://push.example.net", 1_000);
        let token = header
            .strip_prefix("vapid t=")
            .and_then(|rest| rest.split(", k=").next())
            .expect("t=");
        assert!(header.ends_with(&format!(", k={}", vapid.public_key())));
        let c = claims(token);
        assert_eq!(c["aud"], "https://push.example.net");
        assert_eq!(c["sub"], "mailto:ops@example.com");
        assert_eq!(c["exp"], 44_200);
        let public = URL_SAFE_NO_PAD.decode(vapid.public_key()).expect("b64");
        let verifier = VerifyingKey::from_sec1_bytes(&public).expect("point");
        let (input, signature) = token.rsplit_once('.').expect("signature");
        let signature =
            Signature::from_slice(&URL_SAFE_NO_PAD.decode(signature).expect("b64")).expect("sig");
        verifier
            .verify(input.as_bytes(), &signature)
            .expect("valid");
    }

    #[test]
    fn a_token_is_reused_per_origin_until_it_nears_expiry() {
        let vapid = Vapid::new(KEY, "mailto:ops@example.com", 40_000).expect("key");
        let a = vapid.token("https://a.example", 0);
        assert_eq!(vapid.token("https://a.example", 29_000), a);
        assert_ne!(vapid.token("https://b.example", 0), a);
        assert_ne!(vapid.token("https://a.example", 31_000), a, "renewed");
    }

    #[test]
    fn pem_and_raw_keys_are_read_and_garbage_is_not() {
        let raw = Vapid::new(KEY, "mailto:a@b", 3_600).expect("raw");
        let pem = p256::SecretKey::from_slice(&URL_SAFE_NO_PAD.decode(KEY).expect("b64"))
            .expect("scalar");
        let pem =
            p256::pkcs8::EncodePrivateKey::to_pkcs8_pem(&pem, Default::default()).expect("pem");
        let from_pem = Vapid::new(&pem, "mailto:a@b", 3_600).expect("pem");
        assert_eq!(raw.public_key(), from_pem.public_key());
        assert!(Vapid::new("not a key", "mailto:a@b", 3_600).is_err());
        assert_eq!(
            origin(&reqwest::Url::parse("https://push.example.net:8443/w/abc?x=1").expect("url")),
            "https://push.example.net:8443"
        );
    }
}
