//! Producer callbacks: each event of a producer with a `callback_url` ends with one signed
//! POST of its outcome, sent by a worker of its own so delivery never waits on it.
//!
//! When ingest stores such an event it also stores a [`CallbackJob`] in `CALLBACKS`. The
//! `callbacks` consumer reads the event's delivery status ([`pipeline::tracking`]): while
//! a device is still pending and the event's deadline (plus
//! `producers.callback_settle_secs`) has not passed, the job waits and is looked at again;
//! then the status is POSTed as it stands. A refused or failed POST is retried with
//! backoff and, after `callbacks.max_attempts` tries, dead-lettered (`pushctl dead replay
//! --stage callback` sends it again).
//!
//! Signing follows Standard Webhooks: headers `webhook-id` (the event id),
//! `webhook-timestamp` (Unix seconds) and `webhook-signature: v1,<base64 of
//! HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>`; a `whsec_<base64>` secret is decoded
//! to its bytes, any other string is used as it is. Body: `{"type": "event.settled",
//! "timestamp_ms": …, "data": <the event's status without its history>}`.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use pipeline::config::{ConfigError, Secret};
use pipeline::contract::{CallbackJob, VERSION, now_ms};
use pipeline::metrics::Metrics;
use pipeline::topology::Topology;
use pipeline::worker::{Delivery, Handler, Outcome};
use sha2::Sha256;

use crate::config::ProducersConfig;

/// How long a job waits before the status is read again while devices are pending.
const PENDING_RECHECK: Duration = Duration::from_millis(500);

struct Target {
    url: String,
    key: Vec<u8>,
}

/// The `callbacks` worker's handler.
pub struct Callbacks {
    http: reqwest::Client,
    js: Context,
    topology: Topology,
    targets: HashMap<String, Target>,
    settle_ms: u64,
    retry_base: Duration,
    retry_max: Duration,
    metrics: Metrics,
}

/// The key bytes of a callback secret.
pub fn secret_key(secret: &Secret) -> Vec<u8> {
    let text = secret.expose();
    text.strip_prefix("whsec_")
        .and_then(|b64| STANDARD.decode(b64).ok())
        .unwrap_or_else(|| text.as_bytes().to_vec())
}

