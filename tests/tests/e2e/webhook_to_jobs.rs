//! Ingest and registry together: a signed Webex webhook becomes one push job per device,
//! payloads byte for byte.

use dispatcher_apns::spec::ApnsPart;
use dispatcher_fcm::spec::FcmPart;
use harness::services::{API_KEY, Env, WEBHOOK_SECRET, start_ingest, start_registry};
use harness::webex::{apns_payload, fcm_payload, sign, telephony_push};
use pipeline::contract::PushJob;
use pipeline::topology::StreamKind;
use serde_json::json;

#[tokio::test]
async fn a_signed_call_webhook_becomes_one_job_per_device() {
    let env = Env::start();
    let ingest = start_ingest(env.ingest_config()).await;
    let registry = start_registry(env.registry_config()).await;
    ingest.wait_ready().await;
    registry.wait_ready().await;

    let http = reqwest::Client::new();
    for (token, body) in [
        (
            "ab".repeat(32),
            json!({"person_id": "frank", "platform": "apns"}),
        ),
        (
            "fcm:frank-APA91bHPRgkF".to_owned(),
            json!({"person_id": "frank", "platform": "fcm"}),
        ),
    ] {
        let response = http
            .put(registry.url(&format!("/v1/devices/{token}")))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .expect("register");
        assert_eq!(response.status(), 201);
    }

    let apns = apns_payload("e2e");
    let fcm = fcm_payload("e2e");
    let body = telephony_push("frank", Some(&apns), Some(&fcm));
    let response = http
        .post(ingest.url("/webhooks/webex"))
        .header("content-type", "application/json")
        .header("x-spark-signature", sign(&body, WEBHOOK_SECRET))
        .header("TrackingID", "webex-trace-1")
        .body(body)
        .send()
        .await
        .expect("webhook");
    assert_eq!(response.status(), 200);

    let apns_jobs = env.wait_messages(StreamKind::Push("apns"), 1).await;
    let fcm_jobs = env.wait_messages(StreamKind::Push("fcm"), 1).await;
    let apns_job: PushJob<ApnsPart> = serde_json::from_slice(&apns_jobs[0].payload).expect("job");
    let fcm_job: PushJob<FcmPart> = serde_json::from_slice(&fcm_jobs[0].payload).expect("job");
    assert_eq!(apns_job.part.payload.get(), apns);
    assert_eq!(fcm_job.part.data.get(), fcm);
    assert_eq!(apns_job.trace_id.as_deref(), Some("webex-trace-1"));
    assert_eq!(
        apns_jobs[0]
            .headers
            .get("Pushline-Trace-Id")
            .map(|v| v.as_str()),
        Some("webex-trace-1")
    );
    env.wait_messages(StreamKind::Events, 0).await;
}
