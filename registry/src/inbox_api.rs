//! The inbox and receipt HTTP API (documented in `docs/registry-api.md` and
//! `docs/inapp.md`). Every route is a person's own: the caller is the person their
//! credential proves (a Webex access token or the deployment's JWT); API keys are
//! refused, since an inbox is read by the person, not for them.
//!
//! - `GET /v1/inbox/{app}[?limit=&cursor=&unread_only=]`: a page, newest first.
//! - `GET /v1/inbox/{app}/unread`: the unread count.
//! - `POST /v1/inbox/{app}/read`, `…/unread`, `…/delete`: a change to `ids`, `up_to` a
//!   message, or `all`.
//! - `DELETE /v1/inbox/{app}/messages/{id}`: one message.
//! - `POST /v1/receipts`: a receipt or an action of one of the caller's devices.

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use pipeline::contract::now_ms;
use serde::Deserialize;

use crate::api::JsonBody;
use crate::auth::Client;
use crate::error::ApiError;
use crate::inbox::{Change, InboxError, Op, PageQuery, Retention, Select, Selection};
use crate::receipts::{Kind, ReceiptError, Report};
use crate::{AppState, validate};

/// The inbox and receipt routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/inbox/{app}", get(list))
        .route("/v1/inbox/{app}/unread", get(unread))
        .route("/v1/inbox/{app}/read", post(mark_read))
        .route("/v1/inbox/{app}/unread", post(mark_unread))
        .route("/v1/inbox/{app}/delete", post(delete_selected))
        .route("/v1/inbox/{app}/messages/{id}", delete(delete_one))
        .route("/v1/receipts", post(receipt))
}

/// `GET /v1/inbox/{app}` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page size, 1 to 100 (20).
    #[serde(default)]
    pub limit: Option<u64>,
    /// Where the page starts (the previous page's `next_cursor`).
    #[serde(default)]
    pub cursor: Option<String>,
    /// Only unread messages.
    #[serde(default)]
    pub unread_only: Option<bool>,
}

/// `POST /v1/receipts` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptBody {
    /// The message (its event id).
    pub event_id: String,
    /// The app of the reporting device.
    pub app: String,
    /// The reporting device (its registrations' `device_id`).
    pub device_id: String,
    /// `delivered`, `read` or `action`.
    pub kind: Kind,
    /// The action's id (`action` only).
    #[serde(default)]
    pub action: Option<String>,
    /// The user's short reply (`action` only).
    #[serde(default)]
    pub reply: Option<String>,
}

impl From<InboxError> for ApiError {
    fn from(error: InboxError) -> Self {
        match error {
            InboxError::UnknownMessage(id) => ApiError::UnknownMessage(id),
            InboxError::Redis(error) => ApiError::from(error),
        }
    }
}

impl From<ReceiptError> for ApiError {
    fn from(error: ReceiptError) -> Self {
        match error {
            ReceiptError::Invalid(why) => ApiError::Invalid(why),
            ReceiptError::UnknownMessage => ApiError::UnknownMessage(String::new()),
            ReceiptError::Unavailable(why) => {
                tracing::error!(error = %why, "a receipt could not be checked");
                ApiError::Unavailable
            }
        }
    }
}

/// The caller, who must be a person, and the app's inbox retention (`no_inbox` when the
/// app keeps none).
async fn caller(
    state: &AppState,
    headers: &HeaderMap,
    client: Client,
    app: &str,
) -> Result<(String, Retention), ApiError> {
    let principal = state.auth.authenticate(headers, client).await?;
    let person = principal.person().ok_or(ApiError::Forbidden(
        "an inbox is its person's: authenticate as the person (API keys are refused)",
    ))?;
    // Inboxes are kept under the canonical id, as the fan-out names the event's person.
    let person = crate::person::canonical(person)
        .map_err(|_| ApiError::Forbidden("this credential's person has no inbox"))?
        .into_owned();
    validate::app("app", app).map_err(ApiError::Invalid)?;
    let retention = state.devices.policy(app).inbox().ok_or(ApiError::NoInbox)?;
    Ok((person, retention))
}

