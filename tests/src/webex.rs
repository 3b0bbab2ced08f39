//! Webex webhooks for tests and load generation: bodies and signatures.

/// A `telephony_push` envelope for `person` with the given raw payloads.
pub fn telephony_push(person: &str, apns: Option<&str>, fcm: Option<&str>) -> String {
    let mut data = Vec::new();
    if let Some(apns) = apns {
        data.push(format!("\"apnsPayload\":{apns}"));
    }
    if let Some(fcm) = fcm {
        data.push(format!("\"fcmPayload\":{fcm}"));
    }
    format!(
        r#"{{"id":"Y2lzY29zcGFyazovL3VzL1dFQkhPT0svMQ","name":"Webex Calling firehose","targetUrl":"https://example.com/webhooks/webex","resource":"telephony_push","event":"updated","orgId":"Y2lzY29zcGFyazovL3VzL09SR0FOSVpBVElPTi8x","createdBy":"admin","appId":"app","ownedBy":"org","status":"active","created":"2026-11-22T10:00:00.000Z","actorId":"{person}","data":{{{}}}}}"#,
        data.join(",")
    )
}

/// A sample APNs VoIP payload with a distinguishing `callId`.
pub fn apns_payload(call_id: &str) -> String {
    format!(
        r#"{{"aps":{{}}, "callId":"{call_id}","caller":{{"name":"Ada","number":"+15550100"}},"ts":1.50e3}}"#
    )
}

/// A sample FCM data payload with a distinguishing `callId`.
pub fn fcm_payload(call_id: &str) -> String {
    format!(r#"{{"type":"incoming_call","callId":"{call_id}","caller":"Ada"}}"#)
}

/// The `X-Spark-Signature` for `body` under `secret`.
pub fn sign(body: &str, secret: &str) -> String {
    ingest::signature::sign(body.as_bytes(), secret)
}

/// A `callMemberships/created` envelope ringing `person` for `call_id`: the envelope's
/// `created` (when the webhook was registered) and the event's `data.created` are given
/// separately, as RFC 3339 times.
pub fn call_membership(
    person: &str,
    call_id: &str,
    envelope_created: &str,
    event_created: &str,
) -> String {
    format!(
        r#"{{"id":"Y2lzY29zcGFyazovL3VzL1dFQkhPT0svMg","name":"call memberships","targetUrl":"https://example.com/webhooks/webex","resource":"callMemberships","event":"created","orgId":"Y2lzY29zcGFyazovL3VzL09SR0FOSVpBVElPTi8x","createdBy":"{person}","appId":"app","ownedBy":"creator","status":"active","created":"{envelope_created}","actorId":"caller","data":{{"id":"membership-{call_id}","callId":"{call_id}","isInitiator":false,"personId":"{person}","state":"notified","personOrgId":"org","created":"{event_created}"}}}}"#
    )
}

/// `ms` since the Unix epoch as RFC 3339 in UTC with milliseconds, as Webex writes times.
pub fn rfc3339(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).expect("a time before year 292e9");
    let (days, of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // The civil date of a day count (Howard Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        ms % 1000
    )
}
