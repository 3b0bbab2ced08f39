//! What every dispatcher shares: the [`Provider`] trait each one implements, the
//! [`Verdict`] a provider returns, and the [`Dispatch`] handler that turns verdicts into
//! acks, retries, token feedback and dead letters with the same rules for every provider.
//! Each verdict is also written to the event's delivery status ([`crate::tracking`]).
//!
//! | verdict | action |
//! |---|---|
//! | `Delivered` | ack; count; observe end-to-end latency |
//! | `InvalidToken` | publish `Feedback` to `FEEDBACK` (wait for its ack), then ack; marked held while most of the app's answers are invalid ([`crate::prune_guard`]) |
//! | `Retry` | nak with [`crate::retry::retry_delay`] (backoff, jitter, `Retry-After`) until the deadline; a retry that would land after it → dropped, counted as expired |
//! | `Reject` | dead letter with the reason; no retry |
//! | (less than `deadline_margin_ms` left) | dropped before sending, counted as expired |
//! | (no answer by the deadline) | request cancelled, counted as expired |
//! | (job already delivered by this replica) | acked unsent, counted as `duplicate` ([`DeliveredJobs`]) |

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, BoxFuture, Readiness};
use crate::config::{NatsConfig, WorkerConfig};
use crate::contract::{Feedback, PushJob, VERSION, now_ms};
use crate::delivered::{DeliveredJobs, Seen};
use crate::metrics::Metrics;
use crate::prune_guard::{PruneGuard, PruneGuardConfig};
use crate::retry::RetryInput;
use crate::topology::{ConsumerKind, StreamKind, Topology};
use crate::tracking::{Stage, StatusRecord, Tracker};
use crate::worker::{Delivery, Handler, Outcome, run_when_ready};

/// A provider's answer to one push, already classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted by the provider.
    Delivered {
        /// The provider's id of the push (APNs `apns-id`, FCM message name).
        id: Option<String>,
    },
    /// The token is dead; the registry should forget it.
    InvalidToken {
        /// Bounded reason (metric label).
        reason: &'static str,
        /// The provider's own reason text, kept in the feedback.
        detail: String,
        /// The provider's time of invalidation (APNs 410 `timestamp`), ms.
        timestamp_ms: Option<u64>,
    },
    /// A transient failure: try again later.
    Retry {
        /// Bounded reason (metric label).
        reason: &'static str,
        /// Detail for logs and, if attempts run out, the dead letter.
        detail: String,
        /// The provider's `Retry-After`.
        retry_after: Option<Duration>,
        /// The provider refused pushline's credential (a revoked key, a deleted service
        /// account, a wrong certificate), not the push: set by the provider's `classify`,
        /// read by the credential alarm (`pushline_credential_valid`).
        credential: bool,
    },
    /// A permanent failure for this push: dead-letter it.
    Reject {
        /// Bounded reason (metric label, dead-letter reason).
        reason: &'static str,
        /// Detail (an unknown provider reason is kept here as text).
        detail: String,
        /// The provider refused pushline's credential, not the push (as for `Retry`).
        credential: bool,
    },
}

impl Verdict {
    /// A transient failure of the push itself.
    pub fn retry(
        reason: &'static str,
        detail: impl Into<String>,
        retry_after: Option<Duration>,
    ) -> Verdict {
        Verdict::Retry {
            reason,
            detail: detail.into(),
            retry_after,
            credential: false,
        }
    }

    /// A permanent failure of the push itself.
    pub fn reject(reason: &'static str, detail: impl Into<String>) -> Verdict {
        Verdict::Reject {
            reason,
            detail: detail.into(),
            credential: false,
        }
    }

    /// The same verdict, saying the provider refused pushline's credential (a `Retry` or
    /// `Reject`; other verdicts are left as they are).
    pub fn of_credential(mut self) -> Verdict {
        if let Verdict::Retry { credential, .. } | Verdict::Reject { credential, .. } = &mut self {
            *credential = true;
        }
        self
    }

