//! What the rest of pushline knows of in-app messages ([`pipeline::provider::Spec`]): a
//! device is an app installation registered with `platform: "inapp"` (its token is the
//! installation id), every device is on the `alert` channel and gets every class, and the
//! part is [`InAppPart`]: the JSON object the app renders, with its category and actions.
//! Its jobs are held in `INAPP` for the device (`docs/inapp.md`), never sent by a
//! dispatcher; a Webex call rings by push, not in-app ([`Spec::call_part`] is `None`).

use pipeline::contract::{Channel, Class};
use pipeline::jwe::ContentKey;
use pipeline::provider::{Skip, Spec};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The provider's name.
pub const NAME: &str = "inapp";

/// Largest payload a producer may send, bytes.
pub const MAX_PAYLOAD_BYTES: usize = 4_096;
/// Largest payload once encrypted (a JWE envelope of a [`MAX_PAYLOAD_BYTES`] payload).
pub const MAX_SEALED_BYTES: usize = 6_144;
/// Most actions of a prompt.
pub const MAX_ACTIONS: usize = 8;
/// Longest action id.
pub const MAX_ACTION_ID: usize = 64;
/// Longest action title, in characters.
pub const MAX_ACTION_TITLE: usize = 128;
/// Shortest and longest installation id (the device's in-app token).
pub const TOKEN_LEN: std::ops::RangeInclusive<usize> = 8..=128;

/// How the app shows a message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// A message in the app's own list or toast.
    #[default]
    Message,
    /// A banner across the app.
    Banner,
    /// A question with buttons ([`InAppPart::actions`]).
    Prompt,
    /// A full-screen message between two screens.
    Interstitial,
    /// An item of a live feed.
    Feed,
}

/// A button of a prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// What the app reports when the button is pressed: 1 to [`MAX_ACTION_ID`] of
    /// `A-Z a-z 0-9 . _ -`.
    pub id: String,
    /// The button's label.
    pub title: String,
}

/// The in-app part of an event: what the app receives in a `message` frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InAppPart {
    /// The JSON object the app renders, byte for byte (or `{"jwe":"…"}` once encrypted).
    pub payload: Box<RawValue>,
    /// How the app shows it.
    #[serde(default)]
    pub category: Category,
    /// Buttons, for prompts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Action>,
}

/// In-app messages, as the registry and ingest know them.
#[derive(Debug)]
pub struct InApp;

/// The one [`InApp`].
pub static SPEC: InApp = InApp;

impl Spec for InApp {
    fn name(&self) -> &'static str {
        NAME
    }

    fn default_channel(&self) -> Channel {
        Channel::Alert
    }

    /// An app in use takes every class of message it is sent.
    fn wants(&self, _class: Class, channel: Channel) -> bool {
        channel == Channel::Alert
    }

    /// An installation id: 8 to 128 characters of `A-Z a-z 0-9 . _ - :`.
    fn check_token(&self, field: &str, token: &str) -> Result<(), String> {
        let fine = TOKEN_LEN.contains(&token.len())
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
        if !fine {
            return Err(format!(
                "`{field}` must be an installation id: {} to {} characters of A-Z a-z 0-9 . _ - :",
                TOKEN_LEN.start(),
                TOKEN_LEN.end()
            ));
        }
        Ok(())
    }

    fn held(&self) -> bool {
        true
    }

    fn part(
        &self,
        field: &str,
        _class: Class,
        encrypt: bool,
        request: &RawValue,
    ) -> Result<Box<RawValue>, String> {
        let part: InAppPart = pipeline::json::parse_at(field, request)?;
        check_part(field, &part)?;
        if encrypt {
            let sealed = pipeline::jwe::envelope_len(&part.payload, None, pipeline::jwe::MAX_KID)?;
            if sealed > MAX_SEALED_BYTES {
                return Err(format!(
                    "`{field}.payload` is over {MAX_SEALED_BYTES} bytes once encrypted ({sealed} bytes)"
                ));
            }
        }
        pipeline::json::to_raw(&part)
    }

    /// A call rings by push: an in-app message has nothing to ring from a call's
    /// description.
    fn call_part(&self, _payload: &RawValue, _own: bool) -> Option<Box<RawValue>> {
        None
    }

    /// The payload becomes `{"jwe":"<JWE of the payload>"}`; category and actions stay
    /// readable, so the app can lay out a prompt before it decrypts.
    fn encrypt(&self, part: &RawValue, key: &ContentKey, kid: &str) -> Result<Box<RawValue>, Skip> {
        let mut part: InAppPart = serde_json::from_str(part.get()).map_err(|_| Skip::Malformed)?;
        part.payload = pipeline::provider::seal(&part.payload, key, kid, None, MAX_SEALED_BYTES)?;
        pipeline::json::to_raw(&part).map_err(|_| Skip::Malformed)
    }
}

