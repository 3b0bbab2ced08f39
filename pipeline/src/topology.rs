//! The NATS JetStream topology: every stream, subject and durable consumer, defined once.
//!
//! | stream      | subjects                     | retention  | durable consumer |
//! |-------------|------------------------------|------------|------------------|
//! | `EVENTS`    | `events.<source>.<resource>` | work queue | `fanout`         |
//! | `PUSH_<PROVIDER>` | `push.<provider>.<environment>` | work queue | `dispatch-<provider>` |
//! | `FEEDBACK`  | `feedback.<provider>`        | work queue | `prune`          |
//! | `DEAD`      | `dead.<stage>`               | limits     | (operators)      |
//! | `STATUS`    | `status.e.<event>`, `status.t.<trace>` | limits (age, bytes) | (read by id) |
//! | `CALLBACKS` | `callbacks.<producer>`, `callbacks.pruned.<app>` | work queue | `callbacks` |
//! | `INAPP`     | `inapp.<device>.<person>`    | limits (age) | (read by subject: the gateway) |
//! | `FALLBACK`  | `fallback.<device>`          | work queue | `fallback` |
//!
//! `INAPP` holds in-app messages until their devices take them (`docs/inapp.md`);
//! `FALLBACK` the pushes held back for a connected device until its app acknowledges the
//! in-app message or the window passes. Both exist where a provider is held
//! ([`crate::provider::Spec::held`], [`Topology::with_inapp`]).
//! There is one push stream per provider (`PUSH_APNS`, `PUSH_FCM`, …), named from the
//! provider's name ([`crate::provider`]); a topology knows the providers it was made with.
//! With a prefix `p` (config `nats.prefix`) stream names become `pEVENTS` and subjects
//! `pevents.…`, so several tenants or tests share one server without colliding.
//!
//! # Partitions
//!
//! The streams every message passes through (`EVENTS` and each provider's push stream)
//! are split into `nats.partitions` streams. Partition 0 is the stream of the table above,
//! names and subjects unchanged, so one partition is the topology of a deployment that
//! never heard of partitions, and going from 1 to N keeps every stored message where
//! its readers still look. Partition `k ≥ 1` is the stream `<NAME>_<k>` (`EVENTS_1`,
//! `PUSH_APNS_2`) on subjects whose first token carries the partition (`events-1.…`,
//! `push-2.<provider>.<environment>`), so no two partitions' subjects overlap. Each
//! partition has its own durable consumer of the same name, and every reader reads every
//! partition ([`crate::worker`]); each is a Raft group of its own, whose stream and
//! consumer leaders the cluster places over its nodes.
//! [`Topology::ensure`] creates missing streams and updates only those whose definition
//! differs; it is safe to run from every replica at every start.

use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::stream::{
    Config as StreamConfig, DiscardPolicy, RetentionPolicy, StorageType,
};
use async_nats::jetstream::{self, Context};

use crate::config::{NatsConfig, WorkerConfig};
use crate::contract::Environment;

/// One of pushline's streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Normalised producer events.
    Events,
    /// One provider's per-device push jobs.
    Push(&'static str),
    /// Invalid-token verdicts from the dispatchers.
    Feedback,
    /// Dead letters from every stage.
    Dead,
    /// Per-event delivery status records ([`crate::tracking`]).
    Status,
    /// Producers' outcome callbacks still to be sent.
    Callbacks,
    /// In-app messages, kept until their devices take them or they expire.
    InApp,
    /// Pushes held back while a device's app may acknowledge an in-app message.
    Fallback,
}

