//! Per-event delivery tracking: what became of one event on each of its devices.
//!
//! Every stage that handles an event writes small [`StatusRecord`]s to the `STATUS`
//! stream, on the event's subject ([`Topology::status_subject`]):
//!
//! | stage | who | record |
//! |---|---|---|
//! | `received` | ingest | producer, person, class, deadline, trace id (also on the trace id's subject) |
//! | `fanned_out`, `no_devices`, `expired` | fan-out | the event as a whole; `fanned_out` lists the devices whose jobs it queued (`queued`) |
//! | `skipped` | fan-out | one per device that got nothing (why) |
//! | `accepted`, `retried`, `expired`, `invalid_token`, `dead_lettered`, `duplicate` | dispatcher | one per try: when it was sent, the provider's id (APNs `apns-id`, FCM message name), the reason |
//! | `pruned` | registry | the token was deleted after the provider's verdict |
//! | `sent_inapp`, `acknowledged`, `expired` | gateway | an in-app message went over a device's live connection; the app acknowledged it; it expired unread on a connection |
//! | `fell_back_to_push`, `acknowledged` | registry (in-app fall-back) | the app did not acknowledge in time and the device's held pushes went out (they are then `queued` like any); or it did |
//!
//! Devices are named by their token's tag ([`crate::telemetry::token_tag`]), never by the
//! token. [`read_event`] folds the records into an [`EventStatus`].
//!
//! Records are written with a plain NATS publish, which the stream stores without the
//! writer waiting for an ack: tracking costs the hot path one serialisation and one write
//! to the connection's buffer, and a record lost while a stream leader is being elected
//! costs a line of history, never a push. `STATUS` keeps records for
//! `nats.tracking_max_age_secs` (a day) and at most `nats.tracking_max_bytes`, dropping the
//! oldest first.

use async_nats::jetstream::Context;
use async_nats::jetstream::stream::RawMessageErrorKind;
use serde::{Deserialize, Serialize};

use crate::contract::{Class, Event, PushJob, TRACE_HEADER, VERSION, now_ms};
use crate::metrics::Metrics;
use crate::topology::{StreamKind, Topology};

/// Most records read for one event (an event's records are a few per device).
pub const MAX_RECORDS: usize = 10_000;

/// What happened, to an event or to one of its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// ingest stored the event.
    Received,
    /// The fan-out published the event's jobs.
    FannedOut,
    /// The person had no device for the event.
    NoDevices,
    /// A device's job was published (listed in the `fanned_out` record).
    Queued,
    /// A device got nothing (its payload had to be encrypted and could not be).
    Skipped,
    /// The provider accepted the push.
    Accepted,
    /// The provider or the network failed; the push is tried again.
    Retried,
    /// The deadline passed before the push was accepted (or, without a device, before
    /// the fan-out).
    Expired,
    /// The provider said the token is dead.
    InvalidToken,
    /// The registry deleted the dead token.
    Pruned,
    /// The push was refused for good and dead-lettered.
    DeadLettered,
    /// A copy of an accepted push came back and was not sent again.
    Duplicate,
    /// An in-app message went to the device over its live connection.
    SentInApp,
    /// The app acknowledged the in-app message.
    Acknowledged,
    /// The app did not acknowledge the in-app message within the window: the pushes held
    /// for the device went out instead.
    FellBackToPush,
    /// The app reported that the message reached the device (a receipt).
    Delivered,
    /// The app reported that its user opened or read the message (a receipt).
    Read,
    /// The app reported its user's answer: an action (a button, a prompt's answer) with
    /// an optional short reply.
    Action,
}

