//! The prune stage: `Feedback` from `FEEDBACK` → the rejected token is removed, unless it
//! was registered again after the provider's verdict (APNs 410 `timestamp`, else when
//! the dispatcher saw the answer), or the dispatcher held pruning for the app because
//! most of its answers called tokens invalid ([`pipeline::prune_guard`]): held feedback is
//! dead-lettered (`pruning_held`) with the token kept, for operators to replay or drop.

use std::time::Duration;

use pipeline::config::WorkerConfig;
use pipeline::contract::{Feedback, VERSION};
use pipeline::metrics::Metrics;
use pipeline::retry::{RetryInput, retry_delay};
use pipeline::tracking::{Stage, StatusRecord, Tracker};
use pipeline::worker::{Delivery, Handler, Outcome};

use crate::store::{Pruned, Store};

/// The prune handler.
pub struct Prune {
    /// Device store.
    pub store: Store,
    /// Retry timing.
    pub worker: WorkerConfig,
    /// Metrics.
    pub metrics: Metrics,
    /// Writes the `pruned` stage of the event whose push got the verdict.
    pub tracker: Tracker,
}

impl Handler for Prune {
    async fn handle(&self, delivery: Delivery<'_>) -> Outcome {
        let feedback: Feedback = match serde_json::from_slice(delivery.payload) {
            Ok(f) => f,
            Err(error) => {
                return Outcome::Dead {
                    reason: "malformed",
                    error: format!("not a Feedback: {error}"),
                };
            }
        };
        if feedback.v != VERSION {
            return Outcome::Dead {
                reason: "unsupported_version",
                error: format!("contract version {}", feedback.v),
            };
        }
        let tag = pipeline::telemetry::token_tag(&feedback.token);
        if let Some(hold) = delivery
            .headers
            .and_then(|h| h.get(pipeline::prune_guard::HOLD_HEADER))
        {
            self.metrics
                .feedback
                .with_label_values(&[feedback.platform.as_str(), "held"])
                .inc();
            tracing::warn!(token = %tag, app = %feedback.app, reason = %feedback.reason, "token kept: pruning is held for this app");
            return Outcome::Dead {
                reason: "pruning_held",
                error: format!(
                    "{} said `{}` while most of app `{}`'s answers called tokens invalid ({}); the token was kept",
                    feedback.platform.as_str(),
                    feedback.reason,
                    feedback.app,
                    hold.as_str()
                ),
            };
        }
        match self
            .store
            .prune(&feedback.token, feedback.invalid_since_ms())
            .await
        {
            Ok(result) => {
                let outcome = match result {
                    Pruned::Removed => "pruned",
                    Pruned::KeptNewer => "kept_reregistered",
                    Pruned::NotFound => "unknown_token",
                };
                if result == Pruned::Removed {
                    self.metrics
                        .devices_removed
                        .with_label_values(&["pruned"])
                        .inc();
                    if let Some(event_id) = &feedback.event_id {
                        let record = StatusRecord {
                            device: Some(tag.clone()),
                            platform: Some(feedback.platform),
                            app: Some(feedback.app.clone()),
                            ..StatusRecord::event(event_id, Stage::Pruned)
                                .because(feedback.reason.as_str())
                        };
                        self.tracker.record(&record).await;
                    }
                }
                self.metrics
                    .feedback
                    .with_label_values(&[feedback.platform.as_str(), outcome])
                    .inc();
                tracing::info!(token = %tag, reason = %feedback.reason, outcome, "feedback handled");
                Outcome::Ack
            }
            Err(error) => {
                let input = RetryInput {
                    attempt: delivery.attempt,
                    base: Duration::from_millis(self.worker.retry_base_ms),
                    max: Duration::from_millis(self.worker.retry_max_ms),
                    retry_after: None,
                    time_left: None,
                };
                let delay =
                    retry_delay(input, rand::random::<f64>()).unwrap_or(Duration::from_secs(1));
                Outcome::Retry {
                    delay,
                    reason: "redis",
                    error: error.to_string(),
                    deadline_ms: None,
                }
            }
        }
    }
}
