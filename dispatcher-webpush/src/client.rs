//! The Web Push [`Provider`]: one `POST <endpoint>` per push, to whichever push service
//! the subscription names, over HTTP/2 or HTTP/1.1 as the service negotiates (one pool,
//! connections kept per origin).
//!
//! Headers: `TTL` (seconds to the deadline), `Urgency`, `Topic` when given,
//! `Content-Encoding: aes128gcm` (the body is [`crate::ece`]'s) and VAPID's
//! `Authorization` ([`crate::vapid`]). Answers are classified by [`crate::verdict`].
//!
//! Before any of that, the endpoint is held to `webpush.endpoints` ([`pipeline::egress`]):
//! one the policy refuses is dead-lettered (`endpoint_not_allowed`) without a connection;
//! a push service origin with `max_in_flight_per_origin` pushes in flight gets the next
//! one a second later (`origin_busy`), so one slow origin cannot hold every slot.
//! Public endpoints go through a client that trusts public roots only and resolves names
//! to public addresses only; `endpoints.private_origins` through one that trusts
//! `webpush.ca_files`. Neither follows redirects, and answers are read bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use pipeline::admin::BoxFuture;
use pipeline::config::ConfigError;
use pipeline::contract::{Class, PushJob, now_ms};
use pipeline::dispatch::{Provider, Verdict};
use pipeline::egress::{EgressPolicy, PublicResolver, Route};
use pipeline::provider_http::{self, ClientOptions};

use crate::config::WebPushConfig;
use crate::ece;
use crate::spec::{Keys, MAX_PAYLOAD_BYTES, NAME, Urgency, WebPushPart};
use crate::vapid::{self, Vapid};
use crate::verdict::{classify, reject};

/// One app's route: its application server key.
#[derive(Debug)]
pub struct App {
    vapid: Vapid,
}

impl App {
    /// The app's VAPID public key, for its web app to subscribe with.
    pub fn public_key(&self) -> &str {
        self.vapid.public_key()
    }
}

/// Sends Web Push messages for the configured apps.
pub struct WebPushProvider {
    /// Public endpoints: public roots, public addresses.
    public: reqwest::Client,
    /// `endpoints.private_origins`: the configured CAs too, any address.
    private: reqwest::Client,
    policy: EgressPolicy,
    origins: OriginSlots,
    apps: HashMap<String, App>,
}

/// Pushes in flight per origin, at most `cap` each; an origin with none is forgotten.
struct OriginSlots {
    cap: usize,
    held: Mutex<HashMap<String, usize>>,
}

/// One push's slot at its origin, given back when dropped.
struct OriginSlot<'a> {
    slots: &'a OriginSlots,
    origin: String,
}

impl OriginSlots {
    fn new(cap: usize) -> Self {
        OriginSlots {
            cap,
            held: Mutex::new(HashMap::new()),
        }
    }

    fn try_take(&self, origin: String) -> Option<OriginSlot<'_>> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(origin.clone()).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(OriginSlot {
            slots: self,
            origin,
        })
    }
}

impl Drop for OriginSlot<'_> {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&self.origin) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.origin);
            }
        }
    }
}

impl WebPushProvider {
    /// Reads every app's key and builds the clients.
    pub fn new(config: &WebPushConfig) -> Result<Self, ConfigError> {
        let policy = EgressPolicy::new("webpush.endpoints", &config.endpoints)?;
        let client = |ca_files: Vec<std::path::PathBuf>, public: bool| {
            let options = ClientOptions {
                ca_files,
                request_timeout: Duration::from_millis(config.request_timeout_ms),
                ca_setting: "webpush.ca_files",
            };
            let mut builder = provider_http::negotiating_builder(&options)?
                .pool_idle_timeout(Duration::from_secs(config.pool_idle_timeout_secs))
                .pool_max_idle_per_host(config.max_idle_per_origin);
            if public {
                // A proxy would resolve names itself, past the public-address filter.
                builder = builder.dns_resolver(PublicResolver::shared()).no_proxy();
            }
            provider_http::finish(&options, builder)
        };
        let public = client(Vec::new(), true)?;
        let private = client(config.ca_files.clone(), false)?;
        let mut apps = HashMap::new();
        for (i, app) in config.apps.iter().enumerate() {
            let vapid = Vapid::new(&app.key_text(i)?, &app.subject, config.token_lifetime_secs)
                .map_err(|e| {
                    ConfigError::invalid(
                        format!("webpush.apps[{i}].private_key_file"),
                        e.to_string(),
                    )
                })?;
            tracing::info!(app = %app.app, public_key = vapid.public_key(), "Web Push app");
            apps.insert(app.app.clone(), App { vapid });
        }
        Ok(WebPushProvider {
            public,
            private,
            policy,
            origins: OriginSlots::new(config.max_in_flight_per_origin),
            apps,
        })
    }

