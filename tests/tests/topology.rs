//! Stream set-up against a real nats-server: many replicas at once, and definition changes.

use std::time::Duration;

use harness::servers::NatsServer;
use pipeline::config::NatsConfig;
use pipeline::topology::{StreamKind, Topology};

#[tokio::test]
async fn many_replicas_setting_up_streams_at_once_leave_the_server_running() {
    // nats-server 2.9 crashes when a stream update races with its creation; every
    // replica of every service runs this at start.
    let nats = NatsServer::start();
    let config = NatsConfig {
        url: nats.url(),
        ..NatsConfig::default()
    };
    let topology = Topology::new(&config);
    let mut replicas = Vec::new();
    for _ in 0..16 {
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let topology = topology.clone();
        // What every service does at start: ensure, retrying until it succeeds.
        replicas.push(tokio::spawn(async move {
            let never = pipeline::CancellationToken::new();
            tokio::time::timeout(
                Duration::from_secs(20),
                pipeline::topology::ensure_until_ready(&js, &topology, &never),
            )
            .await
        }));
    }
    for replica in replicas {
        assert_eq!(
            replica.await.expect("task"),
            Ok(true),
            "a replica could not set up the streams"
        );
    }
    let js = async_nats::jetstream::new(
        async_nats::connect(nats.url())
            .await
            .expect("server still up"),
    );
    for kind in StreamKind::ALL {
        js.get_stream(topology.stream_name(kind))
            .await
            .expect("stream exists");
    }
}

#[tokio::test]
async fn a_changed_definition_is_applied_and_an_unchanged_one_left_alone() {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let mut config = NatsConfig {
        url: nats.url(),
        ..NatsConfig::default()
    };
    Topology::new(&config).ensure(&js).await.expect("create");
    Topology::new(&config).ensure(&js).await.expect("unchanged");
    config.duplicate_window_secs = 300;
    Topology::new(&config).ensure(&js).await.expect("update");
    let stream = js
        .get_stream(Topology::new(&config).stream_name(StreamKind::Events))
        .await
        .expect("stream");
    assert_eq!(
        stream.cached_info().config.duplicate_window,
        Duration::from_secs(300)
    );
}
