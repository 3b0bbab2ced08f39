//! The server-side inbox and receipts over a live connection (`docs/inapp.md`, the
//! `inbox.*` and `receipt` frames; MQTT's `inapp/<device id>/inbox` topic): one function
//! ([`Inboxes::answer`]) takes a request and answers its frame, whatever the transport.
//! The connection's person and app (from its hello or CONNECT) scope every operation: a
//! request names no person and no app, so nobody reaches another's inbox.
//!
//! | request | checked ([`read`]) | answer | then |
//! |---|---|---|---|
//! | any, with `ref` | a string of at most [`MAX_REF`] characters | echoed in the answer | |
//! | `inbox.*` of an app without an inbox (not in `inbox_apps`) | | `error` `no_inbox` | |
//! | `inbox.list` `limit`, `cursor`, `unread_only` | `limit` 1 to 100, a cursor the inbox gave | `inbox.page` | |
//! | `inbox.count` | no other field | `inbox.count` | |
//! | `inbox.read`, `inbox.unread`, `inbox.delete` | exactly one of `ids` (1 to 100), `up_to`, `all: true` | `inbox.done` | when something changed, `inbox.changed` to every connection of the person on the app (the sender's too) |
//! | `receipt` `event_id`, `kind`, `action`, `reply` | the registry's [`Report`] rules and the event's delivery status | `receipt.done` | |
//! | a field missing, extra or of the wrong type | | `error` `invalid` | |
//! | an id not in the inbox | nothing changed | `error` `unknown_message` | |
//! | Redis or NATS not answering within the hub's I/O timeout | | `error` `unavailable` | |
//!
//! A refusal keeps the connection open; only a frame that is not a request at all (not
//! JSON, an unknown `type`) closes it ([`crate::frames::parse`]).
//!
//! Changes reach connections through the person's inbox subject (core NATS,
//! [`registry::inbox::InboxNotices`]): each connection subscribes to it while it lives and
//! forwards the changes of its own app ([`change_frame`]), whoever made them (this
//! connection, another device of the person, the registry's API, the fan-out keeping a
//! new message).

use std::collections::BTreeSet;

use pipeline::contract::now_ms;
use pipeline::metrics::Metrics;
use registry::inbox::{Change, Inbox, InboxError, InboxNotices, Op, PageQuery, Select, Selection};
use registry::receipts::{ReceiptError, Receipts, Report};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::frames::{Operation, Request, ServerFrame};
use crate::hub::{Device, within};

/// Longest `ref` a request may carry.
pub const MAX_REF: usize = 64;

/// A request, checked: what to do.
#[derive(Debug)]
pub enum Command {
    /// A page.
    List(PageQuery),
    /// The unread count.
    Count,
    /// Marks read or unread, or deletes.
    Change(Op, Select),
    /// A receipt or an action.
    Receipt(Report),
}

/// Why a request was refused: the `error` frame's code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The request is malformed.
    Invalid(String),
    /// The connection's app keeps no inbox.
    NoInbox,
    /// A message (or event) the person's inbox (or device) does not hold; nothing changed.
    UnknownMessage(String),
    /// Redis or NATS failed or did not answer: the app may ask again.
    Unavailable,
}

impl Refusal {
    /// The `error` frame's `error`, and the metric's outcome.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Invalid(_) => "invalid",
            Refusal::NoInbox => "no_inbox",
            Refusal::UnknownMessage(_) => "unknown_message",
            Refusal::Unavailable => "unavailable",
        }
    }

    /// The `error` frame's `message`.
    pub fn message(&self) -> String {
        match self {
            Refusal::Invalid(why) => why.clone(),
            Refusal::NoInbox => "this app keeps no inbox".into(),
            Refusal::UnknownMessage(what) => what.clone(),
            Refusal::Unavailable => "the inbox cannot be reached now; try again".into(),
        }
    }
}

impl From<ReceiptError> for Refusal {
    fn from(error: ReceiptError) -> Self {
        match error {
            ReceiptError::Invalid(why) => Refusal::Invalid(why),
            ReceiptError::UnknownMessage => Refusal::UnknownMessage(error.to_string()),
            ReceiptError::Unavailable(_) => Refusal::Unavailable,
        }
    }
}

/// The fields of `inbox.list`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListFields {
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    unread_only: bool,
}

/// The fields of `inbox.count`: none.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

/// The request's `ref` (taken out of its fields), and what it asks of a connection whose
/// app keeps an inbox or not (`keeps_inbox`): pure, the module's table.
pub fn read(mut request: Request, keeps_inbox: bool) -> (Option<String>, Result<Command, Refusal>) {
    let reference = match request.fields.remove("ref") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) if text.chars().count() <= MAX_REF => Some(text),
        Some(_) => {
            let why = format!("`ref` must be a string of at most {MAX_REF} characters");
            return (None, Err(Refusal::Invalid(why)));
        }
    };
    (
        reference,
        command(request.operation, request.fields, keeps_inbox),
    )
}

