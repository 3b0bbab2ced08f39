//! Ingest against a real NATS JetStream: signatures, limits, normalisation, de-duplication
//! and NATS outages.

use std::time::Duration;

use dispatcher_apns::spec::ApnsPart;
use dispatcher_fcm::spec::FcmPart;
use harness::services::{Env, Service, WEBHOOK_SECRET, start_ingest};
use harness::wait;
use harness::webex::{apns_payload, fcm_payload, sign, telephony_push};
use pipeline::contract::{Class, Event};
use pipeline::topology::StreamKind;

async fn post(service: &Service, body: &str, signature: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(service.url("/webhooks/webex"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(signature) = signature {
        request = request.header("x-spark-signature", signature);
    }
    request.send().await.expect("POST webhook")
}

async fn post_signed(service: &Service, body: &str) -> reqwest::Response {
    post(service, body, Some(&sign(body, WEBHOOK_SECRET))).await
}

async fn started(env: &Env) -> Service {
    let service = start_ingest(env.ingest_config()).await;
    service.wait_ready().await;
    service
}

#[tokio::test]
async fn signed_telephony_push_is_stored_with_byte_identical_payloads() {
    let env = Env::start();
    let ingest = started(&env).await;
    let apns = apns_payload("call-1");
    let fcm = fcm_payload("call-1");
    let body = telephony_push("person-1", Some(&apns), Some(&fcm));

    let response = post_signed(&ingest, &body).await;
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.expect("json");
    assert_eq!(answer["status"], "accepted");

    let messages = env.wait_messages(StreamKind::Events, 1).await;
    let message = &messages[0];
    assert_eq!(
        message.subject.as_str(),
        format!("{}events.webex.telephony_push", env.prefix)
    );
    let msg_id = message
        .headers
        .get("Nats-Msg-Id")
        .expect("Nats-Msg-Id")
        .as_str();
    assert_eq!(msg_id, answer["event_id"].as_str().expect("event_id"));
    let event: Event = serde_json::from_slice(&message.payload).expect("an Event");
    assert_eq!(event.person_id, "person-1");
    assert_eq!(event.class, Class::Call);
    let apns_part: ApnsPart = harness::part(&event.parts, "apns");
    let fcm_part: FcmPart = harness::part(&event.parts, "fcm");
    assert_eq!(apns_part.payload.get(), apns);
    assert_eq!(fcm_part.data.get(), fcm);
    assert!(event.deadline_ms > event.received_at_ms);
}

#[tokio::test]
async fn forged_or_missing_signatures_are_refused_and_nothing_is_published() {
    let env = Env::start();
    let ingest = started(&env).await;
    let body = telephony_push("person-1", Some(&apns_payload("c")), None);

    let forged = sign(&body, "not-the-secret");
    assert_eq!(post(&ingest, &body, Some(&forged)).await.status(), 401);
    let missing = post(&ingest, &body, None).await;
    assert_eq!(missing.status(), 401);
    let error: serde_json::Value = missing.json().await.expect("json error");
    assert_eq!(error["error"]["code"], "unauthorized");
    // A valid signature over another body does not carry over.
    let other = sign(
        &telephony_push("person-2", None, Some("{}")),
        WEBHOOK_SECRET,
    );
    assert_eq!(post(&ingest, &body, Some(&other)).await.status(), 401);

    // Only now publish a good one: it must be the only message in the stream.
    assert_eq!(post_signed(&ingest, &body).await.status(), 200);
    env.wait_messages(StreamKind::Events, 1).await;
    assert!(
        ingest.metrics().await.contains(
            r#"pushline_webhooks_received_total{outcome="unauthorized",source="webex"} 3"#
        )
    );
}

#[tokio::test]
async fn a_rotated_secret_is_accepted_alongside_the_old_one() {
    let env = Env::start();
    let mut config = env.ingest_config();
    config
        .webex
        .secrets
        .push(pipeline::config::Secret::new("the-new-secret"));
    let ingest = start_ingest(config).await;
    ingest.wait_ready().await;
    let old = telephony_push("p-old", None, Some("{}"));
    let new = telephony_push("p-new", None, Some("{}"));
    assert_eq!(
        post(&ingest, &old, Some(&sign(&old, WEBHOOK_SECRET)))
            .await
            .status(),
        200
    );
    assert_eq!(
        post(&ingest, &new, Some(&sign(&new, "the-new-secret")))
            .await
            .status(),
        200
    );
    env.wait_messages(StreamKind::Events, 2).await;
}

#[tokio::test]
async fn oversized_bodies_get_413_and_wrong_media_types_415() {
    let env = Env::start();
    let ingest = started(&env).await;
    let big = telephony_push(
        "p",
        Some(&format!(r#"{{"pad":"{}"}}"#, "x".repeat(70_000))),
        None,
    );
    let response = post_signed(&ingest, &big).await;
    assert_eq!(response.status(), 413);
    let error: serde_json::Value = response.json().await.expect("json error");
    assert_eq!(error["error"]["code"], "too_large");

    let body = telephony_push("p", None, Some("{}"));
    let response = reqwest::Client::new()
        .post(ingest.url("/webhooks/webex"))
        .header("content-type", "text/plain")
        .header("x-spark-signature", sign(&body, WEBHOOK_SECRET))
        .body(body)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 415);
    assert!(env.stream_messages(StreamKind::Events).await.is_empty());
}

#[tokio::test]
async fn malformed_webhooks_get_400_naming_the_problem() {
    let env = Env::start();
    let ingest = started(&env).await;
    let cases = [
        ("{not json", "envelope"),
        (
            r#"{"resource":"telephony_push","event":"updated","data":{"fcmPayload":{}}}"#,
            "actorId",
        ),
        (
            r#"{"resource":"telephony_push","event":"updated","actorId":"p","data":{}}"#,
            "apnsPayload",
        ),
        (
            r#"{"resource":"telephony_push","event":"updated","actorId":"p","data":{"fcmPayload":[1]}}"#,
            "fcmPayload",
        ),
    ];
    for (body, needle) in cases {
        let response = post_signed(&ingest, body).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: serde_json::Value = response.json().await.expect("json error");
        assert_eq!(error["error"]["code"], "invalid");
        let message = error["error"]["message"].as_str().expect("message");
        assert!(message.contains(needle), "{body}: {message}");
    }
    assert!(env.stream_messages(StreamKind::Events).await.is_empty());
}

#[tokio::test]
async fn other_resources_are_accepted_but_not_published() {
    let env = Env::start();
    let ingest = started(&env).await;
    let body = r#"{"resource":"messages","event":"created","data":{"id":"m"}}"#;
    let response = post_signed(&ingest, body).await;
    assert_eq!(response.status(), 202);
    // The sample server's path works too.
    let response = reqwest::Client::new()
        .post(ingest.url("/webhook"))
        .header("content-type", "application/json")
        .header("x-spark-signature", sign(body, WEBHOOK_SECRET))
        .body(body)
        .send()
        .await
        .expect("POST /webhook");
    assert_eq!(response.status(), 202);
    assert!(env.stream_messages(StreamKind::Events).await.is_empty());
    assert!(
        ingest
            .metrics()
            .await
            .contains(r#"pushline_webhooks_received_total{outcome="ignored",source="webex"} 2"#)
    );
}

#[tokio::test]
async fn a_redelivered_webhook_is_published_once() {
    let env = Env::start();
    let ingest = started(&env).await;
    let body = telephony_push("person-1", Some(&apns_payload("dup")), None);
    let first: serde_json::Value = post_signed(&ingest, &body)
        .await
        .json()
        .await
        .expect("json");
    let second: serde_json::Value = post_signed(&ingest, &body)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(first["duplicate"], false);
    assert_eq!(second["duplicate"], true);
    assert_eq!(first["event_id"], second["event_id"]);
    env.wait_messages(StreamKind::Events, 1).await;
    // A different call for the same person is a new event.
    let other = telephony_push("person-1", Some(&apns_payload("dup-2")), None);
    assert_eq!(post_signed(&ingest, &other).await.status(), 200);
    env.wait_messages(StreamKind::Events, 2).await;
}

#[tokio::test]
async fn nats_outage_gives_503_with_retry_after_once_the_retry_budget_is_spent() {
    let mut env = Env::start();
    let mut config = env.ingest_config();
    config.nats.publish_retry_budget_ms = 1_500;
    let ingest = start_ingest(config).await;
    ingest.wait_ready().await;
    let body = telephony_push("person-1", None, Some(&fcm_payload("outage")));

    env.nats.stop();
    let started = std::time::Instant::now();
    let response = post_signed(&ingest, &body).await;
    assert_eq!(response.status(), 503);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1_000) && waited < Duration::from_secs(5),
        "503 must come once the budget is spent, not before and not much later: {waited:?}"
    );
    assert_eq!(response.headers()["retry-after"], "1");
    let ready = reqwest::get(ingest.admin_url("/readyz"))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);

    env.nats.restart();
    wait::until_true(
        "ingest to accept again after NATS returns",
        Duration::from_secs(20),
        || {
            let request = post_signed(&ingest, &body);
            async move { request.await.status() == 200 }
        },
    )
    .await;
    // Whatever the outage left in flight, the event is stored exactly once.
    env.wait_messages(StreamKind::Events, 1).await;
}

#[tokio::test]
async fn refuses_to_start_without_a_webhook_secret() {
    let env = Env::start();
    let mut config = env.ingest_config();
    config.webex.secrets.clear();
    let error = config.resolve().expect_err("no secret");
    assert!(error.to_string().contains("webex.secrets"));
}

#[tokio::test]
async fn beyond_max_in_flight_requests_are_refused_at_once_not_parked() {
    let mut env = Env::start();
    let mut config = env.ingest_config();
    config.max_in_flight = 1;
    // No room to hold a request in bytes: a waiting publish keeps its slot.
    config.max_held_bytes = 0;
    config.nats.publish_retry_budget_ms = 20_000;
    let ingest = start_ingest(config).await;
    ingest.wait_ready().await;
    let body = telephony_push("person-1", None, Some(&fcm_payload("parked")));

    // One webhook waits for NATS within its retry budget and holds the only slot...
    env.nats.stop();
    let first = tokio::spawn({
        let url = ingest.url("/webhooks/webex");
        let body = body.clone();
        async move {
            reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .header("x-spark-signature", sign(&body, WEBHOOK_SECRET))
                .body(body)
                .send()
                .await
                .expect("first webhook")
                .status()
        }
    });
    wait::until_true(
        "the first webhook to be retrying its publish",
        Duration::from_secs(10),
        || {
            let metrics = ingest.metrics();
            async move {
                metrics
                    .await
                    .contains(r#"pushline_retries_total{reason="publish",stage="ingest"}"#)
            }
        },
    )
    .await;
    // ...so the next is refused at once, without being read, and says when to come back.
    let other = telephony_push("person-2", None, Some(&fcm_payload("refused")));
    let refused = post_signed(&ingest, &other).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let error: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(error["error"]["code"], "overloaded");
    let notify = reqwest::Client::new()
        .post(ingest.url("/v1/notify"))
        .bearer_auth(harness::services::PRODUCER_KEY)
        .json(&serde_json::json!({"person_ids": ["p"], "class": "alert", "fcm": {"data": {"m": "x"}}, "idempotency_key": "k"}))
        .send()
        .await
        .expect("notify");
    assert_eq!(notify.status(), 503, "the producer API shares the bound");

    // NATS back: the parked webhook is stored, and its slot is free again.
    env.nats.restart();
    assert_eq!(first.await.expect("first"), 200);
    assert_eq!(post_signed(&ingest, &other).await.status(), 200);
    let metrics = ingest.metrics().await;
    assert!(
        metrics
            .contains(r#"pushline_webhooks_received_total{outcome="overloaded",source="webex"} 1"#),
        "{metrics}"
    );
    env.wait_messages(StreamKind::Events, 2).await;
}

/// Posts `body` signed, on a task of its own (its answer may wait for NATS).
fn post_later(ingest: &Service, body: String) -> tokio::task::JoinHandle<u16> {
    let url = ingest.url("/webhooks/webex");
    tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .header("x-spark-signature", sign(&body, WEBHOOK_SECRET))
            .body(body)
            .send()
            .await
            .map(|response| response.status().as_u16())
            .unwrap_or(0)
    })
}

/// `pushline_held_requests` of ingest right now.
async fn held(ingest: &Service) -> i64 {
    let metrics = ingest.metrics().await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"pushline_held_requests{service="ingest"} "#))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_stalled_store_holds_webhooks_in_bytes_not_in_max_in_flight_until_the_bytes_run_out() {
    let mut env = Env::start();
    let mut config = env.ingest_config();
    config.max_in_flight = 1;
    // Room for two held webhooks (each its event plus the per-request overhead), not three.
    config.max_held_bytes = 2 * ingest::publish::HELD_OVERHEAD_BYTES + 4_096;
    config.nats.publish_retry_budget_ms = 30_000;
    let ingest = start_ingest(config).await;
    ingest.wait_ready().await;
    let body = |n: usize| {
        telephony_push(
            &format!("person-{n}"),
            None,
            Some(&fcm_payload(&format!("held-{n}"))),
        )
    };

    env.nats.stop();
    // Two webhooks wait for the store one after the other through the one slot: each
    // leaves it once held, so the stall does not refuse the second.
    let first = post_later(&ingest, body(1));
    wait::until_true("one webhook held", Duration::from_secs(10), || {
        let ingest = &ingest;
        async move { held(ingest).await == 1 }
    })
    .await;
    let second = post_later(&ingest, body(2));
    wait::until_true("two webhooks held", Duration::from_secs(10), || {
        let ingest = &ingest;
        async move { held(ingest).await == 2 }
    })
    .await;
    // The bytes are spent: the third waits in the slot, and the next is refused.
    let third = post_later(&ingest, body(3));
    let refused_at_once = || async {
        let other = body(4);
        reqwest::Client::new()
            .post(ingest.url("/webhooks/webex"))
            .header("content-type", "application/json")
            .header("x-spark-signature", sign(&other, WEBHOOK_SECRET))
            .body(other)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|response| response.status() == 503)
    };
    wait::until_true(
        "the held bytes to be spent",
        Duration::from_secs(10),
        refused_at_once,
    )
    .await;
    assert_eq!(held(&ingest).await, 2, "the third is not held in bytes");

    env.nats.restart();
    for (n, answer) in [first, second, third].into_iter().enumerate() {
        assert_eq!(answer.await.expect("answer"), 200, "webhook {}", n + 1);
    }
    assert_eq!(held(&ingest).await, 0);
    env.wait_messages(StreamKind::Events, 3).await;
}
