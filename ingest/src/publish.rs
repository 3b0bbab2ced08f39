//! Publishing events to `EVENTS` and waiting for the JetStream ack, within a bound.
//!
//! A webhook is answered 200 only once JetStream has stored its event. A refused call
//! webhook is a phone that does not ring, so a failed publish is not answered at once:
//! while a stream leader is being elected, or a server restarts, or the client
//! reconnects, the publisher keeps the request and tries again (each try bounded by
//! `nats.publish_timeout_ms`, pauses growing from 20 ms to 500 ms) until
//! `nats.publish_retry_budget_ms` is spent, and only then answers 503. Every try carries
//! the same `Nats-Msg-Id`, so a try whose ack was lost but whose message was stored is
//! de-duplicated by JetStream, as is a producer's own retry.
//!
//! The tries run on their own task: a sender that hangs up before the answer (its own
//! timeout may be shorter than the budget) does not cancel them, so the event is still
//! stored if it can be within the budget, and the call still rings.
//!
//! With `nats.partitions` above 1, each try goes to the event's partition, or around it
//! to another one when it does not acknowledge within `nats.partition_ack_budget_ms` or
//! is known to be without a leader ([`pipeline::partition`]): a leader's death then costs
//! a webhook about one ack budget, not an election.
//!
//! # Admission: work, then held work
//!
//! A request takes one of `max_in_flight` permits before its body is read: that bounds
//! the work (reading, verifying, parsing) the process does at once, and a request beyond
//! it is refused at once with 503 `overloaded`, cheaply. A request whose first publish
//! try fails, or whose event is not stored within `nats.partition_ack_budget_ms` (a
//! store that stalls without an error), is no longer work but *held*: waiting on the store, it costs memory, not
//! CPU. It then trades its permit for its size in a byte budget (`max_held_bytes`:
//! [`HELD_OVERHEAD_BYTES`] plus its event), so a stall of the store does not fill
//! `max_in_flight` and push new webhooks into 503 while memory allows; once the byte
//! budget is spent, held requests keep their permits and new ones are refused as before.
//! The permit (or the bytes) is held by the publish task, so requests whose sender hung
//! up still count until their publish ends.
//!
//! The default budget (12 s) is sized by nats-server's Raft: a killed stream leader is
//! replaced after an election timeout of 4 to 9 s, plus the client's reconnect.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use bytes::Bytes;
use pipeline::metrics::Metrics;
use pipeline::partition::{Partitions, Router};
use pipeline::topology::{ConsumerKind, StreamKind, Topology};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Header carrying the producer's trace id through NATS.
pub use pipeline::contract::TRACE_HEADER;

/// Why an event was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The client is not connected to any server.
    #[error("NATS is not connected")]
    Disconnected,
    /// No ack within the bound.
    #[error("no JetStream ack within {0:?}")]
    Timeout(Duration),
    /// The retry budget ran out; the last failure is kept.
    #[error("not stored within the retry budget of {budget:?} ({tries} tries): {last}")]
    Exhausted {
        /// The budget.
        budget: Duration,
        /// How many tries were made.
        tries: u32,
        /// The last try's failure.
        last: Box<PublishError>,
    },
    /// JetStream refused or the request failed (the NATS error kind is kept).
    #[error(transparent)]
    Failed(#[from] pipeline::nats::StoreError),
    /// The task publishing the event ended without an answer (it panicked).
    #[error("publish task: {0}")]
    Task(#[source] tokio::task::JoinError),
}

impl PublishError {
    /// Bounded label for metrics and logs (the last try's, when the budget ran out).
    pub fn metric_reason(&self) -> &'static str {
        match self {
            PublishError::Disconnected => "disconnected",
            PublishError::Timeout(_) => "timeout",
            PublishError::Exhausted { last, .. } => last.metric_reason(),
            PublishError::Failed(error) => error.metric_reason(),
            PublishError::Task(_) => "task",
        }
    }
}

/// What one held request costs beyond its event's bytes, measured (`docs/scaling.md`:
/// 44–48 KB of resident memory per held webhook after 5–10 s of a stalled store): the
/// request and its connection, the publish task and its retry state, and the copies of
/// the event its tries leave in the NATS client's outgoing buffer while the server does
/// not read.
pub const HELD_OVERHEAD_BYTES: usize = 48 * 1024;