impl StreamKind {
    /// Every stream for the providers `providers`, in creation order.
    pub fn all(providers: &[&'static str]) -> Vec<StreamKind> {
        let mut all = vec![StreamKind::Events];
        all.extend(providers.iter().map(|name| StreamKind::Push(name)));
        all.extend([
            StreamKind::Feedback,
            StreamKind::Dead,
            StreamKind::Status,
            StreamKind::Callbacks,
        ]);
        all
    }

    fn base_name(self) -> String {
        match self {
            StreamKind::Events => "EVENTS".into(),
            StreamKind::Push(provider) => format!("PUSH_{}", provider.to_ascii_uppercase()),
            StreamKind::Feedback => "FEEDBACK".into(),
            StreamKind::Dead => "DEAD".into(),
            StreamKind::Status => "STATUS".into(),
            StreamKind::Callbacks => "CALLBACKS".into(),
            StreamKind::InApp => "INAPP".into(),
            StreamKind::Fallback => "FALLBACK".into(),
        }
    }

    /// Whether this stream is split into `nats.partitions` streams.
    pub fn is_partitioned(self) -> bool {
        matches!(self, StreamKind::Events | StreamKind::Push(_))
    }

    fn subject_filter(self) -> String {
        match self {
            StreamKind::Events => "events.>".into(),
            StreamKind::Push(provider) => format!("push.{provider}.*"),
            StreamKind::Feedback => "feedback.*".into(),
            StreamKind::Dead => "dead.>".into(),
            StreamKind::Status => "status.>".into(),
            StreamKind::Callbacks => "callbacks.>".into(),
            StreamKind::InApp => "inapp.*.*".into(),
            StreamKind::Fallback => "fallback.*".into(),
        }
    }
}

/// The durable consumers, one per reading service; all replicas of a service share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerKind {
    /// registry: `EVENTS` → push jobs.
    Fanout,
    /// registry: `FEEDBACK` → prune tokens.
    Prune,
    /// A provider's dispatcher: `PUSH_<PROVIDER>`.
    Dispatch(&'static str),
    /// ingest: `CALLBACKS` → producers' callback URLs.
    Callbacks,
    /// registry: `FALLBACK` → held pushes, released or dropped.
    Fallback,
}

impl ConsumerKind {
    /// Every consumer for the providers `providers`.
    pub fn all(providers: &[&'static str]) -> Vec<ConsumerKind> {
        let mut all = vec![ConsumerKind::Fanout, ConsumerKind::Prune];
        all.extend(providers.iter().map(|name| ConsumerKind::Dispatch(name)));
        all.push(ConsumerKind::Callbacks);
        all
    }

    /// The durable name.
    pub fn durable_name(self) -> String {
        match self {
            ConsumerKind::Fanout => "fanout".into(),
            ConsumerKind::Prune => "prune".into(),
            ConsumerKind::Dispatch(provider) => format!("dispatch-{provider}"),
            ConsumerKind::Callbacks => "callbacks".into(),
            ConsumerKind::Fallback => "fallback".into(),
        }
    }

    /// The stream it reads.
    pub fn stream(self) -> StreamKind {
        match self {
            ConsumerKind::Fanout => StreamKind::Events,
            ConsumerKind::Prune => StreamKind::Feedback,
            ConsumerKind::Dispatch(provider) => StreamKind::Push(provider),
            ConsumerKind::Callbacks => StreamKind::Callbacks,
            ConsumerKind::Fallback => StreamKind::Fallback,
        }
    }

    /// The stage name used in dead letters and metrics.
    pub fn stage(self) -> &'static str {
        match self {
            ConsumerKind::Fanout => "fanout",
            ConsumerKind::Prune => "prune",
            ConsumerKind::Dispatch(provider) => provider,
            ConsumerKind::Callbacks => "callback",
            ConsumerKind::Fallback => "fallback",
        }
    }
}

/// Errors setting up streams and consumers.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// A stream could not be created or updated.
    #[error("cannot create or update stream {stream}: {source}")]
    Stream {
        /// Stream name.
        stream: String,
        /// Cause.
        source: async_nats::jetstream::context::CreateStreamError,
    },
    /// A stream could not be looked up.
    #[error("cannot get stream {stream}: {source}")]
    GetStream {
        /// Stream name.
        stream: String,
        /// Cause.
        source: async_nats::jetstream::context::GetStreamError,
    },
    /// A consumer could not be created.
    #[error("cannot create consumer {consumer} on {stream}: {source}")]
    Consumer {
        /// Stream name.
        stream: String,
        /// Durable name.
        consumer: String,
        /// Cause.
        source: async_nats::jetstream::stream::ConsumerError,
    },
}

