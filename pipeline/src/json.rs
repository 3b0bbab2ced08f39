//! JSON bodies from outside: cheap structural limits checked before parsing, and parse
//! errors that name the field at fault.

use serde::Deserialize;

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