    /// The configured apps.
    pub fn apps(&self) -> &HashMap<String, App> {
        &self.apps
    }
}

fn transport_error(error: &reqwest::Error) -> Verdict {
    provider_http::transport_verdict("Web Push", error)
}

impl Provider for WebPushProvider {
    const NAME: &'static str = NAME;
    type Part = WebPushPart;
    type Route = App;

    fn route(&self, job: &PushJob<WebPushPart>) -> Option<&App> {
        self.apps.get(&job.app)
    }

    async fn send(&self, app: &App, job: &PushJob<WebPushPart>) -> Verdict {
        let keys = job
            .keys
            .as_ref()
            .and_then(|keys| serde_json::from_str::<Keys>(keys.get()).ok())
            .map(|keys| keys.bytes());
        let (p256dh, auth) = match keys {
            Some(Ok(keys)) => keys,
            Some(Err(why)) => return reject("bad_subscription", why),
            None => return reject("bad_subscription", "the job carries no subscription keys"),
        };
        let Ok(endpoint) = reqwest::Url::parse(&job.token) else {
            return reject("bad_subscription", "the endpoint is not a URL");
        };
        let client = match self.policy.route(&endpoint) {
            Ok(Route::Public) => &self.public,
            Ok(Route::Private) => &self.private,
            Err(refusal) => {
                return reject("endpoint_not_allowed", format!("the endpoint {refusal}"));
            }
        };
        let origin = vapid::origin(&endpoint);
        let Some(_slot) = self.origins.try_take(origin.clone()) else {
            return Verdict::retry(
                "origin_busy",
                format!(
                    "{} pushes already in flight to this push service",
                    self.origins.cap
                ),
                Some(Duration::from_secs(1)),
            );
        };
        let payload = job.part.payload.get();
        if payload.len() > MAX_PAYLOAD_BYTES {
            return reject(
                "payload_too_large",
                format!(
                    "payload is {} bytes; Web Push takes {MAX_PAYLOAD_BYTES}",
                    payload.len()
                ),
            );
        }
        let body = match ece::encrypt(&p256dh, &auth, payload.as_bytes()) {
            Ok(body) => body,
            Err(error) => return reject("bad_subscription", error.to_string()),
        };
        let now = now_ms();
        let urgency = if job.class == Class::Call {
            Urgency::High
        } else {
            job.part.urgency
        };
        let mut request = client
            .post(endpoint)
            .header(
                "ttl",
                (job.deadline_ms.saturating_sub(now) / 1000).to_string(),
            )
            .header("urgency", urgency.as_str())
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .header(
                "authorization",
                app.vapid.authorization(&origin, now / 1000),
            )
            .body(body);
        if let Some(topic) = &job.part.topic {
            request = request.header("topic", topic.as_str());
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => return transport_error(&error),
        };
        if response.status().is_success() {
            let id = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            return Verdict::Delivered { id };
        }
        let (status, retry_after, body): (u16, _, serde_json::Value) =
            provider_http::error_answer(response).await;
        classify(status, retry_after, &body.to_string())
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        // Keys are read and checked at start-up; there is no credential to refresh.
        Box::pin(async { Ok(()) })
    }

    fn probe_credentials(&self) -> BoxFuture<'_, Vec<(String, Option<bool>)>> {
        // A VAPID key is the operator's own: no service vouches for it before a push.
        Box::pin(async { Vec::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_holds_at_most_its_share_of_slots() {
        let slots = OriginSlots::new(2);
        let a1 = slots.try_take("https://a.example".into()).expect("first");
        let a2 = slots.try_take("https://a.example".into()).expect("second");
        assert!(slots.try_take("https://a.example".into()).is_none());
        assert!(slots.try_take("https://b.example".into()).is_some());
        drop(a1);
        assert!(slots.try_take("https://a.example".into()).is_some());
        drop(a2);
        // Every slot given back: nothing is remembered.
        assert!(slots.held.lock().expect("lock").is_empty());
    }
}
