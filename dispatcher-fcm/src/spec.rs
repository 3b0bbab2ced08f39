//! What the rest of pushline knows of FCM ([`pipeline::provider::Spec`]): tokens are
//! FCM registration tokens, every device rings for calls, the part is [`FcmPart`], and an
//! encrypted `data` map is `{"jwe":"…"}`.

use pipeline::contract::{Channel, Class};
use pipeline::jwe::{self, ContentKey};
use pipeline::provider::{Skip, Spec};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The provider's name.
pub const NAME: &str = "fcm";

/// Largest FCM `data` map, bytes (as pushline counts it: its JSON).
pub const FCM_DATA_MAX_BYTES: usize = 4_096;
/// Longest FCM token.
pub const MAX_FCM_TOKEN: usize = 4_096;
/// Longest `collapse_key`, bytes.
pub const MAX_COLLAPSE_KEY: usize = 64;

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
#[serde(deny_unknown_fields)]
pub struct FcmPart {
    /// The `data` object, carried unaltered as raw JSON.
    pub data: Box<RawValue>,
    /// Android delivery priority; default `high` for calls and alerts, `normal` for
    /// background.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<FcmPriority>,
    /// `collapse_key`, when the producer gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collapse_key: Option<String>,
    /// A display notification Android draws itself (FCM's `AndroidNotification`: `title`,
    /// `body`, `channel_id`, `click_action` for the app's interactive handling, …), sent
    /// as `android.notification` byte for byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification: Option<Box<RawValue>>,
}

/// FCM, as the registry and ingest know it.
#[derive(Debug)]
pub struct Fcm;

/// The one [`Fcm`].
pub static SPEC: Fcm = Fcm;