    /// What this answer says about the app's credential: `Some(true)` when the provider
    /// took it (a push delivered, or a token judged — which needs an accepted
    /// credential), `Some(false)` when it refused it, else nothing.
    pub fn credential_valid(&self) -> Option<bool> {
        match self {
            Verdict::Delivered { .. } | Verdict::InvalidToken { .. } => Some(true),
            Verdict::Retry {
                credential: true, ..
            }
            | Verdict::Reject {
                credential: true, ..
            } => Some(false),
            _ => None,
        }
    }
}

/// A push provider client.
pub trait Provider: Send + Sync + 'static {
    /// Which provider this is: its [`crate::provider::Spec::name`].
    const NAME: &'static str;

    /// The provider's part of a job ([`PushJob::part`]), decoded with the job.
    type Part: serde::de::DeserializeOwned + Send + Sync;

    /// What the provider sends a job's pushes with: its app's (and environment's)
    /// credentials and connections.
    type Route: Send + Sync;

    /// The route of `job`'s app, or `None` when the app is not configured here.
    fn route(&self, job: &PushJob<Self::Part>) -> Option<&Self::Route>;

    /// Sends one push over `route` and classifies the answer. Must bound its own time.
    fn send(
        &self,
        route: &Self::Route,
        job: &PushJob<Self::Part>,
    ) -> impl Future<Output = Verdict> + Send;

    /// Credential health for `/readyz`.
    fn check(&self) -> BoxFuture<'_, Result<(), String>>;

    /// Asks the provider whether each app's credential is accepted, without pushing to a
    /// device: `(app, Some(valid))`, or `None` when the provider could not be asked.
    fn probe_credentials(&self) -> BoxFuture<'_, Vec<(String, Option<bool>)>>;
}

/// What a verdict means for its job: the pure part of the table above, decided before any
/// side effect ([`Dispatch`] then counts, records and publishes accordingly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Accepted: ack.
    Delivered {
        /// The provider's id of the push.
        id: Option<String>,
    },
    /// The token is dead: publish `Feedback`, then ack.
    InvalidToken {
        /// Bounded reason.
        reason: &'static str,
        /// The provider's reason text.
        detail: String,
        /// The provider's time of invalidation, ms.
        timestamp_ms: Option<u64>,
    },
    /// Try again after `delay`.
    Retry {
        /// Backoff (with jitter, at least the provider's `Retry-After`).
        delay: Duration,
        /// Bounded reason.
        reason: &'static str,
        /// Detail.
        detail: String,
    },
    /// A retry would land after the deadline: drop, counted as expired.
    Expired {
        /// Why it was being retried.
        reason: &'static str,
    },
    /// Dead-letter, no retry.
    Dead {
        /// Bounded reason.
        reason: &'static str,
        /// Detail.
        detail: String,
    },
}

impl Settle {
    /// Decides `verdict` for a job whose next try would be `next` (its attempt, backoff
    /// and time left), with `jitter` in `[0, 1)`.
    pub fn of(verdict: Verdict, next: RetryInput, jitter: f64) -> Settle {
        match verdict {
            Verdict::Delivered { id } => Settle::Delivered { id },
            Verdict::InvalidToken {
                reason,
                detail,
                timestamp_ms,
            } => Settle::InvalidToken {
                reason,
                detail,
                timestamp_ms,
            },
            Verdict::Retry {
                reason,
                detail,
                retry_after,
                ..
            } => match crate::retry::retry_delay(next.honouring(retry_after), jitter) {
                Some(delay) => Settle::Retry {
                    delay,
                    reason,
                    detail,
                },
                None => Settle::Expired { reason },
            },
            Verdict::Reject { reason, detail, .. } => Settle::Dead { reason, detail },
        }
    }
}

/// `pushline_credential_valid{provider,app}`: what the last answer about an app's
/// credential said.
fn credential_seen(metrics: &Metrics, provider: &str, app: &str, valid: bool) {
    let gauge = metrics.credential_valid.with_label_values(&[provider, app]);
    if !valid && gauge.get() != 0 {
        tracing::error!(
            provider,
            app,
            "the provider refuses this app's credential: no push for it can be delivered"
        );
    }
    gauge.set(i64::from(valid));
}

