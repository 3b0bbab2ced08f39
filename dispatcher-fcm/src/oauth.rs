//! OAuth2 access tokens for FCM from a service-account key: a signed RS256 JWT assertion
//! (`iss` = `client_email`, `scope` = firebase.messaging, `aud` = the key file's
//! `token_uri`) exchanged at `token_uri` for an access token. The token is cached and
//! refreshed `token_refresh_margin_secs` before it expires; one refresh runs at a time and
//! concurrent callers wait for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pipeline::config::ConfigError;
use rsa::RsaPrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use serde::Deserialize;
use sha2::Sha256;
use tokio::sync::{Mutex, RwLock};

/// The OAuth scope for FCM HTTP v1.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// The fields of a service-account key file pushline uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceAccount {
    /// `project_id`.
    #[serde(default)]
    pub project_id: Option<String>,
    /// `client_email` (JWT `iss`).
    pub client_email: String,
    /// `private_key` (PKCS#8 PEM).
    pub private_key: String,
    /// `private_key_id` (JWT `kid`).
    #[serde(default)]
    pub private_key_id: Option<String>,
    /// `token_uri` (where the assertion is exchanged, and the JWT `aud`).
    pub token_uri: String,
}

impl ServiceAccount {
    /// Parses a key file's bytes; `setting` names it in errors.
    pub fn from_bytes(setting: &str, bytes: &[u8]) -> Result<Self, ConfigError> {
        serde_json::from_slice(bytes).map_err(|e| {
            ConfigError::invalid(setting, format!("not a service-account key file: {e}"))
        })
    }
}

/// Why no access token could be had.
#[derive(Debug, Clone, thiserror::Error)]
#[error("OAuth token from {uri}: {problem}")]
pub struct OAuthError {
    uri: String,
    problem: String,
    refused: bool,
}

impl OAuthError {
    /// Whether the token server refused the service account (4xx: a deleted account, a
    /// revoked key), rather than being unreachable or failing.
    pub fn refused(&self) -> bool {
        self.refused
    }
}

#[derive(Clone)]
struct Cached {
    token: Arc<str>,
    refresh_at: Instant,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default = "default_expiry")]
    expires_in: u64,
}

fn default_expiry() -> u64 {
    3_600
}

/// A cached, self-refreshing access token for one service account.
pub struct TokenSource {
    account: ServiceAccount,
    key: SigningKey<Sha256>,
    http: reqwest::Client,
    margin: Duration,
    cached: RwLock<Option<Cached>>,
    refreshing: Mutex<()>,
}

impl TokenSource {
    /// From a parsed key file; `setting` names it in errors.
    pub fn new(
        setting: &str,
        account: ServiceAccount,
        http: reqwest::Client,
        margin: Duration,
    ) -> Result<Self, ConfigError> {
        let key = RsaPrivateKey::from_pkcs8_pem(&account.private_key).map_err(|e| {
            ConfigError::invalid(setting, format!("private_key is not a PKCS#8 RSA key: {e}"))
        })?;
        Ok(TokenSource {
            account,
            key: SigningKey::<Sha256>::new(key),
            http,
            margin,
            cached: RwLock::new(None),
            refreshing: Mutex::new(()),
        })
    }

    /// The current access token, fetching a new one when none is fresh.
    pub async fn token(&self) -> Result<Arc<str>, OAuthError> {
        if let Some(cached) = self.cached.read().await.as_ref() {
            if Instant::now() < cached.refresh_at {
                return Ok(cached.token.clone());
            }
        }
        let _guard = self.refreshing.lock().await;
        // Someone else may have refreshed while we waited.
        if let Some(cached) = self.cached.read().await.as_ref() {
            if Instant::now() < cached.refresh_at {
                return Ok(cached.token.clone());
            }
        }
        let fresh = self.fetch().await?;
        let token = fresh.token.clone();
        *self.cached.write().await = Some(fresh);
        Ok(token)
    }

    /// A new access token from the token server, whatever is cached: the credential check.
    pub async fn fetch_new(&self) -> Result<(), OAuthError> {
        let _guard = self.refreshing.lock().await;
        let fresh = self.fetch().await?;
        *self.cached.write().await = Some(fresh);
        Ok(())
    }

    /// After FCM refused `rejected` as unauthenticated: drops it (unless already replaced)
    /// and fetches a new one.
    pub async fn renew(&self, rejected: &str) -> Result<Arc<str>, OAuthError> {
        {
            let mut cached = self.cached.write().await;
            if cached.as_ref().is_some_and(|c| &*c.token == rejected) {
                *cached = None;
            }
        }
        self.token().await
    }

    fn assertion(&self, now: u64) -> String {
        let kid = self
            .account
            .private_key_id
            .as_deref()
            .map(|k| format!(r#","kid":{}"#, serde_json::Value::from(k)))
            .unwrap_or_default();
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"RS256","typ":"JWT"{kid}}}"#));
        let claims = serde_json::json!({
            "iss": self.account.client_email,
            "scope": SCOPE,
            "aud": self.account.token_uri,
            "iat": now,
            "exp": now + 3_600,
        });
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let input = format!("{header}.{claims}");
        let signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }

    async fn fetch(&self) -> Result<Cached, OAuthError> {
        let uri = &self.account.token_uri;
        let error = |problem: String| OAuthError {
            uri: uri.clone(),
            problem,
            refused: false,
        };
        let now = pipeline::contract::now_ms() / 1000;
        let response = self
            .http
            .post(uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", &self.assertion(now)),
            ])
            .send()
            .await
            .map_err(|e| error(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(OAuthError {
                refused: status.is_client_error(),
                ..error(format!("status {status}"))
            });
        }
        let body = pipeline::provider_http::read_bounded(
            response,
            pipeline::provider_http::MAX_ERROR_BODY,
        )
        .await
        .map_err(|e| error(format!("bad response: {e}")))?;
        let body: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| error(format!("bad response: {e}")))?;
        let lifetime = Duration::from_secs(body.expires_in);
        let refresh_in = lifetime.saturating_sub(self.margin).max(lifetime / 2);
        tracing::info!(expires_in = body.expires_in, "FCM access token refreshed");
        Ok(Cached {
            token: Arc::from(body.access_token),
            refresh_at: Instant::now() + refresh_in,
        })
    }
}
