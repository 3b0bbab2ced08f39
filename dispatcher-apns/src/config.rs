//! APNs dispatcher configuration (`PUSHLINE_<SECTION>__<KEY>` for every field).

use std::net::SocketAddr;
use std::path::PathBuf;

use pipeline::config::{
    ConfigError, NatsConfig, Secret, TelemetryConfig, WorkerConfig, credential_bytes, parse_addr,
};
use pipeline::contract::Environment;

use crate::certificate::ClientCertificate;
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Admin address for `/metrics`, `/healthz`, `/readyz`.
    pub admin_listen: String,
    /// APNs.
    pub apns: ApnsConfig,
    /// NATS connection and stream layout.
    pub nats: NatsConfig,
    /// The `dispatch-apns` consumer.
    pub worker: WorkerConfig,
    /// Mass-pruning protection (`[prune_guard]`).
    pub prune_guard: pipeline::prune_guard::PruneGuardConfig,
    /// Logs.
    pub telemetry: TelemetryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin_listen: "127.0.0.1:9082".into(),
            apns: ApnsConfig::default(),
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

/// `[apns]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApnsConfig {
    /// Production endpoint.
    pub production_url: String,
    /// Sandbox (development) endpoint.
    pub sandbox_url: String,
    /// Extra CA certificates (PEM) to trust, e.g. a local mock's.
    pub ca_files: Vec<PathBuf>,
    /// Persistent HTTP/2 connections per app and environment.
    pub connections: usize,
    /// Upper bound on one request, milliseconds.
    pub request_timeout_ms: u64,
    /// Provider-token lifetime before re-signing, seconds: Apple accepts 20 to 60 minutes.
    /// `iat` is aligned to multiples of it so every replica presents the same token.
    pub token_refresh_secs: u64,
    /// How often every app's credential is checked with the provider, seconds (0: only
    /// by the answers to real pushes).
    pub credential_check_secs: u64,
    /// The apps this deployment sends for.
    pub apps: Vec<AppConfig>,
}

impl Default for ApnsConfig {
    fn default() -> Self {
        ApnsConfig {
            production_url: "https://api.push.apple.com".into(),
            sandbox_url: "https://api.sandbox.push.apple.com".into(),
            ca_files: Vec::new(),
            connections: 2,
            request_timeout_ms: 5_000,
            token_refresh_secs: 30 * 60,
            credential_check_secs: 300,
            apps: Vec::new(),
        }
    }
}

/// One app (`[[apns.apps]]`): token auth (`team_id` + `key_id` + `key_file`) or
/// certificate auth (`certificate_file` + `certificate_key_file` in PEM, or a PKCS#12
/// `certificate_file` + `certificate_password`); each file can be given inline as base64
/// instead (`key_base64`, `certificate_base64`, `certificate_key_base64`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// Bundle id; VoIP pushes go to topic `<bundle_id>.voip`.
    pub bundle_id: String,
    /// Environments to serve (default both).
    #[serde(default = "both_environments")]
    pub environments: Vec<Environment>,
    /// Apple team id (JWT `iss`).
    #[serde(default)]
    pub team_id: Option<String>,
    /// Key id of the `.p8` key (JWT `kid`).
    #[serde(default)]
    pub key_id: Option<String>,
    /// The `.p8` signing key (PKCS#8 PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The `.p8` file's bytes as base64, instead of `key_file`.
    #[serde(default)]
    pub key_base64: Option<Secret>,
    /// Client certificate, for certificate auth: PEM, or PKCS#12 (`.p12`, key included).
    #[serde(default)]
    pub certificate_file: Option<PathBuf>,
    /// The certificate file's bytes as base64, instead of `certificate_file`.
    #[serde(default)]
    pub certificate_base64: Option<String>,
    /// Its private key (PEM); not with a PKCS#12 certificate, which holds its key.
    #[serde(default)]
    pub certificate_key_file: Option<PathBuf>,
    /// The private key file's bytes as base64, instead of `certificate_key_file`.
    #[serde(default)]
    pub certificate_key_base64: Option<Secret>,
    /// The password of a PKCS#12 `certificate_file` (absent: the empty password).
    #[serde(default)]
    pub certificate_password: Option<Secret>,
}

impl AppConfig {
    /// The `.p8` key (PEM bytes), from `key_file` or `key_base64`.
    pub fn key(&self, i: usize) -> Result<Option<Vec<u8>>, ConfigError> {
        credential_bytes(
            &format!("apns.apps[{i}].key_file"),
            self.key_file.as_deref(),
            &format!("apns.apps[{i}].key_base64"),
            self.key_base64.as_ref(),
        )
    }

    /// The client certificate (PEM bytes), from `certificate_file` or `certificate_base64`.
    pub fn certificate(&self, i: usize) -> Result<Option<Vec<u8>>, ConfigError> {
        let inline = self.certificate_base64.clone().map(Secret::new);
        credential_bytes(
            &format!("apns.apps[{i}].certificate_file"),
            self.certificate_file.as_deref(),
            &format!("apns.apps[{i}].certificate_base64"),
            inline.as_ref(),
        )
    }

