//! pushline ingest: receives webhooks, verifies and normalises them, and publishes each
//! event to JetStream `EVENTS`, answering 2xx only once the event is stored.
//!
//! # Layout
//!
//! - [`config`]: the typed configuration.
//! - [`signature`]: `X-Spark-Signature` (HMAC-SHA1) verification.
//! - [`webex`]: Webex envelopes → [`pipeline::contract::Event`].
//! - [`notify`]: the producer API (`POST /v1/notify`): keys, rate limits, validation.
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
pub mod notify;
pub mod producers;
pub mod publish;
pub mod shared;
pub mod signature;
pub mod status;
pub mod webex;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use bytes::Bytes;
use pipeline::CancellationToken;
use pipeline::admin::{self, BoxFuture, Readiness};
use pipeline::config::Secret;
use pipeline::contract::now_ms;
use pipeline::metrics::Metrics;
use pipeline::topology::{StreamKind, Topology};
use pipeline::tracking::StatusRecord;
use tokio::net::TcpListener;

use crate::config::{Config, WebexConfig};
use crate::error::ApiError;
use crate::publish::Publisher;
use crate::webex::Normalised;

/// Service name in metrics and logs.
pub const SERVICE: &str = "ingest";

/// The OpenAPI document of the public API, served at `/openapi.yaml` on the admin port.
pub const OPENAPI: &str = include_str!("../../docs/openapi/ingest.yaml");

/// The longest producer trace id carried along.
const MAX_TRACE_ID: usize = 128;

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
                topology: Topology::new(&config.nats),
                tracker: pipeline::tracking::Tracker::new(
                    publisher.client().clone(),
                    Topology::new(&config.nats),
                    config.nats.tracking,
                    metrics.clone(),
                ),
                shared: shared::Shared::new(
                    publisher.jetstream().clone(),
                    &config.nats.prefix,
                    config.nats.replicas,
                    Duration::from_secs(config.producers.max_ttl_secs),
                ),
                publisher,
                admission: publish::Admission::new(config.max_in_flight),
                metrics,
            }),
        }
    }
}

