//! What the rest of pushline knows of APNs ([`pipeline::provider::Spec`]): tokens are hex,
//! calls ring `voip` devices, the part is [`ApnsPart`], and an encrypted payload keeps its
//! `aps` in clear for iOS.

use pipeline::contract::{Channel, Class, Environment};
use pipeline::jwe::{self, ContentKey};
use pipeline::provider::{Skip, Spec};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The provider's name.
pub const NAME: &str = "apns";

/// Largest APNs body for a VoIP push, bytes.
pub const APNS_VOIP_MAX_BYTES: usize = 5_120;
/// Largest APNs body for every other push, bytes.
pub const APNS_MAX_BYTES: usize = 4_096;
/// Longest `apns-collapse-id`, bytes.
pub const MAX_COLLAPSE_ID: usize = 64;
/// The field an encrypted payload keeps in clear.
const CLEAR: Option<&str> = Some("aps");

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

    /// The body limit for this push type.
    pub fn max_bytes(self) -> usize {
        if self == ApnsPushType::Voip {
            APNS_VOIP_MAX_BYTES
        } else {
            APNS_MAX_BYTES
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

/// A producer's `apns` request: the payload, with what it leaves out defaulted by class.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApnsRequest<'a> {
    #[serde(borrow)]
    payload: &'a RawValue,
    #[serde(default)]
    push_type: Option<ApnsPushType>,
    #[serde(default)]
    priority: Option<u8>,
    #[serde(default)]
    collapse_id: Option<String>,
}

/// APNs, as the registry and ingest know it.
#[derive(Debug)]
pub struct Apns;

/// The one [`Apns`].
pub static SPEC: Apns = Apns;

impl Spec for Apns {
    fn name(&self) -> &'static str {
        NAME
    }

    fn environments(&self) -> &'static [Environment] {
        &[Environment::Production, Environment::Sandbox]
    }

    fn default_channel(&self) -> Channel {
        Channel::Voip
    }

    /// Calls ring PushKit (`voip`) devices; everything else goes to `alert` devices.
    fn wants(&self, class: Class, channel: Channel) -> bool {
        (class == Class::Call) == (channel == Channel::Voip)
    }

    /// An even number (64 today, at most 200) of hex digits.
    fn check_token(&self, field: &str, token: &str) -> Result<(), String> {
        if token.len() < 64
            || token.len() > 200
            || token.len() % 2 != 0
            || !token.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(format!(
                "`{field}` must be an APNs token: 64 to 200 hex digits"
            ));
        }
        Ok(())
    }

    fn part(
        &self,
        field: &str,
        class: Class,
        encrypt: bool,
        request: &RawValue,
    ) -> Result<Box<RawValue>, String> {
        let request: ApnsRequest<'_> = pipeline::json::parse_at(field, request)?;
        if !request.payload.get().starts_with('{') {
            return Err(format!("`{field}.payload` must be a JSON object"));
        }
        let push_type = request.push_type.unwrap_or(match class {
            Class::Call => ApnsPushType::Voip,
            Class::Alert => ApnsPushType::Alert,
            Class::Background => ApnsPushType::Background,
        });
        if push_type == ApnsPushType::Voip && class != Class::Call {
            // iOS terminates apps that receive a VoIP push without reporting a call.
            return Err(format!("`{field}.push_type` voip is only for class call"));
        }
        let limit = push_type.max_bytes();
        if request.payload.get().len() > limit {
            return Err(format!(
                "`{field}.payload` is over APNs' {limit} bytes for {}",
                push_type.as_str()
            ));
        }
        if encrypt {
            let sealed = jwe::envelope_len(request.payload, CLEAR, jwe::MAX_KID)?;
            if sealed > limit {
                return Err(format!(
                    "`{field}.payload` is over APNs' {limit} bytes for {} once encrypted ({sealed} bytes)",
                    push_type.as_str()
                ));
            }
        }
        let priority = request
            .priority
            .unwrap_or(if class == Class::Background { 5 } else { 10 });
        if !matches!(priority, 1 | 5 | 10) {
            return Err(format!("`{field}.priority` must be 10, 5 or 1"));
        }
        if request
            .collapse_id
            .as_ref()
            .is_some_and(|c| c.is_empty() || c.len() > MAX_COLLAPSE_ID)
        {
            return Err(format!(
                "`{field}.collapse_id` must be 1 to {MAX_COLLAPSE_ID} bytes"
            ));
        }
        pipeline::json::to_raw(&ApnsPart {
            payload: request.payload.to_owned(),
            push_type,
            priority,
            collapse_id: request.collapse_id,
        })
    }

    /// A VoIP push of the producer's own payload; APNs cannot ring from another's.
    fn call_part(&self, payload: &RawValue, own: bool) -> Option<Box<RawValue>> {
        let part = ApnsPart {
            payload: payload.to_owned(),
            push_type: ApnsPushType::Voip,
            priority: 10,
            collapse_id: None,
        };
        own.then(|| pipeline::json::to_raw(&part).ok()).flatten()
    }

    /// The whole payload as a JWE beside its `aps`, kept in clear for iOS to act on.
    fn encrypt(&self, part: &RawValue, key: &ContentKey, kid: &str) -> Result<Box<RawValue>, Skip> {
        let mut part: ApnsPart = serde_json::from_str(part.get()).map_err(|_| Skip::Malformed)?;
        part.payload =
            pipeline::provider::seal(&part.payload, key, kid, CLEAR, part.push_type.max_bytes())?;
        pipeline::json::to_raw(&part).map_err(|_| Skip::Malformed)
    }

    /// `aps.badge` of an alert's payload; a VoIP or background push shows no badge.
    fn badge(&self, part: &RawValue, unread: u64) -> Option<Box<RawValue>> {
        let mut part: ApnsPart = serde_json::from_str(part.get()).ok()?;
        if part.push_type != ApnsPushType::Alert {
            return None;
        }
        let count = RawValue::from_string(unread.to_string()).ok()?;
        part.payload = pipeline::json::with_member(&part.payload, &["aps", "badge"], &count)?;
        if part.payload.get().len() > part.push_type.max_bytes() {
            return None;
        }
        pipeline::json::to_raw(&part).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.into()).expect("json")
    }

    #[test]
    fn apns_meets_the_provider_contract() {
        pipeline::provider::conformance(
            &SPEC,
            &"ab".repeat(32),
            None,
            &raw(r#"{"payload":{"aps":{}}}"#),
        );
    }

    #[test]
    fn tokens_are_hex_of_sane_length() {
        assert!(SPEC.check_token("t", &"a".repeat(64)).is_ok());
        assert!(SPEC.check_token("t", &"g".repeat(64)).is_err());
        assert!(SPEC.check_token("t", &"a".repeat(63)).is_err());
        assert!(SPEC.check_token("t", &"a".repeat(202)).is_err());
    }

    #[test]
    fn calls_ring_voip_devices_and_the_rest_goes_to_alert_devices() {
        assert!(SPEC.wants(Class::Call, Channel::Voip));
        assert!(!SPEC.wants(Class::Call, Channel::Alert));
        assert!(SPEC.wants(Class::Alert, Channel::Alert));
        assert!(SPEC.wants(Class::Background, Channel::Alert));
        assert!(!SPEC.wants(Class::Alert, Channel::Voip));
    }

    #[test]
    fn defaults_follow_the_class_and_the_payload_stays_byte_for_byte() {
        let part = SPEC
            .part(
                "apns",
                Class::Call,
                false,
                &raw(r#"{"payload":{"aps":{}, "x":1.50}}"#),
            )
            .expect("call");
        let part: ApnsPart = serde_json::from_str(part.get()).expect("part");
        assert_eq!(part.payload.get(), r#"{"aps":{}, "x":1.50}"#);
        assert_eq!((part.push_type, part.priority), (ApnsPushType::Voip, 10));
        let part = SPEC
            .part("apns", Class::Background, false, &raw(r#"{"payload":{}}"#))
            .expect("background");
        let part: ApnsPart = serde_json::from_str(part.get()).expect("part");
        assert_eq!(
            (part.push_type, part.priority),
            (ApnsPushType::Background, 5)
        );
    }

    #[test]
    fn unacceptable_requests_name_the_field() {
        let cases = [
            (
                Class::Alert,
                r#"{"payload":{},"push_type":"voip"}"#,
                "`apns.push_type` voip",
            ),
            (
                Class::Call,
                r#"{"payload":{},"priority":7}"#,
                "`apns.priority`",
            ),
            (
                Class::Call,
                r#"{"payload":[1]}"#,
                "`apns.payload` must be a JSON object",
            ),
            (
                Class::Call,
                r#"{"payload":{},"collapse_id":""}"#,
                "`apns.collapse_id`",
            ),
            (Class::Call, r#"{"payload":{},"sound":1}"#, "apns"),
        ];
        for (class, request, needle) in cases {
            let error = SPEC
                .part("apns", class, false, &raw(request))
                .expect_err(request);
            assert!(error.contains(needle), "{request}: {error}");
        }
        let big = format!(r#"{{"payload":{{"x":"{}"}}}}"#, "y".repeat(4_090));
        let error = SPEC
            .part("apns", Class::Alert, false, &raw(&big))
            .expect_err("too big");
        assert!(error.contains("4096 bytes for alert"), "{error}");
        let fits = format!(r#"{{"payload":{{"x":"{}"}}}}"#, "y".repeat(3_000));
        assert!(SPEC.part("apns", Class::Alert, false, &raw(&fits)).is_ok());
        let error = SPEC
            .part("apns", Class::Alert, true, &raw(&fits))
            .expect_err("sealed");
        assert!(error.contains("once encrypted"), "{error}");
    }

    #[test]
    fn an_encrypted_part_keeps_aps_in_clear() {
        let part = SPEC
            .part(
                "apns",
                Class::Alert,
                false,
                &raw(r#"{"payload":{"aps":{"alert":"x"},"secret":"y"}}"#),
            )
            .expect("part");
        let key = ContentKey::from_bytes([3; 32]);
        let sealed = SPEC.encrypt(&part, &key, "k1").expect("sealed");
        let sealed: ApnsPart = serde_json::from_str(sealed.get()).expect("part");
        let body: serde_json::Value = serde_json::from_str(sealed.payload.get()).expect("json");
        assert_eq!(body["aps"]["alert"], "x");
        assert!(body.get("secret").is_none());
        let plain = jwe::decrypt(&key, body["jwe"].as_str().expect("jwe")).expect("decrypt");
        assert_eq!(plain, br#"{"aps":{"alert":"x"},"secret":"y"}"#);
    }

    #[test]
    fn an_alert_carries_the_unread_count_as_its_badge_and_a_call_never() {
        let alert =
            raw(r#"{"payload":{"aps":{"alert":"Hi"},"x":1},"push_type":"alert","priority":10}"#);
        let badged = SPEC.badge(&alert, 7).expect("badged");
        let part: ApnsPart = serde_json::from_str(badged.get()).expect("part");
        assert_eq!(
            part.payload.get(),
            r#"{"aps":{"alert":"Hi","badge":7},"x":1}"#
        );
        let voip = raw(r#"{"payload":{"aps":{}},"push_type":"voip","priority":10}"#);
        assert!(SPEC.badge(&voip, 7).is_none());
    }
}
