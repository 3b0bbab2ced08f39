//! Web Push end to end: a browser's push subscription registered through the device API,
//! rung by a Webex call and notified through `/v1/notify`, pruned when its push service
//! says it is gone, and never pushed after the call's deadline. The mock push service
//! decrypts every push with Mozilla's `ece` and verifies VAPID with `josekit`
//! (`harness::mock::webpush`), neither of which pushline uses to send.

use harness::mock::apns::MockApns;
use harness::mock::fcm::MockFcm;
use std::time::Duration;

use dispatcher_webpush::config::Config as WebPushConfig;
use harness::mock::Reply;
use harness::mock::webpush::MockPushService;
use harness::services::{API_KEY, PRODUCER_KEY, Service, WEB_APP};
use harness::stack::Stack;
use harness::webex::{apns_payload, fcm_payload, telephony_push};
use pipeline::topology::StreamKind;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

/// A mock push service of its own and the Web Push dispatcher sending to it.
pub(crate) struct WebPush {
    /// The push service browsers subscribe at.
    pub service: MockPushService,
    /// dispatcher-webpush.
    pub dispatcher: Service,
    _dir: tempfile::TempDir,
}

/// Starts a mock push service (on one of the ports the registry accepts) and a Web Push
/// dispatcher for [`WEB_APP`] with a fresh application server key, after `adjust` changed
/// the dispatcher's configuration; they take the place of the stack's own.
pub(crate) async fn start_webpush(
    stack: &mut Stack,
    adjust: impl FnOnce(&mut WebPushConfig),
) -> WebPush {
    start_webpush_speaking(stack, false, adjust).await
}

/// Like [`start_webpush`]; with `http1` the push service speaks HTTP/1.1 only.
pub(crate) async fn start_webpush_speaking(
    stack: &mut Stack,
    http1: bool,
    adjust: impl FnOnce(&mut WebPushConfig),
) -> WebPush {
    use base64::Engine as _;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
    let public = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.public_key_raw());
    let at = harness::mock::Listen::loopback(stack.env.next_push_service_port());
    let ca = &stack.providers.ca;
    let service = if http1 {
        MockPushService::start_push_service_http1(ca, &public, &at).await
    } else {
        MockPushService::start_push_service_at(ca, &public, &at).await
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let key_file = dir.path().join("vapid.pem");
    std::fs::write(&key_file, key.serialize_pem()).expect("write the key");
    let ca_file = service.write_ca(dir.path(), "push-ca.pem");
    let stack_config: WebPushConfig = stack.configs.dispatcher("webpush").typed();
    let mut config = dispatcher_webpush::testing::dispatcher_config(
        WEB_APP,
        &key_file,
        (&ca_file, stack.env.push_service_origins()),
        stack_config.nats,
        stack_config.telemetry,
    );
    adjust(&mut config);
    let dispatcher = stack
        .replace_dispatcher("webpush", |admin, shutdown| {
            dispatcher_webpush::serve(config, admin, shutdown)
        })
        .await;
    WebPush {
        service,
        dispatcher,
        _dir: dir,
    }
}

/// Registers a browser's push subscription for `person` (`POST /v1/devices`).
pub(crate) async fn register_browser(stack: &Stack, person: &str, subscription: &Value) {
    let response = reqwest::Client::new()
        .post(stack.registry.url("/v1/devices"))
        .bearer_auth(API_KEY)
        .json(&json!({
            "person_id": person,
            "platform": "webpush",
            "app": WEB_APP,
            "subscription": subscription,
        }))
        .send()
        .await
        .expect("register");
    let status = response.status();
    assert!(
        status.is_success(),
        "register a browser: {status} {}",
        response.text().await.unwrap_or_default()
    );
}

fn status(status: u16) -> Reply {
    Reply::Status {
        status,
        body: String::new(),
        retry_after: None,
    }
}

