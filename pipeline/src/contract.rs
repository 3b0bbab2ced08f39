//! The wire contract between services: every message that crosses NATS.
//!
//! All messages are JSON objects carrying `"v": 2`. Each provider's part of an event is
//! kept as a [`RawValue`] from the webhook body to the provider's crate, so payloads reach
//! the device byte for byte: key order, number spelling and whitespace included. Nothing
//! here names a provider: they are listed once, in the `providers` crate.
//!
//! Times are integer milliseconds since the Unix epoch (`*_ms` fields): cheap to compare
//! on the hot path and unambiguous across languages.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The contract version every message carries in its `v` field.
///
/// Version 2 carries each provider's part by provider name (`Event::parts`,
/// `PushJob::part`) where version 1 had one field per provider; [`upgrade_v1`] reads a
/// version-1 message in flight during an upgrade.
pub const VERSION: u8 = 2;

/// A message a stage consumes: it names its type and carries its contract version, so
/// [`crate::worker::decode`] can dead-letter a malformed one or one of another version.
pub trait Message: serde::de::DeserializeOwned {
    /// The type's name in dead letters (`not a PushJob: …`).
    const NAME: &'static str;
    /// Its contract version (`v`).
    fn version(&self) -> u8;
}

macro_rules! message {
    ($($type:ident),*) => {$(
        impl Message for $type {
            const NAME: &'static str = stringify!($type);
            fn version(&self) -> u8 {
                self.v
            }
        }
    )*};
}

message!(
    Event,
    CallbackJob,
    TokenPruned,
    Feedback,
    Fallback,
    MessageAction
);

impl<P: serde::de::DeserializeOwned> Message for PushJob<P> {
    const NAME: &'static str = "PushJob";
    fn version(&self) -> u8 {
        self.v
    }
}

/// The NATS header carrying the producer's trace id (Webex `TrackingID`) on events, jobs
/// and feedback; the worker puts it on the log span of every message it handles.
pub const TRACE_HEADER: &str = "Pushline-Trace-Id";

/// How urgent an event is; decides which devices get it and how providers treat it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// A real incoming call: highest priority, to the devices each provider rings.
    Call,
    /// A user-visible notification: devices registered on the `alert` channel.
    Alert,
    /// A silent/background update: devices registered on the `alert` channel, low priority.
    Background,
}

impl Class {
    /// The label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Call => "call",
            Class::Alert => "alert",
            Class::Background => "background",
        }
    }
}

/// How a device registered to hear events: `voip` devices ring for calls only, `alert`
/// devices get notifications (and, for providers without a separate call channel, calls).
/// Each provider decides what a channel gets ([`crate::provider::Spec::wants`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Incoming calls (APNs PushKit).
    Voip,
    /// Visible notifications and background updates.
    Alert,
}

impl Channel {
    /// The label used in the API and in Redis.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Voip => "voip",
            Channel::Alert => "alert",
        }
    }
}

/// Each provider's part of an event, by provider name (`apns`, `fcm`, …): that provider's
/// raw JSON, which only the provider's own crate reads ([`crate::provider::Spec`]).
pub type Parts = std::collections::BTreeMap<String, Box<RawValue>>;

/// A normalised producer event, published by ingest to `EVENTS`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// Contract version, always [`VERSION`].
    pub v: u8,
    /// De-duplication key (also the `Nats-Msg-Id` header).
    pub id: String,
    /// Producer, e.g. `webex`.
    pub source: String,
    /// Producer resource, e.g. `telephony_push`.
    pub resource: String,
    /// Producer event, e.g. `updated`.
    pub event: String,
    /// The person whose devices receive the push.
    pub person_id: String,
    /// Urgency class.
    pub class: Class,
    /// When ingest received the webhook.
    pub received_at_ms: u64,
    /// After this instant the event is worthless and must not be delivered.
    pub deadline_ms: u64,
    /// What to send, per provider; a provider without a part gets nothing.
    pub parts: Parts,
    /// The producer's trace id (e.g. Webex `TrackingID`), for correlating logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The producer asked for every device's payload to be encrypted with the device's
    /// key (see [`crate::jwe`]); devices without a key get nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypt: bool,
}

/// Longest person id, in characters.
pub const MAX_PERSON_ID: usize = 512;

