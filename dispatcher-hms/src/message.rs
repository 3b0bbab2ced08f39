//! The Push Kit request body for one job (`POST /v1/{appId}/messages:send`):
//!
//! ```json
//! {"validate_only":false,"message":{"data":"{\"k\":\"v\"}","android":{"urgency":"HIGH","category":"VOIP","ttl":"42.500s","collapse_key":1,"notification":{…}},"token":["…"]}}
//! ```
//!
//! Push Kit's `data` is a string: the part's `data` object is sent as its JSON text,
//! byte for byte (the app parses it back). `ttl` is the time left until the event's
//! deadline, so Huawei drops a message it could only deliver late; it is never more than
//! Push Kit's 15 days. `urgency` is `HIGH` only with a scenario `category`
//! ([`crate::spec::sent_urgency`]). `notification` is the producer's
//! `AndroidNotification` unaltered.

use crate::spec::{HmsPart, sent_urgency};

/// Push Kit's longest TTL: 15 days, in milliseconds.
pub const MAX_TTL_MS: u64 = 15 * 24 * 3_600 * 1_000;

/// Push Kit's `ttl`: seconds with up to 9 decimals and an `s`, e.g. `"42.500s"`.
pub fn ttl(remaining_ms: u64) -> String {
    let ms = remaining_ms.min(MAX_TTL_MS);
    format!("{}.{:03}s", ms / 1000, ms % 1000)
}

/// The request body for `token`, with `remaining_ms` until the deadline.
pub fn body(token: &str, part: &HmsPart, remaining_ms: u64) -> Result<String, String> {
    let json = |value: &str| serde_json::to_string(value).map_err(|e| e.to_string());
    let data = json(part.data.get())?;
    let urgency = sent_urgency(part.urgency, part.category.as_deref()).as_str();
    let category = match &part.category {
        Some(category) => format!(",\"category\":{}", json(category)?),
        None => String::new(),
    };
    let collapse = match part.collapse_key {
        Some(key) => format!(",\"collapse_key\":{key}"),
        None => String::new(),
    };
    let notification = match &part.notification {
        Some(notification) => format!(",\"notification\":{}", notification.get()),
        None => String::new(),
    };
    Ok(format!(
        r#"{{"validate_only":false,"message":{{"data":{data},"android":{{"urgency":"{urgency}"{category},"ttl":"{}"{collapse}{notification}}},"token":[{}]}}}}"#,
        ttl(remaining_ms),
        json(token)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::HmsUrgency;
    use serde_json::value::RawValue;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).expect("raw")
    }

    #[test]
    fn ttl_is_the_time_left_and_never_past_fifteen_days() {
        assert_eq!(ttl(42_500), "42.500s");
        assert_eq!(ttl(999), "0.999s");
        assert_eq!(ttl(u64::MAX), "1296000.000s");
    }

    #[test]
    fn a_call_carries_urgency_category_ttl_and_its_data_as_a_string() {
        let part = HmsPart {
            data: raw(r#"{ "callId" : "c-1", "n":1 }"#),
            urgency: Some(HmsUrgency::High),
            category: Some("VOIP".into()),
            collapse_key: Some(-1),
            notification: None,
        };
        let b = body("tok\"en", &part, 42_500).expect("body");
        assert_eq!(
            b,
            r#"{"validate_only":false,"message":{"data":"{ \"callId\" : \"c-1\", \"n\":1 }","android":{"urgency":"HIGH","category":"VOIP","ttl":"42.500s","collapse_key":-1},"token":["tok\"en"]}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&b).expect("valid JSON");
        assert_eq!(
            v["message"]["data"].as_str().expect("a string"),
            part.data.get(),
            "the payload's bytes, as a string"
        );
    }

    #[test]
    fn high_urgency_without_a_category_goes_out_normal() {
        let part = HmsPart {
            data: raw("{}"),
            urgency: Some(HmsUrgency::High),
            category: None,
            collapse_key: None,
            notification: None,
        };
        let b = body("t", &part, 1_000).expect("body");
        assert!(b.contains(r#""urgency":"NORMAL""#), "{b}");
    }

    #[test]
    fn a_display_notification_is_sent_byte_for_byte() {
        let part = HmsPart {
            data: raw("{}"),
            urgency: Some(HmsUrgency::Normal),
            category: None,
            collapse_key: None,
            notification: Some(raw(
                r#"{"title":"Ada","click_action":{"type":3},"buttons":[{"name":"Open","action_type":0}]}"#,
            )),
        };
        let b = body("t", &part, 1_000).expect("body");
        assert_eq!(
            b,
            r#"{"validate_only":false,"message":{"data":"{}","android":{"urgency":"NORMAL","ttl":"1.000s","notification":{"title":"Ada","click_action":{"type":3},"buttons":[{"name":"Open","action_type":0}]}},"token":["t"]}}"#
        );
    }
}
