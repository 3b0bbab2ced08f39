//! Who is calling the device API, and what they may do.
//!
//! A bearer credential becomes a [`Principal`]:
//!
//! 1. a configured **API key** (compared as SHA-256, in constant time) → a service with
//!    scopes (`register`, `read`, `admin`);
//! 2. else, with JWT keys configured and a token shaped like a JWT → the person in `sub`,
//!    after checking signature, `exp`, `nbf`, `iss` and `aud`;
//! 3. else, with Webex enabled → the person Webex says owns the access token
//!    (`GET /v1/people/me`; positive answers cached briefly; Webex unreachable → 503,
//!    never allow).
//!
//! A person may register, list and delete only their own devices (ids compared in
//! canonical form, see [`crate::person`]). Every refusal is counted in
//! `pushline_auth_refusals_total{service,reason}`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pipeline::config::ConfigError;
use pipeline::metrics::Metrics;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AuthConfig, JwtAlgorithm, JwtAuthConfig, Scope, WebexAuthConfig};
use crate::error::ApiError;
use crate::person;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An app backend holding an API key.
    Service {
        /// The key's name.
        name: String,
        /// What it may do.
        scopes: Vec<Scope>,
    },
    /// A person, proven by a JWT or a Webex access token.
    Person {
        /// Their canonical person id.
        id: String,
    },
    /// Authentication is off (development only).
    Insecure,
}

impl Principal {
    fn has(&self, scope: Scope) -> bool {
        match self {
            Principal::Service { scopes, .. } => {
                scopes.contains(&scope) || scopes.contains(&Scope::Admin)
            }
            Principal::Insecure => true,
            Principal::Person { .. } => false,
        }
    }

    /// The person this is, when it is one.
    pub fn person(&self) -> Option<&str> {
        match self {
            Principal::Person { id } => Some(id),
            _ => None,
        }
    }

    /// Whether this is `person` themselves.
    pub fn is(&self, person: &str) -> bool {
        matches!(self, Principal::Person { id } if person::same(id, person))
    }

    /// May register or delete `person`'s devices.
    pub fn may_write(&self, person: &str) -> bool {
        self.has(Scope::Register) || self.is(person)
    }

    /// May list `person`'s devices.
    pub fn may_read(&self, person: &str) -> bool {
        self.has(Scope::Read) || self.is(person)
    }

    /// May delete any token without proving ownership.
    pub fn may_delete_any(&self) -> bool {
        self.has(Scope::Register)
    }
}

struct KeyEntry {
    name: String,
    hash: [u8; 32],
    scopes: Vec<Scope>,
}

/// Turns a request's bearer into a [`Principal`].
pub struct Authenticator {
    keys: Vec<KeyEntry>,
    jwt: Option<JwtVerifier>,
    webex: Option<WebexVerifier>,
    insecure: bool,
    metrics: Metrics,
}

impl Authenticator {
    /// From validated configuration (reads key files).
    pub fn new(config: &AuthConfig, metrics: Metrics) -> Result<Self, ConfigError> {
        let keys = config
            .api_keys
            .iter()
            .filter_map(|k| {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(k.sha256.to_ascii_lowercase(), &mut hash).ok()?;
                Some(KeyEntry {
                    name: k.name.clone(),
                    hash,
                    scopes: k.scopes.clone(),
                })
            })
            .collect();
        let jwt = (!config.jwt.keys.is_empty())
            .then(|| JwtVerifier::new(&config.jwt))
            .transpose()?;
        let webex = config
            .webex
            .enabled
            .then(|| WebexVerifier::new(&config.webex))
            .transpose()?;
        Ok(Authenticator {
            keys,
            jwt,
            webex,
            insecure: config.insecure_no_auth,
            metrics,
        })
    }

    /// Counts a refusal and returns the error for it.
    pub fn refuse(&self, reason: &'static str, error: ApiError) -> ApiError {
        self.metrics
            .auth_refusals
            .with_label_values(&[crate::SERVICE, reason])
            .inc();
        error
    }