/// The one rule for person ids, wherever one enters (webhooks, `/v1/notify`, the device
/// API): 1 to [`MAX_PERSON_ID`] characters, no control characters, no `{` or `}` (they
/// would break the Redis Cluster hash tag of the person's keys). The message names
/// `field`.
pub fn check_person_id(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty()
        || value.chars().count() > MAX_PERSON_ID
        || value
            .chars()
            .any(|c| c.is_control() || c == '{' || c == '}')
    {
        return Err(format!(
            "`{field}` must be 1 to {MAX_PERSON_ID} characters, without control characters or braces"
        ));
    }
    Ok(())
}

/// Which provider environment a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    /// Production.
    #[default]
    Production,
    /// The provider's sandbox (APNs development builds).
    Sandbox,
}

impl Environment {
    /// The label used in subjects and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Production => "production",
            Environment::Sandbox => "sandbox",
        }
    }
}

/// One push to one device, published by the registry to its provider's stream
/// (`PUSH_<PROVIDER>`).
///
/// It carries everything the dispatcher needs, so dispatchers never read Redis. `P` is the
/// provider's part: raw JSON wherever the provider is not known (the registry), the
/// provider's own type in its dispatcher, which decodes job and part in one pass.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushJob<P = Box<RawValue>> {
    /// Contract version, always [`VERSION`].
    pub v: u8,
    /// The event this push belongs to.
    pub event_id: String,
    /// The provider device token (a Web Push subscription's endpoint).
    pub token: String,
    /// What else the provider needs to reach the device (a Web Push subscription's
    /// keys), as it was registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Box<RawValue>>,
    /// Provider name.
    pub platform: String,
    /// The app: APNs bundle id (topic without `.voip`), FCM project id, Web Push VAPID key set.
    pub app: String,
    /// Provider environment.
    pub environment: Environment,
    /// Urgency class of the event.
    pub class: Class,
    /// When ingest received the webhook (for end-to-end latency).
    pub received_at_ms: u64,
    /// Deadline after which the push is dropped.
    pub deadline_ms: u64,
    /// The event's part for this provider.
    pub part: P,
    /// The producer's trace id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// A producer's callback still to be sent: ingest publishes one to `CALLBACKS` for each
/// event of a producer with a callback URL; its worker sends the event's outcome once it
/// is settled (or its deadline has passed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallbackJob {
    /// Contract version, always [`VERSION`].
    pub v: u8,
    /// The event.
    pub event_id: String,
    /// The producer (its `[[producers.keys]]` name).
    pub producer: String,
    /// The event's deadline, ms.
    pub deadline_ms: u64,
}

/// An app's user answered a message (a button, a prompt): published to `CALLBACKS`
/// (`callbacks.action.<producer>`) by whoever took the report (the registry's receipt API
/// or a gateway), so ingest's `callbacks` worker POSTs it to the producer who sent the
/// event as a `message.action` callback.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MessageAction {
    /// Contract version, always [`VERSION`].
    pub v: u8,
    /// The event answered.
    pub event_id: String,
    /// The producer who sent it.
    pub producer: String,
    /// The person who answered, as the producer named them.
    pub person_id: String,
    /// The device's token tag.
    pub device: String,
    /// The app.
    pub app: String,
    /// The action's id.
    pub action: String,
    /// The user's short reply, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// When the app reported it, ms.
    pub at_ms: u64,
}

impl MessageAction {
    /// The notice's id (the callback's `webhook-id` and the stream's de-duplication id):
    /// one answer of one device, however often the app reports it.
    pub fn notice_id(&self) -> String {
        format!("action:{}:{}:{}", self.event_id, self.device, self.action)
    }
}

/// A token the registry pruned, published to `CALLBACKS` (`callbacks.pruned.<app>`) so the
/// app's backend hears of it: ingest's `callbacks` worker POSTs it to the producer whose
/// `apps` name the app.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenPruned {
    /// Contract version, always [`VERSION`].
    pub v: u8,
    /// Provider that rejected the token.
    pub platform: String,
    /// App (bundle id / project) the token belonged to.
    pub app: String,
    /// The pruned token.
    pub token: String,
    /// The provider's reason.
    pub reason: String,
    /// From when the provider considers the token invalid, ms.
    pub invalid_since_ms: u64,
    /// When the registry removed it, ms.
    pub pruned_at_ms: u64,
    /// The persons it was removed from (canonical ids).
    pub person_ids: Vec<String>,
    /// The event whose push got the verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

