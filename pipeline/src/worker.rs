//! The one JetStream worker loop every consuming stage uses.
//!
//! It pulls from a durable consumer, runs at most `concurrency` handlers at once (a
//! [`Semaphore`] bounds them), and turns each handler's [`Outcome`] into exactly one
//! acknowledgement:
//!
//! | outcome | action |
//! |---|---|
//! | [`Outcome::Ack`] | `ack` |
//! | [`Outcome::Retry`] | `nak` with the delay; at `max_attempts` → dead letter |
//! | [`Outcome::Dead`] | publish a [`DeadLetter`] to `DEAD`, wait for its ack, **then** `term` |
//!
//! A dead letter that cannot be published is never terminated: the message is nak'ed and
//! comes back, so nothing is lost. A message delivered more than `max_attempts` times
//! (say, because its handler keeps crashing the process) is dead-lettered before the
//! handler sees it again.
//!
//! Shutdown: when the token is cancelled the loop stops pulling, waits for every running
//! handler to finish and acknowledge, and returns.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind, Context};
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::WorkerConfig;
use crate::contract::{DeadLetter, VERSION, now_ms};
use crate::metrics::Metrics;
use crate::topology::{ConsumerKind, Topology, TopologyError};

/// What a handler decided about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done (delivered, or deliberately dropped and counted by the handler).
    Ack,
    /// Try again after `delay`.
    Retry {
        /// When to redeliver.
        delay: Duration,
        /// Bounded reason (metric label, dead-letter reason if attempts run out).
        reason: &'static str,
        /// Detail for logs and the dead letter.
        error: String,
    },
    /// Give up: dead-letter it.
    Dead {
        /// Bounded reason (metric label and dead-letter reason).
        reason: &'static str,
        /// Detail, kept in the dead letter (e.g. an unknown provider reason as text).
        error: String,
    },
}

/// One delivered message, as handlers see it.
#[derive(Debug)]
pub struct Delivery<'a> {
    /// The subject it was published on.
    pub subject: &'a str,
    /// The message body.
    pub payload: &'a Bytes,
    /// The message headers.
    pub headers: Option<&'a async_nats::HeaderMap>,
    /// Which delivery this is, from 1.
    pub attempt: u64,
}

/// A stage's message handler.
pub trait Handler: Send + Sync + 'static {
    /// Handles one message. Must not panic on any input and should bound its own time.
    fn handle(&self, delivery: Delivery<'_>) -> impl Future<Output = Outcome> + Send;
}

/// A running consumer: pulls, dispatches to the handler, acknowledges.
pub struct Worker<H> {
    kind: ConsumerKind,
    consumer: PullConsumer,
    js: Context,
    topology: Topology,
    config: WorkerConfig,
    handler: Arc<H>,
    metrics: Metrics,
}

impl<H: Handler> Worker<H> {
    /// Sets up the durable consumer for `kind` (creating it if needed). On failure the
    /// handler is handed back so the caller can try again.
    pub async fn new(
        js: Context,
        topology: Topology,
        kind: ConsumerKind,
        config: WorkerConfig,
        handler: H,
        metrics: Metrics,
    ) -> Result<Self, (TopologyError, H)> {
        let consumer = match topology.consumer(&js, kind, &config).await {
            Ok(consumer) => consumer,
            Err(error) => return Err((error, handler)),
        };
        Ok(Worker {
            kind,
            consumer,
            js,
            topology,
            config,
            handler: Arc::new(handler),
            metrics,
        })
    }

    /// Runs until `shutdown` is cancelled; returns after in-flight messages are settled.
    pub async fn run(self, shutdown: CancellationToken) {
        let stage = self.kind.stage();
        let shared = Arc::new(Shared {
            stage,
            js: self.js.clone(),
            dead_subject: self.topology.dead_subject(stage),
            max_attempts: self.config.max_attempts,
            metrics: self.metrics.clone(),
        });
        let permits = Arc::new(Semaphore::new(self.config.concurrency));
        let mut tasks = JoinSet::new();
        let lag = tokio::spawn(report_lag(
            self.consumer.clone(),
            self.topology.stream_name(self.kind.stream()),
            self.kind.durable_name(),
            self.metrics.clone(),
            shutdown.clone(),
        ));
        let batch = self.config.concurrency.clamp(1, 1_000);

        'pull: while !shutdown.is_cancelled() {
            let messages = self
                .consumer
                .stream()
                .max_messages_per_batch(batch)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await;
            let mut messages = match messages {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::warn!(stage, %error, "cannot start pulling; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break 'pull,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue 'pull,
                    }
                }
            };
            loop {
                // Take a slot before pulling the next message, so no more than
                // `concurrency` messages are ever out of the server's hands at once.
                let permit = tokio::select! {
                    () = shutdown.cancelled() => break 'pull,
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break 'pull,
                    },
                };
                let next = tokio::select! {
                    () = shutdown.cancelled() => break 'pull,
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok(message)) => {
                        let shared = shared.clone();
                        let handler = self.handler.clone();
                        tasks.spawn(async move {
                            shared.process(handler.as_ref(), message).await;
                            drop(permit);
                        });
                    }
                    Some(Err(error)) => {
                        tracing::debug!(stage, %error, "pull stream hiccup");
                    }
                    None => continue 'pull,
                }
                while tasks.try_join_next().is_some() {}
            }
        }
        tracing::info!(
            stage,
            in_flight = self.config.concurrency - permits.available_permits(),
            "worker stopping; settling in-flight messages"
        );
        while tasks.join_next().await.is_some() {}
        lag.abort();
        tracing::info!(stage, "worker stopped");
    }
}

