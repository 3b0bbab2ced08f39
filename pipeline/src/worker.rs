//! The one JetStream worker loop every consuming stage uses.
//!
//! It pulls from a durable consumer, runs at most `concurrency` handlers at once (a
//! [`Semaphore`] bounds them), and turns each handler's [`Outcome`] into exactly one
//! acknowledgement:
//!
//! | outcome | action |
//! |---|---|
//! | [`Outcome::Ack`] | `ack` |
//! | [`Outcome::Retry`] with a deadline | `nak` with the delay (the handler drops the work once the deadline would pass) |
//! | [`Outcome::Retry`] without one | `nak` with the delay; after `max_attempts` tries → dead letter |
//! | [`Outcome::Dead`] | publish a [`DeadLetter`] to `DEAD`, wait for its ack, **then** `term` |
//!
//! A dead letter that cannot be published is never terminated: the message is nak'ed and
//! comes back, so nothing is lost.
//!
//! # Attempts are pushline's count, not the server's
//!
//! JetStream's delivery count also counts deliveries that no handler ever saw: nats-server
//! 2.9 hands messages to pull requests of a connection that is already gone (a node
//! failure, a reconnect), and each of those counts. So the attempt a handler sees, and
//! the count that dead-letters, is the number of times *this process* ran the handler
//! on the message and got [`Outcome::Retry`] ([`Attempts`], keyed by stream sequence).
//! The server's count is only a crash-loop guard: a message delivered more than
//! `max_deliveries` times (far above `max_attempts`; say its handler keeps crashing the
//! process) is dead-lettered before the handler sees it again. The count is per replica:
//! a retry that the server hands to another replica starts that replica's count, so with
//! `n` replicas work without a deadline gets at most `n · max_attempts` tries.
//!
//! # Every partition, fairly
//!
//! A consumer of a partitioned stream ([`crate::topology`]) is one durable consumer per
//! partition; the worker pulls from each in a loop of its own, and every loop takes its
//! slot from the same `concurrency` semaphore before it takes a message. Tokio's
//! semaphore serves waiters first come, first served, so a busy partition cannot starve
//! the others, and a partition that stalls (its leader is being elected) holds one
//! waiting slot, not the worker. Each loop asks the server for at most
//! `concurrency / partitions` messages at a time, so the messages out of the server's
//! hands stay bounded as with one stream.
//!
//! Shutdown: when the token is cancelled the loops stop pulling, wait for every running
//! handler to finish and acknowledge, and return.

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
use crate::contract::{DeadLetter, Message, VERSION, now_ms};
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
        /// The work's deadline (ms since the epoch), when it has one: then the deadline,
        /// not the attempt count, ends the retries (the handler drops the work once the
        /// next try would land after it).
        deadline_ms: Option<u64>,
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
    /// Which try this is, from 1, as counted by this process (see [`Attempts`]).
    pub attempt: u64,
}

impl Outcome {
    /// A retry of work without a deadline after failed `attempt`, backing off as
    /// `worker` says (dead-lettered after `max_attempts`).
    pub fn back_off(
        worker: &WorkerConfig,
        attempt: u64,
        reason: &'static str,
        error: impl Into<String>,
    ) -> Outcome {
        Outcome::Retry {
            delay: crate::retry::RetryInput::after(attempt, worker)
                .delay()
                .unwrap_or(Duration::from_millis(worker.retry_max_ms)),
            reason,
            error: error.into(),
            deadline_ms: None,
        }
    }
}

/// The message in `payload`, or the dead letter of one that is not a `T` (`malformed`) or
/// is of another contract version (`unsupported_version`).
pub fn decode<T: Message>(payload: &[u8]) -> Result<T, Outcome> {
    let decoded = serde_json::from_slice::<T>(payload);
    if !matches!(&decoded, Ok(message) if message.version() == VERSION) {
        // A version-1 message published before an upgrade is read as version 2.
        if let Some(Ok(message)) = crate::contract::upgrade_v1(payload)
            .map(|upgraded| serde_json::from_slice::<T>(&upgraded))
        {
            return Ok(message);
        }
    }
    match decoded {
        Ok(message) if message.version() == VERSION => Ok(message),
        Ok(message) => Err(Outcome::Dead {
            reason: "unsupported_version",
            error: format!("contract version {}", message.version()),
        }),
        Err(error) => Err(Outcome::Dead {
            reason: "malformed",
            error: format!("not a {}: {error}", T::NAME),
        }),
    }
}

