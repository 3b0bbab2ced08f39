//! `pushline-bench-stream`: what one JetStream partition (one stream, one Raft group)
//! stores per second on this machine, and what several partitions store together, for
//! the capacity model in `docs/scaling.md`.
//!
//! For each setup — one nats-server with an R1 stream, and a three-node cluster (on this
//! machine, loopback) with R3 streams — it creates `--partitions` work-queue streams
//! (file storage, as pushline's) and publishes `--messages` messages of `--size` bytes,
//! each with its own `Nats-Msg-Id` as pushline's events carry, spread over the
//! partitions, keeping at most `--in-flight` acks outstanding (pipelined, as ingest's
//! concurrent requests are); the rate is acked messages per second. Every setup is run
//! with one partition and with `--partitions`.
//!
//! ```text
//! cargo build --release --bin pushline-bench-stream
//! target/release/pushline-bench-stream [--messages 50000] [--size 700] [--in-flight 256] [--partitions 3]
//! ```

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use harness::bench::arg;
use harness::clusters::NatsCluster;
use harness::servers::NatsServer;

/// Publishes `messages` over `partitions` R`replicas` streams at `url`; acked messages/s.
async fn rate(url: &str, replicas: usize, partitions: usize, messages: usize) -> f64 {
    let size = arg("--size", 700) as usize;
    let in_flight = arg("--in-flight", 256).max(1) as usize;
    let servers = pipeline::nats::seed_servers(url).expect("seed servers");
    let client = async_nats::connect(servers).await.expect("connect");
    let js = jetstream::new(client);
    let run = format!("{:08x}", rand::random::<u32>());
    for p in 0..partitions {
        let config = stream::Config {
            name: format!("BENCH_{run}_{p}"),
            subjects: vec![format!("bench.{run}.{p}")],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        // A cluster may still be electing its meta leader: try for a while.
        let mut tries = 0;
        while let Err(error) = js.get_or_create_stream(config.clone()).await {
            tries += 1;
            assert!(tries < 100, "cannot create the stream: {error}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let mut pending: FuturesUnordered<<PublishAckFuture as IntoFuture>::IntoFuture> =
        FuturesUnordered::new();
    let mut acked = 0;
    let started = Instant::now();
    for n in 0..messages {
        while pending.len() >= in_flight {
            if let Some(ack) = pending.next().await {
                ack.expect("ack");
                acked += 1;
            }
        }
        let message = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .message_id(format!("{run}-{n}"));
        let subject = format!("bench.{run}.{}", n % partitions);
        let ack: PublishAckFuture = js.send_publish(subject, message).await.expect("publish");
        pending.push(ack.into_future());
    }
    while let Some(ack) = pending.next().await {
        ack.expect("ack");
        acked += 1;
    }
    acked as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    harness::bench::check_args(
        &["--messages", "--partitions", "--in-flight", "--size"],
        &[],
    );
    let messages = arg("--messages", 50_000) as usize;
    let partitions = arg("--partitions", 3).max(1) as usize;
    println!("| setup | partitions | messages | acked/s |\n|---|---|---|---|");
    let single = NatsServer::start();
    for p in [1, partitions] {
        let r = rate(&single.url(), 1, p, messages).await;
        println!("| one nats-server, R1 | {p} | {messages} | {r:.0} |");
    }
    drop(single);
    let cluster = NatsCluster::start().await;
    cluster.wait_jetstream().await;
    for p in [1, partitions] {
        let r = rate(&cluster.url(), 3, p, messages).await;
        println!("| three nodes on this machine, R3 | {p} | {messages} | {r:.0} |");
    }
}
