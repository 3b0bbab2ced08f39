//! The Webex side of ringing: the webhook that makes Webex call ingest at all.
//!
//! Webex marks a webhook `inactive` after repeated failed deliveries (ingest down, a
//! certificate problem, a wrong URL) and then sends nothing: no phone rings, and nothing in
//! pushline errs. This module keeps the webhook pushline depends on in shape, through the
//! Webex webhooks API (`GET/POST /v1/webhooks`, `PUT /v1/webhooks/{id}`) at
//! `webex_webhooks.base_url`:
//!
//! - [`ensure`] (`pushctl webhooks ensure`) creates the firehose webhook (`telephony_push`
//!   / `updated` by default) pointing at ingest with pushline's secret, or updates one of
//!   the same name whose URL, secret or status differ;
//! - [`Watchdog`] (in the registry, every `check_interval_secs`) exports
//!   `pushline_webex_webhook_status{name}` (1 active, 0 inactive or missing) and, with
//!   `reactivate = true`, sets an inactive webhook `active` again;
//! - `pushctl webhooks list | reactivate` for operators.

use std::path::PathBuf;
use std::time::Duration;

use pipeline::CancellationToken;
use pipeline::config::{ConfigError, Secret};
use pipeline::metrics::Metrics;
use serde::{Deserialize, Serialize};

/// `[webex_webhooks]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Watch the webhook from the registry (and let `pushctl webhooks` manage it).
    pub enabled: bool,
    /// Webex API base URL.
    pub base_url: String,
    /// The access token of the bot, integration or service app that owns the webhook.
    pub access_token: Option<Secret>,
    /// A file holding it (instead of `access_token`).
    pub access_token_file: Option<PathBuf>,
    /// The webhook's name: how pushline finds its webhook among the owner's.
    pub name: String,
    /// Where Webex delivers: ingest's public URL, `https://…/webhooks/webex`.
    pub target_url: String,
    /// Webex resource (`telephony_push`).
    pub resource: String,
    /// Webex event (`updated`).
    pub event: String,
    /// Optional Webex filter (`personId=…` for per-user webhooks).
    pub filter: Option<String>,
    /// The signing secret: one of ingest's `webex.secrets`.
    pub secret: Option<Secret>,
    /// A file holding it (instead of `secret`).
    pub secret_file: Option<PathBuf>,
    /// How often the registry checks the webhook, seconds.
    pub check_interval_secs: u64,
    /// Set an inactive webhook active again when the check finds it.
    pub reactivate: bool,
    /// Upper bound on one Webex call, milliseconds.
    pub timeout_ms: u64,
    /// Extra CA certificates (PEM) to trust for `base_url`.
    pub ca_files: Vec<PathBuf>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            enabled: false,
            base_url: "https://webexapis.com".into(),
            access_token: None,
            access_token_file: None,
            name: "pushline telephony_push".into(),
            target_url: String::new(),
            resource: "telephony_push".into(),
            event: "updated".into(),
            filter: None,
            secret: None,
            secret_file: None,
            check_interval_secs: 60,
            reactivate: true,
            timeout_ms: 5_000,
            ca_files: Vec::new(),
        }
    }
}

fn secret_from(
    setting: &str,
    inline: &Option<Secret>,
    file: &Option<PathBuf>,
) -> Result<Secret, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(ConfigError::invalid(
            setting,
            "give it inline or as a file, not both",
        )),
        (Some(secret), None) if !secret.expose().is_empty() => Ok(secret.clone()),
        (None, Some(path)) => {
            let secret = pipeline::config::read_secret_file(setting, path)?;
            Ok(Secret::new(secret.expose().trim()))
        }
        _ => Err(ConfigError::invalid(setting, "is required")),
    }
}

/// Largest Webex webhooks API answer read, bytes: a list of 1,000 webhooks is well
/// under it.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// A webhook as the Webex API shows it (the fields pushline reads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    /// Webex's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Where it delivers.
    pub target_url: String,
    /// Resource.
    pub resource: String,
    /// Event.
    pub event: String,
    /// Filter, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// `active` or `inactive`.
    pub status: String,
}

/// A Webex webhooks API client for one configuration.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Secret,
    secret: Secret,
    config: WebhooksConfig,
}

/// What [`ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// Created, with this id.
    Created(String),
    /// An existing webhook was updated (URL, secret or status).
    Updated(String),
}

impl Client {
    /// A client for `config` (the token and secret are read here).
    pub fn new(config: &WebhooksConfig) -> Result<Self, ConfigError> {
        crate::config::check_base_url("webex_webhooks.base_url", &config.base_url)?;
        if !config.target_url.starts_with("https://") && !config.target_url.starts_with("http://") {
            return Err(ConfigError::invalid(
                "webex_webhooks.target_url",
                "must be ingest's public URL, https://…/webhooks/webex",
            ));
        }
        if config.name.trim().is_empty() || config.name.len() > 128 {
            return Err(ConfigError::invalid(
                "webex_webhooks.name",
                "must be 1 to 128 characters",
            ));
        }
        if !(1..=86_400).contains(&config.check_interval_secs) {
            return Err(ConfigError::invalid(
                "webex_webhooks.check_interval_secs",
                "must be 1 to 86400",
            ));
        }
        let token = secret_from(
            "webex_webhooks.access_token",
            &config.access_token,
            &config.access_token_file,
        )?;
        let secret = secret_from("webex_webhooks.secret", &config.secret, &config.secret_file)?;
        // The shared builder follows no redirects (`provider_http::no_redirects`): the
        // access token goes to `base_url` and nowhere a 3xx points.
        let options = pipeline::provider_http::ClientOptions {
            ca_files: config.ca_files.clone(),
            request_timeout: Duration::from_millis(config.timeout_ms.max(1)),
            ca_setting: "webex_webhooks.ca_files",
        };
        Ok(Client {
            http: pipeline::provider_http::negotiating_client(&options)?,
            base: format!("{}/v1/webhooks", config.base_url.trim_end_matches('/')),
            token,
            secret,
            config: config.clone(),
        })
    }

