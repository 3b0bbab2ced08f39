//! Fault drills: the whole pipeline under an open-loop load of signed call webhooks while
//! a distributed engine fails, and a report of what happened to every call.
//!
//! The same scenarios run short in the test suite (`tests/tests/e2e/distributed.rs`, which
//! asserts on the report) and long in `pushline-drill` (which prints it). Each call has
//! its own id and ring deadline, and each person one iPhone and one Android phone, so
//! every accepted call must reach the mock APNs once and the mock FCM once, before its
//! deadline. With `Scale::partitions` above 1 every service runs on that many
//! partitions; the NATS drills send with an uncapped [`Sender`] unless told otherwise.
//!
//! | drill | fault |
//! |---|---|
//! | `nats-node` | three-node JetStream cluster (R3): `kill -9` of a node that is not the leader of a random `EVENTS` partition (it may lead other streams and consumers), restarted later |
//! | `nats-leader` | the same cluster: `kill -9` of the leader of a random `EVENTS` partition, restarted later |
//! | `nats-restart` | single nats-server: `kill -9`, down for the fault time, restarted |
//! | `redis-sentinel` | Redis primary + replica + 3 sentinels: `kill -9` of the primary |
//! | `redis-cluster` | Redis Cluster (3 primaries): registrations moving tokens between persons during the load |
//! | `redis-outage` | single Redis (persistent): `kill -9`, down for the fault time, restarted |

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pipeline::contract::now_ms;
use pipeline::topology::StreamKind;
use registry::config::RedisMode;

use crate::clusters::{NatsCluster, RedisCluster, RedisSentinel, SENTINEL_MASTER};
use crate::mock::Recorded;
use crate::mock::apns::MockApns;
use crate::mock::fcm::MockFcm;
use crate::services::{Env, WEBHOOK_SECRET};
use crate::stack::{Configs, Stack};

/// Every drill, by name.
pub const DRILLS: [&str; 6] = [
    "nats-node",
    "nats-leader",
    "nats-restart",
    "redis-sentinel",
    "redis-cluster",
    "redis-outage",
];

/// How the load sends its webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// Like Webex: one HTTP request per webhook on a connection of its own, opened when
    /// the webhook is due, however many are still waiting for their answers.
    Uncapped,
    /// Over a client's keep-alive pool (256 idle connections kept).
    Pooled,
}

impl Sender {
    /// The sender a drill uses unless told otherwise: uncapped for the NATS faults
    /// (where ingest holds webhooks while the store elects a leader), pooled for Redis.
    pub fn default_for(drill: &str) -> Sender {
        if drill.starts_with("nats") {
            Sender::Uncapped
        } else {
            Sender::Pooled
        }
    }
}

/// How hard and how long a drill runs.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    /// Call webhooks per second (open loop).
    pub rate: u32,
    /// Load before the fault.
    pub before: Duration,
    /// How long the fault lasts (for faults that heal: restarts, outages).
    pub fault: Duration,
    /// Load after the fault healed.
    pub after: Duration,
    /// Each call's ring time (its deadline is sent time + this).
    pub ring: Duration,
    /// Persons (each with one iOS and one Android device).
    pub persons: usize,
    /// `nats.partitions` of every service.
    pub partitions: usize,
    /// The sender; `None`: [`Sender::default_for`] the drill.
    pub sender: Option<Sender>,
}

impl Scale {
    /// Short enough for the test suite.
    pub fn test() -> Self {
        Scale {
            rate: 50,
            before: Duration::from_secs(1),
            fault: Duration::from_secs(2),
            after: Duration::from_secs(2),
            ring: Duration::from_secs(30),
            persons: 20,
            partitions: 1,
            sender: None,
        }
    }
}

