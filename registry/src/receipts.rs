//! Receipts and actions: what an app reports of a message it was sent — `delivered`,
//! `read` (opened), `action` (a button or a prompt's answer, with an optional short
//! reply) — over its live connection (the gateway) or the device API
//! (`POST /v1/receipts`, for a push opened from the notification).
//!
//! A report is taken only for a message the event's delivery status says went to the
//! caller on that device: the event's person is the caller, and one of the caller's
//! registrations with that app and device id is among the event's devices. Anything else
//! is answered as an unknown message, whether the event exists or not. A report becomes
//! a status record of the device (`docs/ingest-api.md`), so it shows in
//! `GET /v1/events/{id}`, `pushctl trace` and the producer's `event.settled` callback;
//! an action of a producer's event is also published to `CALLBACKS` for its own signed
//! `message.action` callback.

use async_nats::jetstream::Context;
use pipeline::contract::{MessageAction, VERSION, now_ms};
use pipeline::metrics::Metrics;
use pipeline::topology::Topology;
use pipeline::tracking::{DeviceStatus, EventStatus, Received, Stage, StatusRecord, Tracker};
use serde::Deserialize;

use crate::store::Store;

/// Longest reply, in characters.
pub const MAX_REPLY_CHARS: usize = 256;
/// Longest action id.
pub const MAX_ACTION_ID: usize = 64;
/// Most status records read to check a report.
const MAX_RECORDS: usize = 2_000;
/// How long a report is checked again while the records it is checked against may still
/// be on their way.
const RECORDS_SETTLE: std::time::Duration = std::time::Duration::from_millis(1_500);
/// How recent an event's newest record must be (ms) for records it lacks to be still on
/// their way: an event's records are written within moments of each other.
const RECENT_MS: u64 = 10_000;
/// The first pause before checking again; each next one doubles.
const SETTLE_FIRST_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);
/// Most receipts recorded for one device of one event; later ones are taken and not
/// recorded (an app repeating itself cannot grow an event's history without bound).
pub const MAX_RECEIPTS_PER_DEVICE: usize = 16;

/// What the app reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The message reached the device.
    Delivered,
    /// The user opened or read it.
    Read,
    /// The user answered it.
    Action,
}

impl Kind {
    /// The label in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Delivered => "delivered",
            Kind::Read => "read",
            Kind::Action => "action",
        }
    }

    fn stage(self) -> Stage {
        match self {
            Kind::Delivered => Stage::Delivered,
            Kind::Read => Stage::Read,
            Kind::Action => Stage::Action,
        }
    }
}

/// A report, as the app sends it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// The message: its event id.
    pub event_id: String,
    /// What happened.
    pub kind: Kind,
    /// The action's id (`action` only).
    #[serde(default)]
    pub action: Option<String>,
    /// The user's short reply (`action` only, optional).
    #[serde(default)]
    pub reply: Option<String>,
}

impl Report {
    /// Why the report is not one, if it is not.
    pub fn check(&self) -> Result<(), String> {
        crate::inbox::check_id("event_id", &self.event_id)?;
        match (self.kind, &self.action) {
            (Kind::Action, None) => return Err("an `action` report needs `action`".into()),
            (Kind::Action, Some(action)) => {
                let ok = (1..=MAX_ACTION_ID).contains(&action.len())
                    && action
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                if !ok {
                    return Err(format!(
                        "`action` must be 1 to {MAX_ACTION_ID} characters of A-Z a-z 0-9 . _ -"
                    ));
                }
            }
            (_, Some(_)) => return Err("only an `action` report carries `action`".into()),
            (_, None) => {}
        }
        match (&self.reply, self.kind) {
            (Some(_), Kind::Delivered | Kind::Read) => {
                Err("only an `action` report carries `reply`".into())
            }
            (Some(reply), Kind::Action) if reply.chars().count() > MAX_REPLY_CHARS => Err(format!(
                "`reply` must be at most {MAX_REPLY_CHARS} characters"
            )),
            (Some(reply), Kind::Action) if reply.chars().any(char::is_control) => {
                Err("`reply` must not hold control characters".into())
            }
            _ => Ok(()),
        }
    }
}

