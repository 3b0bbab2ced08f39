//! Layered, typed configuration shared by every service.
//!
//! Sources, later wins: the struct's built-in defaults → an optional TOML file
//! (`--config path`) → environment variables `PUSHLINE_<SECTION>__<KEY>`
//! (`PUSHLINE_NATS__URL`, `PUSHLINE_REDIS__URL`, `PUSHLINE_LISTEN`, …). Durations are
//! integers whose unit is in the key (`_ms`, `_secs`), so they are easy to set from env.
//!
//! Secrets are held in [`Secret`], whose `Debug` and `Serialize` never show the value.

use std::fmt;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Environment variable prefix for every setting.
pub const ENV_PREFIX: &str = "PUSHLINE_";

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or did not fit the struct; figment names the key.
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A value was read but is not acceptable.
    #[error("configuration: `{setting}` {problem}")]
    Invalid {
        /// The setting, spelled as in the TOML file (`nats.url`).
        setting: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A file named by a setting could not be read.
    #[error("configuration: `{setting}`: cannot read {path}: {source}")]
    File {
        /// The setting that names the file.
        setting: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl ConfigError {
    /// A value that is present but wrong.
    pub fn invalid(setting: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            setting: setting.into(),
            problem: problem.into(),
        }
    }
}

/// Loads `T` from its defaults, the optional TOML file, then `PUSHLINE_*` variables.
pub fn load<T>(file: Option<&Path>) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    load_from(file, Env::prefixed(ENV_PREFIX).split("__"))
}

/// Like [`load`] with an explicit environment provider (tests use this to avoid the
/// process environment).
pub fn load_from<T>(file: Option<&Path>, env: Env) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::invalid(
                "--config",
                format!("names {}, which does not exist", path.display()),
            ));
        }
        figment = figment.merge(Toml::file(path));
    }
    figment
        .merge(env)
        .extract()
        .map_err(Box::new)
        .map_err(Into::into)
}

/// With `--print-config` among the arguments: prints the effective configuration as JSON
/// (secrets show as `<redacted>`) and returns true, so `main` can exit.
pub fn print_if_asked<T: Serialize>(config: &T, args: impl IntoIterator<Item = String>) -> bool {
    if !args.into_iter().any(|a| a == "--print-config") {
        return false;
    }
    match serde_json::to_string_pretty(config) {
        Ok(text) => println!("{text}"),
        Err(error) => eprintln!("cannot print the configuration: {error}"),
    }
    true
}

/// Returns the value of `--config <path>` (or `--config=<path>`) from the arguments.
pub fn config_path_from_args(args: impl IntoIterator<Item = String>) -> Option<PathBuf> {
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    None
}

/// A secret value: never shown by `Debug`, `Display` or `Serialize`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no value is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(<empty>)"
        } else {
            "Secret(<redacted>)"
        })
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Defaults are round-tripped through figment: keep an empty secret empty and
        // never write a real one out.
        if self.0.is_empty() {
            s.serialize_str("")
        } else {
            s.serialize_str("<redacted>")
        }
    }
}

/// How a credential given inline is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inline {
    /// Base64 of the file's bytes (the form some developer portals hand out; whitespace
    /// in it is ignored).
    Base64,
    /// The file's text itself (a PEM key, or a key already in a text encoding).
    Text,
}

/// A credential given either as a file or inline as base64 of the file's bytes (the form
/// some developer portals hand out; whitespace in it is ignored): never both, `None` when
/// neither. Errors name the setting at fault.
pub fn credential_bytes(
    file_setting: &str,
    file: Option<&Path>,
    inline_setting: &str,
    inline: Option<&Secret>,
) -> Result<Option<Vec<u8>>, ConfigError> {
    credential(file_setting, file, inline_setting, inline, Inline::Base64)
}

