//! Delivery status for producers and operators: `GET /v1/events/{id}` (one event) and
//! `GET /v1/events?trace_id=…` (every event stored with a trace id), read from `STATUS`
//! ([`pipeline::tracking`]).
//!
//! A producer key sees the events it sent through `/v1/notify`; an admin key
//! (`[[producers.admin_keys]]`) sees every event, webhooks' included. An event the caller
//! may not see is answered exactly like an unknown one (404), so ids cannot be probed.
//!
//! A look-up is paid for like a producer request: it takes an admission permit
//! (`max_in_flight`, 503 `overloaded` beyond), then a token from the caller's status
//! bucket (`producers.status_rate_per_sec` / `status_burst`, shared by the replicas; 429
//! beyond), and reads a bounded amount: at most `producers.status_max_events` records of a
//! trace id and `producers.status_max_records` records over all the events it shows. An
//! answer that left records unread says `"truncated": true`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use pipeline::contract::now_ms;
use pipeline::tracking::{self, EventStatus};
use serde::Deserialize;

use crate::error::ApiError;
use crate::producers::Reader;
use crate::{AppState, Inner, SERVICE};

/// Longest event id or trace id looked up.
const MAX_ID: usize = 256;

/// `GET /v1/events/{id}`: the event's status and `truncated`.
pub async fn event(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let s = &state.inner;
    let _admitted = s.admit()?;
    let reader = authenticate(s, &headers)?;
    check_id("event id", &id)?;
    take_lookup(s, &reader).await?;
    let bounded = read(s, &id, s.producers_config.status_max_records).await?;
    match bounded.value {
        Some(status) if may_see(&reader, &status) => {
            Ok(Json(with_truncated(&status, bounded.truncated)))
        }
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

/// `GET /v1/events?trace_id=…`: `{"events": [status, …], "truncated": bool}`, oldest
/// first, within the look-up's bounds.
pub async fn by_trace(
    State(state): State<AppState>,
    Query(query): Query<ByTrace>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let s = &state.inner;
    let _admitted = s.admit()?;
    let reader = authenticate(s, &headers)?;
    check_id("trace_id", &query.trace_id)?;
    take_lookup(s, &reader).await?;
    let limits = &s.producers_config;
    let ids = tracking::events_of_trace_within(
        s.publisher.jetstream(),
        &s.topology,
        &query.trace_id,
        limits.status_max_events,
    )
    .await
    .map_err(|error| unavailable(s, &error))?;
    let mut truncated = ids.truncated;
    let mut budget = limits.status_max_records;
    let mut events = Vec::new();
    for id in ids.value {
        if budget == 0 {
            truncated = true;
            break;
        }
        let bounded = read(s, &id, budget).await?;
        budget -= bounded.read;
        truncated |= bounded.truncated;
        if let Some(status) = bounded.value
            && may_see(&reader, &status)
        {
            events.push(with_truncated(&status, bounded.truncated));
        }
    }
    Ok(Json(
        serde_json::json!({ "events": events, "truncated": truncated }),
    ))
}

/// An event's status as answered: its fields and whether records were left unread.
fn with_truncated(status: &EventStatus, truncated: bool) -> serde_json::Value {
    let mut value = serde_json::to_value(status).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("truncated".into(), truncated.into());
    }
    value
}

/// Takes one look-up from the caller's status bucket, shared by every replica (this
/// replica's when the shared one cannot be reached).
async fn take_lookup(s: &Inner, reader: &Reader) -> Result<(), ApiError> {
    let bucket = match reader {
        Reader::Producer(name) => format!("status.p.{name}"),
        Reader::Admin(name) => format!("status.a.{name}"),
    };
    let (rate, burst) = (
        s.producers_config.status_rate_per_sec,
        f64::from(s.producers_config.status_burst),
    );
    let taken = match s.shared.take(&bucket, rate, burst, 1, now_ms()).await {
        Ok(taken) => taken,
        Err(error) => {
            tracing::warn!(%error, "shared status bucket unavailable; using this replica's");
            s.producers.take_from(&bucket, rate, burst, 1, now_ms())
        }
    };
    taken.map_err(|over| {
        s.metrics
            .auth_refusals
            .with_label_values(&[SERVICE, "rate_limited"])
            .inc();
        ApiError::TooManyRequests {
            retry_after_secs: over.retry_after_secs,
        }
    })
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

async fn read(
    s: &Inner,
    id: &str,
    max_records: usize,
) -> Result<tracking::Bounded<Option<EventStatus>>, ApiError> {
    tracking::read_event_within(s.publisher.jetstream(), &s.topology, id, max_records)
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
