//! Web Push dispatcher configuration (`PUSHLINE_<SECTION>__<KEY>` for every field).

use std::net::SocketAddr;
use std::path::PathBuf;

use pipeline::config::{
    ConfigError, Inline, NatsConfig, Secret, TelemetryConfig, WorkerConfig, credential, parse_addr,
};
use pipeline::egress::{EgressPolicy, EndpointsConfig};
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Admin address for `/metrics`, `/healthz`, `/readyz`.
    pub admin_listen: String,
    /// Web Push.
    pub webpush: WebPushConfig,
    /// NATS connection and stream layout.
    pub nats: NatsConfig,
    /// The `dispatch-webpush` consumer.
    pub worker: WorkerConfig,
    /// Mass-pruning protection (`[prune_guard]`).
    pub prune_guard: pipeline::prune_guard::PruneGuardConfig,
    /// Logs.
    pub telemetry: TelemetryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin_listen: "127.0.0.1:9084".into(),
            webpush: WebPushConfig::default(),
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

/// `[webpush]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebPushConfig {
    /// Where subscriptions' endpoints may point (`[webpush.endpoints]`): checked before
    /// every push, and a push to a name connects only to its public addresses. Keep it
    /// equal to the registry's `[endpoints]`, which checks the same at registration.
    pub endpoints: EndpointsConfig,
    /// Extra CA certificates (PEM) to trust, e.g. a local push service's: trusted for
    /// `endpoints.private_origins` only, never for other endpoints.
    pub ca_files: Vec<PathBuf>,
    /// Most pushes in flight to one push service origin at once; a push beyond it is
    /// retried a second later, so a slow origin holds at most this many of the worker's
    /// `concurrency` slots.
    pub max_in_flight_per_origin: usize,
    /// Most idle connections kept per origin.
    pub max_idle_per_origin: usize,
    /// An idle pooled connection is closed after this many seconds.
    pub pool_idle_timeout_secs: u64,
    /// Upper bound on one request, milliseconds.
    pub request_timeout_ms: u64,
    /// Lifetime of a VAPID token, seconds (at most a day, RFC 8292 §2).
    pub token_lifetime_secs: u64,
    /// The apps (application server keys) this deployment sends for.
    pub apps: Vec<AppConfig>,
}

impl Default for WebPushConfig {
    fn default() -> Self {
        WebPushConfig {
            endpoints: EndpointsConfig::default(),
            ca_files: Vec::new(),
            max_in_flight_per_origin: 128,
            max_idle_per_origin: 16,
            pool_idle_timeout_secs: 90,
            request_timeout_ms: 5_000,
            token_lifetime_secs: 12 * 3_600,
            apps: Vec::new(),
        }
    }
}

/// One web app (`[[webpush.apps]]`): the name devices register with and its VAPID key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The app's name, as devices register it (`app`).
    pub app: String,
    /// The contact push services may reach the operator at: `mailto:` or `https:`.
    pub subject: String,
    /// The application server's private key file: PKCS#8 PEM, or the 32-byte key in
    /// base64url.
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// The key itself (either form), instead of `private_key_file`.
    #[serde(default)]
    pub private_key: Option<Secret>,
}

impl AppConfig {
    /// The key's text, from either setting (exactly one), read by the one credential
    /// reader ([`pipeline::config::credential`]).
    pub fn key_text(&self, i: usize) -> Result<String, ConfigError> {
        let (file, inline) = (
            format!("webpush.apps[{i}].private_key_file"),
            format!("webpush.apps[{i}].private_key"),
        );
        let bytes = credential(
            &file,
            self.private_key_file.as_deref(),
            &inline,
            self.private_key.as_ref(),
            Inline::Text,
        )?
        .ok_or_else(|| ConfigError::invalid(&file, "is required (or private_key)"))?;
        String::from_utf8(bytes).map_err(|_| ConfigError::invalid(file, "is not text"))
    }
}

impl Config {
    /// Validates every setting, naming the one at fault.
    pub fn resolve(&self) -> Result<SocketAddr, ConfigError> {
        let admin = parse_addr("admin_listen", &self.admin_listen)?;
        self.nats.validate()?;
        self.worker.validate("worker")?;
        self.prune_guard.validate()?;
        let w = &self.webpush;
        EgressPolicy::new("webpush.endpoints", &w.endpoints)?;
        for (setting, value) in [
            (
                "webpush.max_in_flight_per_origin",
                w.max_in_flight_per_origin,
            ),
            ("webpush.max_idle_per_origin", w.max_idle_per_origin),
            (
                "webpush.pool_idle_timeout_secs",
                w.pool_idle_timeout_secs as usize,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(setting, "must be positive"));
            }
        }
        if w.request_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "webpush.request_timeout_ms",
                "must be positive",
            ));
        }
        if !(60..=86_400).contains(&w.token_lifetime_secs) {
            return Err(ConfigError::invalid(
                "webpush.token_lifetime_secs",
                "must be 60 to 86400 (a day at most)",
            ));
        }
        if w.apps.is_empty() {
            return Err(ConfigError::invalid(
                "webpush.apps",
                "is empty: configure at least one app",
            ));
        }
        for (i, app) in w.apps.iter().enumerate() {
            if app.app.is_empty() {
                return Err(ConfigError::invalid(
                    format!("webpush.apps[{i}].app"),
                    "must not be empty",
                ));
            }
            if !(app.subject.starts_with("mailto:") || app.subject.starts_with("https://")) {
                return Err(ConfigError::invalid(
                    format!("webpush.apps[{i}].subject"),
                    "must be a mailto: or https: contact",
                ));
            }
            if w.apps[..i].iter().any(|other| other.app == app.app) {
                return Err(ConfigError::invalid(
                    format!("webpush.apps[{i}].app"),
                    format!("`{}` is configured twice", app.app),
                ));
            }
        }
        Ok(admin)
    }
}