#[tokio::test]
async fn a_webex_call_rings_a_browser_with_the_call_decrypted_by_an_independent_implementation() {
    let mut stack = Stack::start().await;
    let web = start_webpush(&mut stack, |_| {}).await;
    let subscription = web.service.subscribe();
    register_browser(&stack, "ada", &subscription).await;
    let devices = stack.devices("ada").await;
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["platform"], "webpush");
    assert_eq!(devices[0]["token"], subscription["endpoint"]);
    assert_eq!(devices[0]["app"], WEB_APP);

    let fcm = fcm_payload("call-web-1");
    let ring_until = pipeline::contract::now_ms() + 45_000;
    let body = telephony_push("ada", Some(&apns_payload("call-web-1")), Some(&fcm)).replace(
        r#""data":{"#,
        &format!(r#""data":{{"ringexpiretime":{ring_until},"#),
    );
    stack.webhook(&body).await;
    web.service.wait_delivered(1, WAIT).await;
    let messages = web.service.messages();
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(
        message.plaintext,
        fcm.as_bytes(),
        "the call's description, byte for byte"
    );
    assert_eq!(message.urgency.as_deref(), Some("high"));
    assert!(
        (40..=45).contains(&message.ttl),
        "TTL is the time left to ring: {}",
        message.ttl
    );
    assert_eq!(
        message.subscription,
        MockPushService::id_of(subscription["endpoint"].as_str().expect("endpoint"))
    );
    Stack::wait_metrics(
        &web.dispatcher,
        &[&format!(
            r#"pushline_pushes_total{{app="{WEB_APP}",outcome="delivered",provider="webpush",reason="ok"}} 1"#
        )],
    )
    .await;
}

#[tokio::test]
async fn a_producer_notifies_a_browser_and_an_iphone_through_one_request() {
    let mut stack = Stack::start().await;
    let web = start_webpush(&mut stack, |_| {}).await;
    register_browser(&stack, "bo", &web.service.subscribe()).await;
    stack.register_ios("bo", &"ab".repeat(32)).await;
    let request = json!({
        "person_ids": ["bo"],
        "class": "call",
        "idempotency_key": "web-call-1",
        "apns": {"payload": {"aps": {}, "callId": "c-9"}},
        "webpush": {
            "notification": {
                "title": "Ada is calling",
                "actions": [{"action": "answer", "title": "Answer"}, {"action": "decline", "title": "Decline"}]
            },
            "topic": "call-c-9"
        }
    });
    stack.notify(PRODUCER_KEY, &request).await;
    web.service.wait_delivered(1, WAIT).await;
    stack
        .providers
        .get::<MockApns>()
        .wait_delivered(1, WAIT)
        .await;
    let message = &web.service.messages()[0];
    let payload: Value = message.json();
    assert_eq!(payload["notification"]["title"], "Ada is calling");
    assert_eq!(payload["notification"]["requireInteraction"], true);
    assert_eq!(payload["notification"]["actions"][1]["action"], "decline");
    assert_eq!(message.topic.as_deref(), Some("call-c-9"));
    assert_eq!(message.urgency.as_deref(), Some("high"));
}

#[tokio::test]
async fn a_subscription_the_push_service_says_is_gone_is_pruned() {
    let mut stack = Stack::start().await;
    let web = start_webpush(&mut stack, |_| {}).await;
    let subscription = web.service.subscribe();
    let endpoint = subscription["endpoint"].as_str().expect("endpoint");
    register_browser(&stack, "cy", &subscription).await;
    web.service
        .script(&MockPushService::id_of(endpoint), [status(410)]);
    stack
        .call("cy", None, Some(&fcm_payload("call-gone")))
        .await;
    harness::wait::until_true("the subscription to be pruned", WAIT, || async {
        stack.devices("cy").await.is_empty()
    })
    .await;
    assert!(
        stack.env.stream_messages(StreamKind::Dead).await.is_empty(),
        "a gone subscription is pruned, not dead-lettered"
    );
    assert!(web.service.delivered().is_empty());
}

