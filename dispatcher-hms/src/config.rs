//! HMS dispatcher configuration (`PUSHLINE_<SECTION>__<KEY>` for every field).

use std::net::SocketAddr;
use std::path::PathBuf;

use pipeline::config::{
    ConfigError, Inline, NatsConfig, Secret, TelemetryConfig, WorkerConfig, credential, parse_addr,
};
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Admin address for `/metrics`, `/healthz`, `/readyz`.
    pub admin_listen: String,
    /// Huawei Push Kit.
    pub hms: HmsConfig,
    /// NATS connection and stream layout.
    pub nats: NatsConfig,
    /// The `dispatch-hms` consumer.
    pub worker: WorkerConfig,
    /// Mass-pruning protection (`[prune_guard]`).
    pub prune_guard: pipeline::prune_guard::PruneGuardConfig,
    /// Logs.
    pub telemetry: TelemetryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin_listen: "127.0.0.1:9086".into(),
            hms: HmsConfig::default(),
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

/// `[hms]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HmsConfig {
    /// Push Kit's endpoint (`/v1/{clientId}/messages:send` is appended).
    pub base_url: String,
    /// Huawei's OAuth 2.0 token endpoint.
    pub token_url: String,
    /// Extra CA certificates (PEM) to trust, e.g. a local mock's.
    pub ca_files: Vec<PathBuf>,
    /// Persistent connection pools per app (HTTP/2 or HTTP/1.1, as ALPN negotiates).
    pub connections: usize,
    /// Upper bound on one request, milliseconds.
    pub request_timeout_ms: u64,
    /// Refresh an access token this many seconds before it expires.
    pub token_refresh_margin_secs: u64,
    /// How often every app's credential is checked with the token endpoint, seconds (0:
    /// only by the answers to real pushes).
    pub credential_check_secs: u64,
    /// The apps this deployment sends for.
    pub apps: Vec<AppConfig>,
}

impl Default for HmsConfig {
    fn default() -> Self {
        HmsConfig {
            base_url: "https://push-api.cloud.huawei.com".into(),
            token_url: "https://oauth-login.cloud.huawei.com/oauth2/v3/token".into(),
            ca_files: Vec::new(),
            connections: 2,
            request_timeout_ms: 5_000,
            token_refresh_margin_secs: 300,
            credential_check_secs: 300,
            apps: Vec::new(),
        }
    }
}

/// One app (`[[hms.apps]]`), as AppGallery Connect shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The app id (digits) from AppGallery Connect: devices register under it.
    pub app_id: String,
    /// The app's OAuth 2.0 client id (digits) from AppGallery Connect, when it is not the
    /// app id: the token endpoint's `client_id` and the `{clientid}` of the send URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// A file holding the app secret (`client_secret`; surrounding whitespace ignored).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// The app secret itself, instead of `client_secret_file`.
    #[serde(default)]
    pub client_secret: Option<Secret>,
}

impl AppConfig {
    /// The OAuth 2.0 client id: `client_id`, else the app id.
    pub fn client_id(&self) -> &str {
        self.client_id.as_deref().unwrap_or(&self.app_id)
    }

    /// The app secret, from either setting (exactly one).
    pub fn secret(&self, i: usize) -> Result<Secret, ConfigError> {
        let (file, inline) = (
            format!("hms.apps[{i}].client_secret_file"),
            format!("hms.apps[{i}].client_secret"),
        );
        let bytes = credential(
            &file,
            self.client_secret_file.as_deref(),
            &inline,
            self.client_secret.as_ref(),
            Inline::Text,
        )?
        .ok_or_else(|| ConfigError::invalid(&file, "is required (or client_secret)"))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| ConfigError::invalid(&file, "the secret is not text"))?;
        let text = text.trim();
        if text.is_empty() {
            return Err(ConfigError::invalid(file, "the secret is empty"));
        }
        Ok(Secret::new(text))
    }
}

/// Whether `id` is an app id as Huawei's token endpoint takes it: 1 to 64 digits.
pub fn valid_app_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
}