/// `v1,<signature>` of `body` sent as message `id` at `timestamp` (Unix seconds).
pub fn signature(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

impl Callbacks {
    /// The handler for the producers in `config` that have a callback URL.
    pub fn new(
        config: &ProducersConfig,
        worker: &pipeline::config::WorkerConfig,
        js: Context,
        topology: Topology,
        metrics: Metrics,
    ) -> Result<Self, ConfigError> {
        let options = pipeline::provider_http::ClientOptions {
            ca_files: Vec::new(),
            request_timeout: Duration::from_millis(config.callback_timeout_ms.max(1)),
            ca_setting: "producers.keys.callback_url",
        };
        let targets = config
            .keys
            .iter()
            .filter_map(|k| {
                Some((
                    k.name.clone(),
                    Target {
                        url: k.callback_url.clone()?,
                        key: secret_key(k.callback_secret.as_ref()?),
                    },
                ))
            })
            .collect();
        Ok(Callbacks {
            http: pipeline::provider_http::negotiating_client(&options)?,
            js,
            topology,
            targets,
            settle_ms: config.callback_settle_secs * 1000,
            retry_base: Duration::from_millis(worker.retry_base_ms),
            retry_max: Duration::from_millis(worker.retry_max_ms),
            metrics,
        })
    }

    /// Whether `producer` has a callback URL.
    pub fn wanted(config: &ProducersConfig, producer: &str) -> bool {
        config
            .keys
            .iter()
            .any(|k| k.name == producer && k.callback_url.is_some())
    }

    fn failed(&self, producer: &str, attempt: u64, error: String) -> Outcome {
        self.metrics
            .callbacks
            .with_label_values(&[producer, "failed"])
            .inc();
        let input = pipeline::retry::RetryInput {
            attempt,
            base: self.retry_base,
            max: self.retry_max,
            retry_after: None,
            time_left: None,
        };
        Outcome::Retry {
            delay: pipeline::retry::retry_delay(input, rand::random::<f64>())
                .unwrap_or(self.retry_max),
            reason: "callback",
            error,
            deadline_ms: None,
        }
    }
}

impl Handler for Callbacks {
    async fn handle(&self, delivery: Delivery<'_>) -> Outcome {
        let job = match serde_json::from_slice::<CallbackJob>(delivery.payload) {
            Ok(job) if job.v == VERSION => job,
            Ok(job) => {
                return Outcome::Dead {
                    reason: "unsupported_version",
                    error: format!("contract version {}", job.v),
                };
            }
            Err(error) => {
                return Outcome::Dead {
                    reason: "malformed",
                    error: format!("not a CallbackJob: {error}"),
                };
            }
        };
        let Some(target) = self.targets.get(&job.producer) else {
            return Outcome::Dead {
                reason: "no_callback_url",
                error: format!("producer `{}` has no callback_url now", job.producer),
            };
        };
        let status = match pipeline::tracking::read_event(&self.js, &self.topology, &job.event_id)
            .await
        {
            Ok(status) => status,
            Err(error) => return self.failed(&job.producer, delivery.attempt, error.to_string()),
        };
        let settled = status.as_ref().is_some_and(|s| s.outcome != "pending");
        let give_up_waiting = job.deadline_ms.saturating_add(self.settle_ms);
        if !settled && now_ms() < give_up_waiting {
            return Outcome::Retry {
                delay: PENDING_RECHECK,
                reason: "pending",
                error: "devices still pending".into(),
                deadline_ms: Some(give_up_waiting),
            };
        }
        let mut data = match &status {
            Some(status) => serde_json::to_value(status).unwrap_or_default(),
            None => serde_json::json!({"event_id": job.event_id, "outcome": "unknown"}),
        };
        if let Some(object) = data.as_object_mut() {
            object.remove("history");
        }
        let body = serde_json::json!({
            "type": "event.settled", "timestamp_ms": now_ms(), "data": data,
        })
        .to_string();
        let timestamp = now_ms() / 1000;
        let sent = self
            .http
            .post(&target.url)
            .header("content-type", "application/json")
            .header("webhook-id", &job.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signature(&target.key, &job.event_id, timestamp, body.as_bytes()),
            )
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                self.metrics
                    .callbacks
                    .with_label_values(&[&job.producer, "sent"])
                    .inc();
                tracing::debug!(event_id = %job.event_id, producer = %job.producer, "callback sent");
                Outcome::Ack
            }
            Ok(response) => self.failed(
                &job.producer,
                delivery.attempt,
                format!("the callback URL answered {}", response.status()),
            ),
            Err(error) => self.failed(
                &job.producer,
                delivery.attempt,
                format!("callback: {}", without_url(&error)),
            ),
        }
    }
}

/// A transport error without the URL (it may carry a token in its query).
fn without_url(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), "<callback_url>");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_secrets_are_decoded_and_others_used_as_they_are() {
        assert_eq!(
            secret_key(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")),
            STANDARD
                .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .expect("b64")
        );
        assert_eq!(secret_key(&Secret::new("plain")), b"plain".to_vec());
    }

    #[test]
    fn the_signature_covers_id_timestamp_and_body() {
        let key = b"k";
        let a = signature(key, "e1", 1_700_000_000, b"{}");
        assert!(a.starts_with("v1,"));
        assert_ne!(a, signature(key, "e2", 1_700_000_000, b"{}"));
        assert_ne!(a, signature(key, "e1", 1_700_000_001, b"{}"));
        assert_ne!(a, signature(key, "e1", 1_700_000_000, b"{ }"));
    }
}