impl Stage {
    /// The label in metrics and answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Received => "received",
            Stage::FannedOut => "fanned_out",
            Stage::NoDevices => "no_devices",
            Stage::Queued => "queued",
            Stage::Skipped => "skipped",
            Stage::Accepted => "accepted",
            Stage::Retried => "retried",
            Stage::Expired => "expired",
            Stage::InvalidToken => "invalid_token",
            Stage::Pruned => "pruned",
            Stage::DeadLettered => "dead_lettered",
            Stage::Duplicate => "duplicate",
            Stage::SentInApp => "sent_inapp",
            Stage::Acknowledged => "acknowledged",
            Stage::FellBackToPush => "fell_back_to_push",
            Stage::Delivered => "delivered",
            Stage::Read => "read",
            Stage::Action => "action",
        }
    }

    /// Whether the app reported this (a receipt or an action): it is listed with the
    /// device's receipts and never changes the device's delivery outcome.
    pub fn is_receipt(self) -> bool {
        matches!(self, Stage::Delivered | Stage::Read | Stage::Action)
    }

    /// Whether a device's push is settled at this stage.
    fn is_final(self) -> bool {
        matches!(
            self,
            Stage::Accepted
                | Stage::Expired
                | Stage::InvalidToken
                | Stage::Pruned
                | Stage::DeadLettered
                | Stage::Skipped
                | Stage::Acknowledged
                | Stage::FellBackToPush
        )
    }

    /// Whether a device got the event at this stage: a provider accepted its push, or
    /// its app acknowledged the in-app message.
    fn is_delivered(self) -> bool {
        matches!(self, Stage::Accepted | Stage::Acknowledged)
    }
}

/// One line of an event's history, as stored in `STATUS`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusRecord {
    /// Contract version, always [`VERSION`].
    pub v: u8,
    /// The event.
    pub event_id: String,
    /// What happened.
    pub stage: Stage,
    /// When, ms.
    pub at_ms: u64,
    /// The device's token tag; absent for records about the whole event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The device's provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The device's app (bundle id or FCM project).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Which try (dispatcher records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u64>,
    /// When the request went to the provider, ms (dispatcher records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at_ms: Option<u64>,
    /// Why (retry, skip, refusal or invalid-token reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The provider's id of the accepted push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    /// The devices whose jobs the fan-out published (`fanned_out`): one record for all of
    /// them, not one each, to keep the records per push few.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queued: Vec<Queued>,
    /// What ingest received (`received` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<Received>,
    /// The action's id (`action` records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The user's short reply to the action (`action` records, when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
}

/// A device whose job was published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Queued {
    /// The token's tag.
    pub device: String,
    /// Its provider.
    pub platform: String,
    /// Its app.
    pub app: String,
}

impl Queued {
    /// The device of `job`.
    pub fn of<P>(job: &PushJob<P>) -> Self {
        Queued {
            device: crate::telemetry::token_tag(&job.token),
            platform: job.platform.clone(),
            app: job.app.clone(),
        }
    }
}

/// The event as ingest stored it, without its payloads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Received {
    /// `webex`, or `api` for `/v1/notify`.
    pub source: String,
    /// The Webex resource, or the producer's name for `/v1/notify`.
    pub resource: String,
    /// The person rung or notified.
    pub person_id: String,
    /// Urgency class.
    pub class: Class,
    /// The event's deadline, ms.
    pub deadline_ms: u64,
    /// The producer's trace id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

impl Received {
    /// Whether the producer named `producer` (a `/v1/notify` key's name) sent the event.
    pub fn is_from_producer(&self, producer: &str) -> bool {
        self.source == "api" && self.resource == producer
    }
}

impl StatusRecord {
    /// A record about the whole event.
    pub fn event(event_id: &str, stage: Stage) -> Self {
        StatusRecord {
            v: VERSION,
            event_id: event_id.to_owned(),
            stage,
            at_ms: now_ms(),
            device: None,
            platform: None,
            app: None,
            attempt: None,
            sent_at_ms: None,
            reason: None,
            provider_id: None,
            queued: Vec::new(),
            received: None,
            action: None,
            reply: None,
        }
    }

