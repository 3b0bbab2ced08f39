//! The in-app fall-back: pushes held back for a device whose app was connected and
//! active when the event was fanned out ([`crate::fanout::hold`]) wait in `FALLBACK` until
//! the app acknowledges the in-app message or the window passes.
//!
//! Each [`Fallback`] is read when it is published, then again when its window ends (the
//! worker puts it back with the window's remaining time as its delay):
//!
//! | the device's cursor reached `seq` | now | [`Decision`] | effect |
//! |---|---|---|---|
//! | yes | any | `Acknowledged` | the pushes are dropped: the app showed the message |
//! | no | at or past the deadline | `Expired` | dropped, recorded `expired` for the in-app device |
//! | no | before `ack_by_ms` | `Wait` | read again when the window ends |
//! | no | from `ack_by_ms` to the deadline | `Release` | the pushes are published as the fan-out would have (same subjects and ids), `fell_back_to_push` recorded |
//!
//! A release retried after a failure publishes the same ids, which JetStream drops when
//! it has them: a device rings once.

use std::time::Duration;

use async_nats::jetstream::Context;
use pipeline::contract::{Fallback, now_ms};
use pipeline::metrics::Metrics;
use pipeline::topology::Topology;
use pipeline::tracking::{Stage, StatusRecord, Tracker};
use pipeline::worker::{Delivery, Handler, Outcome};

use crate::fanout::job_id;
use crate::inapp::InAppState;

/// What to do with held pushes now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The app acknowledged: drop them.
    Acknowledged,
    /// The deadline passed: drop them.
    Expired,
    /// Look again after this long.
    Wait(Duration),
    /// Send them.
    Release,
}

/// The decision for `fallback` at `now_ms`, the app having acknowledged it or not.
pub fn decide(fallback: &Fallback, acknowledged: bool, now_ms: u64) -> Decision {
    if acknowledged {
        Decision::Acknowledged
    } else if now_ms >= fallback.deadline_ms {
        Decision::Expired
    } else if now_ms < fallback.ack_by_ms {
        Decision::Wait(Duration::from_millis(fallback.ack_by_ms - now_ms))
    } else {
        Decision::Release
    }
}

/// The `fallback` consumer's handler.
pub struct FallbackWorker {
    /// In-app cursors.
    pub inapp: InAppState,
    /// JetStream, for publishing released pushes.
    pub js: Context,
    /// Subjects.
    pub topology: Topology,
    /// Status records.
    pub tracker: Tracker,
    /// Metrics.
    pub metrics: Metrics,
    /// Publish-ack bound.
    pub publish_timeout: Duration,
    /// Where released pushes go: each provider's push stream partitions.
    pub push: pipeline::partition::PushRouters,
}

impl FallbackWorker {
    async fn release(&self, fallback: &Fallback) -> Result<(), String> {
        let headers = fallback.trace_id.as_deref().map(|trace| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(pipeline::contract::TRACE_HEADER, trace);
            headers
        });
        for job in &fallback.jobs {
            let body = serde_json::to_vec(job).map_err(|e| e.to_string())?.into();
            let id = job_id(&fallback.event_id, &job.token);
            let to = (job.platform.as_str(), job.environment);
            let publish = self
                .push
                .publish(to, &id, headers.as_ref(), &body, self.publish_timeout);
            tokio::time::timeout(self.publish_timeout, publish)
                .await
                .map_err(|_| format!("not acked within {:?}", self.publish_timeout))?
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The in-app device's record at `stage`.
    fn inapp_record(&self, fallback: &Fallback, stage: Stage) -> StatusRecord {
        StatusRecord {
            device: Some(pipeline::telemetry::token_tag(&fallback.token)),
            platform: Some(inapp::spec::NAME.to_owned()),
            app: Some(fallback.app.clone()),
            ..StatusRecord::event(&fallback.event_id, stage)
        }
    }

    fn count(&self, app: &str, outcome: &str) {
        self.metrics
            .inapp_messages
            .with_label_values(&[app, outcome])
            .inc();
    }
}

impl Handler for FallbackWorker {
    async fn handle(&self, delivery: Delivery<'_>) -> Outcome {
        let fallback: Fallback = match pipeline::worker::decode(delivery.payload) {
            Ok(fallback) => fallback,
            Err(dead) => return dead,
        };
        let cursor = match self
            .inapp
            .cursor(&fallback.token, &fallback.person_id)
            .await
        {
            Ok(cursor) => cursor,
            Err(error) => {
                return Outcome::Retry {
                    delay: Duration::from_millis(200),
                    reason: "redis",
                    error: error.to_string(),
                    deadline_ms: Some(fallback.deadline_ms),
                };
            }
        };
        match decide(&fallback, cursor >= fallback.seq, now_ms()) {
            Decision::Acknowledged => Outcome::Ack,
            Decision::Expired => {
                let record = self
                    .inapp_record(&fallback, Stage::Expired)
                    .because("not_acknowledged");
                self.tracker.record(&record).await;
                self.count(&fallback.app, "expired");
                Outcome::Ack
            }
            Decision::Wait(delay) => Outcome::Retry {
                delay,
                reason: "ack_window",
                error: "waiting for the app's acknowledgement".into(),
                deadline_ms: Some(fallback.deadline_ms),
            },
            Decision::Release => {
                if let Err(error) = self.release(&fallback).await {
                    return Outcome::Retry {
                        delay: Duration::from_millis(200),
                        reason: "publish",
                        error,
                        deadline_ms: Some(fallback.deadline_ms),
                    };
                }
                let at_ms = now_ms();
                self.tracker
                    .record(&StatusRecord {
                        at_ms,
                        ..self.inapp_record(&fallback, Stage::FellBackToPush)
                    })
                    .await;
                for job in &fallback.jobs {
                    self.tracker
                        .record(&StatusRecord {
                            device: Some(pipeline::telemetry::token_tag(&job.token)),
                            platform: Some(job.platform.clone()),
                            app: Some(job.app.clone()),
                            at_ms,
                            ..StatusRecord::event(&fallback.event_id, Stage::Queued)
                        })
                        .await;
                }
                self.count(&fallback.app, "fell_back_to_push");
                tracing::debug!(event_id = %fallback.event_id, pushes = fallback.jobs.len(), "in-app message not acknowledged in time: pushes released");
                Outcome::Ack
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fallback(ack_by_ms: u64, deadline_ms: u64) -> Fallback {
        Fallback {
            v: pipeline::contract::VERSION,
            event_id: "e".into(),
            person_id: "p".into(),
            token: "install-1".into(),
            app: "a".into(),
            seq: 7,
            ack_by_ms,
            deadline_ms,
            jobs: Vec::new(),
            trace_id: None,
        }
    }

    #[test]
    fn held_pushes_wait_for_the_window_then_go_unless_acknowledged_or_expired() {
        let f = fallback(2_000, 10_000);
        assert_eq!(
            decide(&f, false, 500),
            Decision::Wait(Duration::from_millis(1_500))
        );
        assert_eq!(decide(&f, false, 2_000), Decision::Release);
        assert_eq!(decide(&f, true, 2_000), Decision::Acknowledged);
        assert_eq!(decide(&f, true, 500), Decision::Acknowledged);
        assert_eq!(decide(&f, false, 10_000), Decision::Expired);
        assert_eq!(decide(&f, true, 10_000), Decision::Acknowledged);
    }
}