fn command(
    operation: Operation,
    fields: Map<String, Value>,
    keeps_inbox: bool,
) -> Result<Command, Refusal> {
    if operation != Operation::Receipt && !keeps_inbox {
        return Err(Refusal::NoInbox);
    }
    let fields = Value::Object(fields);
    match operation {
        Operation::List => {
            let list: ListFields = fields_of(fields)?;
            PageQuery::parse(list.limit, list.cursor.as_deref(), list.unread_only)
                .map(Command::List)
                .map_err(Refusal::Invalid)
        }
        Operation::Count => fields_of::<NoFields>(fields).map(|_| Command::Count),
        Operation::Read | Operation::Unread | Operation::Delete => {
            let op = match operation {
                Operation::Read => Op::Read,
                Operation::Unread => Op::Unread,
                _ => Op::Deleted,
            };
            let select = fields_of::<Selection>(fields)?
                .parse()
                .map_err(Refusal::Invalid)?;
            Ok(Command::Change(op, select))
        }
        // Checked by the registry's `Receipts::report`, which counts what it refuses.
        Operation::Receipt => fields_of(fields).map(Command::Receipt),
    }
}

fn fields_of<T: serde::de::DeserializeOwned>(fields: Value) -> Result<T, Refusal> {
    serde_json::from_value(fields).map_err(|error| Refusal::Invalid(error.to_string()))
}

/// The `inbox.changed` frame of a change announced on the person's inbox subject
/// (`payload`), when it is of `app`'s inbox; `None` for another app's or an unreadable one.
pub fn change_frame(payload: &[u8], app: &str) -> Option<String> {
    let change: Change = serde_json::from_slice(payload).ok()?;
    (change.app == app).then(|| change.frame().to_string())
}

/// The inboxes and receipts of the persons connected to this replica.
pub struct Inboxes {
    inbox: Inbox,
    notices: InboxNotices,
    receipts: Receipts,
    /// The apps that keep an inbox (`inbox_apps`).
    apps: BTreeSet<String>,
    metrics: Metrics,
}

impl Inboxes {
    /// The inboxes in `inbox` of `apps`, changes announced with `notices`, reports taken
    /// by `receipts`.
    pub fn new(
        inbox: Inbox,
        notices: InboxNotices,
        receipts: Receipts,
        apps: BTreeSet<String>,
        metrics: Metrics,
    ) -> Self {
        Inboxes {
            inbox,
            notices,
            receipts,
            apps,
            metrics,
        }
    }

    /// Carries out `request` of the connection of `device` over `transport`, and answers
    /// its frame: the result, or an `error` frame (the connection stays open).
    pub async fn answer(
        &self,
        device: &Device,
        request: Request,
        transport: &'static str,
    ) -> String {
        let operation = request.operation;
        let (reference, command) = read(request, self.apps.contains(&device.app));
        let reference = reference.as_deref();
        let answered = match command {
            Ok(command) => self.carry_out(device, command, reference, transport).await,
            Err(refusal) => Err(refusal),
        };
        if operation != Operation::Receipt {
            let outcome = answered.as_ref().map_or_else(Refusal::code, |_| "ok");
            self.metrics
                .inbox_operations
                .with_label_values(&[operation.label(), transport, outcome])
                .inc();
        }
        answered.unwrap_or_else(|refusal| {
            frame(&ServerFrame::Error {
                reference,
                error: refusal.code(),
                message: &refusal.message(),
            })
        })
    }

    async fn carry_out(
        &self,
        device: &Device,
        command: Command,
        reference: Option<&str>,
        transport: &'static str,
    ) -> Result<String, Refusal> {
        let (person, app) = (device.person.as_str(), device.app.as_str());
        match command {
            Command::List(query) => {
                let page = within(self.inbox.list(person, app, &query, now_ms()))
                    .await
                    .map_err(|_| Refusal::Unavailable)?
                    .map_err(unavailable)?;
                Ok(frame(&ServerFrame::InboxPage {
                    reference,
                    messages: &page.messages,
                    next_cursor: page.next_cursor.as_deref(),
                    unread: page.unread,
                }))
            }
            Command::Count => {
                let unread = within(self.inbox.unread(person, app, now_ms()))
                    .await
                    .map_err(|_| Refusal::Unavailable)?
                    .map_err(unavailable)?;
                Ok(frame(&ServerFrame::InboxCount { reference, unread }))
            }
            Command::Change(op, select) => {
                let changed = within(self.inbox.change(person, app, op, &select, now_ms()))
                    .await
                    .map_err(|_| Refusal::Unavailable)?
                    .map_err(|error| match error {
                        InboxError::UnknownMessage(_) => Refusal::UnknownMessage(error.to_string()),
                        InboxError::Redis(error) => unavailable(error),
                    })?;
                if changed.changed > 0 {
                    let change = Change::of(app, op, &select, changed.unread);
                    self.notices.announce(person, &change).await;
                }
                Ok(frame(&ServerFrame::InboxDone {
                    reference,
                    changed: changed.changed,
                    unread: changed.unread,
                }))
            }
            Command::Receipt(report) => {
                let reported =
                    self.receipts
                        .report(person, app, &device.device_id, &report, transport);
                within(reported).await.map_err(|_| Refusal::Unavailable)??;
                Ok(frame(&ServerFrame::ReceiptDone { reference }))
            }
        }
    }
}

