//! pushline registry: owns device tokens in Redis, serves the device API, fans events out
//! to per-device push jobs, and prunes tokens the providers reject.
//!
//! # Layout
//!
//! - [`config`]: the typed configuration.
//! - [`store`]: the Redis store, its key layout and atomic scripts.
//! - [`connection`]: Redis as a single server, behind Sentinel, or as a cluster.
//! - [`api`]: the device HTTP API; [`auth`] its API-key check; [`validate`] its input rules;
//!   [`error`] its error type.
//! - [`keyring`]: devices' end-to-end keys sealed at rest under configured KEKs.
//! - [`person`]: canonical person ids (Webex base64 ids and bare uuids are one person).
//! - [`fanout`]: `EVENTS` → a push stream per provider (`PUSH_<PROVIDER>`), in-app jobs to
//!   `INAPP`, and the pushes held behind them to `FALLBACK`.
//! - [`log_once`]: a condition repeated with every push logged once per device and
//!   interval.
//! - [`fallback`]: `FALLBACK` → held pushes released when an app does not acknowledge.
//! - [`inapp`]: the in-app cursor and presence keys the registry shares with the gateway.
//! - [`inbox`]: the server-side inbox: messages kept per person and app, their read state,
//!   and the notices that keep a person's connections in step; [`inbox_api`] its HTTP API
//!   and the receipt endpoint.
//! - [`cli`]: `pushctl`, the operators' command line.
//! - [`prune`]: `FEEDBACK` → token removal.
//! - [`receipts`]: receipts and actions apps report, checked against delivery status.
//! - [`webhooks`]: the Webex webhook pushline depends on, kept in shape (`pushctl webhooks`,
//!   the watchdog).
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod connection;
pub mod error;
pub mod fallback;
pub mod fanout;
pub mod inapp;
pub mod inbox;
pub mod inbox_api;
pub mod keyring;
pub mod log_once;
pub mod person;
pub mod prune;
pub mod receipts;
pub mod store;
pub mod validate;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use pipeline::CancellationToken;
use pipeline::admin::{self, BoxFuture, Readiness};
use pipeline::metrics::Metrics;
use pipeline::topology::{ConsumerKind, StreamKind, Topology};
use pipeline::worker::run_when_ready;
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::config::{Config, DevicesConfig};
use crate::store::{Policy, Store};

/// Service name in metrics and logs.
pub const SERVICE: &str = "registry";

/// The OpenAPI document of the device API, served at `/openapi.yaml` on the admin port.
pub const OPENAPI: &str = include_str!("../../docs/openapi/registry.yaml");

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct AppState {
    store: Store,
    auth: Arc<Authenticator>,
    devices: Arc<DevicesConfig>,
    keyring: Arc<keyring::Keyring>,
    body_limit: usize,
    max_json_depth: usize,
    endpoints: Arc<pipeline::egress::EgressPolicy>,
    notices: inapp::ActiveNotices,
    inbox: inbox::Inbox,
    inbox_notices: inbox::InboxNotices,
    receipts: receipts::Receipts,
    metrics: Metrics,
    providers: pipeline::provider::Providers,
}

/// Why the registry could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] pipeline::config::ConfigError),
    /// NATS options refused.
    #[error(transparent)]
    Nats(#[from] pipeline::nats::ConnectError),
    /// Redis URL or options refused.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A listener could not be bound or served.
    #[error("{what}: {source}")]
    Io {
        /// Which listener.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
}

struct Ready {
    client: async_nats::Client,
    topology: Topology,
    store: Store,
}

impl Readiness for Ready {
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut streams = vec![StreamKind::Events, StreamKind::Feedback];
            streams.extend(
                self.topology
                    .providers()
                    .iter()
                    .map(|p| StreamKind::Push(p)),
            );
            let mut consumers = vec![ConsumerKind::Fanout, ConsumerKind::Prune];
            if self.topology.has_inapp() {
                streams.extend([StreamKind::InApp, StreamKind::Fallback]);
                consumers.push(ConsumerKind::Fallback);
            }
            pipeline::nats::check_topology(&self.client, &self.topology, &streams, &consumers)
                .await?;
            match tokio::time::timeout(Duration::from_secs(2), self.store.check()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("Redis: {e}")),
                Err(_) => Err("Redis: no answer within 2s".into()),
            }
        })
    }
}

/// Binds `listen` and `admin_listen` and runs until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let resolved = config.resolve()?;
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Io {
                what: format!("cannot listen on {addr}"),
                source,
            })
    };
    let api = bind(resolved.listen).await?;
    let admin = bind(resolved.admin_listen).await?;
    serve(config, api, admin, shutdown).await
}

/// Connects to Redis lazily, in the configured mode (the registry starts while Redis is
/// still down).
pub fn connect_redis(
    config: &config::RedisConfig,
) -> Result<connection::Connection, redis::RedisError> {
    connection::connect(config)
}

