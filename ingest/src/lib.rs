//! pushline ingest: receives webhooks, verifies and normalises them, and publishes each
//! event to JetStream `EVENTS`, answering 2xx only once the event is stored.
//!
//! # Layout
//!
//! - [`config`]: the typed configuration.
//! - [`signature`]: `X-Spark-Signature` (HMAC-SHA1) verification.
//! - [`webex`]: Webex envelopes → [`pipeline::contract::Event`].
//! - `handlers`: the public handlers (webhooks, `/v1/notify`).
//! - [`notify`]: the producer API's request, its validation and its events.
//! - [`producers`]: producer keys, admin keys and rate limits.
//! - [`shared`]: what every replica shares in NATS (stored ids, rate buckets).
//! - [`callbacks`]: producers' callbacks (event outcomes, pruned tokens).
//! - [`publish`]: bounded JetStream publishing with de-duplication ids.
//! - [`status`]: delivery status of events (`GET /v1/events/…`).
//! - [`error`]: the API error type and its JSON body.
//!
//! # Endpoints
//!
//! Public (`listen`): `POST /webhooks/webex`, `POST /webhook` (the path the Webex sample
//! server used), `POST /v1/notify` (producers), `GET /v1/events/{id}` and
//! `GET /v1/events?trace_id=…` (delivery status). Admin (`admin_listen`): `/metrics`, `/healthz`, `/readyz`.
#![forbid(unsafe_code)]

pub mod callbacks;
pub mod config;
pub mod error;
mod handlers;
pub mod notify;
pub mod producers;
pub mod publish;
pub mod shared;
pub mod signature;
pub mod status;
pub mod webex;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::{Router, middleware};
use pipeline::CancellationToken;
use pipeline::admin::{self, BoxFuture, Readiness};
use pipeline::config::Secret;
use pipeline::contract::now_ms;
use pipeline::metrics::Metrics;
use pipeline::topology::Topology;
use tokio::net::TcpListener;

use crate::config::{Config, WebexConfig};
use crate::error::ApiError;
use crate::publish::Publisher;

/// Service name in metrics and logs.
pub const SERVICE: &str = "ingest";

/// The OpenAPI document of the public API, served at `/openapi.yaml` on the admin port.
pub const OPENAPI: &str = include_str!("../../docs/openapi/ingest.yaml");

/// Shared state of the webhook handlers.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    webex: WebexConfig,
    secrets: Vec<Secret>,
    body_limit: usize,
    max_json_depth: usize,
    retry_after_secs: u64,
    producers_config: crate::config::ProducersConfig,
    producers: producers::Producers,
    topology: Topology,
    publisher: Publisher,
    admission: publish::Admission,
    tracker: pipeline::tracking::Tracker,
    shared: shared::Shared,
    metrics: Metrics,
}

impl AppState {
    /// Builds the state from a resolved configuration and a connected publisher.
    pub fn new(
        config: &Config,
        secrets: Vec<Secret>,
        publisher: Publisher,
        metrics: Metrics,
    ) -> Self {
        AppState {
            inner: Arc::new(Inner {
                webex: config.webex.clone(),
                secrets,
                body_limit: config.body_limit_bytes,
                max_json_depth: config.max_json_depth,
                retry_after_secs: config.retry_after_secs,
                producers_config: config.producers.clone(),
                producers: producers::Producers::new(&config.producers),
                topology: providers::topology(&config.nats),
                tracker: pipeline::tracking::Tracker::new(
                    publisher.client().clone(),
                    providers::topology(&config.nats),
                    config.nats.tracking,
                    metrics.clone(),
                ),
                shared: shared::Shared::new(
                    publisher.jetstream().clone(),
                    &config.nats.prefix,
                    config.nats.replicas,
                    Duration::from_secs(config.producers.max_ttl_secs),
                    Duration::from_secs(config.webex.replay_window_secs()),
                ),
                publisher,
                admission: publish::Admission::new(
                    config.max_in_flight,
                    config.max_held_bytes,
                    &metrics,
                ),
                metrics,
            }),
        }
    }
}