/// Names and definitions of every stream and consumer, with the configured prefix.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    providers: Vec<&'static str>,
    replicas: usize,
    partitions: usize,
    duplicate_window: Duration,
    dead_max_age: Duration,
    status_max_age: Duration,
    status_max_bytes: i64,
    inapp: bool,
    inapp_max_age: Duration,
}

impl Topology {
    /// The topology for a NATS configuration, with the push streams of `providers` (all
    /// of them for ingest and the registry; its own for a dispatcher).
    pub fn new(config: &NatsConfig, providers: &[&'static str]) -> Self {
        Topology {
            prefix: config.prefix.clone(),
            providers: providers.to_vec(),
            replicas: config.replicas,
            partitions: config.partitions.max(1),
            duplicate_window: Duration::from_secs(config.duplicate_window_secs),
            dead_max_age: Duration::from_secs(config.dead_letter_max_age_days * 86_400),
            status_max_age: Duration::from_secs(config.tracking_max_age_secs),
            status_max_bytes: i64::try_from(config.tracking_max_bytes).unwrap_or(i64::MAX),
            inapp: false,
            inapp_max_age: Duration::from_secs(config.inapp_max_age_secs),
        }
    }

    /// The same topology with the `INAPP` stream, for a deployment with a held provider
    /// (`providers::topology` decides).
    pub fn with_inapp(mut self, inapp: bool) -> Self {
        self.inapp = inapp;
        self
    }

    /// `inapp.<device>.<person>`: where the in-app messages of `person` on the device whose
    /// in-app token is `token` are kept (each id as [`id_token`], so no id is a wildcard
    /// and one subject is one person on one device).
    pub fn inapp_subject(&self, token: &str, person: &str) -> String {
        format!(
            "{}inapp.{}.{}",
            self.prefix,
            id_token(token),
            id_token(person)
        )
    }

    /// The configured prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The providers whose push streams this topology holds.
    pub fn providers(&self) -> &[&'static str] {
        &self.providers
    }

    /// Every stream of this topology.
    pub fn streams(&self) -> Vec<StreamKind> {
        let mut all = StreamKind::all(&self.providers);
        if self.inapp {
            all.extend([StreamKind::InApp, StreamKind::Fallback]);
        }
        all
    }

    /// Every durable consumer of this topology.
    pub fn consumers(&self) -> Vec<ConsumerKind> {
        let mut all = ConsumerKind::all(&self.providers);
        if self.inapp {
            all.push(ConsumerKind::Fallback);
        }
        all
    }

    /// Whether the in-app streams are part of this topology.
    pub fn has_inapp(&self) -> bool {
        self.inapp
    }

    /// `active.<device>`: where the registry and the gateways announce (core NATS, not
    /// stored) that a person became the active user of the device whose in-app token is
    /// `token`, so gateways close other persons' connections on it. Keyed by the token,
    /// which only the persons sharing the installation hold.
    pub fn active_subject(&self, token: &str) -> String {
        format!("{}active.{}", self.prefix, id_token(token))
    }

    /// `inbox.<person>`: where the registry and the gateways announce (core NATS, not
    /// stored) a change to one of the person's inboxes, so each of their live connections
    /// follows it (read on the phone, read on the laptop). `person` is the canonical id.
    pub fn inbox_subject(&self, person: &str) -> String {
        format!("{}inbox.{}", self.prefix, id_token(person))
    }

    /// Every device's [`Topology::active_subject`], for one subscription.
    pub fn active_subjects(&self) -> String {
        format!("{}active.*", self.prefix)
    }

    /// The device (`id_token` of its in-app token) an active-user subject names.
    pub fn active_device<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("active.")
    }

