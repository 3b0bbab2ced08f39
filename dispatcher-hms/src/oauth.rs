//! OAuth 2.0 access tokens for Push Kit, client-credentials mode: the app's OAuth 2.0
//! client id (`client_id`, by default its app id) and secret (`client_secret`) posted as
//! a form to Huawei's token endpoint (`oauth2/v3/token`, `grant_type=client_credentials`)
//! for an access token that lives `expires_in` seconds (an hour; anything over a day is
//! taken as a day). The token is cached and refreshed `token_refresh_margin_secs` before
//! it expires ([`refresh_at`], [`refresh_due`]); one fetch runs at a time and concurrent
//! callers wait for it. Huawei throttles apps that ask too often, so a token is never
//! fetched per push:
//!
//! | situation | what a caller gets |
//! |---|---|
//! | a fresh token is cached | that token |
//! | a fetch failed while the caller waited for it | that failure, without fetching again ([`after_waiting`]) |
//! | the last fetch failed less than its back-off ago ([`failure_backoff`]: the endpoint's `Retry-After`, at most [`MAX_FAILURE_BACKOFF`]) | that failure, without fetching |
//! | otherwise | a new fetch |
//! | Push Kit refused a token, and it is younger than [`RENEW_FLOOR`] and a renewal happened less than [`RENEW_FLOOR`] ago ([`renewal_worthwhile`]) | no fetch: the push is retried as a credential fault |
//!
//! A refusal is HTTP 400, 401 or 403 with an `error` in the body
//! (`{"error":1101,"sub_error":…,"error_description":…}`: a wrong secret, an unknown
//! client id) — a refusal of the credential ([`is_refusal`]). Anything else (unreachable,
//! 408, 429, 5xx, an answer without `error`) is not: it is retried, honouring the
//! endpoint's `Retry-After`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pipeline::config::Secret;
use serde::Deserialize;

/// Longest lifetime believed of an access token (a day): `expires_in` comes from outside.
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(86_400);
/// How long a failed fetch is remembered when the endpoint named no `Retry-After`.
pub const FAILURE_BACKOFF: Duration = Duration::from_secs(1);
/// Longest a failed fetch is remembered, whatever the endpoint's `Retry-After` (pushes
/// still wait for the whole `Retry-After`: it is in their verdict).
pub const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(5);
/// A token Push Kit refuses is replaced at once only if it is at least this old or no
/// such renewal happened this recently; otherwise a Push Kit refusing good tokens would
/// cost a token request per push.
pub const RENEW_FLOOR: Duration = Duration::from_secs(60);

/// Why no access token could be had.
#[derive(Debug, Clone, thiserror::Error)]
#[error("OAuth token for client {client_id} from {url}: {problem}")]
pub struct OAuthError {
    client_id: String,
    url: String,
    problem: String,
    refused: bool,
    retry_after: Option<Duration>,
}

impl OAuthError {
    /// Whether the token endpoint refused the app's credentials (see [`is_refusal`]),
    /// rather than being unreachable, throttling or failing.
    pub fn refused(&self) -> bool {
        self.refused
    }

