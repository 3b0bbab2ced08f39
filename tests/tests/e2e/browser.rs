//! The sample web app in a real browser: Debian's headless Chromium, driven by Playwright
//! for Python (`tests/browser/sample_app.py`), loads the page the gateway serves
//! (`sample_app`) against a real stack, signs in, receives an in-app prompt, sees the
//! unread count fall when it marks the message read, answers the prompt, and the
//! producer's callback receives the answer as a signed `message.action`.
//!
//! The browser and its driver are not Rust crates: `deploy/local/test.sh` installs them
//! (`chromium` from Debian, Playwright from PyPI into `target/browser-venv`). Without them
//! the test fails saying how to install them, unless `BROWSER_TEST_SKIP=1`. A failing
//! step leaves a screenshot and the page's console log in the CI log folder
//! (`target/ci-logs/`, or `CI_LOGS`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use harness::services::{Env, INAPP_APP, PRODUCER_KEY, person_jwt, person_jwt_config};
use harness::stack::Stack;
use hmac::{Hmac, Mac as _};
use pipeline::CancellationToken;
use pipeline::config::Secret;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdout, Command};

/// The producer's callback signing key.
const KEY: [u8; 24] = *b"browser-callback-key-24b";
/// The whole browser run, steps and all.
const RUN: Duration = Duration::from_secs(45);
/// The prompt the producer sends.
const PROMPT: &str = "Join the 10:00 stand-up?";

/// The workspace's root (this crate is one of its members).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// Where a failing step's screenshot and console log go.
fn artifacts() -> PathBuf {
    std::env::var_os("CI_LOGS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/ci-logs"))
}

