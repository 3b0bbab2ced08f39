//! "Did Alice's phone ring?" answered per event: `GET /v1/events/{id}`, the trace-id
//! lookup and `pushctl trace` show, per device, what became of a call — accepted (with the
//! provider's id), accepted after a retry, rejected and pruned, dead-lettered — and of
//! producer events that expired or found no device; producers see only their own events.

use std::time::Duration;

use harness::mock::apns::MockApns;
use harness::services::{Env, PRODUCER_KEY, Service, start_ingest};
use harness::stack::Stack;
use harness::webex::{apns_payload, fcm_payload, telephony_push};
use pipeline::telemetry::token_tag;
use serde_json::Value;
use sha2::{Digest, Sha256};

const ADMIN_KEY: &str = "test-admin-key";
const OTHER_PRODUCER_KEY: &str = "test-other-producer-key";

async fn started() -> Stack {
    Stack::start_with(|c| {
        // These tests poll the status; the look-up rate is tested on its own below.
        c.ingest.producers.status_rate_per_sec = 1_000.0;
        c.ingest.producers.status_burst = 1_000;
        c.ingest
            .producers
            .admin_keys
            .push(ingest::config::AdminKey {
                name: "oncall".into(),
                sha256: hex::encode(Sha256::digest(ADMIN_KEY.as_bytes())),
            });
        c.ingest.producers.keys.push(ingest::config::ProducerKey {
            name: "billing".into(),
            sha256: hex::encode(Sha256::digest(OTHER_PRODUCER_KEY.as_bytes())),
            previous_sha256: None,
            rate_per_sec: 10.0,
            burst: 10,
            callback_url: None,
            callback_secret: None,
            apps: Vec::new(),
        });
    })
    .await
}

async fn get(stack: &Stack, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(stack.ingest.url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Reads the event's status until `done` holds of it (records arrive as stages finish).
async fn status_when(stack: &Stack, event_id: &str, done: impl Fn(&Value) -> bool) -> Value {
    harness::wait::until_ok(
        "the event's status to settle",
        Duration::from_secs(15),
        || async {
            let (code, body) = get(stack, &format!("/v1/events/{event_id}"), Some(ADMIN_KEY)).await;
            if code == 200 && done(&body) {
                Ok(body)
            } else {
                Err(format!("{code} {body:#}"))
            }
        },
    )
    .await
}

fn device<'a>(status: &'a Value, token: &str) -> &'a Value {
    let tag = token_tag(token);
    status["devices"]
        .as_array()
        .and_then(|devices| devices.iter().find(|d| d["device"] == tag.as_str()))
        .unwrap_or_else(|| panic!("no device {tag} in {status:#}"))
}

