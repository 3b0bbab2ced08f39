//! Replayed and stale webhooks ring nothing: a webhook whose event is dated outside the
//! freshness window is answered `stale`, and one replayed after JetStream has forgotten
//! its message id is still a duplicate, because every ingest replica remembers accepted
//! webhook ids in NATS key-value for the replay window. The envelope's own `created` (when
//! the webhook was registered) is never mistaken for the event's time.

use harness::mock::apns::MockApns;
use std::time::Duration;

use harness::services::{Env, Service, WEBHOOK_SECRET, start_ingest};
use harness::stack::Stack;
use harness::webex::{call_membership, rfc3339, sign};
use pipeline::contract::{Event, now_ms};
use pipeline::topology::StreamKind;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);
const A_YEAR_MS: u64 = 365 * 86_400_000;

async fn post_signed(ingest: &Service, body: &str) -> Value {
    let response = reqwest::Client::new()
        .post(ingest.url("/webhooks/webex"))
        .header("content-type", "application/json")
        .header("x-spark-signature", sign(body, WEBHOOK_SECRET))
        .body(body.to_owned())
        .send()
        .await
        .expect("POST webhook");
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

/// JetStream's de-duplication window cannot be shortened below 120 s
/// (`nats.duplicate_window_secs`), so the test makes the server forget the id the other
/// way it does in production: the event is consumed (purged from the work queue) and the
/// server restarts, after which its de-duplication state no longer holds the id — exactly
/// the state after the window has passed. Only the shared store still knows it.
#[tokio::test]
async fn a_webhook_replayed_after_jetstream_forgot_its_id_rings_nothing() {
    let mut env = Env::start();
    let ingest = start_ingest(env.ingest_config()).await;
    ingest.wait_ready().await;
    let registered = rfc3339(now_ms() - A_YEAR_MS);
    let captured = call_membership("ana", "replayed-call", &registered, &rfc3339(now_ms()));
    let first = post_signed(&ingest, &captured).await;
    assert_eq!(first["duplicate"], false, "{first}");
    env.wait_messages(StreamKind::Events, 1).await;
    // Ingest remembers the id off the answer's path: wait until it has, or the restart
    // below could come first and the test would measure that race, not the replay.
    let bucket = format!("{}webhook_ids", env.ingest_config().nats.prefix);
    let id = first["event_id"].as_str().expect("event id").to_owned();
    let js = env.jetstream().await;
    harness::wait::until_true("the webhook id to be remembered", WAIT, || async {
        match js.get_key_value(&bucket).await {
            Ok(ids) => matches!(ids.get(&id).await, Ok(Some(_))),
            Err(_) => false,
        }
    })
    .await;

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

    let replay = post_signed(&ingest, &captured).await;
    assert_eq!(replay["status"], "accepted", "{replay}");
    assert_eq!(replay["duplicate"], true, "{replay}");
    assert_eq!(replay["event_id"], first["event_id"]);
    // Another call is stored as usual, and it is the only event in the stream.
    let other = call_membership("ana", "another-call", &registered, &rfc3339(now_ms()));
    assert_eq!(post_signed(&ingest, &other).await["duplicate"], false);
    let events = env.wait_messages(StreamKind::Events, 1).await;
    let event: Event = serde_json::from_slice(&events[0].payload).expect("an Event");
    assert_ne!(
        Value::from(event.id),
        first["event_id"],
        "the replay was stored again"
    );
    Stack::wait_metrics(
        &ingest,
        &[r#"pushline_webhooks_received_total{outcome="duplicate",source="webex"} 1"#],
    )
    .await;
}

#[tokio::test]
async fn a_stale_call_membership_rings_nothing_and_a_fresh_one_under_a_year_old_envelope_rings() {
    let stack = Stack::start().await;
    let token = "7e".repeat(32);
    stack.register_ios("bea", &token).await;
    let registered = rfc3339(now_ms() - A_YEAR_MS);

    // Captured twenty minutes ago and sent now: answered, not published.
    let twenty_minutes_ago = rfc3339(now_ms() - 20 * 60_000);
    let stale = stack
        .webhook(&call_membership(
            "bea",
            "stale-call",
            &registered,
            &twenty_minutes_ago,
        ))
        .await;
    assert_eq!(stale["status"], "stale", "{stale}");

    // The firehose's webhook was registered a year ago; its event is fresh and rings.
    let fresh = stack
        .webhook(&call_membership(
            "bea",
            "fresh-call",
            &registered,
            &rfc3339(now_ms() - 2_000),
        ))
        .await;
    assert_eq!(fresh["status"], "accepted", "{fresh}");
    let pushes = stack
        .providers
        .get::<MockApns>()
        .wait_delivered(1, WAIT)
        .await;
    let payload: Value = serde_json::from_slice(&pushes[0].body).expect("json payload");
    assert_eq!(payload["callId"], "fresh-call", "{payload}");
    Stack::wait_metrics(
        &stack.ingest,
        &[
            r#"pushline_webhooks_received_total{outcome="stale",source="webex"} 1"#,
            r#"pushline_webhooks_received_total{outcome="accepted",source="webex"} 1"#,
        ],
    )
    .await;
    assert_eq!(
        stack.providers.get::<MockApns>().requests().len(),
        1,
        "the stale call rang nothing"
    );
}