/// The one credential reader: a credential given either as a file or inline (written as
/// `form` says), never both, `None` when neither. Errors name the setting at fault.
pub fn credential(
    file_setting: &str,
    file: Option<&Path>,
    inline_setting: &str,
    inline: Option<&Secret>,
    form: Inline,
) -> Result<Option<Vec<u8>>, ConfigError> {
    use base64::Engine;
    match (file, inline) {
        (Some(_), Some(_)) => Err(ConfigError::invalid(
            inline_setting,
            format!("give {file_setting} or {inline_setting}, not both"),
        )),
        (Some(path), None) => std::fs::read(path)
            .map(Some)
            .map_err(|source| ConfigError::File {
                setting: file_setting.to_owned(),
                path: path.to_owned(),
                source,
            }),
        (None, Some(inline)) if form == Inline::Text => {
            Ok(Some(inline.expose().as_bytes().to_vec()))
        }
        (None, Some(inline)) => {
            let text: String = inline
                .expose()
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map(Some)
                .map_err(|_| ConfigError::invalid(inline_setting, "is not base64"))
        }
        (None, None) => Ok(None),
    }
}

/// Reads a secret file named by `setting`, trimming one trailing newline.
pub fn read_secret_file(setting: &str, path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
        setting: setting.to_owned(),
        path: path.to_owned(),
        source,
    })?;
    Ok(Secret(text.trim_end_matches(['\r', '\n']).to_owned()))
}

/// Connection to NATS and the JetStream layout (`[nats]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated: `nats://127.0.0.1:4222`.
    pub url: String,
    /// Prefix for stream names and subjects (letters, digits, `_`, `-`), so tenants and
    /// tests can share a server. Empty in production.
    pub prefix: String,
    /// Stream replicas: 1 on a single server, 3 on a cluster.
    pub replicas: usize,
    /// How many streams `EVENTS` and each provider's push stream are split into (1 to 64;
    /// [`crate::topology`]): each partition is a Raft group of its own whose leader the
    /// cluster places, so no one leader carries every message, and publishers route around
    /// a partition that stalls ([`crate::partition`]). 1 is one stream per stage.
    pub partitions: usize,
    /// Publishers with more than one partition: how long one publish waits for its ack
    /// before the message goes to another partition instead, milliseconds.
    pub partition_ack_budget_ms: u64,
    /// JetStream de-duplication window for `Nats-Msg-Id`, seconds (≥ 120).
    pub duplicate_window_secs: u64,
    /// How long dead letters are kept in `DEAD`, days.
    pub dead_letter_max_age_days: u64,
    /// Record each event's delivery status in `STATUS` ([`crate::tracking`]).
    pub tracking: bool,
    /// How long status records are kept, seconds.
    pub tracking_max_age_secs: u64,
    /// Upper bound on `STATUS`, bytes per replica; the oldest records go first.
    pub tracking_max_bytes: u64,
    /// How long `INAPP` keeps an in-app message whatever its deadline, seconds: at least
    /// the longest deadline producers may ask for (`producers.max_ttl_secs`).
    pub inapp_max_age_secs: u64,
    /// Upper bound on one publish waiting for its JetStream ack, milliseconds.
    pub publish_timeout_ms: u64,
    /// ingest: how long a webhook's event is retried (leader election, server restart,
    /// reconnect) before the webhook is answered 503, milliseconds; 0 means one try.
    /// Sized to cover a JetStream leader election (4–9 s on nats-server) and a
    /// reconnect; the tries go on even if the sender hangs up sooner.
    pub publish_retry_budget_ms: u64,
    /// User name, with `password`.
    pub user: Option<String>,
    /// Password, with `user`.
    pub password: Option<Secret>,
    /// Authentication token.
    pub token: Option<Secret>,
    /// A `.creds` file (JWT + NKey seed).
    pub creds_file: Option<PathBuf>,
    /// Require TLS to the server.
    pub tls_required: bool,
    /// Extra CA certificate (PEM) to trust for the server.
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            prefix: String::new(),
            replicas: 1,
            partitions: 1,
            partition_ack_budget_ms: 250,
            duplicate_window_secs: 120,
            dead_letter_max_age_days: 14,
            tracking: true,
            tracking_max_age_secs: 86_400,
            tracking_max_bytes: 1 << 30,
            inapp_max_age_secs: 86_400,
            publish_timeout_ms: 2_000,
            publish_retry_budget_ms: 12_000,
            user: None,
            password: None,
            token: None,
            creds_file: None,
            tls_required: false,
            tls_ca_file: None,
        }
    }
}

