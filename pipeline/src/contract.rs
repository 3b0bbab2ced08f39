//! The wire contract between services: every message that crosses NATS.
//!
//! All messages are JSON objects carrying `"v": 1`. Provider payloads (`apns.payload`,
//! `fcm.data`) are kept as [`RawValue`]s from the webhook body to the provider request, so
//! they reach the device byte for byte: key order, number spelling and whitespace included.
//!
//! Times are integer milliseconds since the Unix epoch (`*_ms` fields): cheap to compare
//! on the hot path and unambiguous across languages.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The contract version every message carries in its `v` field.
pub const VERSION: u8 = 1;

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

message!(Event, PushJob, CallbackJob, TokenPruned, Feedback);

/// The NATS header carrying the producer's trace id (Webex `TrackingID`) on events, jobs
/// and feedback; the worker puts it on the log span of every message it handles.
pub const TRACE_HEADER: &str = "Pushline-Trace-Id";

/// How urgent an event is; decides which devices get it and how providers treat it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// A real incoming call: APNs VoIP devices and FCM devices, highest priority.
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

/// The APNs `apns-push-type` of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApnsPushType {
    /// PushKit VoIP push; must result in a CallKit call on the device.
    Voip,
    /// A visible alert.
    Alert,
    /// A silent content-available push.
    Background,
}

impl ApnsPushType {
    /// The header value APNs expects.
    pub fn as_str(self) -> &'static str {
        match self {
            ApnsPushType::Voip => "voip",
            ApnsPushType::Alert => "alert",
            ApnsPushType::Background => "background",
        }
    }
}

/// The APNs part of an event: what to send to iOS devices.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApnsPart {
    /// The exact JSON body for APNs, carried unaltered.
    pub payload: Box<RawValue>,
    /// `apns-push-type`.
    pub push_type: ApnsPushType,
    /// `apns-priority` (10 immediate, 5 power-considerate, 1 lowest).
    pub priority: u8,
    /// `apns-collapse-id`, when the producer gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collapse_id: Option<String>,
}

/// FCM Android message priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FcmPriority {
    /// `HIGH`: wakes the device; used for calls.
    High,
    /// `NORMAL`.
    Normal,
}

/// The FCM part of an event: the data map for Android devices.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FcmPart {
    /// The `data` object, carried unaltered as raw JSON.
    pub data: Box<RawValue>,
    /// Android delivery priority.
    pub priority: FcmPriority,
    /// `collapse_key`, when the producer gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collapse_key: Option<String>,
}

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
    /// What to send to iOS devices, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apns: Option<ApnsPart>,
    /// What to send to Android devices, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fcm: Option<FcmPart>,
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

/// Largest APNs body for a VoIP push, bytes.
pub const APNS_VOIP_MAX_BYTES: usize = 5_120;
/// Largest APNs body for every other push, bytes.
pub const APNS_MAX_BYTES: usize = 4_096;
/// Largest FCM `data` map, bytes (as pushline counts it: its JSON).
pub const FCM_DATA_MAX_BYTES: usize = 4_096;

/// The APNs body limit for `push_type`.
pub fn apns_max_bytes(push_type: ApnsPushType) -> usize {
    if push_type == ApnsPushType::Voip {
        APNS_VOIP_MAX_BYTES
    } else {
        APNS_MAX_BYTES
    }
}

/// Push provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// Apple Push Notification service.
    Apns,
    /// Firebase Cloud Messaging.
    Fcm,
}

impl Platform {
    /// The label used in metrics, subjects and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Apns => "apns",
            Platform::Fcm => "fcm",
        }
    }
}

/// Which provider environment a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    /// Production APNs / FCM.
    #[default]
    Production,
    /// APNs sandbox (development builds).
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

/// One push to one device, published by the registry to `PUSH_APNS` or `PUSH_FCM`.
///
/// It carries everything the dispatcher needs, so dispatchers never read Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushJob {
    /// Contract version, always [`VERSION`].
    pub v: u8,
    /// The event this push belongs to.
    pub event_id: String,
    /// The provider device token.
    pub token: String,
    /// Provider.
    pub platform: Platform,
    /// APNs bundle id (topic without `.voip`) or FCM project id.
    pub app: String,
    /// Provider environment.
    pub environment: Environment,
    /// Urgency class of the event.
    pub class: Class,
    /// When ingest received the webhook (for end-to-end latency).
    pub received_at_ms: u64,
    /// Deadline after which the push is dropped.
    pub deadline_ms: u64,
    /// Present when `platform` is `apns`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apns: Option<ApnsPart>,
    /// Present when `platform` is `fcm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fcm: Option<FcmPart>,
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

/// A token the registry pruned, published to `CALLBACKS` (`callbacks.pruned.<app>`) so the
/// app's backend hears of it: ingest's `callbacks` worker POSTs it to the producer whose
/// `apps` name the app.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenPruned {
    /// Contract version, always [`VERSION`].
    pub v: u8,
    /// Provider that rejected the token.
    pub platform: Platform,
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
    pub platform: Platform,
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
            r#"{{"v":1,"id":"e1","source":"webex","resource":"telephony_push","event":"updated","person_id":"p","class":"call","received_at_ms":1,"deadline_ms":2,"apns":{{"payload":{payload},"push_type":"voip","priority":10}}}}"#
        );
        let event: Event = serde_json::from_str(&json).expect("parse");
        let again = serde_json::to_string(&event).expect("serialise");
        let event: Event = serde_json::from_str(&again).expect("parse again");
        assert_eq!(event.apns.expect("apns").payload.get(), payload);
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
            platform: Platform::Apns,
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
