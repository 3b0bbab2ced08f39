//! Push Kit's answers and what pushline does about each ([`classify`], a pure function).
//!
//! Every answer, success included, is `{"code":"…","msg":"…","requestId":"…"}`; the
//! `code` decides, whatever the HTTP status (Huawei answers most failures with 4xx or
//! 5xx, a partial failure with 200). The HTTP status decides only when there is no code.
//!
//! | code | meaning | verdict |
//! |---|---|---|
//! | `80000000` | sent | delivered (`requestId` is the id) |
//! | `80100000` | sent to some tokens; `msg` lists `illegal_tokens` | the job's token among them → invalid token → feedback; else delivered |
//! | `80300007` | every token is invalid | invalid token → feedback |
//! | `80200001` (OAuth authentication error), `80200003` (access token expired) | the client renews its access token once and resends (not when a refused token was renewed under a minute ago: [`crate::oauth::renewal_worthwhile`]); then retry, a credential fault |
//! | `80300002` | the app may not send messages | reject, a credential fault |
//! | `80100001` (parameter), `80100003` (message structure), `80100004` (TTL), `80100016` (content refused), `80300008` (body too large), `80300010` (token count) | the message is wrong | reject → dead letter |
//! | `80600003` (OAuth service unreachable), `81000001` (internal error) | Huawei's fault | retry, honouring `Retry-After` |
//! | any other code | | HTTP 429 / 5xx → retry; else reject, the code kept in the detail |
//!
//! A detail carries `msg` only through [`shown_msg`]: Huawei lists failed tokens in it,
//! and details are logged and dead-lettered.
//! | no code | | 2xx → delivered; 401 → renew once, then retry (credential); 403 → reject (credential); 429 / 5xx (503 is Huawei's flow control) → retry with `Retry-After`; else reject |

use std::time::Duration;

use pipeline::dispatch::Verdict;
use serde::{Deserialize, Deserializer};

/// Sent.
pub const SUCCESS: &str = "80000000";
/// Sent to some of the tokens only.
pub const PARTIAL: &str = "80100000";
/// Every token of the message is invalid.
pub const INVALID_TOKEN: &str = "80300007";
/// The access token was not accepted.
pub const OAUTH_FAILED: &str = "80200001";
/// The access token has expired.
pub const OAUTH_EXPIRED: &str = "80200003";
/// The app is not permitted to send.
pub const NOT_PERMITTED: &str = "80300002";

/// Push Kit's answer body.
#[derive(Debug, Default, Deserialize)]
pub struct Answer {
    /// The result code (a string of digits; a number is taken too).
    #[serde(default, deserialize_with = "code")]
    pub code: String,
    /// The result message; for [`PARTIAL`], JSON text naming the tokens that failed.
    #[serde(default)]
    pub msg: String,
    /// Huawei's id of the request.
    #[serde(default, rename = "requestId")]
    pub request_id: Option<String>,
}

fn code<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Code {
        Text(String),
        Number(u64),
    }
    Ok(match Code::deserialize(deserializer)? {
        Code::Text(text) => text,
        Code::Number(number) => number.to_string(),
    })
}

/// What `msg` says of a partial failure.
#[derive(Debug, Default, Deserialize)]
struct Partial {
    #[serde(default)]
    illegal_tokens: Vec<String>,
}

/// Bounded label for a Push Kit code.
fn label(code: &str) -> &'static str {
    match code {
        "80000000" => "80000000",
        "80100000" => "80100000",
        "80100001" => "80100001",
        "80100003" => "80100003",
        "80100004" => "80100004",
        "80100016" => "80100016",
        "80200001" => "80200001",
        "80200003" => "80200003",
        "80300002" => "80300002",
        "80300007" => "80300007",
        "80300008" => "80300008",
        "80300010" => "80300010",
        "80600003" => "80600003",
        "81000001" => "81000001",
        _ => "Unknown",
    }
}

fn status_label(status: u16) -> &'static str {
    match status {
        400 => "status_400",
        401 => "status_401",
        403 => "status_403",
        404 => "status_404",
        413 => "status_413",
        429 => "status_429",
        500 => "status_500",
        502 => "status_502",
        503 => "status_503",
        504 => "status_504",
        _ => "status_other",
    }
}

/// Whether the answer refused pushline's access token, so that one fresh token is worth
/// a second try.
pub fn needs_new_token(status: u16, answer: &Answer) -> bool {
    match answer.code.as_str() {
        "" => status == 401,
        code => code == OAUTH_FAILED || code == OAUTH_EXPIRED,
    }
}

/// What to do about Push Kit's answer to a push to `token`.
pub fn classify(
    status: u16,
    answer: &Answer,
    retry_after: Option<Duration>,
    token: &str,
) -> Verdict {
    let verdict = classify_push(status, answer, retry_after, token);
    let credential = match answer.code.as_str() {
        "" => status == 401 || status == 403,
        code => matches!(code, OAUTH_FAILED | OAUTH_EXPIRED | NOT_PERMITTED),
    };
    if credential {
        verdict.of_credential()
    } else {
        verdict
    }
}

