//! Ingest configuration. Every field can come from the TOML file or from
//! `PUSHLINE_<SECTION>__<KEY>` (top-level keys: `PUSHLINE_LISTEN`).

use std::net::SocketAddr;
use std::path::PathBuf;

use pipeline::config::{
    ConfigError, NatsConfig, Secret, TelemetryConfig, parse_addr, read_secret_file,
};
use serde::{Deserialize, Serialize};

/// The whole ingest configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Public address for webhooks (`POST /webhooks/webex`, `POST /webhook`).
    pub listen: String,
    /// Admin address for `/metrics`, `/healthz`, `/readyz`; keep it off the internet.
    pub admin_listen: String,
    /// Largest accepted request body, bytes; larger → 413.
    pub body_limit_bytes: usize,
    /// `Retry-After` sent with 503 when NATS cannot take the event, seconds.
    pub retry_after_secs: u64,
    /// Most requests (webhooks and `/v1/notify`) handled at once, their publishes
    /// included; one more is refused at once with 503 `overloaded` and `Retry-After`,
    /// before its body is read. Bounds ingest's memory by configuration (at most this
    /// many bodies of `body_limit_bytes`) instead of by load.
    pub max_in_flight: usize,
    /// Deepest JSON nesting accepted in a body; deeper → 400.
    pub max_json_depth: usize,
    /// Webex webhook settings.
    pub webex: WebexConfig,
    /// The producer API (`POST /v1/notify`).
    pub producers: ProducersConfig,
    /// The consumer sending producers' callbacks (`CALLBACKS`).
    pub callbacks: pipeline::config::WorkerConfig,
    /// NATS connection and stream layout.
    pub nats: NatsConfig,
    /// Logs.
    pub telemetry: TelemetryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:8080".into(),
            admin_listen: "127.0.0.1:9080".into(),
            body_limit_bytes: 64 * 1024,
            retry_after_secs: 1,
            max_in_flight: 512,
            max_json_depth: 32,
            webex: WebexConfig::default(),
            producers: ProducersConfig::default(),
            callbacks: pipeline::config::WorkerConfig {
                concurrency: 64,
                ..pipeline::config::WorkerConfig::default()
            },
            nats: NatsConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

/// Which envelope field names the person to ring for `telephony_push`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PersonField {
    /// The envelope's `actorId` (Webex's default for telephony_push).
    #[serde(rename = "actorId")]
    ActorId,
    /// The envelope's `createdBy`.
    #[serde(rename = "createdBy")]
    CreatedBy,
}

/// `[webex]`: verifying and normalising Webex webhooks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebexConfig {
    /// Webhook secrets; a signature made with any of them is accepted (rotation: add the
    /// new one, update the webhook, then remove the old one).
    pub secrets: Vec<Secret>,
    /// A file with one secret per line, added to `secrets` (for Kubernetes Secrets).
    pub secrets_file: Option<PathBuf>,
    /// A second signature header carrying a hex HMAC-SHA256 of the body (e.g.
    /// `X-Spark-Signature-256`); when set and present it must match too. Empty = off.
    pub sha256_header: String,
    /// With `sha256_header` set: refuse webhooks that lack it.
    pub require_sha256: bool,
    /// DEVELOPMENT ONLY: accept webhooks without checking `X-Spark-Signature`.
    /// Logged loudly at start-up and on every request it lets through.
    pub insecure_skip_signature: bool,
    /// Envelope field holding the callee for `telephony_push`: `actorId` or `createdBy`.
    pub person_field: PersonField,
    /// How long a call may ring when the payload gives no ring expiry, seconds.
    pub call_ttl_secs: u64,
    /// The longest deadline accepted from a payload, seconds after receipt.
    pub max_ttl_secs: u64,
}

impl Default for WebexConfig {
    fn default() -> Self {
        WebexConfig {
            secrets: Vec::new(),
            secrets_file: None,
            sha256_header: String::new(),
            require_sha256: false,
            insecure_skip_signature: false,
            person_field: PersonField::ActorId,
            call_ttl_secs: 60,
            max_ttl_secs: 600,
        }
    }
}

/// `[producers]`: other systems that ring or notify people through `POST /v1/notify`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProducersConfig {
    /// Producer API keys (SHA-256 hashes) with their rate limits; empty = API off.
    pub keys: Vec<ProducerKey>,
    /// Keys that read the delivery status of every event, webhooks' included
    /// (`GET /v1/events/…`), and can do nothing else: for operators and support tools.
    pub admin_keys: Vec<AdminKey>,
    /// Most persons one request may target.
    pub max_targets: usize,
    /// Deadline when the request gives neither `ttl_secs` nor `deadline_ms`, seconds.
    pub default_ttl_secs: u64,
    /// Longest deadline accepted, seconds after receipt.
    pub max_ttl_secs: u64,
    /// Upper bound on one callback request, milliseconds.
    pub callback_timeout_ms: u64,
    /// How long after an event's deadline its callback waits for devices still pending,
    /// seconds; then the outcome is sent as it stands.
    pub callback_settle_secs: u64,
}