impl Config {
    /// Validates every setting, naming the one at fault.
    pub fn resolve(&self) -> Result<SocketAddr, ConfigError> {
        let admin = parse_addr("admin_listen", &self.admin_listen)?;
        self.nats.validate()?;
        self.worker.validate("worker")?;
        self.prune_guard.validate()?;
        for (setting, url) in [
            ("hms.base_url", &self.hms.base_url),
            ("hms.token_url", &self.hms.token_url),
        ] {
            if !url.starts_with("https://") {
                return Err(ConfigError::invalid(setting, "must be an https:// URL"));
            }
        }
        if !(1..=64).contains(&self.hms.connections) {
            return Err(ConfigError::invalid("hms.connections", "must be 1 to 64"));
        }
        if self.hms.request_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "hms.request_timeout_ms",
                "must be positive",
            ));
        }
        if self.hms.token_refresh_margin_secs >= 3_000 {
            return Err(ConfigError::invalid(
                "hms.token_refresh_margin_secs",
                "must be below 3000 (tokens live an hour)",
            ));
        }
        if self.hms.apps.is_empty() {
            return Err(ConfigError::invalid(
                "hms.apps",
                "is empty: configure at least one app",
            ));
        }
        for (i, app) in self.hms.apps.iter().enumerate() {
            if !valid_app_id(&app.app_id) {
                return Err(ConfigError::invalid(
                    format!("hms.apps[{i}].app_id"),
                    "must be the app id from AppGallery Connect: 1 to 64 digits",
                ));
            }
            if app.client_id.as_deref().is_some_and(|id| !valid_app_id(id)) {
                return Err(ConfigError::invalid(
                    format!("hms.apps[{i}].client_id"),
                    "must be the OAuth 2.0 client id from AppGallery Connect: 1 to 64 digits",
                ));
            }
            if self.hms.apps[..i].iter().any(|a| a.app_id == app.app_id) {
                return Err(ConfigError::invalid(
                    format!("hms.apps[{i}].app_id"),
                    "is configured twice",
                ));
            }
        }
        Ok(admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(apps: Vec<AppConfig>) -> Config {
        let mut config = Config::default();
        config.hms.apps = apps;
        config
    }

    fn app(id: &str) -> AppConfig {
        AppConfig {
            app_id: id.into(),
            client_id: None,
            client_secret_file: None,
            client_secret: Some(Secret::new("s3cret")),
        }
    }

    #[test]
    fn app_ids_are_digits_and_configured_once() {
        assert!(config(vec![app("10086000")]).resolve().is_ok());
        let error = config(vec![app("com.example")]).resolve().unwrap_err();
        assert!(error.to_string().contains("hms.apps[0].app_id"), "{error}");
        let error = config(vec![app("1"), app("1")]).resolve().unwrap_err();
        assert!(error.to_string().contains("hms.apps[1].app_id"), "{error}");
        let error = config(vec![]).resolve().unwrap_err();
        assert!(error.to_string().contains("hms.apps"), "{error}");
    }

    #[test]
    fn the_client_id_is_the_app_id_unless_configured() {
        assert_eq!(app("10086000").client_id(), "10086000");
        let own = AppConfig {
            client_id: Some("104000123".into()),
            ..app("10086000")
        };
        assert_eq!(own.client_id(), "104000123");
        assert!(config(vec![own]).resolve().is_ok());
        let bad = AppConfig {
            client_id: Some("client-1".into()),
            ..app("10086000")
        };
        let error = config(vec![bad]).resolve().unwrap_err();
        assert!(
            error.to_string().contains("hms.apps[0].client_id"),
            "{error}"
        );
    }

    #[test]
    fn the_secret_comes_from_exactly_one_setting_trimmed() {
        assert_eq!(app("1").secret(0).expect("inline").expose(), "s3cret");
        let dir = std::env::temp_dir().join(format!("hms-secret-{}", std::process::id()));
        std::fs::write(&dir, "  file-secret\n").expect("write");
        let from_file = AppConfig {
            client_secret_file: Some(dir.clone()),
            client_secret: None,
            ..app("1")
        };
        assert_eq!(from_file.secret(0).expect("file").expose(), "file-secret");
        let both = AppConfig {
            client_secret_file: Some(dir.clone()),
            ..app("1")
        };
        assert!(both.secret(0).unwrap_err().to_string().contains("not both"));
        let neither = AppConfig {
            client_secret: None,
            ..app("1")
        };
        assert!(
            neither
                .secret(3)
                .unwrap_err()
                .to_string()
                .contains("hms.apps[3].client_secret_file")
        );
        let _ = std::fs::remove_file(dir);
    }

    /// The deployment's own files (`deploy/compose.toml`, `deploy/k8s.toml`) are valid
    /// configurations.
    #[test]
    fn the_deploy_files_are_configurations() {
        for file in ["compose.toml", "k8s.toml"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy")
                .join(file);
            let config: Config = pipeline::config::load_from(
                Some(&path),
                figment::providers::Env::prefixed("PUSHLINE_HMS_DEPLOY_TEST_"),
            )
            .unwrap_or_else(|e| panic!("{file}: {e}"));
            config.resolve().unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }

    #[test]
    fn endpoints_must_be_https() {
        let mut c = config(vec![app("1")]);
        c.hms.token_url = "http://oauth.example/token".into();
        let error = c.resolve().unwrap_err();
        assert!(error.to_string().contains("hms.token_url"), "{error}");
    }
}
