//! Webex webhook envelopes → pushline [`Event`]s.
//!
//! Two flows ring a phone:
//!
//! - **`telephony_push` / `updated`** (Webex Calling firehose): the callee is the
//!   envelope's `actorId` (or `createdBy`, by config); `data.apnsPayload` and
//!   `data.fcmPayload` are carried *byte for byte* as raw JSON. The deadline is the ring
//!   expiry (`ringexpiretime`, looked up in `data`, then in `apnsPayload`, then in
//!   `fcmPayload`; Unix seconds or milliseconds, number or numeric string), else receipt
//!   + `webex.call_ttl_secs`; never more than `webex.max_ttl_secs` ahead.
//! - **`callMemberships` / `created`** with `data.state = "notified"`: the callee is
//!   `data.personId`; pushline builds the payloads itself (see `call_membership_payload`).
//!
//! **Replays.** A signed webhook stays valid forever, so a captured one could ring again.
//! Where the resource dates its event, the event must be fresh ([`is_fresh`]):
//!
//! | resource | the event's time | a replay is refused by |
//! |---|---|---|
//! | `callMemberships` | `data.created` | freshness (`webex.max_event_age_secs`, `webex.clock_skew_secs`) → [`Normalised::Stale`] |
//! | `telephony_push` | none (`ringexpiretime` is when it stops ringing) | the ring expiry → [`Normalised::Expired`] |
//! | both | — | the event id, remembered by every replica ([`crate::shared`]) → duplicate |
//!
//! The envelope's own `created` is **not** the event's time: it is when the webhook was
//! registered, months old on a healthy firehose, and is never looked at.
//!
//! `apnsPayload` becomes the `apns` part and `fcmPayload` the `fcm` part, each checked by
//! its provider; every other provider rings from the call's description (`fcmPayload`,
//! else `apnsPayload`) when it can ([`pipeline::provider::Spec::call_part`]).
//!
//! Anything else is acknowledged (202) and not published. The event id is a hash of the
//! source and the raw body, so a redelivered identical webhook gets the same
//! `Nats-Msg-Id` and JetStream stores it once.

use std::borrow::Cow;

use pipeline::contract::{Class, Event, Parts, VERSION};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::config::{PersonField, WebexConfig};

/// The source name of Webex events (`events.webex.<resource>`).
pub const SOURCE: &str = "webex";

/// What became of an envelope.
#[derive(Debug)]
pub enum Normalised {
    /// An event to publish.
    Event(Box<Event>),
    /// A valid envelope pushline does not act on (`resource/event` for the metric).
    Ignored {
        /// Why, for the response body.
        reason: String,
    },
    /// A call whose ring expiry is already past: accepted, not published.
    Expired,
    /// An event dated outside the replay window (older than `webex.max_event_age_secs`,
    /// or ahead of this clock by more than `webex.clock_skew_secs`): accepted, not
    /// published.
    Stale,
}

/// Why an envelope was refused; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidEnvelope(pub String);

fn invalid(message: impl Into<String>) -> InvalidEnvelope {
    InvalidEnvelope(message.into())
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    resource: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event: Option<Cow<'a, str>>,
    #[serde(rename = "actorId", borrow, default)]
    actor_id: Option<Cow<'a, str>>,
    #[serde(rename = "createdBy", borrow, default)]
    created_by: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct TelephonyPush<'a> {
    #[serde(rename = "apnsPayload", borrow, default)]
    apns: Option<&'a RawValue>,
    #[serde(rename = "fcmPayload", borrow, default)]
    fcm: Option<&'a RawValue>,
    #[serde(default)]
    ringexpiretime: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RingExpiry {
    #[serde(default)]
    ringexpiretime: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct CallMembership<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(rename = "callId", borrow, default)]
    call_id: Option<Cow<'a, str>>,
    #[serde(rename = "personId", borrow, default)]
    person_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    state: Option<Cow<'a, str>>,
    #[serde(rename = "personOrgId", borrow, default)]
    org_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    created: Option<Cow<'a, str>>,
}

