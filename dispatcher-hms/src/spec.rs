//! What the rest of pushline knows of Huawei Push Kit ([`pipeline::provider::Spec`]):
//! tokens are HMS push tokens, every device rings for calls, the part is [`HmsPart`], a
//! call is a high-urgency data message of category `VOIP` (from the producer's own
//! payload or from the call's description sent for another provider), and an encrypted
//! `data` object is `{"jwe":"…"}`.
//!
//! Urgency: Huawei delivers a `HIGH` data message at once only for a scenario it
//! classifies by `android.category` (`VOIP` for calls; an app needs Huawei's permission
//! for each). So `HIGH` is sent only with such a category ([`high_allowed`]): calls are
//! `HIGH` + `VOIP`, alerts are `NORMAL` unless the producer names a category, and a
//! producer asking for `high` without one is refused.

use pipeline::contract::{Channel, Class};
use pipeline::jwe::{self, ContentKey};
use pipeline::provider::{Skip, Spec};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The provider's name.
pub const NAME: &str = "hms";

/// Largest message Push Kit takes, bytes, not counting the token.
pub const MESSAGE_MAX_BYTES: usize = 4_096;
/// What of [`MESSAGE_MAX_BYTES`] the producer's content may take: `data` as it is sent
/// (its JSON text as a JSON string, quotes escaped) and `notification`. The rest is kept
/// for the message's own fields (urgency, category, TTL, collapse key).
pub const CONTENT_MAX_BYTES: usize = 3_840;
/// Shortest token pushline takes. Huawei asks apps not to rely on the token's length
/// (112 to about 130 characters today); this only refuses what cannot be a token.
pub const MIN_HMS_TOKEN: usize = 32;
/// Longest token pushline takes.
pub const MAX_HMS_TOKEN: usize = 1_024;
/// The `category` of a call: Huawei's scenario for a high-urgency data message of a
/// voice or video call.
pub const CALL_CATEGORY: &str = "VOIP";
/// Huawei's message categories (`android.category`): the scenarios of its message
/// classification, `PLAY_VOICE` the voice-broadcast scenario of data messages.
pub const CATEGORIES: &[&str] = &[
    "IM",
    "VOIP",
    "SUBSCRIPTION",
    "TRAVEL",
    "HEALTH",
    "WORK",
    "ACCOUNT",
    "EXPRESS",
    "FINANCE",
    "DEVICE_REMINDER",
    "MAIL",
    "CUSTOMER_SERVICE",
    "PLAY_VOICE",
    "MARKETING",
];
/// The category that only labels content (news, promotions) and speeds nothing up.
pub const MARKETING: &str = "MARKETING";
/// Push Kit's `collapse_key` range: `-1` (every cached message is delivered once the
/// device is back online), `0` (Push Kit's own policy for the app's cached messages,
/// which Huawei describes as usually only the latest), `1`–`100` (a group: only the
/// latest of each group is delivered).
pub const COLLAPSE_KEYS: std::ops::RangeInclusive<i8> = -1..=100;
/// Largest badge number a notification sets (`badge.set_num`).
pub const MAX_BADGE: u64 = 99;

/// `android.urgency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HmsUrgency {
    /// `HIGH`: delivered at once, waking the device; only with a scenario category
    /// ([`high_allowed`]): calls, and alerts whose producer names a category.
    High,
    /// `NORMAL`.
    Normal,
}

impl HmsUrgency {
    /// The value Push Kit takes.
    pub fn as_str(self) -> &'static str {
        match self {
            HmsUrgency::High => "HIGH",
            HmsUrgency::Normal => "NORMAL",
        }
    }
}

/// The HMS part of an event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmsPart {
    /// The app's payload, a JSON object carried unaltered as raw JSON; Push Kit's
    /// `data` is a string, so it is sent as its JSON text.
    pub data: Box<RawValue>,
    /// `android.urgency`; default `high` for calls and for alerts that name a
    /// `category`, `normal` otherwise; `high` needs a category ([`high_allowed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urgency: Option<HmsUrgency>,
    /// `android.category`, one of Huawei's [`CATEGORIES`], the scenario Huawei classifies
    /// the message under; default [`CALL_CATEGORY`] for calls, none otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// `android.collapse_key`, one of [`COLLAPSE_KEYS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collapse_key: Option<i8>,
    /// A display notification Android draws itself (Push Kit's `AndroidNotification`:
    /// `title`, `body`, `click_action`, `buttons`, `badge`, …), sent as
    /// `android.notification` byte for byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification: Option<Box<RawValue>>,
}