fn counted<T: IntoResponse>(state: &AppState, op: &str, result: Result<T, ApiError>) -> Response {
    let outcome = match &result {
        Ok(_) => "ok",
        Err(error) => error.code(),
    };
    state
        .metrics
        .inbox_operations
        .with_label_values(&[op, "http", outcome])
        .inc();
    match result {
        Ok(ok) => ok.into_response(),
        Err(error) => error.into_response(),
    }
}

async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: Client,
    Path(app): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let result = async {
        let (person, _) = caller(&state, &headers, client, &app).await?;
        let Query(query) =
            query.map_err(|e| ApiError::Invalid(format!("query: {}", e.body_text())))?;
        let query = PageQuery::parse(
            query.limit,
            query.cursor.as_deref(),
            query.unread_only.unwrap_or(false),
        )
        .map_err(ApiError::Invalid)?;
        let page = state.inbox.list(&person, &app, &query, now_ms()).await?;
        Ok(Json(page))
    }
    .await;
    counted(&state, "list", result)
}

async fn unread(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: Client,
    Path(app): Path<String>,
) -> Response {
    let result = async {
        let (person, _) = caller(&state, &headers, client, &app).await?;
        let unread = state.inbox.unread(&person, &app, now_ms()).await?;
        Ok(Json(serde_json::json!({ "unread": unread })))
    }
    .await;
    counted(&state, "count", result)
}

/// Applies `op` to what the caller selected and tells the person's connections.
async fn change(
    state: &AppState,
    headers: &HeaderMap,
    client: Client,
    app: &str,
    op: Op,
    select: Result<Select, ApiError>,
) -> Result<Json<crate::inbox::Changed>, ApiError> {
    let (person, _) = caller(state, headers, client, app).await?;
    let select = select?;
    let changed = state
        .inbox
        .change(&person, app, op, &select, now_ms())
        .await?;
    if changed.changed > 0 {
        let notice = Change::of(app, op, &select, changed.unread);
        state.inbox_notices.announce(&person, &notice).await;
    }
    Ok(Json(changed))
}

fn selection(body: Result<JsonBody<Selection>, ApiError>) -> Result<Select, ApiError> {
    let JsonBody(selection) = body?;
    selection.parse().map_err(ApiError::Invalid)
}

async fn mark_read(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: Client,
    Path(app): Path<String>,
    body: Result<JsonBody<Selection>, ApiError>,
) -> Response {
    let result = change(&state, &headers, client, &app, Op::Read, selection(body)).await;
    counted(&state, "read", result)
}

async fn mark_unread(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: Client,
    Path(app): Path<String>,
    body: Result<JsonBody<Selection>, ApiError>,
) -> Response {
    let result = change(&state, &headers, client, &app, Op::Unread, selection(body)).await;
    counted(&state, "unread", result)
}

async fn delete_selected(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: Client,
    Path(app): Path<String>,
    body: Result<JsonBody<Selection>, ApiError>,
) -> Response {
    let result = change(&state, &headers, client, &app, Op::Deleted, selection(body)).await;
    counted(&state, "delete", result)
}

async fn delete_one(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: Client,
    Path((app, id)): Path<(String, String)>,
) -> Response {
    let select = crate::inbox::check_id("id", &id)
        .map(|()| Select::Ids(vec![id.clone()]))
        .map_err(ApiError::Invalid);
    let result = change(&state, &headers, client, &app, Op::Deleted, select)
        .await
        .map(|_| StatusCode::NO_CONTENT);
    counted(&state, "delete", result)
}

async fn receipt(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: Client,
    body: Result<JsonBody<ReceiptBody>, ApiError>,
) -> Response {
    let result = async {
        let principal = state.auth.authenticate(&headers, client).await?;
        let person = principal.person().ok_or(ApiError::Forbidden(
            "a receipt is its person's: authenticate as the person (API keys are refused)",
        ))?;
        let JsonBody(body) = body?;
        validate::app("app", &body.app).map_err(ApiError::Invalid)?;
        validate::device_id("device_id", &body.device_id).map_err(ApiError::Invalid)?;
        let report = Report {
            event_id: body.event_id,
            kind: body.kind,
            action: body.action,
            reply: body.reply,
        };
        state
            .receipts
            .report(person, &body.app, &body.device_id, &report, "http")
            .await?;
        Ok::<_, ApiError>((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "recorded": true })),
        ))
    }
    .await;
    match result {
        Ok(ok) => ok.into_response(),
        Err(error) => error.into_response(),
    }
}
