//! Where user-chosen endpoints can make pushline connect: a Web Push subscription whose
//! endpoint points inside the network is refused at registration, and a push service
//! that redirects a push elsewhere is not followed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use harness::mock::Reply;
use harness::mock::webpush::MockPushService;
use harness::services::{API_KEY, WEB_APP};
use harness::stack::Stack;
use harness::webex::fcm_payload;
use pipeline::topology::StreamKind;
use serde_json::{Value, json};

/// A plain HTTP listener on loopback counting every request it gets: the "internal
/// service" an attacker wants the dispatcher to reach.
async fn internal_target() -> (
    std::net::SocketAddr,
    Arc<AtomicUsize>,
    pipeline::CancellationToken,
) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            "internal"
        }
    });
    let (addr, shutdown) = harness::mock::serve_loopback(app).await;
    (addr, hits, shutdown)
}

#[tokio::test]
async fn endpoints_inside_the_network_are_refused_at_registration() {
    let stack = Stack::start().await;
    let (target, hits, _target) = internal_target().await;
    let allowed_port = stack.env.push_service_ports[0];
    let keys = MockPushService::start_push_service(&stack.providers.ca, "unused")
        .await
        .subscribe()["keys"]
        .clone();
    let http = reqwest::Client::new();
    let port = target.port();
    for endpoint in [
        "https://169.254.169.254/latest/meta-data/".to_owned(),
        "https://10.0.0.1:6379/".to_owned(),
        format!("https://[::1]:{port}/"),
        format!("https://[::ffff:127.0.0.1]:{port}/"),
        format!("https://localhost:{port}/"),
        format!("https://127.0.0.1:{port}/direct"),
        // WHATWG URL parsing reads this as 127.0.0.1.
        format!("https://2130706433:{port}/"),
        // The allowed mock's host, another port: the allowed origin is exact.
        format!("https://127.0.0.1:{}/", allowed_port + 1),
        "https://push.attacker.example/w/1".to_owned(),
        format!("http://127.0.0.1:{allowed_port}/"),
    ] {
        let response = http
            .post(stack.registry.url("/v1/devices"))
            .bearer_auth(API_KEY)
            .json(&json!({
                "person_id": "mallory",
                "platform": "webpush",
                "app": WEB_APP,
                "subscription": {"endpoint": endpoint, "keys": keys},
            }))
            .send()
            .await
            .expect("register");
        let status = response.status();
        let body: Value = response.json().await.expect("a JSON error");
        assert_eq!(status, 400, "{endpoint}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("endpoint")),
            "{endpoint}: {body}"
        );
    }
    assert!(stack.devices("mallory").await.is_empty());
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    let metrics = stack.registry.metrics().await;
    for reason in ["not_public", "not_allowed"] {
        assert!(
            metrics.contains(&format!(
                r#"pushline_endpoints_refused_total{{platform="webpush",reason="{reason}"}}"#
            )),
            "{reason} counted"
        );
    }
}

#[tokio::test]
async fn a_push_service_redirecting_elsewhere_is_not_followed() {
    let mut stack = Stack::start().await;
    let web = crate::webpush::start_webpush(&mut stack, |_| {}).await;
    let (target, hits, _target) = internal_target().await;
    for (i, redirect) in [307, 302, 308].into_iter().enumerate() {
        let subscription = web.service.subscribe();
        let endpoint = subscription["endpoint"].as_str().expect("endpoint");
        web.service.script(
            &MockPushService::id_of(endpoint),
            [Reply::Redirect(
                redirect,
                format!("http://127.0.0.1:{}/internal/{i}", target.port()),
            )],
        );
        let person = format!("redirected-{i}");
        crate::webpush::register_browser(&stack, &person, &subscription).await;
        stack
            .call(&person, None, Some(&fcm_payload(&format!("c{i}"))))
            .await;
    }
    let dead = stack.env.wait_messages(StreamKind::Dead, 3).await;
    for letter in &dead {
        let letter: Value = serde_json::from_slice(&letter.payload).expect("json");
        assert_eq!(letter["reason"], "refused", "{letter}");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "no request reached the redirect's target"
    );
    assert!(web.service.delivered().is_empty());
    // Nothing was pruned on the redirect's say-so either.
    for i in 0..3 {
        assert_eq!(stack.devices(&format!("redirected-{i}")).await.len(), 1);
    }
}
