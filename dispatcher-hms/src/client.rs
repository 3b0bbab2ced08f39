//! The Push Kit provider: per app a small pool of persistent connections (HTTP/2 or
//! HTTP/1.1 as ALPN negotiates: Huawei documents neither as required) and a cached OAuth
//! 2.0 access token; one `messages:send` per push.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pipeline::admin::BoxFuture;
use pipeline::config::ConfigError;
use pipeline::contract::{PushJob, now_ms};
use pipeline::dispatch::{Provider, Verdict};
use pipeline::provider_http::{self, ClientOptions};

use crate::config::HmsConfig;
use crate::message;
use crate::oauth::{OAuthError, TokenSource};
use crate::spec::HmsPart;
use crate::verdict::{Answer, classify, needs_new_token, no_access_token};

/// One configured app: its send URL, access tokens and connections.
pub struct App {
    /// The send URL, parsed once.
    url: reqwest::Url,
    tokens: TokenSource,
    clients: Vec<reqwest::Client>,
    next: AtomicUsize,
}

/// The Push Kit provider for every configured app.
pub struct HmsProvider {
    apps: HashMap<String, App>,
}

impl HmsProvider {
    /// Reads every app's secret and builds its connections.
    pub fn new(config: &HmsConfig) -> Result<Self, ConfigError> {
        let options = ClientOptions {
            ca_files: config.ca_files.clone(),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            ca_setting: "hms.ca_files",
        };
        // Huawei's documentation asks for TLS 1.2 or later and says nothing of HTTP/2, so
        // both endpoints negotiate it by ALPN rather than assume it.
        let token_http = provider_http::negotiating_client(&options)?;
        let base = provider_http::base_url("hms.base_url", &config.base_url)?;
        let token_url = provider_http::base_url("hms.token_url", &config.token_url)?;
        let mut apps = HashMap::new();
        for (i, app) in config.apps.iter().enumerate() {
            let client_id = app.client_id().to_owned();
            let tokens = TokenSource::new(
                client_id.clone(),
                app.secret(i)?,
                token_url.clone(),
                token_http.clone(),
                Duration::from_secs(config.token_refresh_margin_secs),
            );
            let clients = (0..config.connections)
                .map(|_| provider_http::negotiating_client(&options))
                .collect::<Result<Vec<_>, _>>()?;
            apps.insert(
                app.app_id.clone(),
                App {
                    // Huawei's reference names the OAuth 2.0 client id in this path.
                    url: provider_http::with_path(&base, &["v1", &client_id, "messages:send"]),
                    tokens,
                    clients,
                    next: AtomicUsize::new(0),
                },
            );
        }
        Ok(HmsProvider { apps })
    }

    async fn post(
        &self,
        app: &App,
        bearer: &str,
        body: String,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let i = app.next.fetch_add(1, Ordering::Relaxed) % app.clients.len();
        app.clients[i]
            .post(app.url.clone())
            .bearer_auth(bearer)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
    }
}

/// The answer to one request: its status and body, and what it means for `token`.
async fn answered(response: reqwest::Response, token: &str) -> (bool, Verdict) {
    let (status, retry_after, answer): (u16, _, Answer) =
        provider_http::error_answer(response).await;
    (
        needs_new_token(status, &answer),
        classify(status, &answer, retry_after, token),
    )
}

/// No access token: see [`no_access_token`].
fn oauth_failed(error: &OAuthError) -> Verdict {
    no_access_token(error.refused(), error.to_string(), error.retry_after())
}

fn transport_error(error: &reqwest::Error) -> Verdict {
    provider_http::transport_verdict("Push Kit", error)
}

impl Provider for HmsProvider {
    const NAME: &'static str = crate::spec::NAME;
    type Part = HmsPart;

