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
    /// Redis failed; details are logged.
    #[error("device store unavailable; retry later")]
    Unavailable,
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
            ApiError::Unavailable => "unavailable",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::DeviceLimit(_) => StatusCode::CONFLICT,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(error: redis::RedisError) -> Self {
        tracing::error!(%error, "redis error");
        ApiError::Unavailable
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        }));
        let mut response = (self.status(), body).into_response();
        if matches!(self, ApiError::Unavailable) {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(1),
            );
        }
        response
    }
}