/// The public router.
pub fn router(state: AppState) -> Router {
    let metrics = state.inner.metrics.clone();
    Router::new()
        .route("/webhooks/webex", post(handlers::webex_webhook))
        .route("/webhook", post(handlers::webex_webhook))
        .route("/v1/notify", post(handlers::notify_handler))
        .route("/v1/events", get(status::by_trace))
        .route("/v1/events/{id}", get(status::event))
        .layer(middleware::from_fn(admin::json_errors))
        .layer(middleware::from_fn_with_state(
            (metrics, SERVICE),
            admin::track_http,
        ))
        .with_state(state)
}

impl Inner {
    /// Whether an event with this id was stored before (a producer's retry, a replayed
    /// webhook), by the shared record; `false` when it cannot be read (the
    /// de-duplication window still catches a repeat within it).
    async fn already_stored(&self, ids: shared::Ids, event_id: &str) -> bool {
        self.shared.seen(ids, event_id).await.unwrap_or_else(|error| {
            tracing::warn!(%error, "shared event ids unavailable; relying on the de-duplication window");
            false
        })
    }

    /// Records in the shared store that the event with this id is stored; a failure is
    /// logged (the de-duplication window still covers a repeat within it).
    async fn remember_stored(&self, ids: shared::Ids, event_id: &str) {
        if let Err(error) = self.shared.remember(ids, event_id).await {
            tracing::warn!(%error, event_id, "stored event not remembered; the de-duplication window still covers it");
        }
    }

    /// Takes `cost` tokens from `producer`'s shared bucket, or this replica's when the
    /// shared one cannot be reached.
    async fn take_rate(&self, producer: &str, cost: usize) -> Result<(), producers::OverRate> {
        let Some((rate, burst)) = self.producers.rate(producer) else {
            return Err(producers::OverRate {
                retry_after_secs: 1,
            });
        };
        match self
            .shared
            .take(producer, rate, burst, cost, now_ms())
            .await
        {
            Ok(taken) => taken,
            Err(error) => {
                tracing::warn!(%error, "shared rate bucket unavailable; using this replica's");
                self.producers.take(producer, cost, now_ms())
            }
        }
    }

    /// Stores the callback job of a stored event. A failure is logged: the event rings
    /// anyway, only the producer's callback is missing.
    async fn queue_callback(&self, event: &pipeline::contract::Event, producer: &str) {
        let job = pipeline::contract::CallbackJob {
            v: pipeline::contract::VERSION,
            event_id: event.id.clone(),
            producer: producer.to_owned(),
            deadline_ms: event.deadline_ms,
        };
        let Ok(body) = serde_json::to_vec(&job) else {
            return;
        };
        let stored = pipeline::nats::publish_stored(
            self.publisher.jetstream(),
            &self.topology.callback_subject(producer),
            &format!("callback:{}", event.id),
            None,
            &body.into(),
        )
        .await;
        if let Err(error) = stored {
            self.metrics
                .callbacks
                .with_label_values(&[producer, "not_queued"])
                .inc();
            tracing::error!(%error, event_id = %event.id, producer, "callback not queued; the producer will not hear of this event");
        }
    }

    /// Stores `event` in `EVENTS` (its id de-duplicates), holding the request's permit.
    async fn store(
        &self,
        event: &pipeline::contract::Event,
        admitted: publish::Admitted,
    ) -> Result<publish::Stored, StoreEventError> {
        let payload = serde_json::to_vec(event)?;
        self.publisher
            .publish(
                (event.source.clone(), event.resource.clone()),
                &event.id,
                event.trace_id.as_deref(),
                payload.into(),
                admitted,
            )
            .await
            .map_err(StoreEventError::Publish)
    }

    /// A permit for one more request, or the fast refusal.
    fn admit(&self) -> Result<publish::Admitted, ApiError> {
        self.admission.try_admit().ok_or(ApiError::Overloaded {
            retry_after_secs: self.retry_after_secs,
        })
    }
}