/// Probes every app's credential at once and then every `every`, until `shutdown`.
async fn probe_credentials<P: Provider>(
    provider: Arc<P>,
    metrics: Metrics,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        for (app, valid) in provider.probe_credentials().await {
            match valid {
                Some(false) => {
                    tracing::error!(provider = P::NAME, %app, "credential check: the provider refuses this app's credential");
                    credential_seen(&metrics, P::NAME, &app, false);
                }
                Some(true) => credential_seen(&metrics, P::NAME, &app, true),
                None => {
                    tracing::warn!(provider = P::NAME, %app, "credential check could not reach the provider")
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// The worker handler of a dispatcher.
pub struct Dispatch<P> {
    provider: Arc<P>,
    js: Context,
    feedback_subject: String,
    worker: WorkerConfig,
    metrics: Metrics,
    delivered: DeliveredJobs,
    tracker: Tracker,
    guard: PruneGuard,
}

impl<P: Provider> Dispatch<P> {
    /// A handler sending through `provider`.
    pub fn new(
        provider: Arc<P>,
        js: Context,
        topology: &Topology,
        worker: WorkerConfig,
        metrics: Metrics,
        tracker: Tracker,
        guard: PruneGuardConfig,
    ) -> Self {
        Dispatch {
            provider,
            js,
            feedback_subject: topology.feedback_subject(P::NAME),
            worker,
            guard: PruneGuard::new(guard, P::NAME, metrics.clone()),
            metrics,
            delivered: DeliveredJobs::default(),
            tracker,
        }
    }

    /// Sends the claimed `job`, waiting no longer than its deadline, and records a
    /// delivery (or releases the claim). `None` when the deadline came first (the request
    /// is cancelled).
    async fn send_once(
        &self,
        route: &P::Route,
        job: &PushJob<P::Part>,
        job_id: u64,
        now: u64,
    ) -> Option<Verdict> {
        let left = Duration::from_millis(job.deadline_ms.saturating_sub(now));
        let started = Instant::now();
        let verdict = tokio::time::timeout(left, self.provider.send(route, job))
            .await
            .ok();
        self.metrics
            .provider_duration
            .with_label_values(&[P::NAME, &job.app])
            .observe(started.elapsed().as_secs_f64());
        if matches!(verdict, Some(Verdict::Delivered { .. })) {
            self.delivered.delivered(job_id);
        } else {
            self.delivered.released(job_id);
        }
        verdict
    }

    fn count(&self, app: &str, outcome: &str, reason: &str) {
        self.metrics
            .pushes
            .with_label_values(&[P::NAME, app, outcome, reason])
            .inc();
    }

    async fn track(&self, record: StatusRecord) {
        self.tracker.record(&record).await;
    }

    async fn expired(&self, job: &PushJob<P::Part>, record: StatusRecord) {
        self.track(record).await;
        self.count(&job.app, "expired", "deadline");
        self.metrics.expired.with_label_values(&[P::NAME]).inc();
    }

    /// Publishes the verdict that `job`'s token is dead; `held` marks it for the prune
    /// stage to keep the token ([`crate::prune_guard`]).
    async fn publish_feedback(
        &self,
        job: &PushJob<P::Part>,
        detail: &str,
        timestamp_ms: Option<u64>,
        held: bool,
    ) -> Result<(), String> {
        let feedback = Feedback {
            v: VERSION,
            platform: P::NAME.to_owned(),
            token: job.token.clone(),
            app: job.app.clone(),
            reason: detail.to_owned(),
            provider_timestamp_ms: timestamp_ms,
            observed_at_ms: now_ms(),
            event_id: Some(job.event_id.clone()),
        };
        let body = serde_json::to_vec(&feedback).map_err(|e| e.to_string())?;
        // One verdict per job, however often the job is tried.
        let id = format!(
            "feedback:{}:{}",
            job.event_id,
            crate::telemetry::token_tag(&job.token)
        );
        let mut headers = async_nats::HeaderMap::new();
        if let Some(trace) = job.trace_id.as_deref() {
            headers.insert(crate::contract::TRACE_HEADER, trace);
        }
        if held {
            headers.insert(crate::prune_guard::HOLD_HEADER, "invalid_share");
        }
        let headers = (!headers.is_empty()).then_some(headers);
        crate::nats::publish_stored(
            &self.js,
            &self.feedback_subject,
            &id,
            headers.as_ref(),
            &body.into(),
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
    }
}

impl<P: Provider> Handler for Dispatch<P> {
    async fn handle(&self, delivery: Delivery<'_>) -> Outcome {
        let job: PushJob<P::Part> = match crate::worker::decode(delivery.payload) {
            Ok(job) => job,
            Err(dead) => return dead,
        };
        if job.platform != P::NAME {
            return Outcome::Dead {
                reason: "malformed",
                error: format!("job for {} on the {} dispatcher", job.platform, P::NAME),
            };
        }
        let Some(route) = self.provider.route(&job) else {
            self.count("unconfigured", "rejected", "unknown_app");
            self.track(StatusRecord::job(&job, Stage::DeadLettered).because("unknown_app"))
                .await;
            return Outcome::Dead {
                reason: "unknown_app",
                error: format!(
                    "no credentials configured for app `{}` ({})",
                    job.app,
                    job.environment.as_str()
                ),
            };
        };
        let app = job.app.as_str();
        let now = now_ms();
        if now.saturating_add(self.worker.deadline_margin_ms) >= job.deadline_ms {
            let record = StatusRecord::job(&job, Stage::Expired).because("deadline");
            self.expired(&job, record.attempt(delivery.attempt, None))
                .await;
            return Outcome::Ack;
        }
        let job_id = self.delivered.key(&job.event_id, &job.token);
        match self.delivered.claim(job_id, job.deadline_ms, now) {
            Seen::New => {}
            Seen::Delivered => {
                self.count(app, "duplicate", "already_delivered");
                self.track(StatusRecord::job(&job, Stage::Duplicate)).await;
                tracing::info!(event_id = %job.event_id, "job came back after it was delivered; not sent again");
                return Outcome::Ack;
            }
            Seen::InFlight => {
                return Outcome::Retry {
                    delay: Duration::from_millis(self.worker.retry_base_ms),
                    reason: "in_flight",
                    error: "the same job is being sent by this replica".into(),
                    deadline_ms: Some(job.deadline_ms),
                };
            }
        }
        // Every record of this try says which try it was and when it was sent.
        let tried = |stage| StatusRecord::job(&job, stage).attempt(delivery.attempt, Some(now));
        let Some(verdict) = self.send_once(route, &job, job_id, now).await else {
            tracing::info!(event_id = %job.event_id, token = %crate::telemetry::token_tag(&job.token), "no provider answer before the deadline; cancelled");
            self.expired(&job, tried(Stage::Expired).because("no_answer"))
                .await;
            return Outcome::Ack;
        };

        if let Some(valid) = verdict.credential_valid() {
            credential_seen(&self.metrics, P::NAME, app, valid);
        }
        let next = RetryInput::after(delivery.attempt, &self.worker).before(
            job.deadline_ms,
            self.worker.deadline_margin_ms,
            now_ms(),
        );
        let settle = Settle::of(verdict, next, rand::random::<f64>());
        self.apply(&job, settle, tried).await
    }
}

impl<P: Provider> Dispatch<P> {
    /// Carries out what a verdict was decided to mean: counts, status records, feedback.
    async fn apply(
        &self,
        job: &PushJob<P::Part>,
        settle: Settle,
        tried: impl Fn(Stage) -> StatusRecord,
    ) -> Outcome {
        let app = job.app.as_str();
        let tag = || crate::telemetry::token_tag(&job.token);
        match settle {
            Settle::Delivered { id } => {
                self.guard.observe(app, false, now_ms());
                self.count(app, "delivered", "ok");
                let e2e_ms = now_ms().saturating_sub(job.received_at_ms);
                self.metrics
                    .end_to_end
                    .with_label_values(&[P::NAME, job.class.as_str()])
                    .observe(e2e_ms as f64 / 1000.0);
                self.track(StatusRecord {
                    provider_id: id,
                    ..tried(Stage::Accepted)
                })
                .await;
                tracing::debug!(event_id = %job.event_id, token = %tag(), e2e_ms, "delivered");
                Outcome::Ack
            }
            Settle::InvalidToken {
                reason,
                detail,
                timestamp_ms,
            } => {
                let held = self.guard.observe(app, true, now_ms());
                if let Err(error) = self
                    .publish_feedback(job, &detail, timestamp_ms, held)
                    .await
                {
                    // Keep the job until the feedback is safely stored.
                    return Outcome::Retry {
                        delay: Duration::from_millis(self.worker.retry_base_ms),
                        reason: "feedback_publish",
                        error,
                        deadline_ms: None,
                    };
                }
                self.count(app, "invalid_token", reason);
                self.track(tried(Stage::InvalidToken).because(detail.as_str()))
                    .await;
                tracing::info!(event_id = %job.event_id, token = %tag(), reason = %detail, "token rejected by provider");
                Outcome::Ack
            }
            Settle::Retry {
                delay,
                reason,
                detail,
            } => {
                self.count(app, "retry", reason);
                self.track(tried(Stage::Retried).because(reason)).await;
                Outcome::Retry {
                    delay,
                    reason,
                    error: detail,
                    deadline_ms: Some(job.deadline_ms),
                }
            }
            Settle::Expired { reason } => {
                tracing::info!(event_id = %job.event_id, token = %tag(), reason, "deadline would pass before a retry; dropped");
                self.expired(job, tried(Stage::Expired).because(reason))
                    .await;
                Outcome::Ack
            }
            Settle::Dead { reason, detail } => {
                self.count(app, "rejected", reason);
                self.track(tried(Stage::DeadLettered).because(reason)).await;
                Outcome::Dead {
                    reason,
                    error: detail,
                }
            }
        }
    }
}

/// What a dispatcher service needs besides its provider.
pub struct DispatcherSetup {
    /// Service name (`dispatcher-apns`).
    pub service: &'static str,
    /// NATS.
    pub nats: NatsConfig,
    /// Worker settings.
    pub worker: WorkerConfig,
    /// Mass-pruning protection.
    pub prune_guard: PruneGuardConfig,
    /// How often every app's credential is checked with the provider (0: never).
    pub credential_check_secs: u64,
}

/// Why a dispatcher could not run.
#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    /// Bad configuration or credentials.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// NATS options refused.
    #[error(transparent)]
    Nats(#[from] crate::nats::ConnectError),
    /// The admin listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Io {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// Binds a dispatcher's admin listener.
pub async fn bind_admin(addr: std::net::SocketAddr) -> Result<TcpListener, DispatcherError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DispatcherError::Io { addr, source })
}

struct Ready<P> {
    client: async_nats::Client,
    topology: Topology,
    kind: ConsumerKind,
    provider: Arc<P>,
}

impl<P: Provider> Readiness for Ready<P> {
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            crate::nats::check_topology(
                &self.client,
                &self.topology,
                &[self.kind.stream(), StreamKind::Feedback],
                &[self.kind],
            )
            .await?;
            self.provider.check().await
        })
    }
}

/// Runs a dispatcher: admin server, stream set-up, and the worker, until `shutdown`.
pub async fn serve<P: Provider>(
    setup: DispatcherSetup,
    provider: P,
    metrics: Metrics,
    admin_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), DispatcherError> {
    let provider = Arc::new(provider);
    let client = crate::nats::connect(&setup.nats, &format!("pushline-{}", setup.service)).await?;
    let js = crate::topology::jetstream(client.clone());
    let topology = Topology::new(&setup.nats, &[P::NAME]);
    let ready = Arc::new(Ready {
        client: client.clone(),
        topology: topology.clone(),
        kind: ConsumerKind::Dispatch(P::NAME),
        provider: provider.clone(),
    });
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        admin::router(metrics.clone(), ready),
        shutdown.clone(),
    ));
    let prober = (setup.credential_check_secs > 0).then(|| {
        tokio::spawn(probe_credentials(
            provider.clone(),
            metrics.clone(),
            Duration::from_secs(setup.credential_check_secs),
            shutdown.clone(),
        ))
    });
    if crate::topology::ensure_until_ready(&js, &topology, &shutdown).await {
        let tracker = Tracker::new(
            client,
            topology.clone(),
            setup.nats.tracking,
            metrics.clone(),
        );
        let handler = Dispatch::new(
            provider,
            js.clone(),
            &topology,
            setup.worker.clone(),
            metrics.clone(),
            tracker,
            setup.prune_guard.clone(),
        );
        run_when_ready(
            js,
            topology,
            ConsumerKind::Dispatch(P::NAME),
            setup.worker,
            handler,
            metrics,
            shutdown.clone(),
        )
        .await;
    }
    shutdown.cancel();
    if let Some(prober) = prober {
        let _ = prober.await;
    }
    let _ = admin_task.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next(attempt: u64, time_left_ms: u64) -> RetryInput {
        RetryInput {
            attempt,
            base: Duration::from_millis(100),
            max: Duration::from_millis(1_000),
            retry_after: None,
            time_left: Some(Duration::from_millis(time_left_ms)),
        }
    }

    fn retry(retry_after: Option<Duration>) -> Verdict {
        Verdict::retry("TooManyRequests", "429", retry_after)
    }

    #[test]
    fn delivered_invalid_and_rejected_verdicts_pass_through() {
        let id = Some("apns-id".to_owned());
        assert_eq!(
            Settle::of(Verdict::Delivered { id: id.clone() }, next(1, 10_000), 0.5),
            Settle::Delivered { id }
        );
        let invalid = Verdict::InvalidToken {
            reason: "Unregistered",
            detail: "Unregistered".into(),
            timestamp_ms: Some(7),
        };
        assert_eq!(
            Settle::of(invalid, next(1, 0), 0.5),
            Settle::InvalidToken {
                reason: "Unregistered",
                detail: "Unregistered".into(),
                timestamp_ms: Some(7)
            },
            "a dead token is reported even with no time left"
        );
        let reject = Verdict::reject("BadTopic", "400");
        assert_eq!(
            Settle::of(reject, next(1, 10_000), 0.5),
            Settle::Dead {
                reason: "BadTopic",
                detail: "400".into()
            }
        );
    }

    #[test]
    fn a_retry_backs_off_and_honours_retry_after_within_the_deadline() {
        // Attempt 3: 100 ms · 2² = 400 ms, equal jitter → 200 + 200·0.5 = 300 ms.
        assert_eq!(
            Settle::of(retry(None), next(3, 10_000), 0.5),
            Settle::Retry {
                delay: Duration::from_millis(300),
                reason: "TooManyRequests",
                detail: "429".into()
            }
        );
        // Retry-After raises the delay, even above the configured maximum.
        assert_eq!(
            Settle::of(retry(Some(Duration::from_secs(5))), next(1, 10_000), 0.5),
            Settle::Retry {
                delay: Duration::from_secs(5),
                reason: "TooManyRequests",
                detail: "429".into()
            }
        );
    }

    #[test]
    fn a_retry_that_would_land_after_the_deadline_expires_instead() {
        assert_eq!(
            Settle::of(retry(None), next(3, 250), 0.5),
            Settle::Expired {
                reason: "TooManyRequests"
            }
        );
        assert_eq!(
            Settle::of(retry(Some(Duration::from_secs(5))), next(1, 4_999), 0.0),
            Settle::Expired {
                reason: "TooManyRequests"
            }
        );
    }

    #[test]
    fn the_credential_is_judged_by_the_answer() {
        let delivered = Verdict::Delivered { id: None };
        assert_eq!(delivered.credential_valid(), Some(true));
        let invalid = Verdict::InvalidToken {
            reason: "BadDeviceToken",
            detail: String::new(),
            timestamp_ms: None,
        };
        assert_eq!(invalid.credential_valid(), Some(true));
        let refused = Verdict::reject("InvalidProviderToken", "").of_credential();
        assert_eq!(refused.credential_valid(), Some(false));
        let expired = Verdict::retry("ExpiredProviderToken", "", None).of_credential();
        assert_eq!(expired.credential_valid(), Some(false));
        assert_eq!(retry(None).credential_valid(), None);
        assert_eq!(Verdict::reject("BadTopic", "").credential_valid(), None);
        // Renaming a reason cannot silence the alarm: only the flag counts.
        let renamed = Verdict::reject("renamed", "").of_credential();
        assert_eq!(renamed.credential_valid(), Some(false));
    }
}
