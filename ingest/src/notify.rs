//! The producer API: `POST /v1/notify` lets other systems ring or notify people through the
//! same path as webhooks (documented in `docs/ingest-api.md`).
//!
//! - Authenticated by a producer API key (`Authorization: Bearer`, compared as SHA-256 in
//!   constant time) → 401 otherwise.
//! - Rate-limited per producer by a token bucket counted in target persons ([`crate::producers`]) → 429 with
//!   `Retry-After`.
//! - One event per target person, id = hash(producer, `idempotency_key`, person), so a
//!   retried request is stored once.
//! - Malformed JSON → 400; well-formed but unacceptable values → 422, naming the field.

use pipeline::contract::{
    ApnsPart, ApnsPushType, Class, Event, FCM_DATA_MAX_BYTES, FcmPart, FcmPriority, VERSION,
    apns_max_bytes, check_person_id,
};
use pipeline::jwe;
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::config::ProducersConfig;

/// The event source of producer events (`events.api.<producer>`).
pub const SOURCE: &str = "api";
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;
/// Longest `apns-collapse-id` APNs accepts, bytes.
pub const MAX_COLLAPSE_ID: usize = 64;

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyRequest<'a> {
    /// Who to notify.
    pub person_ids: Vec<String>,
    /// `call`, `alert` or `background`.
    pub class: Class,
    /// What to send to iOS devices.
    #[serde(borrow, default)]
    pub apns: Option<ApnsRequest<'a>>,
    /// What to send to Android devices.
    #[serde(borrow, default)]
    pub fcm: Option<FcmRequest<'a>>,
    /// Lifetime from receipt, seconds.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// Absolute deadline, Unix ms (instead of `ttl_secs`).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// The producer's key for this notification; a retry with the same key is stored once.
    pub idempotency_key: String,
    /// Encrypt the payload for each device with the device's registered key (JWE, see
    /// `docs/providers.md`); devices without a key get nothing.
    #[serde(default)]
    pub encrypt: bool,
}

/// `apns`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsRequest<'a> {
    /// The APNs JSON payload, sent byte for byte.
    #[serde(borrow)]
    pub payload: &'a RawValue,
    /// Default: `voip` for calls, `alert` for alerts, `background` for background.
    #[serde(default)]
    pub push_type: Option<ApnsPushType>,
    /// 10, 5 or 1; default 10 (5 for background).
    #[serde(default)]
    pub priority: Option<u8>,
    /// `apns-collapse-id` (≤ 64 bytes).
    #[serde(default)]
    pub collapse_id: Option<String>,
}

/// `fcm`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmRequest<'a> {
    /// The FCM data map (an object), sent byte for byte.
    #[serde(borrow)]
    pub data: &'a RawValue,
    /// Default: `high` for calls and alerts, `normal` for background.
    #[serde(default)]
    pub priority: Option<FcmPriority>,
    /// `collapse_key` (≤ 64 bytes).
    #[serde(default)]
    pub collapse_key: Option<String>,
}

/// A value the API will not take; the message names the field (→ 422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unacceptable(pub String);

fn bad(message: impl Into<String>) -> Unacceptable {
    Unacceptable(message.into())
}

/// The event id for one target of a producer request.
pub fn event_id(producer: &str, idempotency_key: &str, person: &str) -> String {
    let digest = Sha256::new()
        .chain_update(producer.as_bytes())
        .chain_update([0u8])
        .chain_update(idempotency_key.as_bytes())
        .chain_update([0u8])
        .chain_update(person.as_bytes())
        .finalize();
    hex::encode(&digest[..16])
}

