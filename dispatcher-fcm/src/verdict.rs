//! FCM HTTP v1 errors and what pushline does about each ([`classify`], a pure function).
//!
//! The code is `error.details[].errorCode` (type `google.firebase.fcm.v1.FcmError`):
//!
//! | errorCode | verdict |
//! |---|---|
//! | `UNREGISTERED` (404), `SENDER_ID_MISMATCH` (403) | invalid token → feedback |
//! | `INVALID_ARGUMENT` (400) about the registration token | invalid token → feedback |
//! | `INVALID_ARGUMENT` about anything else | reject → dead letter |
//! | `QUOTA_EXCEEDED` (429), `UNAVAILABLE` (503), `INTERNAL` (500) | retry, honouring `Retry-After` |
//! | `THIRD_PARTY_AUTH_ERROR` (401) | reject (the APNs credentials in Firebase are wrong) |
//! | no FCM code: 401 | the client renews its access token once; then retry |
//! | no FCM code: 429 / 5xx | retry; anything else: reject |

use std::time::Duration;

use pipeline::dispatch::Verdict;
use serde::Deserialize;

/// FCM's error body.
#[derive(Debug, Default, Deserialize)]
pub struct ErrorBody {
    /// The `error` object.
    #[serde(default)]
    pub error: Option<ErrorObject>,
}

/// `error`.
#[derive(Debug, Default, Deserialize)]
pub struct ErrorObject {
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
    /// Canonical status, e.g. `NOT_FOUND`.
    #[serde(default)]
    pub status: String,
    /// Typed details.
    #[serde(default)]
    pub details: Vec<Detail>,
}

/// One detail.
#[derive(Debug, Default, Deserialize)]
pub struct Detail {
    /// FCM's error code, on the `FcmError` detail.
    #[serde(rename = "errorCode", default)]
    pub error_code: Option<String>,
}

impl ErrorBody {
    /// The FCM error code, if any detail carries one.
    pub fn code(&self) -> Option<&str> {
        self.error
            .as_ref()?
            .details
            .iter()
            .find_map(|d| d.error_code.as_deref())
    }

    fn message(&self) -> &str {
        self.error
            .as_ref()
            .map(|e| e.message.as_str())
            .unwrap_or("")
    }

    fn status(&self) -> &str {
        self.error.as_ref().map(|e| e.status.as_str()).unwrap_or("")
    }
}

/// Bounded label for an FCM error code.
fn label(code: &str) -> &'static str {
    match code {
        "UNREGISTERED" => "UNREGISTERED",
        "SENDER_ID_MISMATCH" => "SENDER_ID_MISMATCH",
        "INVALID_ARGUMENT" => "INVALID_ARGUMENT",
        "QUOTA_EXCEEDED" => "QUOTA_EXCEEDED",
        "UNAVAILABLE" => "UNAVAILABLE",
        "INTERNAL" => "INTERNAL",
        "THIRD_PARTY_AUTH_ERROR" => "THIRD_PARTY_AUTH_ERROR",
        "UNSPECIFIED_ERROR" => "UNSPECIFIED_ERROR",
        _ => "Unknown",
    }
}

fn status_label(status: u16) -> &'static str {
    match status {
        400 => "status_400",
        401 => "status_401",
        403 => "status_403",
        404 => "status_404",
        429 => "status_429",
        500 => "status_500",
        502 => "status_502",
        503 => "status_503",
        504 => "status_504",
        _ => "status_other",
    }
}

/// What to do about an FCM error answer.
pub fn classify(status: u16, body: &ErrorBody, retry_after: Option<Duration>) -> Verdict {
    let verdict = classify_push(status, body, retry_after);
    let credential = match body.code() {
        Some(code) => code == "THIRD_PARTY_AUTH_ERROR",
        None => status == 401 || status == 403,
    };
    if credential {
        verdict.of_credential()
    } else {
        verdict
    }
}

/// No access token for a push: retried; a token server refusing the service account (a
/// deleted account, a revoked key) is a refusal of the credential.
pub fn no_access_token(refused: bool, detail: String) -> Verdict {
    if refused {
        Verdict::retry("oauth_refused", detail, None).of_credential()
    } else {
        Verdict::retry("oauth", detail, None)
    }
}

