//! Stream set-up against a real nats-server: many replicas at once, and definition changes.

use std::time::Duration;

use harness::servers::NatsServer;
use pipeline::config::NatsConfig;
use pipeline::topology::StreamKind;

#[tokio::test]
async fn many_replicas_setting_up_streams_at_once_leave_the_server_running() {
    // nats-server 2.9 crashes when a stream update races with its creation; every
    // replica of every service runs this at start.
    let nats = NatsServer::start();
    let config = NatsConfig {
        url: nats.url(),
        ..NatsConfig::default()
    };
    let topology = providers::topology(&config);
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
    for kind in topology.streams() {
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
    providers::topology(&config)
        .ensure(&js)
        .await
        .expect("create");
    providers::topology(&config)
        .ensure(&js)
        .await
        .expect("unchanged");
    config.duplicate_window_secs = 300;
    providers::topology(&config)
        .ensure(&js)
        .await
        .expect("update");
    let stream = js
        .get_stream(providers::topology(&config).stream_name(StreamKind::Events))
        .await
        .expect("stream");
    assert_eq!(
        stream.cached_info().config.duplicate_window,
        Duration::from_secs(300)
    );
}

#[tokio::test]
async fn readiness_asks_the_server_for_every_stream_and_consumer() {
    let nats = NatsServer::start();
    let config = NatsConfig {
        url: nats.url(),
        ..NatsConfig::default()
    };
    let topology = providers::topology(&config);
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    let kind = pipeline::topology::ConsumerKind::Dispatch("fcm");
    let (streams, consumers) = ([StreamKind::Push("fcm")], [kind]);
    let check = || pipeline::nats::check_topology(&client, &topology, &streams, &consumers);
    let error = check().await.expect_err("no streams yet");
    assert!(error.contains("PUSH_FCM"), "{error}");
    topology.ensure(&js).await.expect("streams");
    let error = check().await.expect_err("no consumer yet");
    assert!(error.contains("dispatch-fcm"), "{error}");
    topology
        .consumer(&js, kind, &pipeline::config::WorkerConfig::default())
        .await
        .expect("consumer");
    check().await.expect("streams and consumer exist");
}

#[tokio::test]
async fn a_deleted_consumer_is_recreated_by_its_worker() {
    let env = harness::services::Env::start();
    let providers = harness::services::Providers::start().await;
    let fcm = harness::services::start_provider(&providers.dispatcher_config(&env, "fcm")).await;
    fcm.wait_ready().await;
    let topology = env.topology();
    let js = env.jetstream().await;
    js.get_stream(topology.stream_name(StreamKind::Push("fcm")))
        .await
        .expect("PUSH_FCM")
        .delete_consumer("dispatch-fcm")
        .await
        .expect("delete the consumer");
    let readyz = || async {
        reqwest::get(fcm.admin_url("/readyz"))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    harness::wait::until_true(
        "the worker to recreate its consumer and readiness to pass",
        Duration::from_secs(20),
        || async { readyz().await == 200 },
    )
    .await;
    js.get_stream(topology.stream_name(StreamKind::Push("fcm")))
        .await
        .expect("PUSH_FCM")
        .consumer_info("dispatch-fcm")
        .await
        .expect("the consumer exists again");
}