    /// The `received` record of `event`, at the time the webhook or request arrived.
    pub fn received(event: &Event) -> Self {
        StatusRecord {
            at_ms: event.received_at_ms,
            received: Some(Received {
                source: event.source.clone(),
                resource: event.resource.clone(),
                person_id: event.person_id.clone(),
                class: event.class,
                deadline_ms: event.deadline_ms,
                trace_id: event.trace_id.clone(),
            }),
            ..StatusRecord::event(&event.id, Stage::Received)
        }
    }

    /// A record about the device of `job`.
    pub fn job<P>(job: &PushJob<P>, stage: Stage) -> Self {
        StatusRecord {
            device: Some(crate::telemetry::token_tag(&job.token)),
            platform: Some(job.platform.clone()),
            app: Some(job.app.clone()),
            ..StatusRecord::event(&job.event_id, stage)
        }
    }

    /// With a reason.
    pub fn because(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// With the try and when its request was sent.
    pub fn attempt(mut self, attempt: u64, sent_at_ms: Option<u64>) -> Self {
        self.attempt = Some(attempt);
        self.sent_at_ms = sent_at_ms;
        self
    }
}

/// Writes status records; a no-op when tracking is off (`nats.tracking = false`).
#[derive(Clone)]
pub struct Tracker {
    client: Option<async_nats::Client>,
    topology: Topology,
    metrics: Metrics,
}

impl Tracker {
    /// A tracker publishing on `client`, or doing nothing when `enabled` is false.
    pub fn new(
        client: async_nats::Client,
        topology: Topology,
        enabled: bool,
        metrics: Metrics,
    ) -> Self {
        Tracker {
            client: enabled.then_some(client),
            topology,
            metrics,
        }
    }

    /// Writes `record` to its event's subject (and, for `received` records with a trace
    /// id, to the trace id's subject). Never waits for the stream; a failure is counted.
    pub async fn record(&self, record: &StatusRecord) {
        let Some(client) = &self.client else { return };
        let Ok(body) = serde_json::to_vec(record) else {
            return;
        };
        let body = bytes::Bytes::from(body);
        let subject = self.topology.status_subject(&record.event_id);
        let mut published = client.publish(subject, body.clone()).await.is_ok();
        if let Some(trace) = record.received.as_ref().and_then(|r| r.trace_id.as_deref()) {
            let subject = self.topology.trace_subject(trace);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(TRACE_HEADER, trace);
            published &= client
                .publish_with_headers(subject, headers, body)
                .await
                .is_ok();
        }
        self.metrics
            .status_records
            .with_label_values(&[
                record.stage.as_str(),
                if published { "written" } else { "failed" },
            ])
            .inc();
    }
}

/// Why status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// `STATUS` could not be reached.
    #[error("cannot read {stream}: {detail}")]
    Stream {
        /// Stream name.
        stream: String,
        /// Cause.
        detail: String,
    },
}

/// What a bounded read found: the value, the messages it read, and whether more were
/// left unread.
#[derive(Debug, Clone, PartialEq)]
pub struct Bounded<T> {
    /// What was read.
    pub value: T,
    /// Messages read (damaged or unknown records included).
    pub read: usize,
    /// Whether the subject holds more than was read.
    pub truncated: bool,
}

/// The records on `subject`, oldest first: at most `limit` messages read, plus one look
/// to tell whether there are more.
async fn read_subject(
    js: &Context,
    topology: &Topology,
    subject: &str,
    limit: usize,
) -> Result<Bounded<Vec<StatusRecord>>, ReadError> {
    let stream_name = topology.stream_name(StreamKind::Status);
    let failed = |detail: String| ReadError::Stream {
        stream: stream_name.clone(),
        detail,
    };
    let stream = js
        .get_stream_no_info(&stream_name)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut records = Vec::new();
    let mut read = 0;
    let mut sequence = 1;
    loop {
        let message = match stream
            .raw_message_builder()
            .sequence(sequence)
            .next_by_subject(subject)
            .send()
            .await
        {
            Ok(message) => message,
            Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => break,
            Err(error) => return Err(failed(error.to_string())),
        };
        if read == limit {
            return Ok(Bounded {
                value: records,
                read,
                truncated: true,
            });
        }
        read += 1;
        sequence = message.sequence + 1;
        // A record of a later contract version, or a damaged one, is left out.
        if let Ok(record) = serde_json::from_slice::<StatusRecord>(&message.payload) {
            records.push(record);
        }
    }
    Ok(Bounded {
        value: records,
        read,
        truncated: false,
    })
}

