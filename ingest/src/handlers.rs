//! The public handlers: `POST /webhooks/webex` (verify, normalise, store the event) and
//! `POST /v1/notify` (authenticate the producer, charge its rate, store one event per
//! person). Each takes an admission permit first, so overload is refused at once.

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use pipeline::admin;
use pipeline::contract::now_ms;
use pipeline::json::BodyRefusal;
use pipeline::tracking::StatusRecord;

use crate::error::ApiError;
use crate::shared::Ids;
use crate::webex::Normalised;
use crate::{AppState, Inner, SERVICE, callbacks, notify, publish, signature, webex};

/// The longest producer trace id carried along.
const MAX_TRACE_ID: usize = 128;

pub(crate) async fn webex_webhook(State(state): State<AppState>, request: Request) -> Response {
    let s = &state.inner;
    let result = match s.admit() {
        Ok(admitted) => receive(&state, request, admitted).await,
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

/// Reads a JSON body by the rule every public API shares ([`pipeline::json::read_body`]).
async fn read_json_body(
    s: &Inner,
    parts: &axum::http::request::Parts,
    body: Body,
) -> Result<Bytes, ApiError> {
    pipeline::json::read_body(&parts.headers, body, s.body_limit, s.max_json_depth)
        .await
        .map_err(|refusal| match refusal {
            BodyRefusal::NotJson => ApiError::UnsupportedMediaType,
            BodyRefusal::TooLarge => ApiError::PayloadTooLarge {
                limit: s.body_limit,
            },
            too_deep @ BodyRefusal::TooDeep(_) => ApiError::Invalid(too_deep.to_string()),
        })
}

async fn receive(
    state: &AppState,
    request: Request,
    admitted: publish::Admitted,
) -> Result<(Response, &'static str), ApiError> {
    let s = &state.inner;
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
        Normalised::Stale => {
            let body = Json(serde_json::json!({"status": "stale"}));
            return Ok(((StatusCode::OK, body).into_response(), "stale"));
        }
    };

    // A replay after JetStream's de-duplication window (or a server restart) is still
    // known to the shared store for the whole replay window.
    if s.already_stored(Ids::Webhooks, &event.id).await {
        tracing::debug!(event_id = %event.id, "webhook event stored before; not published again");
        return Ok((accepted(&event.id, true), "duplicate"));
    }
    let stored = s.store(&event, admitted).await.map_err(|error| {
        let trace_id = event.trace_id.as_deref().unwrap_or("-");
        let reason = error.metric_reason();
        tracing::warn!(%error, reason, event_id = %event.id, trace_id, "event not stored");
        ApiError::Unavailable {
            retry_after_secs: s.retry_after_secs,
        }
    })?;
    // Remembered without holding the answer: a replay in the moment before the write
    // lands is still inside JetStream's de-duplication window.
    let (remembering, event_id) = (state.clone(), event.id.clone());
    tokio::spawn(async move {
        remembering
            .inner
            .remember_stored(Ids::Webhooks, &event_id)
            .await;
    });
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
    Ok((accepted(&event.id, stored.duplicate), outcome))
}

/// The answer to a stored webhook (or one stored before).
fn accepted(event_id: &str, duplicate: bool) -> Response {
    let body = Json(serde_json::json!({
        "status": "accepted",
        "event_id": event_id,
        "duplicate": duplicate,
    }));
    (StatusCode::OK, body).into_response()
}

pub(crate) async fn notify_handler(State(state): State<AppState>, request: Request) -> Response {
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
    let events = plan_notify(
        &body,
        &producer,
        &s.producers_config,
        s.producers.burst(&producer),
        received_at,
        trace_id(&parts.headers),
    )?;
    // A producer's retry of events already stored is answered as a duplicate, without
    // publishing them again or charging for them.
    let stored_before = futures::future::join_all(
        events
            .iter()
            .map(|event| s.already_stored(Ids::Notify, &event.id)),
    )
    .await;
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

    let publishes = events
        .iter()
        .zip(&stored_before)
        .map(|(event, seen)| async {
            if *seen {
                return Ok(publish::Stored { duplicate: true });
            }
            let stored = s.store(event, admitted.clone()).await?;
            s.remember_stored(Ids::Notify, &event.id).await;
            if !stored.duplicate && callbacks::Callbacks::wanted(&s.producers_config, &producer) {
                s.queue_callback(event, &producer).await;
            }
            Ok::<_, crate::StoreEventError>(stored)
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
                let reason = error.metric_reason();
                tracing::warn!(%error, reason, event_id = %event.id, "notify event not stored");
                return Err(ApiError::Unavailable {
                    retry_after_secs: s.retry_after_secs,
                });
            }
        }
    }
    Ok(Json(serde_json::json!({"status": "accepted", "events": accepted})).into_response())
}

/// A producer's request decided before anything is stored or charged: parsed, checked and
/// turned into one event per person, refused when it names more persons than the
/// producer's `burst`.
fn plan_notify(
    body: &[u8],
    producer: &str,
    config: &crate::config::ProducersConfig,
    burst: usize,
    received_at: u64,
    trace_id: Option<String>,
) -> Result<Vec<pipeline::contract::Event>, ApiError> {
    let request: notify::NotifyRequest<'_> =
        pipeline::json::parse(body).map_err(ApiError::Invalid)?;
    let events = notify::events(&request, producer, config, received_at, trace_id)
        .map_err(|e| ApiError::Unprocessable(e.0))?;
    if events.len() > burst {
        return Err(ApiError::Unprocessable(format!(
            "`person_ids` holds more persons than this producer's burst ({burst})"
        )));
    }
    Ok(events)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notify_request_is_planned_into_events_or_refused_before_any_effect() {
        let config = crate::config::tests::one_producer("crm", "k");
        let body =
            br#"{"person_ids":["a","b"],"class":"alert","fcm":{"data":{}},"idempotency_key":"k1"}"#;
        let events = plan_notify(body, "crm", &config, 10, 1_000, Some("t".into())).expect("plan");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].trace_id.as_deref(), Some("t"));
        let over = plan_notify(body, "crm", &config, 1, 1_000, None).expect_err("burst");
        assert!(
            matches!(&over, ApiError::Unprocessable(m) if m.contains("burst (1)")),
            "{over:?}"
        );
        let not_json = plan_notify(b"{", "crm", &config, 10, 1_000, None).expect_err("json");
        assert!(matches!(not_json, ApiError::Invalid(_)), "{not_json:?}");
        let no_one =
            br#"{"person_ids":[],"class":"alert","fcm":{"data":{}},"idempotency_key":"k1"}"#;
        let refused = plan_notify(no_one, "crm", &config, 10, 1_000, None).expect_err("empty");
        assert!(matches!(refused, ApiError::Unprocessable(_)), "{refused:?}");
    }
}