    /// `fallback.<device>`: the pushes held for the device whose in-app token is `token`.
    pub fn fallback_subject(&self, token: &str) -> String {
        format!("{}fallback.{}", self.prefix, id_token(token))
    }

    /// How many partitions the partitioned streams have (`nats.partitions`).
    pub fn partitions(&self) -> usize {
        self.partitions
    }

    /// How many streams `kind` is: [`Topology::partitions`] for a partitioned stream, else 1.
    pub fn partitions_of(&self, kind: StreamKind) -> usize {
        if kind.is_partitioned() {
            self.partitions
        } else {
            1
        }
    }

    /// The full stream name (partition 0 of a partitioned stream).
    pub fn stream_name(&self, kind: StreamKind) -> String {
        self.stream_name_in(kind, 0)
    }

    /// The name of partition `partition` of `kind`: the stream's name for partition 0,
    /// `<NAME>_<partition>` for the others.
    pub fn stream_name_in(&self, kind: StreamKind, partition: usize) -> String {
        match partition {
            0 => format!("{}{}", self.prefix, kind.base_name()),
            k => format!("{}{}_{k}", self.prefix, kind.base_name()),
        }
    }

    /// The names of every partition of `kind`, partition 0 first.
    pub fn stream_names(&self, kind: StreamKind) -> Vec<String> {
        (0..self.partitions_of(kind))
            .map(|partition| self.stream_name_in(kind, partition))
            .collect()
    }

    /// `events.<source>.<resource>` (partition 0); both tokens must be subject-safe (see
    /// [`subject_token`]).
    pub fn event_subject(&self, source: &str, resource: &str) -> String {
        self.event_subject_in(0, source, resource)
    }

    /// The subject of an event in partition `partition`: `events.…` for partition 0,
    /// `events-<partition>.<source>.<resource>` for the others.
    pub fn event_subject_in(&self, partition: usize, source: &str, resource: &str) -> String {
        format!(
            "{}{}.{}.{}",
            self.prefix,
            partition_root("events", partition),
            subject_token(source),
            subject_token(resource)
        )
    }

    /// `push.<provider>.<environment>` (partition 0).
    pub fn push_subject(&self, provider: &str, environment: Environment) -> String {
        self.push_subject_in(0, provider, environment)
    }

    /// The subject of a push job in partition `partition`: `push.…` for partition 0,
    /// `push-<partition>.<provider>.<environment>` for the others.
    pub fn push_subject_in(
        &self,
        partition: usize,
        provider: &str,
        environment: Environment,
    ) -> String {
        format!(
            "{}{}.{provider}.{}",
            self.prefix,
            partition_root("push", partition),
            environment.as_str()
        )
    }

    /// `feedback.<provider>`.
    pub fn feedback_subject(&self, provider: &str) -> String {
        format!("{}feedback.{provider}", self.prefix)
    }

    /// `callbacks.<producer>`.
    pub fn callback_subject(&self, producer: &str) -> String {
        format!("{}callbacks.{}", self.prefix, subject_token(producer))
    }

    /// `callbacks.pruned.<app>`: a pruned token's notice for the app's backend (one more
    /// token than a producer's subject, so the two never meet).
    pub fn pruned_subject(&self, app: &str) -> String {
        format!("{}callbacks.pruned.{}", self.prefix, subject_token(app))
    }

    /// `callbacks.action.<producer>`: an app user's answer to one of the producer's
    /// messages (one more token than [`Topology::callback_subject`], so no producer's name
    /// can make one).
    pub fn action_subject(&self, producer: &str) -> String {
        format!(
            "{}callbacks.action.{}",
            self.prefix,
            subject_token(producer)
        )
    }