/// The status of `event_id`, or `None` when nothing is recorded for it (unknown, or
/// older than the retention).
pub async fn read_event(
    js: &Context,
    topology: &Topology,
    event_id: &str,
) -> Result<Option<EventStatus>, ReadError> {
    Ok(read_event_within(js, topology, event_id, MAX_RECORDS)
        .await?
        .value)
}

/// The status of `event_id` folded from at most `max_records` of its records (a public
/// API reads with a small bound; `truncated` says the status is partial).
pub async fn read_event_within(
    js: &Context,
    topology: &Topology,
    event_id: &str,
    max_records: usize,
) -> Result<Bounded<Option<EventStatus>>, ReadError> {
    let records = read_subject(
        js,
        topology,
        &topology.status_subject(event_id),
        max_records,
    )
    .await?;
    Ok(Bounded {
        value: fold(event_id, records.value),
        read: records.read,
        truncated: records.truncated,
    })
}

/// The ids of the events stored with `trace_id`, oldest first.
pub async fn events_of_trace(
    js: &Context,
    topology: &Topology,
    trace_id: &str,
) -> Result<Vec<String>, ReadError> {
    Ok(events_of_trace_within(js, topology, trace_id, MAX_RECORDS)
        .await?
        .value)
}

/// The ids of the events stored with `trace_id`, oldest first, from at most
/// `max_records` of the trace's records.
pub async fn events_of_trace_within(
    js: &Context,
    topology: &Topology,
    trace_id: &str,
    max_records: usize,
) -> Result<Bounded<Vec<String>>, ReadError> {
    let records =
        read_subject(js, topology, &topology.trace_subject(trace_id), max_records).await?;
    let mut ids: Vec<String> = Vec::new();
    for record in records.value {
        let same_trace = record
            .received
            .as_ref()
            .is_some_and(|r| r.trace_id.as_deref() == Some(trace_id));
        if same_trace && !ids.contains(&record.event_id) {
            ids.push(record.event_id);
        }
    }
    Ok(Bounded {
        value: ids,
        read: records.read,
        truncated: records.truncated,
    })
}

/// What became of one event: the answer of `GET /v1/events/{id}` and `pushctl trace`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventStatus {
    /// The event.
    pub event_id: String,
    /// `pending` (not settled on every device yet), `delivered` (accepted for every
    /// device), `partially_delivered`, `failed` (accepted for none), `no_devices`, or
    /// `expired` (before the fan-out).
    pub outcome: String,
    /// What ingest received; absent if its record was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<Received>,
    /// When ingest stored it, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at_ms: Option<u64>,
    /// When the fan-out published its jobs, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fanned_out_at_ms: Option<u64>,
    /// Each device the event was for.
    pub devices: Vec<DeviceStatus>,
    /// Every record, oldest first.
    pub history: Vec<StatusRecord>,
}

/// What became of the event on one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// The token's tag.
    pub device: String,
    /// Its provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Its app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The latest settled stage, or the latest stage while none is.
    pub outcome: Stage,
    /// When that happened, ms.
    pub outcome_at_ms: u64,
    /// When the job was queued, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_at_ms: Option<u64>,
    /// When the last request went to the provider, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at_ms: Option<u64>,
    /// The provider's id of the accepted push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    /// How many tries were retried.
    pub retries: u64,
    /// The latest reason given (retry, refusal, skip, invalid token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reason: Option<String>,
    /// What the app reported of the message on this device, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub receipts: Vec<Receipt>,
}