/// Why a report was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// The report itself is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The caller was not sent that message on that device (or it is not known).
    #[error("no such message was sent to you on this device")]
    UnknownMessage,
    /// NATS or Redis failed: the app may try again.
    #[error("cannot check the report now: {0}")]
    Unavailable(String),
}

impl ReceiptError {
    /// The error's code in answers and its metrics label.
    pub fn code(&self) -> &'static str {
        match self {
            ReceiptError::Invalid(_) => "invalid",
            ReceiptError::UnknownMessage => "unknown_message",
            ReceiptError::Unavailable(_) => "unavailable",
        }
    }
}

/// Takes reports: checks them against the event's delivery status and records them.
#[derive(Clone)]
pub struct Receipts {
    js: Context,
    topology: Topology,
    tracker: Tracker,
    store: Store,
    metrics: Metrics,
}

impl Receipts {
    /// Reports checked against `STATUS` and the registrations in `store`.
    pub fn new(
        js: Context,
        topology: Topology,
        tracker: Tracker,
        store: Store,
        metrics: Metrics,
    ) -> Self {
        Receipts {
            js,
            topology,
            tracker,
            store,
            metrics,
        }
    }

    /// Records `report` of `person`'s device `device_id` of `app`, taken over
    /// `transport` (`http`, `websocket`, `mqtt`).
    pub async fn report(
        &self,
        person: &str,
        app: &str,
        device_id: &str,
        report: &Report,
        transport: &'static str,
    ) -> Result<(), ReceiptError> {
        let result = self.take(person, app, device_id, report).await;
        let outcome = match &result {
            Ok(true) => "recorded",
            Ok(false) => "duplicate",
            Err(error) => error.code(),
        };
        self.metrics
            .receipts
            .with_label_values(&[report.kind.as_str(), transport, outcome])
            .inc();
        result.map(|_| ())
    }

