//! `pushline-bench-inbox`: what the server-side inbox costs per message, on a real
//! `redis-server`, compared in the same run with the least any store of the same bytes
//! costs: one `HSET` of the same entry under the same person's key (the baseline).
//!
//! For each: Redis's memory per message (`used_memory` before and after, over the
//! messages kept), Redis's CPU per message (`used_cpu_user` + `used_cpu_sys`), the
//! client's CPU per message (this process) and the latency of one call (p50, p99), with
//! `--concurrency` calls in flight. Then what reading costs: a page of 20, the unread
//! count, marking one message read. Loopback only, bounded by `--messages`. Build with
//! `--release`.
//!
//! ```text
//! cargo run --release -p pushline-tests --bin pushline-bench-inbox -- [--messages 20000] [--persons 1000] [--concurrency 32] [--json FILE]
//! ```

use std::sync::Arc;
use std::time::Instant;

use harness::bench::{arg, json_path, percentile, stat_cpu_seconds};
use harness::servers::RedisServer;
use pipeline::contract::{Class, Event, VERSION, now_ms};
use registry::inbox::{Inbox, Op, PageQuery, Retention, Select};
use serde_json::value::RawValue;

/// A prompt as producers send them: a title, a body, two answers.
const PART: &str = r#"{"payload":{"title":"Standup in 5 minutes","body":"Room 4B or join from the app. Agenda: release status, on-call handover, open incidents.","link":"https://example.com/meetings/42"},"category":"prompt","actions":[{"id":"join","title":"Join"},{"id":"later","title":"Remind me later"}]}"#;

/// What one phase cost.
#[derive(Debug, serde::Serialize)]
struct Phase {
    name: &'static str,
    calls: usize,
    redis_bytes_per_message: f64,
    redis_cpu_us_per_call: f64,
    client_cpu_us_per_call: f64,
    p50_us: f64,
    p99_us: f64,
    calls_per_sec: f64,
}

async fn info(redis: &mut redis::aio::MultiplexedConnection, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query_async(redis)
        .await
        .expect("INFO")
}