impl Spec for Fcm {
    fn name(&self) -> &'static str {
        NAME
    }

    fn default_channel(&self) -> Channel {
        Channel::Alert
    }

    /// Android has no separate call channel: every device registers on `alert` and gets
    /// calls, alerts and background updates alike.
    fn wants(&self, _class: Class, channel: Channel) -> bool {
        channel == Channel::Alert
    }

    /// 16 to 4096 characters of `A-Z a-z 0-9 _ - :`.
    fn check_token(&self, field: &str, token: &str) -> Result<(), String> {
        if token.len() < 16
            || token.len() > MAX_FCM_TOKEN
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':'))
        {
            return Err(format!(
                "`{field}` must be an FCM token: 16 to {MAX_FCM_TOKEN} characters of A-Z a-z 0-9 _ - :"
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
        let mut part: FcmPart = pipeline::json::parse_at(field, request)?;
        if !part.data.get().starts_with('{') {
            return Err(format!("`{field}.data` must be a JSON object"));
        }
        let shown = part.notification.as_ref().map_or(0, |n| n.get().len());
        if part.data.get().len() + shown > FCM_DATA_MAX_BYTES {
            return Err(format!(
                "`{field}.data` and `{field}.notification` are over FCM's {FCM_DATA_MAX_BYTES} bytes"
            ));
        }
        if let Some(notification) = &part.notification {
            if !notification.get().starts_with('{') {
                return Err(format!("`{field}.notification` must be a JSON object"));
            }
            if encrypt {
                return Err(format!(
                    "`{field}.notification` is drawn by Android in clear and cannot be encrypted: send the content in `data` and let the app show it"
                ));
            }
        }
        let sealed = jwe::envelope_len(&part.data, None, jwe::MAX_KID)?;
        if encrypt && sealed > FCM_DATA_MAX_BYTES {
            return Err(format!(
                "`{field}.data` is over FCM's {FCM_DATA_MAX_BYTES} bytes once encrypted ({sealed} bytes)"
            ));
        }
        if part
            .collapse_key
            .as_ref()
            .is_some_and(|c| c.is_empty() || c.len() > MAX_COLLAPSE_KEY)
        {
            return Err(format!(
                "`{field}.collapse_key` must be 1 to {MAX_COLLAPSE_KEY} bytes"
            ));
        }
        part.priority.get_or_insert(if class == Class::Background {
            FcmPriority::Normal
        } else {
            FcmPriority::High
        });
        pipeline::json::to_raw(&part)
    }

    /// A high-priority data message of the producer's own payload; FCM cannot ring from
    /// another's.
    fn call_part(&self, payload: &RawValue, own: bool) -> Option<Box<RawValue>> {
        let part = FcmPart {
            data: payload.to_owned(),
            priority: Some(FcmPriority::High),
            collapse_key: None,
            notification: None,
        };
        own.then(|| pipeline::json::to_raw(&part).ok()).flatten()
    }

    /// The `data` map becomes `{"jwe":"<JWE of the map>"}`.
    fn encrypt(&self, part: &RawValue, key: &ContentKey, kid: &str) -> Result<Box<RawValue>, Skip> {
        let mut part: FcmPart = serde_json::from_str(part.get()).map_err(|_| Skip::Malformed)?;
        if part.notification.is_some() {
            return Err(Skip::Cleartext);
        }
        part.data = pipeline::provider::seal(&part.data, key, kid, None, FCM_DATA_MAX_BYTES)?;
        pipeline::json::to_raw(&part).map_err(|_| Skip::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.into()).expect("json")
    }

    #[test]
    fn fcm_meets_the_provider_contract() {
        pipeline::provider::conformance(
            &SPEC,
            "dGVzdA:APA91bH-x_y0123456789",
            None,
            &raw(r#"{"data":{"a":"1"}}"#),
        );
    }

    #[test]
    fn tokens_allow_their_charset_only() {
        assert!(
            SPEC.check_token("t", "dGVzdA:APA91bH-x_y0123456789")
                .is_ok()
        );
        assert!(SPEC.check_token("t", "has space in it 0123456789").is_err());
        assert!(SPEC.check_token("t", "short").is_err());
    }

    #[test]
    fn every_device_is_on_the_alert_channel_and_rings() {
        assert!(SPEC.wants(Class::Call, Channel::Alert));
        assert!(!SPEC.wants(Class::Call, Channel::Voip), "no voip channel");
        assert!(SPEC.wants(Class::Background, Channel::Alert));
        assert!(!SPEC.wants(Class::Alert, Channel::Voip));
    }

    #[test]
    fn priority_follows_the_class_and_data_stays_byte_for_byte() {
        let part = SPEC
            .part(
                "fcm",
                Class::Call,
                false,
                &raw(r#"{"data":{"b":"2", "a":"1"}}"#),
            )
            .expect("call");
        let part: FcmPart = serde_json::from_str(part.get()).expect("part");
        assert_eq!(part.data.get(), r#"{"b":"2", "a":"1"}"#);
        assert_eq!(part.priority, Some(FcmPriority::High));
        let part = SPEC
            .part("fcm", Class::Background, false, &raw(r#"{"data":{}}"#))
            .expect("background");
        let part: FcmPart = serde_json::from_str(part.get()).expect("part");
        assert_eq!(part.priority, Some(FcmPriority::Normal));
    }

    #[test]
    fn unacceptable_requests_name_the_field() {
        for (request, needle) in [
            (r#"{"data":[1]}"#, "`fcm.data` must be a JSON object"),
            (r#"{"data":{},"collapse_key":""}"#, "`fcm.collapse_key`"),
            (r#"{"data":{},"priority":"urgent"}"#, "`fcm.priority`"),
            (r#"{"data":{},"ttl":1}"#, "unknown field `ttl`"),
        ] {
            let error = SPEC
                .part("fcm", Class::Call, false, &raw(request))
                .expect_err(request);
            assert!(error.contains(needle), "{request}: {error}");
        }
        let fits = format!(r#"{{"data":{{"x":"{}"}}}}"#, "y".repeat(3_500));
        assert!(SPEC.part("fcm", Class::Call, false, &raw(&fits)).is_ok());
        let error = SPEC
            .part("fcm", Class::Call, true, &raw(&fits))
            .expect_err("sealed");
        assert!(error.contains("once encrypted"), "{error}");
    }

    #[test]
    fn a_display_notification_passes_through_and_is_never_encrypted() {
        let request =
            r#"{"data":{},"notification":{"title":"Ada","click_action":"ANSWER_OR_DECLINE"}}"#;
        let part = SPEC
            .part("fcm", Class::Alert, false, &raw(request))
            .expect("part");
        let parsed: FcmPart = serde_json::from_str(part.get()).expect("part");
        assert_eq!(
            parsed.notification.expect("notification").get(),
            r#"{"title":"Ada","click_action":"ANSWER_OR_DECLINE"}"#
        );
        let error = SPEC
            .part("fcm", Class::Alert, true, &raw(request))
            .expect_err("in clear");
        assert!(error.contains("cannot be encrypted"), "{error}");
        let key = ContentKey::from_bytes([3; 32]);
        assert_eq!(
            SPEC.encrypt(&part, &key, "k").expect_err("policy"),
            Skip::Cleartext
        );
        let error = SPEC
            .part(
                "fcm",
                Class::Alert,
                false,
                &raw(r#"{"data":{},"notification":"x"}"#),
            )
            .expect_err("object");
        assert!(
            error.contains("`fcm.notification` must be a JSON object"),
            "{error}"
        );
    }

    #[test]
    fn an_encrypted_part_is_one_jwe_field() {
        let part = SPEC
            .part("fcm", Class::Call, false, &raw(r#"{"data":{"m":"x"}}"#))
            .expect("part");
        let key = ContentKey::from_bytes([3; 32]);
        let sealed: FcmPart =
            serde_json::from_str(SPEC.encrypt(&part, &key, "k").expect("sealed").get())
                .expect("part");
        let data: serde_json::Value = serde_json::from_str(sealed.data.get()).expect("json");
        let plain = jwe::decrypt(&key, data["jwe"].as_str().expect("jwe")).expect("decrypt");
        assert_eq!(plain, br#"{"m":"x"}"#);
    }
}
