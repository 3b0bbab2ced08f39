//! `pushline-bench-dispatch`: how fast one APNs dispatcher pushes, against the mock APNs,
//! compared in the same run with the ceilings it is judged against:
//!
//! 1. a bare HTTP/2 client: one connection, 100 requests in flight, same requests;
//! 2. `h2load` (nghttp2) with one connection and 100 streams (required: install
//!    `nghttp2-client`, or pass `--no-h2load` to skip it).
//!
//! The dispatcher drains a `PUSH_APNS` stream pre-filled with N jobs from a real
//! `nats-server`; its rate is measured between the first and last push the mock receives.
//! Loopback only, bounded by `--pushes`. Build with `--release`.
//!
//! Rates alone compare unlike things: the mock runs in this process, and the dispatcher
//! shares the two cores with nats-server while the bare client does not. So the report
//! also gives **CPU µs per push on the sending side**, for the dispatcher and for the bare
//! client alike: the mock runs on a runtime of its own (threads `mock`), the dispatcher
//! and the bare client on another (threads `send`), and each one's figure is the CPU time
//! of the `send` threads (from `/proc/self/task`) over its run, divided by its pushes. The
//! bare client's CPU per push divided by the dispatcher's is the efficiency ratio: how
//! much of what the dispatcher spends per push is the HTTP/2 push itself.
//!
//! ```text
//! cargo run --release -p pushline-tests --bin pushline-bench-dispatch -- [--pushes 20000] [--json FILE]
//! … --no-tracking   # the dispatcher without delivery status records
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use dispatcher_apns::spec::{ApnsPart, ApnsPushType, NAME};
use harness::bench::{arg, json_path, stat_cpu_seconds};
use harness::mock::apns::{MockApns, P8Key};
use harness::mock::tls::TestCa;
use harness::servers::NatsServer;
use pipeline::contract::{Class, Environment, PushJob, VERSION, now_ms};
use serde_json::value::RawValue;

const BUNDLE: &str = "com.example.bench";
const PAYLOAD: &str =
    r#"{"aps":{},"callId":"bench-call","caller":{"name":"Ada","number":"+15550100"}}"#;

/// A distinct device token; never all zeros, which APNs (and the mock) refuse as a token
/// no device can have.
fn token(i: usize) -> String {
    format!("{:064x}", i + 1)
}

/// Pushes per second between the first and the last 200 the mock recorded after `since`.
fn rate(mock: &MockApns, since_ms: u64) -> (usize, f64) {
    let times = mock.delivered_times(since_ms);
    let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) else {
        return (0, 0.0);
    };
    let span = (last - first).max(1) as f64 / 1000.0;
    (times.len(), (times.len().saturating_sub(1)) as f64 / span)
}

async fn wait_count(mock: &MockApns, since_ms: u64, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while mock.delivered_count(since_ms) < n {
        assert!(Instant::now() < deadline, "bench did not finish in 300 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The bare baseline: one HTTP/2 connection, `in_flight` requests at a time.
async fn bare_client(mock: &MockApns, ca: &str, bearer: &str, n: usize, in_flight: usize) -> f64 {
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .http2_prior_knowledge()
        .tcp_nodelay(true)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("CA"))
        .build()
        .expect("client");
    let url = mock.url();
    let started = now_ms();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let (client, url, next, bearer) =
            (client.clone(), url.clone(), next.clone(), bearer.to_owned());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let _ = client
                    .post(format!("{url}/3/device/{}", token(1_000_000 + i)))
                    .header("apns-push-type", "voip")
                    .header("apns-topic", format!("{BUNDLE}.voip"))
                    .header("apns-priority", "10")
                    .header("authorization", format!("bearer {bearer}"))
                    .body(PAYLOAD)
                    .send()
                    .await;
            }
        });
    }
    while workers.join_next().await.is_some() {}
    rate(mock, started).1
}

