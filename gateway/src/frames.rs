//! The frames of the connection protocol (`docs/inapp.md`), as JSON: what a client sends
//! ([`ClientFrame`]) and what the gateway sends ([`ServerFrame`]), and the reasons a
//! connection is closed ([`Close`]). Transport-neutral: the WebSocket transport carries
//! each frame as one text frame, MQTT as one PUBLISH's payload.
//!
//! | a client frame's text | [`parse`] |
//! |---|---|
//! | not a JSON object with a string `type` | [`Close::Protocol`] |
//! | `type` one of the inbox operations or `receipt` ([`Operation`]) | [`ClientFrame::Request`]: its fields are checked by the operation, which answers a refusal with an `error` frame |
//! | `hello`, `ack`, `ping` with exactly their fields | that frame |
//! | anything else (an unknown `type`, a missing or extra field) | [`Close::Protocol`] |

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A frame from the client.
#[derive(Debug)]
pub enum ClientFrame {
    /// `hello`, `ack` or `ping`.
    Control(Control),
    /// An inbox operation or a receipt, answered on the connection ([`crate::inbox`]).
    Request(Request),
}

/// An inbox operation or a receipt, as the client sent it: its fields are checked when it
/// is carried out, so a bad one is refused with an `error` frame instead of closing.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// What it asks.
    pub operation: Operation,
    /// Its fields, `type` removed.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// The operations a client may ask over its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `inbox.list`: a page of the inbox.
    List,
    /// `inbox.count`: the unread count.
    Count,
    /// `inbox.read`: marks messages read.
    Read,
    /// `inbox.unread`: marks messages unread.
    Unread,
    /// `inbox.delete`: deletes messages.
    Delete,
    /// `receipt`: a receipt or an action for an event the device got.
    Receipt,
}

impl Operation {
    /// The operation a frame's `type` names, if any.
    pub fn of(kind: &str) -> Option<Self> {
        Some(match kind {
            "inbox.list" => Operation::List,
            "inbox.count" => Operation::Count,
            "inbox.read" => Operation::Read,
            "inbox.unread" => Operation::Unread,
            "inbox.delete" => Operation::Delete,
            "receipt" => Operation::Receipt,
            _ => return None,
        })
    }

    /// The `op` label of `pushline_inbox_operations_total` (`receipt` for receipts, which
    /// are counted in `pushline_receipts_total` instead).
    pub fn label(self) -> &'static str {
        match self {
            Operation::List => "list",
            Operation::Count => "count",
            Operation::Read => "read",
            Operation::Unread => "unread",
            Operation::Delete => "delete",
            Operation::Receipt => "receipt",
        }
    }
}

/// The frames that keep a connection: who it is, what was processed, whether it lives.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Control {
    /// The first frame: who is connecting, from which device of which app.
    Hello {
        /// The bearer credential the app uses with the device API.
        credential: String,
        /// The app (its in-app registration's `app`).
        app: String,
        /// The device (its in-app registration's `device_id`).
        device_id: String,
    },
    /// Every message up to and including `seq` is processed.
    Ack {
        /// The highest sequence processed.
        seq: u64,
    },
    /// Answered with [`ServerFrame::Pong`].
    Ping,
}

