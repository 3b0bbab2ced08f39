//! Input rules for device registrations: small pure functions, each naming the field.

use pipeline::provider::{Providers, Spec};

/// Longest person id, in characters.
pub use pipeline::contract::MAX_PERSON_ID;
/// Longest app id (bundle id / project id).
pub const MAX_APP: usize = 255;
/// Longest device id.
pub const MAX_DEVICE_ID: usize = 128;

/// A person id, by the one rule of [`pipeline::contract::check_person_id`], before and
/// after canonicalisation: a base64 Webex id of anything but a person is refused
/// ([`crate::person::parse`]).
pub fn person_id(field: &str, value: &str) -> Result<(), String> {
    crate::person::parse(field, value).map(drop)
}

/// The provider named in `field`, among `providers`.
pub fn provider(
    providers: &Providers,
    field: &str,
    name: &str,
) -> Result<&'static dyn Spec, String> {
    providers
        .get(name)
        .ok_or_else(|| format!("`{field}` must be one of {}", providers.listed()))
}

/// A device token in the format of the provider `platform`.
pub fn token(
    providers: &Providers,
    field: &str,
    platform: &str,
    value: &str,
) -> Result<(), String> {
    provider(providers, "platform", platform)?.check_token(field, value)
}

/// A token in a field of the Webex sample server's `/register`, which names the provider
/// by field: an FCM token in `voipToken` or `msgToken` is refused with where it belongs.
/// (An APNs token is hex, which FCM's alphabet includes, so `fcmToken` cannot tell.)
pub fn sample_token(
    providers: &Providers,
    field: &str,
    platform: &str,
    value: &str,
) -> Result<(), String> {
    token(providers, field, platform, value).map_err(|error| {
        if platform == "apns" && token(providers, field, "fcm", value).is_ok() {
            format!("`{field}` holds an FCM token, not an APNs one; send it as fcmToken")
        } else {
            error
        }
    })
}

/// A device id: 1–128 characters of `A-Z a-z 0-9 . _ - :`.
pub fn device_id(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty()
        || value.len() > MAX_DEVICE_ID
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
    {
        return Err(format!(
            "`{field}` must be 1 to {MAX_DEVICE_ID} characters of A-Z a-z 0-9 . _ - :"
        ));
    }
    Ok(())
}

/// A token of any provider (for deletes, where the provider is not given).
pub fn any_token(providers: &Providers, field: &str, value: &str) -> Result<(), String> {
    if providers
        .iter()
        .any(|spec| spec.check_token(field, value).is_ok())
    {
        return Ok(());
    }
    Err(format!(
        "`{field}` is not a device token of any provider ({})",
        providers.listed()
    ))
}

/// An app id: 1–255 characters of `A-Z a-z 0-9 . _ -`.
pub fn app(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty()
        || value.len() > MAX_APP
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "`{field}` must be 1 to {MAX_APP} characters of A-Z a-z 0-9 . _ -"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_by_their_provider() {
        let all = providers::all();
        assert!(token(&all, "t", "apns", &"a".repeat(64)).is_ok());
        assert!(token(&all, "t", "apns", "dGVzdA:APA91bH-x_y0123456789").is_err());
        assert!(token(&all, "t", "fcm", "dGVzdA:APA91bH-x_y0123456789").is_ok());
        let error = token(&all, "t", "pager", "x").expect_err("unknown provider");
        assert!(
            error.contains(&format!("`platform` must be one of {}", all.listed())),
            "{error}"
        );
        assert!(any_token(&all, "t", &"a".repeat(64)).is_ok());
        let error = any_token(&all, "token", "x y").expect_err("nobody's");
        assert!(error.contains("any provider"), "{error}");
    }

    #[test]
    fn person_ids_cannot_break_the_hash_tag() {
        // ciscospark://us/PEOPLE/0b7a9f3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b
        assert!(
            person_id(
                "p",
                "Y2lzY29zcGFyazovL3VzL1BFT1BMRS8wYjdhOWYzZS0xYzJkLTRlNWYtOGE5Yi0wYzFkMmUzZjRhNWI"
            )
            .is_ok()
        );
        // ciscospark://us/PEOPLE/1: a Webex id, but not of a person.
        assert!(person_id("p", "Y2lzY29zcGFyazovL3VzL1BFT1BMRS8x").is_err());
        assert!(person_id("p", "a}b").is_err());
        assert!(person_id("p", "").is_err());
        assert!(person_id("p", "a\nb").is_err());
        assert!(person_id("p", &"x".repeat(513)).is_err());
    }

    #[test]
    fn a_token_in_the_wrong_sample_field_says_where_it_belongs() {
        let all = providers::all();
        let fcm = "dGVzdA:APA91bH-x_y0123456789";
        let error = sample_token(&all, "msgToken", "apns", fcm).expect_err("fcm in msgToken");
        assert!(
            error.contains("FCM token, not an APNs one; send it as fcmToken"),
            "{error}"
        );
        let apns = "ab".repeat(32);
        let error = sample_token(&all, "voipToken", "apns", "x").expect_err("neither");
        assert!(error.contains("64 to 200 hex digits"), "{error}");
        assert!(sample_token(&all, "voipToken", "apns", &apns).is_ok());
    }

    #[test]
    fn device_ids_are_plain() {
        assert!(device_id("d", "5F2C-iPhone:1").is_ok());
        assert!(device_id("d", "").is_err());
        assert!(device_id("d", "a b").is_err());
        assert!(device_id("d", &"d".repeat(129)).is_err());
    }

    #[test]
    fn app_ids_are_bundle_like() {
        assert!(app("a", "com.example.app").is_ok());
        assert!(app("a", "com/example").is_err());
        assert!(app("a", "").is_err());
    }
}
