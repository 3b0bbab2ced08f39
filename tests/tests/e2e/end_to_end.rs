//! The whole pipeline — real NATS and Redis, all four services, mock APNs and FCM over
//! TLS HTTP/2 — from a signed Webex webhook to pushes on (mock) phones.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use dispatcher_apns::config::Config as ApnsConfig;
use harness::mock::apns::MockApns;
use harness::mock::fcm::MockFcm;
use harness::mock::{Recorded, Reply};
use harness::services::{APNS_APP, FCM_APP, start_provider};
use harness::stack::Stack;
use harness::webex::{apns_payload, fcm_payload};
use pipeline::topology::StreamKind;

const WAIT: Duration = Duration::from_secs(15);

fn ios(n: u16) -> String {
    format!("{n:04x}").repeat(16)
}

fn android(n: u16) -> String {
    format!("android-{n}:APA91bHPRgkFLJu6ck_q")
}

fn apns_tokens(requests: &[Recorded]) -> Vec<String> {
    let mut tokens: Vec<String> = requests
        .iter()
        .map(|r| MockApns::token_of(&r.path).to_owned())
        .collect();
    tokens.sort();
    tokens
}

#[tokio::test]
async fn a_call_rings_the_iphone_and_the_android_phone() {
    let stack = Stack::start().await;
    stack.register_ios("alice", &ios(1)).await;
    stack.register_android("alice", &android(1)).await;
    let apns = apns_payload("call-1");
    let fcm = fcm_payload("call-1");
    let answer = stack.call("alice", Some(&apns), Some(&fcm)).await;

    let ios_push = &stack
        .providers
        .get::<MockApns>()
        .wait_delivered(1, WAIT)
        .await[0];
    assert_eq!(ios_push.path, format!("/3/device/{}", ios(1)));
    assert_eq!(ios_push.header("apns-push-type"), Some("voip"));
    assert_eq!(
        ios_push.header("apns-topic"),
        Some(format!("{APNS_APP}.voip").as_str())
    );
    assert_eq!(ios_push.header("apns-priority"), Some("10"));
    let expiration: u64 = ios_push
        .header("apns-expiration")
        .expect("apns-expiration")
        .parse()
        .expect("number");
    let now = pipeline::contract::now_ms() / 1000;
    assert!(
        expiration > now && expiration <= now + 61,
        "expiration {expiration} vs now {now}"
    );
    assert_eq!(ios_push.header("apns-id").map(str::len), Some(36));
    assert!(
        ios_push
            .header("authorization")
            .is_some_and(|a| a.starts_with("bearer "))
    );
    assert_eq!(
        ios_push.body,
        apns.as_bytes(),
        "APNs body must be the apnsPayload byte for byte"
    );

    let android_push = &stack
        .providers
        .get::<MockFcm>()
        .wait_delivered(1, WAIT)
        .await[0];
    assert_eq!(
        android_push.path,
        format!("/v1/projects/{FCM_APP}/messages:send")
    );
    let sent: serde_json::Value = serde_json::from_slice(&android_push.body).expect("json");
    assert_eq!(sent["message"]["token"], android(1));
    assert_eq!(sent["message"]["android"]["priority"], "HIGH");
    let data = serde_json::to_string(&sent["message"]["data"]).expect("data");
    let expected: serde_json::Value = serde_json::from_str(&fcm).expect("payload");
    assert_eq!(
        sent["message"]["data"], expected,
        "data must equal fcmPayload"
    );
    assert!(
        String::from_utf8_lossy(&android_push.body).contains(&fcm),
        "fcmPayload is passed through verbatim: {data}"
    );

    // Metrics tell the same story.
    Stack::wait_metrics(
        stack.dispatcher("apns"),
        &[
            &format!(r#"pushline_pushes_total{{app="{APNS_APP}",outcome="delivered",provider="apns",reason="ok"}} 1"#),
            r#"pushline_end_to_end_seconds_count{class="call",provider="apns"} 1"#,
            r#"pushline_worker_messages_total{outcome="ack",stage="apns"} 1"#,
        ],
    )
    .await;
    Stack::wait_metrics(
        stack.dispatcher("fcm"),
        &[&format!(r#"pushline_pushes_total{{app="{FCM_APP}",outcome="delivered",provider="fcm",reason="ok"}} 1"#)],
    )
    .await;
    Stack::wait_metrics(
        &stack.ingest,
        &[r#"pushline_webhooks_received_total{outcome="accepted",source="webex"} 1"#],
    )
    .await;
    assert_eq!(answer["duplicate"], false);
    // Nothing is left behind in any work queue.
    for kind in [
        StreamKind::Events,
        StreamKind::Push("apns"),
        StreamKind::Push("fcm"),
    ] {
        stack.env.wait_messages(kind, 0).await;
    }
}

#[tokio::test]
async fn a_person_with_three_devices_gets_three_pushes() {
    let stack = Stack::start().await;
    stack.register_ios("bob", &ios(1)).await;
    stack.register_ios("bob", &ios(2)).await;
    stack.register_android("bob", &android(3)).await;
    stack
        .call("bob", Some(&apns_payload("c")), Some(&fcm_payload("c")))
        .await;
    let ios_pushes = stack
        .providers
        .get::<MockApns>()
        .wait_delivered(2, WAIT)
        .await;
    assert_eq!(apns_tokens(&ios_pushes), vec![ios(1), ios(2)]);
    let android_pushes = stack
        .providers
        .get::<MockFcm>()
        .wait_delivered(1, WAIT)
        .await;
    assert_eq!(MockFcm::token_of(&android_pushes[0]), android(3));
}

#[tokio::test]
async fn an_unregistered_token_is_pruned_and_the_next_call_skips_it() {
    let stack = Stack::start().await;
    stack.register_ios("carol", &ios(1)).await;
    stack.register_ios("carol", &ios(2)).await;
    let apple_says_gone_at = pipeline::contract::now_ms();
    stack
        .providers
        .get::<MockApns>()
        .script(&ios(1), [MockApns::unregistered(apple_says_gone_at)]);
    stack
        .call("carol", Some(&apns_payload("first")), None)
        .await;
    Stack::wait_metrics(
        &stack.registry,
        &[r#"pushline_feedback_total{outcome="pruned",platform="apns"} 1"#],
    )
    .await;

    stack
        .call("carol", Some(&apns_payload("second")), None)
        .await;
    let delivered = stack
        .providers
        .get::<MockApns>()
        .wait_delivered(2, WAIT)
        .await;
    // ios(2) got both calls; ios(1) got only the first, answered 410.
    assert_eq!(apns_tokens(&delivered), vec![ios(2), ios(2)]);
    let to_gone: Vec<_> = stack
        .providers
        .get::<MockApns>()
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with(&ios(1)))
        .collect();
    assert_eq!(to_gone.len(), 1);
    assert_eq!(to_gone[0].status, 410);
    Stack::wait_metrics(
        stack.dispatcher("apns"),
        &[&format!(r#"pushline_pushes_total{{app="{APNS_APP}",outcome="invalid_token",provider="apns",reason="Unregistered"}} 1"#)],
    )
    .await;
}

#[tokio::test]
async fn an_unregistered_fcm_token_is_pruned_too() {
    let stack = Stack::start().await;
    stack.register_android("dan", &android(1)).await;
    stack.providers.get::<MockFcm>().script(
        &android(1),
        [MockFcm::error(
            404,
            "UNREGISTERED",
            "Requested entity was not found.",
        )],
    );
    stack.call("dan", None, Some(&fcm_payload("x"))).await;
    Stack::wait_metrics(
        &stack.registry,
        &[r#"pushline_feedback_total{outcome="pruned",platform="fcm"} 1"#],
    )
    .await;
    let devices: serde_json::Value = reqwest::Client::new()
        .get(stack.registry.url("/v1/persons/dan/devices"))
        .bearer_auth(harness::services::API_KEY)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(devices["devices"], serde_json::json!([]));
}

#[tokio::test]
async fn two_service_unavailable_answers_then_success_deliver_exactly_once() {
    let stack = Stack::start().await;
    stack.register_ios("erin", &ios(1)).await;
    stack.providers.get::<MockApns>().script(
        &ios(1),
        [
            MockApns::error(503, "ServiceUnavailable"),
            MockApns::error(503, "ServiceUnavailable"),
        ],
    );
    stack.call("erin", Some(&apns_payload("retry")), None).await;
    stack
        .providers
        .get::<MockApns>()
        .wait_delivered(1, WAIT)
        .await;
    Stack::wait_metrics(
        stack.dispatcher("apns"),
        &[
            r#"pushline_retries_total{reason="ServiceUnavailable",stage="apns"} 2"#,
            r#"pushline_worker_messages_total{outcome="ack",stage="apns"} 1"#,
        ],
    )
    .await;
    stack.env.wait_messages(StreamKind::Push("apns"), 0).await;
    let statuses: Vec<u16> = stack
        .providers
        .get::<MockApns>()
        .requests()
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![503, 503, 200]);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let stack = Stack::start().await;
    stack.register_android("fay", &android(1)).await;
    stack.providers.get::<MockFcm>().script(
        &android(1),
        [Reply::Status { status: 429, body: r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[{"errorCode":"QUOTA_EXCEEDED"}]}}"#.into(), retry_after: Some(1) }],
    );
    stack.call("fay", None, Some(&fcm_payload("q"))).await;
    let all = stack
        .providers
        .get::<MockFcm>()
        .wait_for("a retry after a 429", WAIT, |r| {
            r.iter().any(|r| r.status == 200)
        })
        .await;
    let sends: Vec<&Recorded> = all
        .iter()
        .filter(|r| r.path.ends_with("messages:send"))
        .collect();
    assert_eq!(sends.len(), 2);
    assert!(
        sends[1].at_ms - sends[0].at_ms >= 1_000,
        "retried after {} ms",
        sends[1].at_ms - sends[0].at_ms
    );
}

#[tokio::test]
async fn a_bad_topic_is_dead_lettered_once_with_its_reason_and_not_retried() {
    let stack = Stack::start().await;
    stack.register_ios("gus", &ios(1)).await;
    stack
        .providers
        .get::<MockApns>()
        .script(&ios(1), [MockApns::error(400, "BadTopic")]);
    stack.call("gus", Some(&apns_payload("bad")), None).await;
    let dead = stack.env.wait_messages(StreamKind::Dead, 1).await;
    let letter: serde_json::Value = serde_json::from_slice(&dead[0].payload).expect("json");
    assert_eq!(letter["stage"], "apns");
    assert_eq!(letter["reason"], "BadTopic");
    assert_eq!(letter["attempts"], 1);
    assert!(
        letter["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("BadTopic")
    );
    assert_eq!(letter["message"]["token"], ios(1));
    assert_eq!(
        dead[0].subject.as_str(),
        format!("{}dead.apns", stack.env.prefix)
    );
    Stack::wait_metrics(
        stack.dispatcher("apns"),
        &[r#"pushline_dead_letters_total{reason="BadTopic",stage="apns"} 1"#],
    )
    .await;
    stack.env.wait_messages(StreamKind::Push("apns"), 0).await;
    assert_eq!(
        stack.providers.get::<MockApns>().requests().len(),
        1,
        "no retry after a permanent error"
    );
}

#[tokio::test]
async fn a_call_whose_deadline_passes_while_apns_fails_is_never_delivered_late() {
    // Far more failures than `max_attempts` fit before the deadline: the deadline, not
    // the count, ends the retries, and nothing is dead-lettered.
    let stack = Stack::start_with(|c| {
        c.adjust("apns", |a: &mut ApnsConfig| {
            a.worker.max_attempts = 2;
            a.worker.retry_base_ms = 20;
            a.worker.retry_max_ms = 100;
        });
    })
    .await;
    stack.register_ios("hal", &ios(1)).await;
    stack
        .providers
        .get::<MockApns>()
        .script_all(std::iter::repeat_n(
            MockApns::error(503, "ServiceUnavailable"),
            1_000,
        ));
    let ring_until = pipeline::contract::now_ms() + 1_500;
    let body = harness::webex::telephony_push(
        "hal",
        Some(&format!(r#"{{"aps":{{}},"ringexpiretime":{ring_until}}}"#)),
        None,
    );
    stack.webhook(&body).await;
    Stack::wait_metrics(
        stack.dispatcher("apns"),
        &[r#"pushline_expired_total{stage="apns"} 1"#],
    )
    .await;
    stack.env.wait_messages(StreamKind::Push("apns"), 0).await;
    let requests = stack.providers.get::<MockApns>().requests();
    assert!(
        requests.len() > 2,
        "retried past max_attempts until the deadline: {} tries",
        requests.len()
    );
    assert!(
        requests.iter().all(|r| r.status != 200),
        "nothing delivered"
    );
    assert!(
        requests.iter().all(|r| r.at_ms < ring_until),
        "nothing even attempted after the deadline"
    );
    assert!(
        stack.env.stream_messages(StreamKind::Dead).await.is_empty(),
        "an expired call is dropped, not dead-lettered"
    );
}

#[tokio::test]
async fn oversized_payloads_are_dead_lettered_before_sending() {
    let stack = Stack::start().await;
    stack.register_ios("ivy", &ios(1)).await;
    let big = format!(r#"{{"aps":{{}},"pad":"{}"}}"#, "x".repeat(5_200));
    stack.call("ivy", Some(&big), None).await;
    let dead = stack.env.wait_messages(StreamKind::Dead, 1).await;
    let letter: serde_json::Value = serde_json::from_slice(&dead[0].payload).expect("json");
    assert_eq!(letter["reason"], "PayloadTooLarge");
    assert!(
        stack.providers.get::<MockApns>().requests().is_empty(),
        "never sent"
    );
}

#[tokio::test]
async fn an_expired_provider_token_is_re_signed_once_and_the_push_goes_through() {
    let stack = Stack::start().await;
    stack.register_ios("jo", &ios(1)).await;
    stack
        .providers
        .get::<MockApns>()
        .script(&ios(1), [MockApns::error(403, "ExpiredProviderToken")]);
    stack.call("jo", Some(&apns_payload("jwt")), None).await;
    stack
        .providers
        .get::<MockApns>()
        .wait_delivered(1, WAIT)
        .await;
    let requests = stack.providers.get::<MockApns>().requests();
    assert_eq!(requests.len(), 2);
    assert_ne!(
        requests[0].header("authorization"),
        requests[1].header("authorization"),
        "a new token was signed"
    );
    Stack::wait_metrics(
        stack.dispatcher("apns"),
        &[r#"pushline_worker_messages_total{outcome="ack",stage="apns"} 1"#],
    )
    .await;
}

#[tokio::test]
async fn a_refused_fcm_access_token_is_renewed_once() {
    let stack = Stack::start().await;
    stack.register_android("kim", &android(1)).await;
    stack.call("kim", None, Some(&fcm_payload("1"))).await;
    stack
        .providers
        .get::<MockFcm>()
        .wait_delivered(1, WAIT)
        .await;
    let before = stack.providers.get::<MockFcm>().token_requests();
    stack.providers.get::<MockFcm>().revoke_access_tokens();
    stack.call("kim", None, Some(&fcm_payload("2"))).await;
    stack
        .providers
        .get::<MockFcm>()
        .wait_delivered(2, WAIT)
        .await;
    assert_eq!(
        stack.providers.get::<MockFcm>().token_requests(),
        before + 1
    );
}

#[tokio::test]
async fn pushes_survive_goaway_and_dropped_connections() {
    let stack = Stack::start().await;
    for n in 1..=3 {
        stack.register_ios(&format!("p{n}"), &ios(n)).await;
    }
    stack
        .providers
        .get::<MockApns>()
        .script(&ios(1), [Reply::GoAway]);
    stack.call("p1", Some(&apns_payload("a")), None).await;
    stack
        .providers
        .get::<MockApns>()
        .wait_delivered(1, WAIT)
        .await;
    stack
        .providers
        .get::<MockApns>()
        .script(&ios(2), [Reply::Drop]);
    stack.call("p2", Some(&apns_payload("b")), None).await;
    stack.call("p3", Some(&apns_payload("c")), None).await;
    let delivered = stack
        .providers
        .get::<MockApns>()
        .wait_for("both later calls delivered", WAIT, |r| {
            let ok: HashSet<&str> = r
                .iter()
                .filter(|r| r.status == 200)
                .map(|r| MockApns::token_of(&r.path))
                .collect();
            ok.contains(ios(2).as_str()) && ok.contains(ios(3).as_str())
        })
        .await;
    assert!(
        stack.providers.get::<MockApns>().connections() >= 2,
        "the client reconnected"
    );
    assert!(delivered.iter().filter(|r| r.status == 200).count() >= 3);
}

#[tokio::test]
async fn a_dispatcher_killed_mid_flight_loses_nothing_a_second_replica_delivers() {
    let mut stack = Stack::start_with(|c| {
        c.adjust("apns", |a: &mut ApnsConfig| {
            a.worker.ack_wait_secs = 1;
            a.worker.concurrency = 16;
        });
    })
    .await;
    let people: Vec<String> = (1..=6).map(|n| format!("crash-{n}")).collect();
    for (n, person) in people.iter().enumerate() {
        stack.register_ios(person, &ios(n as u16 + 1)).await;
    }
    // APNs is slow: every push is still in flight when the first replica dies.
    stack
        .providers
        .get::<MockApns>()
        .set_delay(Duration::from_secs(3));
    for person in &people {
        stack.call(person, Some(&apns_payload(person)), None).await;
    }
    Stack::wait_metrics(
        stack.dispatcher("apns"),
        &[r#"pushline_worker_in_flight{stage="apns"} 6"#],
    )
    .await;
    stack.take_dispatcher("apns").abort();
    let killed_at = pipeline::contract::now_ms();

    stack.providers.get::<MockApns>().set_delay(Duration::ZERO);
    let second = start_provider(stack.configs.dispatcher("apns")).await;
    let requests = stack
        .providers
        .get::<MockApns>()
        .wait_for("every call redelivered by the second replica", WAIT, |r| {
            let after: HashSet<&str> = r
                .iter()
                .filter(|r| r.status == 200 && r.at_ms > killed_at)
                .map(|r| MockApns::token_of(&r.path))
                .collect();
            after.len() == people.len()
        })
        .await;
    let after: Vec<&Recorded> = requests.iter().filter(|r| r.at_ms > killed_at).collect();
    assert_eq!(after.len(), people.len(), "each redelivered once");
    Stack::wait_metrics(
        &second,
        &[r#"pushline_worker_messages_total{outcome="ack",stage="apns"} 6"#],
    )
    .await;
    stack.env.wait_messages(StreamKind::Push("apns"), 0).await;
}

#[tokio::test]
async fn two_dispatcher_replicas_share_the_load() {
    let stack = Stack::start_with(|c| {
        c.adjust("apns", |a: &mut ApnsConfig| a.worker.concurrency = 2);
    })
    .await;
    let second = start_provider(stack.configs.dispatcher("apns")).await;
    second.wait_ready().await;
    stack
        .providers
        .get::<MockApns>()
        .set_delay(Duration::from_millis(30));
    let count = 20u16;
    for n in 1..=count {
        stack.register_ios(&format!("share-{n}"), &ios(n)).await;
    }
    for n in 1..=count {
        stack
            .call(
                &format!("share-{n}"),
                Some(&apns_payload(&n.to_string())),
                None,
            )
            .await;
    }
    let delivered = stack
        .providers
        .get::<MockApns>()
        .wait_delivered(count as usize, WAIT)
        .await;
    let unique: HashSet<String> = delivered
        .iter()
        .map(|r| MockApns::token_of(&r.path).to_owned())
        .collect();
    assert_eq!(unique.len(), count as usize);
    let acked = |text: String| -> u64 {
        text.lines()
            .find(|l| {
                l.starts_with(r#"pushline_worker_messages_total{outcome="ack",stage="apns"}"#)
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let first = acked(stack.dispatcher("apns").metrics().await);
    let other = acked(second.metrics().await);
    assert_eq!(first + other, count as u64);
    assert!(
        first > 0 && other > 0,
        "both replicas delivered: {first} + {other}"
    );
}

#[tokio::test]
async fn certificate_auth_sends_without_a_provider_token() {
    let mut stack = Stack::start().await;
    let (cert, key) = stack.providers.ca.issue(&[], APNS_APP);
    let cert_file = stack.providers.dir.path().join("apns-cert.pem");
    let key_file = stack.providers.dir.path().join("apns-key.pem");
    std::fs::write(&cert_file, cert).expect("write cert");
    std::fs::write(&key_file, key).expect("write key");
    let mut config: ApnsConfig = stack.configs.dispatcher("apns").typed();
    let app = &mut config.apps_mut()[0];
    app.team_id = None;
    app.key_id = None;
    app.key_file = None;
    app.certificate_file = Some(cert_file);
    app.certificate_key_file = Some(key_file);
    let cert_dispatcher = stack
        .replace_dispatcher("apns", |admin, shutdown| {
            dispatcher_apns::serve(config, admin, shutdown)
        })
        .await;
    stack.register_ios("lee", &ios(1)).await;
    stack.call("lee", Some(&apns_payload("cert")), None).await;
    let push = &stack
        .providers
        .get::<MockApns>()
        .wait_delivered(1, WAIT)
        .await[0];
    assert_eq!(push.header("authorization"), None);
    // The certificate's expiry is exported for the "credentials expiring" alert.
    let metrics = cert_dispatcher.metrics().await;
    let prefix = format!(
        r#"pushline_credential_expiry_timestamp_seconds{{app="{APNS_APP}",provider="apns"}} "#
    );
    let expiry: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .expect("credential expiry exported");
    assert!(expiry > (pipeline::contract::now_ms() / 1000) as f64);
}

#[tokio::test]
async fn duplicate_webhooks_ring_once() {
    let stack = Stack::start().await;
    stack.register_ios("max", &ios(1)).await;
    let body = harness::webex::telephony_push("max", Some(&apns_payload("once")), None);
    stack.webhook(&body).await;
    stack.webhook(&body).await;
    stack
        .providers
        .get::<MockApns>()
        .wait_delivered(1, WAIT)
        .await;
    Stack::wait_metrics(
        &stack.ingest,
        &[r#"pushline_webhooks_received_total{outcome="duplicate",source="webex"} 1"#],
    )
    .await;
    stack.env.wait_messages(StreamKind::Push("apns"), 0).await;
    let per_token: HashMap<String, usize> = stack
        .providers
        .get::<MockApns>()
        .requests()
        .iter()
        .fold(HashMap::new(), |mut m, r| {
            *m.entry(MockApns::token_of(&r.path).to_owned()).or_default() += 1;
            m
        });
    assert_eq!(per_token.get(&ios(1)), Some(&1));
}

#[tokio::test]
async fn a_producer_notification_reaches_the_phone() {
    let stack = Stack::start().await;
    stack.register_ios("nia", &ios(1)).await;
    stack.register_android("nia", &android(1)).await;
    let body = r#"{"person_ids":["nia"],"class":"call","apns":{"payload":{"aps":{},"callId":"p-1"}},"fcm":{"data":{"callId":"p-1"}},"ttl_secs":30,"idempotency_key":"crm-42"}"#;
    let response = reqwest::Client::new()
        .post(stack.ingest.url("/v1/notify"))
        .bearer_auth(harness::services::PRODUCER_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("notify");
    assert_eq!(response.status(), 200);
    let push = &stack
        .providers
        .get::<MockApns>()
        .wait_delivered(1, WAIT)
        .await[0];
    assert_eq!(push.body, r#"{"aps":{},"callId":"p-1"}"#.as_bytes());
    assert_eq!(push.header("apns-push-type"), Some("voip"));
    let android_push = &stack
        .providers
        .get::<MockFcm>()
        .wait_delivered(1, WAIT)
        .await[0];
    assert_eq!(MockFcm::token_of(android_push), android(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_sent_again_after_a_nats_restart_does_not_ring_twice() {
    // Acked work-queue messages are deleted, so a restarted server's duplicate window no
    // longer knows the event or its jobs: the fan-out's memory of the events it fanned
    // out stops a second ring (the dispatchers' memory of jobs does where another
    // fan-out replica takes the copy).
    let mut stack = Stack::start().await;
    stack.register_android("nina", &android(1)).await;
    let body = harness::webex::telephony_push("nina", None, Some(&fcm_payload("restart")));
    let first = stack.webhook(&body).await;
    stack
        .providers
        .get::<MockFcm>()
        .wait_delivered(1, WAIT)
        .await;
    stack.env.wait_messages(StreamKind::Push("fcm"), 0).await;

    tokio::task::block_in_place(|| stack.env.nats.restart());
    let second = stack.webhook(&body).await;
    assert_eq!(first["event_id"], second["event_id"]);
    if second["duplicate"] == false {
        // The server forgot the event (nats-server 2.9 does): the fan-out acks the copy
        // of an event it already fanned out, unsent.
        Stack::wait_metrics(
            &stack.registry,
            &[r#"pushline_fanout_events_total{outcome="duplicate"} 1"#],
        )
        .await;
    }
    stack.env.wait_messages(StreamKind::Events, 0).await;
    stack.env.wait_messages(StreamKind::Push("fcm"), 0).await;
    assert_eq!(
        stack.providers.get::<MockFcm>().delivered().len(),
        1,
        "the phone rang once"
    );
}

#[tokio::test]
async fn a_job_for_an_app_without_credentials_is_dead_lettered_unsent() {
    use dispatcher_apns::spec::{ApnsPart, ApnsPushType};
    use pipeline::contract::{Class, Environment, PushJob, VERSION, now_ms};
    let stack = Stack::start().await;
    let job = PushJob {
        v: VERSION,
        event_id: "evt-unknown-app".into(),
        token: ios(7),
        keys: None,
        platform: "apns".into(),
        app: "com.example.not-configured".into(),
        environment: Environment::Production,
        class: Class::Call,
        received_at_ms: now_ms(),
        deadline_ms: now_ms() + 30_000,
        part: ApnsPart {
            payload: serde_json::value::to_raw_value(&serde_json::json!({"aps": {}})).expect("raw"),
            push_type: ApnsPushType::Voip,
            priority: 10,
            collapse_id: None,
        },
        trace_id: None,
    };
    let js = stack.env.jetstream().await;
    js.publish(
        stack
            .env
            .topology()
            .push_subject("apns", Environment::Production),
        serde_json::to_vec(&job).expect("json").into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");
    let dead = stack.env.wait_messages(StreamKind::Dead, 1).await;
    let letter: serde_json::Value = serde_json::from_slice(&dead[0].payload).expect("json");
    assert_eq!(letter["stage"], "apns");
    assert_eq!(letter["reason"], "unknown_app");
    Stack::wait_metrics(
        stack.dispatcher("apns"),
        &[r#"pushline_pushes_total{app="unconfigured",outcome="rejected",provider="apns",reason="unknown_app"} 1"#],
    )
    .await;
    assert!(
        stack.providers.get::<MockApns>().requests().is_empty(),
        "nothing sent"
    );
}