/// Huawei Push Kit, as the registry and ingest know it.
#[derive(Debug)]
pub struct Hms;

/// The one [`Hms`].
pub static SPEC: Hms = Hms;

/// Whether a message of `category` may be sent `HIGH`: it names a scenario Huawei
/// delivers at once (any of [`CATEGORIES`] but [`MARKETING`]).
pub fn high_allowed(category: Option<&str>) -> bool {
    category.is_some_and(|c| c != MARKETING && CATEGORIES.contains(&c))
}

/// The urgency a message with `urgency` and `category` is sent with: `HIGH` only where
/// [`high_allowed`] (a job queued before that rule goes out `NORMAL`), `NORMAL` when
/// none is set.
pub fn sent_urgency(urgency: Option<HmsUrgency>, category: Option<&str>) -> HmsUrgency {
    match urgency {
        Some(HmsUrgency::High) if high_allowed(category) => HmsUrgency::High,
        _ => HmsUrgency::Normal,
    }
}

/// How many bytes `data` takes in the message: its JSON text as a JSON string.
pub fn sent_len(data: &RawValue) -> usize {
    let text = data.get();
    // Two quotes around it, a backslash before each quote and backslash in it (the
    // payload is JSON: it has no raw control characters to escape).
    2 + text.len() + text.bytes().filter(|b| matches!(b, b'"' | b'\\')).count()
}

/// How many bytes a sealed `{"jwe":"…"}` takes in the message: its JSON with four quotes
/// escaped, as a string.
fn sealed_sent_len(data: &RawValue) -> Result<usize, String> {
    Ok(jwe::envelope_len(data, None, jwe::MAX_KID)? + 2 + 4)
}

impl Spec for Hms {
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