/// Why an event was not stored in `EVENTS`.
#[derive(Debug, thiserror::Error)]
pub enum StoreEventError {
    /// The event could not be written as JSON.
    #[error("cannot encode the event: {0}")]
    Encode(#[from] serde_json::Error),
    /// JetStream did not store it within the retry budget.
    #[error(transparent)]
    Publish(publish::PublishError),
}

impl StoreEventError {
    /// Bounded label for metrics and logs.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            StoreEventError::Encode(_) => "encode",
            StoreEventError::Publish(error) => error.metric_reason(),
        }
    }
}

struct Ready {
    publisher: Publisher,
    topology: Topology,
}

impl Readiness for Ready {
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.publisher.check(&self.topology))
    }
}

/// Why ingest could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] pipeline::config::ConfigError),
    /// NATS options refused.
    #[error(transparent)]
    Nats(#[from] pipeline::nats::ConnectError),
    /// A listener could not be bound or served.
    #[error("{what}: {source}")]
    Io {
        /// Which listener.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// Binds `listen` and `admin_listen` and serves until `shutdown`.
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
    serve_resolved(config, resolved, api, admin, shutdown).await
}

/// Serves on the given listeners (tests pass port-0 listeners) until `shutdown`.
pub async fn serve(
    config: Config,
    api: TcpListener,
    admin_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let resolved = config.resolve()?;
    serve_resolved(config, resolved, api, admin_listener, shutdown).await
}

/// [`serve`] with the configuration already resolved (once per start).
async fn serve_resolved(
    config: Config,
    resolved: config::Resolved,
    api: TcpListener,
    admin_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    if config.webex.insecure_skip_signature {
        tracing::warn!(
            "webex.insecure_skip_signature is ON: anyone can post webhooks. Development only!"
        );
    }
    let metrics = Metrics::new(SERVICE);
    let client = pipeline::nats::connect(&config.nats, "pushline-ingest").await?;
    let topology = providers::topology(&config.nats);
    let publisher = Publisher::new(
        client.clone(),
        topology.clone(),
        &config.nats,
        metrics.clone(),
    );
    let watcher = publisher.clone();
    let watch_shutdown = shutdown.clone();
    tokio::spawn(async move { watcher.watch_partitions(watch_shutdown).await });
    let ready = Arc::new(Ready {
        publisher: publisher.clone(),
        topology: topology.clone(),
    });
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        admin::router(metrics.clone(), ready).merge(admin::openapi(OPENAPI)),
        shutdown.clone(),
    ));
    // Streams are created in the background: until they exist publishes fail and
    // webhooks get 503, which producers retry.
    let js = pipeline::topology::jetstream(client);
    let callbacks = callbacks::Callbacks::new(
        &config.producers,
        &config.callbacks,
        js.clone(),
        topology.clone(),
        metrics.clone(),
    )?;
    let setup_shutdown = shutdown.clone();
    let setup_topology = topology.clone();
    let (worker_config, worker_metrics) = (config.callbacks.clone(), metrics.clone());
    let setup = tokio::spawn(async move {
        if pipeline::topology::ensure_until_ready(&js, &setup_topology, &setup_shutdown).await {
            tracing::info!("JetStream streams ready");
            pipeline::worker::run_when_ready(
                js,
                setup_topology,
                pipeline::topology::ConsumerKind::Callbacks,
                worker_config,
                callbacks,
                worker_metrics,
                setup_shutdown,
            )
            .await;
        }
    });
    tracing::info!(listen = %api.local_addr().map(|a| a.to_string()).unwrap_or_default(), "ingest listening");
    let state = AppState::new(&config, resolved.secrets, publisher, metrics.clone());
    let served = pipeline::listener::serve(
        api,
        router(state),
        &config.connections,
        metrics,
        SERVICE,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    let _ = setup.await;
    let _ = admin_task.await;
    served.map_err(|source| RunError::Io {
        what: "public listener".into(),
        source,
    })
}
