//! `pushline-bench-inapp`: the in-app gateway under many connections, a steady message
//! rate and a replica's crash, on this machine.
//!
//! Starts nats-server and redis-server, and `pushline-ingest`, `pushline-registry` and
//! `pushline-gateway` as separate release processes (so each one's CPU time and RSS can
//! be read from `/proc`); registers one `inapp` device for each of its persons with the
//! registry's API key; and connects WebSocket clients (tokio-websockets, independent of
//! the gateway's tungstenite) that say hello with a person JWT the bench mints (HS256,
//! the gateway's `[auth.jwt]` key), wait for `ready`, acknowledge every message and
//! answer the gateway's pings. Loopback only; every phase is bounded in count and time.
//! Each mode starts its own processes; with no mode flag, all three run at their defaults.
//!
//! | mode | what | report |
//! |---|---|---|
//! | `--idle N` (10,000) | N idle connections | gateway RSS before connecting, with N connected, per connection; its CPU (and Redis's) while idle for `--idle-secs` (10, no heartbeat due yet), then over one heartbeat period (30 s: a ping and a presence renewal per connection) |
//! | `--rate R --duration D` (1,000/s, 10 s) | `--devices` (300) connected; open-loop `/v1/notify` requests with an `inapp` part, one person each, each payload carrying its send time | producer → app p50/p90/p99/max, lost, duplicates, CPU µs per message per process |
//! | `--storm N` (5,000) | N clients on replica A with replica B running; A killed with SIGKILL; one message per client produced while A is down; each client tries the other address when its connection drops | time from the kill until every client is reconnected and until every message is received, lost, duplicates |
//!
//! Connections are opened `--concurrency` (100) at a time (TCP connect, upgrade, hello,
//! `ready`), reconnections too: under the gateway's listen backlog (128, tokio's and
//! std's default), so the figures are the gateway's and not the kernel's dropped SYNs; a
//! higher `--concurrency` shows what an overflowing backlog costs (each overflow is
//! counted and costs its client a 1 s SYN retry). The bench raises its own soft
//! open-file limit to the hard one (`prlimit`) and starts the gateway through
//! `sh -c 'ulimit -n …; exec …'`; N is capped to what the limit and the ephemeral ports
//! allow, and the report says so.
//!
//! ```text
//! cargo build --release -p pushline-gateway -p pushline-registry -p pushline-ingest
//! cargo build --release -p pushline-tests --bin pushline-bench-inapp
//! target/release/pushline-bench-inapp --idle 10000 [--idle-secs 10]
//! target/release/pushline-bench-inapp --rate 1000 --duration 10 [--devices 300]
//! target/release/pushline-bench-inapp --storm 5000
//! target/release/pushline-bench-inapp [--keep-logs]   # all three, defaults
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use harness::bench::{
    arg, listen_overflows, open_files_limit, percentile, raise_open_files, stat_cpu_seconds,
    vm_rss_kib,
};
use harness::mock::now_us;
use harness::servers::{NatsServer, RedisServer, free_port};
use harness::services::{PERSON_JWT_ISSUER, PERSON_JWT_SECRET, person_jwt};
use pipeline::CancellationToken;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_websockets::{ClientBuilder, Message, WebSocketStream};

const API_KEY: &str = "bench-api-key";
const PRODUCER_KEY: &str = "bench-producer-key";
const APP: &str = "com.example.bench";
/// Longest a client waits for one connection to be ready (connect, upgrade, hello).
const HANDSHAKE: Duration = Duration::from_secs(20);
/// Connection attempts a client makes before giving up.
const ATTEMPTS: u32 = 40;
/// How long after the load the bench waits for messages still on their way.
const SETTLE: Duration = Duration::from_secs(30);
/// File descriptors kept free beside the connections (logs, HTTP, NATS, Redis).
const SPARE_FILES: u64 = 512;

/// The printed form of the command a table comes from.
const PROGRAM: &str = "target/release/pushline-bench-inapp";

fn has(flag: &str) -> bool {
    std::env::args().any(|a| a == flag)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    harness::bench::check_args(
        &[
            "--idle",
            "--idle-secs",
            "--concurrency",
            "--rate",
            "--duration",
            "--devices",
            "--storm",
        ],
        &["--keep-logs"],
    );
    let files = raise_open_files();
    let (idle, rate, storm) = (
        has("--idle"),
        has("--rate") || has("--duration"),
        has("--storm"),
    );
    let all = !(idle || rate || storm);
    if all || idle {
        idle_mode(files).await?;
    }
    if all || rate {
        rate_mode(files).await?;
    }
    if all || storm {
        storm_mode(files).await?;
    }
    Ok(())
}

/// `n` capped to the connections the open-file limit and the ephemeral ports allow, and a
/// note when it was capped.
fn sized(n: usize, files: u64) -> (usize, Option<String>) {
    let ports = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| {
            let mut ends = range.split_whitespace().map(|v| v.parse::<u64>().ok());
            Some(ends.next()??.abs_diff(ends.next()??) + 1)
        })
        .unwrap_or(28_232);
    let cap = files
        .saturating_sub(SPARE_FILES)
        .min(ports.saturating_sub(2_000))
        .max(1) as usize;
    if n > cap {
        let hard = open_files_limit(std::process::id()).map_or(0, |(_, hard)| hard);
        (
            cap,
            Some(format!(
                "{n} asked, capped to {cap}: open-file limit {files} (ulimit -Hn {hard}), {ports} ephemeral ports"
            )),
        )
    } else {
        (n, None)
    }
}

