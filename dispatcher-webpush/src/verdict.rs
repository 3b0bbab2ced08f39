//! What each answer of a push service means ([`classify`], a pure function, so the table
//! is tested directly).
//!
//! | answer | verdict |
//! |---|---|
//! | 2xx | delivered (the push's `Location` is its id; in the client) |
//! | 404, 410 | the subscription is gone: pruned |
//! | 429, 5xx | retried, after `Retry-After` when given |
//! | 413 | payload too large: dead letter |
//! | 401, 403 | the push service refuses the VAPID credential: dead letter, a credential fault |
//! | other 4xx, 3xx | dead letter |

use std::time::Duration;

use pipeline::dispatch::Verdict;

/// A permanent failure of the push (not of the credential).
pub fn reject(reason: &'static str, detail: impl Into<String>) -> Verdict {
    Verdict::reject(reason, detail)
}

/// What an answer other than 2xx means.
pub fn classify(status: u16, retry_after: Option<Duration>, body: &str) -> Verdict {
    let detail = format!(
        "push service answered {status}: {}",
        body.chars().take(200).collect::<String>()
    );
    match status {
        404 | 410 => Verdict::InvalidToken {
            reason: if status == 410 { "gone" } else { "not_found" },
            detail: if status == 410 {
                "Gone".into()
            } else {
                "NotFound".into()
            },
            timestamp_ms: None,
        },
        429 => Verdict::retry("too_many_requests", detail, retry_after),
        500..=599 => Verdict::retry("server_error", detail, retry_after),
        413 => reject("payload_too_large", detail),
        401 | 403 => reject("vapid_refused", detail).of_credential(),
        _ => reject("refused", detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_map_to_verdicts() {
        let retry = Some(Duration::from_secs(7));
        assert!(matches!(
            classify(410, None, ""),
            Verdict::InvalidToken { reason: "gone", .. }
        ));
        assert!(matches!(
            classify(404, None, ""),
            Verdict::InvalidToken {
                reason: "not_found",
                ..
            }
        ));
        assert_eq!(
            classify(429, retry, ""),
            Verdict::Retry {
                reason: "too_many_requests",
                detail: "push service answered 429: ".into(),
                retry_after: retry,
                credential: false,
            }
        );
        assert!(matches!(
            classify(503, None, ""),
            Verdict::Retry {
                reason: "server_error",
                ..
            }
        ));
        assert!(matches!(
            classify(413, None, ""),
            Verdict::Reject {
                reason: "payload_too_large",
                ..
            }
        ));
        assert!(matches!(
            classify(403, None, ""),
            Verdict::Reject {
                reason: "vapid_refused",
                ..
            }
        ));
        assert!(matches!(
            classify(400, None, ""),
            Verdict::Reject {
                reason: "refused",
                ..
            }
        ));
    }

    #[test]
    fn only_a_refused_vapid_key_is_a_credential_fault() {
        for status in [401, 403] {
            assert_eq!(classify(status, None, "").credential_valid(), Some(false));
        }
        for status in [400, 413, 429, 500, 302] {
            assert_eq!(classify(status, None, "").credential_valid(), None);
        }
        assert_eq!(classify(410, None, "").credential_valid(), Some(true));
    }
}