    async fn call(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<serde_json::Value, String> {
        let response = request
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        let status = response.status();
        let body = pipeline::provider_http::read_bounded(response, MAX_ANSWER)
            .await
            .map_err(|error| match error {
                pipeline::provider_http::BodyError::Transfer(e) => {
                    format!("{what}: unreadable answer: {}", e.without_url())
                }
                too_long => format!("{what}: {too_long}"),
            })?;
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_default();
            return Err(format!("{what}: Webex answered {status} {message}"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("{what}: not JSON: {e}"))
    }

    /// Every webhook the token's owner has.
    pub async fn list(&self) -> Result<Vec<Webhook>, String> {
        let answer = self
            .call(
                self.http.get(&self.base).query(&[("max", "1000")]),
                "list webhooks",
            )
            .await?;
        serde_json::from_value(answer["items"].clone())
            .map_err(|e| format!("list webhooks: unexpected answer: {e}"))
    }

    /// pushline's webhook (by name), if it exists.
    pub async fn find(&self) -> Result<Option<Webhook>, String> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .find(|w| w.name == self.config.name))
    }

    fn body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({
            "name": self.config.name,
            "targetUrl": self.config.target_url,
            "secret": self.secret.expose(),
        });
        if let Some(filter) = &self.config.filter {
            body["filter"] = filter.clone().into();
        }
        body
    }

    /// Sets `webhook` active, with pushline's URL and secret.
    pub async fn reactivate(&self, webhook: &Webhook) -> Result<(), String> {
        let mut body = self.body();
        body["status"] = "active".into();
        self.call(
            self.http
                .put(format!("{}/{}", self.base, webhook.id))
                .json(&body),
            "update webhook",
        )
        .await
        .map(|_| ())
    }

    /// Creates pushline's webhook, or brings the one of the same name up to date and
    /// active (the secret is always rewritten: Webex does not show it back).
    pub async fn ensure(&self) -> Result<Ensured, String> {
        match self.find().await? {
            Some(existing) => {
                if existing.resource != self.config.resource || existing.event != self.config.event
                {
                    return Err(format!(
                        "webhook `{}` exists for {}/{}, not {}/{}: rename one of them",
                        existing.name,
                        existing.resource,
                        existing.event,
                        self.config.resource,
                        self.config.event
                    ));
                }
                self.reactivate(&existing).await?;
                Ok(Ensured::Updated(existing.id))
            }
            None => {
                let mut body = self.body();
                body["resource"] = self.config.resource.clone().into();
                body["event"] = self.config.event.clone().into();
                let created = self
                    .call(self.http.post(&self.base).json(&body), "create webhook")
                    .await?;
                Ok(Ensured::Created(
                    created["id"].as_str().unwrap_or_default().to_owned(),
                ))
            }
        }
    }

    /// One watchdog round: the webhook's state, exported, and reactivated if allowed.
    pub async fn check(&self, metrics: &Metrics) -> Result<(), String> {
        let gauge = metrics
            .webex_webhook_status
            .with_label_values(&[&self.config.name]);
        let found = self.find().await;
        let checks = |outcome: &str| {
            metrics
                .webex_webhook_checks
                .with_label_values(&[outcome])
                .inc();
        };
        let webhook = match found {
            Ok(webhook) => webhook,
            Err(error) => {
                checks("failed");
                return Err(error);
            }
        };
        checks("ok");
        match webhook {
            None => {
                gauge.set(0);
                Err(format!(
                    "Webex has no webhook named `{}`: nothing rings until it exists (pushctl webhooks ensure)",
                    self.config.name
                ))
            }
            Some(w) if w.status == "active" => {
                gauge.set(1);
                Ok(())
            }
            Some(w) => {
                gauge.set(0);
                if !self.config.reactivate {
                    return Err(format!(
                        "webhook `{}` is {}: Webex sends nothing (pushctl webhooks reactivate)",
                        w.name, w.status
                    ));
                }
                self.reactivate(&w).await?;
                metrics
                    .webex_webhook_reactivations
                    .with_label_values(&[&self.config.name])
                    .inc();
                gauge.set(1);
                tracing::warn!(name = %w.name, id = %w.id, "Webex webhook was {}; reactivated", w.status);
                Ok(())
            }
        }
    }
}

/// The registry's periodic check of the webhook.
pub struct Watchdog {
    client: Client,
    interval: Duration,
    metrics: Metrics,
}

impl Watchdog {
    /// A watchdog for `config` (`None` when disabled).
    pub fn new(config: &WebhooksConfig, metrics: Metrics) -> Result<Option<Self>, ConfigError> {
        if !config.enabled {
            return Ok(None);
        }
        Ok(Some(Watchdog {
            client: Client::new(config)?,
            interval: Duration::from_secs(config.check_interval_secs),
            metrics,
        }))
    }

    /// Checks at once and then every interval, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if let Err(error) = self.client.check(&self.metrics).await {
                tracing::error!(%error, "Webex webhook check");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
    }
}