/// The public router.
pub fn router(state: AppState) -> Router {
    let metrics = state.inner.metrics.clone();
    Router::new()
        .route("/webhooks/webex", post(webex_webhook))
        .route("/webhook", post(webex_webhook))
        .route("/v1/notify", post(notify_handler))
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
    /// Whether an event with this id was stored before (a producer's retry), by the
    /// shared record; `false` when it cannot be read (the de-duplication window still
    /// catches a retry within it).
    async fn already_stored(&self, event_id: &str) -> bool {
        self.shared.seen(event_id).await.unwrap_or_else(|error| {
            tracing::warn!(%error, "shared idempotency keys unavailable; relying on the de-duplication window");
            false
        })
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

    /// A permit for one more request, or the fast refusal.
    fn admit(&self) -> Result<publish::Admitted, ApiError> {
        self.admission.try_admit().ok_or(ApiError::Overloaded {
            retry_after_secs: self.retry_after_secs,
        })
    }
}

async fn webex_webhook(State(state): State<AppState>, request: Request) -> Response {
    let s = &state.inner;
    let result = match s.admit() {
        Ok(admitted) => receive(s, request, admitted).await,
        Err(overloaded) => Err(overloaded),
    };
    let outcome = match &result {
        Ok((_, outcome)) => *outcome,
        Err(error) => error.outcome(),
    };
    s.metrics
        .webhooks_received
        .with_label_values(&[webex::SOURCE, outcome])
        .inc();
    match result {
        Ok((response, _)) => response,
        Err(error) => {
            tracing::info!(outcome, %error, "webhook refused");
            error.into_response()
        }
    }
}

/// Reads a JSON body within the size limit, refusing other media types and bodies nested
/// deeper than `max_json_depth`.
async fn read_json_body(
    s: &Inner,
    parts: &axum::http::request::Parts,
    body: Body,
) -> Result<Bytes, ApiError> {
    if !is_json(parts.headers.get(header::CONTENT_TYPE)) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = ApiError::PayloadTooLarge {
        limit: s.body_limit,
    };
    if declared.is_some_and(|len| len > s.body_limit) {
        return Err(too_large);
    }
    let body = axum::body::to_bytes(body, s.body_limit)
        .await
        .map_err(|_| too_large)?;
    if pipeline::json::depth(&body) > s.max_json_depth {
        return Err(ApiError::Invalid(format!(
            "body nests deeper than {} levels",
            s.max_json_depth
        )));
    }
    Ok(body)
}

async fn receive(
    s: &Inner,
    request: Request,
    admitted: publish::Admitted,
) -> Result<(Response, &'static str), ApiError> {
    let received_at = now_ms();
    let (parts, body) = request.into_parts();
    let body = read_json_body(s, &parts, Body::new(body)).await?;

    if s.webex.insecure_skip_signature {
        tracing::warn!("webhook accepted WITHOUT signature check (webex.insecure_skip_signature)");
    } else {
        signature::verify(
            &body,
            parts.headers.get(signature::HEADER).map(|v| v.as_bytes()),
            &s.secrets,
        )
        .map_err(|e| ApiError::Unauthorized(format!("X-Spark-Signature: {e}")))?;
        if !s.webex.sha256_header.is_empty() {
            match parts.headers.get(s.webex.sha256_header.as_str()) {
                Some(value) => signature::verify_sha256(&body, Some(value.as_bytes()), &s.secrets)
                    .map_err(|e| {
                        ApiError::Unauthorized(format!("{}: {e}", s.webex.sha256_header))
                    })?,
                None if s.webex.require_sha256 => {
                    return Err(ApiError::Unauthorized(format!(
                        "{}: missing signature header",
                        s.webex.sha256_header
                    )));
                }
                None => {}
            }
        }
    }

    let trace_id = trace_id(&parts.headers);
    let event = match webex::normalise(&body, &s.webex, received_at, trace_id)
        .map_err(|e| ApiError::Invalid(e.0))?
    {
        Normalised::Event(event) => event,
        Normalised::Ignored { reason } => {
            let body = Json(serde_json::json!({"status": "ignored", "reason": reason}));
            return Ok(((StatusCode::ACCEPTED, body).into_response(), "ignored"));
        }
        Normalised::Expired => {
            s.metrics.expired.with_label_values(&[SERVICE]).inc();
            let body = Json(serde_json::json!({"status": "expired"}));
            return Ok(((StatusCode::OK, body).into_response(), "expired"));
        }
    };

    let payload = serde_json::to_vec(&event).map_err(|e| ApiError::Invalid(e.to_string()))?;
    let subject = s.topology.event_subject(&event.source, &event.resource);
    let stored = s
        .publisher
        .publish(
            subject,
            &event.id,
            event.trace_id.as_deref(),
            payload.into(),
            admitted,
        )
        .await
        .map_err(|error| {
            tracing::warn!(%error, event_id = %event.id, trace_id = event.trace_id.as_deref().unwrap_or("-"), "event not stored");
            ApiError::Unavailable {
                retry_after_secs: s.retry_after_secs,
            }
        })?;
    let outcome = if stored.duplicate {
        "duplicate"
    } else {
        s.metrics
            .events_published
            .with_label_values(&[&event.source, &event.resource, event.class.as_str()])
            .inc();
        s.tracker.record(&StatusRecord::received(&event)).await;
        "accepted"
    };
    tracing::debug!(event_id = %event.id, trace_id = event.trace_id.as_deref().unwrap_or("-"), outcome, "event stored");
    let body = Json(serde_json::json!({
        "status": "accepted",
        "event_id": event.id,
        "duplicate": stored.duplicate,
    }));
    Ok(((StatusCode::OK, body).into_response(), outcome))
}

async fn notify_handler(State(state): State<AppState>, request: Request) -> Response {
    let s = &state.inner;
    let result = match s.admit() {
        Ok(admitted) => notify(s, request, admitted).await,
        Err(overloaded) => Err(overloaded),
    };
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(error) => error.outcome(),
    };
    s.metrics
        .webhooks_received
        .with_label_values(&[notify::SOURCE, outcome])
        .inc();
    match result {
        Ok(response) => response,
        Err(error) => {
            tracing::info!(outcome, %error, "notify refused");
            error.into_response()
        }
    }
}

