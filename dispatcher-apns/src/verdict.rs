//! Every APNs error reason, and what pushline does about each (a pure function,
//! [`classify`], so the table is tested directly).
//!
//! | reasons | verdict |
//! |---|---|
//! | `Unregistered`, `ExpiredToken` (410), `BadDeviceToken`, `DeviceTokenNotForTopic` (400) | invalid token → feedback |
//! | `TooManyRequests`, `TooManyProviderTokenUpdates` (429), `InternalServerError` (500), `ServiceUnavailable`, `Shutdown` (503), `IdleTimeout` | retry |
//! | `ExpiredProviderToken` (403) | re-sign once and resend (in the client); retry if it persists |
//! | everything else (bad topic, payload too large, auth and config errors) | reject → dead letter |
//!
//! `InvalidProviderToken`, `ExpiredProviderToken`, `MissingProviderToken`, `BadCertificate`,
//! `BadCertificateEnvironment` and `Forbidden` are refusals of pushline's credential, not of
//! the push: their verdicts say so ([`Verdict::credential_valid`]), which drops
//! `pushline_credential_valid`.
//!
//! A reason APNs adds later is kept as text ([`Reason::Unknown`]) and classified by status:
//! 429 and 5xx retry, anything else is rejected — never lost, never retried forever.

use std::time::Duration;

use pipeline::dispatch::Verdict;

/// An APNs `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // the names are Apple's
pub enum Reason {
    BadCollapseId,
    BadDeviceToken,
    BadExpirationDate,
    BadMessageId,
    BadPriority,
    BadTopic,
    DeviceTokenNotForTopic,
    DuplicateHeaders,
    IdleTimeout,
    InvalidPushType,
    MissingDeviceToken,
    MissingTopic,
    PayloadEmpty,
    TopicDisallowed,
    BadCertificate,
    BadCertificateEnvironment,
    ExpiredProviderToken,
    Forbidden,
    InvalidProviderToken,
    MissingProviderToken,
    UnrelatedKeyIdInToken,
    BadEnvironmentKeyInToken,
    BadPath,
    MethodNotAllowed,
    ExpiredToken,
    Unregistered,
    PayloadTooLarge,
    TooManyProviderTokenUpdates,
    TooManyRequests,
    InternalServerError,
    ServiceUnavailable,
    Shutdown,
    /// A reason this build does not know, kept as text.
    Unknown(String),
}

impl Reason {
    /// Parses APNs' `reason` string.
    pub fn parse(reason: &str) -> Reason {
        use Reason::*;
        match reason {
            "BadCollapseId" => BadCollapseId,
            "BadDeviceToken" => BadDeviceToken,
            "BadExpirationDate" => BadExpirationDate,
            "BadMessageId" => BadMessageId,
            "BadPriority" => BadPriority,
            "BadTopic" => BadTopic,
            "DeviceTokenNotForTopic" => DeviceTokenNotForTopic,
            "DuplicateHeaders" => DuplicateHeaders,
            "IdleTimeout" => IdleTimeout,
            "InvalidPushType" => InvalidPushType,
            "MissingDeviceToken" => MissingDeviceToken,
            "MissingTopic" => MissingTopic,
            "PayloadEmpty" => PayloadEmpty,
            "TopicDisallowed" => TopicDisallowed,
            "BadCertificate" => BadCertificate,
            "BadCertificateEnvironment" => BadCertificateEnvironment,
            "ExpiredProviderToken" => ExpiredProviderToken,
            "Forbidden" => Forbidden,
            "InvalidProviderToken" => InvalidProviderToken,
            "MissingProviderToken" => MissingProviderToken,
            "UnrelatedKeyIdInToken" => UnrelatedKeyIdInToken,
            "BadEnvironmentKeyInToken" => BadEnvironmentKeyInToken,
            "BadPath" => BadPath,
            "MethodNotAllowed" => MethodNotAllowed,
            "ExpiredToken" => ExpiredToken,
            "Unregistered" => Unregistered,
            "PayloadTooLarge" => PayloadTooLarge,
            "TooManyProviderTokenUpdates" => TooManyProviderTokenUpdates,
            "TooManyRequests" => TooManyRequests,
            "InternalServerError" => InternalServerError,
            "ServiceUnavailable" => ServiceUnavailable,
            "Shutdown" => Shutdown,
            other => Unknown(other.to_owned()),
        }
    }