impl Default for ProducersConfig {
    fn default() -> Self {
        ProducersConfig {
            keys: Vec::new(),
            admin_keys: Vec::new(),
            max_targets: 100,
            default_ttl_secs: 60,
            max_ttl_secs: 86_400,
            callback_timeout_ms: 5_000,
            callback_settle_secs: 30,
        }
    }
}

/// One producer (`[[producers.keys]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProducerKey {
    /// Producer name: letters, digits, `_` and `-` (it becomes a subject token and a
    /// metric label).
    pub name: String,
    /// Lowercase hex SHA-256 of the key.
    pub sha256: String,
    /// Sustained rate, target persons per second.
    pub rate_per_sec: f64,
    /// Burst, target persons.
    pub burst: u32,
    /// Where each of this producer's events' outcome is POSTed once settled.
    #[serde(default)]
    pub callback_url: Option<String>,
    /// The signing secret of the callbacks (Standard Webhooks: `whsec_<base64>`, or any
    /// other string used as is).
    #[serde(default)]
    pub callback_secret: Option<Secret>,
    /// The apps (APNs bundle ids, FCM project ids) this producer is the backend of: each
    /// token the registry prunes for them is POSTed to `callback_url` (`token.pruned`).
    #[serde(default)]
    pub apps: Vec<String>,
}

/// A key that reads every event's status (`[[producers.admin_keys]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminKey {
    /// Who holds it (logs): letters, digits, `_` and `-`.
    pub name: String,
    /// Lowercase hex SHA-256 of the key.
    pub sha256: String,
}

/// Configuration checked and resolved for running.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Parsed public address.
    pub listen: SocketAddr,
    /// Parsed admin address.
    pub admin_listen: SocketAddr,
    /// Every accepted webhook secret (inline and from the file).
    pub secrets: Vec<Secret>,
}

