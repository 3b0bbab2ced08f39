//! The producer API, signature variants and input limits against a real NATS JetStream.

use dispatcher_apns::spec::{ApnsPart, ApnsPushType};
use dispatcher_fcm::spec::FcmPart;
use harness::services::{
    API_KEY, Env, PRODUCER_KEY, Service, WEBHOOK_SECRET, start_ingest, start_registry,
};
use harness::webex::{sign, telephony_push};
use pipeline::contract::{Class, Event};
use pipeline::topology::StreamKind;
use serde_json::{Value, json};

async fn notify(ingest: &Service, key: Option<&str>, body: &str) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(ingest.url("/v1/notify"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.expect("POST /v1/notify")
}

async fn started(env: &Env, adjust: impl FnOnce(&mut ingest::config::Config)) -> Service {
    let mut config = env.ingest_config();
    adjust(&mut config);
    let ingest = start_ingest(config).await;
    ingest.wait_ready().await;
    ingest
}

const CALL: &str = r#"{"person_ids":["p1","p2"],"class":"call","apns":{"payload":{"aps":{}, "callId":"c-1"}},"fcm":{"data":{"callId":"c-1"},"collapse_key":"c-1"},"ttl_secs":30,"idempotency_key":"crm-call-1"}"#;

#[tokio::test]
async fn a_producer_rings_each_target_once_per_idempotency_key() {
    let env = Env::start();
    let ingest = started(&env, |_| {}).await;
    let response = notify(&ingest, Some(PRODUCER_KEY), CALL).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["events"].as_array().map(Vec::len), Some(2));
    let messages = env.wait_messages(StreamKind::Events, 2).await;
    let event: Event = serde_json::from_slice(&messages[0].payload).expect("event");
    assert_eq!(
        messages[0].subject.as_str(),
        format!("{}events.api.crm", env.prefix)
    );
    assert_eq!(event.class, Class::Call);
    let apns: ApnsPart = harness::part(&event.parts, "apns");
    assert_eq!(apns.payload.get(), r#"{"aps":{}, "callId":"c-1"}"#);
    assert_eq!(apns.push_type, ApnsPushType::Voip);
    let fcm: FcmPart = harness::part(&event.parts, "fcm");
    assert_eq!(fcm.collapse_key.as_deref(), Some("c-1"));
    assert!(event.deadline_ms <= event.received_at_ms + 30_000);

    let again: Value = notify(&ingest, Some(PRODUCER_KEY), CALL)
        .await
        .json()
        .await
        .expect("json");
    assert!(
        again["events"]
            .as_array()
            .expect("events")
            .iter()
            .all(|e| e["duplicate"] == true)
    );
    env.wait_messages(StreamKind::Events, 2).await;
}

#[tokio::test]
async fn producers_without_a_valid_key_are_refused() {
    let env = Env::start();
    let ingest = started(&env, |_| {}).await;
    assert_eq!(notify(&ingest, None, CALL).await.status(), 401);
    assert_eq!(notify(&ingest, Some("guessed"), CALL).await.status(), 401);
    // The webhook secret is not a producer key either.
    assert_eq!(
        notify(&ingest, Some(WEBHOOK_SECRET), CALL).await.status(),
        401
    );
    assert!(env.stream_messages(StreamKind::Events).await.is_empty());
    let metrics = ingest.metrics().await;
    assert!(
        metrics.contains(
            r#"pushline_auth_refusals_total{reason="unknown_api_key",service="ingest"} 2"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_producer_over_its_rate_gets_429_with_retry_after() {
    let env = Env::start();
    let ingest = started(&env, |c| {
        c.producers.keys[0].rate_per_sec = 1.0;
        c.producers.keys[0].burst = 3;
    })
    .await;
    let body = |k: u32| {
        format!(
            r#"{{"person_ids":["a"],"class":"alert","fcm":{{"data":{{"m":"hi"}}}},"idempotency_key":"k{k}"}}"#
        )
    };
    for k in 0..3 {
        assert_eq!(
            notify(&ingest, Some(PRODUCER_KEY), &body(k)).await.status(),
            200
        );
    }
    let over = notify(&ingest, Some(PRODUCER_KEY), &body(3)).await;
    assert_eq!(over.status(), 429);
    assert_eq!(over.headers()["retry-after"], "1");
    let error: Value = over.json().await.expect("json");
    assert_eq!(error["error"]["code"], "rate_limited");
    env.wait_messages(StreamKind::Events, 3).await;
}

#[tokio::test]
async fn a_producers_rate_holds_across_ingest_replicas() {
    let env = Env::start();
    let slow = |c: &mut ingest::config::Config| {
        c.producers.keys[0].rate_per_sec = 0.01;
        c.producers.keys[0].burst = 3;
    };
    let (a, b) = (started(&env, slow).await, started(&env, slow).await);
    let body = |k: u32| {
        format!(
            r#"{{"person_ids":["a"],"class":"alert","fcm":{{"data":{{"m":"hi"}}}},"idempotency_key":"r{k}"}}"#
        )
    };
    // Three tokens in all, whichever replica takes them.
    for (k, ingest) in [(0, &a), (1, &b), (2, &a)] {
        let response = notify(ingest, Some(PRODUCER_KEY), &body(k)).await;
        assert_eq!(response.status(), 200);
    }
    for (k, ingest) in [(3, &b), (4, &a)] {
        let response = notify(ingest, Some(PRODUCER_KEY), &body(k)).await;
        assert_eq!(response.status(), 429, "the bucket is shared");
    }
    // A retry of a stored request costs nothing and is still a duplicate.
    let retry = notify(&b, Some(PRODUCER_KEY), &body(0)).await;
    assert_eq!(retry.status(), 200);
    let answer: Value = retry.json().await.expect("json");
    assert_eq!(answer["events"][0]["duplicate"], true);
    env.wait_messages(StreamKind::Events, 3).await;
}

#[tokio::test]
async fn a_retry_after_the_server_forgot_the_message_id_rings_once() {
    let mut env = Env::start();
    let ingest = started(&env, |_| {}).await;
    let body = r#"{"person_ids":["p1"],"class":"call","apns":{"payload":{"aps":{}}},"ttl_secs":600,"idempotency_key":"late-retry"}"#;
    let first: Value = notify(&ingest, Some(PRODUCER_KEY), body)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(first["events"][0]["duplicate"], false);

    // The event is consumed (gone from the work queue) and the server restarts: its
    // de-duplication state no longer knows the id, as after the window has passed.
    env.wait_messages(StreamKind::Events, 1).await;
    env.jetstream()
        .await
        .get_stream(env.topology().stream_name(StreamKind::Events))
        .await
        .expect("EVENTS")
        .purge()
        .await
        .expect("purge");
    env.nats.restart();
    ingest.wait_ready().await;

    let retried: Value = notify(&ingest, Some(PRODUCER_KEY), body)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(retried["events"][0]["duplicate"], true, "{retried}");
    let other = body.replace("late-retry", "another-call");
    let stored: Value = notify(&ingest, Some(PRODUCER_KEY), &other)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(stored["events"][0]["duplicate"], false, "{stored}");
    let events = env.wait_messages(StreamKind::Events, 1).await;
    assert_eq!(events.len(), 1, "the retry was not stored again");
}

#[tokio::test]
async fn bad_notify_requests_get_400_413_415_or_422_naming_the_problem() {
    let env = Env::start();
    let ingest = started(&env, |_| {}).await;
    let cases: Vec<(String, u16, &str)> = vec![
        ("{".into(), 400, "body"),
        (r#"{"person_ids":"p","class":"call","idempotency_key":"k"}"#.into(), 400, "person_ids"),
        (r#"{"person_ids":["p"],"class":"ring","idempotency_key":"k"}"#.into(), 400, "class"),
        (r#"{"person_ids":["p"],"class":"call","fcm":{"data":{}},"idempotency_key":"k","extra":1}"#.into(), 400, "extra"),
        (r#"{"person_ids":["p"],"class":"alert","apns":{"payload":{},"push_type":"voip"},"idempotency_key":"k"}"#.into(), 422, "voip"),
        (format!(r#"{{"person_ids":{},"class":"call","fcm":{{"data":{{}}}},"idempotency_key":"k"}}"#, serde_json::to_string(&vec!["p"; 101]).expect("json")), 422, "person_ids"),
        (format!(r#"{{"person_ids":["p"],"class":"call","apns":{{"payload":{{"pad":"{}"}}}},"idempotency_key":"k"}}"#, "x".repeat(6_000)), 422, "apns.payload"),
        (format!(r#"{{"person_ids":["p"],"class":"call","fcm":{{"data":{{"deep":{}{}}}}},"idempotency_key":"k"}}"#, "[".repeat(40), "]".repeat(40)), 400, "nests deeper"),
        (format!(r#"{{"pad":"{}"}}"#, "x".repeat(70_000)), 413, "larger"),
    ];
    for (body, status, needle) in cases {
        let response = notify(&ingest, Some(PRODUCER_KEY), &body).await;
        assert_eq!(
            response.status(),
            status,
            "{}",
            &body[..body.len().min(120)]
        );
        let error: Value = response.json().await.expect("json error body");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{needle} not in {message}");
    }
    let text = reqwest::Client::new()
        .post(ingest.url("/v1/notify"))
        .bearer_auth(PRODUCER_KEY)
        .header("content-type", "text/plain")
        .body(CALL)
        .send()
        .await
        .expect("POST");
    assert_eq!(text.status(), 415);
    assert!(env.stream_messages(StreamKind::Events).await.is_empty());
}

#[tokio::test]
async fn the_sha256_signature_variant_is_checked_when_configured() {
    let env = Env::start();
    let ingest = started(&env, |c| {
        c.webex.sha256_header = "X-Spark-Signature-256".into();
        c.webex.require_sha256 = true;
    })
    .await;
    let body = telephony_push("p", None, Some("{}"));
    let post = |sha256: Option<String>| {
        let mut request = reqwest::Client::new()
            .post(ingest.url("/webhooks/webex"))
            .header("content-type", "application/json")
            .header("x-spark-signature", sign(&body, WEBHOOK_SECRET))
            .body(body.clone());
        if let Some(sha256) = sha256 {
            request = request.header("x-spark-signature-256", sha256);
        }
        request.send()
    };
    assert_eq!(post(None).await.expect("POST").status(), 401);
    let wrong = ingest::signature::sign_sha256(b"another body", WEBHOOK_SECRET);
    assert_eq!(post(Some(wrong)).await.expect("POST").status(), 401);
    let right = ingest::signature::sign_sha256(body.as_bytes(), WEBHOOK_SECRET);
    assert_eq!(
        post(Some(format!("sha256={right}")))
            .await
            .expect("POST")
            .status(),
        200
    );
    env.wait_messages(StreamKind::Events, 1).await;
}

#[tokio::test]
async fn a_replayed_signature_on_another_body_is_refused() {
    let env = Env::start();
    let ingest = started(&env, |_| {}).await;
    let original = telephony_push("victim", None, Some("{}"));
    let tampered = telephony_push("attacker-chosen", None, Some("{}"));
    let response = reqwest::Client::new()
        .post(ingest.url("/webhooks/webex"))
        .header("content-type", "application/json")
        .header("x-spark-signature", sign(&original, WEBHOOK_SECRET))
        .body(tampered)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 401);
    assert!(env.stream_messages(StreamKind::Events).await.is_empty());
}

#[tokio::test]
async fn the_registry_refuses_deep_and_oversized_bodies() {
    let env = Env::start();
    let registry = start_registry(env.registry_config()).await;
    registry.wait_ready().await;
    let put = |body: String| {
        reqwest::Client::new()
            .put(registry.url(&format!("/v1/devices/{}", "ab".repeat(32))))
            .bearer_auth(API_KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let deep = format!(
        r#"{{"person_id":"p","platform":"apns","e2e_key":{}1{}}}"#,
        "[".repeat(50),
        "]".repeat(50)
    );
    let response = put(deep).await.expect("PUT");
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("json");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("nests deeper")
    );
    let big =
        json!({"person_id": "p", "platform": "apns", "e2e_key": "x".repeat(20_000)}).to_string();
    assert_eq!(put(big).await.expect("PUT").status(), 413);
}