/// Serves on the given listeners and runs the fan-out and prune consumers until `shutdown`.
pub async fn serve(
    config: Config,
    api_listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    config.resolve()?;
    if config.auth.insecure_no_auth {
        tracing::warn!(
            "auth.insecure_no_auth is ON: anyone can register devices. Development only!"
        );
    }
    let metrics = Metrics::new(SERVICE);
    let keyring = Arc::new(keyring::Keyring::from_config(
        &config.devices.key_encryption_keys,
    )?);
    let redis = connect_redis(&config.redis)?;
    let inapp = inapp::InAppState::new(redis.clone(), &config.redis.prefix);
    let redis_for_inbox = redis.clone();
    let store = Store::new(
        redis,
        config.redis.prefix.clone(),
        Policy {
            max_devices_per_person: config.devices.max_per_person,
            ttl: Duration::from_secs(config.devices.ttl_secs),
        },
    );
    let client = pipeline::nats::connect(&config.nats, "pushline-registry").await?;
    let js = pipeline::topology::jetstream(client.clone());
    let topology = providers::topology(&config.nats);

    let tracker = pipeline::tracking::Tracker::new(
        client.clone(),
        topology.clone(),
        config.nats.tracking,
        metrics.clone(),
    );
    let notices = inapp::ActiveNotices::new(client.clone(), topology.clone());
    let inbox = inbox::Inbox::new(redis_for_inbox, &config.redis.prefix);
    let inbox_notices = inbox::InboxNotices::new(client.clone(), topology.clone());
    let ready = Arc::new(Ready {
        client,
        topology: topology.clone(),
        store: store.clone(),
    });
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        admin::router(metrics.clone(), ready).merge(admin::openapi(OPENAPI)),
        shutdown.clone(),
    ));

    let ack_budget = Duration::from_millis(config.nats.partition_ack_budget_ms);
    let push = pipeline::partition::PushRouters::new(&js, &topology, ack_budget, &metrics);
    {
        let (push, shutdown) = (push.clone(), shutdown.clone());
        tokio::spawn(async move { push.watch(ack_budget, shutdown).await });
    }
    let fanout = fanout::Fanout {
        store: store.clone(),
        js: js.clone(),
        topology: topology.clone(),
        worker: config.fanout.clone(),
        publish_timeout: Duration::from_millis(config.nats.publish_timeout_ms),
        metrics: metrics.clone(),
        devices: Arc::new(config.devices.clone()),
        keyring: keyring.clone(),
        skip_log: Arc::new(log_once::LogOnce::new(fanout::SKIP_LOG_INTERVAL)),
        tracker: tracker.clone(),
        providers: providers::all(),
        inapp: inapp.clone(),
        inbox: inbox.clone(),
        inbox_notices: inbox_notices.clone(),
        push: push.clone(),
        fanned_out: Arc::default(),
    };
    let fallback = fallback::FallbackWorker {
        inapp,
        js: js.clone(),
        topology: topology.clone(),
        tracker: tracker.clone(),
        metrics: metrics.clone(),
        publish_timeout: Duration::from_millis(config.nats.publish_timeout_ms),
        push,
    };
    let receipts = receipts::Receipts::new(
        js.clone(),
        topology.clone(),
        tracker.clone(),
        store.clone(),
        metrics.clone(),
    );
    let prune = prune::Prune {
        store: store.clone(),
        worker: config.prune.clone(),
        metrics: metrics.clone(),
        tracker,
        js: js.clone(),
        topology: topology.clone(),
    };
    let workers = {
        let (js, topology, metrics, shutdown) = (
            js.clone(),
            topology.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        let (fanout_cfg, prune_cfg, fallback_cfg) = (
            config.fanout.clone(),
            config.prune.clone(),
            config.fallback.clone(),
        );
        tokio::spawn(async move {
            if !pipeline::topology::ensure_until_ready(&js, &topology, &shutdown).await {
                return;
            }
            let f = run_when_ready(
                js.clone(),
                topology.clone(),
                ConsumerKind::Fanout,
                fanout_cfg,
                fanout,
                metrics.clone(),
                shutdown.clone(),
            );
            let p = run_when_ready(
                js.clone(),
                topology.clone(),
                ConsumerKind::Prune,
                prune_cfg,
                prune,
                metrics.clone(),
                shutdown.clone(),
            );
            // Held pushes exist only where in-app messages do.
            let b = async {
                if topology.has_inapp() {
                    run_when_ready(
                        js,
                        topology.clone(),
                        ConsumerKind::Fallback,
                        fallback_cfg,
                        fallback,
                        metrics,
                        shutdown,
                    )
                    .await;
                }
            };
            tokio::join!(f, p, b);
        })
    };

    let watchdog = webhooks::Watchdog::new(&config.webex_webhooks, metrics.clone())?
        .map(|watchdog| tokio::spawn(watchdog.run(shutdown.clone())));

    let state = AppState {
        store,
        auth: Arc::new(Authenticator::new(&config.auth, metrics.clone())?),
        devices: Arc::new(config.devices.clone()),
        keyring,
        body_limit: config.body_limit_bytes,
        max_json_depth: config.max_json_depth,
        endpoints: Arc::new(pipeline::egress::EgressPolicy::new(
            "endpoints",
            &config.endpoints,
        )?),
        notices,
        inbox,
        inbox_notices,
        receipts,
        metrics: metrics.clone(),
        providers: providers::all(),
    };
    tracing::info!(listen = %api_listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "registry listening");
    let served = pipeline::listener::serve(
        api_listener,
        api::router(state, &config.cors_origins),
        &config.connections,
        metrics,
        SERVICE,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    let _ = workers.await;
    if let Some(watchdog) = watchdog {
        let _ = watchdog.await;
    }
    let _ = admin_task.await;
    served.map_err(|source| RunError::Io {
        what: "public listener".into(),
        source,
    })
}