    /// Checks and records `report`; false when the device already reported the same (or
    /// as much as it may), which is taken but not recorded again.
    async fn take(
        &self,
        person: &str,
        app: &str,
        device_id: &str,
        report: &Report,
    ) -> Result<bool, ReceiptError> {
        report.check().map_err(ReceiptError::Invalid)?;
        let devices = self
            .store
            .devices(person, now_ms())
            .await
            .map_err(|e| ReceiptError::Unavailable(e.to_string()))?;
        let tags: Vec<String> = devices
            .iter()
            .filter(|d| d.attrs.app == app && d.device_id() == device_id)
            .map(|d| pipeline::telemetry::token_tag(&d.token))
            .collect();
        // The records a report is checked against are written without waiting (ingest's
        // after storing the event, the fan-out's after publishing the jobs, the
        // gateway's after sending the frame), so an app answering at once can be ahead
        // of them: a report on a recent event that they do not show yet is checked again
        // for a moment ([`standing`]).
        let started = tokio::time::Instant::now();
        let mut pause = SETTLE_FIRST_PAUSE;
        let sent = loop {
            let status = pipeline::tracking::read_event_within(
                &self.js,
                &self.topology,
                &report.event_id,
                MAX_RECORDS,
            )
            .await
            .map_err(|e| ReceiptError::Unavailable(e.to_string()))?
            .value;
            match standing(status, person, &tags, now_ms()) {
                Standing::Sent(sent) => break sent,
                Standing::NotSent => return Err(ReceiptError::UnknownMessage),
                Standing::NotYet => {
                    let left = RECORDS_SETTLE.saturating_sub(started.elapsed());
                    if left.is_zero() {
                        return Err(ReceiptError::UnknownMessage);
                    }
                    tokio::time::sleep(pause.min(left)).await;
                    pause *= 2;
                }
            }
        };
        let Sent {
            received,
            device,
            fanned_out_at_ms,
        } = *sent;
        let now = now_ms();
        let stage = report.kind.stage();
        let repeated = device
            .receipts
            .iter()
            .any(|r| r.kind == stage && r.action == report.action);
        if repeated || device.receipts.len() >= MAX_RECEIPTS_PER_DEVICE {
            return Ok(false);
        }
        let record = StatusRecord {
            device: Some(device.device.clone()),
            platform: device.platform.clone(),
            app: device.app.clone(),
            action: report.action.clone(),
            reply: report.reply.clone(),
            at_ms: now,
            ..StatusRecord::event(&report.event_id, stage)
        };
        self.tracker.record(&record).await;
        if let Some(sent) = fanned_out_at_ms {
            self.metrics
                .receipt_latency
                .with_label_values(&[report.kind.as_str()])
                .observe(now.saturating_sub(sent) as f64 / 1000.0);
        }
        if let (Kind::Action, Some(action)) = (report.kind, &report.action)
            && received.source == "api"
        {
            let notice = MessageAction {
                v: VERSION,
                event_id: report.event_id.clone(),
                producer: received.resource.clone(),
                person_id: received.person_id.clone(),
                device: device.device.clone(),
                app: app.to_owned(),
                action: action.clone(),
                reply: report.reply.clone(),
                at_ms: now,
            };
            let body = serde_json::to_vec(&notice)
                .map_err(|e| ReceiptError::Unavailable(e.to_string()))?;
            pipeline::nats::publish_stored(
                &self.js,
                &self.topology.action_subject(&notice.producer),
                &notice.notice_id(),
                None,
                &body.into(),
            )
            .await
            .map_err(|e| ReceiptError::Unavailable(e.to_string()))?;
        }
        Ok(true)
    }
}

/// What an event's delivery status, as far as its records have arrived, says of a
/// report by `person` from the registrations tagged `tags`.
#[derive(Debug, PartialEq)]
enum Standing {
    /// Sent to one of them.
    Sent(Box<Sent>),
    /// Not shown yet: the event's or the device's records may still be on their way.
    NotYet,
    /// Not sent to the caller on that device: no such registration, or another
    /// person's event.
    NotSent,
}

/// The parts of a status a report that is taken needs.
#[derive(Debug, PartialEq)]
struct Sent {
    received: Received,
    device: DeviceStatus,
    fanned_out_at_ms: Option<u64>,
}

