//! The one error type of the registry's HTTP API: a stable JSON body
//! `{"error":{"code":"…","message":"…"}}`; internals are logged, never echoed.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An API refusal.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or unknown credentials.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Authenticated, but not allowed to do this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// A field is missing or malformed; the message names it.
    #[error("{0}")]
    Invalid(String),
    /// Nothing there.
    #[error("{0}")]
    NotFound(&'static str),
    /// Body too large.
    #[error("request body is too large")]
    PayloadTooLarge,
    /// Not JSON.
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// The person is at the device limit and the app refuses new devices.
    #[error("{0}")]
    DeviceLimit(String),
    /// The token is registered to another person on an app that is not multi-user, and
    /// the caller is that person's rival, not a service.
    #[error(
        "the token is registered to another person; it moves only when that person removes it or an app backend (API key) registers it"
    )]
    TokenHeld,
    /// The client failed to authenticate too often; it may try again after this many
    /// seconds.
    #[error("too many failed authentications from this client; retry later")]
    TooManyFailures(u64),
    /// The app keeps no inbox (`inbox = false`).
    #[error("this app keeps no inbox")]
    NoInbox,
    /// A message id the caller's inbox does not hold, or a report of a message the caller
    /// was not sent; nothing changed.
    #[error("no such message{}", if .0.is_empty() { String::new() } else { format!(" `{}`", .0) })]
    UnknownMessage(String),
    /// Redis failed; details are logged.
    #[error("device store unavailable; retry later")]
    Unavailable,
    /// The store failed: answered like [`ApiError::Unavailable`], the cause logged where
    /// the answer is made ([`IntoResponse`]).
    #[error("device store unavailable; retry later")]
    Store(#[from] crate::store::StoreError),
}

impl ApiError {
    /// Stable code and metric outcome.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Invalid(_) => "invalid",
            ApiError::NotFound(_) => "not_found",
            ApiError::PayloadTooLarge => "too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::DeviceLimit(_) => "device_limit",
            ApiError::TokenHeld => "token_held",
            ApiError::TooManyFailures(_) => "too_many_failures",
            ApiError::NoInbox => "no_inbox",
            ApiError::UnknownMessage(_) => "unknown_message",
            ApiError::Unavailable | ApiError::Store(_) => "unavailable",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) | ApiError::NoInbox | ApiError::UnknownMessage(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::DeviceLimit(_) | ApiError::TokenHeld => StatusCode::CONFLICT,
            ApiError::TooManyFailures(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable | ApiError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(error: redis::RedisError) -> Self {
        ApiError::Store(error.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Store(error) = &self {
            tracing::error!(%error, reason = error.metric_reason(), "device store failed");
        }
        let body = Json(serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        }));
        let retry_after = match self {
            ApiError::Unavailable | ApiError::Store(_) => Some(1),
            ApiError::TooManyFailures(secs) => Some(secs.max(1)),
            _ => None,
        };
        let mut response = (self.status(), body).into_response();
        if let Some(secs) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        response
    }
}
