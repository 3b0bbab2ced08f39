//! The distributed engines enterprises run, for real, on loopback: a three-node
//! JetStream cluster, a three-primary Redis Cluster, and Redis with Sentinel (a primary,
//! a replica and three sentinels). Every process has its own port and directory; all are
//! killed when the value is dropped. Nodes can be killed (`SIGKILL`) and restarted.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::servers::{
    free_port, locate, nats_probe, redis_probe, require, respawn_on, spawn_nats_with, spawn_redis,
    unique_name, wait_listening,
};

/// One node of a [`NatsCluster`].
struct NatsNode {
    child: Option<Child>,
    port: u16,
    name: String,
    store: PathBuf,
    args: Vec<String>,
}

impl NatsNode {
    fn spawn(&mut self) {
        let (port, store, name, args) = (self.port, &self.store, &self.name, &self.args);
        self.child = Some(respawn_on(port, &nats_probe(name), name, || {
            spawn_nats_with(port, store, name, args)
        }));
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A three-node JetStream cluster (streams with `replicas = 3` live on every node).
pub struct NatsCluster {
    nodes: Vec<NatsNode>,
    _dir: TempDir,
}

impl NatsCluster {
    /// Starts three nodes routed to each other and waits until JetStream answers.
    pub async fn start() -> Self {
        require("nats-server", "nats-server");
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster_name = unique_name("cluster");
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for (n, cluster_port) in cluster_ports.iter().enumerate() {
            let store = dir.path().join(format!("n{n}"));
            std::fs::create_dir_all(&store).expect("node store");
            let mut node = NatsNode {
                child: None,
                port: free_port(),
                name: unique_name(&format!("nats{n}")),
                store,
                args: vec![
                    "--cluster_name".into(),
                    cluster_name.clone(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{cluster_port}"),
                    "--routes".into(),
                    routes.clone(),
                ],
            };
            node.spawn();
            nodes.push(node);
        }
        let cluster = NatsCluster { nodes, _dir: dir };
        cluster.wait_jetstream().await;
        cluster
    }

    /// Every node's URL, comma-separated (the way `nats.url` takes a seed list).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// `kill -9` of node `n` (its store stays for [`NatsCluster::restart`]).
    pub fn kill(&mut self, n: usize) {
        self.nodes[n].kill();
    }

    /// Starts node `n` again with its store.
    pub fn restart(&mut self, n: usize) {
        self.nodes[n].kill();
        self.nodes[n].spawn();
    }

    /// Waits until the cluster has a JetStream meta leader (account info answers without
    /// an error).
    pub async fn wait_jetstream(&self) {
        let url = self.url();
        crate::wait::until_true(
            "the JetStream cluster to answer",
            Duration::from_secs(30),
            || {
                let url = url.clone();
                async move {
                    let Ok(servers) = pipeline::nats::seed_servers(&url) else {
                        return false;
                    };
                    let Ok(client) = async_nats::connect(servers).await else {
                        return false;
                    };
                    // Asked raw: async-nats cannot decode nats-server 2.9's clustered answer.
                    let answer = tokio::time::timeout(
                        Duration::from_secs(2),
                        client.request("$JS.API.INFO", bytes::Bytes::new()),
                    )
                    .await;
                    let Ok(Ok(message)) = answer else {
                        return false;
                    };
                    serde_json::from_slice::<serde_json::Value>(&message.payload)
                        .is_ok_and(|v| v.get("error").is_none())
                }
            },
        )
        .await;
    }

    /// The server name of the leader of `stream`.
    pub async fn stream_leader(&self, stream: &str) -> Option<String> {
        let servers = pipeline::nats::seed_servers(&self.url()).ok()?;
        let client = async_nats::connect(servers).await.ok()?;
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(stream).await.ok()?;
        let info = stream.info().await.ok()?;
        info.cluster.as_ref().and_then(|c| c.leader.clone())
    }

    /// A JetStream context on the cluster, on a connection of its own.
    pub async fn jetstream(&self) -> Option<async_nats::jetstream::Context> {
        let servers = pipeline::nats::seed_servers(&self.url()).ok()?;
        let client = async_nats::connect(servers).await.ok()?;
        Some(async_nats::jetstream::new(client))
    }
}

/// The server names leading `stream` and its consumer `durable`, asked on `js` (`None`
/// where none answered).
pub async fn leaders_on(
    js: &async_nats::jetstream::Context,
    stream: &str,
    durable: &str,
) -> (Option<String>, Option<String>) {
    let Ok(handle) = js.get_stream_no_info(stream).await else {
        return (None, None);
    };
    let leader = |cluster: Option<&async_nats::jetstream::stream::ClusterInfo>| {
        cluster.and_then(|c| c.leader.clone())
    };
    let stream_leader = match handle.get_info().await {
        Ok(info) => leader(info.cluster.as_ref()),
        Err(_) => None,
    };
    let consumer_leader = match handle.consumer_info(durable).await {
        Ok(info) => leader(info.cluster.as_ref()),
        Err(_) => None,
    };
    (stream_leader, consumer_leader)
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

/// Sends one command to a Redis node over a plain connection.
fn redis_command(port: u16, args: &[&str]) -> redis::RedisResult<redis::Value> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut connection = client.get_connection_with_timeout(Duration::from_millis(500))?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(&mut connection)
}

fn redis_text(port: u16, args: &[&str]) -> Option<String> {
    match redis_command(port, args).ok()? {
        redis::Value::BulkString(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        redis::Value::VerbatimString { text, .. } => Some(text),
        redis::Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Redis node the harness started itself (cluster or Sentinel member).
struct RedisNode {
    child: Option<Child>,
    port: u16,
    name: String,
    dir: PathBuf,
    args: Vec<String>,
    sentinel: bool,
}

impl RedisNode {
    fn spawn(&mut self) {
        let child = if self.sentinel {
            Command::new(locate("redis-server"))
                .arg(self.dir.join("sentinel.conf"))
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis sentinel")
        } else {
            spawn_redis(self.port, &self.dir, &self.name, &self.args)
        };
        let mut child = child;
        let probe = redis_probe(if self.sentinel { "" } else { &self.name });
        assert!(
            self.sentinel || wait_listening(&mut child, self.port, &probe),
            "redis-server {} did not start on port {}",
            self.name,
            self.port
        );
        self.child = Some(child);
        if self.sentinel {
            let port = self.port;
            wait_for("a sentinel to answer", Duration::from_secs(10), || {
                redis_command(port, &["PING"]).is_ok()
            });
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn redis_node(dir: &std::path::Path, label: &str, args: Vec<String>) -> RedisNode {
    let name = unique_name(label);
    let dir = dir.join(&name);
    std::fs::create_dir_all(&dir).expect("node dir");
    RedisNode {
        child: None,
        port: free_port(),
        name,
        dir,
        args,
        sentinel: false,
    }
}

/// Redis Cluster with three primaries (no replicas), slots spread evenly.
pub struct RedisCluster {
    nodes: Vec<RedisNode>,
    _dir: TempDir,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers, joins them with `redis-cli --cluster create`
    /// and waits until every node reports `cluster_state:ok`.
    pub fn start() -> Self {
        require("redis-server", "redis-server");
        require("redis-cli", "redis-tools");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nodes: Vec<RedisNode> = (0..3)
            .map(|n| {
                redis_node(
                    dir.path(),
                    &format!("rcluster{n}"),
                    vec![
                        "--cluster-enabled".into(),
                        "yes".into(),
                        "--cluster-config-file".into(),
                        "nodes.conf".into(),
                        "--cluster-node-timeout".into(),
                        "2000".into(),
                        // The bus port defaults to the client port + 10000, which no one
                        // reserved: another test's server or an outgoing connection may
                        // hold it, and the node would exit at start. Reserve it too.
                        "--cluster-port".into(),
                        free_port().to_string(),
                    ],
                )
            })
            .collect();
        for node in &mut nodes {
            node.spawn();
        }
        let mut create = Command::new(locate("redis-cli"));
        create.args(["--cluster", "create"]);
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let output = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        wait_for(
            "Redis Cluster to serve every slot",
            Duration::from_secs(20),
            || {
                ports.iter().all(|port| {
                    redis_text(*port, &["CLUSTER", "INFO"])
                        .is_some_and(|info| info.contains("cluster_state:ok"))
                })
            },
        );
        RedisCluster { nodes, _dir: dir }
    }

    /// Every node's URL (the registry's `redis.nodes`).
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// How many keys node `n` holds.
    pub fn keys_on(&self, n: usize) -> i64 {
        match redis_command(self.nodes[n].port, &["DBSIZE"]) {
            Ok(redis::Value::Int(count)) => count,
            other => panic!("DBSIZE on cluster node {n}: {other:?}"),
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

/// The Sentinel master name [`RedisSentinel`] monitors.
pub const SENTINEL_MASTER: &str = "pushline";

/// Redis with Sentinel: a primary, one replica, three sentinels (quorum 2), failing over
/// about a second after the primary stops answering.
pub struct RedisSentinel {
    primary: RedisNode,
    replica: RedisNode,
    sentinels: Vec<RedisNode>,
    _dir: TempDir,
}

impl RedisSentinel {
    /// Starts everything and waits until every sentinel sees the replica and the other
    /// sentinels.
    pub fn start() -> Self {
        require("redis-server", "redis-server");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut primary = redis_node(dir.path(), "rprimary", Vec::new());
        primary.spawn();
        let mut replica = redis_node(
            dir.path(),
            "rreplica",
            vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.port.to_string(),
            ],
        );
        replica.spawn();
        let mut sentinels = Vec::new();
        for n in 0..3 {
            let mut sentinel = redis_node(dir.path(), &format!("sentinel{n}"), Vec::new());
            sentinel.sentinel = true;
            let conf = format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                 sentinel failover-timeout {SENTINEL_MASTER} 5000\n\
                 sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                port = sentinel.port,
                dir = sentinel.dir.display(),
                primary = primary.port,
            );
            std::fs::write(sentinel.dir.join("sentinel.conf"), conf).expect("sentinel.conf");
            sentinel.spawn();
            sentinels.push(sentinel);
        }
        let ports: Vec<u16> = sentinels.iter().map(|s| s.port).collect();
        wait_for(
            "every sentinel to see the replica and the other sentinels",
            Duration::from_secs(30),
            || {
                ports.iter().all(|port| {
                    let count = |what: &str| match redis_command(
                        *port,
                        &["SENTINEL", what, SENTINEL_MASTER],
                    ) {
                        Ok(redis::Value::Array(items)) => items.len(),
                        _ => 0,
                    };
                    count("replicas") == 1 && count("sentinels") == 2
                })
            },
        );
        let replica_port = replica.port;
        wait_for("the replica to be in sync", Duration::from_secs(20), || {
            redis_text(replica_port, &["INFO", "replication"])
                .is_some_and(|info| info.contains("master_link_status:up"))
        });
        RedisSentinel {
            primary,
            replica,
            sentinels,
            _dir: dir,
        }
    }

    /// The sentinels' URLs (the registry's `redis.nodes`).
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port))
            .collect()
    }

    /// The port the sentinels currently name as primary.
    pub fn primary_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            match redis_command(
                s.port,
                &["SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER],
            ) {
                Ok(redis::Value::Array(items)) => match items.get(1) {
                    Some(redis::Value::BulkString(port)) => {
                        String::from_utf8_lossy(port).parse().ok()
                    }
                    _ => None,
                },
                _ => None,
            }
        })
    }

    /// Waits until the replica has every write the primary acknowledged (`WAIT 1`), so a
    /// failover loses none of the set-up.
    pub fn wait_replicated(&self) {
        match redis_command(self.primary.port, &["WAIT", "1", "5000"]) {
            Ok(redis::Value::Int(1)) => {}
            other => panic!("the replica did not acknowledge the writes: {other:?}"),
        }
    }

    /// `kill -9` of the primary, then waits until the sentinels have promoted the replica.
    pub fn kill_primary_and_wait_for_failover(&mut self) {
        let old = self.primary.port;
        self.primary.kill();
        let replica = self.replica.port;
        wait_for(
            "Sentinel to promote the replica",
            Duration::from_secs(30),
            || {
                self.primary_port() == Some(replica)
                    && matches!(
                        redis_command(replica, &["ROLE"]),
                        Ok(redis::Value::Array(ref items))
                            if matches!(items.first(), Some(redis::Value::BulkString(role)) if role == b"master")
                    )
            },
        );
        assert_ne!(old, replica);
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        for node in self
            .sentinels
            .iter_mut()
            .chain([&mut self.primary, &mut self.replica])
        {
            node.kill();
        }
    }
}
