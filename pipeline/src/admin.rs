//! The admin HTTP server (`/metrics`, `/healthz`, `/readyz`) and the HTTP metrics layer
//! used by every public router.
//!
//! The admin server listens on its own address (`admin_listen`) so an internet-facing
//! ingest never exposes metrics. `/healthz` says the process is alive; `/readyz` runs the
//! service's [`Readiness`] check, which really touches its dependencies.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// A boxed future, for object-safe async traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A service's readiness check: `Ok` when every dependency answered.
pub trait Readiness: Send + Sync + 'static {
    /// Checks each dependency; on failure returns which one and why.
    fn check(&self) -> BoxFuture<'_, Result<(), String>>;
}

#[derive(Clone)]
struct AdminState {
    metrics: Metrics,
    readiness: Arc<dyn Readiness>,
}

/// The admin router.
pub fn router(metrics: Metrics, readiness: Arc<dyn Readiness>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .with_state(AdminState { metrics, readiness })
}

async fn metrics_handler(State(state): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(state): State<AdminState>) -> Response {
    match state.readiness.check().await {
        Ok(()) => Json(serde_json::json!({"status": "ready"})).into_response(),
        Err(problem) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not_ready", "problem": problem})),
        )
            .into_response(),
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then finishes open requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Middleware recording `pushline_http_requests_total` and
/// `pushline_http_request_duration_seconds`, labelled with the matched route (never the
/// raw URI, which may hold tokens).
pub async fn track_http(
    State((metrics, service)): State<(Metrics, &'static str)>,
    request: Request,
    next: Next,
) -> Response {
    // Both are reference-counted or inline: nothing is copied per request.
    let route = request.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .http_duration
        .with_label_values(&[service, route, method.as_str()])
        .observe(started.elapsed().as_secs_f64());
    metrics
        .http_requests
        .with_label_values(&[service, route, method.as_str(), response.status().as_str()])
        .inc();
    response
}

/// Middleware making every error answer JSON: axum's own refusals (an undecodable path,
/// an unknown route, a wrong method, …) arrive as plain text or empty bodies; they are
/// rewritten to `{"error":{"code","message"}}` with the same status and headers.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_error = status.is_client_error() || status.is_server_error();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !is_error || is_json {
        return response;
    }
    let code = match status.as_u16() {
        404 => "not_found",
        405 => "method_not_allowed",
        413 => "too_large",
        415 => "unsupported_media_type",
        422 => "unprocessable",
        s if s >= 500 => "unavailable",
        _ => "invalid",
    };
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4_096).await.unwrap_or_default();
    let message = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_owned(),
        text => text.to_owned(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// A route serving an OpenAPI document (YAML) on the admin listener.
pub fn openapi(document: &'static str) -> Router {
    Router::new().route(
        "/openapi.yaml",
        get(move || async move { ([(header::CONTENT_TYPE, "application/yaml")], document) }),
    )
}

/// The credential of an `Authorization: Bearer …` header, if there is a non-empty one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|v| !v.is_empty())
}
