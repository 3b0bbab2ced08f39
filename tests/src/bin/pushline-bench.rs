//! `pushline-bench`: the whole pipeline under an open-loop webhook load, on this machine.
//!
//! Starts nats-server and redis-server, the mock APNs and FCM (in this process: they
//! timestamp every push they receive), and the four services as separate release
//! processes (so each one's CPU time and peak RSS can be read); registers `--persons`
//! persons with one iOS VoIP and one Android device each; then sends signed
//! `telephony_push` webhooks at a fixed arrival rate for a fixed duration — open loop: each
//! is due at its scheduled time whether or not earlier ones were answered — over
//! `--connections` keep-alive connections (bodies and signatures built before the clock
//! starts). Loopback only, bounded by `--rate × --duration`.
//!
//! Report: offered and accepted webhooks/s, pushes delivered/s, lost (accepted but not
//! delivered before the deadline) and duplicates, end-to-end latency from webhook sent to
//! push received (p50/p90/p99/p99.9), ingest response latency, CPU seconds and peak RSS
//! per service, and per accepted webhook each process's CPU µs, write system calls and
//! wake-ups (voluntary context switches), from `/proc`. A table on stdout, JSON with
//! `--json FILE`. When a push arrived twice, stderr says how long after the first copy the
//! second came; `--keep-logs` keeps the services' logs (at `info`, which names every retry
//! and every job that came back) and prints their folder.
//!
//! Ceilings measured in the same run, each printed with the pipeline's ratio to it:
//! pipelined JetStream publish on the same server; a bare HTTP handler doing the same
//! signature check and JSON parse as ingest, and ingest itself, both under the same
//! closed-loop load (64 keep-alive connections); the mock APNs under `h2load`.
//!
//! ```text
//! cargo build --release --bins
//! target/release/pushline-bench [--rate 1000] [--duration 10] [--persons 500] [--connections 256] [--json FILE]
//! target/release/pushline-bench --sweep 500,1000,2000,5000,10000 [--duration 10]
//! target/release/pushline-bench --no-tracking …   # the same without delivery status records
//! target/release/pushline-bench --keep-logs …     # keep the services' logs
//! target/release/pushline-bench --partitions 3 …   # `nats.partitions` of every service
//! ```

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::bench::{arg, closed_loop, json_path, percentile, stat_cpu_seconds};
use harness::mock::apns::{MockApns, P8Key};
use harness::mock::fcm::MockFcm;
use harness::mock::now_us;
use harness::mock::tls::TestCa;
use harness::servers::{NatsServer, RedisServer, free_port};
use harness::webex::{sign, telephony_push};

const SECRET: &str = "bench-webhook-secret";
const API_KEY: &str = "bench-api-key";
const BUNDLE: &str = "com.example.bench";
const PROJECT: &str = "pushline-bench";

struct Service {
    name: &'static str,
    child: Child,
    admin: u16,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) and peak RSS (MiB) of a running process.
fn usage(pid: u32) -> (f64, f64) {
    let cpu = stat_cpu_seconds(Path::new(&format!("/proc/{pid}/stat"))).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    (cpu, hwm_kib / 1024.0)
}

/// What a process has done so far, as counted by the kernel.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    /// CPU seconds, user + system.
    cpu: f64,
    /// Write-family system calls (`write`, `writev`): for these services, one per TCP
    /// send (an HTTP response or request, a batch of NATS protocol lines, a Redis
    /// command).
    writes: f64,
    /// Voluntary context switches over every thread: each is a thread going to sleep
    /// (epoll, futex) and later being woken.
    wakeups: f64,
}