/// Listen-queue overflows since `before` (see [`listen_overflows`]), or why unknown.
fn overflows_since(before: Option<u64>) -> String {
    match (before, listen_overflows()) {
        (Some(before), Some(now)) => format!(
            "{} (whole machine; each costs its client a 1 s SYN retry)",
            now.saturating_sub(before)
        ),
        _ => "unknown (no /proc/net/netstat)".to_owned(),
    }
}

fn row(label: &str, value: impl std::fmt::Display) {
    println!("  {label:<52} {value}");
}

fn heading(title: &str, command: &str) {
    println!();
    println!("{title}");
    println!("  command: {PROGRAM} {command}");
}

// --- mode 1: idle connections --------------------------------------------------------

async fn idle_mode(files: u64) -> anyhow::Result<()> {
    let (n, capped) = sized(arg("--idle", 10_000).max(1) as usize, files);
    let idle_secs = arg("--idle-secs", 10).max(1);
    let concurrency = arg("--concurrency", 100).max(1) as usize;
    let stack = Stack::start(1, n).await?;
    stack.register(n).await?;
    let gateway = stack.gateway(0);
    let (pid, addr) = (gateway.pid(), gateway.addr());
    let gateway_files = open_files_limit(pid).map_or(0, |(soft, _)| soft);
    let others: Vec<(&str, u32)> = stack
        .processes()
        .into_iter()
        .filter(|(name, _)| matches!(*name, "nats-server" | "redis-server"))
        .collect();
    let rss = |pid| vm_rss_kib(pid).unwrap_or(f64::NAN);
    let before = rss(pid);
    let others_before: Vec<f64> = others.iter().map(|(_, p)| rss(*p)).collect();

    let overflows = listen_overflows();
    let started = Instant::now();
    let mut clients = Clients::spawn(0..n, vec![addr], concurrency);
    let deadline = started + Duration::from_secs(60) + Duration::from_millis(20 * n as u64);
    clients
        .until(deadline, |t| t.connected_on(0) + t.gave_up >= n)
        .await;
    let connect_secs = started.elapsed().as_secs_f64();
    let overflows = overflows_since(overflows);
    let connected = clients.tally.connected_on(0);
    let with = rss(pid);
    let others_with: Vec<f64> = others.iter().map(|(_, p)| rss(*p)).collect();

    // Idle: nothing sent but the gateway's heartbeats (a ping and a presence renewal in
    // Redis per connection every `heartbeat_secs`, the first one that long after `ready`).
    // The first window holds none (every connection is younger than a heartbeat); the
    // second, one heartbeat long, holds one per connection.
    let heartbeat = gateway::config::Limits::default().heartbeat_secs;
    let drops_before = clients.tally.drops;
    let redis_pid = others
        .iter()
        .find(|(name, _)| *name == "redis-server")
        .map(|(_, pid)| *pid);
    let watched: Vec<(&'static str, u32)> = [("gateway", pid)]
        .into_iter()
        .chain(redis_pid.map(|pid| ("redis-server", pid)))
        .collect();
    let mut windows = Vec::new();
    for secs in [idle_secs, heartbeat] {
        let before = cpu_now(&watched);
        let window = Instant::now();
        clients
            .until(window + Duration::from_secs(secs), |_| false)
            .await;
        let elapsed = window.elapsed().as_secs_f64();
        let share: Vec<f64> = cpu_now(&watched)
            .iter()
            .zip(&before)
            .map(|(after, before)| (after - before) / elapsed * 100.0)
            .collect();
        windows.push((secs, share));
    }
    let after_idle = rss(pid);
    let still = clients.tally.connected_on(0);
    let drops = clients.tally.drops - drops_before;
    clients.stop().await;

    heading(
        &format!("in-app gateway: {n} idle WebSocket connections"),
        &format!("--idle {n} --idle-secs {idle_secs} --concurrency {concurrency}"),
    );
    if let Some(note) = capped {
        row("note", note);
    }
    row(
        "open-file limit: bench / gateway",
        format!("{files} / {gateway_files}"),
    );
    row(
        "connected (hello → ready)",
        format!(
            "{connected} of {n} in {connect_secs:.1} s ({:.0}/s){}",
            connected as f64 / connect_secs,
            clients.tally.failure_note()
        ),
    );
    row("listen-queue overflows while connecting", overflows);
    let per = |rss: f64| (rss - before) / connected.max(1) as f64;
    row(
        "gateway RSS before connecting MiB",
        format!("{:.1}", before / 1024.0),
    );
    row(
        &format!("gateway RSS with {connected} connected MiB"),
        format!("{:.1}", with / 1024.0),
    );
    row(
        &format!("gateway RSS after {} s idle MiB", idle_secs + heartbeat),
        format!("{:.1}", after_idle / 1024.0),
    );
    row(
        "gateway RSS per connection KiB (goal ≤ 16)",
        format!(
            "{:.1} (after {} s idle: {:.1})",
            per(with),
            idle_secs + heartbeat,
            per(after_idle)
        ),
    );
    for (i, (secs, share)) in windows.iter().enumerate() {
        let what = if i == 0 {
            // The first connection's first heartbeat is `heartbeat` after its `ready`.
            let due = if connect_secs + *secs as f64 >= heartbeat as f64 {
                "some heartbeats due"
            } else {
                "no heartbeat due"
            };
            format!("CPU % of a core, first {secs} s idle ({due})")
        } else {
            format!("CPU % of a core, next {secs} s (one heartbeat each)")
        };
        let value: Vec<String> = watched
            .iter()
            .zip(share)
            .map(|((name, _), share)| format!("{name} {share:.2}"))
            .collect();
        row(&what, value.join(", "));
    }
    row(
        "connections dropped while idle",
        format!("{drops} (still connected: {still})"),
    );
    for (i, (name, _)) in others.iter().enumerate() {
        row(
            &format!("{name} RSS growth per connection KiB"),
            format!(
                "{:.2}",
                (others_with[i] - others_before[i]) / connected.max(1) as f64
            ),
        );
    }
    Ok(())
}

// --- mode 2: a steady rate of messages -----------------------------------------------

async fn rate_mode(files: u64) -> anyhow::Result<()> {
    let rate = arg("--rate", 1_000).max(1);
    let duration = arg("--duration", 10).max(1);
    let (devices, capped) = sized(arg("--devices", 300).max(1) as usize, files);
    let concurrency = arg("--concurrency", 100).max(1) as usize;
    let stack = Stack::start(1, devices).await?;
    stack.register(devices).await?;
    let mut clients = Clients::spawn(0..devices, vec![stack.gateway(0).addr()], concurrency);
    clients
        .until(Instant::now() + Duration::from_secs(120), |t| {
            t.connected_on(0) + t.gave_up >= devices
        })
        .await;
    anyhow::ensure!(
        clients.tally.connected_on(0) == devices,
        "only {} of {devices} devices connected{}",
        clients.tally.connected_on(0),
        clients.tally.failure_note()
    );

    let processes = stack.processes();
    let before = cpu_now(&processes);
    let total = (rate * duration) as usize;
    let producer = stack.producer();
    let load = tokio::spawn(async move {
        producer
            .produce(total, Some(rate), move |n| (n as usize) % devices)
            .await
    });
    let sent = clients.while_running(load).await?;
    let accepted = sent.accepted();
    clients
        .until(Instant::now() + SETTLE, |t| t.has_all(&accepted))
        .await;
    let after = cpu_now(&processes);
    clients.stop().await;
    let tally = &clients.tally;
    let received = tally.received_of(&accepted);
    let lost = accepted.len() - received;
    let mut latency: Vec<f64> = tally.latency_us.iter().map(|us| us / 1000.0).collect();
    latency.sort_by(f64::total_cmp);
    let mut response = sent.response_ms();
    response.sort_by(f64::total_cmp);

    heading(
        &format!(
            "in-app gateway: {rate} messages/s for {duration} s to {devices} connected devices"
        ),
        &format!("--rate {rate} --duration {duration} --devices {devices}"),
    );
    if let Some(note) = capped {
        row("note", note);
    }
    row(
        "offered requests/s",
        format!("{:.0}{}", sent.offered_per_s(), sent.short_of(rate)),
    );
    row(
        "accepted (200) / refused",
        format!("{} / {}", accepted.len(), sent.rows.len() - accepted.len()),
    );
    row("received (first copies)", received);
    row("lost (accepted, not received)", lost);
    row("duplicates", tally.duplicates());
    row(
        "producer → app ms p50/p90/p99/max (goal p99 ≤ 50)",
        format!(
            "{:.2}/{:.2}/{:.2}/{:.2}",
            percentile(&latency, 50.0),
            percentile(&latency, 90.0),
            percentile(&latency, 99.0),
            percentile(&latency, 100.0)
        ),
    );
    row(
        "ingest response ms p50/p99",
        format!(
            "{:.2}/{:.2}",
            percentile(&response, 50.0),
            percentile(&response, 99.0)
        ),
    );
    println!("  CPU µs per message received (from /proc, load start → last message):");
    let per = received.max(1) as f64;
    for (i, (name, _)) in processes.iter().enumerate() {
        row(
            &format!("  {name}"),
            format!("{:.1}", (after[i] - before[i]) * 1e6 / per),
        );
    }
    Ok(())
}

// --- mode 3: a replica killed under its clients --------------------------------------

async fn storm_mode(files: u64) -> anyhow::Result<()> {
    let (n, capped) = sized(arg("--storm", 5_000).max(1) as usize, files);
    let concurrency = arg("--concurrency", 100).max(1) as usize;
    let mut stack = Stack::start(2, n).await?;
    stack.register(n).await?;
    let addrs = vec![stack.gateway(0).addr(), stack.gateway(1).addr()];
    let mut clients = Clients::spawn(0..n, addrs, concurrency);
    let started = Instant::now();
    clients
        .until(
            started + Duration::from_secs(60) + Duration::from_millis(20 * n as u64),
            |t| t.connected_on(0) + t.gave_up >= n,
        )
        .await;
    anyhow::ensure!(
        clients.tally.connected_on(0) == n,
        "only {} of {n} clients connected to replica A{}",
        clients.tally.connected_on(0),
        clients.tally.failure_note()
    );
    let survivor = stack.gateway(1).pid();
    let cpu = |pid: u32| stat_cpu_seconds(Path::new(&format!("/proc/{pid}/stat"))).unwrap_or(0.0);
    let survivor_cpu = cpu(survivor);

    // SIGKILL: no close frames, no going_away; the clients see their sockets end.
    let overflows = listen_overflows();
    let killed_pid = stack.kill_gateway(0)?;
    let killed_at = Instant::now();
    let producer = stack.producer();
    let load = tokio::spawn(async move { producer.produce(n, None, |i| i as usize).await });
    let sent = clients.while_running(load).await?;
    let produced_in = killed_at.elapsed();
    let accepted = sent.accepted();
    let deadline = Instant::now() + Duration::from_secs(60) + Duration::from_millis(20 * n as u64);
    clients
        .until(deadline, |t| {
            t.connected_on(1) + t.gave_up >= n && t.has_all(&accepted)
        })
        .await;
    let survivor_cpu = cpu(survivor) - survivor_cpu;
    let overflows = overflows_since(overflows);
    clients.stop().await;
    let tally = &clients.tally;
    let reconnected = tally.connected_on(1);
    let received = tally.received_of(&accepted);
    // Seconds from the kill to the last of `times` (sorted), with their p50 and p99.
    let since_kill = |times: Vec<Instant>| {
        let secs: Vec<f64> = times
            .iter()
            .map(|at| at.saturating_duration_since(killed_at).as_secs_f64())
            .collect();
        format!(
            "{:.2} s (p50 {:.2} s, p99 {:.2} s)",
            percentile(&secs, 100.0),
            percentile(&secs, 50.0),
            percentile(&secs, 99.0)
        )
    };

    heading(
        &format!("in-app gateway: reconnect storm, {n} clients on a replica killed with SIGKILL"),
        &format!("--storm {n} --concurrency {concurrency}"),
    );
    if let Some(note) = capped {
        row("note", note);
    }
    row(
        "clients on replica A before the kill",
        format!(
            "{n} (connected in {:.1} s)",
            (killed_at - started).as_secs_f64()
        ),
    );
    row("replica A killed", format!("kill -9 {killed_pid}"));
    row(
        "messages produced while A is down",
        format!(
            "{} accepted of {n}, in {:.2} s after the kill",
            accepted.len(),
            produced_in.as_secs_f64()
        ),
    );
    row(
        "reconnected to replica B",
        format!("{reconnected} of {n}{}", tally.failure_note()),
    );
    row("failed connection attempts", tally.failed);
    row("listen-queue overflows during the storm", overflows);
    row(
        "kill → every client reconnected",
        if reconnected == n {
            since_kill(tally.ready_on(1))
        } else {
            format!(
                "not all within the bound (last: {})",
                since_kill(tally.ready_on(1))
            )
        },
    );
    row(
        "kill → every message received",
        if received == accepted.len() {
            since_kill(tally.first_copies())
        } else {
            format!(
                "not all within the bound (last: {})",
                since_kill(tally.first_copies())
            )
        },
    );
    row("lost (accepted, not received)", accepted.len() - received);
    row("duplicates", tally.duplicates());
    row(
        "replica B CPU s during the storm",
        format!("{survivor_cpu:.2}"),
    );
    Ok(())
}

// --- the processes -------------------------------------------------------------------

/// A service running as its own process; killed when dropped.
struct Process {
    child: Child,
    port: u16,
    admin: u16,
}

impl Process {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// NATS, Redis, ingest, the registry and the gateway replicas of one mode.
struct Stack {
    ingest: Process,
    registry: Process,
    /// `None` once killed.
    gateways: Vec<Option<Process>>,
    http: reqwest::Client,
    // Dropped after the services that use them.
    nats: NatsServer,
    redis: RedisServer,
    _dir: Option<tempfile::TempDir>,
}

impl Stack {
    /// Starts everything, with `gateways` replicas each taking `connections` and more.
    async fn start(gateways: usize, connections: usize) -> anyhow::Result<Stack> {
        let bin_dir: PathBuf = std::env::current_exe()?
            .parent()
            .map(Path::to_owned)
            .unwrap_or_default();
        let work = tempfile::tempdir()?;
        let (dir, kept) = if has("--keep-logs") {
            let kept = work.keep();
            eprintln!("service logs in {}", kept.display());
            (kept, None)
        } else {
            (work.path().to_owned(), Some(work))
        };
        let nats = NatsServer::start();
        let redis = RedisServer::start();
        let filter = if has("--keep-logs") { "info" } else { "warn" };
        let common = format!(
            "[nats]\nurl = \"{}\"\n[telemetry]\nfilter = \"{filter}\"\n",
            nats.url()
        );
        let hash = |key: &str| {
            use sha2::{Digest, Sha256};
            hex::encode(Sha256::digest(key.as_bytes()))
        };
        let (ingest_port, ingest_admin) = (free_port(), free_port());
        let ingest = spawn(
            &bin_dir,
            &dir,
            "ingest",
            &format!(
                "listen = \"127.0.0.1:{ingest_port}\"\nadmin_listen = \"127.0.0.1:{ingest_admin}\"\n\
                 [webex]\nsecrets = [\"bench-webhook-secret\"]\n\
                 [[producers.keys]]\nname = \"bench\"\nsha256 = \"{}\"\nrate_per_sec = 1000000.0\nburst = 1000000\n{common}",
                hash(PRODUCER_KEY)
            ),
            (ingest_port, ingest_admin),
        )?;
        let (registry_port, registry_admin) = (free_port(), free_port());
        let registry = spawn(
            &bin_dir,
            &dir,
            "registry",
            &format!(
                "listen = \"127.0.0.1:{registry_port}\"\nadmin_listen = \"127.0.0.1:{registry_admin}\"\n\
                 [redis]\nurl = \"{}\"\n\
                 [auth]\napi_keys = [{{ name = \"bench\", sha256 = \"{}\", scopes = [\"admin\"] }}]\n{common}",
                redis.url(),
                hash(API_KEY)
            ),
            (registry_port, registry_admin),
        )?;
        let mut replicas = Vec::new();
        for replica in 0..gateways {
            let (port, mqtt, admin) = (free_port(), free_port(), free_port());
            replicas.push(Some(spawn(
                &bin_dir,
                &dir,
                if replica == 0 { "gateway" } else { "gateway-b" },
                &format!(
                    "listen = \"127.0.0.1:{port}\"\nlisten_mqtt = \"127.0.0.1:{mqtt}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
                     apps = [\"{APP}\"]\n\
                     [limits]\nmax_connections = {}\n\
                     [auth.jwt]\nissuer = \"{PERSON_JWT_ISSUER}\"\naudience = \"pushline\"\n\
                     keys = [{{ algorithm = \"HS256\", secret = \"{PERSON_JWT_SECRET}\" }}]\n\
                     [redis]\nurl = \"{}\"\n{common}",
                    connections + 1_000,
                    redis.url()
                ),
                (port, admin),
            )?));
        }
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()?;
        for process in [&ingest, &registry]
            .into_iter()
            .chain(replicas.iter().flatten())
        {
            harness::bench::wait_ready(&http, process.admin).await?;
        }
        Ok(Stack {
            ingest,
            registry,
            gateways: replicas,
            http,
            nats,
            redis,
            _dir: kept,
        })
    }

    fn gateway(&self, replica: usize) -> &Process {
        self.gateways[replica]
            .as_ref()
            .expect("a gateway replica still running")
    }

    /// Kills replica `replica` with SIGKILL and reaps it; its process id.
    fn kill_gateway(&mut self, replica: usize) -> anyhow::Result<u32> {
        let mut process = self.gateways[replica]
            .take()
            .ok_or_else(|| anyhow::anyhow!("replica {replica} is not running"))?;
        let pid = process.pid();
        process.child.kill()?; // std's kill is SIGKILL
        process.child.wait()?;
        Ok(pid)
    }

    /// Every process the bench reads counters of, named.
    fn processes(&self) -> Vec<(&'static str, u32)> {
        let names = ["gateway", "gateway-b"];
        [
            ("ingest", self.ingest.pid()),
            ("registry", self.registry.pid()),
        ]
        .into_iter()
        .chain(
            self.gateways
                .iter()
                .enumerate()
                .filter_map(|(i, g)| g.as_ref().map(|g| (names[i.min(1)], g.pid()))),
        )
        .chain(self.nats.pid().map(|pid| ("nats-server", pid)))
        .chain(self.redis.pid().map(|pid| ("redis-server", pid)))
        .chain([("pushline-bench-inapp (clients)", std::process::id())])
        .collect()
    }

    /// Registers `bench-device-<i>` for `bench-person-<i>`, `i` in `0..n`, 64 at a time.
    async fn register(&self, n: usize) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut registrations = tokio::task::JoinSet::new();
        let mut failed = Vec::new();
        for i in 0..n {
            let device = device(i);
            let request = self
                .http
                .put(format!(
                    "http://127.0.0.1:{}/v1/devices/{device}",
                    self.registry.port
                ))
                .bearer_auth(API_KEY)
                .timeout(Duration::from_secs(10))
                .json(&serde_json::json!({
                    "person_id": person(i), "platform": "inapp", "app": APP, "device_id": device,
                }));
            registrations.spawn(async move { request.send().await.map(|r| r.status()) });
            while registrations.len() >= 64 {
                collect(&mut registrations, &mut failed).await;
            }
        }
        while !registrations.is_empty() {
            collect(&mut registrations, &mut failed).await;
        }
        anyhow::ensure!(
            failed.is_empty(),
            "{} of {n} registrations failed, first: {}",
            failed.len(),
            failed[0]
        );
        eprintln!(
            "registered {n} in-app devices in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    fn producer(&self) -> Producer {
        Producer {
            http: self.http.clone(),
            url: format!("http://127.0.0.1:{}/v1/notify", self.ingest.port),
            run: rand::random::<u32>(),
        }
    }
}

type Registration = Result<reqwest::StatusCode, reqwest::Error>;

async fn collect(set: &mut tokio::task::JoinSet<Registration>, failed: &mut Vec<String>) {
    match set.join_next().await {
        Some(Ok(Ok(status))) if status.is_success() => {}
        Some(Ok(Ok(status))) => failed.push(status.to_string()),
        Some(Ok(Err(error))) => failed.push(error.to_string()),
        Some(Err(error)) => failed.push(error.to_string()),
        None => {}
    }
}

fn person(i: usize) -> String {
    format!("bench-person-{i}")
}

fn device(i: usize) -> String {
    format!("bench-device-{i:06}")
}

/// Spawns `pushline-<binary>` (the gateway replicas: `pushline-gateway`) with its config,
/// logging to `<name>.log`. The gateway goes through `sh` to raise its open-file limit.
fn spawn(
    bin_dir: &Path,
    dir: &Path,
    name: &str,
    config: &str,
    (port, admin): (u16, u16),
) -> anyhow::Result<Process> {
    let binary = bin_dir.join(format!(
        "pushline-{}",
        name.strip_suffix("-b").unwrap_or(name)
    ));
    anyhow::ensure!(
        binary.exists(),
        "{} missing: run `cargo build --release -p pushline-gateway -p pushline-registry -p pushline-ingest` first",
        binary.display()
    );
    let config_path = dir.join(format!("{name}.toml"));
    std::fs::write(&config_path, config)?;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let mut command = if name.starts_with("gateway") {
        // `exec` keeps the process id: the child is the gateway itself.
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(r#"ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0" --config "$1""#)
            .arg(&binary)
            .arg(&config_path);
        sh
    } else {
        let mut direct = Command::new(&binary);
        direct.arg("--config").arg(&config_path);
        direct
    };
    let child = command.stdout(log.try_clone()?).stderr(log).spawn()?;
    Ok(Process { child, port, admin })
}

/// Every process's CPU seconds (user + system), read now.
fn cpu_now(processes: &[(&'static str, u32)]) -> Vec<f64> {
    processes
        .iter()
        .map(|(_, pid)| stat_cpu_seconds(Path::new(&format!("/proc/{pid}/stat"))).unwrap_or(0.0))
        .collect()
}

// --- the producer --------------------------------------------------------------------

/// Sends `/v1/notify` requests with an `inapp` part.
#[derive(Clone)]
struct Producer {
    http: reqwest::Client,
    url: String,
    /// Keeps idempotency keys of separate runs apart.
    run: u32,
}

/// What the producer sent: per message number, its status and response time.
struct Sent {
    rows: Vec<(u64, u16, u64)>,
    sending_secs: f64,
}

impl Sent {
    fn accepted(&self) -> Vec<u64> {
        self.rows
            .iter()
            .filter(|(_, status, _)| *status == 200)
            .map(|(n, _, _)| *n)
            .collect()
    }

    fn response_ms(&self) -> Vec<f64> {
        self.rows
            .iter()
            .map(|(_, _, us)| *us as f64 / 1000.0)
            .collect()
    }

    fn offered_per_s(&self) -> f64 {
        self.rows.len() as f64 / self.sending_secs.max(1e-3)
    }

    /// A note when the producer could not offer the asked rate.
    fn short_of(&self, asked: u64) -> String {
        if self.offered_per_s() < asked as f64 * 0.97 {
            format!(" (short of the {asked}/s asked: sends waited for ingest or the bench)")
        } else {
            String::new()
        }
    }
}

/// Requests in flight at once.
const PRODUCER_CONNECTIONS: usize = 64;

impl Producer {
    /// Sends messages `0..total`, message `n` to person `target(n)`: open loop at `rate`
    /// (message `n` due at start + n/rate whether or not earlier ones were answered, over
    /// [`PRODUCER_CONNECTIONS`] workers), or as fast as the workers go without one. Each
    /// payload carries its send time (`t_us`); every request is bounded by a 10 s timeout.
    async fn produce(
        &self,
        total: usize,
        rate: Option<u64>,
        target: impl Fn(u64) -> usize + Send + Sync + 'static,
    ) -> Sent {
        let target = Arc::new(target);
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let start = Instant::now();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..PRODUCER_CONNECTIONS.min(total.max(1)) {
            let (this, next, target) = (self.clone(), next.clone(), target.clone());
            workers.spawn(async move {
                let mut rows = Vec::new();
                let mut last_sent = start;
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= total as u64 {
                        return (rows, last_sent);
                    }
                    if let Some(rate) = rate {
                        tokio::time::sleep_until(start + Duration::from_micros(n * 1_000_000 / rate))
                            .await;
                    }
                    last_sent = Instant::now();
                    let t_us = now_us();
                    let body = format!(
                        r#"{{"person_ids":["{}"],"class":"alert","ttl_secs":300,"idempotency_key":"bench-{}-{n}","inapp":{{"payload":{{"n":{n},"t_us":{t_us}}}}}}}"#,
                        person(target(n)),
                        this.run
                    );
                    let status = this
                        .http
                        .post(&this.url)
                        .bearer_auth(PRODUCER_KEY)
                        .header("content-type", "application/json")
                        .timeout(Duration::from_secs(10))
                        .body(body)
                        .send()
                        .await
                        .map_or(0, |r| r.status().as_u16());
                    rows.push((n, status, now_us().saturating_sub(t_us)));
                }
            });
        }
        let mut rows = Vec::with_capacity(total);
        let mut last_sent = start;
        while let Some(done) = workers.join_next().await {
            // A worker that panicked sent nothing the bench can count.
            let (done, last) = done.unwrap_or_else(|_| (Vec::new(), start));
            rows.extend(done);
            last_sent = last_sent.max(last);
        }
        let sending_secs = match rate {
            Some(rate) => (last_sent - start)
                .as_secs_f64()
                .max(total as f64 / rate as f64),
            None => start.elapsed().as_secs_f64(),
        };
        Sent { rows, sending_secs }
    }
}

// --- the clients ---------------------------------------------------------------------

type Socket = WebSocketStream<tokio::net::TcpStream>;

/// What a client tells the bench.
enum Report {
    /// Connected to replica `replica` (hello answered with `ready`).
    Ready {
        client: usize,
        replica: usize,
        at: Instant,
    },
    /// Its connection to `replica` ended.
    Dropped { client: usize, replica: usize },
    /// Stopped trying after [`ATTEMPTS`] failed attempts.
    GaveUp,
    /// An attempt to connect failed: why.
    Failed { error: String },
    /// Got message number `n`, `latency_us` after the producer put its send time in it.
    Message {
        n: u64,
        latency_us: f64,
        at: Instant,
    },
}

/// Everything the clients reported, summed up.
#[derive(Default)]
struct Tally {
    /// Each client's replica while connected.
    current: Vec<Option<usize>>,
    /// Connected clients per replica.
    on: [usize; 2],
    /// When each replica got each client's `ready`.
    ready_at: [Vec<Instant>; 2],
    drops: usize,
    gave_up: usize,
    /// Failed connection attempts, and the first one's reason.
    failed: usize,
    first_error: Option<String>,
    /// Copies of each message number and when its first copy came.
    received: HashMap<u64, (u32, Instant)>,
    latency_us: Vec<f64>,
}

impl Tally {
    fn take(&mut self, report: Report) {
        match report {
            Report::Ready {
                client,
                replica,
                at,
            } => {
                if let Some(previous) = self.current[client].replace(replica) {
                    self.on[previous] -= 1;
                }
                self.on[replica] += 1;
                self.ready_at[replica].push(at);
            }
            Report::Dropped { client, replica } => {
                if self.current[client].take().is_some() {
                    self.on[replica] -= 1;
                }
                self.drops += 1;
            }
            Report::GaveUp => self.gave_up += 1,
            Report::Failed { error } => {
                self.failed += 1;
                self.first_error.get_or_insert(error);
            }
            Report::Message { n, latency_us, at } => {
                let copies = self.received.entry(n).or_insert((0, at));
                copies.0 += 1;
                if copies.0 == 1 {
                    self.latency_us.push(latency_us);
                }
            }
        }
    }

    fn connected_on(&self, replica: usize) -> usize {
        self.on[replica]
    }

    /// When `replica` got its clients' `ready`s, sorted.
    fn ready_on(&self, replica: usize) -> Vec<Instant> {
        let mut at = self.ready_at[replica].clone();
        at.sort_unstable();
        at
    }

    fn has_all(&self, accepted: &[u64]) -> bool {
        self.received.len() >= accepted.len()
            && accepted.iter().all(|n| self.received.contains_key(n))
    }

    fn received_of(&self, accepted: &[u64]) -> usize {
        accepted
            .iter()
            .filter(|n| self.received.contains_key(n))
            .count()
    }

    fn duplicates(&self) -> u64 {
        self.received
            .values()
            .map(|(copies, _)| u64::from(copies.saturating_sub(1)))
            .sum()
    }

    /// When each message's first copy came, sorted.
    fn first_copies(&self) -> Vec<Instant> {
        let mut at: Vec<Instant> = self.received.values().map(|(_, at)| *at).collect();
        at.sort_unstable();
        at
    }

    fn failure_note(&self) -> String {
        match &self.first_error {
            Some(error) => format!(
                " ({} failed attempts, {} clients gave up; first: {error})",
                self.failed, self.gave_up
            ),
            None => String::new(),
        }
    }
}

/// The bench's WebSocket clients and what they reported.
struct Clients {
    reports: mpsc::UnboundedReceiver<Report>,
    tally: Tally,
    stop: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

impl Clients {
    /// One client per index, each starting on `addrs[0]` and moving to the next address
    /// whenever its connection drops or an attempt fails; at most `concurrency` handshakes
    /// at once.
    fn spawn(indices: std::ops::Range<usize>, addrs: Vec<SocketAddr>, concurrency: usize) -> Self {
        let (tx, reports) = mpsc::unbounded_channel();
        let gate = Arc::new(Semaphore::new(concurrency));
        let addrs: Arc<[SocketAddr]> = addrs.into();
        let stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let count = indices.end;
        for client in indices {
            let hello = serde_json::json!({
                "type": "hello", "credential": person_jwt(&person(client)),
                "app": APP, "device_id": device(client),
            })
            .to_string();
            let (addrs, gate, tx, stop) = (addrs.clone(), gate.clone(), tx.clone(), stop.clone());
            tasks.spawn(async move {
                tokio::select! {
                    () = run_client(client, hello, &addrs, &gate, &tx) => {}
                    () = stop.cancelled() => {}
                }
            });
        }
        Clients {
            reports,
            tally: Tally {
                current: vec![None; count],
                ..Tally::default()
            },
            stop,
            tasks,
        }
    }

    /// Takes reports until `done` holds or `deadline` passes; whether `done` held.
    async fn until(&mut self, deadline: Instant, done: impl Fn(&Tally) -> bool) -> bool {
        while !done(&self.tally) {
            match tokio::time::timeout_at(deadline, self.reports.recv()).await {
                Ok(Some(report)) => self.tally.take(report),
                _ => return false,
            }
        }
        true
    }

    /// Takes reports while `task` runs; its result.
    async fn while_running<T>(
        &mut self,
        mut task: tokio::task::JoinHandle<T>,
    ) -> anyhow::Result<T> {
        loop {
            tokio::select! {
                done = &mut task => return Ok(done?),
                Some(report) = self.reports.recv() => self.tally.take(report),
            }
        }
    }

    /// Stops every client (their connections close) and takes what was still reported.
    async fn stop(&mut self) {
        self.stop.cancel();
        let all_stopped = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), all_stopped)
            .await
            .is_err()
        {
            self.tasks.abort_all();
        }
        while let Ok(report) = self.reports.try_recv() {
            // Drops caused by the stop itself are not the gateway's.
            if !matches!(report, Report::Dropped { .. }) {
                self.tally.take(report);
            }
        }
    }
}

/// One app: connects (to the next address after every drop or failed attempt), reads and
/// acknowledges messages, and reports; gives up after [`ATTEMPTS`] failed attempts.
async fn run_client(
    client: usize,
    hello: String,
    addrs: &[SocketAddr],
    gate: &Semaphore,
    reports: &mpsc::UnboundedSender<Report>,
) {
    let mut replica = 0;
    let mut failures = 0;
    while failures < ATTEMPTS {
        let opened = {
            let Ok(_permit) = gate.acquire().await else {
                return;
            };
            tokio::time::timeout(HANDSHAKE, open(addrs[replica], &hello)).await
        };
        match opened {
            Ok(Ok(mut ws)) => {
                let _ = reports.send(Report::Ready {
                    client,
                    replica,
                    at: Instant::now(),
                });
                session(&mut ws, reports).await;
                let _ = reports.send(Report::Dropped { client, replica });
            }
            Ok(Err(error)) => {
                failures += 1;
                let error = format!("{}: {error}", addrs[replica]);
                let _ = reports.send(Report::Failed { error });
                // Back off a little, more with each failure (at most 1 s), spread by client.
                let spread = (client as u64 % 10) * 10;
                tokio::time::sleep(Duration::from_millis(
                    (50 * u64::from(failures)).min(1_000) + spread,
                ))
                .await;
            }
            Err(_) => {
                failures += 1;
                let error = format!("{}: not ready within {HANDSHAKE:?}", addrs[replica]);
                let _ = reports.send(Report::Failed { error });
            }
        }
        replica = (replica + 1) % addrs.len();
    }
    let _ = reports.send(Report::GaveUp);
}

/// TCP connect, WebSocket upgrade, hello, and the gateway's `ready`.
async fn open(addr: SocketAddr, hello: &str) -> anyhow::Result<Socket> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut ws, _) = ClientBuilder::new()
        .uri(&format!("ws://{addr}/v1/connect"))?
        .connect_on(stream)
        .await?;
    ws.send(Message::text(hello.to_owned())).await?;
    while let Some(message) = ws.next().await {
        let message = message?;
        if let Some(text) = message.as_text() {
            let frame: serde_json::Value = serde_json::from_str(text)?;
            anyhow::ensure!(frame["type"] == "ready", "not ready: {frame}");
            return Ok(ws);
        }
        if let Some((code, reason)) = message.as_close() {
            anyhow::bail!("closed {}: {reason}", u16::from(code));
        }
    }
    anyhow::bail!("the connection ended before ready")
}

/// Reads frames until the connection ends: reports each message and acknowledges it.
/// Polling also answers the gateway's pings (tokio-websockets does).
async fn session(ws: &mut Socket, reports: &mpsc::UnboundedSender<Report>) {
    while let Some(Ok(message)) = ws.next().await {
        if message.is_close() {
            return;
        }
        let Some(text) = message.as_text() else {
            continue;
        };
        let Some((seq, n, t_us)) = message_frame(text) else {
            continue;
        };
        let _ = reports.send(Report::Message {
            n,
            latency_us: now_us().saturating_sub(t_us) as f64,
            at: Instant::now(),
        });
        let ack = format!(r#"{{"type":"ack","seq":{seq}}}"#);
        if ws.send(Message::text(ack)).await.is_err() {
            return;
        }
    }
}

/// `(seq, n, t_us)` of a `message` frame carrying the bench's payload.
fn message_frame(text: &str) -> Option<(u64, u64, u64)> {
    let frame: serde_json::Value = serde_json::from_str(text).ok()?;
    if frame["type"] != "message" {
        return None;
    }
    Some((
        frame["seq"].as_u64()?,
        frame["payload"]["n"].as_u64()?,
        frame["payload"]["t_us"].as_u64()?,
    ))
}