impl NatsConfig {
    /// Checks the values, naming the setting that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.url.trim().is_empty() {
            return Err(ConfigError::invalid("nats.url", "must not be empty"));
        }
        if !self
            .prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ConfigError::invalid(
                "nats.prefix",
                "may contain only ASCII letters, digits, `_` and `-`",
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(ConfigError::invalid("nats.replicas", "must be 1 to 5"));
        }
        if !(1..=64).contains(&self.partitions) {
            return Err(ConfigError::invalid("nats.partitions", "must be 1 to 64"));
        }
        if self.partition_ack_budget_ms == 0
            || self.partition_ack_budget_ms >= self.publish_timeout_ms
        {
            return Err(ConfigError::invalid(
                "nats.partition_ack_budget_ms",
                "must be positive and below nats.publish_timeout_ms (else no other partition is tried)",
            ));
        }
        if self.duplicate_window_secs < 120 {
            return Err(ConfigError::invalid(
                "nats.duplicate_window_secs",
                "must be at least 120 so producer retries are de-duplicated",
            ));
        }
        if self.tracking_max_age_secs < 60 {
            return Err(ConfigError::invalid(
                "nats.tracking_max_age_secs",
                "must be at least 60",
            ));
        }
        if self.inapp_max_age_secs < 60 {
            return Err(ConfigError::invalid(
                "nats.inapp_max_age_secs",
                "must be at least 60",
            ));
        }
        if self.tracking_max_bytes < 1 << 20 || self.tracking_max_bytes > i64::MAX as u64 {
            return Err(ConfigError::invalid(
                "nats.tracking_max_bytes",
                "must be at least 1 MiB",
            ));
        }
        if self.publish_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "nats.publish_timeout_ms",
                "must be positive",
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(ConfigError::invalid(
                "nats.user",
                "and nats.password must be set together",
            ));
        }
        Ok(())
    }
}

/// Log output (`[telemetry]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `json` (one object per line, for log pipelines) or `pretty` (for people).
    pub format: LogFormat,
    /// A `tracing` filter: `info`, `pushline=debug,info`, …
    pub filter: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            format: LogFormat::Json,
            filter: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Pretty,
}

/// How a JetStream consumer worker runs (`[worker]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Messages handled at once by one replica.
    pub concurrency: usize,
    /// Failed tries before work *without a deadline* is dead-lettered (work with a
    /// deadline is retried until the deadline). Counted by the worker, not the server.
    pub max_attempts: u64,
    /// Crash-loop guard: a message the server has delivered more often than this
    /// without it being settled is dead-lettered unseen. Far above `max_attempts`,
    /// because the server also counts deliveries to connections that were already gone.
    pub max_deliveries: u64,
    /// dispatchers: a push with less time than this left before its deadline is not
    /// handed to the provider (it could not arrive in time), milliseconds.
    pub deadline_margin_ms: u64,
    /// How long the server waits for an ack before redelivering, seconds. Short,
    /// because it is how soon work that was handed to a connection that vanished (a
    /// node failure, a reconnect, a crashed replica) comes back; the worker tells the
    /// server it is still working on slower messages every third of it.
    pub ack_wait_secs: u64,
    /// First retry delay, milliseconds; doubles per attempt, with jitter.
    pub retry_base_ms: u64,
    /// Longest retry delay, milliseconds.
    pub retry_max_ms: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: 256,
            max_attempts: 8,
            max_deliveries: 200,
            deadline_margin_ms: 100,
            ack_wait_secs: 4,
            retry_base_ms: 200,
            retry_max_ms: 2_000,
        }
    }
}

impl WorkerConfig {
    /// Checks the values; `section` is the TOML section the struct sits in.
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        if !(1..=100_000).contains(&self.concurrency) {
            return Err(ConfigError::invalid(
                format!("{section}.concurrency"),
                "must be 1 to 100000",
            ));
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::invalid(
                format!("{section}.max_attempts"),
                "must be at least 1",
            ));
        }
        if self.max_deliveries <= self.max_attempts {
            return Err(ConfigError::invalid(
                format!("{section}.max_deliveries"),
                "must be above max_attempts (keep it far above: the server also counts deliveries nobody saw)",
            ));
        }
        if self.ack_wait_secs == 0 {
            return Err(ConfigError::invalid(
                format!("{section}.ack_wait_secs"),
                "must be positive",
            ));
        }
        if self.retry_base_ms == 0 || self.retry_base_ms > self.retry_max_ms {
            return Err(ConfigError::invalid(
                format!("{section}.retry_base_ms"),
                "must be positive and not above retry_max_ms",
            ));
        }
        Ok(())
    }
}