/// Ingest's admission: `max_in_flight` permits for requests being worked on, and
/// `max_held_bytes` for requests held while their publish is retried (module
/// documentation).
#[derive(Clone)]
pub struct Admission {
    permits: Arc<Semaphore>,
    held_bytes: Arc<Semaphore>,
    held: prometheus::IntGauge,
}

/// A request's admission, shared with the publishes it starts: a work permit until
/// [`Admitted::hold`] trades it for held bytes.
#[derive(Clone)]
pub struct Admitted {
    inner: Arc<std::sync::Mutex<Held>>,
    held_bytes: Arc<Semaphore>,
    held: prometheus::IntGauge,
}

enum Held {
    /// Counted against `max_in_flight` (released when dropped).
    Working { _permit: OwnedSemaphorePermit },
    /// Counted against `max_held_bytes` (released when dropped).
    Held { _bytes: HeldBytes },
}

/// A held request's bytes, counted in `pushline_held_requests` while it lives.
struct HeldBytes {
    _bytes: OwnedSemaphorePermit,
    held: prometheus::IntGauge,
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.held.dec();
    }
}

impl Admission {
    /// At most `max_in_flight` requests worked on at once, and `max_held_bytes` of
    /// requests held (counted in `metrics`' `pushline_held_requests`).
    pub fn new(max_in_flight: usize, max_held_bytes: usize, metrics: &Metrics) -> Self {
        Admission {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            held_bytes: Arc::new(Semaphore::new(max_held_bytes.min(Semaphore::MAX_PERMITS))),
            held: metrics.held_requests.with_label_values(&["ingest"]),
        }
    }

    /// A permit, or `None` at the limit (the request is to be refused, not queued).
    pub fn try_admit(&self) -> Option<Admitted> {
        self.permits
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|permit| Admitted {
                inner: Arc::new(std::sync::Mutex::new(Held::Working { _permit: permit })),
                held_bytes: self.held_bytes.clone(),
                held: self.held.clone(),
            })
    }
}

impl Admitted {
    /// The request now waits on the store with an event of `event_bytes`: it gives its
    /// work permit back if the byte budget has room for it ([`HELD_OVERHEAD_BYTES`] plus
    /// the event), and keeps it otherwise. True when it is now counted in bytes.
    pub fn hold(&self, event_bytes: usize) -> bool {
        let mut held = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*held, Held::Held { .. }) {
            return true;
        }
        let cost = u32::try_from(HELD_OVERHEAD_BYTES + event_bytes).unwrap_or(u32::MAX);
        match self.held_bytes.clone().try_acquire_many_owned(cost) {
            Ok(bytes) => {
                self.held.inc();
                // Dropping the work permit lets one more request in.
                *held = Held::Held {
                    _bytes: HeldBytes {
                        _bytes: bytes,
                        held: self.held.clone(),
                    },
                };
                true
            }
            Err(_) => false,
        }
    }
}

/// The result of a stored publish.
#[derive(Debug, Clone, Copy)]
pub struct Stored {
    /// JetStream had already stored a message with this id (a redelivered webhook).
    pub duplicate: bool,
}

/// Publishes events with de-duplication ids and bounded waits, over the partitions of
/// `EVENTS`.
#[derive(Clone)]
pub struct Publisher {
    client: async_nats::Client,
    js: Context,
    topology: Topology,
    router: Router,
    ack_budget: Duration,
    timeout: Duration,
    budget: Duration,
    stream_label: String,
    metrics: Metrics,
}

impl Publisher {
    /// A publisher on `client` to the `EVENTS` partitions of `topology`: each try waits
    /// at most `nats.publish_timeout_ms` for its ack (a partition at most
    /// `nats.partition_ack_budget_ms` while another is left), and tries go on for
    /// `nats.publish_retry_budget_ms`.
    pub fn new(
        client: async_nats::Client,
        topology: Topology,
        config: &pipeline::config::NatsConfig,
        metrics: Metrics,
    ) -> Self {
        let js = pipeline::topology::jetstream(client.clone());
        let ack_budget = Duration::from_millis(config.partition_ack_budget_ms);
        let stream_label = topology.stream_name(StreamKind::Events);
        let router = Router::new(
            js.clone(),
            Partitions::new(topology.partitions_of(StreamKind::Events)),
            ack_budget,
        )
        .counted(&metrics, &stream_label);
        Publisher {
            client,
            js,
            stream_label,
            topology,
            router,
            ack_budget,
            timeout: Duration::from_millis(config.publish_timeout_ms),
            budget: Duration::from_millis(config.publish_retry_budget_ms),
            metrics,
        }
    }

