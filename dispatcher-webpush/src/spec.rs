//! What the rest of pushline knows of Web Push ([`pipeline::provider::Spec`]): a device
//! is a browser's push subscription (its endpoint is the token, its `p256dh` and `auth`
//! keys are stored with it), every device is on the `alert` channel and rings for calls,
//! and the part is [`WebPushPart`]: the JSON the browser's service worker receives, with
//! the push's urgency and topic.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pipeline::contract::{Channel, Class};
use pipeline::jwe::{self, ContentKey};
use pipeline::provider::{Skip, Spec};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The provider's name.
pub const NAME: &str = "webpush";

/// Largest payload, bytes: a push service takes 4096 bytes of encrypted body (RFC 8291
/// §4), and one `aes128gcm` record adds an 86-byte header, a delimiter and a 16-byte tag.
pub const MAX_PAYLOAD_BYTES: usize = 4_096 - 86 - 1 - 16;
/// Longest endpoint URL.
pub const MAX_ENDPOINT: usize = 2_048;
/// Longest `Topic` (RFC 8030 §5.4: 32 characters of the base64url alphabet).
pub const MAX_TOPIC: usize = 32;

/// RFC 8030 §5.3 `Urgency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Urgency {
    /// `very-low`.
    VeryLow,
    /// `low`.
    Low,
    /// `normal`.
    Normal,
    /// `high`: calls.
    High,
}

impl Urgency {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::VeryLow => "very-low",
            Urgency::Low => "low",
            Urgency::Normal => "normal",
            Urgency::High => "high",
        }
    }
}

/// The Web Push part of an event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebPushPart {
    /// The JSON the service worker's `push` event reads (`event.data.json()`), sent
    /// encrypted, byte for byte.
    pub payload: Box<RawValue>,
    /// `Urgency`.
    pub urgency: Urgency,
    /// `Topic`: a newer push with the same topic replaces an undelivered older one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// A producer's `webpush` request: a payload, or a notification pushline shapes into one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebPushRequest<'a> {
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    notification: Option<Notification>,
    #[serde(default)]
    urgency: Option<Urgency>,
    #[serde(default)]
    topic: Option<String>,
}

/// A notification for the service worker to show (`registration.showNotification(title,
/// options)`); the payload is `{"notification":{…}}` with the options' own names.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Notification {
    title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    icon: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tag: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    actions: Vec<Action>,
    /// Default: true for calls (the notification stays until answered or dismissed).
    #[serde(
        default,
        rename(serialize = "requireInteraction"),
        alias = "requireInteraction",
        skip_serializing_if = "Option::is_none"
    )]
    require_interaction: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<serde_json::Value>,
}

/// A notification button.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Action {
    action: String,
    title: String,
}

/// The subscription keys a device registers (`PushSubscription.toJSON().keys`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keys {
    /// The browser's P-256 public key, uncompressed (65 bytes), base64url.
    pub p256dh: String,
    /// The 16-byte authentication secret, base64url.
    pub auth: String,
}

impl Keys {
    /// The decoded keys, checked: a point on P-256 and a 16-byte secret (at
    /// registration; a push decodes with [`Keys::bytes`], and the key agreement checks
    /// the point again anyway).
    pub fn decode(&self) -> Result<([u8; 65], [u8; 16]), String> {
        let (p256dh, auth) = self.bytes()?;
        p256::PublicKey::from_sec1_bytes(&p256dh)
            .map_err(|_| "`p256dh` is not a point on P-256")?;
        Ok((p256dh, auth))
    }

    /// The keys' bytes, of the right lengths.
    pub fn bytes(&self) -> Result<([u8; 65], [u8; 16]), String> {
        let p256dh: [u8; 65] = decode_b64url(&self.p256dh)
            .and_then(|k| k.try_into().ok())
            .ok_or("`p256dh` must be a P-256 public key: 65 bytes, base64url")?;
        let auth: [u8; 16] = decode_b64url(&self.auth)
            .and_then(|k| k.try_into().ok())
            .ok_or("`auth` must be 16 bytes, base64url")?;
        Ok((p256dh, auth))
    }
}

/// Base64url with or without padding (browsers give it without; some libraries add it).
fn decode_b64url(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()
}

/// Web Push, as the registry and ingest know it.
#[derive(Debug)]
pub struct WebPush;

/// The one [`WebPush`].
pub static SPEC: WebPush = WebPush;

fn urgency_of(class: Class) -> Urgency {
    match class {
        Class::Call => Urgency::High,
        Class::Alert => Urgency::Normal,
        Class::Background => Urgency::Low,
    }
}

