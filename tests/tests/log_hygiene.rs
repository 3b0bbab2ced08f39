//! Secrets, API keys, bearer tokens and device tokens never appear in logs in clear: the
//! whole pipeline runs with pushline's crates at `debug`, through registrations, refusals,
//! signed webhooks, producer calls, invalid tokens and retries, and the captured log is
//! searched for every one of them.

use std::time::Duration;

use base64::Engine;
use harness::mock::apns::MockApns;
use harness::services::{API_KEY, PRODUCER_KEY, WEBHOOK_SECRET};
use harness::stack::Stack;
use harness::webex::apns_payload;

#[tokio::test]
async fn no_secret_or_token_is_ever_logged_in_clear() {
    let capture = harness::logs::shared();

    let kek = base64::engine::general_purpose::STANDARD.encode([0x5au8; 32]);
    let device_key = base64::engine::general_purpose::STANDARD.encode([0xa5u8; 32]);
    let stack = Stack::start_with(|c| {
        c.registry.devices.key_encryption_keys = vec![registry::keyring::KekConfig {
            id: "log-kek".into(),
            key: Some(pipeline::config::Secret::new(kek.clone())),
            key_file: None,
        }];
    })
    .await;
    let gone = "feedfacecafebeef".repeat(4);
    let flaky = "0123456789abcdef".repeat(4);
    let android = "fcm-secret-token:APA91bHPRgkFLJu6ck_q";
    stack.register_ios("eve", &gone).await;
    stack.register_ios("eve", &flaky).await;
    stack
        .register(
            android,
            serde_json::json!({"person_id": "eve", "platform": "fcm", "e2e_key": device_key}),
        )
        .await;
    stack.providers.get::<MockApns>().script(
        &gone,
        [MockApns::unregistered(pipeline::contract::now_ms())],
    );
    stack
        .providers
        .get::<MockApns>()
        .script(&flaky, [MockApns::error(503, "ServiceUnavailable")]);
    stack
        .call("eve", Some(&apns_payload("log")), Some(r#"{"k":"v"}"#))
        .await;

    // Refusals with credentials that must not be echoed.
    let http = reqwest::Client::new();
    let wrong_key = "wrong-but-secret-api-key";
    let _ = http
        .get(stack.registry.url("/v1/persons/eve/devices"))
        .bearer_auth(wrong_key)
        .send()
        .await;
    let forged = harness::webex::telephony_push("eve", None, Some("{}"));
    let _ = http
        .post(stack.ingest.url("/webhooks/webex"))
        .header("content-type", "application/json")
        .header(
            "x-spark-signature",
            harness::webex::sign(&forged, "attacker-secret"),
        )
        .body(forged)
        .send()
        .await;
    let notify = r#"{"person_ids":["eve"],"class":"alert","fcm":{"data":{"m":"x"}},"idempotency_key":"log-1","encrypt":true}"#;
    let _ = http
        .post(stack.ingest.url("/v1/notify"))
        .bearer_auth(PRODUCER_KEY)
        .header("content-type", "application/json")
        .body(notify)
        .send()
        .await;
    let _ = http
        .post(stack.ingest.url("/v1/notify"))
        .bearer_auth("guessed-producer-key")
        .header("content-type", "application/json")
        .body(notify)
        .send()
        .await;

    stack
        .providers
        .get::<MockApns>()
        .wait_delivered(1, Duration::from_secs(15))
        .await;
    Stack::wait_metrics(
        &stack.registry,
        &[r#"pushline_feedback_total{outcome="pruned",platform="apns"} 1"#],
    )
    .await;
    Stack::wait_metrics(
        stack.dispatcher("apns"),
        &[r#"pushline_retries_total{reason="ServiceUnavailable",stage="apns"} 1"#],
    )
    .await;

    let log = capture.text();
    assert!(
        log.contains("token rejected by provider"),
        "the flows above were logged:\n{log}"
    );
    for (what, secret) in [
        ("webhook secret", WEBHOOK_SECRET),
        ("registry API key", API_KEY),
        ("refused API key", wrong_key),
        ("producer key", PRODUCER_KEY),
        ("refused producer key", "guessed-producer-key"),
        ("APNs token (410)", gone.as_str()),
        ("APNs token (503)", flaky.as_str()),
        ("FCM token", android),
        ("forged signer's secret", "attacker-secret"),
        ("key-encryption key", kek.as_str()),
        ("device's end-to-end key", device_key.as_str()),
    ] {
        assert!(!log.contains(secret), "the {what} appears in the log");
    }
    // Tokens are identified by a short hash instead.
    assert!(log.contains(&pipeline::telemetry::token_tag(&gone)));
}
