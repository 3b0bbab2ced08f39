//! The one error type of ingest's HTTP API. Every refusal is a JSON body
//! `{"error":{"code":"…","message":"…"}}` with a stable code; internals are logged, never
//! echoed.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An API refusal.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Signature missing or wrong.
    #[error("{0}")]
    Unauthorized(String),
    /// Body over the limit.
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// Not `application/json`.
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// Malformed or missing fields; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// Well-formed but unacceptable values; the message names the field.
    #[error("{0}")]
    Unprocessable(String),
    /// Nothing the caller may see is known under this id.
    #[error("{0}")]
    NotFound(String),
    /// Over the producer's rate.
    #[error("over this producer's rate; retry after {retry_after_secs} s")]
    TooManyRequests {
        /// Seconds for `Retry-After`.
        retry_after_secs: u64,
    },
    /// More requests in flight than `max_in_flight`: refused before reading the body.
    #[error("ingest is at its limit of requests in flight; retry after {retry_after_secs} s")]
    Overloaded {
        /// Seconds for `Retry-After`.
        retry_after_secs: u64,
    },
    /// The event could not be stored; retry later.
    #[error("the event could not be stored right now; retry later")]
    Unavailable {
        /// Seconds for `Retry-After`.
        retry_after_secs: u64,
    },
    /// Delivery status could not be read (NATS); retry later.
    #[error("delivery status cannot be read right now; retry later")]
    StatusUnavailable {
        /// Seconds for `Retry-After`.
        retry_after_secs: u64,
    },
}

impl ApiError {
    /// The webhook outcome label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::PayloadTooLarge { .. } => "too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Invalid(_) => "invalid",
            ApiError::Unprocessable(_) => "unprocessable",
            ApiError::NotFound(_) => "not_found",
            ApiError::TooManyRequests { .. } => "rate_limited",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::Unavailable { .. } | ApiError::StatusUnavailable { .. } => "unavailable",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unavailable { .. } | ApiError::StatusUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({
            "error": { "code": self.outcome(), "message": self.to_string() }
        }));
        let mut response = (self.status(), body).into_response();
        if let ApiError::Unavailable { retry_after_secs }
        | ApiError::StatusUnavailable { retry_after_secs }
        | ApiError::Overloaded { retry_after_secs }
        | ApiError::TooManyRequests { retry_after_secs } = self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}