    fn probe_credentials(&self) -> BoxFuture<'_, Vec<(String, Option<bool>)>> {
        // A fresh access token from Huawei's token endpoint: refused for a wrong secret
        // or an app that no longer exists.
        Box::pin(async move {
            let mut results = Vec::new();
            for (id, app) in &self.apps {
                let valid = match app.tokens.fetch_new().await {
                    Ok(()) => Some(true),
                    Err(error) if error.refused() => Some(false),
                    Err(_) => None,
                };
                results.push((id.clone(), valid));
            }
            results
        })
    }

    type Route = App;

    fn route(&self, job: &PushJob<HmsPart>) -> Option<&App> {
        self.apps.get(&job.app)
    }

    async fn send(&self, app: &App, job: &PushJob<HmsPart>) -> Verdict {
        let body = match message::body(
            &job.token,
            &job.part,
            job.deadline_ms.saturating_sub(now_ms()),
        ) {
            Ok(body) => body,
            Err(problem) => return Verdict::reject("invalid_data", problem),
        };
        let bearer = match app.tokens.token().await {
            Ok(token) => token,
            Err(error) => return oauth_failed(&error),
        };
        let response = match self.post(app, &bearer, body.clone()).await {
            Ok(response) => response,
            Err(error) => return transport_error(&error),
        };
        let (renew, verdict) = answered(response, &job.token).await;
        if !renew {
            return verdict;
        }
        // Our access token was refused or had expired: renew once and resend — unless a
        // token was renewed so recently that Push Kit is refusing good ones; then the
        // push is retried as the credential fault it is, without a token request.
        let renewed = match app.tokens.renew(&bearer).await {
            Ok(Some(token)) => token,
            Ok(None) => return verdict,
            Err(error) => return oauth_failed(&error),
        };
        match self.post(app, &renewed, body).await {
            Ok(response) => answered(response, &job.token).await.1,
            Err(error) => transport_error(&error),
        }
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            for (id, app) in &self.apps {
                app.tokens
                    .token()
                    .await
                    .map_err(|e| format!("Push Kit app {id}: {e}"))?;
            }
            Ok(())
        })
    }
}

