//! `pushctl` against a real pipeline: stream status, dead letters listed by filter and
//! replayed once the cause is fixed, and a person's devices.

use std::time::Duration;

use harness::mock::apns::MockApns;
use harness::stack::Stack;
use harness::webex::apns_payload;
use pipeline::topology::StreamKind;
use registry::cli::{Command, Filter, execute, parse};

fn ios(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

#[tokio::test]
async fn dead_letters_are_listed_by_filter_and_replayed_after_the_fix() {
    let stack = Stack::start().await;
    let config = &stack.configs.registry;
    stack.register_ios("ops-a", &ios(1)).await;
    stack.register_ios("ops-b", &ios(2)).await;
    // A misconfigured topic for one call, an oversized payload for the other.
    stack
        .providers
        .get::<MockApns>()
        .script(&ios(1), [MockApns::error(400, "BadTopic")]);
    stack.call("ops-a", Some(&apns_payload("a")), None).await;
    let big = format!(r#"{{"aps":{{}},"pad":"{}"}}"#, "x".repeat(5_200));
    stack.call("ops-b", Some(&big), None).await;
    stack.env.wait_messages(StreamKind::Dead, 2).await;

    let streams = execute(&Command::Streams, config).await.expect("streams");
    for name in [
        "EVENTS",
        "PUSH_APNS",
        "PUSH_FCM",
        "FEEDBACK",
        "DEAD",
        "dispatch-apns",
        "fanout",
        "prune",
    ] {
        assert!(streams.contains(name), "{name} missing from:\n{streams}");
    }

    let listed = execute(
        &parse(&args("dead list --stage apns")).expect("parse"),
        config,
    )
    .await
    .expect("list");
    assert!(
        listed.contains("BadTopic") && listed.contains("PayloadTooLarge"),
        "{listed}"
    );
    assert!(listed.ends_with("2 dead letter(s)\n"), "{listed}");
    let bad_topic = Filter {
        reason: Some("BadTopic".into()),
        ..Filter::default()
    };
    let only = execute(&Command::DeadList(bad_topic.clone()), config)
        .await
        .expect("list");
    assert!(only.ends_with("1 dead letter(s)\n"), "{only}");
    let young = execute(
        &parse(&args("dead list --older-than 3600")).expect("parse"),
        config,
    )
    .await
    .expect("list");
    assert!(young.ends_with("0 dead letter(s)\n"), "{young}");

    let dry = execute(
        &Command::DeadReplay {
            filter: bad_topic.clone(),
            dry_run: true,
        },
        config,
    )
    .await
    .expect("dry run");
    assert_eq!(dry, "would replay 1 dead letter(s)\n");
    assert_eq!(stack.env.stream_messages(StreamKind::Dead).await.len(), 2);

    // The topic is fixed (the mock now accepts it): replay the BadTopic letter only.
    let replayed = execute(
        &Command::DeadReplay {
            filter: bad_topic,
            dry_run: false,
        },
        config,
    )
    .await
    .expect("replay");
    assert_eq!(replayed, "replayed 1 dead letter(s)\n");
    let delivered = stack
        .providers
        .get::<MockApns>()
        .wait_delivered(1, Duration::from_secs(15))
        .await;
    assert_eq!(MockApns::token_of(&delivered[0].path), ios(1));
    let left = stack.env.wait_messages(StreamKind::Dead, 1).await;
    let letter: serde_json::Value = serde_json::from_slice(&left[0].payload).expect("json");
    assert_eq!(letter["reason"], "PayloadTooLarge");
}

#[tokio::test]
async fn devices_are_shown_with_hashed_tokens() {
    let stack = Stack::start().await;
    stack.register_ios("ops-c", &ios(3)).await;
    stack
        .register_android("ops-c", "ops-android:APA91bHPRgkFLJu6ck_q")
        .await;
    let out = execute(&Command::Devices("ops-c".into()), &stack.configs.registry)
        .await
        .expect("devices");
    assert!(out.ends_with("2 device(s)\n"), "{out}");
    assert!(out.contains(&pipeline::telemetry::token_tag(&ios(3))));
    assert!(!out.contains(&ios(3)), "tokens are not printed in clear");
    let health = execute(
        &Command::Health(stack.registry.admin_url("/readyz")),
        &stack.configs.registry,
    )
    .await;
    assert_eq!(health, Ok("ok\n".into()));
    let down = execute(
        &Command::Health("http://127.0.0.1:9/readyz".into()),
        &stack.configs.registry,
    )
    .await;
    assert!(down.is_err());
}

#[tokio::test]
async fn devices_say_whether_the_person_is_the_shared_devices_active_user() {
    let stack = Stack::start_with(|c| {
        c.registry.devices.apps.insert(
            harness::services::APNS_APP.into(),
            registry::config::AppPolicy {
                multi_user: true,
                ..Default::default()
            },
        );
    })
    .await;
    let shared = ios(4);
    stack.register_ios("ops-d", &shared).await;
    stack.register_ios("ops-e", &shared).await;
    let registry = &stack.configs.registry;
    let last = execute(&Command::Devices("ops-e".into()), registry)
        .await
        .expect("devices");
    assert!(last.contains(" active=yes(since="), "{last}");
    let first = execute(&Command::Devices("ops-d".into()), registry)
        .await
        .expect("devices");
    assert!(first.contains(" active=no "), "{first}");
}
