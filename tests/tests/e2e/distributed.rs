//! The distributed engines, for real, under load, with faults: a JetStream cluster losing
//! a node and then a stream leader, a NATS restart, a Sentinel failover, Redis Cluster,
//! and a 30 s Redis outage. Each drill asserts that no accepted call was lost, rang twice,
//! rang after its deadline, or was dead-lettered, and that (almost) no webhook was refused.
//! The NATS drills send like Webex (a connection per webhook, no cap on how many are
//! open: `Sender::Uncapped`); the cluster drills run on three partitions, so a node's or
//! a partition leader's death is routed around.

use std::time::Duration;

use harness::drill::{Report, Scale};

/// The cluster drills run one at a time: each starts several servers, and on a 2-core
/// machine running them side by side would measure the machine, not pushline.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run(drill: &str, scale: Scale) -> Report {
    let _turn = ONE_AT_A_TIME.lock().await;
    harness::drill::run(drill, scale).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nats_cluster_node_killed_under_load_loses_nothing() {
    let scale = Scale {
        partitions: 3,
        ..Scale::test()
    };
    run("nats-node", scale).await.assert_clean(0.01);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_an_events_partition_leader_refuses_and_loses_nothing() {
    let scale = Scale {
        partitions: 3,
        ..Scale::test()
    };
    run("nats-leader", scale).await.assert_clean(0.01);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_publishers_spread_partition_leaders_over_the_nodes() {
    // nats-server may put every partition's leader on one node (whose death then stalls
    // them all); the publishers' watch moves them apart.
    let _turn = ONE_AT_A_TIME.lock().await;
    let (leaders, later, moves) =
        harness::drill::leaders_once_spread(3, Duration::from_secs(30), Duration::from_secs(3))
            .await;
    for (stream, nodes) in &leaders {
        assert!(
            nodes.iter().all(|node| !node.is_empty()),
            "{stream}: a partition without a leader: {nodes:?}; the publishers' moves: {moves:?}"
        );
        let distinct: std::collections::HashSet<_> = nodes.iter().collect();
        assert_eq!(
            distinct.len(),
            3,
            "{stream}'s partitions are led by {nodes:?}; the publishers' moves: {moves:?}"
        );
    }
    // Once spread they stay: no leader keeps being moved.
    assert_eq!(
        later, leaders,
        "the leaders moved again after they were spread; the publishers' moves: {moves:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_two_second_nats_restart_refuses_nothing_and_rings_no_phone_twice() {
    run("nats-restart", Scale::test()).await.assert_clean(0.01);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_registry_follows_a_sentinel_failover_without_a_restart() {
    run("redis-sentinel", Scale::test()).await.assert_clean(0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registration_and_fan_out_work_on_redis_cluster() {
    run("redis-cluster", Scale::test()).await.assert_clean(0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thirty_second_redis_outage_delays_calls_with_sixty_seconds_to_ring_but_loses_none() {
    let scale = Scale {
        rate: 10,
        fault: Duration::from_secs(30),
        ring: Duration::from_secs(60),
        ..Scale::test()
    };
    // Mostly idle (Redis is down), so it runs beside the others.
    harness::drill::run("redis-outage", scale)
        .await
        .assert_clean(0.0);
}
