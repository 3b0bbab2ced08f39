//! Delivery status for producers and operators: `GET /v1/events/{id}` (one event) and
//! `GET /v1/events?trace_id=…` (every event stored with a trace id), read from `STATUS`
//! ([`pipeline::tracking`]).
//!
//! A producer key sees the events it sent through `/v1/notify`; an admin key
//! (`[[producers.admin_keys]]`) sees every event, webhooks' included. An event the caller
//! may not see is answered exactly like an unknown one (404), so ids cannot be probed.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use pipeline::tracking::{self, EventStatus};
use serde::Deserialize;

use crate::error::ApiError;
use crate::producers::Reader;
use crate::{AppState, Inner, SERVICE};

/// Longest event id or trace id looked up.
const MAX_ID: usize = 256;

/// `GET /v1/events/{id}`.
pub async fn event(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<EventStatus>, ApiError> {
    let s = &state.inner;
    let reader = authenticate(s, &headers)?;
    check_id("event id", &id)?;
    match read(s, &id).await? {
        Some(status) if may_see(&reader, &status) => Ok(Json(status)),
        _ => Err(ApiError::NotFound(format!(
            "no delivery status for event `{id}` (unknown, not yours, or older than the retention)"
        ))),
    }
}

/// The query of `GET /v1/events`.
#[derive(Debug, Deserialize)]
pub struct ByTrace {
    /// The producer's trace id (Webex `TrackingID`).
    trace_id: String,
}

/// `GET /v1/events?trace_id=…`: `{"events": [status, …]}`, oldest first.
pub async fn by_trace(
    State(state): State<AppState>,
    Query(query): Query<ByTrace>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let s = &state.inner;
    let reader = authenticate(s, &headers)?;
    check_id("trace_id", &query.trace_id)?;
    let ids = tracking::events_of_trace(s.publisher.jetstream(), &s.topology, &query.trace_id)
        .await
        .map_err(|error| unavailable(s, &error))?;
    let mut events = Vec::new();
    for id in ids {
        if let Some(status) = read(s, &id).await?
            && may_see(&reader, &status)
        {
            events.push(status);
        }
    }
    Ok(Json(serde_json::json!({ "events": events })))
}

fn authenticate(s: &Inner, headers: &HeaderMap) -> Result<Reader, ApiError> {
    let reader = pipeline::admin::bearer(headers).and_then(|key| s.producers.reader(key));
    reader.ok_or_else(|| {
        s.metrics
            .auth_refusals
            .with_label_values(&[SERVICE, "unknown_api_key"])
            .inc();
        ApiError::Unauthorized("a producer or admin API key is required".into())
    })
}

fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_ID || id.chars().any(char::is_control) {
        return Err(ApiError::Invalid(format!(
            "the {what} must be 1 to {MAX_ID} bytes without control characters"
        )));
    }
    Ok(())
}

async fn read(s: &Inner, id: &str) -> Result<Option<EventStatus>, ApiError> {
    tracking::read_event(s.publisher.jetstream(), &s.topology, id)
        .await
        .map_err(|error| unavailable(s, &error))
}

fn unavailable(s: &Inner, error: &tracking::ReadError) -> ApiError {
    tracing::warn!(%error, "delivery status not read");
    ApiError::StatusUnavailable {
        retry_after_secs: s.retry_after_secs,
    }
}

/// Admins see everything; a producer sees what it sent (an event whose `received`
/// record was lost is shown to admins only).
fn may_see(reader: &Reader, status: &EventStatus) -> bool {
    match reader {
        Reader::Admin(_) => true,
        Reader::Producer(name) => status
            .received
            .as_ref()
            .is_some_and(|r| r.is_from_producer(name)),
    }
}