fn field(info: &str, name: &str) -> f64 {
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

async fn redis_cpu(redis: &mut redis::aio::MultiplexedConnection) -> f64 {
    let cpu = info(redis, "cpu").await;
    field(&cpu, "used_cpu_user") + field(&cpu, "used_cpu_sys")
}

async fn redis_memory(redis: &mut redis::aio::MultiplexedConnection) -> f64 {
    field(&info(redis, "memory").await, "used_memory")
}

fn self_cpu() -> f64 {
    stat_cpu_seconds(std::path::Path::new("/proc/self/stat")).unwrap_or(f64::NAN)
}

/// Runs `calls` calls of `call(i)`, `concurrency` at a time, measuring what they cost.
async fn phase<F, Fut>(
    name: &'static str,
    probe: &mut redis::aio::MultiplexedConnection,
    calls: usize,
    concurrency: usize,
    stored: usize,
    call: F,
) -> Phase
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (memory, cpu, client) = (
        redis_memory(probe).await,
        redis_cpu(probe).await,
        self_cpu(),
    );
    let call = Arc::new(call);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (call, next) = (call.clone(), next.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= calls {
                    return latencies;
                }
                let began = Instant::now();
                call(i).await;
                latencies.push(began.elapsed().as_secs_f64() * 1e6);
            }
        });
    }
    let mut latencies = Vec::with_capacity(calls);
    while let Some(done) = workers.join_next().await {
        latencies.extend(done.expect("a worker"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let per = |total: f64| total * 1e6 / calls as f64;
    Phase {
        name,
        calls,
        redis_bytes_per_message: if stored > 0 {
            (redis_memory(probe).await - memory) / stored as f64
        } else {
            0.0
        },
        redis_cpu_us_per_call: per(redis_cpu(probe).await - cpu),
        client_cpu_us_per_call: per(self_cpu() - client),
        p50_us: percentile(&latencies, 50.0),
        p99_us: percentile(&latencies, 99.0),
        calls_per_sec: calls as f64 / elapsed,
    }
}

fn event(i: usize) -> Event {
    let parts = [(
        inapp::spec::NAME.to_owned(),
        RawValue::from_string(PART.into()).expect("part"),
    )]
    .into_iter()
    .collect();
    Event {
        v: VERSION,
        id: format!("{:032x}", i + 1),
        source: "api".into(),
        resource: "bench".into(),
        event: "notify".into(),
        person_id: String::new(),
        class: Class::Alert,
        received_at_ms: now_ms(),
        deadline_ms: now_ms() + 60_000,
        parts,
        trace_id: None,
        encrypt: false,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    harness::bench::check_args(&["--messages", "--persons", "--concurrency", "--json"], &[]);
    let messages = arg("--messages", 20_000) as usize;
    let persons = (arg("--persons", 1_000) as usize).max(1);
    let concurrency = (arg("--concurrency", 32) as usize).max(1);
    let redis_server = RedisServer::start();
    let config = registry::config::RedisConfig {
        url: redis_server.url(),
        ..Default::default()
    };
    let connection = registry::connection::connect(&config)?;
    let inbox = Inbox::new(connection.clone(), "bench:");
    let mut probe = redis::Client::open(redis_server.url())?
        .get_multiplexed_async_connection()
        .await?;
    let entry = registry::inbox::message_of(&event(0), &[]).expect("an entry");
    let person = move |i: usize| format!("person-{}", i % persons);
    let retention = Retention {
        max_age_ms: 86_400_000,
        max_messages: (messages / persons + 1) as u64,
    };
    println!(
        "pushline-bench-inbox: {messages} messages to {persons} persons ({} each), entry {} bytes, {concurrency} calls in flight",
        messages / persons,
        entry.len()
    );

    // The baseline: the same bytes, one HSET per message under the person's key.
    let baseline = {
        let (entry, connection) = (entry.clone(), connection.clone());
        phase(
            "baseline HSET",
            &mut probe,
            messages,
            concurrency,
            messages,
            move |i| {
                let (entry, mut redis) = (entry.clone(), connection.clone());
                async move {
                    redis::cmd("HSET")
                        .arg(format!("base:{{{}}}", person(i)))
                        .arg(format!("{:032x}", i + 1))
                        .arg(entry)
                        .query_async::<()>(&mut redis)
                        .await
                        .expect("HSET");
                }
            },
        )
        .await
    };
    let keep = {
        let (entry, inbox) = (entry.clone(), inbox.clone());
        phase(
            "inbox keep",
            &mut probe,
            messages,
            concurrency,
            messages,
            move |i| {
                let (entry, inbox) = (entry.clone(), inbox.clone());
                async move {
                    let kept = inbox
                        .keep(
                            &person(i),
                            "com.example.bench",
                            &format!("{:032x}", i + 1),
                            &entry,
                            now_ms(),
                            retention,
                        )
                        .await
                        .expect("keep");
                    assert!(kept.new);
                }
            },
        )
        .await
    };
    let reads = messages.min(20_000);
    let list = {
        let inbox = inbox.clone();
        let query = PageQuery::parse(Some(20), None, false).map_err(anyhow::Error::msg)?;
        phase("page of 20", &mut probe, reads, concurrency, 0, move |i| {
            let (inbox, query) = (inbox.clone(), query.clone());
            async move {
                let page = inbox
                    .list(&person(i), "com.example.bench", &query, now_ms())
                    .await
                    .expect("list");
                assert!(!page.messages.is_empty());
            }
        })
        .await
    };
    let count = {
        let inbox = inbox.clone();
        phase(
            "unread count",
            &mut probe,
            reads,
            concurrency,
            0,
            move |i| {
                let inbox = inbox.clone();
                async move {
                    inbox
                        .unread(&person(i), "com.example.bench", now_ms())
                        .await
                        .expect("count");
                }
            },
        )
        .await
    };
    let read = {
        let inbox = inbox.clone();
        phase(
            "mark one read",
            &mut probe,
            messages,
            concurrency,
            0,
            move |i| {
                let inbox = inbox.clone();
                async move {
                    let select = Select::Ids(vec![format!("{:032x}", i + 1)]);
                    inbox
                        .change(&person(i), "com.example.bench", Op::Read, &select, now_ms())
                        .await
                        .expect("read");
                }
            },
        )
        .await
    };

    println!(
        "\n{:<16} {:>8} {:>14} {:>14} {:>14} {:>9} {:>9} {:>10}",
        "phase",
        "calls",
        "Redis B/msg",
        "Redis CPU µs",
        "client CPU µs",
        "p50 µs",
        "p99 µs",
        "calls/s"
    );
    let phases = [&baseline, &keep, &list, &count, &read];
    for p in phases {
        println!(
            "{:<16} {:>8} {:>14.0} {:>14.1} {:>14.1} {:>9.0} {:>9.0} {:>10.0}",
            p.name,
            p.calls,
            p.redis_bytes_per_message,
            p.redis_cpu_us_per_call,
            p.client_cpu_us_per_call,
            p.p50_us,
            p.p99_us,
            p.calls_per_sec
        );
    }
    println!(
        "\ninbox keep / baseline: memory {:.2}×, Redis CPU {:.2}×, client CPU {:.2}×, p50 {:.2}×",
        keep.redis_bytes_per_message / baseline.redis_bytes_per_message,
        keep.redis_cpu_us_per_call / baseline.redis_cpu_us_per_call,
        keep.client_cpu_us_per_call / baseline.client_cpu_us_per_call,
        keep.p50_us / baseline.p50_us
    );
    if let Some(path) = json_path() {
        std::fs::write(&path, serde_json::to_string_pretty(&phases)?)?;
    }
    Ok(())
}