/// `h2load` with one connection and 100 streams against the mock.
fn h2load(mock: &MockApns, bearer: &str, n: usize, dir: &std::path::Path) -> Option<f64> {
    let headers = [
        "apns-push-type: voip".to_owned(),
        format!("apns-topic: {BUNDLE}.voip"),
        "apns-priority: 10".to_owned(),
        format!("authorization: bearer {bearer}"),
    ];
    harness::bench::h2load(
        &format!("{}/3/device/{}", mock.url(), token(9_999_999)),
        &headers,
        PAYLOAD,
        n,
        dir,
    )
}

fn jobs(n: usize, deadline_ms: u64) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            serde_json::to_vec(&PushJob {
                v: VERSION,
                event_id: format!("bench-{i}"),
                token: token(i),
                keys: None,
                platform: NAME.into(),
                app: BUNDLE.into(),
                environment: Environment::Production,
                class: Class::Call,
                received_at_ms: now_ms(),
                deadline_ms,
                part: ApnsPart {
                    payload: RawValue::from_string(PAYLOAD.into()).expect("raw"),
                    push_type: ApnsPushType::Voip,
                    priority: 10,
                    collapse_id: None,
                },
                trace_id: None,
            })
            .expect("job")
        })
        .collect()
}

/// CPU seconds (user + system) of this process's threads whose name starts with `prefix`.
fn threads_cpu(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.starts_with(prefix))
        })
        .filter_map(|task| stat_cpu_seconds(&task.path().join("stat")))
        .sum()
}

/// Runs `work` and returns its output with the CPU µs per push the `send` threads spent.
async fn cpu_per_push<T>(pushes: usize, work: impl std::future::Future<Output = T>) -> (T, f64) {
    let before = threads_cpu(SEND_THREADS);
    let output = work.await;
    let spent = threads_cpu(SEND_THREADS) - before;
    (output, spent * 1e6 / pushes.max(1) as f64)
}

/// Thread name prefix of the runtime the dispatcher and the bare client run on.
const SEND_THREADS: &str = "send";

fn runtime(name: &'static str) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
}

fn main() -> anyhow::Result<()> {
    harness::bench::check_args(&["--pushes", "--json"], &["--no-tracking", "--no-h2load"]);
    harness::bench::require_h2load()?;
    let n = arg("--pushes", 20_000) as usize;
    let ca = TestCa::new();
    let key = P8Key::generate("TEAM123456", "KEY1234567");
    // The mock answers on threads of its own, so the sending side's CPU can be read apart.
    let mock_runtime = runtime("mock")?;
    let mock = mock_runtime.block_on(MockApns::start_apns(&ca, &[BUNDLE], &[&key], 0));
    let result = runtime(SEND_THREADS)?.block_on(bench(n, &key, &mock));
    drop(mock);
    mock_runtime.shutdown_background();
    result
}

