//! Producer callbacks: a producer with a `callback_url` gets one signed POST per event once
//! its devices are settled — retried when its endpoint fails — and the signature checks
//! out with an HMAC computed here, independently, the Standard Webhooks way.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use harness::services::PRODUCER_KEY;
use harness::stack::Stack;
use hmac::{Hmac, Mac};
use pipeline::config::Secret;
use serde_json::Value;
use sha2::Sha256;

const KEY: [u8; 24] = *b"producer-callback-key-24";

#[derive(Default)]
struct Received {
    calls: Mutex<Vec<(HeaderMap, String, u16)>>,
}

/// Fails the first callback with a 500, accepts the rest.
async fn endpoint(
    State(received): State<Arc<Received>>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let mut calls = received.calls.lock().expect("calls");
    let status = if calls.is_empty() {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    };
    calls.push((headers, body, status.as_u16()));
    status
}

impl Received {
    /// Every call so far, once one was accepted (15 s at most).
    async fn until_accepted(&self) -> Vec<(HeaderMap, String, u16)> {
        harness::wait::until_ok("an accepted callback", Duration::from_secs(15), || async {
            let calls = self.calls.lock().expect("calls").clone();
            if calls.iter().any(|(_, _, status)| *status == 204) {
                Ok(calls)
            } else {
                Err(format!("{calls:?}"))
            }
        })
        .await
    }
}

/// A stack whose producer `crm` has a callback endpoint here (and is the backend of
/// `apps`); the endpoint's record, and the token that stops it.
async fn with_callbacks(apps: &[&str]) -> (Stack, Arc<Received>, pipeline::CancellationToken) {
    let received = Arc::new(Received::default());
    let app = Router::new()
        .route("/hooks/pushline", post(endpoint))
        .with_state(received.clone());
    let (addr, stop) = harness::mock::serve_loopback(app).await;
    let apps: Vec<String> = apps.iter().map(|a| (*a).to_owned()).collect();
    let stack = Stack::start_with(|c| {
        let producer = &mut c.ingest.producers.keys[0];
        producer.callback_url = Some(format!("http://{addr}/hooks/pushline"));
        producer.callback_secret = Some(Secret::new(format!("whsec_{}", STANDARD.encode(KEY))));
        producer.apps = apps;
        c.ingest.callbacks.retry_base_ms = 20;
    })
    .await;
    (stack, received, stop)
}

#[tokio::test]
async fn a_producer_hears_each_events_outcome_signed_and_retried() {
    let (stack, received, _stop) = with_callbacks(&[]).await;
    let token = "5c".repeat(32);
    stack.register_ios("nia", &token).await;
    let event_id = stack
        .notify(
            PRODUCER_KEY,
            &serde_json::json!({
                "person_ids": ["nia"], "class": "call", "ttl_secs": 30,
                "apns": {"payload": {"aps": {}, "callId": "cb-1"}},
                "idempotency_key": "callback-call-1",
            }),
        )
        .await;

    let calls = received.until_accepted().await;
    assert_eq!(calls.len(), 2, "one failed try, then the accepted one");

    let (headers, body, _) = &calls[1];
    let header = |name: &str| headers[name].to_str().expect("ascii").to_owned();
    assert_eq!(header("webhook-id"), event_id);
    let timestamp = header("webhook-timestamp");
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&KEY).expect("key");
    mac.update(format!("{event_id}.{timestamp}.{body}").as_bytes());
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    assert_eq!(header("webhook-signature"), expected);

    let callback: Value = serde_json::from_str(body).expect("json body");
    assert_eq!(callback["type"], "event.settled");
    assert_eq!(callback["data"]["event_id"], event_id.as_str());
    assert_eq!(callback["data"]["outcome"], "delivered", "{callback:#}");
    assert_eq!(callback["data"]["devices"][0]["outcome"], "accepted");
    assert!(callback["data"].get("history").is_none());
    assert!(!body.contains(&token), "no device token in a callback");

    Stack::wait_metrics(
        &stack.ingest,
        &[
            r#"pushline_callbacks_total{outcome="failed",producer="crm"} 1"#,
            r#"pushline_callbacks_total{outcome="sent",producer="crm"} 1"#,
        ],
    )
    .await;
}

