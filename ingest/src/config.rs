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
    /// Most requests (webhooks and `/v1/notify`) worked on at once; one more is refused
    /// at once with 503 `overloaded` and `Retry-After`, before its body is read. A request
    /// waiting on a publish that is being retried (a stream leader's election, a NATS
    /// restart) is held, not worked on: it leaves this count for `max_held_bytes`.
    pub max_in_flight: usize,
    /// Most bytes of requests held while their publish is retried: each costs its event
    /// plus a measured overhead (48 KiB). Beyond it held requests keep counting against
    /// `max_in_flight`, so ingest's memory stays bounded by configuration.
    pub max_held_bytes: usize,
    /// Deepest JSON nesting accepted in a body; deeper → 400.
    pub max_json_depth: usize,
    /// The public listener's bounds on connections (`[connections]`).
    pub connections: pipeline::listener::ConnectionsConfig,
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
            max_held_bytes: 128 * 1024 * 1024,
            max_json_depth: 32,
            connections: pipeline::listener::ConnectionsConfig::default(),
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
    /// The oldest event that may still ring, seconds: a webhook whose event is dated
    /// earlier (a `callMemberships` event's `data.created`; never the envelope's
    /// `created`) is answered `stale` and not published.
    pub max_event_age_secs: u64,
    /// How far the sender's clock may be off, seconds: added to `max_event_age_secs`, and
    /// how far ahead of this clock an event may be dated.
    pub clock_skew_secs: u64,
}

impl WebexConfig {
    /// How long every replica remembers an accepted webhook's event id, so a replay is a
    /// duplicate: as long as a replayed event can still pass the freshness check
    /// (`max_event_age_secs`, plus the skew on either side) or still be before its ring
    /// expiry (`max_ttl_secs`).
    pub fn replay_window_secs(&self) -> u64 {
        let fresh = self.max_event_age_secs + 2 * self.clock_skew_secs;
        fresh.max(self.max_ttl_secs)
    }
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
            max_event_age_secs: 300,
            clock_skew_secs: 30,
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
    /// Status look-ups (`GET /v1/events/…`) each producer or admin key may make per
    /// second, shared by every replica.
    pub status_rate_per_sec: f64,
    /// Burst of status look-ups per key.
    pub status_burst: u32,
    /// Most events one `GET /v1/events?trace_id=…` lists (trace records read); beyond,
    /// the answer says `truncated: true`.
    pub status_max_events: usize,
    /// Most status records one look-up reads, over all the events it shows; beyond, the
    /// answer says `truncated: true`.
    pub status_max_records: usize,
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
            status_rate_per_sec: 5.0,
            status_burst: 20,
            status_max_events: 100,
            status_max_records: 1_000,
        }
    }
}

/// One producer (`[[producers.keys]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProducerKey {
    /// Producer name: letters, digits, `_` and `-` (it becomes a subject token and a
    /// metric label). Unique: the name decides which events a key sees and which rate it
    /// draws on.
    pub name: String,
    /// Lowercase hex SHA-256 of the key.
    pub sha256: String,
    /// While rotating this producer's key: the SHA-256 of the key being replaced, still
    /// accepted as this producer's until it is removed.
    #[serde(default)]
    pub previous_sha256: Option<String>,
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
        self.connections.validate()?;
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
        if self.max_held_bytes > 1 << 40 {
            return Err(ConfigError::invalid(
                "max_held_bytes",
                "must be at most 1 TiB (0 holds nothing beyond max_in_flight)",
            ));
        }
        if !(2..=512).contains(&self.max_json_depth) {
            return Err(ConfigError::invalid("max_json_depth", "must be 2 to 512"));
        }
        check_webex(&self.webex)?;
        check_producer_limits(&self.producers)?;
        check_producer_keys(&self.producers)?;
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

/// Why a callback URL is refused: it must be `https://` with a host, or `http://` to a
/// loopback host (`127.0.0.0/8`, `[::1]`, `localhost`: a receiver on the same machine).
pub fn check_callback_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("is not a URL: {e}"))?;
    let host = parsed.host().ok_or_else(|| "must name a host".to_owned())?;
    let loopback = match host {
        url::Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    };
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err("must be https:// (http:// only to a loopback host)".into()),
        other => Err(format!("must be https://, not {other}://")),
    }
}

