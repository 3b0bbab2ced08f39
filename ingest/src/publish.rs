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
//! Each try holds the request's admission permit ([`Admission`]), so requests whose
//! sender hung up still count against `max_in_flight` until their publish ends.
//!
//! The default budget (12 s) is sized by nats-server's Raft: a killed stream leader is
//! replaced after an election timeout of 4 to 9 s, plus the client's reconnect.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use bytes::Bytes;
use pipeline::metrics::Metrics;
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

/// Ingest's bound on requests in flight (`max_in_flight`): a permit is taken before a
/// request's body is read and released when the request, and every publish it started,
/// is done.
#[derive(Clone)]
pub struct Admission {
    permits: Arc<Semaphore>,
}

/// A request's admission, shared with the publishes it starts.
#[derive(Clone)]
pub struct Admitted {
    _permit: Arc<OwnedSemaphorePermit>,
}

impl Admission {
    /// At most `max_in_flight` requests at once.
    pub fn new(max_in_flight: usize) -> Self {
        Admission {
            permits: Arc::new(Semaphore::new(max_in_flight)),
        }
    }

    /// A permit, or `None` at the limit (the request is to be refused, not queued).
    pub fn try_admit(&self) -> Option<Admitted> {
        self.permits
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|permit| Admitted {
                _permit: Arc::new(permit),
            })
    }
}

/// The result of a stored publish.
#[derive(Debug, Clone, Copy)]
pub struct Stored {
    /// JetStream had already stored a message with this id (a redelivered webhook).
    pub duplicate: bool,
}

/// Publishes events with de-duplication ids and bounded waits.
#[derive(Clone)]
pub struct Publisher {
    client: async_nats::Client,
    js: Context,
    timeout: Duration,
    budget: Duration,
    stream_label: String,
    metrics: Metrics,
}

impl Publisher {
    /// A publisher on `client`: each try waits at most `timeout` for its ack, and tries
    /// go on for `budget`; `stream_label` names the stream in metrics.
    pub fn new(
        client: async_nats::Client,
        timeout: Duration,
        budget: Duration,
        stream_label: String,
        metrics: Metrics,
    ) -> Self {
        let js = pipeline::topology::jetstream(client.clone());
        Publisher {
            client,
            js,
            timeout,
            budget,
            stream_label,
            metrics,
        }
    }

    /// The NATS client it publishes on.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Its JetStream context.
    pub fn jetstream(&self) -> &Context {
        &self.js
    }

    /// Publishes `payload` on `subject` with `Nats-Msg-Id: msg_id` and waits for the ack,
    /// trying again within the retry budget (on a task of its own, so the tries go on if
    /// the caller is dropped; the task holds the request's `admitted` permit).
    pub async fn publish(
        &self,
        subject: String,
        msg_id: &str,
        trace_id: Option<&str>,
        payload: Bytes,
        admitted: Admitted,
    ) -> Result<Stored, PublishError> {
        let this = self.clone();
        let msg_id = msg_id.to_owned();
        let trace_id = trace_id.map(str::to_owned);
        tokio::spawn(async move {
            let stored = this
                .publish_within_budget(subject, &msg_id, trace_id.as_deref(), payload)
                .await;
            drop(admitted);
            stored
        })
        .await
        .map_err(PublishError::Task)?
    }

    async fn publish_within_budget(
        &self,
        subject: String,
        msg_id: &str,
        trace_id: Option<&str>,
        payload: Bytes,
    ) -> Result<Stored, PublishError> {
        let started = Instant::now();
        let give_up = started + self.budget;
        let mut pause = Duration::from_millis(20);
        let mut tries = 0;
        loop {
            tries += 1;
            let left = give_up.saturating_duration_since(Instant::now());
            let error = match self
                .try_once(&subject, msg_id, trace_id, &payload, left)
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
        subject: &str,
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
        let ack = tokio::time::timeout(
            bound,
            pipeline::nats::publish_stored(&self.js, subject, msg_id, headers.as_ref(), payload),
        )
        .await
        .map_err(|_| PublishError::Timeout(bound))??;
        Ok(Stored {
            duplicate: ack.duplicate,
        })
    }

    /// Readiness: connected, JetStream answers, and `EVENTS` exists.
    pub async fn check(&self, topology: &pipeline::topology::Topology) -> Result<(), String> {
        pipeline::nats::check_topology(
            &self.client,
            topology,
            &[pipeline::topology::StreamKind::Events],
            &[],
        )
        .await
    }
}
