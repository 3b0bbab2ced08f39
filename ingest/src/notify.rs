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

use std::fmt;

use pipeline::contract::{Class, Event, Parts, VERSION, check_person_id};
use pipeline::provider::Providers;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::config::ProducersConfig;

/// The event source of producer events (`events.api.<producer>`).
pub const SOURCE: &str = "api";
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// The request body: the fields below, and one field per provider the producer sends to,
/// named by the provider (`apns`, `fcm`, …) and checked by it
/// ([`pipeline::provider::Spec::part`]).
#[derive(Debug)]
pub struct NotifyRequest<'a> {
    /// Who to notify.
    pub person_ids: Vec<String>,
    /// `call`, `alert` or `background`.
    pub class: Class,
    /// Each provider's request, by provider name, as sent.
    pub parts: Vec<(String, &'a RawValue)>,
    /// Lifetime from receipt, seconds.
    pub ttl_secs: Option<u64>,
    /// Absolute deadline, Unix ms (instead of `ttl_secs`).
    pub deadline_ms: Option<u64>,
    /// The producer's key for this notification; a retry with the same key is stored once.
    pub idempotency_key: String,
    /// Encrypt the payload for each device with the device's registered key (JWE, see
    /// `docs/providers.md`); devices without a key get nothing.
    pub encrypt: bool,
}

const FIELDS: &[&str] = &[
    "person_ids",
    "class",
    "ttl_secs",
    "deadline_ms",
    "idempotency_key",
    "encrypt",
];

impl<'de> Deserialize<'de> for NotifyRequest<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RequestVisitor(providers::all()))
    }
}

struct RequestVisitor(Providers);

impl<'de> Visitor<'de> for RequestVisitor {
    type Value = NotifyRequest<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a notify request object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut person_ids, mut class, mut idempotency_key) = (None, None, None);
        let (mut ttl_secs, mut deadline_ms, mut encrypt) = (None, None, false);
        let mut parts: Vec<(String, &'de RawValue)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let seen = match key.as_str() {
                "person_ids" => person_ids.replace(map.next_value()?).is_some(),
                "class" => class.replace(map.next_value()?).is_some(),
                "idempotency_key" => idempotency_key.replace(map.next_value()?).is_some(),
                "ttl_secs" => ttl_secs.replace(map.next_value::<u64>()?).is_some(),
                "deadline_ms" => deadline_ms.replace(map.next_value::<u64>()?).is_some(),
                "encrypt" => {
                    encrypt = map.next_value()?;
                    false
                }
                provider if self.0.get(provider).is_some() => {
                    let seen = parts.iter().any(|(name, _)| name == provider);
                    parts.push((key.clone(), map.next_value()?));
                    seen
                }
                _ => {
                    let expected: Vec<&str> =
                        FIELDS.iter().copied().chain(self.0.names()).collect();
                    return Err(de::Error::custom(format!(
                        "unknown field `{key}`, expected one of {}",
                        expected.join(", ")
                    )));
                }
            };
            if seen {
                return Err(de::Error::custom(format!("duplicate field `{key}`")));
            }
        }
        Ok(NotifyRequest {
            person_ids: person_ids.ok_or_else(|| de::Error::missing_field("person_ids"))?,
            class: class.ok_or_else(|| de::Error::missing_field("class"))?,
            idempotency_key: idempotency_key
                .ok_or_else(|| de::Error::missing_field("idempotency_key"))?,
            parts,
            ttl_secs,
            deadline_ms,
            encrypt,
        })
    }
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
    let providers = providers::all();
    if request.parts.is_empty() {
        return Err(bad(format!(
            "a part for at least one provider is required: {}",
            providers.listed()
        )));
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
    let mut parts = Parts::new();
    for (name, raw) in &request.parts {
        let spec = providers
            .get(name)
            .ok_or_else(|| bad(format!("`{name}` is not a provider")))?;
        let part = spec
            .part(name, request.class, request.encrypt, raw)
            .map_err(bad)?;
        parts.insert(name.clone(), part);
    }
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
            parts: parts.clone(),
            trace_id: trace_id.clone(),
            encrypt: request.encrypt,
        })
        .collect())
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
        let apns = events[0].parts.get("apns").expect("apns").get();
        assert_eq!(
            apns,
            r#"{"payload":{"aps":{}, "x":1},"push_type":"voip","priority":10}"#
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
                "a part for at least one provider is required: apns, ",
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
        for body in [
            r#"{"person_ids":["a"],"class":"call","pager":{},"idempotency_key":"k"}"#,
            r#"{"person_ids":["a"],"class":"call","fcm":{"data":{}},"fcm":{"data":{}},"idempotency_key":"k"}"#,
            r#"{"class":"call","fcm":{"data":{}},"idempotency_key":"k"}"#,
        ] {
            let error =
                pipeline::json::parse::<NotifyRequest<'_>>(body.as_bytes()).expect_err(body);
            assert!(
                error.contains("unknown field `pager`, expected one of person_ids")
                    || error.contains("duplicate field `fcm`")
                    || error.contains("missing field `person_ids`"),
                "{body}: {error}"
            );
        }
        for (body, needle) in cases {
            let err = events(&request(body), "crm", &config(), 1_000, None).expect_err(body);
            assert!(err.0.contains(needle), "{body}: {err}");
        }
    }
}