/// What happened to the calls of one drill.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The drill.
    pub drill: String,
    /// Webhooks sent.
    pub sent: usize,
    /// Answered 200 (stored).
    pub accepted: usize,
    /// Answered otherwise (503 after the retry budget), or not answered.
    pub refused: usize,
    /// Of those, sent while the fault lasted.
    pub refused_during_fault: usize,
    /// Webhooks sent while the fault lasted.
    pub sent_during_fault: usize,
    /// Pushes the accepted calls owe (two each).
    pub expected: usize,
    /// Distinct pushes the mocks accepted for accepted calls.
    pub delivered: usize,
    /// Pushes owed but never delivered.
    pub lost: usize,
    /// Pushes a device got more than once.
    pub duplicates: usize,
    /// Pushes received after their call's deadline.
    pub late: usize,
    /// Messages in `DEAD`.
    pub dead_letters: usize,
    /// From the fault's start to the first push of a call sent after it, ms.
    pub recovery_ms: Option<u64>,
    /// p99 of webhook sent → push received, ms.
    pub e2e_p99_ms: u64,
    /// Longest webhook answer (ingest holding a request while it retries), ms.
    pub ingest_max_ms: u64,
    /// Jobs that came back after delivery and were not sent again (dispatchers'
    /// `pushline_pushes_total{outcome="duplicate"}`).
    pub second_rings_stopped: u64,
    /// Of the webhooks sent 2 s or more after the fault began: p99 of their answers, ms.
    pub answer_p99_settled_ms: u64,
    /// Of the same webhooks' calls: p99 of webhook sent → push received, ms.
    pub e2e_p99_settled_ms: u64,
}

impl Report {
    /// The table header [`Report::row`] fits.
    pub fn header() -> String {
        "| drill | webhooks sent | accepted | refused (during fault) | pushes owed | delivered | lost | duplicates | late | dead letters | recovery | e2e p99 | longest webhook answer | answer p99 from fault + 2 s | e2e p99 from fault + 2 s | second rings stopped |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|".into()
    }

    /// One Markdown table row.
    pub fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {} ({} of {}, {:.2}%) | {} | {} | {} | {} | {} | {} | {} | {} ms | {} ms | {} ms | {} ms | {} |",
            self.drill,
            self.sent,
            self.accepted,
            self.refused,
            self.refused_during_fault,
            self.sent_during_fault,
            100.0 * self.refused_during_fault as f64 / self.sent_during_fault.max(1) as f64,
            self.expected,
            self.delivered,
            self.lost,
            self.duplicates,
            self.late,
            self.dead_letters,
            self.recovery_ms
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "-".into()),
            self.e2e_p99_ms,
            self.ingest_max_ms,
            self.answer_p99_settled_ms,
            self.e2e_p99_settled_ms,
            self.second_rings_stopped,
        )
    }

    /// Panics unless nothing was lost, duplicated, late or dead-lettered and the
    /// webhooks refused (during the fault or not) are at most `max_refused_share` of those
    /// sent during the fault.
    pub fn assert_clean(&self, max_refused_share: f64) {
        eprintln!("{}\n{}", Self::header(), self.row());
        assert!(
            self.lost == 0
                && self.duplicates == 0
                && self.late == 0
                && self.dead_letters == 0
                && self.refused as f64 <= max_refused_share * self.sent_during_fault.max(1) as f64,
            "drill {} was not clean:\n{}\n{}",
            self.drill,
            Self::header(),
            self.row()
        );
    }
}

/// One webhook the load sent.
#[derive(Debug, Clone)]
struct Call {
    id: String,
    sent_ms: u64,
    answered_ms: u64,
    deadline_ms: u64,
    status: u16,
}

/// An open-loop load of call webhooks: each is sent at its scheduled time, on its own
/// task, whatever happened to earlier ones; by a [`Sender::Uncapped`] on a connection
/// of its own.
struct Load {
    calls: Arc<Mutex<Vec<Call>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(stack: &Stack, scale: Scale, sender: Sender, total: Duration) -> Load {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let url = stack.ingest.url("/webhooks/webex");
        // No idle connection kept: every request opens its own, so nothing but the
        // server limits how many are open at once.
        let idle = match sender {
            Sender::Uncapped => 0,
            Sender::Pooled => 256,
        };
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(idle)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        let count = (scale.rate as f64 * total.as_secs_f64()).ceil() as u64;
        let interval = Duration::from_secs_f64(1.0 / f64::from(scale.rate.max(1)));
        let run = format!("{:08x}", rand::random::<u32>());
        let recorded = calls.clone();
        let task = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut requests = tokio::task::JoinSet::new();
            for n in 0..count {
                tokio::time::sleep_until(started + interval * n as u32).await;
                let person = format!("drill-person-{}", n as usize % scale.persons);
                let id = format!("{run}-{n}");
                let sent_ms = now_ms();
                let deadline_ms = sent_ms + scale.ring.as_millis() as u64;
                let body = crate::webex::telephony_push(
                    &person,
                    Some(&format!(
                        r#"{{"aps":{{}},"callId":"{id}","ringexpiretime":{deadline_ms}}}"#
                    )),
                    Some(&format!(r#"{{"type":"incoming_call","callId":"{id}"}}"#)),
                );
                let request = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header(
                        "x-spark-signature",
                        crate::webex::sign(&body, WEBHOOK_SECRET),
                    )
                    .body(body);
                let recorded = recorded.clone();
                requests.spawn(async move {
                    let status = match request.send().await {
                        Ok(response) => response.status().as_u16(),
                        Err(_) => 0,
                    };
                    recorded.lock().expect("calls").push(Call {
                        id,
                        sent_ms,
                        answered_ms: now_ms(),
                        deadline_ms,
                        status,
                    });
                });
                while requests.try_join_next().is_some() {}
            }
            while requests.join_next().await.is_some() {}
        });
        Load { calls, task }
    }