impl TokenPruned {
    /// A stable id for this notice (callback `webhook-id`, `Nats-Msg-Id`): the same
    /// verdict on the same token is one notice.
    pub fn notice_id(&self) -> String {
        let tag = crate::telemetry::token_tag(&self.token);
        format!("pruned-{tag}-{}", self.invalid_since_ms)
    }
}

/// A provider's verdict that a token is no longer valid, published by dispatchers to
/// `FEEDBACK` and consumed by the registry, which prunes the token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Feedback {
    /// Contract version, always [`VERSION`].
    pub v: u8,
    /// Provider that rejected the token.
    pub platform: String,
    /// The rejected token.
    pub token: String,
    /// App (bundle id / project) the push was for.
    pub app: String,
    /// The provider's reason (`Unregistered`, `BadDeviceToken`, `UNREGISTERED`, …).
    pub reason: String,
    /// The provider's own time of invalidation (APNs 410 `timestamp`), when given.
    /// A token re-registered after it is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_timestamp_ms: Option<u64>,
    /// When the dispatcher saw the answer.
    pub observed_at_ms: u64,
    /// The event whose push got the verdict, for its delivery status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

impl Feedback {
    /// The instant after which a registration is newer than this verdict.
    pub fn invalid_since_ms(&self) -> u64 {
        self.provider_timestamp_ms.unwrap_or(self.observed_at_ms)
    }
}

/// The pushes of one device held back while its app, connected and active, may
/// acknowledge the in-app message of the same event: published by the fan-out to
/// `FALLBACK`, consumed by the registry, which releases them when the app has not
/// acknowledged `seq` by `ack_by_ms`, and drops them when it has (`docs/inapp.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fallback {
    /// Contract version, always [`VERSION`].
    pub v: u8,
    /// The event.
    pub event_id: String,
    /// The person.
    pub person_id: String,
    /// The device's in-app token.
    pub token: String,
    /// The in-app app.
    pub app: String,
    /// The in-app message's `INAPP` sequence: acknowledged once the device's cursor
    /// reaches it.
    pub seq: u64,
    /// The end of the acknowledgement window.
    pub ack_by_ms: u64,
    /// The event's deadline: past it nothing is released.
    pub deadline_ms: u64,
    /// The held push jobs, as the fan-out built them (encrypted where they had to be).
    pub jobs: Vec<PushJob>,
    /// The producer's trace id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// A message a stage gave up on, published to `DEAD` before the original is terminated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Contract version, always [`VERSION`].
    pub v: u8,
    /// The stage that gave up (`fanout`, `prune`, `apns`, `fcm`).
    pub stage: String,
    /// Bounded, machine-readable reason (also the metric label).
    pub reason: String,
    /// How many times the message was delivered to the stage.
    pub attempts: u64,
    /// The first error seen, when the stage kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// The error that ended it.
    pub last_error: String,
    /// When it was dead-lettered.
    pub dead_at_ms: u64,
    /// The subject the original message was published on (replay publishes it there).
    pub subject: String,
    /// The original message: raw JSON when it was JSON, else absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Box<RawValue>>,
    /// The original message as base64 when it was not valid JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_base64: Option<String>,
}

/// The providers version 1 of the contract had a field each for.
const V1_PROVIDERS: [&str; 2] = ["apns", "fcm"];

