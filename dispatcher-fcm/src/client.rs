//! The FCM provider: per project a small pool of persistent HTTP/2 connections and a
//! cached OAuth2 access token; one `messages:send` per push.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pipeline::admin::BoxFuture;
use pipeline::config::ConfigError;
use pipeline::contract::{PushJob, now_ms};
use pipeline::dispatch::{Provider, Verdict};
use pipeline::provider_http::{self, ClientOptions};

use crate::config::FcmConfig;
use crate::message;
use crate::oauth::{ServiceAccount, TokenSource};
use crate::spec::FcmPart;
use crate::verdict::{ErrorBody, classify, no_access_token};

/// One configured project: its send URL, access tokens and connections.
pub struct Project {
    /// The send URL, parsed once.
    url: reqwest::Url,
    tokens: TokenSource,
    clients: Vec<reqwest::Client>,
    next: AtomicUsize,
}

/// The FCM provider for every configured project.
pub struct FcmProvider {
    projects: HashMap<String, Project>,
}

impl FcmProvider {
    /// Loads every project's service account and builds its connections.
    pub fn new(config: &FcmConfig) -> Result<Self, ConfigError> {
        let options = ClientOptions {
            ca_files: config.ca_files.clone(),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            ca_setting: "fcm.ca_files",
        };
        let token_http = provider_http::negotiating_client(&options)?;
        let base = provider_http::base_url("fcm.base_url", &config.base_url)?;
        let mut projects = HashMap::new();
        for (i, p) in config.projects.iter().enumerate() {
            let setting = format!("fcm.projects[{i}].service_account_file");
            let account = ServiceAccount::from_bytes(&setting, &p.service_account(i)?)?;
            let id = p
                .project_id
                .clone()
                .or_else(|| account.project_id.clone())
                .ok_or_else(|| {
                    ConfigError::invalid(
                        format!("fcm.projects[{i}].project_id"),
                        "is not set and the key file has none",
                    )
                })?;
            let tokens = TokenSource::new(
                &setting,
                account,
                token_http.clone(),
                Duration::from_secs(config.token_refresh_margin_secs),
            )?;
            let clients = (0..config.connections)
                .map(|_| provider_http::client(&options, None))
                .collect::<Result<Vec<_>, _>>()?;
            projects.insert(
                id.clone(),
                Project {
                    url: provider_http::with_path(&base, &["v1", "projects", &id, "messages:send"]),
                    tokens,
                    clients,
                    next: AtomicUsize::new(0),
                },
            );
        }
        Ok(FcmProvider { projects })
    }

    async fn post(
        &self,
        project: &Project,
        bearer: &str,
        body: String,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let i = project.next.fetch_add(1, Ordering::Relaxed) % project.clients.len();
        project.clients[i]
            .post(project.url.clone())
            .bearer_auth(bearer)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
    }

    async fn classify_response(response: reqwest::Response) -> (u16, Verdict) {
        let (status, retry_after, body): (u16, _, ErrorBody) =
            provider_http::error_answer(response).await;
        (status, classify(status, &body, retry_after))
    }
}

/// No access token: see [`no_access_token`].
fn oauth_failed(error: &crate::oauth::OAuthError) -> Verdict {
    no_access_token(error.refused(), error.to_string())
}

/// An accepted message, with the name FCM gave it (`projects/…/messages/…`). The body is
/// read for it; a body that is not the documented answer still means accepted.
async fn delivered(response: reqwest::Response) -> Verdict {
    #[derive(serde::Deserialize)]
    struct Accepted {
        name: String,
    }
    let id =
        pipeline::provider_http::read_bounded(response, pipeline::provider_http::MAX_ERROR_BODY)
            .await
            .ok()
            .and_then(|body| serde_json::from_slice::<Accepted>(&body).ok())
            .map(|accepted| accepted.name);
    Verdict::Delivered { id }
}

fn transport_error(error: &reqwest::Error) -> Verdict {
    pipeline::provider_http::transport_verdict("FCM", error)
}

impl Provider for FcmProvider {
    const NAME: &'static str = crate::spec::NAME;
    type Part = FcmPart;

    fn probe_credentials(&self) -> BoxFuture<'_, Vec<(String, Option<bool>)>> {
        // A fresh access token from Google's token server: refused for a deleted service
        // account or a revoked key.
        Box::pin(async move {
            let mut results = Vec::new();
            for (id, project) in &self.projects {
                let valid = match project.tokens.fetch_new().await {
                    Ok(()) => Some(true),
                    Err(error) if error.refused() => Some(false),
                    Err(_) => None,
                };
                results.push((id.clone(), valid));
            }
            results
        })
    }

    type Route = Project;

    fn route(&self, job: &PushJob<FcmPart>) -> Option<&Project> {
        self.projects.get(&job.app)
    }

    async fn send(&self, project: &Project, job: &PushJob<FcmPart>) -> Verdict {
        let body = match message::body(
            &job.token,
            &job.part,
            job.deadline_ms.saturating_sub(now_ms()),
        ) {
            Ok(body) => body,
            Err(problem) => {
                return Verdict::reject("invalid_data", problem);
            }
        };
        let bearer = match project.tokens.token().await {
            Ok(token) => token,
            Err(error) => return oauth_failed(&error),
        };
        let response = match self.post(project, &bearer, body.clone()).await {
            Ok(response) => response,
            Err(error) => return transport_error(&error),
        };
        if response.status().is_success() {
            return delivered(response).await;
        }
        let (status, verdict) = Self::classify_response(response).await;
        if status != 401 || matches!(verdict, Verdict::Reject { .. }) {
            return verdict;
        }
        // Our access token was refused: renew once and resend.
        let renewed = match project.tokens.renew(&bearer).await {
            Ok(token) => token,
            Err(error) => return oauth_failed(&error),
        };
        match self.post(project, &renewed, body).await {
            Ok(response) if response.status().is_success() => delivered(response).await,
            Ok(response) => Self::classify_response(response).await.1,
            Err(error) => transport_error(&error),
        }
    }

    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            for (id, project) in &self.projects {
                project
                    .tokens
                    .token()
                    .await
                    .map_err(|e| format!("FCM project {id}: {e}"))?;
            }
            Ok(())
        })
    }
}