    /// Whether `subject` is an answer's notice ([`Topology::action_subject`]).
    pub fn is_action_subject(&self, subject: &str) -> bool {
        subject
            .strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.starts_with("callbacks.action."))
    }

    /// Whether `subject` is a pruned token's notice rather than a producer's callback.
    pub fn is_pruned_subject(&self, subject: &str) -> bool {
        subject
            .strip_prefix(&self.prefix)
            .is_some_and(|rest| rest.starts_with("callbacks.pruned."))
    }

    /// `dead.<stage>`.
    pub fn dead_subject(&self, stage: &str) -> String {
        format!("{}dead.{}", self.prefix, subject_token(stage))
    }

    /// `status.e.<hash of the event id>`: an event's status records.
    pub fn status_subject(&self, event_id: &str) -> String {
        format!("{}status.e.{}", self.prefix, id_token(event_id))
    }

    /// `status.t.<hash of the trace id>`: the `received` records of a trace id's events.
    pub fn trace_subject(&self, trace_id: &str) -> String {
        format!("{}status.t.{}", self.prefix, id_token(trace_id))
    }

    /// The stream definition for `kind` (partition 0).
    pub fn stream_config(&self, kind: StreamKind) -> StreamConfig {
        self.stream_config_in(kind, 0)
    }

    /// The subjects partition `partition` of `kind` holds.
    fn subject_filter_in(&self, kind: StreamKind, partition: usize) -> String {
        let filter = kind.subject_filter();
        match (partition, filter.split_once('.')) {
            (0, _) | (_, None) => format!("{}{filter}", self.prefix),
            (k, Some((root, rest))) => format!("{}{}.{rest}", self.prefix, partition_root(root, k)),
        }
    }

    /// The stream definition of partition `partition` of `kind`.
    pub fn stream_config_in(&self, kind: StreamKind, partition: usize) -> StreamConfig {
        if kind == StreamKind::Status {
            // Records carry no message ids; the window only has to fit inside max_age.
            return StreamConfig {
                name: self.stream_name(kind),
                subjects: vec![format!("{}{}", self.prefix, kind.subject_filter())],
                retention: RetentionPolicy::Limits,
                storage: StorageType::File,
                num_replicas: self.replicas,
                duplicate_window: Duration::from_secs(1),
                max_age: self.status_max_age,
                max_bytes: self.status_max_bytes,
                discard: DiscardPolicy::Old,
                ..Default::default()
            };
        }
        if kind == StreamKind::InApp {
            // Kept for its device until its deadline, or until the gateway deletes it once
            // the app acknowledged it; read by subject (direct get), so the gateway needs
            // no consumer per connection.
            return StreamConfig {
                name: self.stream_name(kind),
                subjects: vec![format!("{}{}", self.prefix, kind.subject_filter())],
                retention: RetentionPolicy::Limits,
                storage: StorageType::File,
                num_replicas: self.replicas,
                duplicate_window: self.duplicate_window,
                max_age: self.inapp_max_age,
                allow_direct: true,
                ..Default::default()
            };
        }
        let (retention, max_age) = match kind {
            StreamKind::Dead => (RetentionPolicy::Limits, self.dead_max_age),
            // Work-queue streams are emptied by acks; the age bound only stops a stream
            // nobody consumes from growing forever. Every event's deadline is far shorter.
            _ => (RetentionPolicy::WorkQueue, Duration::from_secs(7 * 86_400)),
        };
        StreamConfig {
            name: self.stream_name_in(kind, partition),
            subjects: vec![self.subject_filter_in(kind, partition)],
            retention,
            storage: StorageType::File,
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            max_age,
            ..Default::default()
        }
    }

    /// Creates every missing stream and updates a stream only when its definition
    /// differs. Idempotent, and safe when many replicas start at once: nats-server 2.9
    /// crashes (nil dereference in `updateWithAdvisory`) when a stream update races with
    /// that stream's creation, so streams that already match are never updated, and a
    /// creation lost to another replica is accepted once the stream exists.
    pub async fn ensure(&self, js: &Context) -> Result<(), TopologyError> {
        let every = self
            .streams()
            .into_iter()
            .flat_map(|kind| (0..self.partitions_of(kind)).map(move |partition| (kind, partition)));
        for (kind, partition) in every {
            let desired = self.stream_config_in(kind, partition);
            let stream = desired.name.clone();
            match js.get_stream(&stream).await {
                Ok(existing) => {
                    if !same_definition(&existing.cached_info().config, &desired) {
                        tracing::info!(%stream, "updating stream definition");
                        js.update_stream(desired)
                            .await
                            .map_err(|source| TopologyError::Stream { stream, source })?;
                    }
                }
                Err(error) if is_not_found(&error) => {
                    if let Err(source) = js.create_stream(desired).await {
                        // Another replica may have created it meanwhile.
                        if js.get_stream(&stream).await.is_err() {
                            return Err(TopologyError::Stream { stream, source });
                        }
                    }
                }
                Err(source) => return Err(TopologyError::GetStream { stream, source }),
            }
        }
        Ok(())
    }

    /// The consumer definition for `kind`.
    pub fn consumer_config(&self, kind: ConsumerKind, worker: &WorkerConfig) -> pull::Config {
        pull::Config {
            durable_name: Some(kind.durable_name()),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait: Duration::from_secs(worker.ack_wait_secs),
            // The worker dead-letters by delivery count itself; the server never gives up
            // on a message on its own, so nothing is silently stranded.
            max_deliver: -1,
            max_ack_pending: (worker.concurrency * 4).max(1_024) as i64,
            ..Default::default()
        }
    }

    /// Gets or creates the durable pull consumer for `kind` (on partition 0); a consumer
    /// made by an older version with another `ack_wait` or `max_ack_pending` is updated
    /// to this one.
    pub async fn consumer(
        &self,
        js: &Context,
        kind: ConsumerKind,
        worker: &WorkerConfig,
    ) -> Result<PullConsumer, TopologyError> {
        self.consumer_in(js, kind, 0, worker).await
    }

    /// [`Topology::consumer`] on partition `partition` of its stream.
    pub async fn consumer_in(
        &self,
        js: &Context,
        kind: ConsumerKind,
        partition: usize,
        worker: &WorkerConfig,
    ) -> Result<PullConsumer, TopologyError> {
        let stream_name = self.stream_name_in(kind.stream(), partition);
        let stream =
            js.get_stream(&stream_name)
                .await
                .map_err(|source| TopologyError::GetStream {
                    stream: stream_name.clone(),
                    source,
                })?;
        let desired = self.consumer_config(kind, worker);
        let durable = kind.durable_name();
        let mut consumer: PullConsumer = stream
            .get_or_create_consumer(&durable, desired.clone())
            .await
            .map_err(|source| TopologyError::Consumer {
                stream: stream_name.clone(),
                consumer: durable.clone(),
                source,
            })?;
        let current = &consumer.cached_info().config;
        if current.ack_wait != desired.ack_wait
            || current.max_ack_pending != desired.max_ack_pending
        {
            tracing::info!(stream = %stream_name, consumer = %durable, "updating consumer definition");
            match stream.create_consumer(desired).await {
                Ok(updated) => consumer = updated,
                Err(error) => {
                    tracing::warn!(stream = %stream_name, %error, "cannot update the consumer; keeping its definition")
                }
            }
        }
        Ok(consumer)
    }
}