fn classify_push(status: u16, body: &ErrorBody, retry_after: Option<Duration>) -> Verdict {
    let detail = format!(
        "FCM {status} {} {}: {}",
        body.status(),
        body.code().unwrap_or("-"),
        body.message()
    );
    let retry = |reason| Verdict::retry(reason, detail.clone(), retry_after);
    match body.code() {
        Some(code @ ("UNREGISTERED" | "SENDER_ID_MISMATCH")) => Verdict::InvalidToken {
            reason: label(code),
            detail: code.to_owned(),
            timestamp_ms: None,
        },
        Some("INVALID_ARGUMENT") if mentions_token(body.message()) => Verdict::InvalidToken {
            reason: "INVALID_ARGUMENT",
            detail: "INVALID_ARGUMENT".to_owned(),
            timestamp_ms: None,
        },
        Some(code @ ("QUOTA_EXCEEDED" | "UNAVAILABLE" | "INTERNAL")) => retry(label(code)),
        Some(code) if status == 429 || status >= 500 => retry(label(code)),
        Some(code) => Verdict::reject(label(code), detail),
        None if status == 401 || status == 429 || status >= 500 => retry(status_label(status)),
        None => Verdict::reject(status_label(status), detail),
    }
}

fn mentions_token(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("registration token") || m.contains("message.token") || m.contains("device token")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: &str, message: &str) -> ErrorBody {
        serde_json::from_value(serde_json::json!({"error": {
            "code": 400, "message": message, "status": "X",
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}]
        }}))
        .expect("body")
    }

    #[test]
    fn dead_tokens_become_feedback() {
        assert!(matches!(
            classify(404, &body("UNREGISTERED", "gone"), None),
            Verdict::InvalidToken {
                reason: "UNREGISTERED",
                ..
            }
        ));
        assert!(matches!(
            classify(403, &body("SENDER_ID_MISMATCH", ""), None),
            Verdict::InvalidToken { .. }
        ));
        assert!(matches!(
            classify(
                400,
                &body(
                    "INVALID_ARGUMENT",
                    "The registration token is not a valid FCM registration token"
                ),
                None
            ),
            Verdict::InvalidToken { .. }
        ));
    }

    #[test]
    fn other_invalid_arguments_are_rejected() {
        assert!(matches!(
            classify(
                400,
                &body("INVALID_ARGUMENT", "Invalid value at 'message.data'"),
                None
            ),
            Verdict::Reject {
                reason: "INVALID_ARGUMENT",
                ..
            }
        ));
        assert!(matches!(
            classify(401, &body("THIRD_PARTY_AUTH_ERROR", ""), None),
            Verdict::Reject { .. }
        ));
    }

    #[test]
    fn quota_and_outages_retry_with_retry_after() {
        let v = classify(
            429,
            &body("QUOTA_EXCEEDED", ""),
            Some(Duration::from_secs(7)),
        );
        assert!(
            matches!(v, Verdict::Retry { retry_after: Some(d), .. } if d == Duration::from_secs(7))
        );
        assert!(matches!(
            classify(503, &body("UNAVAILABLE", ""), None),
            Verdict::Retry { .. }
        ));
        assert!(matches!(
            classify(500, &body("INTERNAL", ""), None),
            Verdict::Retry { .. }
        ));
        assert!(matches!(
            classify(502, &ErrorBody::default(), None),
            Verdict::Retry {
                reason: "status_502",
                ..
            }
        ));
    }

    #[test]
    fn credential_refusals_say_so_and_nothing_else_does() {
        let refused = [
            classify(401, &ErrorBody::default(), None),
            classify(403, &ErrorBody::default(), None),
            classify(401, &body("THIRD_PARTY_AUTH_ERROR", ""), None),
            no_access_token(true, "invalid_grant".into()),
        ];
        for verdict in refused {
            assert_eq!(verdict.credential_valid(), Some(false), "{verdict:?}");
        }
        let not_credential = [
            classify(429, &body("QUOTA_EXCEEDED", ""), None),
            classify(400, &body("INVALID_ARGUMENT", "message.data"), None),
            classify(500, &ErrorBody::default(), None),
            no_access_token(false, "unreachable".into()),
        ];
        for verdict in not_credential {
            assert_eq!(verdict.credential_valid(), None, "{verdict:?}");
        }
        // A dead token needs an accepted credential to be judged.
        assert_eq!(
            classify(403, &body("SENDER_ID_MISMATCH", ""), None).credential_valid(),
            Some(true)
        );
    }

    #[test]
    fn unknown_codes_keep_their_text() {
        match classify(400, &body("BRAND_NEW", "what"), None) {
            Verdict::Reject {
                reason,
                detail,
                credential,
            } => {
                assert!(!credential);
                assert_eq!(reason, "Unknown");
                assert!(detail.contains("BRAND_NEW"));
            }
            other => panic!("{other:?}"),
        }
    }
}