/// A version-1 message (published by a service of an earlier release, still in a stream
/// during an upgrade) rewritten as version 2, or `None` when `raw` is not one. Version 1
/// had a field per provider: an event's `apns` and `fcm` move into `parts`, a job's
/// provider field becomes its `part`; every other message only changes its `v`.
pub fn upgrade_v1(raw: &[u8]) -> Option<Vec<u8>> {
    let mut map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(raw).ok()?;
    if map.get("v")?.as_u64()? != 1 {
        return None;
    }
    map.insert("v".into(), VERSION.into());
    if map.contains_key("class") {
        match map
            .get("platform")
            .and_then(|p| p.as_str())
            .map(str::to_owned)
        {
            Some(platform) => {
                let part = map.remove(&platform)?;
                for other in V1_PROVIDERS {
                    map.remove(other);
                }
                map.insert("part".into(), part);
            }
            None => {
                let parts: serde_json::Map<_, _> = V1_PROVIDERS
                    .iter()
                    .filter_map(|name| Some(((*name).to_owned(), map.remove(*name)?)))
                    .collect();
                map.insert("parts".into(), parts.into());
            }
        }
    }
    serde_json::to_vec(&map).ok()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_payload_survives_a_round_trip_byte_for_byte() {
        let payload = r#"{"z":1, "a":1.50,"nested":{"b":"x","a":[3,2,1]}}"#;
        let json = format!(
            r#"{{"v":2,"id":"e1","source":"webex","resource":"telephony_push","event":"updated","person_id":"p","class":"call","received_at_ms":1,"deadline_ms":2,"parts":{{"apns":{{"payload":{payload},"push_type":"voip","priority":10}}}}}}"#
        );
        let event: Event = serde_json::from_str(&json).expect("parse");
        let again = serde_json::to_string(&event).expect("serialise");
        let event: Event = serde_json::from_str(&again).expect("parse again");
        let apns = event.parts.get("apns").expect("apns").get();
        assert!(apns.contains(payload), "{apns}");
    }

    #[test]
    fn version_1_messages_are_read_as_version_2() {
        let event = r#"{"v":1,"id":"e1","source":"webex","resource":"r","event":"updated","person_id":"p","class":"call","received_at_ms":1,"deadline_ms":2,"apns":{"payload":{"aps":{}},"push_type":"voip","priority":10},"fcm":{"data":{"a":"1"},"priority":"high"}}"#;
        let upgraded = upgrade_v1(event.as_bytes()).expect("an event");
        let event: Event = serde_json::from_slice(&upgraded).expect("v2 event");
        assert_eq!(event.v, VERSION);
        assert_eq!(
            event.parts.keys().collect::<Vec<_>>(),
            ["apns", "fcm"],
            "both parts kept"
        );
        assert!(event.parts["fcm"].get().contains(r#""data":{"a":"1"}"#));

        let job = r#"{"v":1,"event_id":"e1","token":"t","platform":"fcm","app":"a","environment":"production","class":"call","received_at_ms":1,"deadline_ms":2,"fcm":{"data":{},"priority":"high"}}"#;
        let job: PushJob =
            serde_json::from_slice(&upgrade_v1(job.as_bytes()).expect("a job")).expect("v2 job");
        assert_eq!(job.platform, "fcm");
        assert!(job.part.get().contains(r#""priority":"high""#));

        let feedback = r#"{"v":1,"platform":"apns","token":"t","app":"a","reason":"Unregistered","observed_at_ms":1}"#;
        let feedback: Feedback =
            serde_json::from_slice(&upgrade_v1(feedback.as_bytes()).expect("feedback"))
                .expect("v2 feedback");
        assert_eq!((feedback.v, feedback.platform.as_str()), (VERSION, "apns"));

        assert!(upgrade_v1(br#"{"v":2}"#).is_none(), "already version 2");
        assert!(upgrade_v1(b"not json").is_none());
    }

    #[test]
    fn person_ids_follow_one_rule() {
        assert!(check_person_id("p", "Y2lzY29zcGFyazovL3VzL1BFT1BMRS8x").is_ok());
        assert!(check_person_id("p", "ciscospark://us/PEOPLE/1").is_ok());
        assert!(
            check_person_id("p", &"é".repeat(512)).is_ok(),
            "characters, not bytes"
        );
        assert!(check_person_id("p", &"x".repeat(513)).is_err());
        for bad in ["", "a{b", "a}b", "a\nb", "a\u{85}b"] {
            let error = check_person_id("person_ids[0]", bad).expect_err(bad);
            assert!(error.starts_with("`person_ids[0]`"), "{error}");
        }
    }

    #[test]
    fn feedback_prefers_the_provider_timestamp() {
        let mut fb = Feedback {
            v: VERSION,
            platform: "apns".into(),
            token: "t".into(),
            app: "a".into(),
            reason: "Unregistered".into(),
            provider_timestamp_ms: Some(10),
            observed_at_ms: 20,
            event_id: None,
        };
        assert_eq!(fb.invalid_since_ms(), 10);
        fb.provider_timestamp_ms = None;
        assert_eq!(fb.invalid_since_ms(), 20);
    }
}