#[tokio::test]
async fn an_app_backend_hears_which_tokens_were_pruned() {
    use harness::mock::apns::MockApns;
    use harness::mock::fcm::MockFcm;
    use harness::services::APNS_APP;

    // The backend of the iOS app only: the Android app's pruned tokens go nowhere.
    let (stack, received, _stop) = with_callbacks(&[APNS_APP]).await;
    let (ios_gone, android_gone) = ("6d".repeat(32), "fcm-token-of-uma".to_owned());
    stack.register_ios("uma", &ios_gone).await;
    stack.register_android("uma", &android_gone).await;
    let apple_says_gone_at = pipeline::contract::now_ms();
    stack
        .providers
        .get::<MockApns>()
        .script(&ios_gone, [MockApns::unregistered(apple_says_gone_at)]);
    stack.providers.get::<MockFcm>().script(
        &android_gone,
        [MockFcm::error(
            404,
            "UNREGISTERED",
            "Requested entity was not found.",
        )],
    );
    let answer = stack
        .traced_webhook(
            &harness::webex::telephony_push(
                "uma",
                Some(&harness::webex::apns_payload("p1")),
                Some(&harness::webex::fcm_payload("p1")),
            ),
            None,
        )
        .await;
    let event_id = answer["event_id"].as_str().expect("event id").to_owned();

    let calls = received.until_accepted().await;
    assert_eq!(calls.len(), 2, "one failed try, then the accepted one");
    let (first, (headers, body, _)) = (&calls[0], &calls[1]);
    let header = |name: &str| headers[name].to_str().expect("ascii").to_owned();
    let id = header("webhook-id");
    assert_eq!(
        first.0["webhook-id"],
        id.as_str(),
        "a retry is the same message"
    );
    let timestamp = header("webhook-timestamp");
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&KEY).expect("key");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    assert_eq!(header("webhook-signature"), expected);

    let notice: Value = serde_json::from_str(body).expect("json body");
    assert_eq!(notice["type"], "token.pruned", "{notice:#}");
    let data = &notice["data"];
    assert_eq!(data["app"], APNS_APP);
    assert_eq!(data["platform"], "apns");
    assert_eq!(data["token"], ios_gone.as_str());
    assert_eq!(data["reason"], "Unregistered");
    assert_eq!(data["invalid_since_ms"], apple_says_gone_at);
    assert_eq!(data["person_ids"], serde_json::json!(["uma"]));
    assert_eq!(data["event_id"], event_id.as_str());
    assert!(data.get("v").is_none());

    // The Android token was pruned too, for an app nobody is the backend of: counted,
    // not sent.
    Stack::wait_metrics(
        &stack.ingest,
        &[
            r#"pushline_callbacks_total{outcome="failed",producer="crm"} 1"#,
            r#"pushline_callbacks_total{outcome="sent",producer="crm"} 1"#,
            r#"pushline_callbacks_total{outcome="unclaimed",producer=""} 1"#,
        ],
    )
    .await;
    assert!(stack.devices("uma").await.is_empty(), "both tokens pruned");
    assert_eq!(received.calls.lock().expect("calls").len(), 2);
}

#[tokio::test]
async fn a_pruned_token_whose_notice_cannot_be_stored_is_still_pruned_and_counted() {
    use harness::mock::apns::MockApns;
    use harness::services::APNS_APP;
    use pipeline::topology::StreamKind;

    let (stack, received, _stop) = with_callbacks(&[APNS_APP]).await;
    // CALLBACKS as an older release defined it: producers' subjects only, so a pruned
    // token's notice has nowhere to go.
    let js = stack.env.jetstream().await;
    let topology = stack.env.topology();
    let mut config = topology.stream_config(StreamKind::Callbacks);
    config.subjects = vec![format!("{}callbacks.*", topology.prefix())];
    js.update_stream(config).await.expect("narrow CALLBACKS");

    let gone = "7e".repeat(32);
    stack.register_ios("vic", &gone).await;
    stack.providers.get::<MockApns>().script(
        &gone,
        [MockApns::unregistered(pipeline::contract::now_ms())],
    );
    stack
        .call("vic", Some(&harness::webex::apns_payload("n1")), None)
        .await;
    Stack::wait_metrics(
        &stack.registry,
        &[r#"pushline_callbacks_total{outcome="not_queued",producer=""} 1"#],
    )
    .await;
    assert!(
        stack.devices("vic").await.is_empty(),
        "the token is pruned all the same"
    );
    assert!(received.calls.lock().expect("calls").is_empty());
}

#[tokio::test]
async fn a_callback_receiver_answering_302_is_not_followed() {
    #[derive(Default)]
    struct Hits {
        hook: Mutex<usize>,
        elsewhere: Mutex<Vec<String>>,
    }
    let hits = Arc::new(Hits::default());
    let app = Router::new()
        .route(
            "/hooks/pushline",
            post(|State(hits): State<Arc<Hits>>| async move {
                *hits.hook.lock().expect("hits") += 1;
                (StatusCode::FOUND, [("location", "/internal/elsewhere")])
            }),
        )
        .route(
            "/internal/elsewhere",
            axum::routing::any(
                |State(hits): State<Arc<Hits>>, method: axum::http::Method| async move {
                    hits.elsewhere
                        .lock()
                        .expect("hits")
                        .push(method.to_string());
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(hits.clone());
    let (addr, _stop) = harness::mock::serve_loopback(app).await;
    let stack = Stack::start_with(|c| {
        let producer = &mut c.ingest.producers.keys[0];
        producer.callback_url = Some(format!("http://{addr}/hooks/pushline"));
        producer.callback_secret = Some(Secret::new("plain-secret"));
        c.ingest.callbacks.retry_base_ms = 20;
    })
    .await;
    stack
        .notify(
            PRODUCER_KEY,
            &serde_json::json!({
                "person_ids": ["nobody-here"], "class": "alert",
                "apns": {"payload": {"aps": {"alert": "hi"}}},
                "idempotency_key": "redirected-callback",
            }),
        )
        .await;

    // The 302 is a failed try: retried at the same URL, never followed.
    harness::wait::until_true("a retried callback", Duration::from_secs(15), || async {
        *hits.hook.lock().expect("hits") >= 2
    })
    .await;
    assert!(
        hits.elsewhere.lock().expect("hits").is_empty(),
        "the redirect was followed"
    );
}