fn counters(pid: u32) -> Counters {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let writes = io
        .lines()
        .find_map(|l| l.strip_prefix("syscw:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    let wakeups = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .sum();
    Counters {
        cpu: usage(pid).0,
        writes,
        wakeups,
    }
}

/// Every named process's counters, read now.
fn counters_now(processes: &[(&'static str, u32)]) -> Vec<Counters> {
    processes.iter().map(|(_, pid)| counters(*pid)).collect()
}

/// What each process spent per accepted webhook between two readings (CPU µs, writes,
/// wake-ups), and the four services' CPU total.
struct PerWebhook {
    rows: Vec<(&'static str, Counters)>,
    services_total: f64,
}

impl PerWebhook {
    fn between(
        processes: &[(&'static str, u32)],
        before: &[Counters],
        after: &[Counters],
        webhooks: usize,
    ) -> Self {
        let n = webhooks.max(1) as f64;
        let rows: Vec<_> = (0..processes.len())
            .map(|i| {
                let (a, b) = (after[i], before[i]);
                let per = Counters {
                    cpu: (a.cpu - b.cpu) * 1e6 / n,
                    writes: (a.writes - b.writes) / n,
                    wakeups: (a.wakeups - b.wakeups) / n,
                };
                (processes[i].0, per)
            })
            .collect();
        let services_total = rows
            .iter()
            .filter(|(name, _)| SERVICES.contains(name))
            .map(|(_, per)| per.cpu)
            .sum();
        PerWebhook {
            rows,
            services_total,
        }
    }

    /// `{process: figure}` for one of the counters, with the services' total for CPU.
    fn json(&self, figure: impl Fn(&Counters) -> f64, with_total: bool) -> serde_json::Value {
        let mut map: serde_json::Map<String, serde_json::Value> = self
            .rows
            .iter()
            .map(|(name, per)| ((*name).to_owned(), serde_json::json!(figure(per))))
            .collect();
        if with_total {
            map.insert(
                "services_total".into(),
                serde_json::json!(self.services_total),
            );
        }
        map.into()
    }
}

/// The four pushline services (each dispatcher sends one push per webhook here).
const SERVICES: [&str; 4] = ["ingest", "registry", "dispatcher-apns", "dispatcher-fcm"];

fn spawn(
    bin_dir: &Path,
    name: &'static str,
    config: &Path,
    admin: u16,
    log_dir: &Path,
) -> anyhow::Result<Service> {
    let binary = bin_dir.join(format!("pushline-{name}"));
    anyhow::ensure!(
        binary.exists(),
        "{} missing: run `cargo build --release --bins` first",
        binary.display()
    );
    let log = std::fs::File::create(log_dir.join(format!("{name}.log")))?;
    let child = Command::new(binary)
        .arg("--config")
        .arg(config)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    Ok(Service { name, child, admin })
}

fn call_id(body: &[u8], provider: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let id = match provider {
        "apns" => v["callId"].as_str()?.to_owned(),
        _ => v["message"]["data"]["callId"].as_str()?.to_owned(),
    };
    id.parse().ok()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    harness::bench::check_args(
        &[
            "--rate",
            "--duration",
            "--persons",
            "--partitions",
            "--sweep",
            "--connections",
            "--json",
        ],
        &["--keep-logs", "--no-tracking", "--no-h2load"],
    );
    harness::bench::require_h2load()?;
    let rate = arg("--rate", 1_000).max(1);
    let duration = arg("--duration", 10).max(1);
    let persons = arg("--persons", 500).max(1) as usize;
    let bin_dir: PathBuf = std::env::current_exe()?
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default();
    // `--keep-logs`: the services' logs (and configs) stay, and their folder is printed.
    let keep_logs = std::env::args().any(|a| a == "--keep-logs");
    let work = tempfile::tempdir()?;
    let (dir, _removed_at_exit) = if keep_logs {
        let kept = work.keep();
        eprintln!("service logs in {}", kept.display());
        (kept, None)
    } else {
        (work.path().to_owned(), Some(work))
    };
    let dir = dir.as_path();

    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let ca = TestCa::new();
    let key = P8Key::generate("TEAM123456", "KEY1234567");
    let apns = MockApns::start_apns(&ca, &[BUNDLE], &[&key], 0).await;
    let fcm = MockFcm::start_fcm(&ca, &[PROJECT], 0).await;
    let ca_file = apns.write_ca(dir, "ca.pem");
    let key_file = key.write(dir);
    let account = fcm.write_service_account(dir, PROJECT);

    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let (ingest_port, registry_port) = (ports[0], ports[1]);
    let (ingest_admin, registry_admin, apns_admin, fcm_admin) =
        (ports[2], ports[3], ports[4], ports[5]);
    let key_hash = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(API_KEY.as_bytes()))
    };
    // `--no-tracking`: the baseline of what writing delivery status records costs.
    let tracking = !std::env::args().any(|a| a == "--no-tracking");
    // Kept logs say why pushes were retried (`info`); otherwise only warnings are written.
    let filter = if keep_logs { "info" } else { "warn" };
    // `--partitions N`: every service on N partitions (`nats.partitions`, default 1).
    let partitions = arg("--partitions", 1).max(1);
    let nats_section = format!(
        "[nats]\nurl = \"{}\"\ntracking = {tracking}\npartitions = {partitions}\n[telemetry]\nfilter = \"{filter}\"\n",
        nats.url()
    );
    let configs = [
        (
            "ingest",
            format!(
                "listen = \"127.0.0.1:{ingest_port}\"\nadmin_listen = \"127.0.0.1:{ingest_admin}\"\n[webex]\nsecrets = [\"{SECRET}\"]\n{nats_section}"
            ),
        ),
        (
            "registry",
            format!(
                "listen = \"127.0.0.1:{registry_port}\"\nadmin_listen = \"127.0.0.1:{registry_admin}\"\n[redis]\nurl = \"{}\"\n[devices]\ndefault_apns_app = \"{BUNDLE}\"\ndefault_fcm_app = \"{PROJECT}\"\n[auth]\napi_keys = [{{ name = \"bench\", sha256 = \"{key_hash}\", scopes = [\"admin\"] }}]\n{nats_section}",
                redis.url()
            ),
        ),
        (
            "dispatcher-apns",
            format!(
                "admin_listen = \"127.0.0.1:{apns_admin}\"\n[apns]\nproduction_url = \"{0}\"\nsandbox_url = \"{0}\"\nca_files = [\"{1}\"]\n[[apns.apps]]\nbundle_id = \"{BUNDLE}\"\nteam_id = \"TEAM123456\"\nkey_id = \"KEY1234567\"\nkey_file = \"{2}\"\n{nats_section}",
                apns.url(),
                ca_file.display(),
                key_file.display()
            ),
        ),
        (
            "dispatcher-fcm",
            format!(
                "admin_listen = \"127.0.0.1:{fcm_admin}\"\n[fcm]\nbase_url = \"{}\"\nca_files = [\"{}\"]\n[[fcm.projects]]\nservice_account_file = \"{}\"\n{nats_section}",
                fcm.url(),
                ca_file.display(),
                account.display()
            ),
        ),
    ];
    let mut services = Vec::new();
    for ((name, text), admin) in
        configs
            .iter()
            .zip([ingest_admin, registry_admin, apns_admin, fcm_admin])
    {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text)?;
        services.push(spawn(&bin_dir, name, &path, admin, dir)?);
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1_024)
        .tcp_nodelay(true)
        .build()?;
    for service in &services {
        harness::bench::wait_ready(&http, service.admin).await?;
    }
    let processes: Vec<(&'static str, u32)> = services
        .iter()
        .map(|s| (s.name, s.child.id()))
        .chain(nats.pid().map(|pid| ("nats-server", pid)))
        .chain(redis.pid().map(|pid| ("redis-server", pid)))
        .collect();

    // Register every person's two devices.
    let registry = format!("http://127.0.0.1:{registry_port}/register");
    let person = |p: usize| format!("bench-person-{p}");
    let mut registrations = tokio::task::JoinSet::new();
    for p in 0..persons {
        let (http, url) = (http.clone(), registry.clone());
        let body = serde_json::json!({"voipToken": format!("{:064x}", p + 1), "fcmToken": format!("bench-{p}:APA91bHPRgkFLJu6ck_q"), "personId": person(p)});
        registrations.spawn(async move {
            http.post(url)
                .bearer_auth(API_KEY)
                .json(&body)
                .send()
                .await
                .map(|r| r.status())
        });
        while registrations.len() >= 64 {
            registrations.join_next().await;
        }
    }
    while registrations.join_next().await.is_some() {}

    let ingest_addr = std::net::SocketAddr::from(([127, 0, 0, 1], ingest_port));
    let sweep = sweep_rates();
    if !sweep.is_empty() {
        println!("rate sweep, {duration} s per rate, {persons} persons × (1 iOS + 1 Android)");
        println!(
            "{:>8} {:>9} {:>9} {:>6} {:>5} {:>24} {:>11} {:>14}",
            "offered",
            "accepted",
            "pushes/s",
            "lost",
            "dup",
            "e2e p50/p99/p99.9 ms",
            "ingest p99",
            "cpu µs/webhook"
        );
        let mut broke = false;
        for (n, r) in sweep.iter().enumerate() {
            let base = (n as u64 + 1) * 10_000_000;
            let before = counters_now(&processes);
            let result = load(ingest_addr, *r, duration, persons, base).await;
            let m = measure(&result, &apns, &fcm).await;
            let cpu =
                PerWebhook::between(&processes, &before, &counters_now(&processes), m.accepted);
            let breaks = !broke && (m.lost > 0 || m.e2e_ms.p(99.0) > 15.0);
            broke |= breaks;
            println!(
                "{:>8.0} {:>9.0} {:>9.0} {:>6} {:>5} {:>24} {:>11.2} {:>14.0}{}{}",
                m.offered_per_s,
                m.accepted_per_s,
                m.delivered_per_s,
                m.lost,
                m.duplicates,
                format!(
                    "{:.2}/{:.2}/{:.2}",
                    m.e2e_ms.p(50.0),
                    m.e2e_ms.p(99.0),
                    m.e2e_ms.p(99.9)
                ),
                m.response_ms.p(99.0),
                cpu.services_total,
                if breaks {
                    "  <- breaks: p99 over 15 ms or loss"
                } else {
                    ""
                },
                short_of(*r, m.offered_per_s)
            );
        }
        return Ok(());
    }

    let before = counters_now(&processes);
    let result = load(ingest_addr, rate, duration, persons, 0).await;
    let m = measure(&result, &apns, &fcm).await;
    let cpu = PerWebhook::between(&processes, &before, &counters_now(&processes), m.accepted);
    // Peak RSS under this load, before the ceilings load ingest further.
    let peak_rss: Vec<f64> = processes.iter().map(|(_, pid)| usage(*pid).1).collect();
    println!(
        "pushline whole-pipeline benchmark: {rate} webhooks/s offered for {duration} s, {persons} persons × (1 iOS + 1 Android), delivery tracking {}",
        if tracking { "on" } else { "off" }
    );
    let row = |label: &str, value: String| println!("{label:<34} {value:>12}");
    row(
        "offered webhooks/s",
        format!("{:.0}{}", m.offered_per_s, short_of(rate, m.offered_per_s)),
    );
    row("accepted webhooks/s", format!("{:.0}", m.accepted_per_s));
    row("pushes delivered/s", format!("{:.0}", m.delivered_per_s));
    row("lost (accepted, not delivered)", m.lost.to_string());
    row("duplicates", m.duplicates.to_string());
    for (label, data) in [
        ("end-to-end ms", &m.e2e_ms),
        ("ingest response ms", &m.response_ms),
    ] {
        row(
            &format!("{label} p50/p90/p99/p99.9"),
            format!(
                "{:.2}/{:.2}/{:.2}/{:.2}",
                data.p(50.0),
                data.p(90.0),
                data.p(99.0),
                data.p(99.9)
            ),
        );
    }
    println!(
        "per accepted webhook during the load (each dispatcher: per push): CPU µs / writes / wake-ups"
    );
    for (name, per) in &cpu.rows {
        row(
            &format!("  {name}"),
            format!("{:.1} / {:.2} / {:.2}", per.cpu, per.writes, per.wakeups),
        );
    }
    row(
        "  the four services together",
        format!("{:.1}", cpu.services_total),
    );
    let ceilings = ceilings(
        &http,
        ingest_port,
        &nats,
        &apns,
        &key,
        dir,
        m.delivered_per_s,
    )
    .await?;
    for (label, value, ratio) in &ceilings.rows {
        let ratio = ratio.map(|r| format!(" {r:.2}×")).unwrap_or_default();
        row(label, format!("{value:.0}{ratio}"));
    }
    let mut usage_report = serde_json::Map::new();
    for (i, (name, pid)) in processes.iter().enumerate() {
        // CPU over the whole run (with the ceilings); peak RSS under the load itself.
        let total_cpu = usage(*pid).0;
        row(
            &format!("{name} cpu s (whole run) / peak RSS MiB"),
            format!("{total_cpu:.1} / {:.1}", peak_rss[i]),
        );
        usage_report.insert(
            (*name).to_owned(),
            serde_json::json!({"cpu_seconds_whole_run": total_cpu, "peak_rss_mib": peak_rss[i]}),
        );
    }
    if let Some(path) = json_path() {
        let report = serde_json::json!({
            "rate": rate, "duration_s": duration, "persons": persons,
            "offered_per_s": m.offered_per_s, "accepted_per_s": m.accepted_per_s,
            "delivered_per_s": m.delivered_per_s, "lost": m.lost, "duplicates": m.duplicates,
            "e2e_ms": {"p50": m.e2e_ms.p(50.0), "p90": m.e2e_ms.p(90.0), "p99": m.e2e_ms.p(99.0), "p99_9": m.e2e_ms.p(99.9)},
            "ingest_response_ms": {"p50": m.response_ms.p(50.0), "p99": m.response_ms.p(99.0)},
            "services": usage_report,
            "cpu_us_per_webhook": cpu.json(|per| per.cpu, true),
            "writes_per_webhook": cpu.json(|per| per.writes, false),
            "wakeups_per_webhook": cpu.json(|per| per.wakeups, false),
            "ceilings": ceilings.json,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    drop(services);
    Ok(())
}

/// `--sweep 500,1000,2000`: the rates to sweep, if asked.
fn sweep_rates() -> Vec<u64> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--sweep")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// What one load phase sent: per id, (sent at µs, response µs, status).
struct LoadResult {
    /// Per webhook: when it was due (µs), how long until ingest answered (µs), the status.
    sent: HashMap<u64, (u64, u64, u16)>,
    /// From the first due time to the last webhook sent, at least the duration.
    sending_seconds: f64,
    seconds: f64,
}

/// Sorted samples.
struct Samples(Vec<f64>);

impl Samples {
    fn p(&self, p: f64) -> f64 {
        percentile(&self.0, p)
    }
}

/// A note when the load generator could not offer the asked rate.
fn short_of(asked: u64, offered_per_s: f64) -> String {
    if offered_per_s < asked as f64 * 0.97 {
        format!(
            " (short of the {asked}/s asked: sends waited for ingest's answers or the generator)"
        )
    } else {
        String::new()
    }
}

struct Measured {
    /// Webhooks ingest accepted.
    accepted: usize,
    offered_per_s: f64,
    accepted_per_s: f64,
    delivered_per_s: f64,
    lost: usize,
    duplicates: usize,
    e2e_ms: Samples,
    response_ms: Samples,
}

/// Open loop over a fixed pool of keep-alive connections, cheap enough to offer the
/// target rate on the same two cores as everything it measures: every webhook's body and
/// signature are built before the clock starts; `--connections` workers (default 256)
/// each own one HTTP/1.1 connection (hyper's connection-level client: no pool, no task per
/// request) and send the next webhook due. Webhook `base + i` is due at start + i/rate;
/// one that waits for a free connection counts the wait in its response time, measured
/// from when it was due, so a slow ingest shows as latency, not as a lower offered rate.
async fn load(
    ingest: std::net::SocketAddr,
    rate: u64,
    duration: u64,
    persons: usize,
    base: u64,
) -> LoadResult {
    let total = (rate * duration) as usize;
    let requests: Arc<Vec<(u64, bytes::Bytes, http::HeaderValue)>> = Arc::new(
        (0..total)
            .map(|i| {
                let id = base + i as u64;
                let apns_payload = format!(r#"{{"aps":{{}},"callId":"{id}","caller":"Bench"}}"#);
                let fcm_payload = format!(r#"{{"type":"incoming_call","callId":"{id}"}}"#);
                let body = telephony_push(
                    &format!("bench-person-{}", i % persons),
                    Some(&apns_payload),
                    Some(&fcm_payload),
                );
                let signature =
                    http::HeaderValue::from_str(&sign(&body, SECRET)).expect("hex signature");
                (id, bytes::Bytes::from(body), signature)
            })
            .collect(),
    );
    let connections = (arg("--connections", 256) as usize).clamp(1, total.max(1));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now() + Duration::from_millis(200);
    let started_us = now_us() + 200_000;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (requests, next) = (requests.clone(), next.clone());
        workers.spawn(async move {
            let mut sent = Vec::with_capacity(total / connections + 1);
            let mut last_start_us = 0;
            let mut sender = None;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((id, body, signature)) = requests.get(i) else {
                    break;
                };
                let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
                let due_us = started_us + (i as u64 * 1_000_000) / rate;
                last_start_us = now_us();
                let status = post(&mut sender, ingest, body.clone(), signature.clone()).await;
                sent.push((*id, (due_us, now_us().saturating_sub(due_us), status)));
            }
            (sent, last_start_us)
        });
    }
    let mut sent = HashMap::with_capacity(total);
    let mut last_start_us = started_us;
    while let Some(done) = workers.join_next().await {
        let (done, last) = done.unwrap_or_default();
        sent.extend(done);
        last_start_us = last_start_us.max(last);
    }
    let seconds = (now_us() - started_us) as f64 / 1e6;
    // The rate webhooks went on the wire: behind the schedule when every connection was
    // waiting for ingest, or the generator itself fell behind.
    let sending_seconds = ((last_start_us - started_us) as f64 / 1e6).max(duration as f64);
    LoadResult {
        sent,
        seconds,
        sending_seconds,
    }
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>;

/// POSTs one webhook on this worker's connection (opened, or opened again, as needed);
/// the answer's status, or 0 when there was none.
async fn post(
    sender: &mut Option<Sender>,
    ingest: std::net::SocketAddr,
    body: bytes::Bytes,
    signature: http::HeaderValue,
) -> u16 {
    use http_body_util::BodyExt;
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = connect(ingest).await;
    }
    let Some(open) = sender.as_mut() else {
        return 0;
    };
    if open.ready().await.is_err() {
        *sender = None;
        return 0;
    }
    let request = http::Request::post("/webhooks/webex")
        .header(http::header::HOST, "127.0.0.1")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("x-spark-signature", signature)
        .body(http_body_util::Full::new(body))
        .expect("request");
    match open.send_request(request).await {
        Ok(response) => {
            let status = response.status().as_u16();
            if response.into_body().collect().await.is_err() {
                *sender = None;
            }
            status
        }
        Err(_) => {
            *sender = None;
            0
        }
    }
}

async fn connect(ingest: std::net::SocketAddr) -> Option<Sender> {
    let stream = tokio::net::TcpStream::connect(ingest).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(connection);
    Some(sender)
}

/// Waits (30 s at most) for the accepted webhooks' pushes and measures them.
async fn measure(result: &LoadResult, apns: &MockApns, fcm: &MockFcm) -> Measured {
    let accepted: HashSet<u64> = result
        .sent
        .iter()
        .filter(|(_, v)| v.2 == 200)
        .map(|(k, _)| *k)
        .collect();
    let expected = accepted.len() * 2;
    let settle = Instant::now() + Duration::from_secs(30);
    // Each mock's pushes, read a poll's new ones at a time (see `delivered_from`).
    let mut pushes: [(&str, Vec<harness::mock::Recorded>, usize); 2] =
        [("apns", Vec::new(), 0), ("fcm", Vec::new(), 0)];
    let mut got = HashSet::new();
    loop {
        for (provider, requests, read) in &mut pushes {
            let (new, now) = match *provider {
                "apns" => apns.delivered_from(*read),
                _ => fcm.delivered_from(*read),
            };
            *read = now;
            got.extend(
                new.iter()
                    .filter_map(|r| call_id(&r.body, provider))
                    .filter(|id| accepted.contains(id))
                    .map(|id| (*provider, id)),
            );
            requests.extend(new);
        }
        if got.len() >= expected || Instant::now() > settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut e2e = Vec::new();
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    let (mut firsts, mut gaps_ms) = (HashMap::new(), Vec::new());
    let (mut first_us, mut last_us) = (u64::MAX, 0u64);
    for (provider, requests, _) in &pushes {
        let provider = *provider;
        for r in requests {
            let Some(id) = call_id(&r.body, provider).filter(|id| result.sent.contains_key(id))
            else {
                continue;
            };
            if !seen.insert((provider, id)) {
                duplicates += 1;
                // How long after the first copy this one came, to tell a retry after a
                // timed-out answer (the retry delay) from a redelivery (`ack_wait`).
                if let Some(first) = firsts.get(&(provider, id)) {
                    gaps_ms.push(r.at_us.saturating_sub(*first) as f64 / 1000.0);
                }
                continue;
            }
            firsts.insert((provider, id), r.at_us);
            first_us = first_us.min(r.at_us);
            last_us = last_us.max(r.at_us);
            if let Some((t0, _, _)) = result.sent.get(&id) {
                e2e.push(r.at_us.saturating_sub(*t0) as f64 / 1000.0);
            }
        }
    }
    let delivered = seen.iter().filter(|(_, id)| accepted.contains(id)).count();
    if delivered < expected {
        let mut missing: Vec<(&str, u64)> = accepted
            .iter()
            .flat_map(|id| [("apns", *id), ("fcm", *id)])
            .filter(|pair| !seen.contains(pair))
            .collect();
        missing.sort_unstable();
        missing.truncate(20);
        eprintln!("not delivered (provider, call id), first 20: {missing:?}");
    }
    if !gaps_ms.is_empty() {
        gaps_ms.sort_by(f64::total_cmp);
        let gaps = Samples(gaps_ms);
        eprintln!(
            "{duplicates} pushes arrived twice; the second copy came p50 {:.0} ms / max {:.0} ms after the first \
             (run with --keep-logs to read the dispatchers' reasons)",
            gaps.p(50.0),
            gaps.p(100.0)
        );
    }
    e2e.sort_by(f64::total_cmp);
    let mut response: Vec<f64> = result.sent.values().map(|v| v.1 as f64 / 1000.0).collect();
    response.sort_by(f64::total_cmp);
    let push_seconds = (last_us.saturating_sub(first_us) as f64 / 1e6).max(1e-3);
    Measured {
        accepted: accepted.len(),
        offered_per_s: result.sent.len() as f64 / result.sending_seconds,
        accepted_per_s: accepted.len() as f64 / result.seconds,
        delivered_per_s: delivered as f64 / push_seconds,
        lost: expected.saturating_sub(delivered),
        duplicates,
        e2e_ms: Samples(e2e),
        response_ms: Samples(response),
    }
}

struct Ceilings {
    rows: Vec<(String, f64, Option<f64>)>,
    json: serde_json::Value,
}

/// The ceilings the pipeline is judged against, measured now on the same machine.
async fn ceilings(
    http: &reqwest::Client,
    ingest_port: u16,
    nats: &NatsServer,
    apns: &MockApns,
    key: &P8Key,
    dir: &Path,
    pushes_per_s: f64,
) -> anyhow::Result<Ceilings> {
    let n = 20_000;
    let webhook = |i: usize| {
        // A person with no devices: measures ingest, not the rest of the pipeline.
        let body = telephony_push(
            "bench-nobody",
            Some(&format!(r#"{{"aps":{{}},"callId":"c{i}"}}"#)),
            None,
        );
        let signature = sign(&body, SECRET);
        (body, signature)
    };

    // A bare handler: the same signature check, parse and serialisation, no NATS.
    let config = ingest::config::WebexConfig::default();
    let secrets = vec![pipeline::config::Secret::new(SECRET)];
    let bare = axum::Router::new().route(
        "/webhooks/webex",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let (config, secrets) = (config.clone(), secrets.clone());
            async move {
                let signature = headers.get("x-spark-signature").map(|v| v.as_bytes());
                if ingest::signature::verify(&body, signature, &secrets).is_err() {
                    return axum::http::StatusCode::UNAUTHORIZED;
                }
                match ingest::webex::normalise(&body, &config, pipeline::contract::now_ms(), None) {
                    Ok(ingest::webex::Normalised::Event(event))
                        if serde_json::to_vec(&event).is_ok() =>
                    {
                        axum::http::StatusCode::OK
                    }
                    _ => axum::http::StatusCode::BAD_REQUEST,
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bare_port = listener.local_addr()?.port();
    let server = tokio::spawn(async move { axum::serve(listener, bare).await });
    let post = |port: u16| {
        let http = http.clone();
        move |i: usize| {
            let (body, signature) = webhook(i);
            http.post(format!("http://127.0.0.1:{port}/webhooks/webex"))
                .header("content-type", "application/json")
                .header("x-spark-signature", signature)
                .body(body)
        }
    };
    let bare_rate = closed_loop(n, 64, post(bare_port)).await;
    server.abort();
    let ingest_rate = closed_loop(n, 64, post(ingest_port)).await;

    // Pipelined JetStream publishes of event-sized messages on the same server.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCHCEILING".into(),
        subjects: vec!["benchceiling".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let message = bytes::Bytes::from(vec![b'x'; webhook(0).0.len() + 200]);
    let started = Instant::now();
    let mut acks = Vec::with_capacity(1_000);
    for i in 0..50_000 {
        acks.push(js.publish("benchceiling", message.clone()).await?);
        if acks.len() == 1_000 || i == 49_999 {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    let publish_rate = 50_000.0 / started.elapsed().as_secs_f64();

    let bearer =
        dispatcher_apns::jwt::ProviderToken::from_p8(&key.team_id, &key.key_id, &key.pem, 1800)?
            .current(pipeline::contract::now_ms() / 1000)
            .to_string();
    let headers = [
        "apns-push-type: voip".to_owned(),
        format!("apns-topic: {BUNDLE}.voip"),
        format!("authorization: bearer {bearer}"),
    ];
    let h2 = harness::bench::h2load(
        &format!("{}/3/device/{}", apns.url(), "ab".repeat(32)),
        &headers,
        r#"{"aps":{}}"#,
        n,
        dir,
    );

    let ceiling = bare_rate.min(publish_rate);
    let mut rows = vec![
        ("ceiling: bare handler req/s".to_owned(), bare_rate, None),
        (
            "ceiling: JetStream publish msg/s".to_owned(),
            publish_rate,
            None,
        ),
        (
            "ingest req/s (same load)".to_owned(),
            ingest_rate,
            Some(ingest_rate / ceiling),
        ),
    ];
    if let Some(h2) = h2 {
        rows.push(("ceiling: mock APNs under h2load".to_owned(), h2, None));
        rows.push((
            "pushes delivered/s (both providers)".to_owned(),
            pushes_per_s,
            Some(pushes_per_s / h2),
        ));
    }
    let json = serde_json::json!({
        "bare_handler_per_s": bare_rate, "jetstream_publish_per_s": publish_rate,
        "ingest_per_s": ingest_rate, "ingest_ratio_to_min_ceiling": ingest_rate / ceiling,
        "mock_apns_h2load_per_s": h2,
    });
    Ok(Ceilings { rows, json })
}