/// `[webex]`'s bounds: the call TTL, the event age and clock skew, and the SHA-256
/// signature header.
fn check_webex(webex: &WebexConfig) -> Result<(), ConfigError> {
    if webex.call_ttl_secs == 0 || webex.call_ttl_secs > webex.max_ttl_secs {
        return Err(ConfigError::invalid(
            "webex.call_ttl_secs",
            "must be positive and not above webex.max_ttl_secs",
        ));
    }
    if !(1..=86_400).contains(&webex.max_event_age_secs) {
        return Err(ConfigError::invalid(
            "webex.max_event_age_secs",
            "must be 1 to 86400",
        ));
    }
    if webex.clock_skew_secs > webex.max_event_age_secs {
        return Err(ConfigError::invalid(
            "webex.clock_skew_secs",
            "must not be above webex.max_event_age_secs",
        ));
    }
    if webex.require_sha256 && webex.sha256_header.is_empty() {
        return Err(ConfigError::invalid(
            "webex.require_sha256",
            "needs webex.sha256_header",
        ));
    }
    Ok(())
}

/// `[producers]`' bounds: targets, TTLs and the status API's rate and sizes.
fn check_producer_limits(p: &ProducersConfig) -> Result<(), ConfigError> {
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
    if !p.status_rate_per_sec.is_finite() || p.status_rate_per_sec <= 0.0 || p.status_burst == 0 {
        return Err(ConfigError::invalid(
            "producers.status_rate_per_sec",
            "status_rate_per_sec and status_burst must be positive",
        ));
    }
    if !(1..=1_000).contains(&p.status_max_events) {
        return Err(ConfigError::invalid(
            "producers.status_max_events",
            "must be 1 to 1000",
        ));
    }
    if !(1..=10_000).contains(&p.status_max_records) {
        return Err(ConfigError::invalid(
            "producers.status_max_records",
            "must be 1 to 10000",
        ));
    }
    Ok(())
}