    /// The certificate's private key (PEM bytes), from either setting.
    pub fn certificate_key(&self, i: usize) -> Result<Option<Vec<u8>>, ConfigError> {
        credential_bytes(
            &format!("apns.apps[{i}].certificate_key_file"),
            self.certificate_key_file.as_deref(),
            &format!("apns.apps[{i}].certificate_key_base64"),
            self.certificate_key_base64.as_ref(),
        )
    }

    /// The client certificate for certificate auth, read from PEM or PKCS#12; `None` for
    /// token auth. Errors name the setting at fault.
    pub fn client_certificate(&self, i: usize) -> Result<Option<ClientCertificate>, ConfigError> {
        let Some(certificate) = self.certificate(i)? else {
            return Ok(None);
        };
        let key = self.certificate_key(i)?;
        let password = self.certificate_password.as_ref().map(Secret::expose);
        crate::certificate::read(&certificate, key.as_deref(), password)
            .map(Some)
            .map_err(|e| ConfigError::invalid(format!("apns.apps[{i}].{}", e.setting), e.message))
    }
}

fn both_environments() -> Vec<Environment> {
    vec![Environment::Production, Environment::Sandbox]
}

impl Config {
    /// The configured apps, for adjusting in place.
    pub fn apps_mut(&mut self) -> &mut Vec<AppConfig> {
        &mut self.apns.apps
    }

    /// Validates every setting, naming the one at fault.
    pub fn resolve(&self) -> Result<SocketAddr, ConfigError> {
        let admin = parse_addr("admin_listen", &self.admin_listen)?;
        self.nats.validate()?;
        self.worker.validate("worker")?;
        self.prune_guard.validate()?;
        let a = &self.apns;
        for (setting, url) in [
            ("apns.production_url", &a.production_url),
            ("apns.sandbox_url", &a.sandbox_url),
        ] {
            if !url.starts_with("https://") {
                return Err(ConfigError::invalid(setting, "must be an https:// URL"));
            }
        }
        if !(1..=64).contains(&a.connections) {
            return Err(ConfigError::invalid("apns.connections", "must be 1 to 64"));
        }
        if a.request_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "apns.request_timeout_ms",
                "must be positive",
            ));
        }
        if !(20 * 60..=55 * 60).contains(&a.token_refresh_secs) {
            return Err(ConfigError::invalid(
                "apns.token_refresh_secs",
                "must be 1200 to 3300: Apple refuses tokens older than an hour and refreshes more often than every 20 minutes",
            ));
        }
        if a.apps.is_empty() {
            return Err(ConfigError::invalid(
                "apns.apps",
                "is empty: configure at least one app",
            ));
        }
        for (i, app) in a.apps.iter().enumerate() {
            let at = |key: &str| format!("apns.apps[{i}].{key}");
            if app.bundle_id.is_empty() || app.bundle_id.ends_with(".voip") {
                return Err(ConfigError::invalid(
                    at("bundle_id"),
                    "must be the bundle id, without `.voip`",
                ));
            }
            if app.environments.is_empty() {
                return Err(ConfigError::invalid(
                    at("environments"),
                    "must name at least one environment",
                ));
            }
            let has_key = app.key_file.is_some() || app.key_base64.is_some();
            let has_cert = app.certificate_file.is_some() || app.certificate_base64.is_some();
            let has_cert_key = app.certificate_key_file.is_some()
                || app.certificate_key_base64.is_some()
                || app.certificate_password.is_some();
            let token = app.team_id.is_some() || app.key_id.is_some() || has_key;
            let cert = has_cert || has_cert_key;
            match (token, cert) {
                (true, true) => {
                    return Err(ConfigError::invalid(
                        at("key_file"),
                        "token auth and certificate auth are exclusive",
                    ));
                }
                (false, false) => {
                    return Err(ConfigError::invalid(
                        at("key_file"),
                        "set team_id + key_id + key_file (or key_base64), or certificate_file + certificate_key_file (PEM) or certificate_file + certificate_password (PKCS#12), or their _base64 forms",
                    ));
                }
                (true, false) if app.team_id.is_none() || app.key_id.is_none() || !has_key => {
                    return Err(ConfigError::invalid(
                        at("team_id"),
                        "token auth needs team_id, key_id and key_file (or key_base64)",
                    ));
                }
                (false, true) if !has_cert => {
                    return Err(ConfigError::invalid(
                        at("certificate_file"),
                        "certificate auth needs certificate_file (PEM with certificate_key_file, or PKCS#12 with certificate_password), or certificate_base64",
                    ));
                }
                _ => {}
            }
            // Both forms of one credential, or bad base64, are named here.
            app.key(i)?;
            app.client_certificate(i)?;
        }
        Ok(admin)
    }
}