/// A receipt or an action the app reported for one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// `delivered`, `read` or `action`.
    pub kind: Stage,
    /// When it was reported, ms.
    pub at_ms: u64,
    /// The action's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The user's reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
}

impl DeviceStatus {
    fn new(record: &StatusRecord, device: &str) -> Self {
        DeviceStatus {
            device: device.to_owned(),
            platform: record.platform.clone(),
            app: record.app.clone(),
            // A receipt that arrived before the device's own record (clocks differ
            // between services) names no delivery outcome.
            outcome: if record.stage.is_receipt() {
                Stage::Queued
            } else {
                record.stage
            },
            outcome_at_ms: record.at_ms,
            queued_at_ms: None,
            sent_at_ms: None,
            provider_id: None,
            retries: 0,
            last_reason: None,
            receipts: Vec::new(),
        }
    }

    fn apply(&mut self, record: &StatusRecord) {
        if record.stage.is_receipt() {
            self.receipts.push(Receipt {
                kind: record.stage,
                at_ms: record.at_ms,
                action: record.action.clone(),
                reply: record.reply.clone(),
            });
            return;
        }
        match record.stage {
            Stage::Queued => self.queued_at_ms = Some(record.at_ms),
            Stage::Retried => self.retries += 1,
            _ => {}
        }
        if record.sent_at_ms.is_some() {
            self.sent_at_ms = record.sent_at_ms;
        }
        if record.provider_id.is_some() {
            self.provider_id.clone_from(&record.provider_id);
        }
        if record.reason.is_some() {
            self.last_reason.clone_from(&record.reason);
        }
        // A settled push stays settled: a late retry record from another replica, or a
        // duplicate that came back, does not undo it. Pruning follows an invalid token.
        let replaces = match (self.outcome.is_final(), record.stage) {
            (_, Stage::Duplicate) => false,
            (true, Stage::Pruned) => self.outcome == Stage::InvalidToken,
            (true, _) => false,
            (false, _) => true,
        };
        if replaces {
            self.outcome = record.stage;
            self.outcome_at_ms = record.at_ms;
        }
    }
}

/// Folds an event's records (in stream order) into its status.
pub fn fold(event_id: &str, mut records: Vec<StatusRecord>) -> Option<EventStatus> {
    records.retain(|r| r.event_id == event_id);
    if records.is_empty() {
        return None;
    }
    // Stream order is arrival order; stages on different services are ordered by clock.
    records.sort_by_key(|r| r.at_ms);
    let mut status = EventStatus {
        event_id: event_id.to_owned(),
        outcome: String::new(),
        received: None,
        received_at_ms: None,
        fanned_out_at_ms: None,
        devices: Vec::new(),
        history: Vec::new(),
    };
    let mut event_stage = None;
    for record in &records {
        match (&record.device, record.stage) {
            (None, Stage::Received) => {
                status.received.clone_from(&record.received);
                status.received_at_ms = Some(record.at_ms);
            }
            (None, stage) => {
                if stage == Stage::FannedOut {
                    status.fanned_out_at_ms = Some(record.at_ms);
                }
                for queued in &record.queued {
                    let queued = StatusRecord {
                        device: Some(queued.device.clone()),
                        platform: Some(queued.platform.clone()),
                        app: Some(queued.app.clone()),
                        at_ms: record.at_ms,
                        ..StatusRecord::event(event_id, Stage::Queued)
                    };
                    status.device(&queued);
                }
                event_stage = Some(stage);
            }
            (Some(_), _) => status.device(record),
        }
    }
    status.outcome = outcome(event_stage, &status.devices).to_owned();
    status.history = records;
    Some(status)
}

