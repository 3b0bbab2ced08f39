//! Mass-pruning protection: when APNs calls every token of an app invalid (a wrong bundle
//! id or environment), the dispatcher holds pruning after `min_invalid` such answers, the
//! registry keeps the tokens and dead-letters the held feedback, a metric says so, and a
//! replay prunes the held tokens once an operator decided they really are dead.

use harness::mock::apns::MockApns;
use harness::services::APNS_APP;
use harness::stack::Stack;
use harness::webex::apns_payload;
use pipeline::topology::StreamKind;
use registry::cli::{Command, execute, parse};

async fn has_devices(stack: &Stack, person: &str) -> bool {
    !stack.devices(person).await.is_empty()
}

#[tokio::test]
async fn a_burst_of_bad_device_tokens_holds_pruning_and_keeps_the_tokens() {
    let stack = Stack::start_with(|c| {
        c.adjust("apns", |a: &mut dispatcher_apns::config::Config| {
            a.prune_guard.min_invalid = 3;
        });
    })
    .await;
    let persons: Vec<String> = (0..6).map(|i| format!("wrong-topic-{i}")).collect();
    for (i, person) in persons.iter().enumerate() {
        let token = format!("{:02x}", 0x60 + i).repeat(32);
        stack.register_ios(person, &token).await;
        stack
            .providers
            .get::<MockApns>()
            .script(&token, [MockApns::error(400, "BadDeviceToken")]);
    }
    for person in &persons {
        stack.call(person, Some(&apns_payload(person)), None).await;
    }

    // Every answer is invalid: the first two are pruned, the hold starts with the third.
    Stack::wait_metrics(
        &stack.registry,
        &[
            r#"pushline_feedback_total{outcome="pruned",platform="apns"} 2"#,
            r#"pushline_feedback_total{outcome="held",platform="apns"} 4"#,
        ],
    )
    .await;
    let held = format!(r#"pushline_pruning_held{{app="{APNS_APP}",provider="apns"}} 1"#);
    Stack::wait_metrics(stack.dispatcher("apns"), &[held.as_str()]).await;
    let dead = stack.env.wait_messages(StreamKind::Dead, 4).await;
    assert_eq!(dead.len(), 4);
    let mut kept = 0;
    for person in &persons {
        kept += usize::from(has_devices(&stack, person).await);
    }
    assert_eq!(kept, 4, "the held tokens are still registered");

    // The operator decides the tokens are dead after all: replaying prunes them.
    let config = &stack.configs.registry;
    let listed = execute(
        &parse(&["dead", "list", "--stage", "prune"].map(String::from)).expect("parse"),
        config,
    )
    .await
    .expect("dead list");
    assert!(listed.contains("pruning_held"), "{listed}");
    let replay = parse(
        &[
            "dead",
            "replay",
            "--stage",
            "prune",
            "--reason",
            "pruning_held",
        ]
        .map(String::from),
    )
    .expect("parse");
    assert!(matches!(replay, Command::DeadReplay { .. }));
    let replayed = execute(&replay, config).await.expect("replay");
    assert!(replayed.contains("replayed 4"), "{replayed}");
    Stack::wait_metrics(
        &stack.registry,
        &[r#"pushline_feedback_total{outcome="pruned",platform="apns"} 6"#],
    )
    .await;
    for person in &persons {
        assert!(!has_devices(&stack, person).await, "{person} was pruned");
    }
}