/// A frame to the client.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// The hello was accepted.
    Ready {
        /// The person the connection is.
        person_id: &'a str,
        /// Seconds between the gateway's pings.
        heartbeat_secs: u64,
    },
    /// An in-app message.
    Message(Message<'a>),
    /// The answer to [`Control::Ping`].
    Pong,
    /// The answer to `inbox.list`.
    #[serde(rename = "inbox.page")]
    InboxPage {
        /// The request's `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        /// The messages, newest first, each as kept.
        messages: &'a [Box<RawValue>],
        /// The next page's cursor, `null` on the last.
        next_cursor: Option<&'a str>,
        /// The inbox's unread count.
        unread: u64,
    },
    /// The answer to `inbox.count`.
    #[serde(rename = "inbox.count")]
    InboxCount {
        /// The request's `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        /// The inbox's unread count.
        unread: u64,
    },
    /// The answer to `inbox.read`, `inbox.unread` and `inbox.delete`.
    #[serde(rename = "inbox.done")]
    InboxDone {
        /// The request's `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        /// How many messages changed.
        changed: u64,
        /// The inbox's unread count after it.
        unread: u64,
    },
    /// The answer to `receipt`.
    #[serde(rename = "receipt.done")]
    ReceiptDone {
        /// The request's `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    /// A refused request; the connection stays open.
    Error {
        /// The request's `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        /// `invalid`, `no_inbox`, `unknown_message` or `unavailable`.
        error: &'static str,
        /// Why, for people.
        message: &'a str,
    },
}

/// An in-app message as the app receives it.
#[derive(Debug, Serialize)]
pub struct Message<'a> {
    /// Stable across redeliveries: `<event id>:<token tag>`.
    pub id: &'a str,
    /// The message's sequence in `INAPP`; grows for a person on a device.
    pub seq: u64,
    /// The event it belongs to.
    pub event_id: &'a str,
    /// The event's class.
    pub class: &'a str,
    /// After this the message is not delivered any more.
    pub deadline_ms: u64,
    /// How the app shows it.
    pub category: inapp::spec::Category,
    /// A prompt's buttons.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub actions: &'a [inapp::spec::Action],
    /// What the app renders (or `{"jwe":"…"}`).
    pub payload: &'a RawValue,
}

/// Why the gateway closes a connection: its close code and reason (`docs/inapp.md`,
/// "Closing codes"), and its metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The credential is refused.
    Unauthorized,
    /// No in-app registration of that app and device for this person, or an app this
    /// gateway does not serve.
    Forbidden,
    /// A frame that breaks the protocol.
    Protocol,
    /// A frame over `limits.max_frame_bytes`.
    TooLarge,
    /// Over a connection limit.
    TooManyConnections,
    /// The send queue passed `limits.max_send_queue_bytes`.
    SlowConsumer,
    /// Another person became the device's active user.
    Replaced,
    /// Nothing received for `limits.idle_timeout_secs`.
    Idle,
    /// The gateway is stopping.
    GoingAway,
    /// The gateway could not reach what it needs (NATS, Redis) for this connection.
    Unavailable,
}

impl Close {
    /// The WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            Close::Unauthorized => 4001,
            Close::Forbidden => 4003,
            Close::Protocol => 4008,
            Close::TooLarge => 1009,
            Close::TooManyConnections => 4009,
            Close::SlowConsumer => 4010,
            Close::Replaced => 4011,
            Close::Idle => 4012,
            Close::GoingAway => 1001,
            Close::Unavailable => 1011,
        }
    }

    /// The close reason sent, and the metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Close::Unauthorized => "unauthorized",
            Close::Forbidden => "forbidden",
            Close::Protocol => "protocol",
            Close::TooLarge => "too_large",
            Close::TooManyConnections => "too_many_connections",
            Close::SlowConsumer => "slow_consumer",
            Close::Replaced => "replaced",
            Close::Idle => "idle",
            Close::GoingAway => "going_away",
            Close::Unavailable => "unavailable",
        }
    }
}

/// The `message` frame of the in-app job stored at `seq` in `INAPP`, as JSON text: what
/// every transport delivers.
pub fn message_text(
    seq: u64,
    job: &pipeline::contract::PushJob<inapp::spec::InAppPart>,
) -> Result<String, Close> {
    let frame = ServerFrame::Message(Message {
        id: &registry::fanout::job_id(&job.event_id, &job.token),
        seq,
        event_id: &job.event_id,
        class: job.class.as_str(),
        deadline_ms: job.deadline_ms,
        category: job.part.category,
        actions: &job.part.actions,
        payload: &job.part.payload,
    });
    serde_json::to_string(&frame).map_err(|_| Close::Unavailable)
}

/// A client frame from its text, or [`Close::Protocol`] (the module's table).
pub fn parse(text: &str) -> Result<ClientFrame, Close> {
    let serde_json::Value::Object(mut fields) =
        serde_json::from_str(text).map_err(|_| Close::Protocol)?
    else {
        return Err(Close::Protocol);
    };
    let kind = fields.get("type").and_then(serde_json::Value::as_str);
    if let Some(operation) = kind.and_then(Operation::of) {
        fields.remove("type");
        return Ok(ClientFrame::Request(Request { operation, fields }));
    }
    serde_json::from_value(serde_json::Value::Object(fields))
        .map(ClientFrame::Control)
        .map_err(|_| Close::Protocol)
}

