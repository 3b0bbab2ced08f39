//! JSON bodies from outside: cheap structural limits checked before parsing, and parse
//! errors that name the field at fault.

use axum::http::{HeaderMap, HeaderValue, header};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Why a request body was refused before parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRefusal {
    /// The content type is not `application/json` (415).
    NotJson,
    /// Longer than the limit, declared or read (413).
    TooLarge,
    /// Nested deeper than allowed (400), with the limit.
    TooDeep(usize),
}

impl std::fmt::Display for BodyRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyRefusal::NotJson => f.write_str("the body must be application/json"),
            BodyRefusal::TooLarge => f.write_str("the body is too large"),
            BodyRefusal::TooDeep(max) => write!(f, "body nests deeper than {max} levels"),
        }
    }
}

/// Whether a `Content-Type` is JSON (`application/json`, any parameters).
pub fn is_json(value: Option<&HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// Reads a JSON request body, the one way every public API does: JSON content type, at
/// most `limit` bytes (a larger declared `Content-Length` is refused before reading), at
/// most `max_depth` levels of nesting.
pub async fn read_body(
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: usize,
    max_depth: usize,
) -> Result<Bytes, BodyRefusal> {
    if !is_json(headers.get(header::CONTENT_TYPE)) {
        return Err(BodyRefusal::NotJson);
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(BodyRefusal::TooLarge);
    }
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| BodyRefusal::TooLarge)?;
    if depth(&bytes) > max_depth {
        return Err(BodyRefusal::TooDeep(max_depth));
    }
    Ok(bytes)
}

/// Parses `bytes` as one `T` (nothing after it); on failure the message names the field
/// (`` `apns.priority`: invalid type… ``) or says `body:` when the problem is the whole
/// document.
pub fn parse<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path == "?" {
            format!("body: {}", e.inner())
        } else {
            format!("`{path}`: {}", e.inner())
        }
    })?;
    de.end().map_err(|e| format!("body: {e}"))?;
    Ok(value)
}

/// Parses the JSON `raw`, found at `field` of a larger document (a provider's part of a
/// request), as one `T`; on failure the message names the field under `field`
/// (`` `apns.priority`: invalid type… ``).
pub fn parse_at<'de, T: Deserialize<'de>>(field: &str, raw: &'de RawValue) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path == "?" {
            format!("`{field}`: {}", e.inner())
        } else {
            format!("`{field}.{path}`: {}", e.inner())
        }
    })
}

/// `value` as raw JSON.
pub fn to_raw<T: serde::Serialize>(value: &T) -> Result<Box<RawValue>, String> {
    serde_json::value::to_raw_value(value).map_err(|e| e.to_string())
}

/// `object` (a JSON object) with the member at `path` set to `value` (JSON), creating the
/// objects on the way; every other member keeps its bytes. `None` when `object`, or an
/// object on the path, is not a JSON object. Members come out in key order.
pub fn with_member(object: &RawValue, path: &[&str], value: &RawValue) -> Option<Box<RawValue>> {
    use std::collections::BTreeMap;
    let (first, rest) = path.split_first()?;
    let mut members: BTreeMap<String, Box<RawValue>> = serde_json::from_str(object.get()).ok()?;
    let inner = if rest.is_empty() {
        value.to_owned()
    } else {
        let empty = RawValue::from_string("{}".into()).ok()?;
        let current = members.get(*first).cloned().unwrap_or(empty);
        with_member(&current, rest, value)?
    };
    members.insert((*first).to_owned(), inner);
    to_raw(&members).ok()
}

/// The deepest nesting of arrays and objects in `bytes` (0 for a scalar). Strings are
/// skipped, escapes honoured; malformed input is measured as far as it goes — the
/// parser reports what is wrong with it.
pub fn depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: &str, length: Option<usize>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).expect("value"),
        );
        if let Some(length) = length {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        headers
    }

    async fn read(headers: &HeaderMap, body: &'static str) -> Result<Bytes, BodyRefusal> {
        read_body(headers, axum::body::Body::from(body), 16, 2).await
    }

    #[tokio::test]
    async fn bodies_are_read_by_one_rule() {
        let json = headers("application/json; charset=utf-8", None);
        assert_eq!(
            read(&json, r#"{"a":[1]}"#).await.as_deref(),
            Ok(&b"{\"a\":[1]}"[..])
        );
        assert_eq!(
            read(&headers("text/plain", None), "{}").await,
            Err(BodyRefusal::NotJson)
        );
        assert_eq!(
            read(&json, r#"{"a":"0123456789abcdef"}"#).await,
            Err(BodyRefusal::TooLarge),
            "read past the limit"
        );
        assert_eq!(
            read(&headers("application/json", Some(17)), "{}").await,
            Err(BodyRefusal::TooLarge),
            "declared past the limit: refused before reading"
        );
        assert_eq!(read(&json, "[[[1]]]").await, Err(BodyRefusal::TooDeep(2)));
        assert_eq!(
            BodyRefusal::TooDeep(2).to_string(),
            "body nests deeper than 2 levels"
        );
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Sample {
        outer: Inner,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        n: u8,
    }

    #[test]
    fn parse_errors_name_the_field_or_the_body() {
        let err = parse::<Sample>(br#"{"outer":{"n":"x"}}"#).expect_err("bad type");
        assert!(err.starts_with("`outer.n`"), "{err}");
        assert!(parse::<Sample>(b"{").expect_err("eof").starts_with("body:"));
        assert!(
            parse::<Sample>(br#"{"outer":{"n":1}} x"#)
                .expect_err("trailing")
                .starts_with("body:")
        );
        assert_eq!(
            parse::<Sample>(br#"{"outer":{"n":1}}"#)
                .expect("ok")
                .outer
                .n,
            1
        );
    }

    #[test]
    fn counts_nesting_outside_strings() {
        assert_eq!(depth(b"1"), 0);
        assert_eq!(depth(br#"{"a":[1,{"b":2}]}"#), 3);
        assert_eq!(depth(br#"{"a":"[[[[{{{{"}"#), 1);
        assert_eq!(depth(br#"{"a":"\"[[["}"#), 1);
        assert_eq!(depth(&[b'['; 10_000]), 10_000);
    }

    #[test]
    fn a_member_is_set_and_every_other_keeps_its_bytes() {
        let raw = |s: &str| RawValue::from_string(s.into()).expect("raw");
        let payload = raw(r#"{"z":1.50,"aps":{"alert":{"title":"Hi"},"badge":9}}"#);
        let set = with_member(&payload, &["aps", "badge"], &raw("3")).expect("set");
        assert_eq!(
            set.get(),
            r#"{"aps":{"alert":{"title":"Hi"},"badge":3},"z":1.50}"#
        );
        let made = with_member(&raw(r#"{"x":[1]}"#), &["aps", "badge"], &raw("0")).expect("made");
        assert_eq!(made.get(), r#"{"aps":{"badge":0},"x":[1]}"#);
        assert!(with_member(&raw("[1]"), &["a"], &raw("1")).is_none());
        assert!(with_member(&raw(r#"{"aps":"x"}"#), &["aps", "badge"], &raw("1")).is_none());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn depth_never_panics_and_bounds_serde(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let depth = super::depth(&bytes);
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                fn nesting(v: &serde_json::Value) -> usize {
                    match v {
                        serde_json::Value::Array(a) => 1 + a.iter().map(nesting).max().unwrap_or(0),
                        serde_json::Value::Object(o) => 1 + o.values().map(nesting).max().unwrap_or(0),
                        _ => 0,
                    }
                }
                prop_assert_eq!(depth, nesting(&value));
            }
        }
    }
}
