//! `pushline-mock`: the sandbox APNs, FCM (with its OAuth endpoint) and Web Push service
//! as one process, for local runs and benchmarks. Loopback only.
//!
//! ```text
//! pushline-mock --dir DIR [--apns-port 8443] [--fcm-port 8444] [--webpush-port 8446]
//!               [--control-port 8445] [--bundle com.example.pushline]
//!               [--project pushline-local] [--bind 127.0.0.1] [--host 127.0.0.1]
//! ```
//!
//! It writes into DIR what a dispatcher needs: `ca.pem` (trust it), `AuthKey_<kid>.p8`
//! (team `TEAM123456`, key `KEY1234567`), `<project>.json` (a service account whose
//! `token_uri` is this mock), `apns-bearer.txt` (a valid provider token, for `h2load`) and
//! `vapid.pem` (an application server key the push service accepts). Every push received
//! is printed as one line (a Web Push decrypted, as the browser reads it); on the control
//! port, `GET /requests` returns them all as JSON and `POST /webpush/subscribe` makes a
//! browser's push subscription (`PushSubscription.toJSON()`). In a container, `--bind 0.0.0.0 --host <service name>` makes
//! it reachable (the name goes into its certificate and the service account's `token_uri`).

use std::sync::Arc;

use axum::routing::{get, post};
use axum::{Json, Router};
use harness::mock::apns::{MockApns, P8Key};
use harness::mock::fcm::MockFcm;
use harness::mock::tls::TestCa;
use harness::mock::webpush::MockPushService;
use harness::mock::{Behaviour, Listen, Mock, Recorded};

const TEAM_ID: &str = "TEAM123456";
const KEY_ID: &str = "KEY1234567";

struct Args {
    dir: std::path::PathBuf,
    apns_port: u16,
    fcm_port: u16,
    webpush_port: u16,
    control_port: u16,
    bundle: String,
    project: String,
    bind: String,
    host: String,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        dir: std::path::PathBuf::new(),
        apns_port: 8443,
        fcm_port: 8444,
        webpush_port: 8446,
        control_port: 8445,
        bundle: "com.example.pushline".into(),
        project: "pushline-local".into(),
        bind: "127.0.0.1".into(),
        host: "127.0.0.1".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--dir" => args.dir = value()?.into(),
            "--apns-port" => args.apns_port = value()?.parse()?,
            "--fcm-port" => args.fcm_port = value()?.parse()?,
            "--webpush-port" => args.webpush_port = value()?.parse()?,
            "--control-port" => args.control_port = value()?.parse()?,
            "--bundle" => args.bundle = value()?,
            "--project" => args.project = value()?,
            "--bind" => args.bind = value()?,
            "--host" => args.host = value()?,
            other => anyhow::bail!("unknown flag {other}; see the module docs"),
        }
    }
    anyhow::ensure!(!args.dir.as_os_str().is_empty(), "--dir is required");
    Ok(args)
}

fn json(provider: &str, r: &Recorded) -> serde_json::Value {
    serde_json::json!({
        "provider": provider,
        "path": r.path,
        "status": r.status,
        "at_ms": r.at_ms,
        "headers": r.headers,
        "body": String::from_utf8_lossy(&r.body),
    })
}

fn describe(provider: &str, r: &Recorded) -> String {
    let body = String::from_utf8_lossy(&r.body);
    let body: String = body.chars().take(160).collect();
    match provider {
        "apns" => format!(
            "APNs {} ← {} push-type={} topic={} body={body}",
            r.status,
            &MockApns::token_of(&r.path)
                .chars()
                .take(12)
                .collect::<String>(),
            r.header("apns-push-type").unwrap_or("-"),
            r.header("apns-topic").unwrap_or("-"),
        ),
        _ => format!("FCM  {} ← {body}", r.status),
    }
}

async fn print_web_pushes(service: Arc<MockPushService>) {
    let mut seen = 0;
    loop {
        let all = service.wait_beyond(seen).await;
        let messages = service.messages();
        for r in &all[seen..] {
            let id = MockPushService::id_of(&r.path);
            let plaintext = messages
                .iter()
                .rev()
                .find(|m| m.subscription == id)
                .map(|m| {
                    String::from_utf8_lossy(&m.plaintext)
                        .chars()
                        .take(160)
                        .collect()
                })
                .unwrap_or_else(|| "(not decrypted)".to_owned());
            println!(
                "Web  {} ← {id} urgency={} ttl={} decrypted={plaintext}",
                r.status,
                r.header("urgency").unwrap_or("-"),
                r.header("ttl").unwrap_or("-"),
            );
        }
        seen = all.len();
    }
}

async fn print_pushes<B: Behaviour, M: std::ops::Deref<Target = Mock<B>>>(
    name: &'static str,
    mock: Arc<M>,
) {
    let mut seen = 0;
    loop {
        let all = mock.wait_beyond(seen).await;
        for r in &all[seen..] {
            if r.path != "/token" {
                println!("{}", describe(name, r));
            }
        }
        seen = all.len();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    std::fs::create_dir_all(&args.dir)?;
    let ca = TestCa::new();
    let key = P8Key::generate(TEAM_ID, KEY_ID);
    let at = |port| Listen {
        bind: args.bind.clone(),
        port,
        host: args.host.clone(),
    };
    let apns =
        Arc::new(MockApns::start_apns_at(&ca, &[&args.bundle], &[&key], &at(args.apns_port)).await);
    let fcm = Arc::new(MockFcm::start_fcm_at(&ca, &[&args.project], &at(args.fcm_port)).await);
    let vapid = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let webpush = Arc::new(
        MockPushService::start_push_service_at(
            &ca,
            &base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                vapid.public_key_raw(),
            ),
            &at(args.webpush_port),
        )
        .await,
    );
    std::fs::write(args.dir.join("vapid.pem"), vapid.serialize_pem())?;
    apns.write_ca(&args.dir, "ca.pem");
    key.write(&args.dir);
    fcm.write_service_account(&args.dir, &args.project);
    let bearer = dispatcher_apns::jwt::ProviderToken::from_p8(TEAM_ID, KEY_ID, &key.pem, 1800)?
        .current(pipeline::contract::now_ms() / 1000);
    std::fs::write(args.dir.join("apns-bearer.txt"), &*bearer)?;

    let (a, f, w) = (apns.clone(), fcm.clone(), webpush.clone());
    let subscriber = webpush.clone();
    let control = Router::new()
        .route(
            "/webpush/subscribe",
            post(move || {
                let subscriber = subscriber.clone();
                async move { Json(subscriber.subscribe()) }
            }),
        )
        .route(
            "/requests",
            get(move || {
                let (a, f, w) = (a.clone(), f.clone(), w.clone());
                async move {
                    let mut all: Vec<serde_json::Value> =
                        a.requests().iter().map(|r| json("apns", r)).collect();
                    all.extend(
                        f.requests()
                            .iter()
                            .filter(|r| r.path != "/token")
                            .map(|r| json("fcm", r)),
                    );
                    all.extend(w.requests().iter().map(|r| json("webpush", r)));
                    Json(all)
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind((args.bind.as_str(), args.control_port)).await?;
    println!(
        "mock APNs on {}, FCM on {} and Web Push on {}; requests at http://127.0.0.1:{}/requests; credentials in {}",
        apns.url(),
        fcm.url(),
        webpush.url(),
        args.control_port,
        args.dir.display()
    );
    tokio::spawn(print_pushes("apns", apns));
    tokio::spawn(print_pushes("fcm", fcm));
    tokio::spawn(print_web_pushes(webpush));
    axum::serve(listener, control)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
