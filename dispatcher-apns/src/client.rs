//! The APNs provider: per app and environment a small pool of persistent HTTP/2
//! connections, provider tokens (or client certificates), and one request per push.
//!
//! `POST <base>/3/device/<token>` with `apns-push-type`, `apns-topic` (`<bundle>.voip` for
//! VoIP), `apns-priority`, `apns-expiration` (the deadline, Unix seconds),
//! `apns-collapse-id` when given and `apns-id` (a UUID derived from event and token, so a
//! retry carries the same id). The body is the payload exactly as the webhook carried it.
//! Connection loss and GOAWAY surface as request errors and are retried; hyper opens a
//! new connection for the next request.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pipeline::admin::BoxFuture;
use pipeline::config::ConfigError;
use pipeline::contract::{Environment, PushJob};
use pipeline::dispatch::{Provider, Verdict};
use pipeline::provider_http::{self, ClientOptions};
use sha2::{Digest, Sha256};

use crate::config::{ApnsConfig, AppConfig};
use crate::jwt::ProviderToken;
use crate::spec::{ApnsPart, ApnsPushType, NAME};
use crate::verdict::{Answer, Reason, classify};

enum Auth {
    Token(Arc<ProviderToken>),
    Certificate,
}

/// One app in one environment: its endpoint, credentials and connections.
pub struct Route {
    /// The environment's endpoint, parsed once: a push clones it and appends its path
    /// segments (reqwest still turns the result into a URI per request).
    base_url: reqwest::Url,
    auth: Auth,
    clients: Vec<reqwest::Client>,
    next: AtomicUsize,
}

impl Route {
    fn client(&self) -> &reqwest::Client {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        &self.clients[i]
    }
}

/// The APNs provider for every configured app and environment.
pub struct ApnsProvider {
    routes: HashMap<String, HashMap<Environment, Route>>,
    certificate_expiries: Vec<(String, i64)>,
}

#[derive(Default, serde::Deserialize)]
struct ErrorBody {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    timestamp: Option<u64>,
}

impl ApnsProvider {
    /// Loads every app's credentials and builds its connections.
    pub fn new(config: &ApnsConfig) -> Result<Self, ConfigError> {
        let options = ClientOptions {
            ca_files: config.ca_files.clone(),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            ca_setting: "apns.ca_files",
        };
        let mut routes: HashMap<String, HashMap<Environment, Route>> = HashMap::new();
        let mut certificate_expiries = Vec::new();
        for (i, app) in config.apps.iter().enumerate() {
            let (auth, certificate) = Self::credentials(i, app, config.token_refresh_secs)?;
            let identity = certificate.map(|(identity, not_after)| {
                certificate_expiries.push((app.bundle_id.clone(), not_after));
                identity
            });
            for env in &app.environments {
                let (setting, url) = match env {
                    Environment::Production => ("apns.production_url", &config.production_url),
                    Environment::Sandbox => ("apns.sandbox_url", &config.sandbox_url),
                };
                let base_url = provider_http::base_url(setting, url)?;
                let clients = (0..config.connections)
                    .map(|_| provider_http::client(&options, identity.clone()))
                    .collect::<Result<Vec<_>, _>>()?;
                let auth = match &auth {
                    Auth::Token(token) => Auth::Token(token.clone()),
                    Auth::Certificate => Auth::Certificate,
                };
                routes.entry(app.bundle_id.clone()).or_default().insert(
                    *env,
                    Route {
                        base_url,
                        auth,
                        clients,
                        next: AtomicUsize::new(0),
                    },
                );
            }
        }
        Ok(ApnsProvider {
            routes,
            certificate_expiries,
        })
    }

    /// For each app using certificate auth: when its certificate expires (Unix seconds).
    pub fn certificate_expiries(&self) -> &[(String, i64)] {
        &self.certificate_expiries
    }

    fn credentials(
        i: usize,
        app: &AppConfig,
        refresh: u64,
    ) -> Result<(Auth, Option<(reqwest::Identity, i64)>), ConfigError> {
        let at = |key: &str| format!("apns.apps[{i}].{key}");
        if let (Some(team), Some(key_id), Some(pem)) = (&app.team_id, &app.key_id, app.key(i)?) {
            let pem = String::from_utf8(pem)
                .map_err(|_| ConfigError::invalid(at("key_file"), "is not PEM text"))?;
            let token = ProviderToken::from_p8(team, key_id, &pem, refresh)
                .map_err(|e| ConfigError::invalid(at("key_file"), e.to_string()))?;
            return Ok((Auth::Token(Arc::new(token)), None));
        }
        if let Some(certificate) = app.client_certificate(i)? {
            let identity = reqwest::Identity::from_pem(&certificate.identity_pem).map_err(|e| {
                ConfigError::invalid(
                    at("certificate_file"),
                    format!("not a usable certificate and key: {e}"),
                )
            })?;
            return Ok((Auth::Certificate, Some((identity, certificate.not_after))));
        }
        Err(ConfigError::invalid(at("key_file"), "no credentials"))
    }

    async fn request(
        &self,
        route: &Route,
        job: &PushJob<ApnsPart>,
        bearer: Option<&str>,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let apns = &job.part;
        let topic = match apns.push_type {
            ApnsPushType::Voip => format!("{}.voip", job.app),
            _ => job.app.clone(),
        };
        let mut request = route
            .client()
            .post(provider_http::with_path(
                &route.base_url,
                &["3", "device", &job.token],
            ))
            .header("apns-push-type", apns.push_type.as_str())
            .header("apns-topic", topic)
            .header("apns-priority", apns.priority.to_string())
            .header("apns-expiration", (job.deadline_ms / 1000).to_string())
            .header("apns-id", apns_id(&job.event_id, &job.token))
            .header("content-type", "application/json")
            .body(apns.payload.get().to_owned());
        if let Some(collapse) = &apns.collapse_id {
            request = request.header("apns-collapse-id", collapse.as_str());
        }
        if let Some(bearer) = bearer {
            request = request.header("authorization", format!("bearer {bearer}"));
        }
        request.send().await
    }
}

