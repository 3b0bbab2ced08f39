//! Input rules for device registrations: small pure functions, each naming the field.

use pipeline::contract::Platform;

/// Longest person id, in characters.
pub use pipeline::contract::MAX_PERSON_ID;
/// Longest FCM token.
pub const MAX_FCM_TOKEN: usize = 4_096;
/// Longest app id (bundle id / project id).
pub const MAX_APP: usize = 255;
/// Longest device id.
pub const MAX_DEVICE_ID: usize = 128;

/// A person id, by the one rule of [`pipeline::contract::check_person_id`].
pub fn person_id(field: &str, value: &str) -> Result<(), String> {
    pipeline::contract::check_person_id(field, value)
}

/// A device token in the provider's format: APNs tokens are an even number (64 today, at
/// most 200) of hex digits; FCM tokens are up to 4096 characters of `A-Z a-z 0-9 _ - :`.
pub fn token(field: &str, platform: Platform, value: &str) -> Result<(), String> {
    match platform {
        Platform::Apns => {
            if value.len() < 64
                || value.len() > 200
                || value.len() % 2 != 0
                || !value.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(format!(
                    "`{field}` must be an APNs token: 64 to 200 hex digits"
                ));
            }
        }
        Platform::Fcm => {
            if value.len() < 16
                || value.len() > MAX_FCM_TOKEN
                || !value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':'))
            {
                return Err(format!(
                    "`{field}` must be an FCM token: 16 to {MAX_FCM_TOKEN} characters of A-Z a-z 0-9 _ - :"
                ));
            }
        }
    }
    Ok(())
}

/// A token in a field of the Webex sample server's `/register`, which names the provider
/// by field: an FCM token in `voipToken` or `msgToken` is refused with where it belongs.
/// (An APNs token is hex, which FCM's alphabet includes, so `fcmToken` cannot tell.)
pub fn sample_token(field: &str, platform: Platform, value: &str) -> Result<(), String> {
    token(field, platform, value).map_err(|error| {
        if platform == Platform::Apns && token(field, Platform::Fcm, value).is_ok() {
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

/// A token of either platform (for deletes, where the platform is not given).
pub fn any_token(field: &str, value: &str) -> Result<(), String> {
    token(field, Platform::Apns, value)
        .or_else(|_| token(field, Platform::Fcm, value))
        .map_err(|_| format!("`{field}` is not an APNs or FCM device token"))
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
    fn apns_tokens_are_hex_of_sane_length() {
        let good = "a".repeat(64);
        assert!(token("t", Platform::Apns, &good).is_ok());
        assert!(token("t", Platform::Apns, &"g".repeat(64)).is_err());
        assert!(token("t", Platform::Apns, &"a".repeat(63)).is_err());
        assert!(token("t", Platform::Apns, &"a".repeat(202)).is_err());
    }

    #[test]
    fn fcm_tokens_allow_their_charset_only() {
        assert!(token("t", Platform::Fcm, "dGVzdA:APA91bH-x_y0123456789").is_ok());
        assert!(token("t", Platform::Fcm, "has space in it 0123456789").is_err());
        assert!(token("t", Platform::Fcm, "short").is_err());
    }

    #[test]
    fn person_ids_cannot_break_the_hash_tag() {
        assert!(person_id("p", "Y2lzY29zcGFyazovL3VzL1BFT1BMRS8x").is_ok());
        assert!(person_id("p", "a}b").is_err());
        assert!(person_id("p", "").is_err());
        assert!(person_id("p", "a\nb").is_err());
        assert!(person_id("p", &"x".repeat(513)).is_err());
    }

    #[test]
    fn a_token_in_the_wrong_sample_field_says_where_it_belongs() {
        let fcm = "dGVzdA:APA91bH-x_y0123456789";
        let error = sample_token("msgToken", Platform::Apns, fcm).expect_err("fcm in msgToken");
        assert!(
            error.contains("FCM token, not an APNs one; send it as fcmToken"),
            "{error}"
        );
        let apns = "ab".repeat(32);
        let error = sample_token("voipToken", Platform::Apns, "x").expect_err("neither");
        assert!(error.contains("64 to 200 hex digits"), "{error}");
        assert!(sample_token("voipToken", Platform::Apns, &apns).is_ok());
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