#[tokio::test]
async fn a_calls_status_shows_what_became_of_it_on_every_device() {
    let stack = started().await;
    let [ok, flaky, gone, refused] = ["0a", "0b", "0c", "0d"].map(|byte: &str| byte.repeat(32));
    let android = "fcm-token-of-tess";
    for token in [&ok, &flaky, &gone, &refused] {
        stack.register_ios("tess", token).await;
    }
    stack.register_android("tess", android).await;
    let apns = &stack.providers.get::<MockApns>();
    apns.script(&flaky, [MockApns::error(503, "ServiceUnavailable")]);
    apns.script(
        &gone,
        [MockApns::unregistered(pipeline::contract::now_ms())],
    );
    apns.script(&refused, [MockApns::error(400, "BadTopic")]);

    let trace = "ROUTER_tracking-tess.1";
    let body = telephony_push("tess", Some(&apns_payload("c1")), Some(&fcm_payload("c1")));
    let answer = stack.traced_webhook(&body, Some(trace)).await;
    let event_id = answer["event_id"].as_str().expect("event id").to_owned();

    let status = status_when(&stack, &event_id, |s| {
        s["outcome"] != "pending"
            && s["devices"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d["outcome"] == "pruned"))
    })
    .await;
    assert_eq!(status["event_id"], event_id.as_str());
    assert_eq!(status["outcome"], "partially_delivered", "{status:#}");
    assert_eq!(status["received"]["source"], "webex");
    assert_eq!(status["received"]["person_id"], "tess");
    assert_eq!(status["received"]["trace_id"], trace);
    assert!(status["fanned_out_at_ms"].as_u64() >= status["received_at_ms"].as_u64());
    assert_eq!(status["devices"].as_array().map(Vec::len), Some(5));

    let delivered = device(&status, &ok);
    assert_eq!(delivered["outcome"], "accepted");
    let apns_id = delivered["provider_id"].as_str().expect("apns-id");
    assert_eq!(apns_id.len(), 36, "APNs answers the apns-id it was sent");
    assert!(delivered["sent_at_ms"].as_u64() >= delivered["queued_at_ms"].as_u64());
    assert_eq!(delivered["retries"], 0);

    let retried = device(&status, &flaky);
    assert_eq!(retried["outcome"], "accepted");
    assert_eq!(retried["retries"], 1);
    assert_eq!(retried["last_reason"], "ServiceUnavailable");

    let pruned = device(&status, &gone);
    assert_eq!(pruned["outcome"], "pruned");
    assert_eq!(pruned["last_reason"], "Unregistered");

    let dead = device(&status, &refused);
    assert_eq!(dead["outcome"], "dead_lettered");
    assert_eq!(dead["last_reason"], "BadTopic");

    let fcm = device(&status, android);
    assert_eq!(fcm["outcome"], "accepted");
    assert_eq!(fcm["platform"], "fcm");
    assert!(
        fcm["provider_id"]
            .as_str()
            .is_some_and(|name| name.starts_with("projects/")),
        "{fcm:#}"
    );

    // Tokens are named by their tags only.
    let text = status.to_string();
    for token in [&ok, &flaky, &gone, &refused] {
        assert!(!text.contains(token.as_str()), "a token in {text}");
    }
    assert!(!text.contains(android));

    // The trace id finds the event; callers without the right key find nothing.
    let by_trace = format!("/v1/events?trace_id={}", "ROUTER_tracking-tess.1");
    let (code, found) = get(&stack, &by_trace, Some(ADMIN_KEY)).await;
    assert_eq!(code, 200);
    assert_eq!(found["events"][0]["event_id"], event_id.as_str());
    let path = format!("/v1/events/{event_id}");
    let (code, refusal) = get(&stack, &path, Some(PRODUCER_KEY)).await;
    assert_eq!(
        (code, &refusal["error"]["code"]),
        (404, &"not_found".into())
    );
    let (code, _) = get(&stack, &by_trace, Some(PRODUCER_KEY)).await;
    assert_eq!(code, 200);
    assert_eq!(get(&stack, &path, None).await.0, 401);
    assert_eq!(get(&stack, &path, Some("guessed")).await.0, 401);
    assert_eq!(
        get(&stack, "/v1/events/no-such-event", Some(ADMIN_KEY))
            .await
            .0,
        404
    );

    // pushctl finds it by trace id as well as by event id.
    for id in [trace, event_id.as_str()] {
        let text = registry::cli::execute(
            &registry::cli::Command::Trace(id.to_owned()),
            &stack.configs.registry,
        )
        .await
        .expect("pushctl trace");
        assert!(text.contains(&format!("event {event_id}  outcome=partially_delivered")));
        assert!(text.contains(&format!("device {} apns", token_tag(&gone))));
        assert!(text.contains("outcome=pruned"), "{text}");
        assert!(text.contains("reason=ServiceUnavailable"), "{text}");
    }
    let unknown = registry::cli::execute(
        &registry::cli::Command::Trace("nobody-knows".into()),
        &stack.configs.registry,
    )
    .await
    .expect_err("unknown id");
    assert!(unknown.contains("no delivery status"), "{unknown}");
}

#[tokio::test]
async fn producers_see_their_own_events_expire_or_find_no_device() {
    let stack = started().await;
    let unreachable = "1f".repeat(32);
    stack.register_ios("uma", &unreachable).await;
    // APNs is down for this token for longer than the event lives.
    stack.providers.get::<MockApns>().script(
        &unreachable,
        (0..200).map(|_| MockApns::error(503, "ServiceUnavailable")),
    );
    let expiring = stack
        .notify(
            PRODUCER_KEY,
            &serde_json::json!({
                "person_ids": ["uma"], "class": "call", "ttl_secs": 1,
                "apns": {"payload": {"aps": {}, "callId": "short"}},
                "idempotency_key": "short-call",
            }),
        )
        .await;
    let nobody = stack
        .notify(
            PRODUCER_KEY,
            &serde_json::json!({
                "person_ids": ["nobody-registered"], "class": "alert",
                "apns": {"payload": {"aps": {"alert": "hi"}}},
                "idempotency_key": "alert-1",
            }),
        )
        .await;

    let expired = status_when(&stack, &expiring, |s| s["outcome"] != "pending").await;
    assert_eq!(expired["outcome"], "failed", "{expired:#}");
    assert_eq!(expired["received"]["source"], "api");
    assert_eq!(expired["received"]["resource"], "crm");
    let device = device(&expired, &unreachable);
    assert_eq!(device["outcome"], "expired");
    assert!(device["retries"].as_u64() >= Some(1), "{device:#}");

    let empty = status_when(&stack, &nobody, |s| s["outcome"] != "pending").await;
    assert_eq!(empty["outcome"], "no_devices");
    assert_eq!(empty["devices"], Value::Array(vec![]));

    // The producer that sent them reads them; another producer cannot.
    for id in [&expiring, &nobody] {
        let path = format!("/v1/events/{id}");
        let (code, own) = get(&stack, &path, Some(PRODUCER_KEY)).await;
        assert_eq!(code, 200);
        assert_eq!(own["event_id"], id.as_str());
        assert_eq!(get(&stack, &path, Some(OTHER_PRODUCER_KEY)).await.0, 404);
    }
}