impl Spec for WebPush {
    fn name(&self) -> &'static str {
        NAME
    }

    fn default_channel(&self) -> Channel {
        Channel::Alert
    }

    /// A browser has one subscription per site: every device is on `alert` and gets
    /// calls, alerts and background updates.
    fn wants(&self, _class: Class, channel: Channel) -> bool {
        channel == Channel::Alert
    }

    /// An `https://` URL of the push service, as the browser gave it.
    fn check_token(&self, field: &str, token: &str) -> Result<(), String> {
        let fine = token.len() <= MAX_ENDPOINT
            && token.starts_with("https://")
            && !token.bytes().any(|b| b.is_ascii_control() || b == b' ')
            && reqwest::Url::parse(token).is_ok_and(|url| url.host_str().is_some());
        if !fine {
            return Err(format!(
                "`{field}` must be a push subscription's endpoint: an https:// URL of at most {MAX_ENDPOINT} characters"
            ));
        }
        Ok(())
    }

    /// The endpoint is where the dispatcher POSTs: registration holds it to the
    /// deployment's endpoint policy.
    fn endpoint(&self, token: &str) -> Option<reqwest::Url> {
        reqwest::Url::parse(token).ok()
    }

    fn check_keys(
        &self,
        field: &str,
        keys: Option<&RawValue>,
    ) -> Result<Option<Box<RawValue>>, String> {
        let keys = keys.ok_or_else(|| {
            format!("`{field}` is required: a push subscription's p256dh and auth")
        })?;
        let keys: Keys = pipeline::json::parse_at(field, keys)?;
        keys.decode().map_err(|why| format!("`{field}`: {why}"))?;
        pipeline::json::to_raw(&keys).map(Some)
    }

    fn part(
        &self,
        field: &str,
        class: Class,
        encrypt: bool,
        request: &RawValue,
    ) -> Result<Box<RawValue>, String> {
        let request: WebPushRequest<'_> = pipeline::json::parse_at(field, request)?;
        let payload = match (request.payload, request.notification) {
            (Some(payload), None) => {
                if !payload.get().starts_with('{') {
                    return Err(format!("`{field}.payload` must be a JSON object"));
                }
                payload.to_owned()
            }
            (None, Some(mut notification)) => {
                if notification.title.is_empty() {
                    return Err(format!("`{field}.notification.title` must not be empty"));
                }
                if class == Class::Call {
                    notification.require_interaction.get_or_insert(true);
                }
                let body = serde_json::json!({ "notification": notification });
                pipeline::json::to_raw(&body)?
            }
            _ => {
                return Err(format!(
                    "`{field}` needs `payload` or `notification`, not both"
                ));
            }
        };
        let limit = MAX_PAYLOAD_BYTES;
        if payload.get().len() > limit {
            return Err(format!(
                "`{field}.payload` is over Web Push's {limit} bytes"
            ));
        }
        if encrypt {
            let sealed = jwe::envelope_len(&payload, None, jwe::MAX_KID)?;
            if sealed > limit {
                return Err(format!(
                    "`{field}.payload` is over Web Push's {limit} bytes once encrypted ({sealed} bytes)"
                ));
            }
        }
        if let Some(topic) = &request.topic {
            if topic.is_empty()
                || topic.len() > MAX_TOPIC
                || !topic
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
            {
                return Err(format!(
                    "`{field}.topic` must be 1 to {MAX_TOPIC} characters of A-Z a-z 0-9 - _"
                ));
            }
        }
        pipeline::json::to_raw(&WebPushPart {
            payload,
            urgency: request.urgency.unwrap_or(urgency_of(class)),
            topic: request.topic,
        })
    }

    /// Rings from any description of the call: the service worker gets it as it came.
    fn call_part(&self, payload: &RawValue, _own: bool) -> Option<Box<RawValue>> {
        pipeline::json::to_raw(&WebPushPart {
            payload: payload.to_owned(),
            urgency: Urgency::High,
            topic: None,
        })
        .ok()
    }

    /// The payload becomes `{"jwe":"<JWE of the payload>"}`, inside Web Push's own
    /// encryption.
    fn encrypt(&self, part: &RawValue, key: &ContentKey, kid: &str) -> Result<Box<RawValue>, Skip> {
        let mut part: WebPushPart =
            serde_json::from_str(part.get()).map_err(|_| Skip::Malformed)?;
        part.payload = pipeline::provider::seal(&part.payload, key, kid, None, MAX_PAYLOAD_BYTES)?;
        pipeline::json::to_raw(&part).map_err(|_| Skip::Malformed)
    }

    /// An `unread` member of the payload the service worker reads (an object payload,
    /// still within the size limit).
    fn badge(&self, part: &RawValue, unread: u64) -> Option<Box<RawValue>> {
        let mut part: WebPushPart = serde_json::from_str(part.get()).ok()?;
        let count = RawValue::from_string(unread.to_string()).ok()?;
        part.payload = pipeline::json::with_member(&part.payload, &["unread"], &count)?;
        if part.payload.get().len() > MAX_PAYLOAD_BYTES {
            return None;
        }
        pipeline::json::to_raw(&part).ok()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.into()).expect("json")
    }

    /// Keys of a real P-256 point, as a browser registers them.
    pub(crate) fn browser_keys() -> String {
        let rng = ring::rand::SystemRandom::new();
        let private =
            ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::ECDH_P256, &rng)
                .expect("key");
        let public = private.compute_public_key().expect("public");
        format!(
            r#"{{"p256dh":"{}","auth":"{}"}}"#,
            URL_SAFE_NO_PAD.encode(public.as_ref()),
            URL_SAFE_NO_PAD.encode([9u8; 16])
        )
    }

    #[test]
    fn webpush_meets_the_provider_contract() {
        pipeline::provider::conformance(
            &SPEC,
            "https://push.example.net/wpush/v2/abc",
            Some(&raw(&browser_keys())),
            &raw(r#"{"payload":{"callId":"c"}}"#),
        );
    }

    #[test]
    fn endpoints_are_https_urls() {
        assert!(
            SPEC.check_token("t", "https://fcm.googleapis.com/fcm/send/x:y")
                .is_ok()
        );
        for bad in [
            "http://push.example.net/x",
            "https://",
            "https://push.example.net/a b",
            &format!("https://push.example.net/{}", "x".repeat(2_048)),
        ] {
            assert!(SPEC.check_token("t", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_must_be_a_p256_point_and_a_16_byte_secret() {
        assert!(SPEC.check_keys("k", Some(&raw(&browser_keys()))).is_ok());
        let error = SPEC.check_keys("k", None).expect_err("required");
        assert!(error.contains("`k` is required"), "{error}");
        let not_a_point = format!(
            r#"{{"p256dh":"{}","auth":"{}"}}"#,
            URL_SAFE_NO_PAD.encode([4u8; 65]),
            URL_SAFE_NO_PAD.encode([1u8; 16])
        );
        let error = SPEC
            .check_keys("k", Some(&raw(&not_a_point)))
            .expect_err("not on the curve");
        assert!(error.contains("not a point on P-256"), "{error}");
        let short_auth = browser_keys().replace(&URL_SAFE_NO_PAD.encode([9u8; 16]), "AAAA");
        let error = SPEC
            .check_keys("k", Some(&raw(&short_auth)))
            .expect_err("auth");
        assert!(error.contains("`auth` must be 16 bytes"), "{error}");
    }

    #[test]
    fn a_notification_for_a_call_requires_interaction_and_is_urgent() {
        let part = SPEC
            .part(
                "webpush",
                Class::Call,
                false,
                &raw(r#"{"notification":{"title":"Alice calling","actions":[{"action":"answer","title":"Answer"}]}}"#),
            )
            .expect("part");
        let part: WebPushPart = serde_json::from_str(part.get()).expect("part");
        assert_eq!(part.urgency, Urgency::High);
        let payload: serde_json::Value = serde_json::from_str(part.payload.get()).expect("json");
        assert_eq!(payload["notification"]["title"], "Alice calling");
        assert_eq!(payload["notification"]["requireInteraction"], true);
        assert_eq!(payload["notification"]["actions"][0]["action"], "answer");
        let alert = SPEC
            .part(
                "webpush",
                Class::Alert,
                false,
                &raw(r#"{"notification":{"title":"Hi"}}"#),
            )
            .expect("alert");
        let alert: WebPushPart = serde_json::from_str(alert.get()).expect("part");
        assert_eq!(alert.urgency, Urgency::Normal);
        assert!(!alert.payload.get().contains("requireInteraction"));
    }

    #[test]
    fn unacceptable_requests_name_the_field() {
        for (request, needle) in [
            (r#"{}"#, "needs `payload` or `notification`"),
            (r#"{"payload":{},"notification":{"title":"x"}}"#, "not both"),
            (
                r#"{"payload":[1]}"#,
                "`webpush.payload` must be a JSON object",
            ),
            (
                r#"{"notification":{"title":""}}"#,
                "`webpush.notification.title`",
            ),
            (r#"{"payload":{},"topic":"a.b"}"#, "`webpush.topic`"),
            (r#"{"payload":{},"urgency":"now"}"#, "`webpush.urgency`"),
        ] {
            let error = SPEC
                .part("webpush", Class::Call, false, &raw(request))
                .expect_err(request);
            assert!(error.contains(needle), "{request}: {error}");
        }
        let big = format!(
            r#"{{"payload":{{"x":"{}"}}}}"#,
            "y".repeat(MAX_PAYLOAD_BYTES)
        );
        let error = SPEC
            .part("webpush", Class::Call, false, &raw(&big))
            .expect_err("big");
        assert!(error.contains("over Web Push's 3993 bytes"), "{error}");
    }

    #[test]
    fn the_unread_count_joins_an_object_payload_only() {
        let part = raw(r#"{"payload":{"title":"Hi","n":1.50},"urgency":"normal"}"#);
        let badged = SPEC.badge(&part, 4).expect("badged");
        let badged: WebPushPart = serde_json::from_str(badged.get()).expect("part");
        assert_eq!(
            badged.payload.get(),
            r#"{"n":1.50,"title":"Hi","unread":4}"#
        );
        let text = raw(r#"{"payload":"plain","urgency":"normal"}"#);
        assert!(SPEC.badge(&text, 4).is_none());
    }
}
