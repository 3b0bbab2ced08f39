//! A rolling upgrade to contract version 2 loses nothing: what an earlier release left in
//! the streams — version-1 events and jobs, FCM jobs under the old subject `push.fcm` — is
//! delivered by the new services; so is what an unpartitioned deployment left once every
//! service runs on three partitions.

use harness::mock::fcm::MockFcm;
use std::time::Duration;

use async_nats::jetstream::stream::{Config as StreamConfig, RetentionPolicy, StorageType};
use harness::services::{Env, FCM_APP, Providers, start_provider};
use harness::stack::Stack;
use pipeline::topology::StreamKind;

const WAIT: Duration = Duration::from_secs(10);

fn android(n: u16) -> String {
    format!("upgrade-{n}:APA91bHPRgkFLJu6ck_q")
}

#[tokio::test]
async fn an_fcm_job_an_earlier_release_stored_under_the_old_subject_is_delivered() {
    let env = Env::start();
    let js = env.jetstream().await;
    // PUSH_FCM as the earlier release defined it, holding one version-1 job.
    let old_subject = format!("{}push.fcm", env.prefix);
    js.create_stream(StreamConfig {
        name: env.topology().stream_name(StreamKind::Push("fcm")),
        subjects: vec![old_subject.clone()],
        retention: RetentionPolicy::WorkQueue,
        storage: StorageType::File,
        ..Default::default()
    })
    .await
    .expect("the old stream");
    let now = pipeline::contract::now_ms();
    let job = serde_json::json!({
        "v": 1, "event_id": "evt-before-upgrade", "token": android(1), "platform": "fcm",
        "app": FCM_APP, "environment": "production", "class": "call",
        "received_at_ms": now, "deadline_ms": now + 60_000,
        "fcm": {"data": {"callId": "before-upgrade"}, "priority": "high"}
    });
    js.publish(old_subject, serde_json::to_vec(&job).expect("json").into())
        .await
        .expect("publish")
        .await
        .expect("stored");

    let providers = Providers::start().await;
    let fcm = start_provider(&providers.dispatcher_config(&env, "fcm")).await;
    fcm.wait_ready().await;
    let delivered = providers.get::<MockFcm>().wait_delivered(1, WAIT).await;
    let body: serde_json::Value = serde_json::from_slice(&delivered[0].body).expect("json");
    assert_eq!(body["message"]["token"], android(1));
    assert_eq!(body["message"]["data"]["callId"], "before-upgrade");
    let stream = js
        .get_stream(env.topology().stream_name(StreamKind::Push("fcm")))
        .await
        .expect("stream");
    assert_eq!(
        stream.cached_info().config.subjects,
        [format!("{}push.fcm.*", env.prefix)],
        "the stream now takes the new subjects"
    );
    env.wait_messages(StreamKind::Push("fcm"), 0).await;
    assert!(env.stream_messages(StreamKind::Dead).await.is_empty());
}

#[tokio::test]
async fn a_version_1_event_left_in_events_rings_the_phone() {
    let stack = Stack::start().await;
    stack.register_android("vera", &android(2)).await;
    let now = pipeline::contract::now_ms();
    let event = serde_json::json!({
        "v": 1, "id": "evt-v1", "source": "webex", "resource": "telephony_push",
        "event": "updated", "person_id": "vera", "class": "call",
        "received_at_ms": now, "deadline_ms": now + 60_000,
        "fcm": {"data": {"callId": "v1-call"}, "priority": "high"}
    });
    let js = stack.env.jetstream().await;
    js.publish(
        stack
            .env
            .topology()
            .event_subject("webex", "telephony_push"),
        serde_json::to_vec(&event).expect("json").into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    let delivered = stack
        .providers
        .get::<MockFcm>()
        .wait_delivered(1, WAIT)
        .await;
    let body: serde_json::Value = serde_json::from_slice(&delivered[0].body).expect("json");
    assert_eq!(body["message"]["data"]["callId"], "v1-call");
    assert!(stack.env.stream_messages(StreamKind::Dead).await.is_empty());
}

#[tokio::test]
async fn after_going_to_three_partitions_what_the_unpartitioned_streams_hold_still_rings() {
    // Every service on three partitions; partition 0 is the stream and subjects one
    // partition used, so an event an unpartitioned ingest stored (here: published
    // straight to the old subject) is read and rings.
    let stack = Stack::start_with(|c| c.each_nats(|nats| nats.partitions = 3)).await;
    stack.register_android("petra", &android(3)).await;
    let js = stack.env.jetstream().await;
    let topology = providers::topology(&stack.configs.registry.nats);
    assert_eq!(topology.stream_names(StreamKind::Events).len(), 3);
    for name in topology.stream_names(StreamKind::Events) {
        js.get_stream(&name).await.expect("every partition exists");
    }
    let now = pipeline::contract::now_ms();
    let event = serde_json::json!({
        "v": 1, "id": "evt-before-partitions", "source": "webex", "resource": "telephony_push",
        "event": "updated", "person_id": "petra", "class": "call",
        "received_at_ms": now, "deadline_ms": now + 60_000,
        "fcm": {"data": {"callId": "before-partitions"}, "priority": "high"}
    });
    js.publish(
        stack
            .env
            .topology()
            .event_subject("webex", "telephony_push"),
        serde_json::to_vec(&event).expect("json").into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    let delivered = stack
        .providers
        .get::<MockFcm>()
        .wait_delivered(1, WAIT)
        .await;
    let body: serde_json::Value = serde_json::from_slice(&delivered[0].body).expect("json");
    assert_eq!(body["message"]["data"]["callId"], "before-partitions");
    stack.env.wait_messages(StreamKind::Events, 0).await;
    assert!(stack.env.stream_messages(StreamKind::Dead).await.is_empty());
}