/// The first subject token of partition `partition` of a stream rooted at `root`.
fn partition_root(root: &str, partition: usize) -> std::borrow::Cow<'_, str> {
    match partition {
        0 => root.into(),
        k => format!("{root}-{k}").into(),
    }
}

/// Whether the server's stream definition already is what pushline wants (the server
/// fills in defaults for fields pushline leaves alone, so only pushline's fields count).
fn same_definition(current: &StreamConfig, desired: &StreamConfig) -> bool {
    current.subjects == desired.subjects
        && current.retention == desired.retention
        && current.storage == desired.storage
        && current.num_replicas == desired.num_replicas
        && current.duplicate_window == desired.duplicate_window
        && current.max_age == desired.max_age
        && current.allow_direct == desired.allow_direct
        && (desired.max_bytes <= 0 || current.max_bytes == desired.max_bytes)
}

fn is_not_found(error: &async_nats::jetstream::context::GetStreamError) -> bool {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::GetStreamErrorKind;
    matches!(error.kind(), GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// Makes `value` safe as one subject token: characters other than ASCII letters, digits,
/// `_` and `-` become `_`; an empty value becomes `_`.
pub fn subject_token(value: &str) -> String {
    if value.is_empty() {
        return "_".to_owned();
    }
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// An id as one subject token of fixed length: the first 128 bits of its SHA-256, in hex.
/// Ids may hold any character (dots and wildcards included), and two ids never share a
/// token by accident, which [`subject_token`] cannot promise.
pub fn id_token(id: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(id.as_bytes())[..16])
}

/// The payload of an announcement on [`Topology::active_subject`]: the person's
/// [`id_token`] and when they became the device's active user (Unix ms). Announcements
/// from the registry and the gateways travel on different connections, so one can arrive
/// after a newer one: a gateway closes only connections older than the announcement.
pub fn active_notice(person: &str, at_ms: u64) -> String {
    format!("{} {at_ms}", id_token(person))
}

/// An [`active_notice`] read back: the person's [`id_token`] and, when given, the time
/// (an announcement without one is taken as newer than any connection).
pub fn read_active_notice(payload: &[u8]) -> (&[u8], Option<u64>) {
    match payload.iter().position(|b| *b == b' ') {
        Some(space) => (
            &payload[..space],
            std::str::from_utf8(&payload[space + 1..])
                .ok()
                .and_then(|at| at.parse().ok()),
        ),
        None => (payload, None),
    }
}

/// A JetStream context on a client.
pub fn jetstream(client: async_nats::Client) -> Context {
    jetstream::new(client)
}

/// Runs [`Topology::ensure`] until it succeeds (NATS may still be starting), backing off
/// up to 2 s between tries. Returns `false` if `shutdown` came first.
pub async fn ensure_until_ready(
    js: &Context,
    topology: &Topology,
    shutdown: &tokio_util::sync::CancellationToken,
) -> bool {
    let mut delay = Duration::from_millis(100);
    loop {
        match topology.ensure(js).await {
            Ok(()) => return true,
            Err(error) => tracing::warn!(%error, "JetStream not ready; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod notice_tests {
    use super::*;

    #[test]
    fn an_active_notice_reads_back_with_its_time() {
        let notice = active_notice("lea", 1_700_000_000_123);
        let (tag, at) = read_active_notice(notice.as_bytes());
        assert_eq!(tag, id_token("lea").as_bytes());
        assert_eq!(at, Some(1_700_000_000_123));
        // An older announcement (no time) names the person alone.
        let tag_only = id_token("lea");
        assert_eq!(
            read_active_notice(tag_only.as_bytes()),
            (tag_only.as_bytes(), None)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(prefix: &str) -> Topology {
        Topology::new(
            &NatsConfig {
                prefix: prefix.into(),
                ..NatsConfig::default()
            },
            &["apns", "fcm"],
        )
    }

    #[test]
    fn pruned_notices_never_meet_a_producers_callbacks() {
        let t = topology("t1_");
        let pruned = t.pruned_subject("com.example.app");
        assert_eq!(pruned, "t1_callbacks.pruned.com_example_app");
        assert!(t.is_pruned_subject(&pruned));
        // A producer may be called `pruned`: its subject has one token less.
        assert!(!t.is_pruned_subject(&t.callback_subject("pruned")));
        assert!(!t.is_pruned_subject(&t.callback_subject("crm")));
        assert!(!topology("").is_pruned_subject(&pruned));
    }

    #[test]
    fn prefix_applies_to_names_and_subjects() {
        let t = topology("t1_");
        assert_eq!(t.stream_name(StreamKind::Events), "t1_EVENTS");
        assert_eq!(
            t.event_subject("webex", "telephony_push"),
            "t1_events.webex.telephony_push"
        );
        assert_eq!(
            t.push_subject("apns", Environment::Sandbox),
            "t1_push.apns.sandbox"
        );
        assert_eq!(
            t.push_subject("fcm", Environment::Production),
            "t1_push.fcm.production"
        );
        assert_eq!(t.stream_name(StreamKind::Push("fcm")), "t1_PUSH_FCM");
        assert_eq!(ConsumerKind::Dispatch("fcm").durable_name(), "dispatch-fcm");
        assert_eq!(t.dead_subject("apns"), "t1_dead.apns");
        let status = t.status_subject("evt.with*dots>");
        assert!(status.starts_with("t1_status.e."));
        assert_eq!(status.len(), "t1_status.e.".len() + 32);
        assert_ne!(t.status_subject("a.b"), t.status_subject("a_b"));
        assert_ne!(t.status_subject("x"), t.trace_subject("x"));
    }

    #[test]
    fn subjects_fall_inside_their_stream() {
        let t = topology("");
        assert_eq!(
            t.streams(),
            [
                StreamKind::Events,
                StreamKind::Push("apns"),
                StreamKind::Push("fcm"),
                StreamKind::Feedback,
                StreamKind::Dead,
                StreamKind::Status,
                StreamKind::Callbacks
            ]
        );
        for provider in t.providers() {
            let filter = t.stream_config(StreamKind::Push(provider)).subjects[0].clone();
            assert_eq!(filter, format!("push.{provider}.*"));
            let subject = t.push_subject(provider, Environment::Production);
            assert!(subject.starts_with(filter.trim_end_matches('*')));
        }
        assert_eq!(
            t.stream_config(StreamKind::Dead).retention,
            RetentionPolicy::Limits
        );
        assert_eq!(
            t.stream_config(StreamKind::Events).retention,
            RetentionPolicy::WorkQueue
        );
    }

    #[test]
    fn partition_zero_is_the_unpartitioned_topology_and_no_two_partitions_overlap() {
        let t = Topology::new(
            &NatsConfig {
                prefix: "t1_".into(),
                partitions: 3,
                ..NatsConfig::default()
            },
            &["apns"],
        );
        let one = topology("t1_");
        for kind in [StreamKind::Events, StreamKind::Push("apns")] {
            assert_eq!(
                t.stream_config_in(kind, 0).name,
                one.stream_config(kind).name
            );
            assert_eq!(
                t.stream_config_in(kind, 0).subjects,
                one.stream_config(kind).subjects
            );
            assert_eq!(t.stream_names(kind).len(), 3);
        }
        assert_eq!(t.stream_name_in(StreamKind::Events, 2), "t1_EVENTS_2");
        assert_eq!(
            t.stream_name_in(StreamKind::Push("apns"), 1),
            "t1_PUSH_APNS_1"
        );
        assert_eq!(
            t.stream_config_in(StreamKind::Push("apns"), 1).subjects,
            ["t1_push-1.apns.*"]
        );
        assert_eq!(
            t.event_subject_in(1, "webex", "telephony_push"),
            "t1_events-1.webex.telephony_push"
        );
        assert_eq!(
            t.push_subject_in(2, "apns", Environment::Production),
            "t1_push-2.apns.production"
        );
        // Each partition's subjects fall inside its own filter and no other's.
        for partition in 0..3 {
            let subject = t.event_subject_in(partition, "webex", "x");
            for other in 0..3 {
                let filter = &t.stream_config_in(StreamKind::Events, other).subjects[0];
                let root = filter.trim_end_matches('>');
                assert_eq!(
                    subject.starts_with(root),
                    partition == other,
                    "{subject} {filter}"
                );
            }
        }
        assert_eq!(t.partitions_of(StreamKind::Dead), 1);
        assert_eq!(t.stream_names(StreamKind::Status), ["t1_STATUS"]);
    }

    #[test]
    fn subject_tokens_cannot_escape_their_level() {
        assert_eq!(subject_token("a.b*>c d"), "a_b__c_d");
        assert_eq!(subject_token(""), "_");
    }
}