    /// The token endpoint's `Retry-After`, if it named one.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

/// Whether the token endpoint's answer with `status` refuses the credential: 400, 401 or
/// 403 with an `error` in the body. Flow control (429), a timeout (408) and server
/// errors are not refusals.
pub fn is_refusal(status: u16, has_error_code: bool) -> bool {
    matches!(status, 400 | 401 | 403) && has_error_code
}

/// A cached access token.
#[derive(Clone)]
struct Cached {
    token: Arc<str>,
    fetched: Instant,
    refresh_at: Instant,
}

/// The last failed fetch.
struct Failure {
    error: OAuthError,
    /// The [`State::generation`] the failure ended.
    generation: u64,
    /// Before this, callers get the failure instead of fetching.
    retry_at: Instant,
}

#[derive(Default)]
struct State {
    cached: Option<Cached>,
    failure: Option<Failure>,
    /// Counts finished fetches, so a caller knows whether one ended while it waited.
    generation: u64,
    /// When a token Push Kit refused was last replaced.
    renewed_at: Option<Instant>,
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

/// An error and its causes, `: `-separated (reqwest's own text hides the cause).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn default_expiry() -> u64 {
    3_600
}

/// How long a token said to live `expires_in` seconds is taken to live: at most
/// [`MAX_EXPIRES_IN`].
pub fn lifetime(expires_in: u64) -> Duration {
    Duration::from_secs(expires_in).min(MAX_EXPIRES_IN)
}

/// When a token fetched at `fetched` that lives `lifetime` is to be replaced: `margin`
/// before it expires, but never in less than half its life (a margin longer than a
/// short-lived token would otherwise refresh it on every push). A time past what the
/// clock can hold is replaced at once.
pub fn refresh_at(fetched: Instant, lifetime: Duration, margin: Duration) -> Instant {
    fetched
        .checked_add(lifetime.saturating_sub(margin).max(lifetime / 2))
        .unwrap_or(fetched)
}

/// Whether a token to be replaced at `refresh_at` (none cached: `None`) must be fetched
/// anew at `now`.
pub fn refresh_due(refresh_at: Option<Instant>, now: Instant) -> bool {
    refresh_at.is_none_or(|at| now >= at)
}

/// How long a failed fetch stands for every caller: the endpoint's `Retry-After`
/// (without one, [`FAILURE_BACKOFF`]), at most [`MAX_FAILURE_BACKOFF`].
pub fn failure_backoff(retry_after: Option<Duration>) -> Duration {
    retry_after
        .unwrap_or(FAILURE_BACKOFF)
        .min(MAX_FAILURE_BACKOFF)
}

/// What a caller without a fresh token does once it holds the fetch lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Fetch a token.
    Fetch,
    /// Take the last failure as its own.
    Fail,
}

/// What a caller that saw generation `seen` before waiting does, given the last failure
/// (`(generation, retry_at)`) at `now`: a failure that ended while it waited, or whose
/// back-off has not passed, is its answer too.
pub fn after_waiting(seen: u64, failure: Option<(u64, Instant)>, now: Instant) -> Next {
    match failure {
        Some((generation, retry_at)) if generation > seen || now < retry_at => Next::Fail,
        _ => Next::Fetch,
    }
}

/// Whether a token fetched at `fetched` that Push Kit refused is worth replacing at
/// `now`, the last such renewal having been at `last_renewal`: only if the token is at
/// least `floor` old or no renewal happened within `floor`.
pub fn renewal_worthwhile(
    fetched: Instant,
    last_renewal: Option<Instant>,
    now: Instant,
    floor: Duration,
) -> bool {
    now.saturating_duration_since(fetched) >= floor
        || last_renewal.is_none_or(|at| now.saturating_duration_since(at) >= floor)
}

/// A cached, self-refreshing access token for one app.
pub struct TokenSource {
    client_id: String,
    secret: Secret,
    url: reqwest::Url,
    http: reqwest::Client,
    margin: Duration,
    state: Mutex<State>,
    fetching: tokio::sync::Mutex<()>,
}