/// A stage's message handler.
pub trait Handler: Send + Sync + 'static {
    /// Handles one message. Must not panic on any input and should bound its own time.
    fn handle(&self, delivery: Delivery<'_>) -> impl Future<Output = Outcome> + Send;
}

/// A running consumer: pulls, dispatches to the handler, acknowledges.
pub struct Worker<H> {
    kind: ConsumerKind,
    /// One consumer per partition of its stream, partition 0 first.
    consumers: Vec<PullConsumer>,
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
        let mut consumers = Vec::new();
        for partition in 0..topology.partitions_of(kind.stream()) {
            match topology.consumer_in(&js, kind, partition, &config).await {
                Ok(consumer) => consumers.push(consumer),
                Err(error) => return Err((error, handler)),
            }
        }
        Ok(Worker {
            kind,
            consumers,
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
        let partitions = self.consumers.len();
        // Each partition's loop holds a slot while it waits on an idle partition: one slot
        // more per further partition, so idle partitions never starve a busy one of the
        // `concurrency` it is given.
        let permits = Arc::new(Semaphore::new(
            self.config.concurrency + partitions.saturating_sub(1),
        ));
        let batch = (self.config.concurrency / partitions).clamp(1, 1_000);
        let mut lags = Vec::new();
        let loops = self
            .consumers
            .iter()
            .enumerate()
            .map(|(partition, consumer)| {
                lags.push(tokio::spawn(report_lag(
                    consumer.clone(),
                    self.topology.stream_name_in(self.kind.stream(), partition),
                    self.kind.durable_name(),
                    self.metrics.clone(),
                    shutdown.clone(),
                )));
                // Stream sequences are per partition: so are the attempt counts.
                let shared = Arc::new(Shared {
                    stage,
                    js: self.js.clone(),
                    dead_subject: self.topology.dead_subject(stage),
                    max_attempts: self.config.max_attempts,
                    max_deliveries: self.config.max_deliveries,
                    progress_every: Duration::from_millis(self.config.ack_wait_secs * 1_000 / 3),
                    attempts: Attempts::default(),
                    metrics: self.metrics.clone(),
                });
                self.pull(
                    partition,
                    consumer.clone(),
                    shared,
                    permits.clone(),
                    batch,
                    shutdown.clone(),
                )
            });
        futures::future::join_all(loops.collect::<Vec<_>>()).await;
        for lag in lags {
            lag.abort();
        }
        tracing::info!(stage, "worker stopped");
    }

    /// Pulls partition `partition` until `shutdown`, each message under a slot of
    /// `permits`; returns once every handler it started has settled its message.
    async fn pull(
        &self,
        partition: usize,
        mut consumer: PullConsumer,
        shared: Arc<Shared>,
        permits: Arc<Semaphore>,
        batch: usize,
        shutdown: CancellationToken,
    ) {
        let stage = self.kind.stage();
        let mut tasks = JoinSet::new();
        'pull: while !shutdown.is_cancelled() {
            // Short-lived pull requests with 500 ms heartbeats: when the consumer's leader
            // dies with a pull request (a node failure), the client notices within
            // about two heartbeats and pulls from the new leader, instead of waiting out
            // a long request (publishers pass the partition over for 2 s after its
            // election, `crate::partition`, which covers this).
            let messages = consumer
                .stream()
                .max_messages_per_batch(batch)
                .heartbeat(Duration::from_millis(500))
                .expires(Duration::from_secs(5))
                .messages()
                .await;
            let mut messages = match messages {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::warn!(stage, partition, %error, "cannot start pulling; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break 'pull,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    self.find_consumer(partition, &mut consumer).await;
                    continue 'pull;
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
                    Some(Err(error)) => match pull_error(&error.kind()) {
                        PullError::Gone => {
                            tracing::warn!(stage, partition, %error, "consumer gone; setting it up again");
                            if !self.find_consumer(partition, &mut consumer).await {
                                tokio::select! {
                                    () = shutdown.cancelled() => break 'pull,
                                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                                }
                            }
                            continue 'pull;
                        }
                        PullError::Silent => {
                            // Silence from the server: the consumer's leader moved, or the
                            // consumer was deleted while no pull request was waiting to
                            // be told. Look it up (setting it up again if it is gone) and
                            // pull afresh, rather than wait on a consumer that is no more.
                            tracing::info!(stage, partition, %error, "no heartbeat; looking the consumer up again");
                            self.find_consumer(partition, &mut consumer).await;
                            continue 'pull;
                        }
                        PullError::Hiccup => {
                            tracing::debug!(stage, partition, %error, "pull stream hiccup");
                        }
                    },
                    None => continue 'pull,
                }
                while tasks.try_join_next().is_some() {}
            }
        }
        tracing::info!(
            stage,
            partition,
            in_flight = tasks.len(),
            "worker stopping; settling in-flight messages"
        );
        while tasks.join_next().await.is_some() {}
    }
}