/// `apns-id`: a UUID (8-4-4-4-12 hex) derived from the event and the token.
pub fn apns_id(event_id: &str, token: &str) -> String {
    let digest = Sha256::new()
        .chain_update(event_id.as_bytes())
        .chain_update([0u8])
        .chain_update(token.as_bytes())
        .finalize();
    let h = hex::encode(&digest[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn now_secs() -> u64 {
    pipeline::contract::now_ms() / 1000
}

async fn answer(response: reqwest::Response) -> Answer {
    let (status, retry_after, body): (u16, _, ErrorBody) =
        provider_http::error_answer(response).await;
    Answer {
        status,
        reason: Reason::parse(body.reason.as_deref().unwrap_or("")),
        timestamp_ms: body.timestamp,
        retry_after,
    }
}

fn transport_error(error: &reqwest::Error) -> Verdict {
    pipeline::provider_http::transport_verdict("APNs", error)
}

impl ApnsProvider {
    /// Asks APNs whether `route`'s credential is accepted: a background push to a token
    /// that cannot exist. With a good credential APNs refuses the token (400
    /// `BadDeviceToken`); with a revoked key or a wrong certificate it refuses the
    /// credential (403). Nothing reaches a device either way.
    async fn probe(&self, app: &str, environment: Environment, route: &Route) -> Option<bool> {
        let now = pipeline::contract::now_ms();
        let job = PushJob {
            v: pipeline::contract::VERSION,
            event_id: format!("credential-check-{now}"),
            token: "0".repeat(64),
            keys: None,
            platform: NAME.to_owned(),
            app: app.to_owned(),
            environment,
            class: pipeline::contract::Class::Background,
            received_at_ms: now,
            deadline_ms: now + 60_000,
            part: ApnsPart {
                payload: serde_json::value::RawValue::from_string(
                    r#"{"aps":{"content-available":1}}"#.into(),
                )
                .ok()?,
                push_type: ApnsPushType::Background,
                priority: 5,
                collapse_id: None,
            },
            trace_id: None,
        };
        let bearer = match &route.auth {
            Auth::Token(token) => Some(token.current(now_secs())),
            Auth::Certificate => None,
        };
        let response = self.request(route, &job, bearer.as_deref()).await.ok()?;
        if response.status().is_success() {
            return Some(true);
        }
        classify(&answer(response).await).credential_valid()
    }
}

impl Provider for ApnsProvider {
    const NAME: &'static str = NAME;
    type Part = ApnsPart;

    fn probe_credentials(&self) -> BoxFuture<'_, Vec<(String, Option<bool>)>> {
        Box::pin(async move {
            let mut results = Vec::new();
            for (app, routes) in &self.routes {
                // Valid only if every environment's endpoint accepts it.
                let mut app_valid = Some(true);
                for (environment, route) in routes {
                    app_valid = match (app_valid, self.probe(app, *environment, route).await) {
                        (_, Some(false)) | (Some(false), _) => Some(false),
                        (Some(true), Some(true)) => Some(true),
                        _ => None,
                    };
                }
                results.push((app.clone(), app_valid));
            }
            results
        })
    }

    type Route = Route;

    fn route(&self, job: &PushJob<ApnsPart>) -> Option<&Route> {
        self.routes.get(job.app.as_str())?.get(&job.environment)
    }

    async fn send(&self, route: &Route, job: &PushJob<ApnsPart>) -> Verdict {
        let apns = &job.part;
        let limit = apns.push_type.max_bytes();
        if apns.payload.get().len() > limit {
            return Verdict::reject(
                "PayloadTooLarge",
                format!(
                    "payload is {} bytes; APNs accepts {limit} for {}",
                    apns.payload.get().len(),
                    apns.push_type.as_str()
                ),
            );
        }
        let bearer = match &route.auth {
            Auth::Token(token) => Some(token.current(now_secs())),
            Auth::Certificate => None,
        };
        let response = match self.request(route, job, bearer.as_deref()).await {
            Ok(response) => response,
            Err(error) => return transport_error(&error),
        };
        if response.status().is_success() {
            return delivered(&response);
        }
        let first = answer(response).await;
        if let (Reason::ExpiredProviderToken, Auth::Token(token), Some(old)) =
            (&first.reason, &route.auth, &bearer)
        {
            // Re-sign once and resend; a second refusal is retried like any other.
            let renewed = token.renew(now_secs(), old);
            return match self.request(route, job, Some(&renewed)).await {
                Ok(response) if response.status().is_success() => delivered(&response),
                Ok(response) => classify(&answer(response).await),
                Err(error) => transport_error(&error),
            };
        }
        classify(&first)
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        // Credentials are loaded and validated at start-up; a token is signable.
        Box::pin(async move {
            for route in self.routes.values().flat_map(HashMap::values) {
                if let Auth::Token(token) = &route.auth {
                    token.current(now_secs());
                }
            }
            Ok(())
        })
    }
}

/// An accepted push, with the `apns-id` APNs answered (the one pushline sent).
fn delivered(response: &reqwest::Response) -> Verdict {
    let id = response
        .headers()
        .get("apns-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Verdict::Delivered { id }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apns_id_is_a_stable_uuid_per_event_and_token() {
        let id = apns_id("event", "token");
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
        assert_eq!(id, apns_id("event", "token"));
        assert_ne!(id, apns_id("event", "other"));
    }
}
