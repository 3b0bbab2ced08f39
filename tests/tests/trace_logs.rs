//! "Did Alice's phone ring?" starts in the logs: the producer's trace id (Webex
//! `TrackingID`) is on every line each stage logs about the call — ingest storing it, the
//! fan-out, the dispatcher's retry and delivery, and the registry pruning a token the
//! provider rejected.

use std::time::Duration;

use harness::mock::apns::MockApns;
use harness::stack::Stack;
use harness::webex::{apns_payload, telephony_push};

#[tokio::test]
async fn every_stage_logs_the_calls_trace_id() {
    let capture = harness::logs::shared();

    let stack = Stack::start().await;
    let (flaky, gone) = ("0123456789abcdef".repeat(4), "feedfacecafebeef".repeat(4));
    stack.register_ios("tess", &flaky).await;
    stack.register_ios("tess", &gone).await;
    stack
        .providers
        .get::<MockApns>()
        .script(&flaky, [MockApns::error(503, "ServiceUnavailable")]);
    stack.providers.get::<MockApns>().script(
        &gone,
        [MockApns::unregistered(pipeline::contract::now_ms())],
    );

    let trace = "ROUTER_6a1f2b3c-tess-call";
    let body = telephony_push("tess", Some(&apns_payload("traced")), None);
    stack.traced_webhook(&body, Some(trace)).await;
    stack
        .providers
        .get::<MockApns>()
        .wait_delivered(1, Duration::from_secs(15))
        .await;
    Stack::wait_metrics(
        &stack.registry,
        &[r#"pushline_feedback_total{outcome="pruned",platform="apns"} 1"#],
    )
    .await;

    let log = capture.text();
    for (stage, line) in [
        ("ingest", "event stored"),
        ("fan-out", "event fanned out"),
        ("dispatcher retry", "retrying"),
        ("dispatcher delivery", "delivered"),
        ("dispatcher verdict", "token rejected by provider"),
        ("registry prune", "feedback handled"),
    ] {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(line)).collect();
        assert!(!lines.is_empty(), "no `{line}` line ({stage}) in:\n{log}");
        assert!(
            lines.iter().all(|l| l.contains(trace)),
            "the {stage} line lacks the trace id: {lines:#?}"
        );
    }
}