/// What the pull loop does about an error on its stream of messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PullError {
    /// The consumer is gone (deleted, or no server answers for it): set it up again,
    /// pausing a second when that fails, and pull afresh.
    Gone,
    /// Silence from the server (no heartbeat): the consumer's leader moved, or the
    /// consumer was deleted while no pull request was waiting to be told. Look it up
    /// (setting it up again if it is gone) and pull afresh, rather than wait on a
    /// consumer that is no more.
    Silent,
    /// Anything else passes: keep reading the same pull.
    Hiccup,
}

/// The decision for an error of kind `kind` on the pull stream.
fn pull_error(kind: &async_nats::jetstream::consumer::pull::MessagesErrorKind) -> PullError {
    use async_nats::jetstream::consumer::pull::MessagesErrorKind as Kind;
    match kind {
        Kind::ConsumerDeleted | Kind::NoResponders => PullError::Gone,
        Kind::MissingHeartbeat => PullError::Silent,
        _ => PullError::Hiccup,
    }
}

impl<H> Worker<H> {
    /// Looks the consumer up again, creating it if it is gone (deleted, or lost with a
    /// restored cluster). False when that failed.
    ///
    /// Bounded by a second: while the stream or consumer elects a leader the look-up gets
    /// no answer (the client's own request timeout is 5 s per request), and the loop had
    /// better pull again on the handle it has, which reaches whichever leader is elected,
    /// than wait out the look-up while publishers already send to the partition again.
    async fn find_consumer(&self, partition: usize, consumer: &mut PullConsumer) -> bool {
        let found = self
            .topology
            .consumer_in(&self.js, self.kind, partition, &self.config);
        match tokio::time::timeout(Duration::from_secs(1), found).await {
            Ok(Ok(found)) => {
                *consumer = found;
                true
            }
            Ok(Err(error)) => {
                tracing::warn!(stage = self.kind.stage(), partition, %error, "cannot set up the consumer");
                false
            }
            Err(_) => {
                tracing::info!(
                    stage = self.kind.stage(),
                    partition,
                    "consumer look-up unanswered within 1 s; pulling again"
                );
                false
            }
        }
    }
}

struct Shared {
    stage: &'static str,
    js: Context,
    dead_subject: String,
    max_attempts: u64,
    max_deliveries: u64,
    progress_every: Duration,
    attempts: Attempts,
    metrics: Metrics,
}

/// Runs `work`, telling the server every `every` that the message is still being worked
/// on (`+WPI`), so a short `ack_wait` redelivers only messages nobody holds any more.
async fn while_working<F: Future>(
    message: &jetstream::Message,
    every: Duration,
    work: F,
) -> F::Output {
    let mut work = std::pin::pin!(work);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            output = &mut work => return output,
            _ = tick.tick() => {
                // Bounded, so a client that cannot send right now never stalls the work.
                let signal = message.ack_with(AckKind::Progress);
                match tokio::time::timeout(Duration::from_millis(100), signal).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::debug!(%error, "cannot signal progress"),
                    Err(_) => tracing::debug!("progress signal not sent within 100 ms"),
                }
            }
        }
    }
}

