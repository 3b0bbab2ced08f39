//! Huawei Push Kit (HMS) end to end: an HMS phone registered through the device API, rung
//! by a Webex call, notified through `/v1/notify`, pruned when Push Kit says its token is
//! invalid, never pushed after the call's deadline while Push Kit throttles, and sent
//! payloads an independent JOSE library opens when its app encrypts. The mock Push Kit
//! and its OAuth endpoint (`dispatcher_hms::testing`) check what Huawei's check.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use harness::services::PRODUCER_KEY;
use harness::stack::Stack;
use harness::webex::{apns_payload, fcm_payload, telephony_push};
use pipeline::config::Secret;
use pipeline::mock::Recorded;
use pipeline::topology::StreamKind;
use providers::testing::dispatcher_hms::config::Config as HmsConfig;
use providers::testing::dispatcher_hms::testing::{MockHms, SANDBOX_APP, device_token};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

/// The stack's mock Push Kit.
fn push_kit(stack: &Stack) -> &MockHms {
    stack.providers.get::<MockHms>()
}

/// Registers an HMS phone of `person` (with `more` in the body); its token.
async fn register_phone(stack: &Stack, person: &str, n: u64, more: Value) -> String {
    let token = device_token(n);
    let mut body = json!({"person_id": person, "platform": "hms", "app": SANDBOX_APP});
    if let (Some(body), Some(more)) = (body.as_object_mut(), more.as_object()) {
        body.extend(more.clone());
    }
    stack.register(&token, body).await;
    token
}

/// The `android` object of a recorded send.
fn android(request: &Recorded) -> Value {
    MockHms::body_of(request)["message"]["android"].clone()
}

/// `android.ttl` in seconds.
fn ttl_secs(request: &Recorded) -> f64 {
    android(request)["ttl"]
        .as_str()
        .and_then(|t| t.strip_suffix('s'))
        .and_then(|t| t.parse().ok())
        .expect("a TTL in seconds")
}

#[tokio::test]
async fn a_webex_call_rings_an_hms_phone_with_a_high_urgency_voip_data_message() {
    let stack = Stack::start().await;
    let hms = push_kit(&stack);
    let token = register_phone(&stack, "ada", 1, json!({})).await;
    let devices = stack.devices("ada").await;
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["platform"], "hms");
    assert_eq!(devices[0]["app"], SANDBOX_APP);

    let fcm = fcm_payload("call-hms-1");
    let ring_until = pipeline::contract::now_ms() + 45_000;
    let body = telephony_push("ada", Some(&apns_payload("call-hms-1")), Some(&fcm)).replace(
        r#""data":{"#,
        &format!(r#""data":{{"ringexpiretime":{ring_until},"#),
    );
    stack.webhook(&body).await;
    let sent = hms.wait_delivered(1, WAIT).await;
    assert_eq!(sent[0].path, format!("/v1/{SANDBOX_APP}/messages:send"));
    assert_eq!(MockHms::token_of(&sent[0]), token);
    assert_eq!(
        MockHms::body_of(&sent[0])["message"]["data"].as_str(),
        Some(fcm.as_str()),
        "the call's description, byte for byte, as Push Kit's data string"
    );
    let android = android(&sent[0]);
    assert_eq!(android["urgency"], "HIGH");
    assert_eq!(android["category"], "VOIP");
    let ttl = ttl_secs(&sent[0]);
    assert!(
        ttl > 40.0 && ttl <= 45.0,
        "TTL is the time left to ring: {ttl}"
    );
    Stack::wait_metrics(
        stack.dispatcher("hms"),
        &[&format!(
            r#"pushline_pushes_total{{app="{SANDBOX_APP}",outcome="delivered",provider="hms",reason="ok"}} 1"#
        )],
    )
    .await;
    assert_eq!(hms.token_requests(), 1);
}

#[tokio::test]
async fn a_display_notification_with_actions_reaches_an_hms_phone() {
    let stack = Stack::start().await;
    let hms = push_kit(&stack);
    register_phone(&stack, "bo", 2, json!({})).await;
    let notification = json!({
        "title": "Missed call",
        "body": "Ada",
        "click_action": {"type": 1, "action": "com.example.MISSED_CALL"},
        "buttons": [
            {"name": "Call back", "action_type": 1, "intent_type": 1, "intent": "intent://call-back"},
            {"name": "Dismiss", "action_type": 3}
        ]
    });
    let request = json!({
        "person_ids": ["bo"],
        "class": "alert",
        "idempotency_key": "hms-missed-call-1",
        "hms": {"data": {"callId": "c-10"}, "notification": notification, "collapse_key": 7}
    });
    stack.notify(PRODUCER_KEY, &request).await;
    let sent = hms.wait_delivered(1, WAIT).await;
    let android = android(&sent[0]);
    assert_eq!(android["notification"], notification, "sent as given");
    assert_eq!(
        android["urgency"], "NORMAL",
        "HIGH only for a scenario category, and this alert names none"
    );
    assert_eq!(android["collapse_key"], 7);
    assert!(android.get("category").is_none(), "only calls are VOIP");
    assert_eq!(MockHms::data_of(&sent[0])["callId"], "c-10");
}

