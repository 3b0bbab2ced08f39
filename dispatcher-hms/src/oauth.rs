//! OAuth 2.0 access tokens for Push Kit, client-credentials mode: the app's id
//! (`client_id`) and secret (`client_secret`) posted as a form to Huawei's token endpoint
//! (`oauth2/v3/token`, `grant_type=client_credentials`) for an access token that lives
//! `expires_in` seconds (an hour). The token is cached and refreshed
//! `token_refresh_margin_secs` before it expires ([`refresh_at`], [`refresh_due`]); one
//! refresh runs at a time and concurrent callers wait for it. Huawei throttles apps that
//! ask too often, so a token is never fetched per push.
//!
//! A refusal (HTTP 4xx, `{"error":1101,"sub_error":…,"error_description":…}`: a wrong
//! secret, an unknown app) is a refusal of the credential; anything else (unreachable,
//! 5xx, 503 flow control) is not.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pipeline::config::Secret;
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

/// Why no access token could be had.
#[derive(Debug, Clone, thiserror::Error)]
#[error("OAuth token for app {app_id} from {url}: {problem}")]
pub struct OAuthError {
    app_id: String,
    url: String,
    problem: String,
    refused: bool,
}

impl OAuthError {
    /// Whether the token endpoint refused the app's credentials (4xx: a wrong secret, an
    /// unknown app), rather than being unreachable or failing.
    pub fn refused(&self) -> bool {
        self.refused
    }
}

/// A cached access token.
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

/// The error body of Huawei's token endpoint.
#[derive(Debug, Default, Deserialize)]
struct TokenError {
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default)]
    sub_error: Option<serde_json::Value>,
    #[serde(default)]
    error_description: String,
}

fn default_expiry() -> u64 {
    3_600
}

/// When a token fetched at `fetched` that lives `lifetime` is to be replaced: `margin`
/// before it expires, but never in less than half its life (a margin longer than a
/// short-lived token would otherwise refresh it on every push).
pub fn refresh_at(fetched: Instant, lifetime: Duration, margin: Duration) -> Instant {
    fetched + lifetime.saturating_sub(margin).max(lifetime / 2)
}

/// Whether a token to be replaced at `refresh_at` (none cached: `None`) must be fetched
/// anew at `now`.
pub fn refresh_due(refresh_at: Option<Instant>, now: Instant) -> bool {
    refresh_at.is_none_or(|at| now >= at)
}

/// A cached, self-refreshing access token for one app.
pub struct TokenSource {
    app_id: String,
    secret: Secret,
    url: reqwest::Url,
    http: reqwest::Client,
    margin: Duration,
    cached: RwLock<Option<Cached>>,
    refreshing: Mutex<()>,
}

impl TokenSource {
    /// Tokens for `app_id` with `secret` from the token endpoint `url`.
    pub fn new(
        app_id: String,
        secret: Secret,
        url: reqwest::Url,
        http: reqwest::Client,
        margin: Duration,
    ) -> Self {
        TokenSource {
            app_id,
            secret,
            url,
            http,
            margin,
            cached: RwLock::new(None),
            refreshing: Mutex::new(()),
        }
    }

    async fn fresh(&self) -> Option<Arc<str>> {
        let cached = self.cached.read().await;
        let cached = cached.as_ref()?;
        (!refresh_due(Some(cached.refresh_at), Instant::now())).then(|| cached.token.clone())
    }

    /// The current access token, fetching a new one when none is fresh.
    pub async fn token(&self) -> Result<Arc<str>, OAuthError> {
        if let Some(token) = self.fresh().await {
            return Ok(token);
        }
        let _guard = self.refreshing.lock().await;
        // Someone else may have refreshed while we waited.
        if let Some(token) = self.fresh().await {
            return Ok(token);
        }
        let fresh = self.fetch().await?;
        let token = fresh.token.clone();
        *self.cached.write().await = Some(fresh);
        Ok(token)
    }

    /// A new access token from the endpoint, whatever is cached: the credential check.
    pub async fn fetch_new(&self) -> Result<(), OAuthError> {
        let _guard = self.refreshing.lock().await;
        let fresh = self.fetch().await?;
        *self.cached.write().await = Some(fresh);
        Ok(())
    }

    /// After Push Kit refused `rejected` (expired or not accepted): drops it (unless
    /// already replaced) and fetches a new one.
    pub async fn renew(&self, rejected: &str) -> Result<Arc<str>, OAuthError> {
        {
            let mut cached = self.cached.write().await;
            if cached.as_ref().is_some_and(|c| &*c.token == rejected) {
                *cached = None;
            }
        }
        self.token().await
    }

    async fn fetch(&self) -> Result<Cached, OAuthError> {
        let error = |problem: String, refused: bool| OAuthError {
            app_id: self.app_id.clone(),
            url: self.url.to_string(),
            problem,
            refused,
        };
        let response = self
            .http
            .post(self.url.clone())
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &self.app_id),
                ("client_secret", self.secret.expose()),
            ])
            .send()
            .await
            .map_err(|e| error(e.without_url().to_string(), false))?;
        let status = response.status();
        let body = pipeline::provider_http::read_bounded(
            response,
            pipeline::provider_http::MAX_ERROR_BODY,
        )
        .await
        .map_err(|e| error(format!("bad response: {e}"), false))?;
        if !status.is_success() {
            let why: TokenError = serde_json::from_slice(&body).unwrap_or_default();
            let code = |v: Option<serde_json::Value>| v.map(|v| v.to_string()).unwrap_or_default();
            return Err(error(
                format!(
                    "status {status}: error {} sub_error {} {}",
                    code(why.error),
                    code(why.sub_error),
                    why.error_description
                ),
                status.is_client_error(),
            ));
        }
        let body: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| error(format!("bad response: {e}"), false))?;
        let now = Instant::now();
        tracing::info!(
            app_id = %self.app_id,
            expires_in = body.expires_in,
            "Push Kit access token refreshed"
        );
        Ok(Cached {
            token: Arc::from(body.access_token),
            refresh_at: refresh_at(now, Duration::from_secs(body.expires_in), self.margin),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_refreshed_its_margin_before_it_expires() {
        let t0 = Instant::now();
        let hour = Duration::from_secs(3_600);
        let at = refresh_at(t0, hour, Duration::from_secs(300));
        assert_eq!(at, t0 + Duration::from_secs(3_300));
        assert!(!refresh_due(Some(at), t0));
        assert!(!refresh_due(Some(at), at - Duration::from_millis(1)));
        assert!(refresh_due(Some(at), at));
        assert!(refresh_due(Some(at), t0 + hour));
    }

    #[test]
    fn nothing_cached_is_fetched_at_once() {
        assert!(refresh_due(None, Instant::now()));
    }

    #[test]
    fn a_short_lived_token_is_kept_half_its_life() {
        let t0 = Instant::now();
        let at = refresh_at(t0, Duration::from_secs(60), Duration::from_secs(300));
        assert_eq!(at, t0 + Duration::from_secs(30));
        let at = refresh_at(t0, Duration::ZERO, Duration::from_secs(300));
        assert!(
            refresh_due(Some(at), t0),
            "a token that lives no time is never reused"
        );
    }
}
