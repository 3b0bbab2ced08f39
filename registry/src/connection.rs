//! Connections to Redis in the three ways operators run it, chosen by `redis.mode`:
//!
//! | mode | what pushline does |
//! |---|---|
//! | `single` | one server (`redis.url`), one multiplexed connection that reconnects by itself |
//! | `sentinel` | asks the sentinels (`redis.nodes`) for the primary of `redis.master_name`, checks its role, and follows a failover without a restart |
//! | `cluster` | a cluster-aware client seeded with `redis.nodes`: commands go to the slot's primary, `MOVED`/`ASK` are followed, slots are refreshed when the cluster changes |
//!
//! Following a Sentinel failover: when a command fails in a way a failover explains (the
//! connection is refused, dropped or timed out, or the server answers `READONLY`
//! because it was demoted), the sentinels are asked again (at most every 100 ms). If
//! they name a new primary, the connection moves there and the command is sent once
//! more; otherwise the error is returned and the caller retries as it would for any
//! Redis error (the API answers 503, fan-out retries until the event's deadline). Every
//! script the store sends is idempotent, so a command sent twice is harmless.
//!
//! Connections are made lazily: the registry starts while Redis is still down.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use crate::config::{RedisConfig, RedisMode};

/// A connection to Redis in any mode; cheap to clone (clones share the connection).
#[derive(Clone)]
pub enum Connection {
    /// One server.
    Single(ConnectionManager),
    /// The primary named by Sentinel, followed across failovers.
    Sentinel(Arc<SentinelPrimary>),
    /// Redis Cluster.
    Cluster(Arc<LazyCluster>),
}

/// Opens a connection as configured. Fails only on settings that cannot work (a URL
/// that does not parse); an unreachable server is not an error here.
pub fn connect(config: &RedisConfig) -> RedisResult<Connection> {
    let timeout = Duration::from_millis(config.response_timeout_ms);
    let manager_config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(timeout))
        .set_connection_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    Ok(match config.mode {
        RedisMode::Single => {
            let client = redis::Client::open(config.url.as_str())?;
            Connection::Single(ConnectionManager::new_lazy_with_config(
                client,
                manager_config,
            )?)
        }
        RedisMode::Sentinel => {
            let primary = config.url.as_str().into_connection_info()?;
            let node = SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(primary.redis_settings().clone());
            let node = if config.url.starts_with("rediss://") {
                node.set_tls_mode(redis::TlsMode::Secure)
            } else {
                node
            };
            let client = SentinelClient::build(
                config.nodes.clone(),
                config.master_name.clone(),
                Some(node),
                SentinelServerType::Master,
            )?;
            Connection::Sentinel(Arc::new(SentinelPrimary {
                sentinel: tokio::sync::Mutex::new((client, None)),
                current: RwLock::new(None),
                manager_config,
            }))
        }
        RedisMode::Cluster => {
            let client = redis::cluster::ClusterClient::builder(config.nodes.clone())
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(2)
                .build()?;
            Connection::Cluster(Arc::new(LazyCluster {
                client,
                connection: tokio::sync::OnceCell::new(),
            }))
        }
    })
}