/// `[producers]`' keys: well-formed names and hashes, each hash one role, unique names,
/// one backend per app, callbacks and rates that hold together.
fn check_producer_keys(p: &ProducersConfig) -> Result<(), ConfigError> {
    let named_keys = (p.keys.iter().enumerate())
        .flat_map(|(i, k)| {
            let entry = format!("producers.keys[{i}]");
            let previous = (k.previous_sha256.as_ref())
                .map(|sha256| (entry.clone(), "previous_sha256", &k.name, sha256));
            std::iter::once((entry, "sha256", &k.name, &k.sha256)).chain(previous)
        })
        .chain((p.admin_keys.iter().enumerate()).map(|(i, k)| {
            (
                format!("producers.admin_keys[{i}]"),
                "sha256",
                &k.name,
                &k.sha256,
            )
        }));
    let mut hashes = std::collections::HashSet::new();
    for (entry, hash_setting, name, sha256) in named_keys {
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
                at(hash_setting),
                "must be 64 hex digits (the SHA-256 of the key)",
            ));
        }
        if !hashes.insert(sha256.to_ascii_lowercase()) {
            return Err(ConfigError::invalid(
                at(hash_setting),
                "is the hash of a key listed before: every key holds one role",
            ));
        }
    }
    // A producer's name decides what its keys see and which rate they draw on: two
    // entries with one name would share both. A second key is `previous_sha256`.
    let mut names = std::collections::HashSet::new();
    for (i, key) in p.keys.iter().enumerate() {
        if !names.insert(key.name.as_str()) {
            return Err(ConfigError::invalid(
                format!("producers.keys[{i}].name"),
                format!(
                    "`{}` names a producer listed before: names are unique (rotate a key with previous_sha256)",
                    key.name
                ),
            ));
        }
    }
    let mut admin_names = std::collections::HashSet::new();
    for (i, key) in p.admin_keys.iter().enumerate() {
        if !admin_names.insert(key.name.as_str()) {
            return Err(ConfigError::invalid(
                format!("producers.admin_keys[{i}].name"),
                format!(
                    "`{}` names an admin key listed before: names are unique",
                    key.name
                ),
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
            (Some(url), Some(secret)) if !secret.expose().is_empty() => {
                check_callback_url(url)
                    .map_err(|why| ConfigError::invalid(at("callback_url"), why))?;
            }
            _ => {
                return Err(ConfigError::invalid(
                    at("callback_url"),
                    "a callback_url goes with a non-empty callback_secret",
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
    Ok(())
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
                previous_sha256: None,
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
            previous_sha256: None,
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
            producer("billing", 'c', &["com.example.app"], true),
        ];
        let err = cfg.resolve().expect_err("two backends");
        assert!(err.to_string().contains("producers.keys[1].apps"), "{err}");
        assert!(err.to_string().contains("producer `crm`"), "{err}");

        cfg.producers.keys.pop();
        cfg.resolve().expect("one backend");
    }

    #[test]
    fn producer_names_are_unique_and_a_key_rotates_through_previous_sha256() {
        let mut cfg = Config::default();
        cfg.webex.insecure_skip_signature = true;
        cfg.producers.keys = vec![
            producer("crm", 'a', &[], false),
            producer("crm", 'b', &[], false),
        ];
        let err = cfg.resolve().expect_err("one name, two keys");
        assert!(err.to_string().contains("producers.keys[1].name"), "{err}");

        cfg.producers.keys.pop();
        cfg.producers.keys[0].previous_sha256 = Some("b".repeat(64));
        cfg.resolve().expect("a rotating key");
        cfg.producers.keys[0].previous_sha256 = Some("a".repeat(64));
        let err = cfg.resolve().expect_err("the same key twice");
        assert!(
            err.to_string()
                .contains("producers.keys[0].previous_sha256"),
            "{err}"
        );

        cfg.producers.keys[0].previous_sha256 = None;
        cfg.producers.admin_keys = ["d", "e"]
            .iter()
            .map(|sha| AdminKey {
                name: "oncall".into(),
                sha256: sha.repeat(64),
            })
            .collect();
        let err = cfg.resolve().expect_err("one admin name, two keys");
        assert!(
            err.to_string().contains("producers.admin_keys[1].name"),
            "{err}"
        );
    }

    #[test]
    fn callback_urls_are_https_unless_the_receiver_is_on_loopback() {
        for allowed in [
            "https://backend.example/hooks",
            "https://10.0.0.5:8443/hooks",
            "http://127.0.0.1:8080/hooks",
            "http://127.9.9.9/hooks",
            "http://[::1]:8080/hooks",
            "http://localhost:8080/hooks",
            "http://LOCALHOST/hooks",
        ] {
            assert_eq!(check_callback_url(allowed), Ok(()), "{allowed}");
        }
        for refused in [
            "http://backend.example/hooks",
            "http://10.0.0.5/hooks",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::ffff:127.0.0.1]/hooks",
            "http://localhost.example.com/hooks",
            "ftp://backend.example/hooks",
            "backend.example/hooks",
        ] {
            assert!(check_callback_url(refused).is_err(), "{refused}");
        }

        let mut cfg = Config::default();
        cfg.webex.insecure_skip_signature = true;
        let mut key = producer("crm", 'a', &[], true);
        key.callback_url = Some("http://backend.example/hooks".into());
        cfg.producers.keys = vec![key];
        let err = cfg.resolve().expect_err("plain http off loopback");
        assert!(
            err.to_string().contains("producers.keys[0].callback_url"),
            "{err}"
        );
    }

    #[test]
    fn the_event_age_window_is_checked_and_covers_the_ring_expiry() {
        let mut cfg = Config::default();
        cfg.webex.insecure_skip_signature = true;
        assert_eq!(cfg.webex.replay_window_secs(), 600);
        cfg.webex.max_event_age_secs = 900;
        assert_eq!(cfg.webex.replay_window_secs(), 960);
        cfg.webex.clock_skew_secs = 1_000;
        let err = cfg.resolve().expect_err("skew above the window");
        assert!(err.to_string().contains("webex.clock_skew_secs"), "{err}");
        cfg.webex.max_event_age_secs = 0;
        let err = cfg.resolve().expect_err("no window");
        assert!(
            err.to_string().contains("webex.max_event_age_secs"),
            "{err}"
        );
    }
}