/// Checks a request and builds one event per target.
pub fn events(
    request: &NotifyRequest<'_>,
    producer: &str,
    config: &ProducersConfig,
    now_ms: u64,
    trace_id: Option<String>,
) -> Result<Vec<Event>, Unacceptable> {
    let n = request.person_ids.len();
    if n == 0 || n > config.max_targets {
        return Err(bad(format!(
            "`person_ids` must hold 1 to {} persons",
            config.max_targets
        )));
    }
    for (i, person) in request.person_ids.iter().enumerate() {
        check_person_id(&format!("person_ids[{i}]"), person).map_err(bad)?;
    }
    let key = &request.idempotency_key;
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
    {
        return Err(bad(format!(
            "`idempotency_key` must be 1 to {MAX_IDEMPOTENCY_KEY} characters of A-Z a-z 0-9 . _ - :"
        )));
    }
    if request.apns.is_none() && request.fcm.is_none() {
        return Err(bad("`apns` or `fcm` is required"));
    }
    let max_deadline = now_ms + config.max_ttl_secs * 1000;
    let deadline = match (request.deadline_ms, request.ttl_secs) {
        (Some(_), Some(_)) => return Err(bad("give `deadline_ms` or `ttl_secs`, not both")),
        (Some(deadline), None) => deadline,
        (None, Some(ttl)) => now_ms.saturating_add(ttl.saturating_mul(1000)),
        (None, None) => now_ms + config.default_ttl_secs * 1000,
    };
    if deadline <= now_ms || deadline > max_deadline {
        return Err(bad(format!(
            "the deadline must be in the future and at most {} s away",
            config.max_ttl_secs
        )));
    }
    let apns = request
        .apns
        .as_ref()
        .map(|a| apns_part(a, request.class, request.encrypt))
        .transpose()?;
    let fcm = request
        .fcm
        .as_ref()
        .map(|f| fcm_part(f, request.class, request.encrypt))
        .transpose()?;
    Ok(request
        .person_ids
        .iter()
        .map(|person| Event {
            v: VERSION,
            id: event_id(producer, key, person),
            source: SOURCE.to_owned(),
            resource: producer.to_owned(),
            event: "notify".to_owned(),
            person_id: person.clone(),
            class: request.class,
            received_at_ms: now_ms,
            deadline_ms: deadline,
            apns: apns.clone(),
            fcm: fcm.clone(),
            trace_id: trace_id.clone(),
            encrypt: request.encrypt,
        })
        .collect())
}

fn apns_part(a: &ApnsRequest<'_>, class: Class, encrypt: bool) -> Result<ApnsPart, Unacceptable> {
    if !a.payload.get().starts_with('{') {
        return Err(bad("`apns.payload` must be a JSON object"));
    }
    let push_type = a.push_type.unwrap_or(match class {
        Class::Call => ApnsPushType::Voip,
        Class::Alert => ApnsPushType::Alert,
        Class::Background => ApnsPushType::Background,
    });
    if push_type == ApnsPushType::Voip && class != Class::Call {
        // iOS terminates apps that receive a VoIP push without reporting a call.
        return Err(bad("`apns.push_type` voip is only for class call"));
    }
    let limit = apns_max_bytes(push_type);
    if a.payload.get().len() > limit {
        return Err(bad(format!(
            "`apns.payload` is over APNs' {limit} bytes for {}",
            push_type.as_str()
        )));
    }
    if encrypt {
        let sealed = jwe::apns_envelope_len(a.payload, jwe::MAX_KID).map_err(bad)?;
        if sealed > limit {
            return Err(bad(format!(
                "`apns.payload` is over APNs' {limit} bytes for {} once encrypted ({sealed} bytes)",
                push_type.as_str()
            )));
        }
    }
    let priority = a
        .priority
        .unwrap_or(if class == Class::Background { 5 } else { 10 });
    if !matches!(priority, 1 | 5 | 10) {
        return Err(bad("`apns.priority` must be 10, 5 or 1"));
    }
    if a.collapse_id
        .as_ref()
        .is_some_and(|c| c.is_empty() || c.len() > MAX_COLLAPSE_ID)
    {
        return Err(bad(format!(
            "`apns.collapse_id` must be 1 to {MAX_COLLAPSE_ID} bytes"
        )));
    }
    Ok(ApnsPart {
        payload: a.payload.to_owned(),
        push_type,
        priority,
        collapse_id: a.collapse_id.clone(),
    })
}