fn unavailable(error: redis::RedisError) -> Refusal {
    tracing::warn!(%error, "an inbox operation failed");
    Refusal::Unavailable
}

/// A frame's JSON text (the frames here always serialise).
fn frame(frame: &ServerFrame<'_>) -> String {
    serde_json::to_string(frame).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Request {
        crate::frames::parse_request(text.as_bytes()).expect("a request")
    }

    fn refusal(text: &str, keeps_inbox: bool) -> (Option<String>, Refusal) {
        let (reference, command) = read(request(text), keeps_inbox);
        (reference, command.expect_err("refused"))
    }

    #[test]
    fn a_list_is_bounded_and_its_cursor_is_the_inboxes_own() {
        let (reference, command) = read(
            request(
                r#"{"type":"inbox.list","ref":"1","limit":5,"cursor":null,"unread_only":true}"#,
            ),
            true,
        );
        assert_eq!(reference.as_deref(), Some("1"));
        let Ok(Command::List(query)) = command else {
            panic!("a list: {command:?}");
        };
        assert_eq!(
            (query.limit, query.cursor, query.unread_only),
            (5, None, true)
        );
        for bad in [
            r#"{"type":"inbox.list","ref":"2","limit":101}"#,
            r#"{"type":"inbox.list","ref":"2","limit":0}"#,
            r#"{"type":"inbox.list","ref":"2","limit":"5"}"#,
            r#"{"type":"inbox.list","ref":"2","cursor":"not-a-cursor"}"#,
            r#"{"type":"inbox.list","ref":"2","person_id":"someone-else"}"#,
        ] {
            let (reference, refused) = refusal(bad, true);
            assert_eq!(reference.as_deref(), Some("2"), "{bad}");
            assert_eq!(refused.code(), "invalid", "{bad}");
        }
    }

    #[test]
    fn changes_select_exactly_one_way_and_name_no_inbox_but_the_connections() {
        let (_, command) = read(request(r#"{"type":"inbox.delete","up_to":"e1"}"#), true);
        assert!(matches!(
            command,
            Ok(Command::Change(Op::Deleted, Select::UpTo(ref id))) if id == "e1"
        ));
        let (_, command) = read(request(r#"{"type":"inbox.unread","ids":["e1"]}"#), true);
        assert!(matches!(
            command,
            Ok(Command::Change(Op::Unread, Select::Ids(_)))
        ));
        for bad in [
            r#"{"type":"inbox.read"}"#,
            r#"{"type":"inbox.read","all":true,"ids":["e1"]}"#,
            r#"{"type":"inbox.read","all":false}"#,
            r#"{"type":"inbox.read","ids":[]}"#,
            r#"{"type":"inbox.read","all":true,"app":"com.example.other"}"#,
            r#"{"type":"inbox.count","unread_only":true}"#,
        ] {
            assert_eq!(refusal(bad, true).1.code(), "invalid", "{bad}");
        }
    }

    #[test]
    fn an_app_without_an_inbox_refuses_inbox_requests_but_takes_receipts() {
        assert_eq!(
            refusal(r#"{"type":"inbox.count"}"#, false).1,
            Refusal::NoInbox
        );
        let (_, command) = read(
            request(r#"{"type":"receipt","event_id":"e1","kind":"action","action":"yes"}"#),
            false,
        );
        assert!(
            matches!(command, Ok(Command::Receipt(report)) if report.action.as_deref() == Some("yes"))
        );
        assert_eq!(
            refusal(
                r#"{"type":"receipt","event_id":"e1","kind":"opened"}"#,
                false
            )
            .1
            .code(),
            "invalid"
        );
    }

    #[test]
    fn a_bad_ref_is_refused_and_not_echoed() {
        for bad in [
            r#"{"type":"inbox.count","ref":7}"#.to_owned(),
            format!(
                r#"{{"type":"inbox.count","ref":"{}"}}"#,
                "r".repeat(MAX_REF + 1)
            ),
        ] {
            let (reference, refused) = refusal(&bad, true);
            assert_eq!(reference, None);
            assert_eq!(refused.code(), "invalid");
        }
    }

    #[test]
    fn only_the_connections_apps_changes_are_forwarded() {
        let change = Change::of("com.example.app", Op::Read, &Select::All, 0);
        let payload = serde_json::to_vec(&change).expect("json");
        let frame = change_frame(&payload, "com.example.app").expect("forwarded");
        let frame: Value = serde_json::from_str(&frame).expect("json");
        assert_eq!(
            frame,
            serde_json::json!({"type": "inbox.changed", "op": "read", "all": true, "unread": 0})
        );
        assert_eq!(change_frame(&payload, "com.example.other"), None);
        assert_eq!(change_frame(b"not json", "com.example.app"), None);
    }
}
