//! A mock of the Webex webhooks API (`GET/POST /v1/webhooks`, `PUT /v1/webhooks/{id}`) for
//! one owner's access token, keeping webhooks in memory like Webex does: a test can mark
//! one `inactive`, as Webex does after failed deliveries, and read back what pushline set
//! (secrets included, which the real API does not show). Plain HTTP on loopback.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use pipeline::CancellationToken;
use serde_json::{Value, json};

/// A webhook as the mock keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Hook {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Target URL.
    pub target_url: String,
    /// Resource.
    pub resource: String,
    /// Event.
    pub event: String,
    /// Secret (`None` when created without one, as the Webex sample server does).
    pub secret: Option<String>,
    /// `active` or `inactive`.
    pub status: String,
}

struct Api {
    token: String,
    hooks: Mutex<Vec<Hook>>,
    next: Mutex<u64>,
}

/// A running mock; stops when dropped.
pub struct MockWebexWebhooks {
    addr: SocketAddr,
    api: Arc<Api>,
    shutdown: CancellationToken,
}

impl Drop for MockWebexWebhooks {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `None` for the owner's token, else the 401 Webex answers.
fn refused(api: &Api, headers: &HeaderMap) -> Option<Response> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer == Some(api.token.as_str()) {
        return None;
    }
    Some(
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "The request requires a valid access token."})),
        )
            .into_response(),
    )
}

fn shown(hook: &Hook) -> Value {
    json!({
        "id": hook.id, "name": hook.name, "targetUrl": hook.target_url,
        "resource": hook.resource, "event": hook.event, "status": hook.status,
        "created": "2026-12-01T00:00:00.000Z",
    })
}

fn text(body: &Value, field: &str) -> Option<String> {
    body[field].as_str().map(str::to_owned)
}

async fn list(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refused(&api, &headers) {
        return refusal;
    }
    let hooks = api.hooks.lock().expect("hooks");
    Json(json!({"items": hooks.iter().map(shown).collect::<Vec<_>>()})).into_response()
}

async fn create(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(refusal) = refused(&api, &headers) {
        return refusal;
    }
    let (Some(name), Some(target_url), Some(resource), Some(event)) = (
        text(&body, "name"),
        text(&body, "targetUrl"),
        text(&body, "resource"),
        text(&body, "event"),
    ) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"message": "name, targetUrl, resource and event are required"})),
        )
            .into_response();
    };
    let id = {
        let mut next = api.next.lock().expect("next");
        *next += 1;
        format!("webhook-{next}")
    };
    let hook = Hook {
        id,
        name,
        target_url,
        resource,
        event,
        secret: text(&body, "secret"),
        status: "active".into(),
    };
    let answer = shown(&hook);
    api.hooks.lock().expect("hooks").push(hook);
    (StatusCode::OK, Json(answer)).into_response()
}

async fn update(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(refusal) = refused(&api, &headers) {
        return refusal;
    }
    let mut hooks = api.hooks.lock().expect("hooks");
    let Some(hook) = hooks.iter_mut().find(|h| h.id == id) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"message": "The requested resource could not be found."})),
        )
            .into_response();
    };
    let (Some(name), Some(target_url)) = (text(&body, "name"), text(&body, "targetUrl")) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"message": "name and targetUrl are required"})),
        )
            .into_response();
    };
    hook.name = name;
    hook.target_url = target_url;
    if let Some(secret) = text(&body, "secret") {
        hook.secret = Some(secret);
    }
    if let Some(status) = text(&body, "status") {
        hook.status = status;
    }
    Json(shown(hook)).into_response()
}

impl MockWebexWebhooks {
    /// Starts on a free loopback port, answering the owner of `token`.
    pub async fn start(token: &str) -> Self {
        let api = Arc::new(Api {
            token: token.to_owned(),
            hooks: Mutex::new(Vec::new()),
            next: Mutex::new(0),
        });
        let app = Router::new()
            .route("/v1/webhooks", get(list).post(create))
            .route("/v1/webhooks/{id}", put(update))
            .with_state(api.clone());
        let (addr, shutdown) = super::serve_loopback(app).await;
        MockWebexWebhooks {
            addr,
            api,
            shutdown,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every webhook, as kept.
    pub fn hooks(&self) -> Vec<Hook> {
        self.api.hooks.lock().expect("hooks").clone()
    }

    /// Sets a webhook's status, as Webex does after failed deliveries.
    pub fn set_status(&self, id: &str, status: &str) {
        for hook in self.api.hooks.lock().expect("hooks").iter_mut() {
            if hook.id == id {
                hook.status = status.to_owned();
            }
        }
    }
}
