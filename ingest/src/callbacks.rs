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
//! The client follows no redirects (a 3xx is a failed try, retried like any other) and
//! reads at most [`MAX_ANSWER_BODY`] bytes of an answer: the receiver cannot send
//! ingest elsewhere or make it hold a large body. `callback_url` is `https://` unless the
//! receiver is on loopback ([`crate::config::check_callback_url`]).
//!
//! Signing follows Standard Webhooks: headers `webhook-id` (the event id),
//! `webhook-timestamp` (Unix seconds) and `webhook-signature: v1,<base64 of
//! HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>`; a `whsec_<base64>` secret is decoded
//! to its bytes, any other string is used as it is. Body: `{"type": "event.settled",
//! "timestamp_ms": …, "data": <the event's status without its history>}`.
//!
//! It also carries each answer an app's user gives to a producer's message (a button, a
//! prompt: [`MessageAction`], published on `callbacks.action.<producer>` by whoever took
//! the app's report) as `{"type": "message.action", "timestamp_ms": …, "data": {"event_id",
//! "person_id", "device", "app", "action", "reply", "at_ms"}}`, `webhook-id` the notice's
//! id; an answer for a producer without a `callback_url` is dropped and counted
//! (`outcome="unclaimed"`).
//!
//! The same worker tells app backends which tokens the registry pruned: a producer whose
//! `apps` name an app gets each [`TokenPruned`] notice of that app (`callbacks.pruned.<app>`)
//! as `{"type": "token.pruned", "timestamp_ms": …, "data": <the notice without `v`>}`,
//! `webhook-id` the notice id, signed and retried the same way. A notice for an app no
//! producer names is dropped and counted (`outcome="unclaimed"`).

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use pipeline::config::{ConfigError, Secret};
use pipeline::contract::{CallbackJob, MessageAction, TokenPruned, now_ms};
use pipeline::metrics::Metrics;
use pipeline::topology::Topology;
use pipeline::worker::{Delivery, Handler, Outcome};
use sha2::Sha256;

use crate::config::ProducersConfig;

/// How long a job waits before the status is read again while devices are pending.
const PENDING_RECHECK: Duration = Duration::from_millis(500);

/// Most of a callback receiver's answer read, bytes: only its status counts, and the body
/// is read (up to this) so the connection can be used again; a longer one is dropped
/// with its connection.
const MAX_ANSWER_BODY: usize = 4 * 1024;

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
    /// App → the producer that is its backend.
    app_backends: HashMap<String, String>,
    settle_ms: u64,
    worker: pipeline::config::WorkerConfig,
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
        let app_backends = config
            .keys
            .iter()
            .flat_map(|k| k.apps.iter().map(|app| (app.clone(), k.name.clone())))
            .collect();
        Ok(Callbacks {
            http: pipeline::provider_http::negotiating_client(&options)?,
            js,
            topology,
            targets,
            app_backends,
            settle_ms: config.callback_settle_secs * 1000,
            worker: worker.clone(),
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
        Outcome::back_off(&self.worker, attempt, "callback", error)
    }
}

impl Handler for Callbacks {
    async fn handle(&self, delivery: Delivery<'_>) -> Outcome {
        if self.topology.is_pruned_subject(delivery.subject) {
            self.pruned(delivery).await
        } else if self.topology.is_action_subject(delivery.subject) {
            self.action(delivery).await
        } else {
            self.settled(delivery).await
        }
    }
}

impl Callbacks {
    /// An event's outcome, once settled, to its producer.
    async fn settled(&self, delivery: Delivery<'_>) -> Outcome {
        let job: CallbackJob = match pipeline::worker::decode(delivery.payload) {
            Ok(job) => job,
            Err(dead) => return dead,
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
        self.send(
            target,
            &job.producer,
            &job.event_id,
            "event.settled",
            data,
            delivery.attempt,
        )
        .await
    }

    /// An app user's answer, to the producer who sent the message.
    async fn action(&self, delivery: Delivery<'_>) -> Outcome {
        let notice: MessageAction = match pipeline::worker::decode(delivery.payload) {
            Ok(notice) => notice,
            Err(dead) => return dead,
        };
        let Some(target) = self.targets.get(&notice.producer) else {
            self.metrics
                .callbacks
                .with_label_values(&[notice.producer.as_str(), "unclaimed"])
                .inc();
            tracing::debug!(producer = %notice.producer, "an answer for a producer without a callback_url");
            return Outcome::Ack;
        };
        let mut data = serde_json::to_value(&notice).unwrap_or_default();
        if let Some(object) = data.as_object_mut() {
            object.remove("v");
            object.remove("producer");
        }
        let id = notice.notice_id();
        self.send(
            target,
            &notice.producer,
            &id,
            "message.action",
            data,
            delivery.attempt,
        )
        .await
    }

    /// A pruned token, to the backend of its app.
    async fn pruned(&self, delivery: Delivery<'_>) -> Outcome {
        let notice: TokenPruned = match pipeline::worker::decode(delivery.payload) {
            Ok(notice) => notice,
            Err(dead) => return dead,
        };
        let Some((producer, target)) = self
            .app_backends
            .get(&notice.app)
            .and_then(|p| Some((p, self.targets.get(p)?)))
        else {
            self.metrics
                .callbacks
                .with_label_values(&["", "unclaimed"])
                .inc();
            tracing::debug!(app = %notice.app, "pruned token of an app no producer is the backend of");
            return Outcome::Ack;
        };
        let mut data = serde_json::to_value(&notice).unwrap_or_default();
        if let Some(object) = data.as_object_mut() {
            object.remove("v");
        }
        let id = notice.notice_id();
        self.send(
            target,
            producer,
            &id,
            "token.pruned",
            data,
            delivery.attempt,
        )
        .await
    }

    /// POSTs `{"type": kind, "timestamp_ms", "data"}` to `target`, signed as message `id`.
    async fn send(
        &self,
        target: &Target,
        producer: &str,
        id: &str,
        kind: &str,
        data: serde_json::Value,
        attempt: u64,
    ) -> Outcome {
        let body = serde_json::json!({
            "type": kind, "timestamp_ms": now_ms(), "data": data,
        })
        .to_string();
        let timestamp = now_ms() / 1000;
        let sent = self
            .http
            .post(&target.url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signature(&target.key, id, timestamp, body.as_bytes()),
            )
            .body(body)
            .send()
            .await;
        let sent = match sent {
            Ok(response) => {
                let status = response.status();
                // Only the status counts; the body is drained, bounded, for the connection.
                let _ = pipeline::provider_http::read_bounded(response, MAX_ANSWER_BODY).await;
                Ok(status)
            }
            Err(error) => Err(error),
        };
        match sent {
            Ok(status) if status.is_success() => {
                self.metrics
                    .callbacks
                    .with_label_values(&[producer, "sent"])
                    .inc();
                tracing::debug!(id, producer, kind, "callback sent");
                Outcome::Ack
            }
            Ok(status) => self.failed(
                producer,
                attempt,
                format!("the callback URL answered {status}"),
            ),
            Err(error) => self.failed(
                producer,
                attempt,
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