/// The client against the mock Push Kit: what the two agree on, without NATS.
#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use crate::testing::{MockHms, SANDBOX_APP, device_token};
    use pipeline::contract::{Class, Environment, VERSION};
    use pipeline::mock::tls::TestCa;
    use serde_json::value::RawValue;

    struct Setup {
        mock: MockHms,
        provider: HmsProvider,
        _dir: std::path::PathBuf,
    }

    async fn setup() -> Setup {
        let ca = TestCa::new();
        let mock = MockHms::start_hms(&ca, &[SANDBOX_APP], 0).await;
        // Tests run in parallel, each with its own CA: a directory of its own each (the
        // clock alone can give two of them the same one).
        static SETUPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hms-client-{}-{}-{}",
            std::process::id(),
            pipeline::mock::now_us(),
            SETUPS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let config = crate::testing::dispatcher_config(
            &mock,
            &mock.write_ca(&dir, "ca.pem"),
            &mock.write_secret(&dir, SANDBOX_APP),
            Default::default(),
            Default::default(),
        );
        let provider = HmsProvider::new(&config.hms).expect("provider");
        Setup {
            mock,
            provider,
            _dir: dir,
        }
    }

    fn job(token: &str, part: &str) -> PushJob<HmsPart> {
        let part: Box<RawValue> = RawValue::from_string(part.into()).expect("json");
        PushJob {
            v: VERSION,
            event_id: "e-1".into(),
            token: token.into(),
            keys: None,
            platform: "hms".into(),
            app: SANDBOX_APP.into(),
            environment: Environment::Production,
            class: Class::Call,
            received_at_ms: now_ms(),
            deadline_ms: now_ms() + 30_000,
            part: serde_json::from_str(part.get()).expect("part"),
            trace_id: None,
        }
    }

    const CALL: &str =
        r#"{"data":{"callId":"c-1"},"urgency":"high","category":"VOIP","collapse_key":-1}"#;

    async fn send(setup: &Setup, job: &PushJob<HmsPart>) -> Verdict {
        let app = setup.provider.route(job).expect("configured app");
        setup.provider.send(app, job).await
    }

    #[tokio::test]
    async fn a_call_is_accepted_and_the_access_token_reused() {
        let s = setup().await;
        let token = device_token(1);
        for _ in 0..2 {
            let verdict = send(&s, &job(&token, CALL)).await;
            assert!(
                matches!(verdict, Verdict::Delivered { id: Some(_) }),
                "{verdict:?}"
            );
        }
        assert_eq!(s.mock.token_requests(), 1, "one access token for both");
        let sent = s.mock.delivered();
        assert_eq!(MockHms::token_of(&sent[0]), token);
        assert_eq!(MockHms::data_of(&sent[0])["callId"], "c-1");
        let android = &MockHms::body_of(&sent[0])["message"]["android"];
        assert_eq!(android["urgency"], "HIGH");
        assert_eq!(android["category"], "VOIP");
        assert_eq!(android["collapse_key"], -1);
        let ttl: f64 = android["ttl"]
            .as_str()
            .and_then(|t| t.strip_suffix('s'))
            .and_then(|t| t.parse().ok())
            .expect("ttl");
        assert!(ttl > 25.0 && ttl <= 30.0, "{ttl}");
    }

    #[tokio::test]
    async fn a_refused_access_token_is_renewed_at_most_once_a_floor() {
        let s = setup().await;
        let token = device_token(2);
        assert!(matches!(
            send(&s, &job(&token, CALL)).await,
            Verdict::Delivered { .. }
        ));
        // The first refusal: one new token, and the push goes through.
        s.mock.expire_access_tokens();
        assert!(matches!(
            send(&s, &job(&token, CALL)).await,
            Verdict::Delivered { .. }
        ));
        assert_eq!(s.mock.token_requests(), 2);
        // Refused again within the floor: Push Kit is refusing good tokens, so no token
        // request — the push is retried as a credential fault.
        s.mock.revoke_access_tokens();
        for _ in 0..3 {
            let verdict = send(&s, &job(&token, CALL)).await;
            assert!(matches!(verdict, Verdict::Retry { .. }), "{verdict:?}");
            assert_eq!(verdict.credential_valid(), Some(false), "{verdict:?}");
        }
        assert_eq!(s.mock.token_requests(), 2, "no token per push");
        let refused: Vec<u16> = s.mock.requests().iter().map(|r| r.status).collect();
        assert_eq!(refused, [200, 401, 200, 401, 401, 401]);
    }

    #[tokio::test]
    async fn pushes_waiting_on_a_failed_token_fetch_share_its_failure() {
        let s = setup().await;
        s.mock.script_token_endpoint([(503, String::new())]);
        let app = &s.provider.apps[SANDBOX_APP];
        let t = &app.tokens;
        let (a, b, c, d) = tokio::join!(t.token(), t.token(), t.token(), t.token());
        let results = [a, b, c, d];
        assert!(results.iter().all(Result::is_err));
        assert_eq!(s.mock.token_requests(), 1, "one fetch for all of them");
        // Within the back-off no one asks again; after it, one fetch succeeds.
        assert!(app.tokens.token().await.is_err());
        assert_eq!(s.mock.token_requests(), 1);
        tokio::time::sleep(crate::oauth::FAILURE_BACKOFF).await;
        assert!(app.tokens.token().await.is_ok());
        assert_eq!(s.mock.token_requests(), 2);
    }

    #[tokio::test]
    async fn token_endpoint_flow_control_is_no_refused_credential() {
        let s = setup().await;
        s.mock.script_token_endpoint([(429, String::new())]);
        let verdict = send(&s, &job(&device_token(5), CALL)).await;
        assert!(
            matches!(
                verdict,
                Verdict::Retry {
                    reason: "oauth",
                    ..
                }
            ),
            "{verdict:?}"
        );
        assert_eq!(verdict.credential_valid(), None, "{verdict:?}");
        // The probe, still within the back-off, answers "unknown" without asking.
        assert_eq!(
            s.provider.probe_credentials().await,
            [(SANDBOX_APP.to_owned(), None)]
        );
        assert_eq!(s.mock.token_requests(), 1);
    }

    #[tokio::test]
    async fn a_huge_expires_in_is_survived() {
        let s = setup().await;
        s.mock.set_token_lifetime(Duration::from_secs(u64::MAX));
        for _ in 0..2 {
            let verdict = send(&s, &job(&device_token(6), CALL)).await;
            assert!(matches!(verdict, Verdict::Delivered { .. }), "{verdict:?}");
        }
        assert_eq!(s.mock.token_requests(), 1);
    }

    #[tokio::test]
    async fn the_mock_checks_only_and_refuses_high_urgency_without_a_scenario() {
        let s = setup().await;
        let app = &s.provider.apps[SANDBOX_APP];
        let bearer = app.tokens.token().await.expect("token");
        let token = device_token(7);
        let checked =
            format!(r#"{{"validate_only":true,"message":{{"data":"{{}}","token":["{token}"]}}}}"#);
        let response = s.provider.post(app, &bearer, checked).await.expect("sent");
        assert_eq!(response.status(), 200);
        assert!(s.mock.delivered().is_empty(), "checked, not pushed");
        let high = format!(
            r#"{{"validate_only":false,"message":{{"data":"{{}}","android":{{"urgency":"HIGH"}},"token":["{token}"]}}}}"#
        );
        let response = s.provider.post(app, &bearer, high).await.expect("sent");
        let (_, verdict) = answered(response, &token).await;
        assert!(
            matches!(
                verdict,
                Verdict::Reject {
                    reason: "80100001",
                    ..
                }
            ),
            "{verdict:?}"
        );
        let unknown = format!(
            r#"{{"validate_only":false,"message":{{"data":"{{}}","android":{{"urgency":"HIGH","category":"URGENT"}},"token":["{token}"]}}}}"#
        );
        let response = s.provider.post(app, &bearer, unknown).await.expect("sent");
        let (_, verdict) = answered(response, &token).await;
        assert!(matches!(verdict, Verdict::Reject { .. }), "{verdict:?}");
    }

    #[tokio::test]
    async fn a_reset_secret_is_a_refused_credential() {
        let s = setup().await;
        s.mock.reset_secret(SANDBOX_APP);
        let verdict = send(&s, &job(&device_token(3), CALL)).await;
        assert_eq!(verdict.credential_valid(), Some(false), "{verdict:?}");
        assert_eq!(
            s.provider.probe_credentials().await,
            [(SANDBOX_APP.to_owned(), Some(false))]
        );
    }

    #[tokio::test]
    async fn invalid_tokens_flow_control_and_bad_messages_are_told_apart() {
        let s = setup().await;
        let token = device_token(4);
        s.mock.script(
            &token,
            [
                MockHms::error("80300007", "All the tokens are invalid"),
                MockHms::flow_control(503, 2),
                MockHms::partial(&[&token]),
            ],
        );
        assert!(matches!(
            send(&s, &job(&token, CALL)).await,
            Verdict::InvalidToken {
                reason: "80300007",
                ..
            }
        ));
        assert!(matches!(
            send(&s, &job(&token, CALL)).await,
            Verdict::Retry { retry_after: Some(d), .. } if d == Duration::from_secs(2)
        ));
        assert!(matches!(
            send(&s, &job(&token, CALL)).await,
            Verdict::InvalidToken {
                reason: "80100000",
                ..
            }
        ));
        // The mock's own checks: a token that is not one, a notification Push Kit refuses.
        let not_a_token = "not a token at all, it has spaces in it";
        assert!(matches!(
            send(&s, &job(not_a_token, CALL)).await,
            Verdict::InvalidToken { .. }
        ));
        let bad_button =
            r#"{"data":{},"notification":{"title":"Ada","buttons":[{"name":"","action_type":0}]}}"#;
        assert!(matches!(
            send(&s, &job(&token, bad_button)).await,
            Verdict::Reject {
                reason: "80100003",
                ..
            }
        ));
        let shown = r#"{"data":{},"notification":{"title":"Ada","click_action":{"type":3},"buttons":[{"name":"Answer","action_type":0},{"name":"Decline","action_type":3}]}}"#;
        assert!(matches!(
            send(&s, &job(&token, shown)).await,
            Verdict::Delivered { .. }
        ));
    }
}
