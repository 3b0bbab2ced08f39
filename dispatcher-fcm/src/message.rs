//! The FCM HTTP v1 request body for one job:
//!
//! ```json
//! {"message":{"token":"…","data":{…},"android":{"priority":"HIGH","ttl":"42.5s","collapse_key":"…","notification":{…}}}}
//! ```
//!
//! `data` is the event's `fcmPayload`. FCM wants a map of strings: when every value is a
//! string (the normal case) the payload is sent exactly as received, byte for byte; a
//! non-string value is sent as its JSON text (`{"n":1}` → `{"n":"1"}`, `{"o":{"a":1}}` →
//! `{"o":"{\"a\":1}"}`), keys in their original order.

use std::borrow::Cow;
use std::fmt;

use crate::spec::{FcmPart, FcmPriority};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The `data` object as FCM accepts it; borrowed when the payload is already a string map.
pub fn data_map(raw: &RawValue) -> Result<Cow<'_, str>, String> {
    let entries = ordered_entries(raw.get())?;
    if entries.iter().all(|(_, v)| v.get().starts_with('"')) {
        return Ok(Cow::Borrowed(raw.get()));
    }
    let mut out = String::with_capacity(raw.get().len() + 16);
    out.push('{');
    for (i, (key, value)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(key.as_ref()).map_err(|e| e.to_string())?);
        out.push(':');
        if value.get().starts_with('"') {
            out.push_str(value.get());
        } else {
            out.push_str(&serde_json::to_string(value.get()).map_err(|e| e.to_string())?);
        }
    }
    out.push('}');
    Ok(Cow::Owned(out))
}

type Entries<'a> = Vec<(Cow<'a, str>, &'a RawValue)>;

fn ordered_entries(json: &str) -> Result<Entries<'_>, String> {
    struct Ordered;
    impl<'de> Visitor<'de> for Ordered {
        type Value = Entries<'de>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
            while let Some(entry) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                entries.push(entry);
            }
            Ok(entries)
        }
    }
    let mut de = serde_json::Deserializer::from_str(json);
    de.deserialize_map(Ordered)
        .map_err(|e| format!("fcmPayload must be a JSON object: {e}"))
}

/// FCM's `ttl`: seconds with up to 9 decimals and an `s`, e.g. `"42.5s"`.
pub fn ttl(remaining_ms: u64) -> String {
    format!("{}.{:03}s", remaining_ms / 1000, remaining_ms % 1000)
}

/// The request body for `token`, with `remaining_ms` until the deadline.
pub fn body(token: &str, part: &FcmPart, remaining_ms: u64) -> Result<String, String> {
    let data = data_map(&part.data)?;
    let token = serde_json::to_string(token).map_err(|e| e.to_string())?;
    let priority = match part.priority.unwrap_or(FcmPriority::High) {
        FcmPriority::High => "HIGH",
        FcmPriority::Normal => "NORMAL",
    };
    let collapse = match &part.collapse_key {
        Some(key) => format!(
            ",\"collapse_key\":{}",
            serde_json::to_string(key).map_err(|e| e.to_string())?
        ),
        None => String::new(),
    };
    let notification = match &part.notification {
        Some(notification) => format!(",\"notification\":{}", notification.get()),
        None => String::new(),
    };
    Ok(format!(
        r#"{{"message":{{"token":{token},"data":{data},"android":{{"priority":"{priority}","ttl":"{}"{collapse}{notification}}}}}}}"#,
        ttl(remaining_ms)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).expect("raw")
    }

    #[test]
    fn string_maps_pass_through_byte_for_byte() {
        let payload = r#"{ "b" : "2", "a":"\u00e9 1" }"#;
        let r = raw(payload);
        assert!(matches!(data_map(&r), Ok(Cow::Borrowed(p)) if p == payload));
    }

    #[test]
    fn non_string_values_become_their_json_text_in_order() {
        let r = raw(r#"{"z":1,"a":{"x":[1,2]},"s":"keep","t":true,"n":null}"#);
        assert_eq!(
            data_map(&r).expect("map"),
            r#"{"z":"1","a":"{\"x\":[1,2]}","s":"keep","t":"true","n":"null"}"#
        );
    }

    #[test]
    fn a_non_object_is_refused() {
        assert!(data_map(&raw("[1]")).is_err());
        assert!(data_map(&raw(r#""x""#)).is_err());
    }

    #[test]
    fn body_carries_priority_ttl_and_collapse_key() {
        let part = FcmPart {
            data: raw(r#"{"k":"v"}"#),
            priority: Some(FcmPriority::High),
            collapse_key: Some("call-1".into()),
            notification: Some(raw(r#"{"title":"Ada"}"#)),
        };
        let b = body("tok\"en", &part, 42_500).expect("body");
        assert_eq!(
            b,
            r#"{"message":{"token":"tok\"en","data":{"k":"v"},"android":{"priority":"HIGH","ttl":"42.500s","collapse_key":"call-1","notification":{"title":"Ada"}}}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&b).expect("valid JSON");
        assert_eq!(v["message"]["android"]["ttl"], "42.500s");
    }
}
