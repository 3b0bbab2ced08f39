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