/// Waits only where waiting can change the answer: on an event with records from the
/// last [`RECENT_MS`] that does not show the caller's device (or whose person is not
/// recorded yet). An event with no records at all (none such, or older than `STATUS`
/// keeps them) and another person's event are answered at once, so the time an answer
/// takes tells a caller nothing about other persons' events (beyond the moment while a
/// new event's first records are on their way).
fn standing(status: Option<EventStatus>, person: &str, tags: &[String], now_ms: u64) -> Standing {
    if tags.is_empty() {
        return Standing::NotSent;
    }
    let Some(EventStatus {
        received,
        devices,
        fanned_out_at_ms,
        history,
        ..
    }) = status
    else {
        return Standing::NotSent;
    };
    if received
        .as_ref()
        .is_some_and(|r| !crate::person::same(&r.person_id, person))
    {
        return Standing::NotSent;
    }
    let device = devices.into_iter().find(|d| tags.contains(&d.device));
    match (received, device) {
        (Some(received), Some(device)) => Standing::Sent(Box::new(Sent {
            received,
            device,
            fanned_out_at_ms,
        })),
        _ => {
            let newest = history.iter().map(|r| r.at_ms).max().unwrap_or(0);
            if now_ms.saturating_sub(newest) <= RECENT_MS {
                Standing::NotYet
            } else {
                Standing::NotSent
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(kind: Kind, action: Option<&str>, reply: Option<&str>) -> Report {
        Report {
            event_id: "0a1b2c".into(),
            kind,
            action: action.map(String::from),
            reply: reply.map(String::from),
        }
    }

    #[test]
    fn only_an_action_carries_an_action_and_a_reply() {
        assert!(report(Kind::Read, None, None).check().is_ok());
        assert!(report(Kind::Delivered, None, None).check().is_ok());
        assert!(report(Kind::Action, Some("yes"), None).check().is_ok());
        assert!(
            report(Kind::Action, Some("yes"), Some("on my way"))
                .check()
                .is_ok()
        );
        assert!(report(Kind::Action, None, None).check().is_err());
        assert!(report(Kind::Read, Some("yes"), None).check().is_err());
        assert!(report(Kind::Read, None, Some("hi")).check().is_err());
        assert!(report(Kind::Action, Some("a b"), None).check().is_err());
        assert!(report(Kind::Action, Some(""), None).check().is_err());
        let long = "x".repeat(MAX_REPLY_CHARS + 1);
        assert!(
            report(Kind::Action, Some("yes"), Some(&long))
                .check()
                .is_err()
        );
        assert!(
            report(Kind::Action, Some("yes"), Some("a\u{0}b"))
                .check()
                .is_err()
        );
        let mut bad = report(Kind::Read, None, None);
        bad.event_id = "no spaces".into();
        assert!(bad.check().is_err());
    }

    fn record(stage: Stage, device: Option<&str>) -> StatusRecord {
        StatusRecord {
            device: device.map(String::from),
            ..StatusRecord::event("0a1b2c", stage)
        }
    }

    fn status(records: Vec<StatusRecord>) -> Option<EventStatus> {
        pipeline::tracking::fold("0a1b2c", records)
    }

    fn received(person: &str) -> StatusRecord {
        StatusRecord {
            received: Some(Received {
                source: "api".into(),
                resource: "crm".into(),
                person_id: person.into(),
                class: pipeline::contract::Class::Alert,
                deadline_ms: now_ms() + 60_000,
                trace_id: None,
            }),
            ..record(Stage::Received, None)
        }
    }

    #[test]
    fn a_report_waits_only_for_records_that_may_still_come() {
        let now = now_ms();
        let tags = vec!["tag-1".to_owned()];
        let sent = vec![received("hana"), record(Stage::SentInApp, Some("tag-1"))];
        let Standing::Sent(taken) = standing(status(sent.clone()), "hana", &tags, now) else {
            panic!("sent to hana's device");
        };
        assert_eq!(taken.device.device, "tag-1");
        assert_eq!(taken.received.person_id, "hana");

        // No registration of the caller matches, the event was someone else's, or
        // nothing is recorded of it: at once.
        assert_eq!(
            standing(status(sent.clone()), "hana", &[], now),
            Standing::NotSent
        );
        assert_eq!(
            standing(status(sent.clone()), "ivan", &tags, now),
            Standing::NotSent
        );
        assert_eq!(standing(None, "hana", &tags, now), Standing::NotSent);
        // A recent event without the record of what ingest stored, or without that
        // device's: wait.
        let device_only = vec![record(Stage::SentInApp, Some("tag-1"))];
        assert_eq!(
            standing(status(device_only.clone()), "hana", &tags, now),
            Standing::NotYet
        );
        let other_device = vec![received("hana"), record(Stage::SentInApp, Some("tag-2"))];
        assert_eq!(
            standing(status(other_device.clone()), "hana", &tags, now),
            Standing::NotYet
        );
        // The same long after its newest record: nothing more is coming.
        let later = now + RECENT_MS + 1;
        assert_eq!(
            standing(status(device_only), "hana", &tags, later),
            Standing::NotSent
        );
        assert_eq!(
            standing(status(other_device), "hana", &tags, later),
            Standing::NotSent
        );
        assert!(matches!(
            standing(status(sent), "hana", &tags, later),
            Standing::Sent(_)
        ));
    }
}