fn fcm_part(f: &FcmRequest<'_>, class: Class, encrypt: bool) -> Result<FcmPart, Unacceptable> {
    if !f.data.get().starts_with('{') {
        return Err(bad("`fcm.data` must be a JSON object"));
    }
    if f.data.get().len() > FCM_DATA_MAX_BYTES {
        return Err(bad(format!(
            "`fcm.data` is over FCM's {FCM_DATA_MAX_BYTES} bytes"
        )));
    }
    let sealed = jwe::fcm_envelope_len(f.data, jwe::MAX_KID);
    if encrypt && sealed > FCM_DATA_MAX_BYTES {
        return Err(bad(format!(
            "`fcm.data` is over FCM's {FCM_DATA_MAX_BYTES} bytes once encrypted ({sealed} bytes)"
        )));
    }
    if f.collapse_key
        .as_ref()
        .is_some_and(|c| c.is_empty() || c.len() > MAX_COLLAPSE_ID)
    {
        return Err(bad(format!(
            "`fcm.collapse_key` must be 1 to {MAX_COLLAPSE_ID} bytes"
        )));
    }
    Ok(FcmPart {
        data: f.data.to_owned(),
        priority: f.priority.unwrap_or(if class == Class::Background {
            FcmPriority::Normal
        } else {
            FcmPriority::High
        }),
        collapse_key: f.collapse_key.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ProducersConfig {
        crate::config::tests::one_producer("crm", "k")
    }

    fn request(body: &str) -> NotifyRequest<'_> {
        serde_json::from_str(body).expect("parse")
    }

    #[test]
    fn one_event_per_person_with_stable_ids() {
        let r = request(
            r#"{"person_ids":["a","b"],"class":"call","apns":{"payload":{"aps":{}, "x":1}},"idempotency_key":"call-7"}"#,
        );
        let events = events(&r, "crm", &config(), 1_000, None).expect("valid");
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0].apns.as_ref().expect("apns").payload.get(),
            r#"{"aps":{}, "x":1}"#
        );
        assert_eq!(
            events[0].apns.as_ref().expect("apns").push_type,
            ApnsPushType::Voip
        );
        assert_eq!(events[0].id, event_id("crm", "call-7", "a"));
        assert_ne!(events[0].id, events[1].id);
        assert_eq!(events[0].deadline_ms, 61_000);
    }

    #[test]
    fn unacceptable_requests_name_the_field() {
        let cases = [
            (
                r#"{"person_ids":[],"class":"call","fcm":{"data":{}},"idempotency_key":"k"}"#,
                "person_ids",
            ),
            (
                r#"{"person_ids":["a"],"class":"alert","apns":{"payload":{},"push_type":"voip"},"idempotency_key":"k"}"#,
                "push_type",
            ),
            (
                r#"{"person_ids":["a"],"class":"call","idempotency_key":"k"}"#,
                "`apns` or `fcm`",
            ),
            (
                r#"{"person_ids":["a"],"class":"call","fcm":{"data":[1]},"idempotency_key":"k"}"#,
                "fcm.data",
            ),
            (
                r#"{"person_ids":["a"],"class":"call","fcm":{"data":{}},"idempotency_key":"bad key"}"#,
                "idempotency_key",
            ),
            (
                r#"{"person_ids":["a"],"class":"call","fcm":{"data":{}},"idempotency_key":"k","ttl_secs":0}"#,
                "deadline",
            ),
            (
                r#"{"person_ids":["a"],"class":"call","apns":{"payload":{},"priority":7},"idempotency_key":"k"}"#,
                "apns.priority",
            ),
        ];
        for (body, needle) in cases {
            let err = events(&request(body), "crm", &config(), 1_000, None).expect_err(body);
            assert!(err.0.contains(needle), "{body}: {err}");
        }
    }
}
