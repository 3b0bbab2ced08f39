//! A mock Webex people API: `GET /v1/people/me` answers the person owning the bearer
//! access token, 401 for unknown tokens, or 503 while "down". Plain HTTP on loopback.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use pipeline::CancellationToken;

#[derive(Default)]
struct People {
    tokens: Mutex<HashMap<String, String>>,
    down: AtomicBool,
    calls: AtomicU64,
}

/// A running mock; stops when dropped.
pub struct MockWebexPeople {
    addr: SocketAddr,
    people: Arc<People>,
    shutdown: CancellationToken,
}

impl Drop for MockWebexPeople {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn me(State(people): State<Arc<People>>, headers: HeaderMap) -> Response {
    people.calls.fetch_add(1, Ordering::Relaxed);
    if people.down.load(Ordering::Relaxed) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let person = token.and_then(|t| people.tokens.lock().ok()?.get(t).cloned());
    match person {
        Some(id) => Json(serde_json::json!({"id": id, "emails": ["someone@example.com"], "displayName": "Someone"})).into_response(),
        None => (StatusCode::UNAUTHORIZED, Json(serde_json::json!({"message": "The request requires a valid access token."}))).into_response(),
    }
}

impl MockWebexPeople {
    /// Starts on a free loopback port.
    pub async fn start() -> Self {
        let people = Arc::new(People::default());
        let app = Router::new()
            .route("/v1/people/me", get(me))
            .with_state(people.clone());
        let (addr, shutdown) = super::serve_loopback(app).await;
        MockWebexPeople {
            addr,
            people,
            shutdown,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Makes `token` an access token of `person_id`.
    pub fn grant(&self, token: &str, person_id: &str) {
        self.people
            .tokens
            .lock()
            .expect("lock")
            .insert(token.into(), person_id.into());
    }

    /// Makes the API answer 503 (or answer again).
    pub fn set_down(&self, down: bool) {
        self.people.down.store(down, Ordering::Relaxed);
    }

    /// How many times it was asked.
    pub fn calls(&self) -> u64 {
        self.people.calls.load(Ordering::Relaxed)
    }
}