impl Connection {
    /// Readiness: the store can serve. A single server or Sentinel's primary answers
    /// `PING`; a cluster reports `cluster_state:ok` (every slot served).
    pub async fn check(&self) -> Result<(), String> {
        let mut connection = self.clone();
        match self {
            Connection::Cluster(_) => {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| e.to_string())?;
                if info.lines().any(|l| l.trim() == "cluster_state:ok") {
                    Ok(())
                } else {
                    Err("Redis Cluster is not serving every slot (cluster_state is not ok)".into())
                }
            }
            _ => redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(manager) => manager.req_packed_command(cmd),
            Connection::Sentinel(primary) => Box::pin(primary.command(cmd)),
            Connection::Cluster(cluster) => Box::pin(cluster.command(cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(manager) => manager.req_packed_commands(cmd, offset, count),
            Connection::Sentinel(primary) => Box::pin(primary.pipeline(cmd, offset, count)),
            Connection::Cluster(cluster) => Box::pin(cluster.pipeline(cmd, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(manager) => manager.get_db(),
            Connection::Sentinel(_) | Connection::Cluster(_) => 0,
        }
    }
}

/// A failover explains this error: the primary is gone, unreachable, or was demoted.
pub fn failover_explains(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || error.is_timeout()
        || error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

/// The primary Sentinel names, and the connection to it.
pub struct SentinelPrimary {
    /// The sentinel client and when the sentinels were last asked.
    sentinel: tokio::sync::Mutex<(SentinelClient, Option<Instant>)>,
    /// The primary's address and the connection to it.
    current: RwLock<Option<(String, ConnectionManager)>>,
    manager_config: ConnectionManagerConfig,
}

impl SentinelPrimary {
    const ASK_AT_MOST_EVERY: Duration = Duration::from_millis(100);

    fn current(&self) -> Option<(String, ConnectionManager)> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Asks the sentinels for the primary (unless they were asked moments ago) and
    /// moves the connection when it changed. Returns the connection and whether it moved.
    async fn follow(&self) -> RedisResult<(ConnectionManager, bool)> {
        let mut sentinel = self.sentinel.lock().await;
        let before = self.current();
        if let (Some((_, manager)), Some(asked)) = (&before, sentinel.1) {
            if asked.elapsed() < Self::ASK_AT_MOST_EVERY {
                return Ok((manager.clone(), false));
            }
        }
        sentinel.1 = Some(Instant::now());
        let client = sentinel.0.async_get_client().await?;
        let address = client.get_connection_info().addr().to_string();
        if let Some((known, manager)) = &before {
            if *known == address {
                return Ok((manager.clone(), false));
            }
        }
        let manager = ConnectionManager::new_lazy_with_config(client, self.manager_config.clone())?;
        match &before {
            Some((old, _)) => {
                tracing::warn!(from = %old, to = %address, "Redis primary moved (Sentinel failover); following")
            }
            None => tracing::info!(primary = %address, "Redis primary found through Sentinel"),
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some((address, manager.clone()));
        Ok((manager, before.is_some()))
    }

    async fn manager(&self) -> RedisResult<ConnectionManager> {
        match self.current() {
            Some((_, manager)) => Ok(manager),
            None => self.follow().await.map(|(manager, _)| manager),
        }
    }

    /// Sends with `send` on the primary; when a failover explains the error and the
    /// sentinels name a new primary, sends once more there.
    async fn on_primary<T, F, Fut>(&self, send: F) -> RedisResult<T>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        match send(self.manager().await?).await {
            Err(error) if failover_explains(&error) => match self.follow().await {
                Ok((moved, true)) => send(moved).await,
                _ => Err(error),
            },
            other => other,
        }
    }

    async fn command(&self, cmd: &Cmd) -> RedisResult<Value> {
        self.on_primary(|mut manager| async move { manager.req_packed_command(cmd).await })
            .await
    }

    async fn pipeline(
        &self,
        cmd: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        self.on_primary(|mut manager| async move {
            manager.req_packed_commands(cmd, offset, count).await
        })
        .await
    }
}

/// A cluster connection made on first use (and again after a failed first use).
pub struct LazyCluster {
    client: redis::cluster::ClusterClient,
    connection: tokio::sync::OnceCell<ClusterConnection>,
}

impl LazyCluster {
    async fn connection(&self) -> RedisResult<ClusterConnection> {
        self.connection
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
    }

    async fn command(&self, cmd: &Cmd) -> RedisResult<Value> {
        self.connection().await?.req_packed_command(cmd).await
    }

    async fn pipeline(
        &self,
        cmd: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        self.connection()
            .await?
            .req_packed_commands(cmd, offset, count)
            .await
    }
}