/// The event id for a delivery: hex of the first 16 bytes of SHA-256(source, body).
pub fn event_id(source: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(source.as_bytes());
    hasher.update([0u8]);
    hasher.update(body);
    hex::encode(&hasher.finalize()[..16])
}

/// Whether an event dated `event_ms` may still ring at `now_ms`: not older than
/// `max_age_ms`, nor ahead of this clock, each with `skew_ms` allowed for the sender's clock.
pub fn is_fresh(event_ms: u64, now_ms: u64, max_age_ms: u64, skew_ms: u64) -> bool {
    let not_ahead = event_ms <= now_ms.saturating_add(skew_ms);
    let not_old = now_ms.saturating_sub(event_ms) <= max_age_ms.saturating_add(skew_ms);
    not_ahead && not_old
}

/// Milliseconds since the Unix epoch of an RFC 3339 time as Webex writes it
/// (`2026-01-02T03:04:05.678Z`, any number of fraction digits, `Z` or `±hh:mm`);
/// `None` when it is not one.
pub fn rfc3339_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(i, c)| b.get(i) != Some(&c))
        || !matches!(b.get(10), Some(b'T' | b't' | b' '))
    {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let in_range = (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && hour <= 23
        && minute <= 59
        && second <= 60;
    if !in_range {
        return None;
    }
    let mut at = 19;
    let mut millis = 0;
    if b.get(at) == Some(&b'.') {
        let start = at + 1;
        at = start;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        let fraction = &text[start..at];
        if fraction.is_empty() {
            return None;
        }
        millis = format!("{fraction:0<3}")[..3].parse::<i64>().ok()?;
    }
    let offset_secs = match (b.get(at), b.len() - at) {
        (Some(b'Z' | b'z'), 1) => 0,
        (Some(sign @ (b'+' | b'-')), 6) if b[at + 3] == b':' => {
            let secs = digits(at + 1..at + 3)? * 3600 + digits(at + 4..at + 6)? * 60;
            if *sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    u64::try_from(secs * 1000 + millis).ok()
}

/// Parses and normalises one webhook body received at `now_ms`: the envelope here, then
/// each ringing flow in a function of its own.
pub fn normalise(
    body: &[u8],
    config: &WebexConfig,
    now_ms: u64,
    trace_id: Option<String>,
) -> Result<Normalised, InvalidEnvelope> {
    let envelope: Envelope<'_> = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("body is not a Webex webhook envelope: {e}")))?;
    let resource = envelope
        .resource
        .as_deref()
        .ok_or_else(|| invalid("`resource` is required"))?;
    let event = envelope
        .event
        .as_deref()
        .ok_or_else(|| invalid("`event` is required"))?;
    let data = envelope.data.ok_or_else(|| invalid("`data` is required"))?;
    let received = Received {
        body,
        resource,
        event,
        config,
        now_ms,
        trace_id,
    };
    match (resource, event) {
        ("telephony_push", "updated") => telephony_push(&received, &envelope, data),
        ("callMemberships", "created") => call_membership(&received, data),
        _ => Ok(Normalised::Ignored {
            reason: format!("{resource}/{event} does not ring a device"),
        }),
    }
}

/// What every flow needs to know about the webhook it normalises.
struct Received<'a> {
    body: &'a [u8],
    resource: &'a str,
    event: &'a str,
    config: &'a WebexConfig,
    now_ms: u64,
    trace_id: Option<String>,
}

impl Received<'_> {
    /// A call for `person_id` due by `deadline_ms`, ringing with Webex's payloads for
    /// APNs and FCM and, on every other provider, from the call's description.
    fn call(
        &self,
        person_id: &str,
        deadline_ms: u64,
        apns: Option<&RawValue>,
        fcm: Option<&RawValue>,
    ) -> Normalised {
        let description = fcm.or(apns);
        let parts: Parts = providers::all()
            .iter()
            .filter_map(|spec| {
                let own = match spec.name() {
                    "apns" => apns,
                    "fcm" => fcm,
                    _ => None,
                };
                let part = match own {
                    Some(payload) => spec.call_part(payload, true),
                    None => spec.call_part(description?, false),
                }?;
                Some((spec.name().to_owned(), part))
            })
            .collect();
        Normalised::Event(Box::new(Event {
            v: VERSION,
            id: event_id(SOURCE, self.body),
            source: SOURCE.to_owned(),
            resource: self.resource.to_owned(),
            event: self.event.to_owned(),
            person_id: person_id.to_owned(),
            class: Class::Call,
            received_at_ms: self.now_ms,
            deadline_ms,
            parts,
            trace_id: self.trace_id.clone(),
            encrypt: false,
        }))
    }

    /// The deadline of a call that names none: `webex.call_ttl_secs` from now.
    fn call_deadline(&self) -> u64 {
        self.now_ms + self.config.call_ttl_secs * 1000
    }
}

/// `telephony_push/updated`: the firehose webhook, whose `data` carries the payloads.
fn telephony_push(
    received: &Received<'_>,
    envelope: &Envelope<'_>,
    data: &RawValue,
) -> Result<Normalised, InvalidEnvelope> {
    let config = received.config;
    let person = match config.person_field {
        PersonField::ActorId => envelope.actor_id.as_deref().map(|p| ("actorId", p)),
        PersonField::CreatedBy => envelope.created_by.as_deref().map(|p| ("createdBy", p)),
    };
    let (field, person) = person.ok_or_else(|| {
        invalid(match config.person_field {
            PersonField::ActorId => "`actorId` is required for telephony_push",
            PersonField::CreatedBy => "`createdBy` is required for telephony_push",
        })
    })?;
    check_person_id(field, person)?;
    let push: TelephonyPush<'_> = serde_json::from_str(data.get())
        .map_err(|e| invalid(format!("`data` is not a telephony_push object: {e}")))?;
    if push.apns.is_none() && push.fcm.is_none() {
        return Err(invalid(
            "`data.apnsPayload` or `data.fcmPayload` is required",
        ));
    }
    for (name, raw) in [
        ("data.apnsPayload", push.apns),
        ("data.fcmPayload", push.fcm),
    ] {
        if let Some(raw) = raw {
            if !raw.get().starts_with('{') {
                return Err(invalid(format!("`{name}` must be a JSON object")));
            }
        }
    }
    let expiry = push
        .ringexpiretime
        .as_ref()
        .and_then(epoch_ms)
        .or_else(|| push.apns.and_then(ring_expiry_in))
        .or_else(|| push.fcm.and_then(ring_expiry_in));
    let max_deadline = received.now_ms + config.max_ttl_secs * 1000;
    let deadline = expiry
        .unwrap_or_else(|| received.call_deadline())
        .min(max_deadline);
    if deadline <= received.now_ms {
        return Ok(Normalised::Expired);
    }
    Ok(received.call(person, deadline, push.apns, push.fcm))
}

/// `callMemberships/created`: the per-user webhook; pushline builds the payloads.
fn call_membership(
    received: &Received<'_>,
    data: &RawValue,
) -> Result<Normalised, InvalidEnvelope> {
    let member: CallMembership<'_> = serde_json::from_str(data.get())
        .map_err(|e| invalid(format!("`data` is not a callMemberships object: {e}")))?;
    if member.state.as_deref() != Some("notified") {
        return Ok(Normalised::Ignored {
            reason: "callMemberships/created with state other than notified".into(),
        });
    }
    let person = member
        .person_id
        .as_deref()
        .ok_or_else(|| invalid("`data.personId` is required"))?;
    check_person_id("data.personId", person)?;
    let call_id = member
        .call_id
        .as_deref()
        .ok_or_else(|| invalid("`data.callId` is required"))?;
    // A membership without a readable `created` is still bounded by its id, remembered
    // for the replay window.
    let config = received.config;
    if let Some(created_ms) = member.created.as_deref().and_then(rfc3339_ms)
        && !is_fresh(
            created_ms,
            received.now_ms,
            config.max_event_age_secs * 1000,
            config.clock_skew_secs * 1000,
        )
    {
        return Ok(Normalised::Stale);
    }
    let deadline = received.call_deadline();
    let (apns, fcm) = call_membership_payload(&member, call_id, person, deadline);
    Ok(received.call(person, deadline, Some(&apns), Some(&fcm)))
}

fn check_person_id(field: &str, person: &str) -> Result<(), InvalidEnvelope> {
    pipeline::contract::check_person_id(field, person).map_err(InvalidEnvelope)
}

fn ring_expiry_in(payload: &RawValue) -> Option<u64> {
    serde_json::from_str::<RingExpiry>(payload.get())
        .ok()?
        .ringexpiretime
        .as_ref()
        .and_then(epoch_ms)
}

/// Reads a Unix time given in seconds or milliseconds, as a number or numeric string.
fn epoch_ms(value: &serde_json::Value) -> Option<u64> {
    let n = match value {
        serde_json::Value::Number(n) => n.as_f64()?,
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    if !n.is_finite() || n <= 0.0 {
        return None;
    }
    // Below 10^11 it can only be seconds (10^11 ms is 1973, 10^11 s is year 5138).
    Some(if n < 1e11 {
        (n * 1000.0) as u64
    } else {
        n as u64
    })
}

/// The payloads pushline builds for a `callMemberships` call, documented in
/// `docs/contract.md`:
///
/// APNs (VoIP): `{"type":"incoming_call","source":"webex","callId":…,"callMembershipId":…,
/// "personId":…,"orgId":…,"created":…,"ringexpiretime":<ms>}`; FCM `data`: the same keys,
/// every value a string. Absent optional fields are left out.
fn call_membership_payload(
    member: &CallMembership<'_>,
    call_id: &str,
    person_id: &str,
    deadline_ms: u64,
) -> (Box<RawValue>, Box<RawValue>) {
    let mut map = serde_json::Map::new();
    map.insert("type".into(), "incoming_call".into());
    map.insert("source".into(), SOURCE.into());
    map.insert("callId".into(), call_id.into());
    if let Some(id) = member.id.as_deref() {
        map.insert("callMembershipId".into(), id.into());
    }
    map.insert("personId".into(), person_id.into());
    if let Some(org) = member.org_id.as_deref() {
        map.insert("orgId".into(), org.into());
    }
    if let Some(created) = member.created.as_deref() {
        map.insert("created".into(), created.into());
    }
    let mut fcm = map.clone();
    map.insert("ringexpiretime".into(), deadline_ms.into());
    fcm.insert("ringexpiretime".into(), deadline_ms.to_string().into());
    let to_raw = |m: serde_json::Map<String, serde_json::Value>| {
        serde_json::value::to_raw_value(&m).unwrap_or_else(|_| RawValue::NULL.to_owned())
    };
    (to_raw(map), to_raw(fcm))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn config() -> WebexConfig {
        WebexConfig::default()
    }

    fn event(body: &str) -> Event {
        match normalise(body.as_bytes(), &config(), NOW, None).expect("valid") {
            Normalised::Event(e) => *e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[test]
    fn telephony_push_keeps_payloads_byte_for_byte() {
        let apns = r#"{ "aps" : {}, "z":1.50, "a":"\u00e9" }"#;
        let fcm = r#"{"b":"2","a":"1"}"#;
        let body = format!(
            r#"{{"resource":"telephony_push","event":"updated","actorId":"P1","data":{{"apnsPayload":{apns},"fcmPayload":{fcm}}}}}"#
        );
        let e = event(&body);
        assert_eq!(e.person_id, "P1");
        assert_eq!(e.class, Class::Call);
        assert_eq!(
            e.parts["apns"].get(),
            format!(r#"{{"payload":{apns},"push_type":"voip","priority":10}}"#)
        );
        assert_eq!(
            e.parts["fcm"].get(),
            format!(r#"{{"data":{fcm},"priority":"high"}}"#)
        );
        assert_eq!(e.deadline_ms, NOW + 60_000);
        assert_eq!(e.id, event_id(SOURCE, body.as_bytes()));
    }

    #[test]
    fn ring_expiry_sets_the_deadline_in_seconds_or_millis() {
        let body = |v: &str| {
            format!(
                r#"{{"resource":"telephony_push","event":"updated","actorId":"P","data":{{"apnsPayload":{{"ringexpiretime":{v}}}}}}}"#
            )
        };
        assert_eq!(
            event(&body(&(NOW + 30_000).to_string())).deadline_ms,
            NOW + 30_000
        );
        assert_eq!(
            event(&body(&((NOW / 1000) + 20).to_string())).deadline_ms,
            NOW + 20_000
        );
        assert_eq!(
            event(&body(&format!("\"{}\"", NOW + 5_000))).deadline_ms,
            NOW + 5_000
        );
        // Never beyond the configured maximum.
        assert_eq!(
            event(&body(&(NOW + 10_000_000).to_string())).deadline_ms,
            NOW + 600_000
        );
    }

    #[test]
    fn past_ring_expiry_is_not_published() {
        let body = format!(
            r#"{{"resource":"telephony_push","event":"updated","actorId":"P","data":{{"ringexpiretime":{},"fcmPayload":{{}}}}}}"#,
            NOW - 1
        );
        assert!(matches!(
            normalise(body.as_bytes(), &config(), NOW, None),
            Ok(Normalised::Expired)
        ));
    }

    #[test]
    fn person_ids_follow_the_registrys_rule() {
        let body = |person: &str| {
            format!(
                r#"{{"resource":"telephony_push","event":"updated","actorId":"{person}","data":{{"fcmPayload":{{}}}}}}"#
            )
        };
        let error = normalise(body("a{b}").as_bytes(), &config(), 1_000, None)
            .expect_err("braces break the person's Redis hash tag");
        assert!(
            error.0.starts_with("`actorId` must be 1 to 512 characters"),
            "{error}"
        );
        assert!(matches!(
            normalise(
                body("ciscospark://us/PEOPLE/1").as_bytes(),
                &config(),
                1_000,
                None
            ),
            Ok(Normalised::Event(_))
        ));
    }

    #[test]
    fn created_by_can_name_the_callee() {
        let mut cfg = config();
        cfg.person_field = PersonField::CreatedBy;
        let body = r#"{"resource":"telephony_push","event":"updated","actorId":"A","createdBy":"C","data":{"fcmPayload":{}}}"#;
        match normalise(body.as_bytes(), &cfg, NOW, None) {
            Ok(Normalised::Event(e)) => assert_eq!(e.person_id, "C"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn call_membership_builds_its_payloads() {
        let body = r#"{"resource":"callMemberships","event":"created","data":{"id":"M","callId":"C1","personId":"P2","state":"notified"}}"#;
        let e = event(body);
        assert_eq!(e.person_id, "P2");
        let part = |name: &str| -> serde_json::Value {
            serde_json::from_str(e.parts.get(name).expect(name).get()).expect("json")
        };
        let apns = part("apns")["payload"].clone();
        assert_eq!(apns["type"], "incoming_call");
        assert_eq!(apns["callId"], "C1");
        assert_eq!(apns["ringexpiretime"], NOW + 60_000);
        let fcm = part("fcm")["data"].clone();
        assert!(
            fcm.as_object()
                .expect("map")
                .values()
                .all(|v| v.is_string())
        );
    }

    #[test]
    fn other_resources_and_states_are_ignored() {
        for body in [
            r#"{"resource":"messages","event":"created","data":{}}"#,
            r#"{"resource":"callMemberships","event":"created","data":{"callId":"C","personId":"P","state":"joined"}}"#,
        ] {
            assert!(matches!(
                normalise(body.as_bytes(), &config(), NOW, None),
                Ok(Normalised::Ignored { .. })
            ));
        }
    }

    #[test]
    fn malformed_envelopes_name_the_field() {
        let cases = [
            ("not json", "envelope"),
            (r#"{"event":"updated","data":{}}"#, "`resource`"),
            (
                r#"{"resource":"telephony_push","event":"updated","data":{"fcmPayload":{}}}"#,
                "`actorId`",
            ),
            (
                r#"{"resource":"telephony_push","event":"updated","actorId":"P","data":{}}"#,
                "apnsPayload",
            ),
            (
                r#"{"resource":"telephony_push","event":"updated","actorId":"P","data":{"apnsPayload":"x"}}"#,
                "must be a JSON object",
            ),
            (
                r#"{"resource":"telephony_push","event":"updated","actorId":"","data":{"fcmPayload":{}}}"#,
                "`actorId`",
            ),
            (
                r#"{"resource":"callMemberships","event":"created","data":{"state":"notified","callId":"C"}}"#,
                "`data.personId`",
            ),
        ];
        for (body, needle) in cases {
            let err = normalise(body.as_bytes(), &config(), NOW, None).expect_err(body);
            assert!(err.0.contains(needle), "{body}: {err}");
        }
    }

    #[test]
    fn freshness_allows_the_window_and_the_skew_and_nothing_beyond() {
        let (age, skew) = (300_000, 30_000);
        let cases = [
            ("now", NOW, true),
            ("at the window's end", NOW - age, true),
            ("within the skew past the window", NOW - age - skew, true),
            ("past window and skew", NOW - age - skew - 1, false),
            ("twenty minutes old", NOW - 20 * 60_000, false),
            ("ahead within the skew", NOW + skew, true),
            ("ahead beyond the skew", NOW + skew + 1, false),
        ];
        for (what, event_ms, fresh) in cases {
            assert_eq!(is_fresh(event_ms, NOW, age, skew), fresh, "{what}");
        }
    }

    #[test]
    fn rfc3339_times_are_read_as_webex_writes_them() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(rfc3339_ms("2023-11-14T22:13:20.000Z"), Some(NOW));
        assert_eq!(rfc3339_ms("2023-11-14T22:13:20.5Z"), Some(NOW + 500));
        assert_eq!(rfc3339_ms("2023-11-14T22:13:20.123456Z"), Some(NOW + 123));
        assert_eq!(rfc3339_ms("2023-11-14T23:13:20+01:00"), Some(NOW));
        assert_eq!(rfc3339_ms("2023-11-14T21:13:20-01:00"), Some(NOW));
        assert_eq!(rfc3339_ms("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
        for bad in [
            "",
            "2023-11-14",
            "2023-11-14T22:13:20",
            "2023-13-14T22:13:20Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20+0100",
            "2023-11-14T22:13:20Zjunk",
            "+023-11-14T22:13:20Z",
        ] {
            assert_eq!(rfc3339_ms(bad), None, "{bad:?}");
        }
    }

    fn membership(envelope_created: &str, data_created: Option<&str>) -> String {
        let created = data_created
            .map(|c| format!(r#","created":"{c}""#))
            .unwrap_or_default();
        format!(
            r#"{{"resource":"callMemberships","event":"created","created":"{envelope_created}","data":{{"callId":"C","personId":"P","state":"notified"{created}}}}}"#
        )
    }

    #[test]
    fn a_call_membership_created_twenty_minutes_ago_is_stale() {
        // NOW is 2023-11-14T22:13:20Z.
        let body = membership("2023-11-14T22:00:00.000Z", Some("2023-11-14T21:53:20.000Z"));
        assert!(matches!(
            normalise(body.as_bytes(), &config(), NOW, None),
            Ok(Normalised::Stale)
        ));
        let ahead = membership("2023-11-14T22:00:00.000Z", Some("2023-11-14T22:23:20.000Z"));
        assert!(matches!(
            normalise(ahead.as_bytes(), &config(), NOW, None),
            Ok(Normalised::Stale)
        ));
    }

    #[test]
    fn a_year_old_envelope_with_a_fresh_event_rings() {
        let fresh = membership("2022-11-14T22:13:20.000Z", Some("2023-11-14T22:13:15.000Z"));
        assert_eq!(event(&fresh).person_id, "P");
        // Without a readable event time, only the event id bounds replays.
        assert_eq!(
            event(&membership("2022-11-14T22:13:20.000Z", None)).person_id,
            "P"
        );
        assert_eq!(
            event(&membership("2022-11-14T22:13:20.000Z", Some("yesterday"))).person_id,
            "P"
        );
    }

    #[test]
    fn the_same_body_gets_the_same_id_and_a_different_one_does_not() {
        assert_eq!(event_id(SOURCE, b"a"), event_id(SOURCE, b"a"));
        assert_ne!(event_id(SOURCE, b"a"), event_id(SOURCE, b"b"));
        assert_eq!(event_id(SOURCE, b"a").len(), 32);
    }
}