#[tokio::test]
async fn a_call_whose_deadline_passes_while_the_push_service_fails_is_never_pushed_late() {
    let mut stack = Stack::start().await;
    let web = start_webpush(&mut stack, |c| {
        c.worker.max_attempts = 2;
        c.worker.retry_base_ms = 20;
        c.worker.retry_max_ms = 100;
    })
    .await;
    register_browser(&stack, "di", &web.service.subscribe()).await;
    web.service
        .script_all(std::iter::repeat_n(status(503), 1_000));
    let ring_until = pipeline::contract::now_ms() + 1_500;
    let body = telephony_push(
        "di",
        None,
        Some(&format!(
            r#"{{"callId":"late","ringexpiretime":"{ring_until}"}}"#
        )),
    );
    stack.webhook(&body).await;
    Stack::wait_metrics(
        &web.dispatcher,
        &[r#"pushline_expired_total{stage="webpush"} 1"#],
    )
    .await;
    let requests = web.service.requests();
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
async fn a_push_service_refusing_the_vapid_key_dead_letters_the_push() {
    let mut stack = Stack::start().await;
    let web = start_webpush(&mut stack, |_| {}).await;
    // A second push service, trusting another application server key; only the first
    // dispatcher runs, so every push is signed with the first key.
    let other = start_webpush(&mut stack, |_| {}).await;
    other.dispatcher.stop().await;
    let subscription = other.service.subscribe();
    register_browser(&stack, "ed", &subscription).await;
    stack.call("ed", None, Some(&fcm_payload("c"))).await;
    let dead = stack.env.wait_messages(StreamKind::Dead, 1).await;
    let letter: Value = serde_json::from_slice(&dead[0].payload).expect("json");
    assert_eq!(letter["reason"], "vapid_refused");
    assert!(
        letter["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("403"),
        "{letter}"
    );
    assert!(other.service.delivered().is_empty());
    assert!(web.service.requests().is_empty());
}

#[tokio::test]
async fn display_notifications_with_actions_reach_an_iphone_an_android_phone_and_a_browser() {
    let mut stack = Stack::start().await;
    let web = start_webpush(&mut stack, |_| {}).await;
    register_browser(&stack, "flo", &web.service.subscribe()).await;
    stack
        .register(
            &"cd".repeat(32),
            json!({"person_id": "flo", "platform": "apns", "channel": "alert"}),
        )
        .await;
    stack
        .register_android("flo", "flo-phone:APA91bHPRgkFLJu6ck_q")
        .await;
    let apns = r#"{"aps":{"alert":{"title":"Missed call","body":"Ada"},"category":"MISSED_CALL"}}"#;
    let request = json!({
        "person_ids": ["flo"],
        "class": "alert",
        "idempotency_key": "missed-call-1",
        "apns": {"payload": serde_json::from_str::<Value>(apns).expect("json")},
        "fcm": {
            "data": {"callId": "c-10"},
            "notification": {"title": "Missed call", "body": "Ada", "click_action": "MISSED_CALL"}
        },
        "webpush": {
            "notification": {
                "title": "Missed call",
                "body": "Ada",
                "actions": [{"action": "call_back", "title": "Call back"}]
            }
        }
    });
    stack.notify(PRODUCER_KEY, &request).await;
    web.service.wait_delivered(1, WAIT).await;
    let ios = stack
        .providers
        .get::<MockApns>()
        .wait_delivered(1, WAIT)
        .await;
    let android = stack
        .providers
        .get::<MockFcm>()
        .wait_for("an FCM send", WAIT, |r| {
            r.iter()
                .any(|r| r.status == 200 && r.path.ends_with("messages:send"))
        })
        .await;

    let apns_body: Value = serde_json::from_slice(&ios[0].body).expect("json");
    assert_eq!(apns_body["aps"]["category"], "MISSED_CALL");
    assert_eq!(ios[0].header("apns-push-type"), Some("alert"));
    let fcm = android
        .iter()
        .find(|r| r.path.ends_with("messages:send"))
        .expect("send");
    let fcm_body: Value = serde_json::from_slice(&fcm.body).expect("json");
    assert_eq!(
        fcm_body["message"]["android"]["notification"]["click_action"],
        "MISSED_CALL"
    );
    assert_eq!(fcm_body["message"]["data"]["callId"], "c-10");
    let web_payload = web.service.messages()[0].json();
    assert_eq!(
        web_payload["notification"]["actions"][0]["action"],
        "call_back"
    );
    assert!(
        web_payload["notification"]
            .get("requireInteraction")
            .is_none(),
        "only calls require interaction by default"
    );
    assert_eq!(web.service.messages()[0].urgency.as_deref(), Some("normal"));
}

#[tokio::test]
async fn a_push_service_speaking_only_http1_gets_its_pushes() {
    let mut stack = Stack::start().await;
    let web = start_webpush_speaking(&mut stack, true, |_| {}).await;
    register_browser(&stack, "gil", &web.service.subscribe()).await;
    stack
        .call("gil", None, Some(&fcm_payload("call-http1")))
        .await;
    web.service.wait_delivered(1, WAIT).await;
    assert_eq!(
        web.service.messages()[0].plaintext,
        fcm_payload("call-http1").as_bytes()
    );
}

#[tokio::test]
async fn subscriptions_are_checked_when_registered_and_deleted_by_their_endpoint() {
    let mut stack = Stack::start().await;
    let web = start_webpush(&mut stack, |_| {}).await;
    let http = reqwest::Client::new();
    let post = |body: Value, key: Option<&'static str>| {
        let mut request = http.post(stack.registry.url("/v1/devices")).json(&body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    let key = Some(harness::services::API_KEY);
    let subscription = web.service.subscribe();
    let endpoint = subscription["endpoint"]
        .as_str()
        .expect("endpoint")
        .to_owned();
    let mut bad_point = subscription.clone();
    bad_point["keys"]["p256dh"] = json!("BAAA");
    let cases = [
        (
            json!({"person_id": "hu", "platform": "webpush", "subscription": bad_point}),
            "`subscription.keys`: `p256dh` must be a P-256 public key",
        ),
        (
            json!({"person_id": "hu", "platform": "webpush", "token": endpoint}),
            "`subscription.keys` is required",
        ),
        (
            json!({"person_id": "hu", "platform": "apns", "token": "ab".repeat(32), "subscription": subscription}),
            "`subscription.endpoint` is not the token being registered",
        ),
        (
            json!({"person_id": "hu", "platform": "webpush"}),
            "`token` or `subscription` is required",
        ),
        (
            json!({"person_id": "hu", "platform": "webpush", "app": WEB_APP, "channel": "voip", "subscription": subscription}),
            "`channel` voip is not a channel of webpush devices",
        ),
    ];
    for (body, needle) in cases {
        let response = post(body.clone(), key).await.expect("POST");
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.expect("json");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{body}: {message}");
    }
    let anonymous = post(json!({"not": "a registration"}), None)
        .await
        .expect("POST");
    assert_eq!(
        anonymous.status(),
        401,
        "authentication comes before the body"
    );

    // PUT with the endpoint percent-encoded in the path, then DELETE the same way.
    let mut url = reqwest::Url::parse(&stack.registry.url("/v1/devices")).expect("url");
    url.path_segments_mut().expect("segments").push(&endpoint);
    let put = http
        .put(url.clone())
        .bearer_auth(harness::services::API_KEY)
        .json(&json!({"person_id": "hu", "platform": "webpush", "app": WEB_APP, "subscription": subscription}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(put.status(), 201);
    let device: Value = put.json().await.expect("json");
    assert_eq!(device["token"], endpoint.as_str());
    assert!(device.get("keys").is_none(), "the keys are never shown");
    let deleted = http
        .delete(url)
        .bearer_auth(harness::services::API_KEY)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(deleted.status(), 204);
    assert!(stack.devices("hu").await.is_empty());
}

#[tokio::test]
async fn a_browser_registers_in_production_where_the_default_environment_is_apns_sandbox() {
    let mut stack = Stack::start_with(|c| {
        c.registry.devices.default_environment = pipeline::contract::Environment::Sandbox;
    })
    .await;
    let web = start_webpush(&mut stack, |_| {}).await;
    register_browser(&stack, "ida", &web.service.subscribe()).await;
    stack.register_ios("ida", &"ef".repeat(32)).await;
    let devices = stack.devices("ida").await;
    let environment = |platform: &str| {
        devices
            .iter()
            .find(|d| d["platform"] == platform)
            .map(|d| d["environment"].clone())
    };
    assert_eq!(environment("webpush"), Some(json!("production")));
    assert_eq!(environment("apns"), Some(json!("sandbox")));
}