async fn notify(
    s: &Inner,
    request: Request,
    admitted: publish::Admitted,
) -> Result<Response, ApiError> {
    let received_at = now_ms();
    let (parts, body) = request.into_parts();
    let key = admin::bearer(&parts.headers);
    let producer = match key.map(|k| s.producers.authenticate(k)) {
        Some(Some(producer)) => producer.to_owned(),
        missing_or_unknown => {
            let reason = if missing_or_unknown.is_none() {
                "missing_credentials"
            } else {
                "unknown_api_key"
            };
            s.metrics
                .auth_refusals
                .with_label_values(&[SERVICE, reason])
                .inc();
            return Err(ApiError::Unauthorized(
                "a producer API key is required".into(),
            ));
        }
    };
    let body = read_json_body(s, &parts, Body::new(body)).await?;
    let request: notify::NotifyRequest<'_> =
        pipeline::json::parse(&body).map_err(ApiError::Invalid)?;
    let trace_id = trace_id(&parts.headers);
    let events = notify::events(
        &request,
        &producer,
        &s.producers_config,
        received_at,
        trace_id,
    )
    .map_err(|e| ApiError::Unprocessable(e.0))?;
    if events.len() > s.producers.burst(&producer) {
        return Err(ApiError::Unprocessable(format!(
            "`person_ids` holds more persons than this producer's burst ({})",
            s.producers.burst(&producer)
        )));
    }
    // A producer's retry of events already stored is answered as a duplicate, without
    // publishing them again or charging for them.
    let stored_before =
        futures::future::join_all(events.iter().map(|event| s.already_stored(&event.id))).await;
    let cost = stored_before.iter().filter(|seen| !**seen).count();
    if cost > 0 {
        s.take_rate(&producer, cost).await.map_err(|over| {
            s.metrics
                .auth_refusals
                .with_label_values(&[SERVICE, "rate_limited"])
                .inc();
            ApiError::TooManyRequests {
                retry_after_secs: over.retry_after_secs,
            }
        })?;
    }

    let publishes = events.iter().zip(&stored_before).map(|(event, seen)| async {
        if *seen {
            return Ok(publish::Stored { duplicate: true });
        }
        let payload = serde_json::to_vec(event).map_err(|e| e.to_string())?;
        let subject = s.topology.event_subject(&event.source, &event.resource);
        let stored = s
            .publisher
            .publish(
                subject,
                &event.id,
                event.trace_id.as_deref(),
                payload.into(),
                admitted.clone(),
            )
            .await
            .map_err(|e| e.to_string())?;
        if let Err(error) = s.shared.remember(&event.id).await {
            tracing::warn!(%error, event_id = %event.id, "stored event not remembered for idempotency; the de-duplication window still covers it");
        }
        if !stored.duplicate && callbacks::Callbacks::wanted(&s.producers_config, &producer) {
            s.queue_callback(event, &producer).await;
        }
        Ok::<_, String>(stored)
    });
    let results = futures::future::join_all(publishes).await;
    let mut accepted = Vec::with_capacity(events.len());
    for (event, result) in events.iter().zip(results) {
        match result {
            Ok(stored) => {
                if !stored.duplicate {
                    s.metrics
                        .events_published
                        .with_label_values(&[&event.source, &event.resource, event.class.as_str()])
                        .inc();
                    s.tracker.record(&StatusRecord::received(event)).await;
                }
                accepted.push(serde_json::json!({
                    "person_id": event.person_id, "event_id": event.id, "duplicate": stored.duplicate,
                }));
            }
            Err(error) => {
                // Some may be stored; a retry with the same idempotency key stores the
                // rest and de-duplicates these.
                tracing::warn!(%error, event_id = %event.id, "notify event not stored");
                return Err(ApiError::Unavailable {
                    retry_after_secs: s.retry_after_secs,
                });
            }
        }
    }
    Ok(Json(serde_json::json!({"status": "accepted", "events": accepted})).into_response())
}

fn trace_id(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get("trackingid")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= MAX_TRACE_ID && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_owned)
}

fn is_json(value: Option<&axum::http::HeaderValue>) -> bool {
    let Some(value) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
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
    serve(config, api, admin, shutdown).await
}

/// Serves on the given listeners (tests pass port-0 listeners) until `shutdown`.
pub async fn serve(
    config: Config,
    api: TcpListener,
    admin_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let resolved = config.resolve()?;
    if config.webex.insecure_skip_signature {
        tracing::warn!(
            "webex.insecure_skip_signature is ON: anyone can post webhooks. Development only!"
        );
    }
    let metrics = Metrics::new(SERVICE);
    let client = pipeline::nats::connect(&config.nats, "pushline-ingest").await?;
    let topology = Topology::new(&config.nats);
    let publisher = Publisher::new(
        client.clone(),
        Duration::from_millis(config.nats.publish_timeout_ms),
        Duration::from_millis(config.nats.publish_retry_budget_ms),
        topology.stream_name(StreamKind::Events),
        metrics.clone(),
    );
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
    let state = AppState::new(&config, resolved.secrets, publisher, metrics);
    let served = admin::serve(api, router(state), shutdown.clone()).await;
    shutdown.cancel();
    let _ = setup.await;
    let _ = admin_task.await;
    served.map_err(|source| RunError::Io {
        what: "public listener".into(),
        source,
    })
}