/// How many times this process has tried each message that is being retried, keyed by
/// stream sequence. An entry lives from a message's first retry until it is settled for
/// good; entries of messages the server handed to another replica meanwhile are swept
/// after an hour, so the map stays bounded by the work in retry.
#[derive(Debug, Default)]
pub struct Attempts {
    tries: std::sync::Mutex<std::collections::HashMap<u64, (u64, Instant)>>,
}

impl Attempts {
    const FORGET_AFTER: Duration = Duration::from_secs(3_600);

    /// Tries made so far on the message with stream sequence `sequence`.
    pub fn made(&self, sequence: u64) -> u64 {
        self.lock().get(&sequence).map_or(0, |(tries, _)| *tries)
    }

    /// Records one more failed try; returns the tries made now.
    pub fn failed(&self, sequence: u64) -> u64 {
        let now = Instant::now();
        let mut tries = self.lock();
        if tries.len() >= 4_096 && tries.len().is_power_of_two() {
            tries.retain(|_, (_, at)| now.duration_since(*at) < Self::FORGET_AFTER);
        }
        let entry = tries.entry(sequence).or_insert((0, now));
        entry.0 += 1;
        entry.1 = now;
        entry.0
    }

    /// Forgets a message that is settled for good.
    pub fn settled(&self, sequence: u64) {
        self.lock().remove(&sequence);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, (u64, Instant)>> {
        self.tries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The settle rule for a handler's outcome after `tries` failed tries (this one
/// included when it is a retry): work without a deadline is dead-lettered once
/// `max_attempts` tries failed; work with a deadline is retried until its handler drops it.
pub fn settle_rule(outcome: Outcome, tries: u64, max_attempts: u64) -> Outcome {
    match outcome {
        Outcome::Retry {
            reason,
            error,
            deadline_ms: None,
            ..
        } if tries >= max_attempts => Outcome::Dead {
            reason,
            error: format!("gave up after {tries} attempts: {error}"),
        },
        other => other,
    }
}

impl Shared {
    async fn process<H: Handler>(&self, handler: &H, message: jetstream::Message) {
        let stage = self.stage;
        let (sequence, delivered) = message
            .info()
            .map(|i| (i.stream_sequence, i.delivered.max(1) as u64))
            .unwrap_or((0, 1));
        // A first delivery has no tries behind it: the common case takes no lock.
        let made = if delivered > 1 {
            self.attempts.made(sequence)
        } else {
            0
        };
        let attempt = made + 1;
        let in_flight = self.metrics.worker_in_flight.with_label_values(&[stage]);
        in_flight.inc();
        let started = Instant::now();
        // Every line logged while handling and settling the message names the producer's
        // trace id, so one call can be followed through every stage's logs.
        let trace_id = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(crate::contract::TRACE_HEADER))
            .map(|value| value.as_str())
            .unwrap_or("-");
        let span = tracing::info_span!("message", stage, attempt, trace_id);
        let outcome = if delivered > self.max_deliveries {
            Outcome::Dead {
                reason: "redelivered",
                error: format!(
                    "delivered {delivered} times by the server without being settled \
                     ({made} tries failed here)"
                ),
            }
        } else {
            let work = handler
                .handle(Delivery {
                    subject: message.subject.as_str(),
                    payload: &message.payload,
                    headers: message.headers.as_ref(),
                    attempt,
                })
                .instrument(span.clone());
            while_working(&message, self.progress_every, work).await
        };
        let tries = match outcome {
            Outcome::Retry { .. } => self.attempts.failed(sequence),
            _ => made,
        };
        let outcome = settle_rule(outcome, tries, self.max_attempts);
        if made > 0 && !matches!(outcome, Outcome::Retry { .. }) {
            self.attempts.settled(sequence);
        }
        self.settle(&message, tries.max(1), outcome)
            .instrument(span)
            .await;
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
                ..
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
        // One dead letter per stream message, however often this is tried.
        let id = match message.info() {
            Ok(info) => format!(
                "dead:{}:{}:{}",
                self.stage, info.stream, info.stream_sequence
            ),
            // Not a JetStream message: nothing identifies it, so nothing is de-duplicated.
            Err(_) => format!("dead:{}:{:016x}", self.stage, rand::random::<u64>()),
        };
        crate::nats::publish_stored(&self.js, &self.dead_subject, &id, None, &body.into())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Keeps `pushline_consumer_pending_messages` and `…_ack_pending_messages` current.
async fn report_lag(
    mut consumer: PullConsumer,
    stream: String,
    durable: String,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let pending = metrics
        .consumer_pending
        .with_label_values(&[&stream, &durable]);
    let ack_pending = metrics
        .consumer_ack_pending
        .with_label_values(&[&stream, &durable]);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gone_consumer_is_set_up_again_and_silence_looked_up_but_hiccups_pass() {
        use async_nats::jetstream::consumer::pull::MessagesErrorKind as Kind;
        assert_eq!(pull_error(&Kind::ConsumerDeleted), PullError::Gone);
        assert_eq!(pull_error(&Kind::NoResponders), PullError::Gone);
        assert_eq!(pull_error(&Kind::MissingHeartbeat), PullError::Silent);
        for kind in [Kind::Pull, Kind::Other, Kind::PushBasedConsumer] {
            assert_eq!(pull_error(&kind), PullError::Hiccup, "{kind:?}");
        }
    }

    fn retry(deadline_ms: Option<u64>) -> Outcome {
        Outcome::Retry {
            delay: Duration::from_millis(100),
            reason: "redis",
            error: "connection refused".into(),
            deadline_ms,
        }
    }

    #[test]
    fn decode_dead_letters_what_is_not_the_message_or_of_another_version() {
        use crate::contract::Feedback;
        let good = r#"{"v":1,"platform":"apns","token":"ab","app":"a","reason":"Unregistered","observed_at_ms":1}"#;
        assert_eq!(
            decode::<Feedback>(good.as_bytes()).map(|f| f.token).ok(),
            Some("ab".into())
        );
        match decode::<Feedback>(good.replace(r#""v":1"#, r#""v":9"#).as_bytes()) {
            Err(Outcome::Dead { reason, error }) => {
                assert_eq!(reason, "unsupported_version");
                assert_eq!(error, "contract version 9");
            }
            other => panic!("expected a dead letter, got {:?}", other.map(|f| f.v)),
        }
        match decode::<Feedback>(b"{\"v\":1}") {
            Err(Outcome::Dead { reason, error }) => {
                assert_eq!(reason, "malformed");
                assert!(error.starts_with("not a Feedback: "), "{error}");
            }
            other => panic!("expected a dead letter, got {:?}", other.map(|f| f.v)),
        }
    }

    #[test]
    fn work_without_a_deadline_is_dead_lettered_after_max_attempts_tries() {
        assert_eq!(settle_rule(retry(None), 7, 8), retry(None));
        match settle_rule(retry(None), 8, 8) {
            Outcome::Dead { reason, error } => {
                assert_eq!(reason, "redis");
                assert!(error.contains("gave up after 8 attempts"), "{error}");
            }
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }

    #[test]
    fn work_with_a_deadline_is_retried_whatever_the_count() {
        assert_eq!(settle_rule(retry(Some(1)), 1_000, 8), retry(Some(1)));
    }

    #[test]
    fn acks_and_dead_letters_pass_through() {
        assert_eq!(settle_rule(Outcome::Ack, 100, 8), Outcome::Ack);
        let dead = Outcome::Dead {
            reason: "bad_topic",
            error: "x".into(),
        };
        assert_eq!(settle_rule(dead.clone(), 0, 8), dead);
    }

    #[test]
    fn attempts_count_failed_tries_per_message_until_settled() {
        let attempts = Attempts::default();
        assert_eq!(attempts.made(7), 0);
        assert_eq!(attempts.failed(7), 1);
        assert_eq!(attempts.failed(7), 2);
        assert_eq!(attempts.made(8), 0, "another message has its own count");
        attempts.settled(7);
        assert_eq!(attempts.made(7), 0);
    }
}
