//! Credentials that stop working are seen, not discovered by a silent phone: the periodic
//! check asks APNs and Google's token server, and every push's answer counts too, so
//! `pushline_credential_valid` goes to 0 when the provider refuses the key or the
//! service account; and credentials given inline as base64 work like files.

use harness::services::{APNS_APP, FCM_APP, KEY_ID};
use harness::stack::Stack;
use harness::webex::apns_payload;

fn valid(provider: &str, app: &str, value: u8) -> String {
    format!(r#"pushline_credential_valid{{app="{app}",provider="{provider}"}} {value}"#)
}

#[tokio::test]
async fn the_periodic_check_sees_a_revoked_key_and_a_deleted_service_account() {
    let stack = Stack::start_with(|c| {
        c.apns.apns.credential_check_secs = 1;
        c.fcm.fcm.credential_check_secs = 1;
    })
    .await;
    Stack::wait_metrics(stack.apns(), &[&valid("apns", APNS_APP, 1)]).await;
    Stack::wait_metrics(&stack.fcm, &[&valid("fcm", FCM_APP, 1)]).await;
    // The checks reach no device: APNs refused the impossible token, nothing was sent.
    assert!(stack.providers.apns.delivered().is_empty());

    stack.providers.apns.revoke_key(KEY_ID);
    stack.providers.fcm.delete_service_account();
    Stack::wait_metrics(stack.apns(), &[&valid("apns", APNS_APP, 0)]).await;
    Stack::wait_metrics(&stack.fcm, &[&valid("fcm", FCM_APP, 0)]).await;
}

#[tokio::test]
async fn a_push_refused_for_its_credential_marks_the_app_invalid() {
    let stack = Stack::start().await;
    let token = "7a".repeat(32);
    stack.register_ios("cora", &token).await;
    stack
        .call("cora", Some(&apns_payload("before")), None)
        .await;
    Stack::wait_metrics(stack.apns(), &[&valid("apns", APNS_APP, 1)]).await;

    stack.providers.apns.revoke_key(KEY_ID);
    stack.call("cora", Some(&apns_payload("after")), None).await;
    Stack::wait_metrics(
        stack.apns(),
        &[
            &valid("apns", APNS_APP, 0),
            &format!(
                r#"pushline_pushes_total{{app="{APNS_APP}",outcome="rejected",provider="apns",reason="InvalidProviderToken"}} 1"#
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn credentials_given_inline_as_base64_deliver_like_files() {
    use base64::Engine;
    let b64 = |path: &std::path::Path| {
        pipeline::config::Secret::new(
            base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).expect("read")),
        )
    };
    let stack = Stack::start_with(|c| {
        let app = &mut c.apns.apns.apps[0];
        app.key_base64 = Some(b64(app.key_file.as_deref().expect("key file")));
        app.key_file = None;
        let project = &mut c.fcm.fcm.projects[0];
        project.service_account_base64 = Some(b64(project
            .service_account_file
            .as_deref()
            .expect("account file")));
        project.service_account_file = None;
    })
    .await;
    stack.register_ios("ines", &"3e".repeat(32)).await;
    stack.register_android("ines", "fcm-token-of-ines").await;
    stack
        .call(
            "ines",
            Some(&apns_payload("inline")),
            Some(&harness::webex::fcm_payload("inline")),
        )
        .await;
    stack
        .providers
        .apns
        .wait_delivered(1, std::time::Duration::from_secs(15))
        .await;
    stack
        .providers
        .fcm
        .wait_delivered(1, std::time::Duration::from_secs(15))
        .await;
}