impl EventStatus {
    /// Applies a record about one device.
    fn device(&mut self, record: &StatusRecord) {
        let Some(device) = &record.device else { return };
        match self.devices.iter_mut().find(|d| &d.device == device) {
            Some(existing) => existing.apply(record),
            None => {
                let mut new = DeviceStatus::new(record, device);
                new.apply(record);
                self.devices.push(new);
            }
        }
    }
}

fn outcome(event_stage: Option<Stage>, devices: &[DeviceStatus]) -> &'static str {
    if devices.is_empty() {
        return match event_stage {
            Some(Stage::NoDevices) => "no_devices",
            Some(Stage::Expired) => "expired",
            _ => "pending",
        };
    }
    if devices.iter().any(|d| !d.outcome.is_final()) {
        return "pending";
    }
    // An in-app message that fell back handed the device over to its pushes, which
    // count in its place.
    let counted = devices
        .iter()
        .filter(|d| d.outcome != Stage::FellBackToPush)
        .count();
    let accepted = devices.iter().filter(|d| d.outcome.is_delivered()).count();
    if accepted == counted && counted > 0 {
        "delivered"
    } else if accepted > 0 {
        "partially_delivered"
    } else {
        "failed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(stage: Stage, device: &str, at_ms: u64) -> StatusRecord {
        StatusRecord {
            device: Some(device.into()),
            platform: Some("apns".into()),
            app: Some("com.example".into()),
            at_ms,
            ..StatusRecord::event("e1", stage)
        }
    }

    fn at(stage: Stage, at_ms: u64) -> StatusRecord {
        StatusRecord {
            at_ms,
            ..StatusRecord::event("e1", stage)
        }
    }

    #[test]
    fn nothing_recorded_is_none() {
        assert_eq!(fold("e1", vec![]), None);
        assert_eq!(
            fold("e1", vec![StatusRecord::event("e2", Stage::Received)]),
            None
        );
    }

    #[test]
    fn a_retried_then_accepted_device_is_delivered_with_its_history() {
        let mut accepted = device(Stage::Accepted, "d1", 40).attempt(2, Some(35));
        accepted.provider_id = Some("apns-id-1".into());
        let status = fold(
            "e1",
            vec![
                at(Stage::Received, 10),
                StatusRecord {
                    queued: vec![Queued {
                        device: "d1".into(),
                        platform: "apns".into(),
                        app: "com.example".into(),
                    }],
                    ..at(Stage::FannedOut, 20)
                },
                device(Stage::Retried, "d1", 30)
                    .attempt(1, Some(25))
                    .because("ServiceUnavailable"),
                accepted,
            ],
        )
        .expect("status");
        assert_eq!(status.outcome, "delivered");
        assert_eq!(status.received_at_ms, Some(10));
        assert_eq!(status.fanned_out_at_ms, Some(20));
        let d = &status.devices[0];
        assert_eq!(d.outcome, Stage::Accepted);
        assert_eq!(
            (d.retries, d.queued_at_ms, d.sent_at_ms),
            (1, Some(20), Some(35))
        );
        assert_eq!(d.provider_id.as_deref(), Some("apns-id-1"));
        assert_eq!(d.last_reason.as_deref(), Some("ServiceUnavailable"));
        assert_eq!(status.history.len(), 4);
    }

    #[test]
    fn settled_pushes_stay_settled_and_pruning_follows_an_invalid_token() {
        let status = fold(
            "e1",
            vec![
                device(Stage::Queued, "d1", 1),
                device(Stage::Accepted, "d1", 5),
                device(Stage::Retried, "d1", 6),
                device(Stage::Duplicate, "d1", 7),
                device(Stage::Queued, "d2", 1),
                device(Stage::InvalidToken, "d2", 5),
                device(Stage::Pruned, "d2", 9),
            ],
        )
        .expect("status");
        assert_eq!(status.devices[0].outcome, Stage::Accepted);
        assert_eq!(status.devices[1].outcome, Stage::Pruned);
        assert_eq!(status.outcome, "partially_delivered");
    }

    #[test]
    fn an_acknowledged_in_app_message_is_delivered_and_a_fall_back_counts_its_pushes() {
        let acknowledged = fold(
            "e1",
            vec![
                device(Stage::Queued, "app", 1),
                device(Stage::SentInApp, "app", 2),
                device(Stage::Acknowledged, "app", 3),
            ],
        )
        .expect("status");
        assert_eq!(acknowledged.outcome, "delivered");
        let sent = fold(
            "e1",
            vec![
                device(Stage::Queued, "app", 1),
                device(Stage::SentInApp, "app", 2),
            ],
        )
        .expect("status");
        assert_eq!(sent.outcome, "pending", "sent is not acknowledged");
        let fell_back = fold(
            "e1",
            vec![
                device(Stage::Queued, "app", 1),
                device(Stage::SentInApp, "app", 2),
                device(Stage::FellBackToPush, "app", 3),
                device(Stage::Queued, "phone", 3),
                device(Stage::Accepted, "phone", 4),
                // The app acknowledging after the fall-back changes nothing settled.
                device(Stage::Acknowledged, "app", 5),
            ],
        )
        .expect("status");
        assert_eq!(fell_back.devices[0].outcome, Stage::FellBackToPush);
        assert_eq!(fell_back.outcome, "delivered", "the phone's push counts");
    }

    #[test]
    fn the_event_outcome_waits_for_every_device() {
        let pending = fold(
            "e1",
            vec![
                device(Stage::Accepted, "d1", 5),
                device(Stage::Retried, "d2", 5),
            ],
        )
        .expect("status");
        assert_eq!(pending.outcome, "pending");
        let failed = fold(
            "e1",
            vec![
                device(Stage::Expired, "d1", 5),
                device(Stage::DeadLettered, "d2", 5),
            ],
        )
        .expect("status");
        assert_eq!(failed.outcome, "failed");
        for (stage, outcome) in [
            (Stage::NoDevices, "no_devices"),
            (Stage::Expired, "expired"),
            (Stage::Received, "pending"),
        ] {
            let status = fold("e1", vec![at(stage, 1)]).expect("status");
            assert_eq!(status.outcome, outcome);
        }
    }

    #[test]
    fn records_read_back_as_written() {
        let record = device(Stage::Skipped, "d1", 3).because("no_key");
        let json = serde_json::to_string(&record).expect("json");
        assert!(json.contains(r#""stage":"skipped""#), "{json}");
        assert!(!json.contains("provider_id"), "{json}");
        let back: StatusRecord = serde_json::from_str(&json).expect("back");
        assert_eq!(back, record);
    }

    #[test]
    fn receipts_are_listed_per_device_and_never_change_its_outcome() {
        let mut action = device(Stage::Action, "d1", 60);
        action.action = Some("yes".into());
        action.reply = Some("on my way".into());
        let status = fold(
            "e1",
            vec![
                at(Stage::Received, 10),
                device(Stage::Accepted, "d1", 30),
                device(Stage::Delivered, "d1", 40),
                device(Stage::Read, "d1", 50),
                action,
            ],
        )
        .expect("status");
        assert_eq!(status.outcome, "delivered");
        let d1 = &status.devices[0];
        assert_eq!(d1.outcome, Stage::Accepted);
        let kinds: Vec<Stage> = d1.receipts.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, [Stage::Delivered, Stage::Read, Stage::Action]);
        assert_eq!(d1.receipts[2].action.as_deref(), Some("yes"));
        assert_eq!(d1.receipts[2].reply.as_deref(), Some("on my way"));

        let early = fold("e1", vec![device(Stage::Read, "d2", 5)]).expect("status");
        assert_eq!(
            early.devices[0].outcome,
            Stage::Queued,
            "a receipt settles nothing"
        );
        assert_eq!(early.outcome, "pending");
    }
}