    /// The bounded metric label (`Unknown` for unknown reasons).
    pub fn label(&self) -> &'static str {
        use Reason::*;
        match self {
            BadCollapseId => "BadCollapseId",
            BadDeviceToken => "BadDeviceToken",
            BadExpirationDate => "BadExpirationDate",
            BadMessageId => "BadMessageId",
            BadPriority => "BadPriority",
            BadTopic => "BadTopic",
            DeviceTokenNotForTopic => "DeviceTokenNotForTopic",
            DuplicateHeaders => "DuplicateHeaders",
            IdleTimeout => "IdleTimeout",
            InvalidPushType => "InvalidPushType",
            MissingDeviceToken => "MissingDeviceToken",
            MissingTopic => "MissingTopic",
            PayloadEmpty => "PayloadEmpty",
            TopicDisallowed => "TopicDisallowed",
            BadCertificate => "BadCertificate",
            BadCertificateEnvironment => "BadCertificateEnvironment",
            ExpiredProviderToken => "ExpiredProviderToken",
            Forbidden => "Forbidden",
            InvalidProviderToken => "InvalidProviderToken",
            MissingProviderToken => "MissingProviderToken",
            UnrelatedKeyIdInToken => "UnrelatedKeyIdInToken",
            BadEnvironmentKeyInToken => "BadEnvironmentKeyInToken",
            BadPath => "BadPath",
            MethodNotAllowed => "MethodNotAllowed",
            ExpiredToken => "ExpiredToken",
            Unregistered => "Unregistered",
            PayloadTooLarge => "PayloadTooLarge",
            TooManyProviderTokenUpdates => "TooManyProviderTokenUpdates",
            TooManyRequests => "TooManyRequests",
            InternalServerError => "InternalServerError",
            ServiceUnavailable => "ServiceUnavailable",
            Shutdown => "Shutdown",
            Unknown(_) => "Unknown",
        }
    }

    /// The reason as APNs spelled it.
    pub fn text(&self) -> &str {
        match self {
            Reason::Unknown(text) => text,
            known => known.label(),
        }
    }
}

/// An APNs error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `reason` from the body (`Unknown("")` when there was none).
    pub reason: Reason,
    /// `timestamp` from a 410 body, ms.
    pub timestamp_ms: Option<u64>,
    /// `Retry-After`, when sent.
    pub retry_after: Option<Duration>,
}

impl Reason {
    /// Whether APNs refused pushline's credential (provider token or certificate) rather
    /// than the push.
    pub fn is_credential(&self) -> bool {
        use Reason::*;
        matches!(
            self,
            InvalidProviderToken
                | ExpiredProviderToken
                | MissingProviderToken
                | BadCertificate
                | BadCertificateEnvironment
                | Forbidden
        )
    }
}

/// What to do about an APNs error answer.
pub fn classify(answer: &Answer) -> Verdict {
    let verdict = classify_push(answer);
    if answer.reason.is_credential() {
        verdict.of_credential()
    } else {
        verdict
    }
}