#[tokio::test]
async fn a_token_push_kit_calls_invalid_is_pruned() {
    let stack = Stack::start().await;
    let hms = push_kit(&stack);
    let token = register_phone(&stack, "cy", 3, json!({})).await;
    hms.script(
        &token,
        [MockHms::error("80300007", "All the tokens are invalid")],
    );
    stack
        .call("cy", None, Some(&fcm_payload("call-gone")))
        .await;
    harness::wait::until_true("the token to be pruned", WAIT, || async {
        stack.devices("cy").await.is_empty()
    })
    .await;
    assert!(
        stack.env.stream_messages(StreamKind::Dead).await.is_empty(),
        "an invalid token is pruned, not dead-lettered"
    );
    assert!(hms.delivered().is_empty());
}

#[tokio::test]
async fn a_call_whose_deadline_passes_while_push_kit_throttles_is_never_pushed_late() {
    let stack = Stack::start_with(|c| {
        c.adjust::<HmsConfig>("hms", |c| {
            c.worker.max_attempts = 2;
            c.worker.retry_base_ms = 20;
            c.worker.retry_max_ms = 100;
        })
    })
    .await;
    let hms = push_kit(&stack);
    register_phone(&stack, "di", 4, json!({})).await;
    // Flow control as Huawei documents it (503) and as HTTP has it (429), each saying
    // when to come back.
    hms.script_all(
        [429, 503]
            .into_iter()
            .cycle()
            .take(1_000)
            .map(|status| MockHms::flow_control(status, 1)),
    );
    // Room for a retry or two a second apart, however busy the machine.
    let ring_until = pipeline::contract::now_ms() + 2_500;
    let body = telephony_push(
        "di",
        None,
        Some(&format!(
            r#"{{"callId":"late","ringexpiretime":"{ring_until}"}}"#
        )),
    );
    stack.webhook(&body).await;
    Stack::wait_metrics(
        stack.dispatcher("hms"),
        &[r#"pushline_expired_total{stage="hms"} 1"#],
    )
    .await;
    let requests = hms.requests();
    assert!(
        requests.len() >= 2,
        "retried after Retry-After: {} tries",
        requests.len()
    );
    assert!(
        requests
            .windows(2)
            .all(|w| w[1].at_ms >= w[0].at_ms + 1_000),
        "each retry waited for Retry-After"
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

/// Opens a JWE with josekit (OpenSSL underneath), not with pushline's code.
fn open(key: &[u8; 32], jwe: &str) -> Result<(Vec<u8>, josekit::jwe::JweHeader), String> {
    let decrypter = josekit::jwe::Dir
        .decrypter_from_bytes(key)
        .map_err(|e| e.to_string())?;
    josekit::jwe::deserialize_compact(jwe, &decrypter).map_err(|e| e.to_string())
}

#[tokio::test]
async fn an_encrypting_apps_payload_opens_with_an_independent_jose_library() {
    let stack = Stack::start_with(|c| {
        c.registry.devices.key_encryption_keys = vec![registry::keyring::KekConfig {
            id: "kek-hms".into(),
            key: Some(Secret::new(STANDARD.encode([9u8; 32]))),
            key_file: None,
        }];
        c.registry.devices.apps.insert(
            SANDBOX_APP.into(),
            registry::config::AppPolicy {
                encrypt_payloads: true,
                ..Default::default()
            },
        );
    })
    .await;
    let hms = push_kit(&stack);
    let key = [0x33u8; 32];
    register_phone(
        &stack,
        "erin",
        5,
        json!({"e2e_key": STANDARD.encode(key), "e2e_kid": "erin-hms-1"}),
    )
    .await;
    // A phone of the encrypting app without a key gets nothing.
    register_phone(&stack, "erin", 6, json!({})).await;

    let fcm = fcm_payload("secret-call");
    stack.call("erin", None, Some(&fcm)).await;
    let sent = hms.wait_delivered(1, WAIT).await;
    let data = MockHms::data_of(&sent[0]);
    assert!(data.get("callId").is_none(), "nothing in clear: {data}");
    let jwe = data["jwe"].as_str().expect("one jwe field");
    let (plain, header) = open(&key, jwe).expect("the device's key opens it");
    assert_eq!(String::from_utf8(plain).expect("utf-8"), fcm);
    assert_eq!(header.algorithm(), Some("dir"));
    assert_eq!(header.content_encryption(), Some("A256GCM"));
    assert_eq!(header.key_id(), Some("erin-hms-1"));
    assert!(open(&[0x44; 32], jwe).is_err(), "a wrong key fails");
    assert_eq!(
        android(&sent[0])["category"],
        "VOIP",
        "still rings as a call"
    );
    Stack::wait_metrics(
        &stack.registry,
        &[r#"pushline_fanout_skipped_total{platform="hms",reason="no_key"} 1"#],
    )
    .await;
    assert_eq!(hms.requests().len(), 1, "the keyless phone got nothing");
}

#[tokio::test]
async fn a_reset_app_secret_raises_the_credential_alarm() {
    let stack = Stack::start().await;
    let hms = push_kit(&stack);
    register_phone(&stack, "flo", 7, json!({})).await;
    hms.reset_secret(SANDBOX_APP);
    stack
        .call("flo", None, Some(&fcm_payload("call-refused")))
        .await;
    Stack::wait_metrics(
        stack.dispatcher("hms"),
        &[&format!(
            r#"pushline_credential_valid{{app="{SANDBOX_APP}",provider="hms"}} 0"#
        )],
    )
    .await;
    // The access token cached before the reset is refused; a fresh one is not issued.
    let requests = hms.requests();
    assert!(!requests.is_empty(), "the push reached Push Kit");
    assert!(requests.iter().all(|r| r.status == 401), "{requests:?}");
    assert!(hms.delivered().is_empty());
}