struct Shared {
    stage: &'static str,
    js: Context,
    dead_subject: String,
    max_attempts: u64,
    metrics: Metrics,
}

impl Shared {
    async fn process<H: Handler>(&self, handler: &H, message: jetstream::Message) {
        let stage = self.stage;
        let attempt = message
            .info()
            .map(|i| i.delivered.max(1) as u64)
            .unwrap_or(1);
        let in_flight = self.metrics.worker_in_flight.with_label_values(&[stage]);
        in_flight.inc();
        let started = Instant::now();
        let span = tracing::debug_span!("message", stage, attempt);
        let outcome = if attempt > self.max_attempts {
            Outcome::Dead {
                reason: "max_attempts",
                error: format!("delivered {attempt} times without being settled"),
            }
        } else {
            handler
                .handle(Delivery {
                    subject: message.subject.as_str(),
                    payload: &message.payload,
                    headers: message.headers.as_ref(),
                    attempt,
                })
                .instrument(span)
                .await
        };
        let outcome = match outcome {
            Outcome::Retry { reason, error, .. } if attempt >= self.max_attempts => Outcome::Dead {
                reason,
                error: format!("gave up after {attempt} attempts: {error}"),
            },
            other => other,
        };
        self.settle(&message, attempt, outcome).await;
        self.metrics
            .worker_duration
            .with_label_values(&[stage])
            .observe(started.elapsed().as_secs_f64());
        in_flight.dec();
    }

    async fn settle(&self, message: &jetstream::Message, attempt: u64, outcome: Outcome) {
        let stage = self.stage;
        let label = match &outcome {
            Outcome::Ack => "ack",
            Outcome::Retry { .. } => "retry",
            Outcome::Dead { .. } => "dead",
        };
        let result = match outcome {
            Outcome::Ack => message.ack().await,
            Outcome::Retry {
                delay,
                reason,
                error,
            } => {
                tracing::info!(stage, attempt, reason, %error, delay_ms = delay.as_millis() as u64, "retrying");
                self.metrics
                    .retries
                    .with_label_values(&[stage, reason])
                    .inc();
                message.ack_with(AckKind::Nak(Some(delay))).await
            }
            Outcome::Dead { reason, error } => {
                match self.dead_letter(message, attempt, reason, &error).await {
                    Ok(()) => {
                        tracing::warn!(stage, attempt, reason, %error, "dead-lettered");
                        self.metrics
                            .dead_letters
                            .with_label_values(&[stage, reason])
                            .inc();
                        message.ack_with(AckKind::Term).await
                    }
                    Err(publish_error) => {
                        // Never terminate what was not safely dead-lettered.
                        tracing::error!(stage, reason, error = %publish_error, "cannot publish dead letter; will redeliver");
                        message
                            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                            .await
                    }
                }
            }
        };
        self.metrics
            .worker_messages
            .with_label_values(&[stage, label])
            .inc();
        if let Err(error) = result {
            // The server will redeliver after ack_wait; handlers are idempotent.
            tracing::warn!(stage, %error, "acknowledgement failed");
        }
    }

    async fn dead_letter(
        &self,
        message: &jetstream::Message,
        attempt: u64,
        reason: &'static str,
        error: &str,
    ) -> Result<(), String> {
        let (raw, base64) =
            match serde_json::from_slice::<Box<serde_json::value::RawValue>>(&message.payload) {
                Ok(raw) => (Some(raw), None),
                Err(_) => (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(&message.payload)),
                ),
            };
        let letter = DeadLetter {
            v: VERSION,
            stage: self.stage.to_owned(),
            reason: reason.to_owned(),
            attempts: attempt,
            first_error: None,
            last_error: error.to_owned(),
            dead_at_ms: now_ms(),
            subject: message.subject.to_string(),
            message: raw,
            message_base64: base64,
        };
        let body = serde_json::to_vec(&letter).map_err(|e| e.to_string())?;
        let ack = self
            .js
            .publish(self.dead_subject.clone(), body.into())
            .await
            .map_err(|e| e.to_string())?;
        ack.await.map(|_| ()).map_err(|e| e.to_string())
    }
}

/// Keeps `pushline_consumer_pending_messages` and `…_ack_pending_messages` current.
async fn report_lag(
    mut consumer: PullConsumer,
    stream: String,
    durable: &'static str,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let pending = metrics
        .consumer_pending
        .with_label_values(&[&stream, durable]);
    let ack_pending = metrics
        .consumer_ack_pending
        .with_label_values(&[&stream, durable]);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Ok(info) = consumer.info().await {
            pending.set(info.num_pending as i64);
            ack_pending.set(info.num_ack_pending as i64);
        }
    }
}

/// Creates the consumer for `kind` (retrying every second while JetStream is not ready)
/// and runs the worker until `shutdown`.
pub async fn run_when_ready<H: Handler>(
    js: Context,
    topology: Topology,
    kind: ConsumerKind,
    config: WorkerConfig,
    handler: H,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut handler = handler;
    loop {
        match Worker::new(
            js.clone(),
            topology.clone(),
            kind,
            config.clone(),
            handler,
            metrics.clone(),
        )
        .await
        {
            Ok(worker) => {
                tracing::info!(stage = kind.stage(), "consumer started");
                worker.run(shutdown).await;
                return;
            }
            Err((error, returned)) => {
                tracing::warn!(stage = kind.stage(), %error, "cannot create consumer; retrying");
                handler = returned;
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
