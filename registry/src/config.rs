//! Registry configuration. Every field can come from the TOML file or from
//! `PUSHLINE_<SECTION>__<KEY>` (e.g. `PUSHLINE_REDIS__URL`).

use std::net::SocketAddr;

use pipeline::config::{ConfigError, NatsConfig, TelemetryConfig, WorkerConfig, parse_addr};
use pipeline::contract::Environment;
use serde::{Deserialize, Serialize};

/// The whole registry configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Public address of the device API.
    pub listen: String,
    /// Admin address for `/metrics`, `/healthz`, `/readyz`.
    pub admin_listen: String,
    /// Largest accepted request body, bytes.
    pub body_limit_bytes: usize,
    /// Redis.
    pub redis: RedisConfig,
    /// Device policies and defaults.
    pub devices: DevicesConfig,
    /// Who may call the device API.
    pub auth: AuthConfig,
    /// NATS connection and stream layout.
    pub nats: NatsConfig,
    /// The fan-out consumer (`EVENTS` → push jobs).
    pub fanout: WorkerConfig,
    /// The prune consumer (`FEEDBACK` → token removal).
    pub prune: WorkerConfig,
    /// Logs.
    pub telemetry: TelemetryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:8081".into(),
            admin_listen: "127.0.0.1:9081".into(),
            body_limit_bytes: 16 * 1024,
            redis: RedisConfig::default(),
            devices: DevicesConfig::default(),
            auth: AuthConfig::default(),
            nats: NatsConfig::default(),
            fanout: WorkerConfig::default(),
            prune: WorkerConfig {
                concurrency: 32,
                ..WorkerConfig::default()
            },
            telemetry: TelemetryConfig::default(),
        }
    }
}

/// `[redis]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db`.
    pub url: String,
    /// Prefix of every key, so several deployments or tests share a server.
    pub prefix: String,
    /// Upper bound on one Redis command, milliseconds.
    pub response_timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "pushline:".into(),
            response_timeout_ms: 1_000,
        }
    }
}

/// `[devices]`: registration policies and defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevicesConfig {
    /// Most devices per person; registering one more evicts the least recently refreshed.
    pub max_per_person: usize,
    /// A registration not refreshed within this many seconds expires.
    pub ttl_secs: u64,
    /// APNs bundle id used when a registration names none (e.g. `POST /register`).
    pub default_apns_app: String,
    /// FCM project id used when a registration names none.
    pub default_fcm_app: String,
    /// Environment used when a registration names none.
    pub default_environment: Environment,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            max_per_person: 10,
            ttl_secs: 60 * 86_400,
            default_apns_app: String::new(),
            default_fcm_app: String::new(),
            default_environment: Environment::Production,
        }
    }
}

/// `[auth]`: bearer API keys for the device API.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Accepted API keys, stored as SHA-256 hashes (`printf %s KEY | sha256sum`).
    pub api_keys: Vec<ApiKey>,
    /// DEVELOPMENT ONLY: no authentication at all. Logged loudly.
    pub insecure_no_auth: bool,
}

/// One API key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Who holds it (for logs and metrics).
    pub name: String,
    /// Lowercase hex SHA-256 of the key.
    pub sha256: String,
}

/// Parsed addresses.
#[derive(Debug, Clone, Copy)]
pub struct Resolved {
    /// Public address.
    pub listen: SocketAddr,
    /// Admin address.
    pub admin_listen: SocketAddr,
}

impl Config {
    /// Validates every setting, naming the one at fault.
    pub fn resolve(&self) -> Result<Resolved, ConfigError> {
        let listen = parse_addr("listen", &self.listen)?;
        let admin_listen = parse_addr("admin_listen", &self.admin_listen)?;
        self.nats.validate()?;
        self.fanout.validate("fanout")?;
        self.prune.validate("prune")?;
        if !self.redis.url.starts_with("redis://") && !self.redis.url.starts_with("rediss://") {
            return Err(ConfigError::invalid(
                "redis.url",
                "must start with redis:// or rediss://",
            ));
        }
        if self.redis.response_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "redis.response_timeout_ms",
                "must be positive",
            ));
        }
        if !(1..=1_000).contains(&self.devices.max_per_person) {
            return Err(ConfigError::invalid(
                "devices.max_per_person",
                "must be 1 to 1000",
            ));
        }
        if self.devices.ttl_secs < 60 {
            return Err(ConfigError::invalid(
                "devices.ttl_secs",
                "must be at least 60",
            ));
        }
        if self.body_limit_bytes < 1024 {
            return Err(ConfigError::invalid(
                "body_limit_bytes",
                "must be at least 1024",
            ));
        }
        for (i, key) in self.auth.api_keys.iter().enumerate() {
            if key.sha256.len() != 64 || !key.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError::invalid(
                    format!("auth.api_keys[{i}].sha256"),
                    "must be 64 hex digits (the SHA-256 of the key, not the key)",
                ));
            }
        }
        if self.auth.api_keys.is_empty() && !self.auth.insecure_no_auth {
            return Err(ConfigError::invalid(
                "auth.api_keys",
                "is empty: add at least one key hash; auth.insecure_no_auth=true exists for local development only",
            ));
        }
        Ok(Resolved {
            listen,
            admin_listen,
        })
    }
}