    /// The caller of a request, or 401 / 503.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        if self.insecure {
            return Ok(Principal::Insecure);
        }
        let bearer = pipeline::admin::bearer(headers);
        let Some(bearer) = bearer else {
            return Err(self.refuse(
                "missing_credentials",
                ApiError::Unauthorized("a bearer credential is required"),
            ));
        };
        let hash: [u8; 32] = Sha256::digest(bearer.as_bytes()).into();
        let mut service = None;
        for key in &self.keys {
            if bool::from(key.hash.ct_eq(&hash)) {
                service = Some(Principal::Service {
                    name: key.name.clone(),
                    scopes: key.scopes.clone(),
                });
            }
        }
        if let Some(service) = service {
            return Ok(service);
        }
        if let Some(jwt) = &self.jwt {
            if bearer.split('.').count() == 3 {
                return match jwt.verify(bearer) {
                    Ok(id) => Ok(Principal::Person { id }),
                    Err(reason) => {
                        Err(self.refuse(reason, ApiError::Unauthorized("the token is not valid")))
                    }
                };
            }
        }
        if let Some(webex) = &self.webex {
            return match webex.person(bearer, &hash).await {
                Ok(id) => Ok(Principal::Person { id }),
                Err(WebexError::Rejected) => Err(self.refuse(
                    "webex_rejected",
                    ApiError::Unauthorized("Webex did not accept the token"),
                )),
                Err(WebexError::Unavailable(problem)) => {
                    tracing::warn!(%problem, "Webex people API unavailable; refusing");
                    Err(self.refuse("webex_unavailable", ApiError::Unavailable))
                }
            };
        }
        Err(self.refuse(
            "unknown_credentials",
            ApiError::Unauthorized("unknown credentials"),
        ))
    }
}

struct JwtVerifier {
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
    issuer: String,
    audience: String,
    leeway: u64,
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

impl JwtVerifier {
    fn new(config: &JwtAuthConfig) -> Result<Self, ConfigError> {
        let mut keys = Vec::new();
        for (i, key) in config.keys.iter().enumerate() {
            let setting = format!("auth.jwt.keys[{i}]");
            let read = |path: &std::path::Path| {
                std::fs::read(path).map_err(|source| ConfigError::File {
                    setting: setting.clone(),
                    path: path.to_owned(),
                    source,
                })
            };
            let bad = |e: jsonwebtoken::errors::Error| {
                ConfigError::invalid(setting.clone(), format!("unusable key: {e}"))
            };
            let (algorithm, decoding) = match key.algorithm {
                JwtAlgorithm::HS256 => {
                    let secret = match (&key.secret, &key.secret_file) {
                        (Some(secret), _) => secret.expose().as_bytes().to_vec(),
                        (None, Some(path)) => pipeline::config::read_secret_file(&setting, path)?
                            .expose()
                            .as_bytes()
                            .to_vec(),
                        (None, None) => {
                            return Err(ConfigError::invalid(setting, "HS256 needs a secret"));
                        }
                    };
                    (Algorithm::HS256, DecodingKey::from_secret(&secret))
                }
                JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
                    let Some(path) = &key.public_key_file else {
                        return Err(ConfigError::invalid(setting, "needs public_key_file"));
                    };
                    let pem = read(path)?;
                    if key.algorithm == JwtAlgorithm::RS256 {
                        (
                            Algorithm::RS256,
                            DecodingKey::from_rsa_pem(&pem).map_err(bad)?,
                        )
                    } else {
                        (
                            Algorithm::ES256,
                            DecodingKey::from_ec_pem(&pem).map_err(bad)?,
                        )
                    }
                }
            };
            keys.push((key.kid.clone(), algorithm, decoding));
        }
        Ok(JwtVerifier {
            keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway_secs,
        })
    }