    async fn finish(self) -> Vec<Call> {
        let _ = self.task.await;
        self.calls.lock().expect("calls").clone()
    }
}

/// The call id a push carries (`"callId":"…"` in the APNs body and the FCM data).
fn call_id(recorded: &Recorded) -> Option<String> {
    let body = std::str::from_utf8(&recorded.body).ok()?;
    let start = body.find("callId")? + "callId".len();
    let rest = body[start..].trim_start_matches(['"', '\\', ':', ' ']);
    let end = rest.find(['"', '\\'])?;
    Some(rest[..end].to_owned())
}

/// Registers every drill person's two devices.
async fn register_devices(stack: &Stack, persons: usize) {
    for n in 0..persons {
        let person = format!("drill-person-{n}");
        stack
            .register_ios(&person, &format!("{:064x}", n + 1))
            .await;
        stack
            .register_android(&person, &format!("drill-fcm-token-{n}"))
            .await;
    }
}

/// Waits until every accepted call is delivered twice or the last deadline passed, then
/// reports.
async fn report(drill: &str, stack: &Stack, calls: Vec<Call>, fault: (u64, u64)) -> Report {
    let accepted: HashMap<&str, &Call> = calls
        .iter()
        .filter(|c| c.status == 200)
        .map(|c| (c.id.as_str(), c))
        .collect();
    let expected = accepted.len() * 2;
    let last_deadline = calls.iter().map(|c| c.deadline_ms).max().unwrap_or(0);
    let pushes = |stack: &Stack| {
        let mut all = stack.providers.get::<MockApns>().delivered();
        let apns = all.len();
        all.extend(stack.providers.get::<MockFcm>().delivered());
        (all, apns)
    };
    let distinct = |stack: &Stack| {
        let (all, apns) = pushes(stack);
        let mut seen = std::collections::HashSet::new();
        for (n, push) in all.iter().enumerate() {
            if let Some(id) = call_id(push) {
                if accepted.contains_key(id.as_str()) {
                    seen.insert((n < apns, id));
                }
            }
        }
        seen.len()
    };
    while distinct(stack) < expected && now_ms() < last_deadline + 1_000 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let any second ring that is coming arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (all, apns) = pushes(stack);
    let mut per_device: HashMap<(bool, String), Vec<&Recorded>> = HashMap::new();
    for (n, push) in all.iter().enumerate() {
        if let Some(id) = call_id(push) {
            per_device.entry((n < apns, id)).or_default().push(push);
        }
    }
    let mut report = Report {
        drill: drill.to_owned(),
        sent: calls.len(),
        accepted: accepted.len(),
        refused: calls.len() - accepted.len(),
        expected,
        ..Report::default()
    };
    let (fault_start, fault_end) = fault;
    let during = |c: &Call| c.sent_ms >= fault_start && c.sent_ms <= fault_end;
    report.sent_during_fault = calls.iter().filter(|c| during(c)).count();
    report.refused_during_fault = calls
        .iter()
        .filter(|c| c.status != 200 && during(c))
        .count();
    let mut e2e = Vec::new();
    for ((_, id), received) in &per_device {
        let Some(call) = accepted.get(id.as_str()) else {
            continue;
        };
        report.delivered += 1;
        report.duplicates += received.len() - 1;
        report.late += received
            .iter()
            .filter(|r| r.at_ms > call.deadline_ms)
            .count();
        let first = received.iter().map(|r| r.at_ms).min().unwrap_or(0);
        e2e.push(first.saturating_sub(call.sent_ms));
        if call.sent_ms >= fault_start {
            let recovery = first.saturating_sub(fault_start);
            report.recovery_ms = Some(report.recovery_ms.map_or(recovery, |r| r.min(recovery)));
        }
    }
    report.e2e_p99_ms = p99(e2e);
    let settled = |c: &Call| c.sent_ms >= fault_start + 2_000;
    report.answer_p99_settled_ms = p99(calls
        .iter()
        .filter(|c| settled(c))
        .map(|c| c.answered_ms.saturating_sub(c.sent_ms))
        .collect());
    report.e2e_p99_settled_ms = p99(per_device
        .iter()
        .filter_map(|((_, id), received)| {
            let call = accepted.get(id.as_str()).filter(|c| settled(c))?;
            let first = received.iter().map(|r| r.at_ms).min()?;
            Some(first.saturating_sub(call.sent_ms))
        })
        .collect());
    report.lost = expected.saturating_sub(report.delivered);
    report.ingest_max_ms = calls
        .iter()
        .map(|c| c.answered_ms.saturating_sub(c.sent_ms))
        .max()
        .unwrap_or(0);
    report.dead_letters = stack.env.stream_messages(StreamKind::Dead).await.len();
    if report.lost > 0 {
        let lost_apns = accepted
            .keys()
            .filter(|id| !per_device.contains_key(&(true, id.to_string())))
            .count();
        let lost_fcm = accepted
            .keys()
            .filter(|id| !per_device.contains_key(&(false, id.to_string())))
            .count();
        eprintln!("drill {drill}: lost {lost_apns} APNs and {lost_fcm} FCM pushes");
        eprintln!("{}", jetstream_state(stack).await);
    }
    for dispatcher in stack.dispatchers() {
        report.second_rings_stopped += dispatcher
            .metrics()
            .await
            .lines()
            .filter(|l| {
                l.starts_with("pushline_pushes_total{") && l.contains(r#"outcome="duplicate""#)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    report
}

/// The 99th percentile of `values` (0 when empty).
fn p99(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values
        .get((values.len() * 99 / 100).min(values.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

/// Where messages sit: every stream's count and every consumer's pending, ack-pending
/// and redelivered counts and floors (printed when a drill lost something).
async fn jetstream_state(stack: &Stack) -> String {
    let connected = match pipeline::nats::seed_servers(&stack.configs.registry.nats.url) {
        Ok(servers) => async_nats::connect(servers)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let client = match connected {
        Ok(client) => client,
        Err(e) => return format!("cannot connect to NATS for diagnostics: {e}"),
    };
    let js = async_nats::jetstream::new(client);
    let topology = stack.env.topology();
    let mut out = String::new();
    let every = |kind| topology.stream_names(kind);
    for name in topology.streams().into_iter().flat_map(every) {
        match js.get_stream(&name).await {
            Ok(stream) => {
                let state = &stream.cached_info().state;
                out += &format!(
                    "stream {name}: {} messages, first {} last {}\n",
                    state.messages, state.first_sequence, state.last_sequence
                );
            }
            Err(e) => out += &format!("stream {name}: {e}\n"),
        }
    }
    let every = |kind: pipeline::topology::ConsumerKind| {
        topology
            .stream_names(kind.stream())
            .into_iter()
            .map(move |stream| (kind, stream))
    };
    for (kind, stream) in topology.consumers().into_iter().flat_map(every) {
        let Ok(s) = js.get_stream(&stream).await else {
            continue;
        };
        match s.consumer_info(&kind.durable_name()).await {
            Ok(info) => {
                out += &format!(
                    "consumer {stream}/{}: pending {}, ack pending {}, redelivered {}, delivered stream seq {}, ack floor stream seq {}\n",
                    kind.durable_name(),
                    info.num_pending,
                    info.num_ack_pending,
                    info.num_redelivered,
                    info.delivered.stream_sequence,
                    info.ack_floor.stream_sequence
                )
            }
            Err(e) => out += &format!("consumer {stream}/{}: {e}\n", kind.durable_name()),
        }
    }
    out
}

/// The providers a drill's calls ring (an iPhone and an Android phone per person): only
/// their dispatchers run, so the cluster holds no idle consumers.
const DRILLED: &[&str] = &["apns", "fcm"];

/// Points every service at a NATS cluster with three replicas per stream and
/// `partitions` partitions.
fn on_nats_cluster(configs: &mut Configs, url: &str, partitions: usize) {
    configs.each_nats(|nats| {
        nats.url = url.to_owned();
        nats.replicas = 3;
        nats.partitions = partitions;
    });
}

/// Runs the blocking harness call `f` without stalling the services on this runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Runs one drill by name. Needs a multi-threaded runtime.
pub async fn run(drill: &str, scale: Scale) -> Report {
    match drill {
        "nats-node" | "nats-leader" => nats_cluster(drill, scale).await,
        "nats-restart" => nats_restart(scale).await,
        "redis-sentinel" => redis_sentinel(scale).await,
        "redis-cluster" => redis_cluster(scale).await,
        "redis-outage" => redis_outage(scale).await,
        other => panic!("no drill named {other}; drills: {}", DRILLS.join(", ")),
    }
}

/// The load for `drill` at `scale`, started.
fn load(drill: &str, stack: &Stack, scale: Scale) -> Load {
    let sender = scale.sender.unwrap_or(Sender::default_for(drill));
    Load::start(
        stack,
        scale,
        sender,
        scale.before + scale.fault + scale.after,
    )
}

async fn nats_cluster(drill: &str, scale: Scale) -> Report {
    let mut cluster = NatsCluster::start().await;
    let url = cluster.url();
    let stack = Stack::start_with(|c| {
        c.keep_dispatchers(DRILLED);
        on_nats_cluster(c, &url, scale.partitions);
    })
    .await;
    // A running cluster has its leaders spread long before a node dies: the fault waits
    // for the publishers to spread them (how long that took is printed).
    let topology = providers::topology(&stack.configs.registry.nats);
    if scale.partitions > 1 {
        let started = Instant::now();
        let spread = wait_spread(&cluster, &topology, SPREAD_WITHIN).await;
        eprintln!(
            "drill {drill}: leaders {} after {:.1} s",
            if spread { "spread" } else { "not yet spread" },
            started.elapsed().as_secs_f64()
        );
    }
    register_devices(&stack, scale.persons).await;
    let load = load(drill, &stack, scale);
    tokio::time::sleep(scale.before).await;
    // Where the partitions' leaders are when the fault comes (printed: the server's
    // choice, and the publishers' moves).
    let placement: Vec<String> = placement(&cluster, &topology)
        .await
        .iter()
        .map(|(stream, streams, consumers)| {
            format!("{stream}: streams {streams:?}, consumers {consumers:?}")
        })
        .collect();
    eprintln!("drill {drill}: leaders {}", placement.join("; "));
    // The leader of one partition of `EVENTS`, chosen at random (partition 0 is the
    // stream of an unpartitioned topology).
    let partition = rand::random::<u32>() as usize % scale.partitions.max(1);
    let events = stack
        .env
        .topology()
        .stream_name_in(StreamKind::Events, partition);
    let leader = cluster
        .stream_leader(&events)
        .await
        .expect("the EVENTS partition has a leader");
    let leader = cluster.index_of(&leader).expect("leader is a cluster node");
    let victim = if drill == "nats-leader" {
        leader
    } else {
        (leader + 1) % 3
    };
    let start = now_ms();
    blocking(|| cluster.kill(victim));
    tokio::time::sleep(scale.fault).await;
    blocking(|| cluster.restart(victim));
    let end = now_ms();
    let calls = load.finish().await;
    let report = report(drill, &stack, calls, (start, end)).await;
    eprintln!(
        "drill {drill}: leader moves {}",
        leader_moves(&stack).await.join(", ")
    );
    report
}

/// The longest a cluster drill waits for the publishers to spread the leaders.
const SPREAD_WITHIN: Duration = Duration::from_secs(90);

/// For `EVENTS` and the drilled providers' push streams: the stream's name and, per
/// partition, the node leading its stream and the node leading its consumer (empty where
/// none answered).
async fn placement(
    cluster: &NatsCluster,
    topology: &pipeline::topology::Topology,
) -> Vec<(String, Vec<String>, Vec<String>)> {
    use pipeline::topology::ConsumerKind;
    let js = cluster.jetstream().await;
    let mut placement = Vec::new();
    for consumer in [
        ConsumerKind::Fanout,
        ConsumerKind::Dispatch("apns"),
        ConsumerKind::Dispatch("fcm"),
    ] {
        let (mut streams, mut consumers) = (Vec::new(), Vec::new());
        let durable = consumer.durable_name();
        for name in topology.stream_names(consumer.stream()) {
            let (stream, consumer) = match &js {
                Some(js) => crate::clusters::leaders_on(js, &name, &durable).await,
                None => (None, None),
            };
            streams.push(stream.unwrap_or_default());
            consumers.push(consumer.unwrap_or_default());
        }
        placement.push((topology.stream_name(consumer.stream()), streams, consumers));
    }
    placement
}

/// Waits up to `within` until every stream of [`placement`] has its partitions' streams
/// led by distinct nodes, and their consumers too (as many as there are nodes): what the
/// publishers' balancing aims at on any server. Answers whether it came to that.
async fn wait_spread(
    cluster: &NatsCluster,
    topology: &pipeline::topology::Topology,
    within: Duration,
) -> bool {
    let until = Instant::now() + within;
    loop {
        let spread = placement(cluster, topology)
            .await
            .iter()
            .all(|(_, streams, consumers)| {
                led_by_distinct_nodes(streams) && led_by_distinct_nodes(consumers)
            });
        if spread {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether the partitions whose leaders are `nodes` (empty where none answered) are led
/// by as many distinct nodes as there are partitions, or nodes (three).
fn led_by_distinct_nodes(nodes: &[String]) -> bool {
    let led: std::collections::HashSet<_> = nodes.iter().filter(|n| !n.is_empty()).collect();
    led.len() == nodes.len().min(3)
}

/// The `pushline_partition_leader_moves_total` lines of ingest's and the registry's
/// metrics (the publishers that balance partitions).
async fn leader_moves(stack: &Stack) -> Vec<String> {
    let moves = [&stack.ingest, &stack.registry]
        .into_iter()
        .map(|service| async move { service.metrics().await });
    futures::future::join_all(moves)
        .await
        .iter()
        .flat_map(|text| text.lines())
        .filter(|line| line.starts_with("pushline_partition_leader_moves_total{"))
        .map(String::from)
        .collect()
}

/// Starts the three-node cluster (every stream R3) and every service on `partitions`
/// partitions, and answers, for `EVENTS` and each push stream, the node leading each of
/// its partitions (empty where none answered): as soon as every such stream has its
/// partitions led by distinct nodes (as many as there are nodes), or as they are after
/// `within`; then the same again `later` (leaders once spread stay where they are), and
/// the `pushline_partition_leader_moves_total` lines of ingest's and the registry's
/// metrics.
pub async fn leaders_once_spread(
    partitions: usize,
    within: Duration,
    later: Duration,
) -> (
    Vec<(String, Vec<String>)>,
    Vec<(String, Vec<String>)>,
    Vec<String>,
) {
    let cluster = NatsCluster::start().await;
    let url = cluster.url();
    let stack = Stack::start_with(|c| {
        c.keep_dispatchers(DRILLED);
        on_nats_cluster(c, &url, partitions);
    })
    .await;
    // The services' topology (the test environment's own has one partition).
    let topology = providers::topology(&stack.configs.registry.nats);
    let leaders = || async {
        placement(&cluster, &topology)
            .await
            .into_iter()
            .map(|(stream, streams, _)| (stream, streams))
            .collect::<Vec<_>>()
    };
    let until = Instant::now() + within;
    let first = loop {
        let now = leaders().await;
        let spread = now.iter().all(|(_, nodes)| led_by_distinct_nodes(nodes));
        if spread || Instant::now() >= until {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(later).await;
    let later = leaders().await;
    (first, later, leader_moves(&stack).await)
}

async fn nats_restart(scale: Scale) -> Report {
    let mut stack = Stack::start_with(|c| {
        c.keep_dispatchers(DRILLED);
        c.each_nats(|nats| nats.partitions = scale.partitions);
    })
    .await;
    register_devices(&stack, scale.persons).await;
    let load = load("nats-restart", &stack, scale);
    tokio::time::sleep(scale.before).await;
    let start = now_ms();
    blocking(|| stack.env.nats.stop());
    tokio::time::sleep(scale.fault).await;
    blocking(|| stack.env.nats.restart());
    let end = now_ms();
    let calls = load.finish().await;
    report("nats-restart", &stack, calls, (start, end)).await
}

async fn redis_sentinel(scale: Scale) -> Report {
    let mut sentinel = blocking(RedisSentinel::start);
    let nodes = sentinel.sentinel_urls();
    let stack = Stack::start_with(|c| {
        c.keep_dispatchers(DRILLED);
        c.registry.redis.mode = RedisMode::Sentinel;
        c.registry.redis.nodes = nodes;
        c.registry.redis.master_name = SENTINEL_MASTER.into();
    })
    .await;
    register_devices(&stack, scale.persons).await;
    blocking(|| sentinel.wait_replicated());
    let load = load("redis-sentinel", &stack, scale);
    tokio::time::sleep(scale.before).await;
    let start = now_ms();
    blocking(|| sentinel.kill_primary_and_wait_for_failover());
    let end = now_ms();
    let calls = load.finish().await;
    // Registrations keep working on the promoted primary, without a restart.
    stack
        .register_ios("drill-after-failover", &format!("{:064x}", 999_999))
        .await;
    report("redis-sentinel", &stack, calls, (start, end)).await
}

async fn redis_cluster(scale: Scale) -> Report {
    let cluster = blocking(RedisCluster::start);
    let nodes = cluster.urls();
    let stack = Stack::start_with(|c| {
        c.keep_dispatchers(DRILLED);
        c.registry.redis.mode = RedisMode::Cluster;
        c.registry.redis.nodes = nodes;
    })
    .await;
    register_devices(&stack, scale.persons).await;
    for n in 0..3 {
        assert!(
            cluster.keys_on(n) > 0,
            "devices spread over every primary (node {n} holds none)"
        );
    }
    let total = scale.before + scale.fault + scale.after;
    let load = load("redis-cluster", &stack, scale);
    // During the load: tokens of extra persons move between them, across slots.
    let start = now_ms();
    let churn_until = Instant::now() + total;
    let mut moves = 0u64;
    while Instant::now() < churn_until {
        let token = format!("{:064x}", 500_000 + moves % 10);
        stack
            .register_ios(&format!("drill-mover-{}", moves % 7), &token)
            .await;
        moves += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let end = now_ms();
    let calls = load.finish().await;
    // Every moved token ends with exactly one person, across slots.
    let http = reqwest::Client::new();
    let mut holders: HashMap<String, usize> = HashMap::new();
    for mover in 0..7 {
        let url = stack
            .registry
            .url(&format!("/v1/persons/drill-mover-{mover}/devices"));
        let devices: serde_json::Value = http
            .get(url)
            .bearer_auth(crate::services::API_KEY)
            .send()
            .await
            .expect("list devices")
            .json()
            .await
            .expect("devices JSON");
        for device in devices["devices"].as_array().into_iter().flatten() {
            if let Some(token) = device["token"].as_str() {
                *holders.entry(token.to_owned()).or_default() += 1;
            }
        }
    }
    assert!(
        holders.len() == moves.min(10) as usize && holders.values().all(|n| *n == 1),
        "moved tokens and how many persons hold each: {holders:?}"
    );
    report("redis-cluster", &stack, calls, (start, end)).await
}

async fn redis_outage(scale: Scale) -> Report {
    let redis_args = [
        "--appendonly".into(),
        "yes".into(),
        "--appendfsync".into(),
        "always".into(),
    ];
    let mut stack = Stack::start_on(Env::start_with_redis_args(&redis_args), |c| {
        c.keep_dispatchers(DRILLED);
    })
    .await;
    register_devices(&stack, scale.persons).await;
    let load = load("redis-outage", &stack, scale);
    tokio::time::sleep(scale.before).await;
    let start = now_ms();
    blocking(|| stack.env.redis.stop());
    tokio::time::sleep(scale.fault).await;
    blocking(|| stack.env.redis.restart());
    let end = now_ms();
    let calls = load.finish().await;
    report("redis-outage", &stack, calls, (start, end)).await
}