impl TokenSource {
    /// Tokens for OAuth client `client_id` with `secret` from the token endpoint `url`.
    pub fn new(
        client_id: String,
        secret: Secret,
        url: reqwest::Url,
        http: reqwest::Client,
        margin: Duration,
    ) -> Self {
        TokenSource {
            client_id,
            secret,
            url,
            http,
            margin,
            state: Mutex::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is plain data, consistent after every statement: a panic elsewhere
        // leaves nothing half-written.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fresh(state: &State, now: Instant) -> Option<Arc<str>> {
        let cached = state.cached.as_ref()?;
        (!refresh_due(Some(cached.refresh_at), now)).then(|| cached.token.clone())
    }

    /// The last failure, if a caller that saw `seen` is to take it instead of fetching.
    fn standing_failure(state: &State, seen: u64, now: Instant) -> Option<OAuthError> {
        let failure = state.failure.as_ref()?;
        (after_waiting(seen, Some((failure.generation, failure.retry_at)), now) == Next::Fail)
            .then(|| failure.error.clone())
    }

    /// The current access token, fetching a new one when none is fresh.
    pub async fn token(&self) -> Result<Arc<str>, OAuthError> {
        let seen = {
            let state = self.state();
            if let Some(token) = Self::fresh(&state, Instant::now()) {
                return Ok(token);
            }
            state.generation
        };
        let _guard = self.fetching.lock().await;
        {
            let state = self.state();
            let now = Instant::now();
            // Someone else may have fetched while we waited, or failed to.
            if let Some(token) = Self::fresh(&state, now) {
                return Ok(token);
            }
            if let Some(error) = Self::standing_failure(&state, seen, now) {
                return Err(error);
            }
        }
        self.fetch_and_keep(false).await
    }

    /// A new access token from the endpoint, whatever is cached: the credential check.
    /// A failure still in its back-off is answered without asking.
    pub async fn fetch_new(&self) -> Result<(), OAuthError> {
        let _guard = self.fetching.lock().await;
        {
            let state = self.state();
            if let Some(error) = Self::standing_failure(&state, state.generation, Instant::now()) {
                return Err(error);
            }
        }
        self.fetch_and_keep(false).await.map(|_| ())
    }

    /// After Push Kit refused `rejected` (expired or not accepted): a token to try once
    /// more — the one already replacing it, or a new one — or `None` when a new one is not
    /// worth asking for yet ([`renewal_worthwhile`]).
    pub async fn renew(&self, rejected: &str) -> Result<Option<Arc<str>>, OAuthError> {
        let seen = self.state().generation;
        let _guard = self.fetching.lock().await;
        {
            let mut state = self.state();
            let now = Instant::now();
            match &state.cached {
                Some(cached) if &*cached.token != rejected => {
                    if let Some(token) = Self::fresh(&state, now) {
                        return Ok(Some(token));
                    }
                }
                Some(cached) => {
                    if !renewal_worthwhile(cached.fetched, state.renewed_at, now, RENEW_FLOOR) {
                        return Ok(None);
                    }
                    state.cached = None;
                }
                None => {}
            }
            if let Some(error) = Self::standing_failure(&state, seen, now) {
                return Err(error);
            }
        }
        self.fetch_and_keep(true).await.map(Some)
    }

    /// Fetches a token and keeps the outcome: the token, or the failure every caller
    /// gets for its back-off. `renewal`: it replaces a token Push Kit refused.
    async fn fetch_and_keep(&self, renewal: bool) -> Result<Arc<str>, OAuthError> {
        let fetched = self.fetch().await;
        let now = Instant::now();
        let mut state = self.state();
        state.generation += 1;
        match fetched {
            Ok(cached) => {
                let token = cached.token.clone();
                state.cached = Some(cached);
                state.failure = None;
                if renewal {
                    state.renewed_at = Some(now);
                }
                Ok(token)
            }
            Err(error) => {
                state.failure = Some(Failure {
                    error: error.clone(),
                    generation: state.generation,
                    retry_at: now
                        .checked_add(failure_backoff(error.retry_after))
                        .unwrap_or(now),
                });
                Err(error)
            }
        }
    }

    async fn fetch(&self) -> Result<Cached, OAuthError> {
        let error = |problem: String, refused: bool, retry_after: Option<Duration>| OAuthError {
            client_id: self.client_id.clone(),
            url: self.url.to_string(),
            problem,
            refused,
            retry_after,
        };
        let response = self
            .http
            .post(self.url.clone())
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &self.client_id),
                ("client_secret", self.secret.expose()),
            ])
            .send()
            .await
            .map_err(|e| error(chain(&e.without_url()), false, None))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = pipeline::provider_http::read_bounded(
            response,
            pipeline::provider_http::MAX_ERROR_BODY,
        )
        .await
        .map_err(|e| error(format!("bad response: {e}"), false, retry_after))?;
        if !status.is_success() {
            let why: TokenError = serde_json::from_slice(&body).unwrap_or_default();
            let refused = is_refusal(status.as_u16(), why.error.is_some());
            let code = |v: Option<serde_json::Value>| v.map(|v| v.to_string()).unwrap_or_default();
            return Err(error(
                format!(
                    "status {status}: error {} sub_error {} {}",
                    code(why.error),
                    code(why.sub_error),
                    why.error_description
                ),
                refused,
                retry_after,
            ));
        }
        let body: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| error(format!("bad response: {e}"), false, None))?;
        let now = Instant::now();
        tracing::info!(
            client_id = %self.client_id,
            expires_in = body.expires_in,
            "Push Kit access token refreshed"
        );
        Ok(Cached {
            token: Arc::from(body.access_token),
            fetched: now,
            refresh_at: refresh_at(now, lifetime(body.expires_in), self.margin),
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

    #[test]
    fn a_huge_expires_in_is_a_day_and_never_panics() {
        assert_eq!(lifetime(u64::MAX), MAX_EXPIRES_IN);
        assert_eq!(lifetime(3_600), Duration::from_secs(3_600));
        let t0 = Instant::now();
        let at = refresh_at(t0, lifetime(u64::MAX), Duration::from_secs(300));
        assert_eq!(at, t0 + MAX_EXPIRES_IN - Duration::from_secs(300));
        // Even unclamped, a lifetime past the clock is replaced at once, not a panic.
        assert_eq!(refresh_at(t0, Duration::MAX, Duration::ZERO), t0);
    }

    #[test]
    fn a_failure_during_the_wait_is_shared_not_refetched() {
        let now = Instant::now();
        let past = now - Duration::from_secs(10);
        // Nothing failed: fetch.
        assert_eq!(after_waiting(3, None, now), Next::Fetch);
        // A fetch failed while we queued (generation 4 > 3 seen), back-off over or not.
        assert_eq!(after_waiting(3, Some((4, past)), now), Next::Fail);
        assert_eq!(
            after_waiting(3, Some((4, now + Duration::from_secs(1))), now),
            Next::Fail
        );
        // An older failure stands for its back-off only.
        assert_eq!(
            after_waiting(4, Some((4, now + Duration::from_secs(1))), now),
            Next::Fail
        );
        assert_eq!(after_waiting(4, Some((4, past)), now), Next::Fetch);
        assert_eq!(after_waiting(4, Some((4, now)), now), Next::Fetch);
    }

    #[test]
    fn the_backoff_honours_retry_after_up_to_a_few_seconds() {
        assert_eq!(failure_backoff(None), FAILURE_BACKOFF);
        assert_eq!(
            failure_backoff(Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            failure_backoff(Some(Duration::from_secs(3_600))),
            MAX_FAILURE_BACKOFF
        );
        assert_eq!(failure_backoff(Some(Duration::ZERO)), Duration::ZERO);
    }

    #[test]
    fn only_a_4xx_naming_an_error_refuses_the_credential() {
        for status in [400, 401, 403] {
            assert!(is_refusal(status, true), "{status}");
            assert!(!is_refusal(status, false), "{status} without an error code");
        }
        for status in [408, 429, 500, 502, 503, 504, 404] {
            assert!(!is_refusal(status, true), "{status}");
        }
    }

    #[test]
    fn a_refused_token_is_replaced_at_most_once_a_floor() {
        let now = Instant::now();
        let floor = Duration::from_secs(60);
        let young = now - Duration::from_secs(5);
        let old = now - Duration::from_secs(61);
        // The first refusal of a young token: renew.
        assert!(renewal_worthwhile(young, None, now, floor));
        // A young token just renewed after a refusal: not again.
        assert!(!renewal_worthwhile(young, Some(young), now, floor));
        // Once the floor has passed, either way.
        assert!(renewal_worthwhile(old, Some(young), now, floor));
        assert!(renewal_worthwhile(young, Some(old), now, floor));
    }
}