/// Parses a `host:port` setting.
pub fn parse_addr(setting: &str, value: &str) -> Result<std::net::SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::invalid(
            setting,
            format!("`{value}` is not an address like 0.0.0.0:8080"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_credential_is_taken_inline_as_it_is() {
        let key = Secret::new("-----BEGIN PRIVATE KEY-----\nabc");
        let read = credential("k_file", None, "k", Some(&key), Inline::Text).expect("text");
        assert_eq!(read.as_deref(), Some(key.expose().as_bytes()));
        let both = credential(
            "k_file",
            Some(Path::new("k.pem")),
            "k",
            Some(&key),
            Inline::Text,
        );
        assert!(both.is_err());
    }

    #[test]
    fn a_credential_is_a_file_or_inline_base64_never_both() {
        use base64::Engine;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("key.p8");
        std::fs::write(&path, b"-----BEGIN PRIVATE KEY-----").expect("write");
        let inline = Secret::new(format!(
            "{}\n",
            base64::engine::general_purpose::STANDARD.encode(b"-----BEGIN PRIVATE KEY-----")
        ));
        let from_file = credential_bytes("k_file", Some(&path), "k_b64", None).expect("file");
        let from_inline = credential_bytes("k_file", None, "k_b64", Some(&inline)).expect("b64");
        assert_eq!(from_file, from_inline);
        assert_eq!(
            credential_bytes("k_file", None, "k_b64", None).expect("none"),
            None
        );
        let both = credential_bytes("k_file", Some(&path), "k_b64", Some(&inline));
        assert!(both.expect_err("both").to_string().contains("not both"));
        let bad = credential_bytes("k_file", None, "k_b64", Some(&Secret::new("not base64!")));
        assert!(bad.expect_err("bad").to_string().contains("k_b64"));
    }

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Sample {
        listen: String,
        nats: NatsConfig,
        secret: Secret,
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API
    fn env_overrides_file_overrides_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:1\"\n[nats]\nurl = \"nats://file:4222\"\nreplicas = 3\n",
        )
        .expect("write");
        figment::Jail::expect_with(|jail| {
            jail.set_env("PUSHLINE_NATS__URL", "nats://env:4222");
            let cfg: Sample = load(Some(&path)).expect("load");
            assert_eq!(cfg.listen, "0.0.0.0:1");
            assert_eq!(cfg.nats.url, "nats://env:4222");
            assert_eq!(cfg.nats.replicas, 3);
            assert_eq!(cfg.nats.publish_timeout_ms, 2_000);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = Figment::from(Serialized::defaults(Sample::default()))
            .merge(Toml::string("[nats]\nurll = \"x\"\n"))
            .extract::<Sample>()
            .expect_err("unknown key");
        assert!(err.to_string().contains("urll"), "{err}");
    }

    #[test]
    fn config_dumps_redact_secrets() {
        #[derive(Serialize)]
        struct WithSecrets {
            nats: NatsConfig,
            webhook: Vec<Secret>,
        }
        let config = WithSecrets {
            nats: NatsConfig {
                password: Some(Secret::new("nats-password")),
                user: Some("u".into()),
                token: Some(Secret::new("nats-token")),
                ..NatsConfig::default()
            },
            webhook: vec![Secret::new("webhook-secret")],
        };
        let dump = serde_json::to_string(&config).expect("json");
        for secret in ["nats-password", "nats-token", "webhook-secret"] {
            assert!(!dump.contains(secret), "{dump}");
        }
        assert!(dump.contains("<redacted>"));
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&s).expect("json").contains("hunter2"));
    }

    #[test]
    fn bad_prefix_names_the_setting() {
        let cfg = NatsConfig {
            prefix: "a.b".into(),
            ..NatsConfig::default()
        };
        assert!(
            cfg.validate()
                .expect_err("invalid")
                .to_string()
                .contains("nats.prefix")
        );
    }

    #[test]
    fn config_flag_is_found_in_both_spellings() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            config_path_from_args(args(&["bin", "--config", "a.toml"])),
            Some(PathBuf::from("a.toml"))
        );
        assert_eq!(
            config_path_from_args(args(&["bin", "--config=b.toml"])),
            Some(PathBuf::from("b.toml"))
        );
        assert_eq!(config_path_from_args(args(&["bin"])), None);
    }
}