    /// Keeps the health view of the `EVENTS` partitions current until `shutdown`
    /// ([`pipeline::partition::watch`]); returns at once with one partition.
    pub async fn watch_partitions(&self, shutdown: pipeline::CancellationToken) {
        pipeline::partition::watch(
            &self.router,
            self.topology.clone(),
            ConsumerKind::Fanout,
            self.ack_budget,
            shutdown,
        )
        .await;
    }

    /// The NATS client it publishes on.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Its JetStream context.
    pub fn jetstream(&self) -> &Context {
        &self.js
    }

    /// Publishes `payload` as the event of `(source, resource)` with `Nats-Msg-Id:
    /// msg_id` and waits for the ack, trying again within the retry budget (on a task of
    /// its own, so the tries go on if the caller is dropped; the task holds the request's
    /// `admitted` permit, traded for held bytes once a try has failed).
    pub async fn publish(
        &self,
        subject: (String, String),
        msg_id: &str,
        trace_id: Option<&str>,
        payload: Bytes,
        admitted: Admitted,
    ) -> Result<Stored, PublishError> {
        let this = self.clone();
        let msg_id = msg_id.to_owned();
        let trace_id = trace_id.map(str::to_owned);
        tokio::spawn(async move {
            let stored = {
                let len = payload.len();
                let publishing = this.publish_within_budget(
                    &subject,
                    &msg_id,
                    trace_id.as_deref(),
                    payload,
                    &admitted,
                );
                let mut publishing = std::pin::pin!(publishing);
                // Not stored within the ack budget: the store is stalling (no answer is not
                // an error until the publish timeout), so the request is held from now on.
                tokio::select! {
                    stored = &mut publishing => stored,
                    () = tokio::time::sleep(this.ack_budget) => {
                        admitted.hold(len);
                        publishing.await
                    }
                }
            };
            drop(admitted);
            stored
        })
        .await
        .map_err(PublishError::Task)?
    }

    async fn publish_within_budget(
        &self,
        subject: &(String, String),
        msg_id: &str,
        trace_id: Option<&str>,
        payload: Bytes,
        admitted: &Admitted,
    ) -> Result<Stored, PublishError> {
        let started = Instant::now();
        let give_up = started + self.budget;
        let mut pause = Duration::from_millis(20);
        let mut tries = 0;
        loop {
            tries += 1;
            let left = give_up.saturating_duration_since(Instant::now());
            let error = match self
                .try_once(subject, msg_id, trace_id, &payload, left)
                .await
            {
                Ok(stored) => {
                    self.metrics
                        .publish_duration
                        .with_label_values(&[&self.stream_label])
                        .observe(started.elapsed().as_secs_f64());
                    return Ok(stored);
                }
                Err(error) => error,
            };
            if Instant::now() + pause >= give_up {
                return Err(PublishError::Exhausted {
                    budget: self.budget,
                    tries,
                    last: Box::new(error),
                });
            }
            if tries == 1 {
                tracing::info!(%error, "event not stored yet; retrying within the budget");
                admitted.hold(payload.len());
            }
            self.metrics
                .retries
                .with_label_values(&["ingest", "publish"])
                .inc();
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// One try, waiting at most `min(timeout, left)` for the ack.
    async fn try_once(
        &self,
        (source, resource): &(String, String),
        msg_id: &str,
        trace_id: Option<&str>,
        payload: &Bytes,
        left: Duration,
    ) -> Result<Stored, PublishError> {
        if !pipeline::nats::is_connected(&self.client) {
            return Err(PublishError::Disconnected);
        }
        let headers = trace_id.map(|trace| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(TRACE_HEADER, trace);
            headers
        });
        let bound = self.timeout.min(left).max(Duration::from_millis(1));
        let subject_of = |partition| self.topology.event_subject_in(partition, source, resource);
        let (_, ack) = tokio::time::timeout(
            bound,
            self.router
                .publish(subject_of, msg_id, headers.as_ref(), payload, bound),
        )
        .await
        .map_err(|_| PublishError::Timeout(bound))??;
        Ok(Stored {
            duplicate: ack.duplicate,
        })
    }

    /// Readiness: connected, JetStream answers, and `EVENTS` exists (every partition,
    /// one of them at least answering).
    pub async fn check(&self, topology: &Topology) -> Result<(), String> {
        pipeline::nats::check_topology(&self.client, topology, &[StreamKind::Events], &[]).await
    }
}
