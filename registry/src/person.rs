//! Person ids. Webex person ids are base64 of `ciscospark://<region>/PEOPLE/<uuid>`; apps
//! and producers send either that form or the bare uuid. The registry keys everything by
//! the canonical form — the lowercase uuid for Webex ids, the id unchanged otherwise — so
//! a device registered under one form receives events addressed with the other.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

/// The canonical form of `id`.
pub fn canonical(id: &str) -> Cow<'_, str> {
    let trimmed = id.trim_end_matches('=');
    let decoded = STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed));
    if let Ok(bytes) = decoded {
        if let Ok(text) = std::str::from_utf8(&bytes) {
            if let Some(rest) = text.strip_prefix("ciscospark://") {
                if let Some((_, uuid)) = rest.split_once("/PEOPLE/") {
                    if !uuid.is_empty() && !uuid.contains('/') {
                        return Cow::Owned(uuid.to_ascii_lowercase());
                    }
                }
            }
        }
    }
    Cow::Borrowed(id)
}

/// Whether `a` and `b` name the same person.
pub fn same(a: &str, b: &str) -> bool {
    canonical(a) == canonical(b)
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
        assert_eq!(canonical(&webex_id("us", UUID)), UUID);
        assert_eq!(canonical(&webex_id("eu", &UUID.to_uppercase())), UUID);
        assert!(same(&webex_id("us", UUID), UUID));
        assert!(!same(&webex_id("us", UUID), "someone-else"));
    }

    #[test]
    fn other_ids_stay_as_they_are() {
        assert_eq!(canonical("user-42"), "user-42");
        let room = STANDARD_NO_PAD.encode("ciscospark://us/ROOM/abc");
        assert_eq!(canonical(&room), room);
    }
}
