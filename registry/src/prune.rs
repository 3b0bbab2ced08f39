//! The prune stage: `Feedback` from `FEEDBACK` → the rejected token is removed, unless it
//! was registered again after the provider's verdict (APNs 410 `timestamp`, else when
//! the dispatcher saw the answer), or the dispatcher held pruning for the app because
//! most of its answers called tokens invalid ([`pipeline::prune_guard`]): held feedback is
//! dead-lettered (`pruning_held`) with the token kept, for operators to replay or drop.
//!
//! Each removal is announced to the app's backend: a [`TokenPruned`] notice goes to
//! `CALLBACKS` (`callbacks.pruned.<app>`), which ingest's `callbacks` worker POSTs to the
//! producer whose `apps` name the app. The token is already gone when the notice is
//! queued; a notice that cannot be stored after a few tries is logged and counted
//! (`pushline_callbacks_total{outcome="not_queued"}`), never a reason to keep the token.

use async_nats::jetstream::Context;
use pipeline::config::WorkerConfig;
use pipeline::contract::{Feedback, TokenPruned, VERSION, now_ms};
use pipeline::metrics::Metrics;
use pipeline::retry::RetryInput;
use pipeline::topology::Topology;
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
    /// Where pruned-token notices are stored.
    pub js: Context,
    /// Subjects.
    pub topology: Topology,
}

/// Tries to store one pruned-token notice before it is given up.
const NOTICE_TRIES: u32 = 3;

impl Prune {
    /// Queues the notice of a removal for the app's backend.
    async fn announce(&self, feedback: &Feedback, person_ids: Vec<String>) {
        let notice = TokenPruned {
            v: VERSION,
            platform: feedback.platform.clone(),
            app: feedback.app.clone(),
            token: feedback.token.clone(),
            reason: feedback.reason.clone(),
            invalid_since_ms: feedback.invalid_since_ms(),
            pruned_at_ms: now_ms(),
            person_ids,
            event_id: feedback.event_id.clone(),
        };
        let Ok(body) = serde_json::to_vec(&notice) else {
            return;
        };
        let (subject, id, body) = (
            self.topology.pruned_subject(&notice.app),
            notice.notice_id(),
            bytes::Bytes::from(body),
        );
        let mut error = String::new();
        for attempt in 1..=NOTICE_TRIES {
            match pipeline::nats::publish_stored(&self.js, &subject, &id, None, &body).await {
                Ok(_) => return,
                Err(e) => error = e.to_string(),
            }
            if attempt == NOTICE_TRIES {
                break;
            }
            let pause = RetryInput::after(u64::from(attempt), &self.worker).delay();
            tokio::time::sleep(pause.unwrap_or_default()).await;
        }
        self.metrics
            .callbacks
            .with_label_values(&["", "not_queued"])
            .inc();
        tracing::error!(%error, token = %pipeline::telemetry::token_tag(&feedback.token), app = %feedback.app, "pruned-token notice not queued; the app's backend will not hear of this token");
    }
}

impl Handler for Prune {
    async fn handle(&self, delivery: Delivery<'_>) -> Outcome {
        let feedback: Feedback = match pipeline::worker::decode(delivery.payload) {
            Ok(feedback) => feedback,
            Err(dead) => return dead,
        };
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
            Ok((result, removed_from)) => {
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
                            platform: Some(feedback.platform.clone()),
                            app: Some(feedback.app.clone()),
                            ..StatusRecord::event(event_id, Stage::Pruned)
                                .because(feedback.reason.as_str())
                        };
                        self.tracker.record(&record).await;
                    }
                    self.announce(&feedback, removed_from).await;
                }
                self.metrics
                    .feedback
                    .with_label_values(&[&feedback.platform, outcome])
                    .inc();
                tracing::info!(token = %tag, reason = %feedback.reason, outcome, "feedback handled");
                Outcome::Ack
            }
            Err(error) => {
                Outcome::back_off(&self.worker, delivery.attempt, "redis", error.to_string())
            }
        }
    }
}
