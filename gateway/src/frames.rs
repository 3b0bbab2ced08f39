//! The frames of the connection protocol (`docs/inapp.md`), as JSON: what a client sends
//! ([`ClientFrame`]) and what the gateway sends ([`ServerFrame`]), and the reasons a
//! connection is closed ([`Close`]). Transport-neutral: the WebSocket transport carries
//! each frame as one text frame.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A frame from the client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
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
    /// The answer to [`ClientFrame::Ping`].
    Pong,
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

/// A client frame from its text, or [`Close::Protocol`].
pub fn parse(text: &str) -> Result<ClientFrame, Close> {
    serde_json::from_str(text).map_err(|_| Close::Protocol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_are_read_strictly() {
        assert!(matches!(
            parse(r#"{"type":"ack","seq":7}"#),
            Ok(ClientFrame::Ack { seq: 7 })
        ));
        assert!(matches!(parse(r#"{"type":"ping"}"#), Ok(ClientFrame::Ping)));
        assert!(matches!(
            parse(r#"{"type":"hello","credential":"c","app":"a","device_id":"d"}"#),
            Ok(ClientFrame::Hello { .. })
        ));
        for bad in [
            "",
            "[]",
            r##"{"type":"subscribe","topic":"#"}"##,
            r#"{"type":"ack"}"#,
            r#"{"type":"ack","seq":-1}"#,
            r#"{"type":"ack","seq":1,"extra":true}"#,
        ] {
            assert_eq!(parse(bad).err(), Some(Close::Protocol), "{bad}");
        }
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