impl Config {
    /// Validates every setting and reads secret files, naming the setting at fault.
    pub fn resolve(&self) -> Result<Resolved, ConfigError> {
        let listen = parse_addr("listen", &self.listen)?;
        let admin_listen = parse_addr("admin_listen", &self.admin_listen)?;
        self.nats.validate()?;
        self.callbacks.validate("callbacks")?;
        if self.body_limit_bytes < 1024 || self.body_limit_bytes > 16 * 1024 * 1024 {
            return Err(ConfigError::invalid(
                "body_limit_bytes",
                "must be 1 KiB to 16 MiB",
            ));
        }
        if !(1..=1_000_000).contains(&self.max_in_flight) {
            return Err(ConfigError::invalid(
                "max_in_flight",
                "must be 1 to 1000000",
            ));
        }
        if self.webex.call_ttl_secs == 0 || self.webex.call_ttl_secs > self.webex.max_ttl_secs {
            return Err(ConfigError::invalid(
                "webex.call_ttl_secs",
                "must be positive and not above webex.max_ttl_secs",
            ));
        }
        if !(2..=512).contains(&self.max_json_depth) {
            return Err(ConfigError::invalid("max_json_depth", "must be 2 to 512"));
        }
        if self.webex.require_sha256 && self.webex.sha256_header.is_empty() {
            return Err(ConfigError::invalid(
                "webex.require_sha256",
                "needs webex.sha256_header",
            ));
        }
        let p = &self.producers;
        if !(1..=10_000).contains(&p.max_targets) {
            return Err(ConfigError::invalid(
                "producers.max_targets",
                "must be 1 to 10000",
            ));
        }
        if p.default_ttl_secs == 0 || p.default_ttl_secs > p.max_ttl_secs {
            return Err(ConfigError::invalid(
                "producers.default_ttl_secs",
                "must be positive and not above producers.max_ttl_secs",
            ));
        }
        let named_keys = (p.keys.iter().enumerate())
            .map(|(i, k)| (format!("producers.keys[{i}]"), &k.name, &k.sha256))
            .chain(
                (p.admin_keys.iter().enumerate())
                    .map(|(i, k)| (format!("producers.admin_keys[{i}]"), &k.name, &k.sha256)),
            );
        let mut hashes = std::collections::HashSet::new();
        for (entry, name, sha256) in named_keys {
            let at = |k: &str| format!("{entry}.{k}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(ConfigError::invalid(
                    at("name"),
                    "must be letters, digits, `_` or `-`",
                ));
            }
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError::invalid(
                    at("sha256"),
                    "must be 64 hex digits (the SHA-256 of the key)",
                ));
            }
            if !hashes.insert(sha256.to_ascii_lowercase()) {
                return Err(ConfigError::invalid(
                    at("sha256"),
                    "is the hash of a key listed before: every key holds one role",
                ));
            }
        }
        let mut app_backends: std::collections::HashMap<&str, &str> = Default::default();
        for (i, key) in p.keys.iter().enumerate() {
            let at = |k: &str| format!("producers.keys[{i}].{k}");
            if !key.apps.is_empty() && key.callback_url.is_none() {
                return Err(ConfigError::invalid(
                    at("apps"),
                    "needs a callback_url: pruned tokens are POSTed there",
                ));
            }
            for app in &key.apps {
                if app.is_empty() {
                    return Err(ConfigError::invalid(at("apps"), "holds an empty app id"));
                }
                let claimed = app_backends.entry(app.as_str()).or_insert(&key.name);
                if *claimed != key.name.as_str() {
                    return Err(ConfigError::invalid(
                        at("apps"),
                        format!(
                            "app `{app}` has one backend: it is already named by producer `{claimed}`"
                        ),
                    ));
                }
            }
            match (&key.callback_url, &key.callback_secret) {
                (None, None) => {}
                (Some(url), Some(secret))
                    if (url.starts_with("https://") || url.starts_with("http://"))
                        && !secret.expose().is_empty() => {}
                _ => {
                    return Err(ConfigError::invalid(
                        at("callback_url"),
                        "an http(s) callback_url goes with a non-empty callback_secret",
                    ));
                }
            }
            if !key.rate_per_sec.is_finite() || key.rate_per_sec <= 0.0 || key.burst == 0 {
                return Err(ConfigError::invalid(
                    at("rate_per_sec"),
                    "rate_per_sec and burst must be positive",
                ));
            }
        }
        let mut secrets: Vec<Secret> = self
            .webex
            .secrets
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect();
        if let Some(path) = &self.webex.secrets_file {
            let text = read_secret_file("webex.secrets_file", path)?;
            secrets.extend(
                text.expose()
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(Secret::new),
            );
        }
        if secrets.is_empty() && !self.webex.insecure_skip_signature {
            return Err(ConfigError::invalid(
                "webex.secrets",
                "is empty: set the webhook secret (or webex.secrets_file); \
                 webex.insecure_skip_signature=true exists for local development only",
            ));
        }
        Ok(Resolved {
            listen,
            admin_listen,
            secrets,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Producers with one producer, `name`, holding `key` (2 persons/s, burst 4).
    pub(crate) fn one_producer(name: &str, key: &str) -> ProducersConfig {
        use sha2::Digest;
        ProducersConfig {
            keys: vec![ProducerKey {
                name: name.into(),
                sha256: hex::encode(sha2::Sha256::digest(key.as_bytes())),
                rate_per_sec: 2.0,
                burst: 4,
                callback_url: None,
                callback_secret: None,
                apps: Vec::new(),
            }],
            ..ProducersConfig::default()
        }
    }

    #[test]
    fn refuses_to_start_without_a_secret() {
        let err = Config::default().resolve().expect_err("no secret");
        assert!(err.to_string().contains("webex.secrets"), "{err}");
    }

    #[test]
    fn insecure_mode_starts_without_a_secret() {
        let mut cfg = Config::default();
        cfg.webex.insecure_skip_signature = true;
        assert!(cfg.resolve().expect("resolves").secrets.is_empty());
    }

    #[test]
    fn secrets_file_adds_one_secret_per_line() {
        let dir = std::env::temp_dir().join(format!("pushline-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("secrets");
        std::fs::write(&file, "old\nnew\n\n").expect("write");
        let mut cfg = Config::default();
        cfg.webex.secrets_file = Some(file);
        let resolved = cfg.resolve().expect("resolves");
        let got: Vec<_> = resolved
            .secrets
            .iter()
            .map(|s| s.expose().to_owned())
            .collect();
        assert_eq!(got, ["old", "new"]);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn producer(name: &str, sha: char, apps: &[&str], callback: bool) -> ProducerKey {
        ProducerKey {
            name: name.into(),
            sha256: sha.to_string().repeat(64),
            rate_per_sec: 10.0,
            burst: 10,
            callback_url: callback.then(|| "https://backend.example/hooks".into()),
            callback_secret: callback.then(|| Secret::new("s")),
            apps: apps.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn an_app_has_one_backend_and_it_needs_a_callback_url() {
        let mut cfg = Config::default();
        cfg.webex.insecure_skip_signature = true;
        cfg.producers.keys = vec![producer("crm", 'a', &["com.example.app"], false)];
        let err = cfg.resolve().expect_err("apps without a callback_url");
        assert!(err.to_string().contains("producers.keys[0].apps"), "{err}");

        cfg.producers.keys = vec![
            producer("crm", 'a', &["com.example.app"], true),
            // The same producer under a second key (rotation) may name it again.
            producer("crm", 'b', &["com.example.app"], true),
            producer("billing", 'c', &["com.example.app"], true),
        ];
        let err = cfg.resolve().expect_err("two backends");
        assert!(err.to_string().contains("producers.keys[2].apps"), "{err}");
        assert!(err.to_string().contains("producer `crm`"), "{err}");

        cfg.producers.keys.pop();
        cfg.resolve().expect("one backend");
    }
}