/// A request from its text (an MQTT inbox PUBLISH's payload): an inbox operation or a
/// receipt, anything else [`Close::Protocol`].
pub fn parse_request(text: &[u8]) -> Result<Request, Close> {
    let text = std::str::from_utf8(text).map_err(|_| Close::Protocol)?;
    match parse(text)? {
        ClientFrame::Request(request) => Ok(request),
        ClientFrame::Control(_) => Err(Close::Protocol),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_are_read_strictly() {
        assert!(matches!(
            parse(r#"{"type":"ack","seq":7}"#),
            Ok(ClientFrame::Control(Control::Ack { seq: 7 }))
        ));
        assert!(matches!(
            parse(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Control(Control::Ping))
        ));
        assert!(matches!(
            parse(r#"{"type":"hello","credential":"c","app":"a","device_id":"d"}"#),
            Ok(ClientFrame::Control(Control::Hello { .. }))
        ));
        for bad in [
            "",
            "[]",
            r##"{"type":"subscribe","topic":"#"}"##,
            r#"{"type":"ack"}"#,
            r#"{"type":"ack","seq":-1}"#,
            r#"{"type":"ack","seq":1,"extra":true}"#,
            r#"{"type":"inbox.purge"}"#,
            r#"{"type":7}"#,
            r#"{"ref":"1"}"#,
        ] {
            assert_eq!(parse(bad).err(), Some(Close::Protocol), "{bad}");
        }
    }

    #[test]
    fn inbox_requests_are_taken_whatever_their_fields_and_checked_later() {
        let Ok(ClientFrame::Request(request)) =
            parse(r#"{"type":"inbox.list","ref":"1","limit":"many","odd":true}"#)
        else {
            panic!("an inbox request");
        };
        assert_eq!(request.operation, Operation::List);
        assert!(!request.fields.contains_key("type"));
        assert_eq!(request.fields["limit"], "many");
        for (kind, operation) in [
            ("inbox.count", Operation::Count),
            ("inbox.read", Operation::Read),
            ("inbox.unread", Operation::Unread),
            ("inbox.delete", Operation::Delete),
            ("receipt", Operation::Receipt),
        ] {
            let text = format!(r#"{{"type":"{kind}"}}"#);
            assert_eq!(
                parse_request(text.as_bytes()).map(|r| r.operation),
                Ok(operation)
            );
        }
        for bad in [&b"{\"type\":\"ping\"}"[..], b"\xff", b"[1]", b"{\"seq\":1}"] {
            assert_eq!(parse_request(bad).err(), Some(Close::Protocol));
        }
    }

    #[test]
    fn an_inbox_page_carries_its_messages_as_kept() {
        let kept = vec![RawValue::from_string(r#"{"id":"e1","n":1.50}"#.into()).expect("raw")];
        let frame = ServerFrame::InboxPage {
            reference: Some("7"),
            messages: &kept,
            next_cursor: None,
            unread: 1,
        };
        assert_eq!(
            serde_json::to_string(&frame).expect("json"),
            r#"{"type":"inbox.page","ref":"7","messages":[{"id":"e1","n":1.50}],"next_cursor":null,"unread":1}"#
        );
        let error = ServerFrame::Error {
            reference: None,
            error: "invalid",
            message: "no",
        };
        assert_eq!(
            serde_json::to_string(&error).expect("json"),
            r#"{"type":"error","error":"invalid","message":"no"}"#
        );
    }

    #[test]
    fn a_message_frame_carries_the_payload_as_it_came() {
        let payload = RawValue::from_string(r#"{"b": 1,  "a":2}"#.into()).expect("raw");
        let frame = ServerFrame::Message(Message {
            id: "e:t",
            seq: 3,
            event_id: "e",
            class: "alert",
            deadline_ms: 9,
            category: inapp::spec::Category::Message,
            actions: &[],
            payload: &payload,
        });
        let text = serde_json::to_string(&frame).expect("json");
        assert!(
            text.starts_with(r#"{"type":"message","id":"e:t","seq":3"#),
            "{text}"
        );
        assert!(text.ends_with(r#""payload":{"b": 1,  "a":2}}"#), "{text}");
        assert!(!text.contains("actions"));
    }
}