fn classify_push(answer: &Answer) -> Verdict {
    use Reason::*;
    let reason = &answer.reason;
    let label = reason.label();
    let detail = format!("APNs {} {}", answer.status, reason.text());
    match reason {
        Unregistered | ExpiredToken | BadDeviceToken | DeviceTokenNotForTopic => {
            Verdict::InvalidToken {
                reason: label,
                detail: reason.text().to_owned(),
                timestamp_ms: answer.timestamp_ms,
            }
        }
        TooManyRequests
        | TooManyProviderTokenUpdates
        | InternalServerError
        | ServiceUnavailable
        | Shutdown
        | IdleTimeout
        | ExpiredProviderToken => Verdict::retry(label, detail, answer.retry_after),
        Unknown(_) if answer.status == 429 || answer.status >= 500 => {
            Verdict::retry(label, detail, answer.retry_after)
        }
        _ => Verdict::reject(label, detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, reason: &str) -> Answer {
        Answer {
            status,
            reason: Reason::parse(reason),
            timestamp_ms: None,
            retry_after: None,
        }
    }

    #[test]
    fn every_known_reason_round_trips_its_name() {
        for name in [
            "BadCollapseId",
            "BadDeviceToken",
            "BadExpirationDate",
            "BadMessageId",
            "BadPriority",
            "BadTopic",
            "DeviceTokenNotForTopic",
            "DuplicateHeaders",
            "IdleTimeout",
            "InvalidPushType",
            "MissingDeviceToken",
            "MissingTopic",
            "PayloadEmpty",
            "TopicDisallowed",
            "BadCertificate",
            "BadCertificateEnvironment",
            "ExpiredProviderToken",
            "Forbidden",
            "InvalidProviderToken",
            "MissingProviderToken",
            "UnrelatedKeyIdInToken",
            "BadEnvironmentKeyInToken",
            "BadPath",
            "MethodNotAllowed",
            "ExpiredToken",
            "Unregistered",
            "PayloadTooLarge",
            "TooManyProviderTokenUpdates",
            "TooManyRequests",
            "InternalServerError",
            "ServiceUnavailable",
            "Shutdown",
        ] {
            let reason = Reason::parse(name);
            assert_ne!(reason.label(), "Unknown", "{name}");
            assert_eq!(reason.label(), name);
        }
    }

    #[test]
    fn dead_tokens_become_feedback_with_apples_timestamp() {
        let mut a = answer(410, "Unregistered");
        a.timestamp_ms = Some(1_700_000_000_000);
        assert_eq!(
            classify(&a),
            Verdict::InvalidToken {
                reason: "Unregistered",
                detail: "Unregistered".into(),
                timestamp_ms: Some(1_700_000_000_000)
            }
        );
        for (status, reason) in [
            (410, "ExpiredToken"),
            (400, "BadDeviceToken"),
            (400, "DeviceTokenNotForTopic"),
        ] {
            assert!(
                matches!(
                    classify(&answer(status, reason)),
                    Verdict::InvalidToken { .. }
                ),
                "{reason}"
            );
        }
    }

    #[test]
    fn throttling_and_outages_retry_honouring_retry_after() {
        let mut a = answer(429, "TooManyRequests");
        a.retry_after = Some(Duration::from_secs(3));
        assert!(
            matches!(classify(&a), Verdict::Retry { retry_after: Some(d), .. } if d == Duration::from_secs(3))
        );
        for (status, reason) in [
            (500, "InternalServerError"),
            (503, "ServiceUnavailable"),
            (503, "Shutdown"),
        ] {
            assert!(
                matches!(classify(&answer(status, reason)), Verdict::Retry { .. }),
                "{reason}"
            );
        }
    }

    #[test]
    fn configuration_errors_are_rejected_without_retry() {
        for (status, reason) in [
            (400, "BadTopic"),
            (413, "PayloadTooLarge"),
            (403, "InvalidProviderToken"),
            (400, "TopicDisallowed"),
        ] {
            assert!(
                matches!(classify(&answer(status, reason)), Verdict::Reject { .. }),
                "{reason}"
            );
        }
    }

    #[test]
    fn credential_refusals_say_so_and_nothing_else_does() {
        for (status, reason) in [
            (403, "InvalidProviderToken"),
            (403, "ExpiredProviderToken"),
            (403, "MissingProviderToken"),
            (403, "BadCertificate"),
            (403, "BadCertificateEnvironment"),
            (403, "Forbidden"),
        ] {
            assert_eq!(
                classify(&answer(status, reason)).credential_valid(),
                Some(false),
                "{reason}"
            );
        }
        for (status, reason) in [
            (400, "BadTopic"),
            (429, "TooManyRequests"),
            (403, "SomethingNew"),
            (413, "PayloadTooLarge"),
        ] {
            assert_eq!(
                classify(&answer(status, reason)).credential_valid(),
                None,
                "{reason}"
            );
        }
        assert_eq!(
            classify(&answer(400, "BadDeviceToken")).credential_valid(),
            Some(true)
        );
    }

    #[test]
    fn unknown_reasons_are_kept_as_text_and_classified_by_status() {
        match classify(&answer(400, "SomethingNew")) {
            Verdict::Reject {
                reason,
                detail,
                credential,
            } => {
                assert!(!credential);
                assert_eq!(reason, "Unknown");
                assert!(detail.contains("SomethingNew"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(&answer(502, "SomethingNew")),
            Verdict::Retry { .. }
        ));
    }
}
