//! `pushline-mock`: the sandbox APNs and FCM (with its OAuth endpoint) as one process, for
//! local runs and benchmarks. Loopback only.
//!
//! ```text
//! pushline-mock --dir DIR [--apns-port 8443] [--fcm-port 8444] [--control-port 8445]
//!               [--bundle com.example.pushline] [--project pushline-local]
//!               [--bind 127.0.0.1] [--host 127.0.0.1]
//! ```
//!
//! It writes into DIR what a dispatcher needs: `ca.pem` (trust it), `AuthKey_<kid>.p8`
//! (team `TEAM123456`, key `KEY1234567`), `<project>.json` (a service account whose
//! `token_uri` is this mock) and `apns-bearer.txt` (a valid provider token, for `h2load`).
//! Every push received is printed as one line; `GET /requests` on the control port
//! returns them all as JSON. In a container, `--bind 0.0.0.0 --host <service name>` makes
//! it reachable (the name goes into its certificate and the service account's `token_uri`).

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use harness::mock::apns::{MockApns, P8Key};
use harness::mock::fcm::MockFcm;
use harness::mock::tls::TestCa;
use harness::mock::{Behaviour, Listen, Mock, Recorded};

const TEAM_ID: &str = "TEAM123456";
const KEY_ID: &str = "KEY1234567";

struct Args {
    dir: std::path::PathBuf,
    apns_port: u16,
    fcm_port: u16,
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

async fn print_pushes<B: Behaviour>(name: &'static str, mock: Arc<Mock<B>>) {
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
    apns.write_ca(&args.dir, "ca.pem");
    key.write(&args.dir);
    fcm.write_service_account(&args.dir, &args.project);
    let bearer = dispatcher_apns::jwt::ProviderToken::from_p8(TEAM_ID, KEY_ID, &key.pem, 1800)?
        .current(pipeline::contract::now_ms() / 1000);
    std::fs::write(args.dir.join("apns-bearer.txt"), &*bearer)?;

    let (a, f) = (apns.clone(), fcm.clone());
    let control = Router::new().route(
        "/requests",
        get(move || {
            let (a, f) = (a.clone(), f.clone());
            async move {
                let mut all: Vec<serde_json::Value> =
                    a.requests().iter().map(|r| json("apns", r)).collect();
                all.extend(
                    f.requests()
                        .iter()
                        .filter(|r| r.path != "/token")
                        .map(|r| json("fcm", r)),
                );
                Json(all)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind((args.bind.as_str(), args.control_port)).await?;
    println!(
        "mock APNs on {} and FCM on {}; requests at http://127.0.0.1:{}/requests; credentials in {}",
        apns.url(),
        fcm.url(),
        args.control_port,
        args.dir.display()
    );
    tokio::spawn(print_pushes("apns", apns));
    tokio::spawn(print_pushes("fcm", fcm));
    axum::serve(listener, control)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