async fn ingest_with(adjust: impl FnOnce(&mut ingest::config::ProducersConfig)) -> (Env, Service) {
    let env = Env::start();
    let mut config = env.ingest_config();
    adjust(&mut config.producers);
    let ingest = start_ingest(config).await;
    ingest.wait_ready().await;
    // Ingest creates STATUS in the background: records written before it exists are lost,
    // and a look-up before it is a 503.
    let js = env.jetstream().await;
    let status = env
        .topology()
        .stream_name(pipeline::topology::StreamKind::Status);
    harness::wait::until_true("the STATUS stream", Duration::from_secs(10), || {
        let (js, status) = (js.clone(), status.clone());
        async move { js.get_stream(status).await.is_ok() }
    })
    .await;
    (env, ingest)
}

async fn get_from(ingest: &Service, path: &str) -> (u16, Option<String>, Value) {
    let response = reqwest::Client::new()
        .get(ingest.url(path))
        .bearer_auth(PRODUCER_KEY)
        .send()
        .await
        .expect("GET");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (
        status,
        retry_after,
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn status_lookups_over_the_rate_get_429_with_retry_after() {
    let (env, ingest) = ingest_with(|p| {
        p.status_rate_per_sec = 0.01;
        p.status_burst = 2;
    })
    .await;
    // Ingest creates its streams in the background: a look-up before STATUS exists is a
    // 503 that would spend the burst.
    let js = env.jetstream().await;
    let status = env
        .topology()
        .stream_name(pipeline::topology::StreamKind::Status);
    harness::wait::until_true("the STATUS stream", Duration::from_secs(10), || {
        let (js, status) = (js.clone(), status.clone());
        async move { js.get_stream(status).await.is_ok() }
    })
    .await;
    let unknown = "/v1/events/0123456789abcdef0123456789abcdef";
    assert_eq!(get_from(&ingest, unknown).await.0, 404);
    assert_eq!(get_from(&ingest, "/v1/events?trace_id=t-1").await.0, 200);
    for path in [unknown, "/v1/events?trace_id=t-1"] {
        let (status, retry_after, body) = get_from(&ingest, path).await;
        assert_eq!(status, 429, "{path}: {body}");
        assert_eq!(body["error"]["code"], "rate_limited");
        let retry_after: u64 = retry_after.expect("Retry-After").parse().expect("secs");
        assert!(retry_after >= 1, "{retry_after}");
    }
    Stack::wait_metrics(
        &ingest,
        &[r#"pushline_auth_refusals_total{reason="rate_limited",service="ingest"} 2"#],
    )
    .await;
}

#[tokio::test]
async fn a_trace_lookup_is_bounded_and_says_it_was_truncated() {
    // The look-ups below poll until the records are there: not what the rate is for.
    let (_env, ingest) = ingest_with(|p| {
        p.status_max_events = 2;
        p.status_rate_per_sec = 1_000.0;
        p.status_burst = 1_000;
    })
    .await;
    let notify = |persons: Value, key: &'static str, trace: &'static str| {
        let url = ingest.url("/v1/notify");
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .bearer_auth(PRODUCER_KEY)
                .header("trackingid", trace)
                .json(&serde_json::json!({
                    "person_ids": persons, "class": "alert", "idempotency_key": key,
                    "apns": {"payload": {"aps": {"alert": "hi"}}},
                }))
                .send()
                .await
                .expect("notify");
            assert_eq!(response.status(), 200);
            let answer: Value = response.json().await.expect("json");
            answer["events"]
                .as_array()
                .expect("events")
                .iter()
                .map(|e| e["event_id"].as_str().expect("id").to_owned())
                .collect::<Vec<_>>()
        }
    };
    let many = notify(serde_json::json!(["p1", "p2", "p3"]), "many", "trace-many").await;
    let one = notify(serde_json::json!(["p4"]), "one", "trace-one").await;

    // Status records are written without waiting: read until they are there.
    let read_until = |path: &'static str, done: fn(&Value) -> bool| {
        let ingest = &ingest;
        async move {
            harness::wait::until_ok(path, Duration::from_secs(10), || async {
                let (code, _, body) = get_from(ingest, path).await;
                assert_eq!(code, 200, "{body}");
                if done(&body) {
                    Ok(body)
                } else {
                    Err(format!("{body:#}"))
                }
            })
            .await
        }
    };
    let bounded = read_until("/v1/events?trace_id=trace-many", |b| b["truncated"] == true).await;
    let listed: Vec<&str> = bounded["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["event_id"].as_str().expect("id"))
        .collect();
    assert_eq!(listed.len(), 2, "{bounded:#}");
    assert!(
        listed.iter().all(|id| many.iter().any(|m| m == id)),
        "{bounded:#}"
    );

    let whole = read_until("/v1/events?trace_id=trace-one", |b| {
        b["events"].as_array().is_some_and(|e| !e.is_empty())
    })
    .await;
    assert_eq!(whole["truncated"], false, "{whole:#}");
    assert_eq!(whole["events"][0]["event_id"], one[0].as_str());
    let (_, _, single) = get_from(&ingest, &format!("/v1/events/{}", one[0])).await;
    assert_eq!(single["truncated"], false, "{single:#}");
}
