//! The Webex webhook lifecycle against a mock of the Webex webhooks API: `pushctl webhooks
//! ensure` creates the firehose webhook with pushline's secret, the registry's watchdog
//! exports its status and reactivates it when Webex marks it inactive, and without
//! reactivation the status stays 0 until `pushctl webhooks reactivate`.

use harness::mock::webex_webhooks::MockWebexWebhooks;
use harness::services::{Env, WEBHOOK_SECRET, start_registry};
use harness::stack::Stack;
use pipeline::config::Secret;
use registry::cli::{Command, execute};
use registry::webhooks::WebhooksConfig;

const OWNER_TOKEN: &str = "webex-bot-access-token";
const TARGET: &str = "https://push.example.com/webhooks/webex";
const STATUS: &str = r#"pushline_webex_webhook_status{name="pushline telephony_push"}"#;

fn watched(mock: &MockWebexWebhooks, reactivate: bool) -> WebhooksConfig {
    WebhooksConfig {
        enabled: true,
        base_url: mock.url(),
        access_token: Some(Secret::new(OWNER_TOKEN)),
        target_url: TARGET.into(),
        secret: Some(Secret::new(WEBHOOK_SECRET)),
        check_interval_secs: 1,
        reactivate,
        ..WebhooksConfig::default()
    }
}

#[tokio::test]
async fn pushctl_creates_the_webhook_and_the_watchdog_reactivates_it() {
    let mock = MockWebexWebhooks::start(OWNER_TOKEN).await;
    let env = Env::start();
    let mut config = env.registry_config();
    config.webex_webhooks = watched(&mock, true);
    let registry = start_registry(config.clone()).await;
    registry.wait_ready().await;
    // Nothing exists yet: the watchdog says so.
    Stack::wait_metrics(&registry, &[&format!("{STATUS} 0")]).await;

    let created = execute(&Command::WebhooksEnsure, &config)
        .await
        .expect("ensure");
    assert_eq!(created, "created webhook webhook-1\n");
    let hooks = mock.hooks();
    assert_eq!(hooks.len(), 1);
    let hook = &hooks[0];
    assert_eq!(
        (
            hook.resource.as_str(),
            hook.event.as_str(),
            hook.target_url.as_str()
        ),
        ("telephony_push", "updated", TARGET)
    );
    assert_eq!(hook.secret.as_deref(), Some(WEBHOOK_SECRET));
    Stack::wait_metrics(&registry, &[&format!("{STATUS} 1")]).await;

    // Webex gives up on deliveries and marks it inactive; the watchdog turns it back on.
    mock.set_status("webhook-1", "inactive");
    Stack::wait_metrics(
        &registry,
        &[
            r#"pushline_webex_webhook_reactivations_total{name="pushline telephony_push"} 1"#,
            &format!("{STATUS} 1"),
        ],
    )
    .await;
    assert_eq!(mock.hooks()[0].status, "active");

    // Ensuring again updates the same webhook; listing shows it.
    let again = execute(&Command::WebhooksEnsure, &config)
        .await
        .expect("ensure");
    assert!(again.starts_with("updated webhook webhook-1"), "{again}");
    assert_eq!(mock.hooks().len(), 1);
    let listed = execute(&Command::WebhooksList, &config)
        .await
        .expect("list");
    assert!(
        listed.contains("webhook-1  active   telephony_push/updated  pushline telephony_push"),
        "{listed}"
    );
}

#[tokio::test]
async fn without_reactivation_an_inactive_webhook_stays_down_until_an_operator_acts() {
    let mock = MockWebexWebhooks::start(OWNER_TOKEN).await;
    let env = Env::start();
    let mut config = env.registry_config();
    config.webex_webhooks = watched(&mock, false);
    execute(&Command::WebhooksEnsure, &config)
        .await
        .expect("ensure");
    mock.set_status("webhook-1", "inactive");
    let registry = start_registry(config.clone()).await;
    registry.wait_ready().await;
    Stack::wait_metrics(&registry, &[&format!("{STATUS} 0")]).await;
    assert_eq!(mock.hooks()[0].status, "inactive");

    let answer = execute(&Command::WebhooksReactivate, &config)
        .await
        .expect("reactivate");
    assert_eq!(answer, "webhook webhook-1 is active\n");
    Stack::wait_metrics(&registry, &[&format!("{STATUS} 1")]).await;

    // A token Webex refuses is a failed check, named in pushctl's answer.
    let mut wrong = config.clone();
    wrong.webex_webhooks.access_token = Some(Secret::new("revoked-token"));
    let refused = execute(&Command::WebhooksList, &wrong)
        .await
        .expect_err("refused");
    assert!(refused.contains("401"), "{refused}");
}