/// No access token for a push: retried after the token endpoint's `retry_after`; a token
/// server refusing the app's credentials (a wrong secret, an app that no longer exists)
/// is a refusal of the credential.
pub fn no_access_token(refused: bool, detail: String, retry_after: Option<Duration>) -> Verdict {
    if refused {
        Verdict::retry("oauth_refused", detail, retry_after).of_credential()
    } else {
        Verdict::retry("oauth", detail, retry_after)
    }
}

/// Longest part of Push Kit's `msg` kept in a verdict's detail.
pub const MAX_SHOWN_MSG: usize = 256;

/// Push Kit's `msg` as a verdict's detail may carry it (the detail is logged and
/// dead-lettered): the device token replaced by `<token>` — Huawei lists the tokens
/// that failed in `msg` (`illegal_tokens`, `illegalTokens`) — and cut to
/// [`MAX_SHOWN_MSG`] bytes.
pub fn shown_msg(msg: &str, token: &str) -> String {
    let redacted = if token.is_empty() {
        msg.to_owned()
    } else {
        msg.replace(token, "<token>")
    };
    if redacted.len() <= MAX_SHOWN_MSG {
        return redacted;
    }
    let mut end = MAX_SHOWN_MSG;
    while !redacted.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &redacted[..end])
}

fn classify_push(
    status: u16,
    answer: &Answer,
    retry_after: Option<Duration>,
    token: &str,
) -> Verdict {
    let msg = shown_msg(&answer.msg, token);
    let detail = || format!("Push Kit {status} {}: {msg}", answer.code);
    let retry = |reason| Verdict::retry(reason, detail(), retry_after);
    let delivered = || Verdict::Delivered {
        id: answer.request_id.clone(),
    };
    let invalid = |code: &str| Verdict::InvalidToken {
        reason: label(code),
        detail: format!("{code} {msg}"),
        timestamp_ms: None,
    };
    match answer.code.as_str() {
        SUCCESS => delivered(),
        PARTIAL => {
            let failed = serde_json::from_str::<Partial>(&answer.msg).unwrap_or_default();
            if failed.illegal_tokens.iter().any(|t| t == token) {
                Verdict::InvalidToken {
                    reason: label(PARTIAL),
                    detail: "80100000 illegal token".to_owned(),
                    timestamp_ms: None,
                }
            } else {
                delivered()
            }
        }
        INVALID_TOKEN => invalid(INVALID_TOKEN),
        code @ (OAUTH_FAILED | OAUTH_EXPIRED | "80600003" | "81000001") => retry(label(code)),
        code @ (NOT_PERMITTED | "80100001" | "80100003" | "80100004" | "80100016" | "80300008"
        | "80300010") => Verdict::reject(label(code), detail()),
        "" if (200..300).contains(&status) => delivered(),
        "" if status == 401 || status == 429 || status >= 500 => retry(status_label(status)),
        "" => Verdict::reject(status_label(status), detail()),
        _ if status == 429 || status >= 500 => retry("Unknown"),
        _ => Verdict::reject("Unknown", detail()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "IQAAAACy0kYkAADQmWq2X0s9d2pu7iBEQz8pqOB1c0G4";

    fn answer(code: &str, msg: &str) -> Answer {
        serde_json::from_value(serde_json::json!({"code": code, "msg": msg, "requestId": "1577"}))
            .expect("answer")
    }

    #[test]
    fn success_is_delivered_with_huaweis_request_id() {
        assert_eq!(
            classify(200, &answer("80000000", "Success"), None, TOKEN),
            Verdict::Delivered {
                id: Some("1577".into())
            }
        );
        let numeric: Answer =
            serde_json::from_str(r#"{"code":80000000,"msg":"Success"}"#).expect("number");
        assert!(matches!(
            classify(200, &numeric, None, TOKEN),
            Verdict::Delivered { id: None }
        ));
    }

    #[test]
    fn invalid_tokens_become_feedback() {
        assert!(matches!(
            classify(
                400,
                &answer("80300007", "All the tokens are invalid"),
                None,
                TOKEN
            ),
            Verdict::InvalidToken {
                reason: "80300007",
                ..
            }
        ));
        // Huawei may answer it with 200 too: the code decides.
        assert!(matches!(
            classify(200, &answer("80300007", ""), None, TOKEN),
            Verdict::InvalidToken { .. }
        ));
    }

    #[test]
    fn a_partial_failure_prunes_only_a_token_it_names() {
        let msg = format!(r#"{{"success":0,"failure":1,"illegal_tokens":["{TOKEN}"]}}"#);
        assert!(matches!(
            classify(200, &answer("80100000", &msg), None, TOKEN),
            Verdict::InvalidToken {
                reason: "80100000",
                ..
            }
        ));
        let other = r#"{"success":1,"failure":1,"illegal_tokens":["someone-else"]}"#;
        assert!(matches!(
            classify(200, &answer("80100000", other), None, TOKEN),
            Verdict::Delivered { .. }
        ));
    }

    #[test]
    fn wrong_messages_are_rejected() {
        for code in [
            "80100001", "80100003", "80100004", "80100016", "80300008", "80300010",
        ] {
            match classify(400, &answer(code, "bad"), None, TOKEN) {
                Verdict::Reject {
                    reason,
                    credential: false,
                    ..
                } => assert_eq!(reason, code),
                other => panic!("{code}: {other:?}"),
            }
        }
    }

    #[test]
    fn huaweis_faults_and_flow_control_retry_with_retry_after() {
        let after = Some(Duration::from_secs(7));
        for (status, code) in [
            (500, "81000001"),
            (500, "80600003"),
            (503, ""),
            (429, ""),
            (502, ""),
        ] {
            match classify(status, &answer(code, ""), after, TOKEN) {
                Verdict::Retry {
                    retry_after,
                    credential: false,
                    ..
                } => assert_eq!(retry_after, after, "{status} {code}"),
                other => panic!("{status} {code}: {other:?}"),
            }
        }
        assert!(matches!(
            classify(503, &Answer::default(), None, TOKEN),
            Verdict::Retry {
                reason: "status_503",
                ..
            }
        ));
    }

    #[test]
    fn credential_refusals_say_so_and_nothing_else_does() {
        let refused = [
            classify(
                401,
                &answer("80200001", "Oauth authentication error"),
                None,
                TOKEN,
            ),
            classify(401, &answer("80200003", "Oauth Token expired"), None, TOKEN),
            classify(403, &answer("80300002", "no permission"), None, TOKEN),
            classify(401, &Answer::default(), None, TOKEN),
            classify(403, &Answer::default(), None, TOKEN),
            no_access_token(true, "1101 12304 invalid secret".into(), None),
        ];
        for verdict in refused {
            assert_eq!(verdict.credential_valid(), Some(false), "{verdict:?}");
        }
        let not_credential = [
            classify(503, &Answer::default(), None, TOKEN),
            classify(400, &answer("80100003", ""), None, TOKEN),
            classify(500, &answer("81000001", ""), None, TOKEN),
            no_access_token(false, "unreachable".into(), None),
        ];
        for verdict in not_credential {
            assert_eq!(verdict.credential_valid(), None, "{verdict:?}");
        }
        // A dead token needs an accepted credential to be judged.
        assert_eq!(
            classify(400, &answer("80300007", ""), None, TOKEN).credential_valid(),
            Some(true)
        );
    }

    #[test]
    fn only_a_refused_access_token_is_worth_a_new_one() {
        assert!(needs_new_token(401, &answer("80200001", "")));
        assert!(needs_new_token(401, &answer("80200003", "")));
        assert!(needs_new_token(401, &Answer::default()));
        assert!(!needs_new_token(403, &answer("80300002", "")));
        assert!(!needs_new_token(400, &answer("80300007", "")));
        assert!(!needs_new_token(503, &Answer::default()));
    }

    #[test]
    fn the_token_endpoints_retry_after_reaches_the_verdict() {
        let after = Some(Duration::from_secs(9));
        for refused in [false, true] {
            match no_access_token(refused, "429".into(), after) {
                Verdict::Retry { retry_after, .. } => assert_eq!(retry_after, after),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn device_tokens_in_pushkits_msg_never_reach_the_detail() {
        let msg = format!(r#"{{"failure":1,"illegalTokens":{{"noPushTypeRight":["{TOKEN}"]}}}}"#);
        for (status, code) in [(400, "80300007"), (400, "80999999"), (500, "80999999")] {
            let detail = match classify(status, &answer(code, &msg), None, TOKEN) {
                Verdict::InvalidToken { detail, .. }
                | Verdict::Reject { detail, .. }
                | Verdict::Retry { detail, .. } => detail,
                other => panic!("{other:?}"),
            };
            assert!(!detail.contains(TOKEN), "{code}: {detail}");
            assert!(detail.contains("<token>"), "{code}: {detail}");
        }
        let long = "é".repeat(400);
        let shown = shown_msg(&long, TOKEN);
        assert!(
            shown.len() <= MAX_SHOWN_MSG + '…'.len_utf8(),
            "{}",
            shown.len()
        );
    }

    #[test]
    fn unknown_codes_keep_their_text() {
        match classify(400, &answer("80999999", "what"), None, TOKEN) {
            Verdict::Reject {
                reason,
                detail,
                credential,
            } => {
                assert!(!credential);
                assert_eq!(reason, "Unknown");
                assert!(detail.contains("80999999: what"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(500, &answer("80999999", ""), None, TOKEN),
            Verdict::Retry {
                reason: "Unknown",
                ..
            }
        ));
    }
}