/// The Python with Playwright, and Chromium; `None` when the test is to be skipped.
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let skip = std::env::var("BROWSER_TEST_SKIP").is_ok_and(|v| v == "1");
    let python = std::env::var_os("BROWSER_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/browser-venv/bin/python"));
    let has_playwright = std::process::Command::new(&python)
        .args(["-c", "import playwright.sync_api"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    let chromium = std::env::var_os("BROWSER_TEST_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| on_path("chromium"))
        .filter(|chromium| chromium.is_file());
    match (has_playwright, chromium) {
        (true, Some(chromium)) => Some((python, chromium)),
        _ if skip => {
            eprintln!("BROWSER_TEST_SKIP=1: the browser test is skipped");
            None
        }
        (has_playwright, chromium) => panic!(
            "the browser test needs Debian's Chromium ({}) and Playwright for Python in {} ({}). \
             ./deploy/local/test.sh installs both; by hand: `apt-get install -y chromium` and \
             `python3 -m venv target/browser-venv && target/browser-venv/bin/pip install -r tests/browser/requirements.txt`. \
             BROWSER_TEST_CHROMIUM and BROWSER_TEST_PYTHON point elsewhere; BROWSER_TEST_SKIP=1 skips the test.",
            chromium.map_or("missing".into(), |c| format!("found: {}", c.display())),
            python.display(),
            if has_playwright { "found" } else { "missing" },
        ),
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// What the producer's callback endpoint received: (headers, body).
#[derive(Default)]
struct Received(Mutex<Vec<(HeaderMap, String)>>);

async fn endpoint(
    State(received): State<Arc<Received>>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    received.0.lock().expect("calls").push((headers, body));
    StatusCode::NO_CONTENT
}

impl Received {
    /// The first callback of `kind`, checked against its signature (15 s at most).
    async fn signed(&self, kind: &str) -> Value {
        harness::wait::until(
            &format!("a {kind} callback"),
            Duration::from_secs(15),
            || async {
                let calls = self.0.lock().expect("calls").clone();
                calls.into_iter().find_map(|(headers, body)| {
                    let callback: Value = serde_json::from_str(&body).ok()?;
                    (callback["type"] == kind).then(|| {
                        let header = |name: &str| headers[name].to_str().expect("ascii").to_owned();
                        let mut mac = <Hmac<Sha256>>::new_from_slice(&KEY).expect("key");
                        mac.update(
                            format!(
                                "{}.{}.{body}",
                                header("webhook-id"),
                                header("webhook-timestamp")
                            )
                            .as_bytes(),
                        );
                        let expected =
                            format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
                        assert_eq!(header("webhook-signature"), expected, "signed: {body}");
                        callback
                    })
                })
            },
        )
        .await
    }
}

/// The browser script running, read step by step.
struct Browser {
    child: Child,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Browser {
    fn start(python: &Path, chromium: &Path, url: &str, steps: &[&str]) -> Browser {
        let mut command = Command::new(python);
        command
            .arg(root().join("tests/browser/sample_app.py"))
            .arg("--url")
            .arg(url)
            .arg("--chromium")
            .arg(chromium)
            .arg("--artifacts")
            .arg(artifacts());
        for step in steps {
            command.arg("--step").arg(step);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the browser script");
        let lines = BufReader::new(child.stdout.take().expect("its stdout")).lines();
        Browser { child, lines }
    }

    /// The report of the next step, which must be `step` and must have passed.
    async fn passed(&mut self, step: &str) -> Value {
        let line = tokio::time::timeout(RUN, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("the browser reported nothing on `{step}` within {RUN:?}"))
            .expect("read the browser's report");
        let Some(line) = line else {
            let status = self.child.wait().await.expect("the script's exit");
            panic!("the browser script ended ({status}) before `{step}`");
        };
        eprintln!("browser: {line}");
        let report: Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("the browser script said {line:?}"));
        assert_eq!(
            report["ok"],
            true,
            "the sample app failed at `{}`: {report:#} (screenshot and console log in {})",
            report["step"],
            artifacts().display(),
        );
        assert_eq!(report["step"], step, "{report}");
        report
    }
}

/// A VAPID public key (a base64url P-256 point) for the page's Web Push attempt: headless
/// Chromium reaches no push service, and the page must carry on without one.
fn vapid_public_key() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.public_key_raw())
}

/// A gateway serving the sample app on `listener`, stopped with the token.
async fn gateway_with_sample_app(env: &Env, listener: TcpListener) -> CancellationToken {
    let mut config = env.gateway_config();
    config.sample_app = true;
    config.inbox_apps.insert(INAPP_APP.into());
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let ready = format!("http://{}/readyz", admin.local_addr().expect("admin addr"));
    let shutdown = CancellationToken::new();
    tokio::spawn(gateway::serve(config, listener, admin, shutdown.clone()));
    harness::wait::until_true("the gateway ready", Duration::from_secs(20), || async {
        reqwest::get(&ready)
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    shutdown
}

#[tokio::test]
async fn the_sample_app_in_chromium_reads_marks_and_answers_a_prompt() {
    let Some((python, chromium)) = browser_tools() else {
        return;
    };
    let gateway_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let gateway = gateway_listener.local_addr().expect("gateway addr");
    let received = Arc::new(Received::default());
    let hooks = Router::new()
        .route("/hooks/pushline", post(endpoint))
        .with_state(received.clone());
    let (hooks, _stop_hooks) = harness::mock::serve_loopback(hooks).await;
    let stack = Stack::start_with(|c| {
        let producer = &mut c.ingest.producers.keys[0];
        producer.callback_url = Some(format!("http://{hooks}/hooks/pushline"));
        producer.callback_secret = Some(Secret::new(format!("whsec_{}", STANDARD.encode(KEY))));
        c.ingest.callbacks.retry_base_ms = 20;
        c.registry.devices.apps.insert(
            INAPP_APP.into(),
            registry::config::AppPolicy {
                inbox: true,
                ..Default::default()
            },
        );
        c.registry.cors_origins = vec![format!("http://{gateway}")];
        c.registry.auth.jwt = person_jwt_config();
    })
    .await;
    let _gateway = gateway_with_sample_app(&stack.env, gateway_listener)
        .await
        .drop_guard();

    let query = [
        ("registry", format!("http://{}", stack.registry.addr)),
        ("app", INAPP_APP.to_owned()),
        ("token", person_jwt("pia")),
        ("vapid", vapid_public_key()),
    ];
    let url = reqwest::Url::parse_with_params(&format!("http://{gateway}/sample-app"), &query)
        .expect("the page's address");
    let mut browser = Browser::start(
        &python,
        &chromium,
        url.as_str(),
        &[
            "sign-in",
            &format!("message:{PROMPT}"),
            "inbox",
            "unread:1",
            "mark-read",
            "unread:0",
            "answer:yes",
            "delete",
        ],
    );
    browser.passed("open").await;
    let signed_in = browser.passed("sign-in").await;
    assert_eq!(signed_in["person"], "pia", "{signed_in}");

    let event_id = stack
        .notify(
            PRODUCER_KEY,
            &json!({
                "person_ids": ["pia"], "class": "alert", "ttl_secs": 120,
                "idempotency_key": "browser-prompt-1",
                "inapp": {
                    "payload": {"title": PROMPT, "body": "In the usual room"},
                    "category": "prompt",
                    "actions": [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}],
                },
            }),
        )
        .await;
    let shown = browser.passed(&format!("message:{PROMPT}")).await;
    assert_eq!(shown["event_id"], event_id.as_str(), "{shown}");
    for step in [
        "inbox",
        "unread:1",
        "mark-read",
        "unread:0",
        "answer:yes",
        "delete",
    ] {
        browser.passed(step).await;
    }
    browser.passed("done").await;

    let action = received.signed("message.action").await;
    let data = &action["data"];
    assert_eq!(data["event_id"], event_id.as_str(), "{action:#}");
    assert_eq!(data["person_id"], "pia");
    assert_eq!(data["app"], INAPP_APP);
    assert_eq!(data["action"], "yes");
}

#[tokio::test]
async fn the_gateway_serves_the_page_only_with_sample_app_on_and_connections_as_before() {
    use futures::{SinkExt as _, StreamExt as _};
    let env = Env::start();
    let client = reqwest::Client::new();
    for sample_app in [true, false] {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut config = env.gateway_config();
        config.sample_app = sample_app;
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let shutdown = CancellationToken::new();
        let _stop = shutdown.clone().drop_guard();
        tokio::spawn(gateway::serve(config, listener, admin, shutdown));
        let page = client
            .get(format!("http://{addr}/sample-app?app=x"))
            .send()
            .await;
        if sample_app {
            let page = page.expect("the page");
            assert_eq!(page.status(), 200);
            assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
            let html = page.text().await.expect("text");
            assert!(html.contains(r#"data-testid="sign-in""#), "{html}");
            let script = client
                .get(format!("http://{addr}/sample-app.js"))
                .send()
                .await
                .expect("the script");
            assert_eq!(script.status(), 200);
            assert!(script.text().await.expect("text").contains("inbox.list"));
        } else {
            // The WebSocket transport alone: a plain GET is no upgrade, and gets no page.
            assert!(
                page.as_ref().map_or(true, |p| p.status() != 200),
                "{page:?}"
            );
        }
        // Either way the listener is the WebSocket transport's: a hello with a bad
        // credential is answered as ever.
        let (mut ws, _) = tokio_websockets::ClientBuilder::new()
            .uri(&format!("ws://{addr}/v1/connect"))
            .expect("uri")
            .connect()
            .await
            .expect("the upgrade");
        let hello = json!({"type": "hello", "credential": "not-a-jwt", "app": INAPP_APP, "device_id": "install-0001"});
        ws.send(tokio_websockets::Message::text(hello.to_string()))
            .await
            .expect("hello");
        let closed = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer in time")
            .expect("a frame")
            .expect("a frame");
        let (code, reason) = closed.as_close().expect("closed");
        assert_eq!((u16::from(code), reason), (4001, "unauthorized"));
    }
}