/// The part's rules, naming the field at fault.
fn check_part(field: &str, part: &InAppPart) -> Result<(), String> {
    if !part.payload.get().starts_with('{') {
        return Err(format!("`{field}.payload` must be a JSON object"));
    }
    if part.payload.get().len() > MAX_PAYLOAD_BYTES {
        return Err(format!(
            "`{field}.payload` is over {MAX_PAYLOAD_BYTES} bytes"
        ));
    }
    if part.actions.len() > MAX_ACTIONS {
        return Err(format!(
            "`{field}.actions` has more than {MAX_ACTIONS} actions"
        ));
    }
    for (i, action) in part.actions.iter().enumerate() {
        let id_fine = (1..=MAX_ACTION_ID).contains(&action.id.len())
            && action
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !id_fine {
            return Err(format!(
                "`{field}.actions[{i}].id` must be 1 to {MAX_ACTION_ID} characters of A-Z a-z 0-9 . _ -"
            ));
        }
        let count = action.title.chars().count();
        if count == 0 || count > MAX_ACTION_TITLE || action.title.chars().any(char::is_control) {
            return Err(format!(
                "`{field}.actions[{i}].title` must be 1 to {MAX_ACTION_TITLE} characters, no control characters"
            ));
        }
        if part.actions[..i].iter().any(|other| other.id == action.id) {
            return Err(format!(
                "`{field}.actions[{i}].id` `{}` is given twice",
                action.id
            ));
        }
    }
    if !part.actions.is_empty() && part.category != Category::Prompt {
        return Err(format!("`{field}.actions` are for `category: \"prompt\"`"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.into()).expect("json")
    }

    #[test]
    fn inapp_meets_the_provider_contract() {
        pipeline::provider::conformance(
            &SPEC,
            "8c1e6f2a-3b7d-4e0a-9f55-2a6c1d7e9b10",
            None,
            &raw(r#"{"payload":{"title":"Hi"}}"#),
        );
    }

    #[test]
    fn tokens_are_installation_ids() {
        assert!(SPEC.check_token("t", "install-0001").is_ok());
        for bad in ["short", "has space 123", &"x".repeat(129), "a/b/c/d/e/f"] {
            assert!(SPEC.check_token("t", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_prompt_keeps_its_payload_byte_for_byte_with_its_actions() {
        let request = r#"{"payload":{"b": 1,  "a":"x"},"category":"prompt","actions":[{"id":"yes","title":"Yes"},{"id":"no","title":"No"}]}"#;
        let part = SPEC
            .part("inapp", Class::Alert, false, &raw(request))
            .expect("part");
        let part: InAppPart = serde_json::from_str(part.get()).expect("part");
        assert_eq!(part.payload.get(), r#"{"b": 1,  "a":"x"}"#);
        assert_eq!(part.category, Category::Prompt);
        assert_eq!(part.actions.len(), 2);
    }

    #[test]
    fn unacceptable_parts_name_the_field() {
        let big = format!(
            r#"{{"payload":{{"x":"{}"}}}}"#,
            "y".repeat(MAX_PAYLOAD_BYTES)
        );
        for (request, needle) in [
            (r#"{}"#, "`inapp`"),
            (
                r#"{"payload":[1]}"#,
                "`inapp.payload` must be a JSON object",
            ),
            (big.as_str(), "`inapp.payload` is over 4096 bytes"),
            (r#"{"payload":{},"category":"popup"}"#, "`inapp.category`"),
            (
                r#"{"payload":{},"actions":[{"id":"a","title":"A"}]}"#,
                "are for `category: \"prompt\"`",
            ),
            (
                r#"{"payload":{},"category":"prompt","actions":[{"id":"a b","title":"A"}]}"#,
                "`inapp.actions[0].id`",
            ),
            (
                r#"{"payload":{},"category":"prompt","actions":[{"id":"a","title":"A"},{"id":"a","title":"B"}]}"#,
                "given twice",
            ),
            (
                r#"{"payload":{},"category":"prompt","actions":[{"id":"a","title":""}]}"#,
                "`inapp.actions[0].title`",
            ),
            (r#"{"payload":{},"extra":1}"#, "unknown field `extra`"),
        ] {
            let error = SPEC
                .part("inapp", Class::Alert, false, &raw(request))
                .expect_err(request);
            assert!(error.contains(needle), "{request}: {error}");
        }
    }

    #[test]
    fn in_app_jobs_are_held_and_calls_ring_by_push() {
        assert!(SPEC.held());
        assert!(SPEC.call_part(&raw(r#"{"callId":"c"}"#), false).is_none());
    }
}
