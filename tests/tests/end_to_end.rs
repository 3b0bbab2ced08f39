//! The whole pipeline — real NATS and Redis, all four services, mock APNs and FCM over
//! TLS HTTP/2 — from a signed Webex webhook to pushes on (mock) phones.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use harness::mock::apns::MockApns;
use harness::mock::fcm::MockFcm;
use harness::mock::{Recorded, Reply};
use harness::services::{APNS_APP, FCM_APP, start_dispatcher_apns};
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

    let ios_push = &stack.providers.apns.wait_delivered(1, WAIT).await[0];
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

    let android_push = &stack.providers.fcm.wait_delivered(1, WAIT).await[0];
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
        stack.apns(),
        &[
            &format!(r#"pushline_pushes_total{{app="{APNS_APP}",outcome="delivered",provider="apns",reason="ok"}} 1"#),
            r#"pushline_end_to_end_seconds_count{class="call",provider="apns"} 1"#,
            r#"pushline_worker_messages_total{outcome="ack",stage="apns"} 1"#,
        ],
    )
    .await;
    Stack::wait_metrics(
        &stack.fcm,
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
        StreamKind::PushApns,
        StreamKind::PushFcm,
    ] {
        stack.env.wait_messages(kind, 0).await;
    }
}