async fn bench(n: usize, key: &P8Key, mock: &MockApns) -> anyhow::Result<()> {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir()?;
    let ca_file = mock.write_ca(dir.path(), "ca.pem");
    let key_file = key.write(dir.path());
    let bearer =
        dispatcher_apns::jwt::ProviderToken::from_p8("TEAM123456", "KEY1234567", &key.pem, 1800)?
            .current(now_ms() / 1000)
            .to_string();

    // Fill PUSH_APNS before the dispatcher starts.
    let mut nats_config = pipeline::config::NatsConfig {
        url: nats.url(),
        tracking: !std::env::args().any(|a| a == "--no-tracking"),
        ..Default::default()
    };
    nats_config.publish_timeout_ms = 10_000;
    let topology = pipeline::topology::Topology::new(&nats_config, &[NAME]);
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    topology.ensure(&js).await?;
    let subject = topology.push_subject(NAME, Environment::Production);
    let deadline = now_ms() + 600_000;
    let all = jobs(n, deadline);
    for (c, chunk) in all.chunks(1_000).enumerate() {
        let mut acks = Vec::with_capacity(chunk.len());
        for (i, body) in chunk.iter().enumerate() {
            let id = format!("bench-{}", c * 1_000 + i);
            let msg = PublishMessage::build()
                .payload(body.clone().into())
                .message_id(id);
            acks.push(js.send_publish(subject.clone(), msg).await?);
        }
        for ack in acks {
            ack.await?;
        }
    }

    let mut config = dispatcher_apns::config::Config {
        nats: nats_config,
        ..Default::default()
    };
    config.apns.production_url = mock.url();
    config.apns.sandbox_url = mock.url();
    config.apns.ca_files = vec![ca_file];
    config.apns.apps = vec![dispatcher_apns::config::AppConfig {
        bundle_id: BUNDLE.into(),
        environments: vec![Environment::Production],
        team_id: Some("TEAM123456".into()),
        key_id: Some("KEY1234567".into()),
        key_file: Some(key_file),
        certificate_file: None,
        certificate_key_file: None,
        key_base64: None,
        certificate_base64: None,
        certificate_key_base64: None,
        certificate_password: None,
    }];
    config.telemetry.filter = "warn".into();
    let connections = config.apns.connections;
    let tracking = config.nats.tracking;
    let concurrency = config.worker.concurrency;
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let shutdown = pipeline::CancellationToken::new();
    let started = now_ms();
    let ((), dispatcher_cpu) = cpu_per_push(n, async {
        let dispatcher = tokio::spawn(dispatcher_apns::serve(config, admin, shutdown.clone()));
        wait_count(mock, started, n).await;
        shutdown.cancel();
        let _ = dispatcher.await;
    })
    .await;
    let (delivered, dispatcher_rate) = rate(mock, started);

    let (bare, bare_cpu) = cpu_per_push(n, bare_client(mock, mock.ca_pem(), &bearer, n, 100)).await;
    let h2 = h2load(mock, &bearer, n, dir.path());

    println!(
        "one APNs dispatcher against the mock APNs, {n} pushes ({connections} connections, {concurrency} in flight), delivery tracking {}",
        if tracking { "on" } else { "off" }
    );
    println!(
        "{:<48} {:>9} {:>6} {:>13} {:>10}",
        "", "pushes/s", "ratio", "CPU µs/push", "efficiency"
    );
    println!(
        "{:<48} {:>9.0} {:>6} {:>13.1} {:>10}",
        "dispatcher (NATS → APNs mock)", dispatcher_rate, "", dispatcher_cpu, ""
    );
    println!(
        "{:<48} {:>9.0} {:>6.2} {:>13.1} {:>10.2}",
        "bare HTTP/2 client, 1 connection, 100 in flight",
        bare,
        dispatcher_rate / bare,
        bare_cpu,
        bare_cpu / dispatcher_cpu
    );
    match h2 {
        Some(h2) => println!(
            "{:<48} {:>9.0} {:>6.2} {:>13} {:>10}",
            "h2load -c 1 -m 100",
            h2,
            dispatcher_rate / h2,
            "-",
            "-"
        ),
        None => println!(
            "{:<48} {:>9} {:>6} {:>13} {:>10}",
            "h2load (skipped: --no-h2load, or it failed)", "-", "-", "-", "-"
        ),
    }
    println!(
        "(ratio: pushes/s against the dispatcher's; efficiency: the bare client's CPU µs per push over the dispatcher's, both on the same `send` threads)"
    );
    if let Some(path) = json_path() {
        let report = serde_json::json!({
            "pushes": n, "delivered": delivered, "connections": connections, "in_flight": concurrency, "tracking": tracking,
            "dispatcher_per_s": dispatcher_rate, "bare_client_per_s": bare, "h2load_per_s": h2,
            "ratio_to_bare_client": dispatcher_rate / bare,
            "dispatcher_cpu_us_per_push": dispatcher_cpu, "bare_client_cpu_us_per_push": bare_cpu,
            "efficiency_to_bare_client": bare_cpu / dispatcher_cpu,
            "ratio_to_h2load": h2.map(|h| dispatcher_rate / h),
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