    /// The person in a valid token's `sub`, or the refusal reason.
    fn verify(&self, token: &str) -> Result<String, &'static str> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "invalid_jwt")?;
        let candidates = self.keys.iter().filter(|(kid, alg, _)| {
            *alg == header.alg
                && (kid.is_none()
                    || header.kid.is_none()
                    || kid.as_deref() == header.kid.as_deref())
        });
        let mut reason = "invalid_jwt";
        for (_, algorithm, key) in candidates {
            let mut validation = Validation::new(*algorithm);
            validation.set_issuer(&[&self.issuer]);
            validation.set_audience(&[&self.audience]);
            validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
            validation.validate_nbf = true;
            validation.leeway = self.leeway;
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) if !data.claims.sub.is_empty() => {
                    return Ok(person::canonical(&data.claims.sub).into_owned());
                }
                Ok(_) => return Err("invalid_jwt"),
                Err(error) => {
                    reason = match error.kind() {
                        ErrorKind::ExpiredSignature => "expired_jwt",
                        ErrorKind::ImmatureSignature => "jwt_not_yet_valid",
                        ErrorKind::InvalidAudience => "wrong_audience",
                        ErrorKind::InvalidIssuer => "wrong_issuer",
                        _ => reason,
                    };
                    if reason != "invalid_jwt" {
                        return Err(reason);
                    }
                }
            }
        }
        Err(reason)
    }
}

enum WebexError {
    Rejected,
    Unavailable(String),
}

struct WebexVerifier {
    http: reqwest::Client,
    url: String,
    ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], (String, Instant)>>,
}

/// Entries kept before expired ones are swept.
const WEBEX_CACHE_SWEEP: usize = 10_000;

impl WebexVerifier {
    fn new(config: &WebexAuthConfig) -> Result<Self, ConfigError> {
        let options = pipeline::provider_http::ClientOptions {
            ca_files: config.ca_files.clone(),
            request_timeout: Duration::from_millis(config.timeout_ms),
            ca_setting: "auth.webex.ca_files",
        };
        Ok(WebexVerifier {
            http: pipeline::provider_http::negotiating_client(&options)?,
            url: format!("{}/v1/people/me", config.base_url.trim_end_matches('/')),
            ttl: Duration::from_secs(config.cache_secs),
            cache: Mutex::new(HashMap::new()),
        })
    }

    async fn person(&self, token: &str, hash: &[u8; 32]) -> Result<String, WebexError> {
        if let Ok(cache) = self.cache.lock() {
            if let Some((id, until)) = cache.get(hash) {
                if Instant::now() < *until {
                    return Ok(id.clone());
                }
            }
        }
        let response = self
            .http
            .get(&self.url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| WebexError::Unavailable(e.without_url().to_string()))?;
        match response.status().as_u16() {
            200 => {}
            401 | 403 => return Err(WebexError::Rejected),
            status => return Err(WebexError::Unavailable(format!("status {status}"))),
        }
        #[derive(serde::Deserialize)]
        struct Me {
            id: String,
        }
        let me: Me = response.json().await.map_err(|e| {
            WebexError::Unavailable(format!("unreadable answer: {}", e.without_url()))
        })?;
        let id = person::canonical(&me.id).into_owned();
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= WEBEX_CACHE_SWEEP {
                let now = Instant::now();
                cache.retain(|_, (_, until)| *until > now);
            }
            cache.insert(*hash, (id.clone(), Instant::now() + self.ttl));
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(id: &str) -> Principal {
        Principal::Person { id: id.into() }
    }

    #[test]
    fn people_may_touch_only_their_own_devices() {
        let alice = person("alice");
        assert!(alice.may_write("alice") && alice.may_read("alice"));
        assert!(!alice.may_write("bob") && !alice.may_read("bob"));
        assert!(!alice.may_delete_any());
    }

    #[test]
    fn scopes_decide_for_services() {
        let reader = Principal::Service {
            name: "r".into(),
            scopes: vec![Scope::Read],
        };
        assert!(
            reader.may_read("anyone") && !reader.may_write("anyone") && !reader.may_delete_any()
        );
        let writer = Principal::Service {
            name: "w".into(),
            scopes: vec![Scope::Register],
        };
        assert!(writer.may_write("anyone") && !writer.may_read("anyone"));
        let admin = Principal::Service {
            name: "a".into(),
            scopes: vec![Scope::Admin],
        };
        assert!(admin.may_write("x") && admin.may_read("x") && admin.may_delete_any());
    }
}
