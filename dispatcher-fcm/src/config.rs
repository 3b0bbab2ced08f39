//! FCM dispatcher configuration (`PUSHLINE_<SECTION>__<KEY>` for every field).

use std::net::SocketAddr;
use std::path::PathBuf;

use pipeline::config::{
    ConfigError, NatsConfig, Secret, TelemetryConfig, WorkerConfig, credential_bytes, parse_addr,
};
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Admin address for `/metrics`, `/healthz`, `/readyz`.
    pub admin_listen: String,
    /// FCM.
    pub fcm: FcmConfig,
    /// NATS connection and stream layout.
    pub nats: NatsConfig,
    /// The `dispatch-fcm` consumer.
    pub worker: WorkerConfig,
    /// Mass-pruning protection (`[prune_guard]`).
    pub prune_guard: pipeline::prune_guard::PruneGuardConfig,
    /// Logs.
    pub telemetry: TelemetryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin_listen: "127.0.0.1:9083".into(),
            fcm: FcmConfig::default(),
            nats: NatsConfig::default(),
            worker: WorkerConfig {
                concurrency: 512,
                ..WorkerConfig::default()
            },
            prune_guard: Default::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

/// `[fcm]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FcmConfig {
    /// FCM HTTP v1 endpoint.
    pub base_url: String,
    /// Extra CA certificates (PEM) to trust, e.g. a local mock's.
    pub ca_files: Vec<PathBuf>,
    /// Persistent HTTP/2 connections per project.
    pub connections: usize,
    /// Upper bound on one request, milliseconds.
    pub request_timeout_ms: u64,
    /// Refresh an access token this many seconds before it expires.
    pub token_refresh_margin_secs: u64,
    /// How often every app's credential is checked with the provider, seconds (0: only
    /// by the answers to real pushes).
    pub credential_check_secs: u64,
    /// The Firebase projects this deployment sends for.
    pub projects: Vec<ProjectConfig>,
}

impl Default for FcmConfig {
    fn default() -> Self {
        FcmConfig {
            base_url: "https://fcm.googleapis.com".into(),
            ca_files: Vec::new(),
            connections: 2,
            request_timeout_ms: 5_000,
            token_refresh_margin_secs: 300,
            credential_check_secs: 300,
            projects: Vec::new(),
        }
    }
}

/// One Firebase project (`[[fcm.projects]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// Project id; defaults to the service account's `project_id`.
    #[serde(default)]
    pub project_id: Option<String>,
    /// The service-account key file (JSON) with `client_email`, `private_key`, `token_uri`.
    #[serde(default)]
    pub service_account_file: Option<PathBuf>,
    /// The key file's bytes as base64, instead of `service_account_file`.
    #[serde(default)]
    pub service_account_base64: Option<Secret>,
}

impl ProjectConfig {
    /// The service-account key file's bytes, from either setting (exactly one).
    pub fn service_account(&self, i: usize) -> Result<Vec<u8>, ConfigError> {
        let (file, inline) = (
            format!("fcm.projects[{i}].service_account_file"),
            format!("fcm.projects[{i}].service_account_base64"),
        );
        credential_bytes(
            &file,
            self.service_account_file.as_deref(),
            &inline,
            self.service_account_base64.as_ref(),
        )?
        .ok_or_else(|| ConfigError::invalid(file, "is required (or service_account_base64)"))
    }
}

impl Config {
    /// Validates every setting, naming the one at fault.
    pub fn resolve(&self) -> Result<SocketAddr, ConfigError> {
        let admin = parse_addr("admin_listen", &self.admin_listen)?;
        self.nats.validate()?;
        self.worker.validate("worker")?;
        self.prune_guard.validate()?;
        if !self.fcm.base_url.starts_with("https://") {
            return Err(ConfigError::invalid(
                "fcm.base_url",
                "must be an https:// URL",
            ));
        }
        if !(1..=64).contains(&self.fcm.connections) {
            return Err(ConfigError::invalid("fcm.connections", "must be 1 to 64"));
        }
        if self.fcm.request_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "fcm.request_timeout_ms",
                "must be positive",
            ));
        }
        if self.fcm.token_refresh_margin_secs >= 3_000 {
            return Err(ConfigError::invalid(
                "fcm.token_refresh_margin_secs",
                "must be below 3000 (tokens live an hour)",
            ));
        }
        if self.fcm.projects.is_empty() {
            return Err(ConfigError::invalid(
                "fcm.projects",
                "is empty: configure at least one project",
            ));
        }
        Ok(admin)
    }
}
