//! `pushline-drill`: fault drills on the distributed engines, under an open-loop load of
//! signed call webhooks, with a report per drill.
//!
//! Each drill starts its own servers on loopback (a three-node JetStream cluster, a
//! single nats-server, Redis with Sentinel, Redis Cluster or a single persistent Redis),
//! the mock APNs and FCM and the four services (in this process), registers `--persons`
//! persons with an iPhone and an Android phone each, sends `--rate` call webhooks per
//! second for `--before` seconds, injects the fault (`kill -9`), keeps the load going for
//! the `--fault` seconds the fault lasts and heals it (a restart), then `--after` seconds
//! more. Every call carries its own ring deadline (`--ring` seconds).
//!
//! Printed per drill (a Markdown table, the one in `docs/reliability.md`): webhooks sent,
//! accepted and refused (and how many of those sent during the fault were refused),
//! pushes owed and delivered, lost, duplicates (a second ring), late (after the call's
//! deadline), dead letters, recovery (fault start → first push of a call sent after it),
//! end-to-end p99 and the longest webhook answer, and of the webhooks sent 2 s or more
//! after the fault began the answers' p99 and their calls' end-to-end p99.
//!
//! Every service runs on `--partitions` partitions (1). The NATS drills send like Webex
//! (`--sender uncapped`: a request per webhook on a connection of its own, opened when
//! due, however many are open), the Redis drills over a keep-alive pool
//! (`--sender pooled`); `--sender` sets one for all.
//!
//! ```text
//! cargo build --release --bin pushline-drill
//! target/release/pushline-drill [--drill all|nats-node|nats-leader|nats-restart|redis-sentinel|redis-cluster|redis-outage]
//!     [--rate 300] [--before 10] [--fault 2] [--after 20] [--ring 60] [--persons 200]
//!     [--partitions 1] [--sender uncapped|pooled]
//! ```
//! The Redis outage lasts `--outage` seconds (default 30).

use std::time::Duration;

use harness::bench::arg;
use harness::drill::{DRILLS, Report, Scale, Sender, run};

fn drills() -> Vec<&'static str> {
    let args: Vec<String> = std::env::args().collect();
    let chosen = args
        .iter()
        .position(|a| a == "--drill")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .unwrap_or("all");
    if chosen == "all" {
        return DRILLS.to_vec();
    }
    match DRILLS.iter().find(|d| **d == chosen) {
        Some(drill) => vec![drill],
        None => {
            eprintln!(
                "no drill named {chosen}; drills: all, {}",
                DRILLS.join(", ")
            );
            std::process::exit(2);
        }
    }
}

/// `--sender`, when given.
fn sender() -> Option<Sender> {
    let args: Vec<String> = std::env::args().collect();
    let chosen = args
        .iter()
        .position(|a| a == "--sender")
        .and_then(|i| args.get(i + 1))?;
    match chosen.as_str() {
        "uncapped" => Some(Sender::Uncapped),
        "pooled" => Some(Sender::Pooled),
        other => {
            eprintln!("no sender named {other}; senders: uncapped, pooled");
            std::process::exit(2);
        }
    }
}

fn main() {
    harness::bench::check_args(
        &[
            "--drill",
            "--rate",
            "--before",
            "--fault",
            "--after",
            "--ring",
            "--persons",
            "--partitions",
            "--sender",
            "--outage",
        ],
        &[],
    );
    // Logs to stderr: stdout is the report.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let scale = Scale {
        rate: arg("--rate", 300) as u32,
        before: Duration::from_secs(arg("--before", 10)),
        fault: Duration::from_secs(arg("--fault", 2)),
        after: Duration::from_secs(arg("--after", 20)),
        ring: Duration::from_secs(arg("--ring", 60)),
        persons: arg("--persons", 200) as usize,
        partitions: arg("--partitions", 1) as usize,
        sender: sender(),
    };
    let outage = Duration::from_secs(arg("--outage", 30));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut rows = Vec::new();
    for drill in drills() {
        let scale = if drill == "redis-outage" {
            Scale {
                fault: outage,
                ..scale
            }
        } else {
            scale
        };
        eprintln!(
            "drill {drill}: {} webhooks/s ({:?} sender), {} partitions, {:?} + fault {:?} + {:?}",
            scale.rate,
            scale.sender.unwrap_or(Sender::default_for(drill)),
            scale.partitions,
            scale.before,
            scale.fault,
            scale.after
        );
        let report = runtime.block_on(run(drill, scale));
        eprintln!("{}", report.row());
        rows.push(report.row());
    }
    println!("{}", Report::header());
    for row in rows {
        println!("{row}");
    }
}
