//! Person ids. Webex person ids are base64 of `ciscospark://<region>/PEOPLE/<uuid>`; apps
//! and producers send either that form or the bare uuid. The registry keys everything by
//! the canonical form — the lowercase uuid for Webex ids, the id unchanged otherwise — so
//! a device registered under one form receives events addressed with the other.
//!
//! | the id | canonical form |
//! |---|---|
//! | base64 (standard or URL-safe) of exactly `ciscospark://<region>/PEOPLE/<uuid>` | the uuid, lowercase |
//! | base64 of any other `ciscospark://…` (a room, a malformed uuid, trailing bytes) | refused: [`NotAPerson`] |
//! | anything else | unchanged |
//!
//! Whatever comes out is then held to the one person-id rule
//! ([`pipeline::contract::check_person_id`]) by [`parse`], so no canonical id can carry
//! the braces, tabs or newlines the store's keys and token index are built with.
//!
//! Only ids a caller *names* are canonicalised. A JWT's `sub` is the person as the
//! identity provider says it, taken verbatim (see [`crate::auth`]).

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

/// An id that decodes to a Webex `ciscospark://` URI that is not a person's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("is a Webex id that does not name a person (only ciscospark://<region>/PEOPLE/<uuid>)")]
pub struct NotAPerson;

/// The canonical form of `id`, or [`NotAPerson`] for a Webex id of anything but a person.
pub fn canonical(id: &str) -> Result<Cow<'_, str>, NotAPerson> {
    let Some(uri) = webex_uri(id) else {
        return Ok(Cow::Borrowed(id));
    };
    webex_person_uuid(&uri)
        .map(|uuid| Cow::Owned(uuid.to_ascii_lowercase()))
        .ok_or(NotAPerson)
}

/// `id` canonicalised and held to the person-id rule: what the registry accepts as a
/// person named in `field`. The error names the field.
pub fn parse(field: &str, id: &str) -> Result<String, String> {
    pipeline::contract::check_person_id(field, id)?;
    let canonical = canonical(id).map_err(|why| format!("`{field}` {why}"))?;
    pipeline::contract::check_person_id(field, &canonical)?;
    Ok(canonical.into_owned())
}

/// Whether `a` and `b` name the same person (never, when either is not a person id).
pub fn same(a: &str, b: &str) -> bool {
    match (canonical(a), canonical(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The `ciscospark://…` URI `id` is the base64 of, if it is one.
fn webex_uri(id: &str) -> Option<String> {
    let trimmed = id.trim_end_matches('=');
    let bytes = STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed))
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    text.starts_with("ciscospark://").then_some(text)
}

/// The uuid of exactly `ciscospark://<region>/PEOPLE/<uuid>`: the region 1–32 of
/// `A-Z a-z 0-9 -`, the uuid in its 8-4-4-4-12 hex form.
fn webex_person_uuid(uri: &str) -> Option<&str> {
    let rest = uri.strip_prefix("ciscospark://")?;
    let (region, uuid) = rest.split_once("/PEOPLE/")?;
    let region_ok = (1..=32).contains(&region.len())
        && region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    (region_ok && is_uuid(uuid)).then_some(uuid)
}

fn is_uuid(value: &str) -> bool {
    let groups: Vec<&str> = value.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "0b7a9f3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b";

    fn webex_id(region: &str, uuid: &str) -> String {
        STANDARD_NO_PAD.encode(format!("ciscospark://{region}/PEOPLE/{uuid}"))
    }

    #[test]
    fn webex_ids_and_bare_uuids_are_the_same_person() {
        assert_eq!(canonical(&webex_id("us", UUID)).as_deref(), Ok(UUID));
        assert_eq!(
            canonical(&webex_id("eu", &UUID.to_uppercase())).as_deref(),
            Ok(UUID)
        );
        let url_safe = URL_SAFE_NO_PAD.encode(format!("ciscospark://us/PEOPLE/{UUID}"));
        assert_eq!(canonical(&url_safe).as_deref(), Ok(UUID));
        assert!(same(&webex_id("us", UUID), UUID));
        assert!(!same(&webex_id("us", UUID), "someone-else"));
    }

    #[test]
    fn other_ids_stay_as_they_are() {
        assert_eq!(canonical("user-42").as_deref(), Ok("user-42"));
        assert_eq!(canonical(UUID).as_deref(), Ok(UUID));
        assert_eq!(parse("p", "user-42").as_deref(), Ok("user-42"));
    }

    #[test]
    fn webex_ids_of_anything_but_a_person_are_refused() {
        for uri in [
            "ciscospark://us/ROOM/abc".to_owned(),
            "ciscospark://us/PEOPLE/ALICE".to_owned(),
            "ciscospark://us/PEOPLE/x}\ty\nz".to_owned(),
            format!("ciscospark://us/PEOPLE/{UUID}/more"),
            format!("ciscospark://us/PEOPLE/{UUID}\n"),
            format!("ciscospark:///PEOPLE/{UUID}"),
            format!("ciscospark://u s/PEOPLE/{UUID}"),
            "ciscospark://us/PEOPLE/".to_owned(),
        ] {
            let id = STANDARD_NO_PAD.encode(&uri);
            assert_eq!(canonical(&id), Err(NotAPerson), "{uri:?}");
            let error = parse("person_id", &id).expect_err(&uri);
            assert!(error.starts_with("`person_id` is a Webex id"), "{error}");
            assert!(!same(&id, &id), "{uri:?} is nobody, not even itself");
        }
    }

    #[test]
    fn no_canonical_id_can_carry_the_stores_separators() {
        for id in ["a\tb", "a\nb", "x}", "{x"] {
            assert!(parse("p", id).is_err(), "{id:?}");
        }
    }
}
