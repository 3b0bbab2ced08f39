//! Gathered acks against a real nats-server: none is lost when the process stops right
//! after a flush, including those made directly because the queue was full.

use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use harness::servers::NatsServer;
use pipeline::coalesce::{CAPACITY, Coalescer};

const STREAM: &str = "COALESCE";

#[test]
fn every_gathered_ack_reaches_the_server_by_the_flush_before_a_stop() {
    let nats = NatsServer::start();
    let url = nats.url();
    // More messages than the queue holds, so some acks are made directly.
    let count = CAPACITY + 800;

    // The "process": its runtime is shut down right after the flush returns, killing
    // every task, as a process exit would.
    let process = tokio::runtime::Runtime::new().expect("runtime");
    process.block_on(async {
        let client = async_nats::connect(&url).await.expect("connect");
        let js = jetstream::new(client.clone());
        let stream = js
            .create_stream(stream::Config {
                name: STREAM.into(),
                subjects: vec!["coalesce.>".into()],
                ..Default::default()
            })
            .await
            .expect("stream");
        for n in 0..count {
            js.send_publish(
                "coalesce.m",
                PublishMessage::build().payload(n.to_string().into()),
            )
            .await
            .expect("publish");
        }
        js.publish("coalesce.m", "last".into())
            .await
            .expect("publish")
            .await
            .expect("stored");
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some("acks".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(60),
                max_ack_pending: -1,
                ..Default::default()
            })
            .await
            .expect("consumer");
        let acks = Coalescer::start(client.clone());
        let mut messages = consumer
            .fetch()
            .max_messages(count + 1)
            .messages()
            .await
            .expect("fetch");
        let mut acked = 0;
        while acked < count + 1 {
            let message = messages.next().await.expect("a message").expect("message");
            acks.ack(message).await.expect("ack");
            acked += 1;
        }
        acks.flush().await;
    });
    process.shutdown_background();

    // From another connection: every ack arrived, long before ack_wait could redeliver.
    let check = tokio::runtime::Runtime::new().expect("runtime");
    check.block_on(async {
        let js = jetstream::new(async_nats::connect(&url).await.expect("connect"));
        let mut consumer: consumer::PullConsumer = js
            .get_stream(STREAM)
            .await
            .expect("stream")
            .get_consumer("acks")
            .await
            .expect("consumer");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let info = consumer.info().await.expect("consumer info");
            if info.num_ack_pending == 0 && info.ack_floor.stream_sequence == count as u64 + 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "acks lost: {} pending, ack floor at {} of {}",
                info.num_ack_pending,
                info.ack_floor.stream_sequence,
                count + 1
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}