    /// 32 to 1024 characters of `A-Z a-z 0-9 _ - : . + / =` (the token is opaque).
    fn check_token(&self, field: &str, token: &str) -> Result<(), String> {
        if !(MIN_HMS_TOKEN..=MAX_HMS_TOKEN).contains(&token.len())
            || !token.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(b, b'_' | b'-' | b':' | b'.' | b'+' | b'/' | b'=')
            })
        {
            return Err(format!(
                "`{field}` must be an HMS push token: {MIN_HMS_TOKEN} to {MAX_HMS_TOKEN} characters of A-Z a-z 0-9 _ - : . + / ="
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
        let mut part: HmsPart = pipeline::json::parse_at(field, request)?;
        if !part.data.get().starts_with('{') {
            return Err(format!("`{field}.data` must be a JSON object"));
        }
        let shown = part.notification.as_ref().map_or(0, |n| n.get().len());
        if sent_len(&part.data) + shown > CONTENT_MAX_BYTES {
            return Err(format!(
                "`{field}.data` and `{field}.notification` are over Push Kit's {CONTENT_MAX_BYTES} bytes (`data` counted as the string it is sent as)"
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
        let sealed = sealed_sent_len(&part.data)?;
        if encrypt && sealed > CONTENT_MAX_BYTES {
            return Err(format!(
                "`{field}.data` is over Push Kit's {CONTENT_MAX_BYTES} bytes once encrypted ({sealed} bytes)"
            ));
        }
        if part
            .collapse_key
            .is_some_and(|key| !COLLAPSE_KEYS.contains(&key))
        {
            return Err(format!(
                "`{field}.collapse_key` must be -1 (deliver every cached message), 0 (Push Kit's own policy, usually only the latest) or a group 1 to 100"
            ));
        }
        if part
            .category
            .as_deref()
            .is_some_and(|c| !CATEGORIES.contains(&c))
        {
            return Err(format!(
                "`{field}.category` must be one of Huawei's categories: {}",
                CATEGORIES.join(", ")
            ));
        }
        if class == Class::Call && part.category.is_none() {
            part.category = Some(CALL_CATEGORY.to_owned());
        }
        let category = part.category.as_deref();
        if part.urgency == Some(HmsUrgency::High) && !high_allowed(category) {
            return Err(format!(
                "`{field}.urgency` high needs `{field}.category` naming the scenario (e.g. VOIP, IM; not MARKETING): Push Kit delivers high-urgency messages only for those"
            ));
        }
        part.urgency
            .get_or_insert(if class != Class::Background && high_allowed(category) {
                HmsUrgency::High
            } else {
                HmsUrgency::Normal
            });
        pipeline::json::to_raw(&part)
    }

    /// A high-urgency `VOIP` data message of the call's description: the producer's own
    /// HMS payload, or the one it sent for another provider (Webex's `fcmPayload`, else
    /// `apnsPayload`), which the app reads from `data` as it came.
    fn call_part(&self, payload: &RawValue, own: bool) -> Option<Box<RawValue>> {
        if !own && !payload.get().starts_with('{') {
            return None;
        }
        pipeline::json::to_raw(&HmsPart {
            data: payload.to_owned(),
            urgency: Some(HmsUrgency::High),
            category: Some(CALL_CATEGORY.to_owned()),
            collapse_key: None,
            notification: None,
        })
        .ok()
    }

    /// The `data` object becomes `{"jwe":"<JWE of the object>"}`.
    fn encrypt(&self, part: &RawValue, key: &ContentKey, kid: &str) -> Result<Box<RawValue>, Skip> {
        let mut part: HmsPart = serde_json::from_str(part.get()).map_err(|_| Skip::Malformed)?;
        if part.notification.is_some() {
            return Err(Skip::Cleartext);
        }
        // The envelope's four quotes are escaped in the string it is sent as.
        let limit = CONTENT_MAX_BYTES - 2 - 4;
        part.data = pipeline::provider::seal(&part.data, key, kid, None, limit)?;
        pipeline::json::to_raw(&part).map_err(|_| Skip::Malformed)
    }

    /// `badge.set_num` of a display notification whose `badge` names the app's launcher
    /// class (`badge.class`, which Android needs to draw the badge and pushline cannot
    /// know), at most 99; data messages show no badge.
    fn badge(&self, part: &RawValue, unread: u64) -> Option<Box<RawValue>> {
        let mut part: HmsPart = serde_json::from_str(part.get()).ok()?;
        let notification = part.notification.as_ref()?;
        #[derive(Deserialize)]
        struct Shown<'a> {
            #[serde(borrow)]
            badge: Option<Badge<'a>>,
        }
        #[derive(Deserialize)]
        struct Badge<'a> {
            #[serde(borrow)]
            class: Option<&'a RawValue>,
        }
        let shown: Shown<'_> = serde_json::from_str(notification.get()).ok()?;
        shown.badge?.class?;
        let count = RawValue::from_string(unread.min(MAX_BADGE).to_string()).ok()?;
        let badged = pipeline::json::with_member(notification, &["badge", "set_num"], &count)?;
        if sent_len(&part.data) + badged.get().len() > CONTENT_MAX_BYTES {
            return None;
        }
        part.notification = Some(badged);
        pipeline::json::to_raw(&part).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token shaped like Push Kit's (base64url, 130 characters).
    pub(crate) const TOKEN: &str = "IQAAAACy0kYkAADQmWq2X0s9d2pu7iBEQz8pqOB1c0G4-0m_Cx8Y7ePVZ5k1eTq3nA3cGvZ3uoJ5rj3kL8y1sQ2wE4tR6yU8iO0pA2sD4fG6hJ8kL0zX2cV4bN6mQ8wE0";

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.into()).expect("json")
    }

    fn parsed(part: &RawValue) -> HmsPart {
        serde_json::from_str(part.get()).expect("part")
    }

    #[test]
    fn hms_meets_the_provider_contract() {
        pipeline::provider::conformance(&SPEC, TOKEN, None, &raw(r#"{"data":{"a":"1"}}"#));
    }

    #[test]
    fn tokens_allow_their_charset_and_any_plausible_length() {
        assert!(SPEC.check_token("t", TOKEN).is_ok());
        assert!(SPEC.check_token("t", &"A".repeat(112)).is_ok());
        assert!(
            SPEC.check_token("t", "0866021033574521300002546000DE01")
                .is_ok()
        );
        assert!(
            SPEC.check_token("t", &format!("{} ", &TOKEN[..100]))
                .is_err()
        );
        assert!(SPEC.check_token("t", "short").is_err());
        assert!(
            SPEC.check_token("t", &"A".repeat(MAX_HMS_TOKEN + 1))
                .is_err()
        );
        let error = SPEC.check_token("device.token", "x").expect_err("short");
        assert!(error.contains("`device.token`"), "{error}");
    }

    #[test]
    fn every_device_is_on_the_alert_channel_and_rings() {
        assert!(SPEC.wants(Class::Call, Channel::Alert));
        assert!(!SPEC.wants(Class::Call, Channel::Voip), "no voip channel");
        assert!(SPEC.wants(Class::Background, Channel::Alert));
    }

    #[test]
    fn a_call_is_a_high_urgency_voip_data_message() {
        let part = SPEC
            .part(
                "hms",
                Class::Call,
                false,
                &raw(r#"{"data":{"b":"2", "a":1}}"#),
            )
            .expect("call");
        let part = parsed(&part);
        assert_eq!(part.data.get(), r#"{"b":"2", "a":1}"#, "byte for byte");
        assert_eq!(part.urgency, Some(HmsUrgency::High));
        assert_eq!(part.category.as_deref(), Some("VOIP"));
        let alert = parsed(
            &SPEC
                .part("hms", Class::Alert, false, &raw(r#"{"data":{}}"#))
                .expect("alert"),
        );
        assert_eq!(
            alert.urgency,
            Some(HmsUrgency::Normal),
            "no category, no HIGH"
        );
        assert_eq!(alert.category, None, "only calls are VOIP");
        let chat = parsed(
            &SPEC
                .part(
                    "hms",
                    Class::Alert,
                    false,
                    &raw(r#"{"data":{},"category":"IM"}"#),
                )
                .expect("alert"),
        );
        assert_eq!(chat.urgency, Some(HmsUrgency::High), "a named scenario");
        let marketing = parsed(
            &SPEC
                .part(
                    "hms",
                    Class::Alert,
                    false,
                    &raw(r#"{"data":{},"category":"MARKETING"}"#),
                )
                .expect("alert"),
        );
        assert_eq!(marketing.urgency, Some(HmsUrgency::Normal));
        let background = parsed(
            &SPEC
                .part("hms", Class::Background, false, &raw(r#"{"data":{}}"#))
                .expect("background"),
        );
        assert_eq!(background.urgency, Some(HmsUrgency::Normal));
    }

    #[test]
    fn high_urgency_is_only_for_a_named_scenario() {
        let error = SPEC
            .part(
                "hms",
                Class::Alert,
                false,
                &raw(r#"{"data":{},"urgency":"high"}"#),
            )
            .expect_err("no category");
        assert!(error.contains("`hms.urgency` high needs"), "{error}");
        assert!(high_allowed(Some("VOIP")));
        assert!(high_allowed(Some("PLAY_VOICE")));
        assert!(!high_allowed(Some("MARKETING")));
        assert!(!high_allowed(None));
        assert_eq!(
            sent_urgency(Some(HmsUrgency::High), None),
            HmsUrgency::Normal,
            "a job queued before the rule"
        );
        assert_eq!(
            sent_urgency(Some(HmsUrgency::High), Some("VOIP")),
            HmsUrgency::High
        );
        assert_eq!(sent_urgency(None, Some("VOIP")), HmsUrgency::Normal);
    }

    #[test]
    fn a_call_rings_from_another_providers_description() {
        let fcm_payload = raw(r#"{"callId":"c-1","caller":"Ada"}"#);
        let part = SPEC.call_part(&fcm_payload, false).expect("rings");
        let part = parsed(&part);
        assert_eq!(part.data.get(), fcm_payload.get());
        assert_eq!(part.urgency, Some(HmsUrgency::High));
        assert_eq!(part.category.as_deref(), Some(CALL_CATEGORY));
        assert!(SPEC.call_part(&raw(r#""text""#), false).is_none());
        let ringing = SPEC.call_part(&fcm_payload, false).expect("rings");
        let again = SPEC
            .part("hms", Class::Call, false, &ringing)
            .expect("its own request");
        assert_eq!(again.get(), ringing.get());
    }

    #[test]
    fn unacceptable_requests_name_the_field() {
        for (request, needle) in [
            (r#"{"data":[1]}"#, "`hms.data` must be a JSON object"),
            (r#"{"data":{},"collapse_key":101}"#, "`hms.collapse_key`"),
            (r#"{"data":{},"collapse_key":-2}"#, "`hms.collapse_key`"),
            (r#"{"data":{},"collapse_key":"a"}"#, "`hms.collapse_key`"),
            (r#"{"data":{},"category":"voip"}"#, "`hms.category`"),
            (
                r#"{"data":{},"category":"NOT_A_CATEGORY"}"#,
                "`hms.category`",
            ),
            (
                r#"{"data":{},"urgency":"high","category":"MARKETING"}"#,
                "`hms.urgency` high needs",
            ),
            (r#"{"data":{},"urgency":"urgent"}"#, "`hms.urgency`"),
            (
                r#"{"data":{},"notification":"x"}"#,
                "`hms.notification` must be a JSON object",
            ),
            (r#"{"data":{},"ttl":1}"#, "unknown field `ttl`"),
        ] {
            let error = SPEC
                .part("hms", Class::Call, false, &raw(request))
                .expect_err(request);
            assert!(error.contains(needle), "{request}: {error}");
        }
    }

    #[test]
    fn the_size_limit_counts_data_as_the_escaped_string_it_is_sent_as() {
        // 2,600 bytes of escaped quotes, each escaped again in the string.
        let quotes = format!(r#"{{"x":"{}"}}"#, "\\\"".repeat(1_300));
        assert!(raw(&quotes).get().len() < CONTENT_MAX_BYTES);
        let error = SPEC
            .part(
                "hms",
                Class::Alert,
                false,
                &raw(&format!(r#"{{"data":{quotes}}}"#)),
            )
            .expect_err("escaped");
        assert!(error.contains("over Push Kit's"), "{error}");
        let fits = format!(r#"{{"data":{{"x":"{}"}}}}"#, "y".repeat(3_000));
        assert!(SPEC.part("hms", Class::Call, false, &raw(&fits)).is_ok());
        let error = SPEC
            .part("hms", Class::Call, true, &raw(&fits))
            .expect_err("sealed");
        assert!(error.contains("once encrypted"), "{error}");
        assert_eq!(
            sent_len(&raw(r#"{"a":"\\"}"#)),
            r#""{\"a\":\"\\\\\"}""#.len()
        );
    }

    #[test]
    fn a_display_notification_passes_through_and_is_never_encrypted() {
        let request = r#"{"data":{},"notification":{"title":"Ada","click_action":{"type":3},"buttons":[{"name":"Answer","action_type":0}]}}"#;
        let part = SPEC
            .part("hms", Class::Alert, false, &raw(request))
            .expect("part");
        assert_eq!(
            parsed(&part).notification.expect("notification").get(),
            r#"{"title":"Ada","click_action":{"type":3},"buttons":[{"name":"Answer","action_type":0}]}"#
        );
        let error = SPEC
            .part("hms", Class::Alert, true, &raw(request))
            .expect_err("in clear");
        assert!(error.contains("cannot be encrypted"), "{error}");
        let key = ContentKey::from_bytes([3; 32]);
        assert_eq!(
            SPEC.encrypt(&part, &key, "k").expect_err("policy"),
            Skip::Cleartext
        );
    }

    #[test]
    fn an_encrypted_part_is_one_jwe_field() {
        let part = SPEC
            .part("hms", Class::Call, false, &raw(r#"{"data":{"m":"x"}}"#))
            .expect("part");
        let key = ContentKey::from_bytes([3; 32]);
        let sealed = parsed(&SPEC.encrypt(&part, &key, "k").expect("sealed"));
        let data: serde_json::Value = serde_json::from_str(sealed.data.get()).expect("json");
        let plain = jwe::decrypt(&key, data["jwe"].as_str().expect("jwe")).expect("decrypt");
        assert_eq!(plain, br#"{"m":"x"}"#);
        assert_eq!(
            sealed.category.as_deref(),
            Some("VOIP"),
            "the rest unchanged"
        );
    }

    #[test]
    fn the_badge_is_set_where_the_notification_names_its_class() {
        let with_class = raw(
            r#"{"data":{},"notification":{"title":"Ada","badge":{"class":"com.example.Main"}}}"#,
        );
        let part = SPEC
            .part("hms", Class::Alert, false, &with_class)
            .expect("part");
        let badged = parsed(&SPEC.badge(&part, 7).expect("badged"));
        assert_eq!(
            badged.notification.expect("notification").get(),
            r#"{"badge":{"class":"com.example.Main","set_num":7},"title":"Ada"}"#
        );
        let capped = parsed(&SPEC.badge(&part, 1_000).expect("badged"));
        assert!(
            capped
                .notification
                .expect("n")
                .get()
                .contains(r#""set_num":99"#)
        );
        let no_class = SPEC
            .part(
                "hms",
                Class::Alert,
                false,
                &raw(r#"{"data":{},"notification":{"title":"Ada"}}"#),
            )
            .expect("part");
        assert!(SPEC.badge(&no_class, 7).is_none());
        let data_only = SPEC
            .part("hms", Class::Alert, false, &raw(r#"{"data":{}}"#))
            .expect("part");
        assert!(SPEC.badge(&data_only, 7).is_none());
    }
}
