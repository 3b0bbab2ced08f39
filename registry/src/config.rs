//! Registry configuration. Every field can come from the TOML file or from
//! `PUSHLINE_<SECTION>__<KEY>` (e.g. `PUSHLINE_REDIS__URL`).

use std::collections::BTreeMap;
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
    /// Deepest JSON nesting accepted in a body; deeper → 400.
    pub max_json_depth: usize,
    /// The public listener's bounds on connections (`[connections]`).
    pub connections: pipeline::listener::ConnectionsConfig,
    /// Where registered endpoints that pushline will connect to (Web Push subscriptions)
    /// may point (`[endpoints]`); keep it equal to the Web Push dispatcher's
    /// `webpush.endpoints`.
    pub endpoints: pipeline::egress::EndpointsConfig,
    /// Web origins (`https://app.example.com`, exact) whose pages may call the device,
    /// inbox and receipt APIs from a browser (CORS); empty: none.
    pub cors_origins: Vec<String>,
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
    /// The in-app fall-back consumer (`FALLBACK` → held pushes released or dropped).
    pub fallback: WorkerConfig,
    /// The Webex webhook pushline depends on (`pushctl webhooks`, the watchdog).
    pub webex_webhooks: crate::webhooks::WebhooksConfig,
    /// Logs.
    pub telemetry: TelemetryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:8081".into(),
            admin_listen: "127.0.0.1:9081".into(),
            body_limit_bytes: 16 * 1024,
            max_json_depth: 16,
            connections: pipeline::listener::ConnectionsConfig::default(),
            endpoints: pipeline::egress::EndpointsConfig::default(),
            cors_origins: Vec::new(),
            redis: RedisConfig::default(),
            devices: DevicesConfig::default(),
            auth: AuthConfig::default(),
            nats: NatsConfig::default(),
            fanout: WorkerConfig::default(),
            prune: WorkerConfig {
                concurrency: 32,
                ..WorkerConfig::default()
            },
            // Held pushes wait out their window as messages put back with a delay, which
            // may count against the consumer's ack-pending bound (4 × concurrency): room
            // for a window's worth at thousands of in-app messages a second.
            fallback: WorkerConfig {
                concurrency: 1_024,
                ..WorkerConfig::default()
            },
            webex_webhooks: crate::webhooks::WebhooksConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

/// `[redis]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// How Redis is run: `single`, `sentinel` or `cluster`.
    pub mode: RedisMode,
    /// `single`: the server, `redis://[user:password@]host:port/db` (`rediss://` for TLS).
    /// `sentinel`: the primary's credentials, db and TLS (its host is ignored: Sentinel
    /// names it).
    pub url: String,
    /// `sentinel`: the sentinels (`redis://host:26379`, credentials for the sentinels
    /// themselves if they need any); `cluster`: seed nodes (any reachable node is enough;
    /// the client learns the rest).
    pub nodes: Vec<String>,
    /// `sentinel`: the monitored primary's name (`sentinel monitor <name> …`).
    pub master_name: String,
    /// Prefix of every key, so several deployments or tests share a server.
    pub prefix: String,
    /// Upper bound on one Redis command, milliseconds.
    pub response_timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            mode: RedisMode::Single,
            url: "redis://127.0.0.1:6379".into(),
            nodes: Vec::new(),
            master_name: String::new(),
            prefix: "pushline:".into(),
            response_timeout_ms: 1_000,
        }
    }
}

/// How Redis is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    /// One server (or a managed endpoint that fails over behind one address).
    Single,
    /// A primary with replicas, watched by Redis Sentinel.
    Sentinel,
    /// Redis Cluster.
    Cluster,
}

impl RedisConfig {
    /// Checks the settings of the chosen mode, naming the one at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let is_url = |u: &str| u.starts_with("redis://") || u.starts_with("rediss://");
        if !is_url(&self.url) {
            return Err(ConfigError::invalid(
                "redis.url",
                "must start with redis:// or rediss://",
            ));
        }
        if self.response_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "redis.response_timeout_ms",
                "must be positive",
            ));
        }
        match self.mode {
            RedisMode::Single => {}
            RedisMode::Sentinel | RedisMode::Cluster => {
                if self.nodes.is_empty() {
                    return Err(ConfigError::invalid(
                        "redis.nodes",
                        "must list the sentinels (mode sentinel) or seed nodes (mode cluster)",
                    ));
                }
                if let Some(bad) = self.nodes.iter().find(|n| !is_url(n)) {
                    return Err(ConfigError::invalid(
                        "redis.nodes",
                        format!("`{bad}` must start with redis:// or rediss://"),
                    ));
                }
            }
        }
        if self.mode == RedisMode::Sentinel && self.master_name.trim().is_empty() {
            return Err(ConfigError::invalid(
                "redis.master_name",
                "must name the primary the sentinels monitor",
            ));
        }
        Ok(())
    }
}

/// `[devices]`: registration policies and defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevicesConfig {
    /// Most devices per person (a device's tokens count once); what one more does is the
    /// app's `device_limit`.
    pub max_per_person: usize,
    /// A registration not refreshed within this many seconds expires.
    pub ttl_secs: u64,
    /// The app of a registration that names none, by provider (`apns = "<bundle id>"`,
    /// `fcm = "<project id>"`, …), e.g. for `POST /register`.
    pub default_apps: BTreeMap<String, String>,
    /// The older spelling of `default_apps.apns`.
    pub default_apns_app: String,
    /// The older spelling of `default_apps.fcm`.
    pub default_fcm_app: String,
    /// Environment used when a registration names none.
    pub default_environment: Environment,
    /// Key-encryption keys sealing devices' end-to-end keys at rest: the first seals, all
    /// open (rotation: put the new one first). Without one, registrations carrying
    /// `e2e_key` are refused.
    pub key_encryption_keys: Vec<crate::keyring::KekConfig>,
    /// How long a connected, active device's pushes wait for its app to acknowledge the
    /// in-app message of the same event before they go anyway, milliseconds
    /// (`docs/inapp.md`).
    pub inapp_ack_window_ms: u64,
    /// Per-app policies, by APNs bundle id or FCM project id; apps not listed get
    /// [`AppPolicy::default`].
    pub apps: BTreeMap<String, AppPolicy>,
}

/// `[devices.apps."<bundle id or project id>"]`: how one app's devices behave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppPolicy {
    /// Several persons may hold one device (a shared phone): each receives their pushes,
    /// and one person logging out removes only that person. Otherwise a device registered
    /// by a second person moves to them.
    pub multi_user: bool,
    /// One device per person: registering a new device removes the person's other
    /// devices of this app, which stop receiving pushes.
    pub single_device: bool,
    /// What a registration beyond `devices.max_per_person` devices does.
    pub device_limit: DeviceLimit,
    /// Encrypt every push to this app's devices with the device's key (devices without a
    /// key get none); otherwise only `/v1/notify` requests with `encrypt: true` are.
    pub encrypt_payloads: bool,
    /// Keep a server-side copy of every message to a person of this app (their inbox,
    /// `docs/inapp.md`); otherwise nothing is kept once delivered.
    pub inbox: bool,
    /// How long the inbox keeps a message, seconds (1 to 31536000; 30 days).
    pub inbox_max_age_secs: u64,
    /// Most messages the inbox keeps per person; beyond it the oldest go (1 to 10000).
    pub inbox_max_messages: u64,
    /// Put the person's unread inbox count on this app's pushes where the provider shows
    /// one: APNs alerts' `aps.badge`, a `unread` member of Web Push payloads. Needs
    /// `inbox`.
    pub inbox_badge: bool,
}

impl Default for AppPolicy {
    fn default() -> Self {
        AppPolicy {
            multi_user: false,
            single_device: false,
            device_limit: DeviceLimit::default(),
            encrypt_payloads: false,
            inbox: false,
            inbox_max_age_secs: 30 * 86_400,
            inbox_max_messages: 500,
            inbox_badge: false,
        }
    }
}

impl AppPolicy {
    /// The inbox's retention, when the app keeps one.
    pub fn inbox(&self) -> Option<crate::inbox::Retention> {
        self.inbox.then(|| crate::inbox::Retention {
            max_age_ms: self.inbox_max_age_secs.saturating_mul(1000),
            max_messages: self.inbox_max_messages,
        })
    }
}

/// What happens when a person registers one device more than allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceLimit {
    /// The least recently registered device is removed.
    #[default]
    EvictOldest,
    /// The registration is refused with 409 `device_limit`.
    Refuse,
}

impl DevicesConfig {
    /// The app of a registration for `provider` that names none (empty: none configured).
    pub fn default_app(&self, provider: &str) -> &str {
        if let Some(app) = self.default_apps.get(provider) {
            return app;
        }
        match provider {
            "apns" => &self.default_apns_app,
            "fcm" => &self.default_fcm_app,
            _ => "",
        }
    }

    /// Whether any app keeps an inbox (otherwise the fan-out skips the inbox step).
    pub fn keeps_inboxes(&self) -> bool {
        self.apps.values().any(|policy| policy.inbox)
    }

    /// The policy of `app`.
    pub fn policy(&self, app: &str) -> AppPolicy {
        self.apps.get(app).cloned().unwrap_or_default()
    }
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            max_per_person: 10,
            ttl_secs: 60 * 86_400,
            default_apps: BTreeMap::new(),
            default_apns_app: String::new(),
            default_fcm_app: String::new(),
            default_environment: Environment::Production,
            key_encryption_keys: Vec::new(),
            inapp_ack_window_ms: 2_000,
            apps: BTreeMap::new(),
        }
    }
}

/// `[auth]`: who may call the device API. Modes combine: a bearer that is a known API key
/// is a service; else, with `jwt.keys` set, a JWT names the person in `sub`; else, with
/// `webex.enabled`, Webex says whose access token it is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// API keys for app backends, stored as SHA-256 hashes.
    pub api_keys: Vec<ApiKey>,
    /// Mobile apps presenting the user's Webex access token.
    pub webex: WebexAuthConfig,
    /// JWTs from the customer's identity provider.
    pub jwt: JwtAuthConfig,
    /// How many failed authentications one client may make before it is refused with 429.
    pub failures: FailureLimitConfig,
    /// DEVELOPMENT ONLY: no authentication at all. Logged loudly.
    pub insecure_no_auth: bool,
}

/// One API key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Who holds it (for logs).
    pub name: String,
    /// Lowercase hex SHA-256 of the key (`printf %s KEY | sha256sum`).
    pub sha256: String,
    /// What it may do: `register` (register and delete devices of any person), `read`
    /// (list any person's devices), `admin` (everything). Default: register + read.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<Scope>,
}

fn default_scopes() -> Vec<Scope> {
    vec![Scope::Register, Scope::Read]
}

/// An API-key scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Register and delete devices of any person.
    Register,
    /// List any person's devices.
    Read,
    /// Everything.
    Admin,
}

/// `[auth.failures]`: failed authentications (a bearer that is refused with 401, not a
/// missing one) counted per client address, in fixed windows. A client at the limit is
/// refused with 429 and `Retry-After` until its window ends for anything that would fail
/// or need a Webex look-up; valid API keys, valid JWTs and Webex tokens already known
/// still pass.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FailureLimitConfig {
    /// Failed authentications one client may make per window; 0 turns the limit off.
    pub limit: u32,
    /// The window, seconds.
    pub window_secs: u64,
    /// Most clients remembered at once; past it, the clients whose window started first
    /// are forgotten.
    pub max_clients: usize,
}

impl Default for FailureLimitConfig {
    fn default() -> Self {
        FailureLimitConfig {
            limit: 30,
            window_secs: 60,
            max_clients: 100_000,
        }
    }
}

/// `[auth.webex]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebexAuthConfig {
    /// Accept Webex access tokens (checked with `GET {base_url}/v1/people/me`).
    pub enabled: bool,
    /// Webex API base URL: `https://`, or `http://` to a loopback host (tests).
    pub base_url: String,
    /// How long a positive answer is reused, seconds.
    pub cache_secs: u64,
    /// How long a token Webex refused is refused without asking again, seconds.
    pub negative_cache_secs: u64,
    /// Most answers kept in each cache (positive, negative); past it the entry closest to
    /// expiring is dropped.
    pub cache_entries: usize,
    /// Most look-ups in flight at once (identical tokens share one); a request that cannot
    /// start its look-up within `timeout_ms` gets 503.
    pub max_concurrent_lookups: usize,
    /// Upper bound on the Webex call, milliseconds; past it the request gets 503.
    pub timeout_ms: u64,
    /// Extra CA certificates (PEM) to trust for `base_url`.
    pub ca_files: Vec<std::path::PathBuf>,
}

impl Default for WebexAuthConfig {
    fn default() -> Self {
        WebexAuthConfig {
            enabled: false,
            base_url: "https://webexapis.com".into(),
            cache_secs: 60,
            negative_cache_secs: 60,
            cache_entries: 10_000,
            max_concurrent_lookups: 16,
            timeout_ms: 3_000,
            ca_files: Vec::new(),
        }
    }
}

/// `[auth.jwt]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtAuthConfig {
    /// Verification keys; JWT auth is on when there is at least one.
    pub keys: Vec<JwtKey>,
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    pub leeway_secs: u64,
    /// Longest lifetime a token may claim, seconds: `exp` − `iat` (`exp` − now without
    /// `iat`, or with an `iat` in the future); longer → 401.
    pub max_lifetime_secs: u64,
}

impl Default for JwtAuthConfig {
    fn default() -> Self {
        JwtAuthConfig {
            keys: Vec::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway_secs: 30,
            max_lifetime_secs: 86_400,
        }
    }
}

/// One JWT verification key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKey {
    /// `HS256`, `RS256` or `ES256`.
    pub algorithm: JwtAlgorithm,
    /// Matched against the token's `kid` when both are set.
    #[serde(default)]
    pub kid: Option<String>,
    /// The shared secret, for HS256: at least [`MIN_HS256_SECRET`] bytes.
    #[serde(default)]
    pub secret: Option<pipeline::config::Secret>,
    /// A file holding the shared secret, for HS256 (the same minimum).
    #[serde(default)]
    pub secret_file: Option<std::path::PathBuf>,
    /// The public key (PEM), for RS256 and ES256.
    #[serde(default)]
    pub public_key_file: Option<std::path::PathBuf>,
}

/// Supported JWT algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256.
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256.
    RS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
}

/// Shortest HS256 secret accepted, bytes: HMAC-SHA256's own output size, below which the
/// secret, not the algorithm, is what an attacker guesses.
pub const MIN_HS256_SECRET: usize = 32;

/// A base URL the registry calls with credentials (`setting` names it): `https://`, or
/// `http://` only to a loopback host (127.0.0.0/8, `[::1]`, `localhost`), where nothing
/// crosses a network.
pub fn check_base_url(setting: &str, url: &str) -> Result<(), ConfigError> {
    let parsed = pipeline::provider_http::base_url(setting, url)?;
    if parsed.scheme() == "https" || is_loopback(&parsed) {
        return Ok(());
    }
    Err(ConfigError::invalid(
        setting,
        format!("`{url}` must be https:// (http:// is accepted only to a loopback host)"),
    ))
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Parsed addresses.
#[derive(Debug, Clone, Copy)]
pub struct Resolved {
    /// Public address.
    pub listen: SocketAddr,
    /// Admin address.
    pub admin_listen: SocketAddr,
}

/// A web origin as browsers send it: `http` or `https`, a host, an optional port, and
/// nothing else (no path, no trailing slash, no wildcard).
fn check_origin(origin: &str) -> Result<(), String> {
    let bad = || {
        format!("`{origin}` is not an origin (scheme://host[:port], e.g. https://app.example.com)")
    };
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(bad)?;
    let ok = !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if ok { Ok(()) } else { Err(bad()) }
}

/// An app's inbox settings: in range, and no inbox for an app whose payloads only its
/// devices may read.
fn check_inbox(app: &str, policy: &AppPolicy) -> Result<(), ConfigError> {
    let setting = |field: &str| format!("devices.apps.{app}.{field}");
    if !(1..=31_536_000).contains(&policy.inbox_max_age_secs) {
        return Err(ConfigError::invalid(
            setting("inbox_max_age_secs"),
            "must be 1 to 31536000",
        ));
    }
    if !(1..=10_000).contains(&policy.inbox_max_messages) {
        return Err(ConfigError::invalid(
            setting("inbox_max_messages"),
            "must be 1 to 10000",
        ));
    }
    if policy.inbox_badge && !policy.inbox {
        return Err(ConfigError::invalid(
            setting("inbox_badge"),
            "needs inbox = true (the badge is the inbox's unread count)",
        ));
    }
    if policy.inbox && policy.encrypt_payloads {
        return Err(ConfigError::invalid(
            setting("inbox"),
            "cannot be on with encrypt_payloads: the server-side copy would hold what only the app's devices may read",
        ));
    }
    Ok(())
}

impl Config {
    /// Validates every setting, naming the one at fault.
    pub fn resolve(&self) -> Result<Resolved, ConfigError> {
        let listen = parse_addr("listen", &self.listen)?;
        let admin_listen = parse_addr("admin_listen", &self.admin_listen)?;
        self.nats.validate()?;
        self.connections.validate()?;
        pipeline::egress::EgressPolicy::new("endpoints", &self.endpoints)?;
        self.fanout.validate("fanout")?;
        self.prune.validate("prune")?;
        self.fallback.validate("fallback")?;
        self.redis.validate()?;
        if self.webex_webhooks.enabled {
            crate::webhooks::Client::new(&self.webex_webhooks)?;
        }
        if !(1..=1_000).contains(&self.devices.max_per_person) {
            return Err(ConfigError::invalid(
                "devices.max_per_person",
                "must be 1 to 1000",
            ));
        }
        if !(100..=60_000).contains(&self.devices.inapp_ack_window_ms) {
            return Err(ConfigError::invalid(
                "devices.inapp_ack_window_ms",
                "must be 100 to 60000",
            ));
        }
        if self.devices.ttl_secs < 60 {
            return Err(ConfigError::invalid(
                "devices.ttl_secs",
                "must be at least 60",
            ));
        }
        crate::keyring::Keyring::from_config(&self.devices.key_encryption_keys)?;
        for (app, policy) in &self.devices.apps {
            crate::validate::app("devices.apps", app)
                .map_err(|problem| ConfigError::invalid(format!("devices.apps.{app}"), problem))?;
            check_inbox(app, policy)?;
        }
        let providers = providers::all();
        for (provider, app) in &self.devices.default_apps {
            let setting = format!("devices.default_apps.{provider}");
            crate::validate::provider(&providers, &setting, provider)
                .map_err(|problem| ConfigError::invalid(setting.clone(), problem))?;
            crate::validate::app(&setting, app)
                .map_err(|problem| ConfigError::invalid(setting.clone(), problem))?;
        }
        for (i, origin) in self.cors_origins.iter().enumerate() {
            check_origin(origin)
                .map_err(|problem| ConfigError::invalid(format!("cors_origins[{i}]"), problem))?;
        }
        if !(2..=512).contains(&self.max_json_depth) {
            return Err(ConfigError::invalid("max_json_depth", "must be 2 to 512"));
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
            if key.scopes.is_empty() {
                return Err(ConfigError::invalid(
                    format!("auth.api_keys[{i}].scopes"),
                    "must name at least one scope",
                ));
            }
        }
        let jwt = &self.auth.jwt;
        if !jwt.keys.is_empty() && (jwt.issuer.is_empty() || jwt.audience.is_empty()) {
            return Err(ConfigError::invalid(
                "auth.jwt.issuer",
                "and auth.jwt.audience are required when auth.jwt.keys are set",
            ));
        }
        for (i, key) in jwt.keys.iter().enumerate() {
            let hs = key.algorithm == JwtAlgorithm::HS256;
            let has_secret = key.secret.is_some() || key.secret_file.is_some();
            if hs != has_secret || hs == key.public_key_file.is_some() {
                return Err(ConfigError::invalid(
                    format!("auth.jwt.keys[{i}]"),
                    "HS256 needs secret or secret_file; RS256 and ES256 need public_key_file",
                ));
            }
        }
        if jwt.max_lifetime_secs == 0 {
            return Err(ConfigError::invalid(
                "auth.jwt.max_lifetime_secs",
                "must be positive",
            ));
        }
        crate::auth::check_jwt_keys(jwt)?;
        let webex = &self.auth.webex;
        if webex.enabled {
            check_base_url("auth.webex.base_url", &webex.base_url)?;
            if webex.max_concurrent_lookups == 0 {
                return Err(ConfigError::invalid(
                    "auth.webex.max_concurrent_lookups",
                    "must be positive",
                ));
            }
            if webex.cache_entries == 0 {
                return Err(ConfigError::invalid(
                    "auth.webex.cache_entries",
                    "must be positive",
                ));
            }
        }
        // Durations added to clock readings: a day bounds them far from overflowing.
        for (setting, secs) in [
            ("auth.webex.cache_secs", webex.cache_secs),
            ("auth.webex.negative_cache_secs", webex.negative_cache_secs),
            ("auth.failures.window_secs", self.auth.failures.window_secs),
        ] {
            if secs > 86_400 {
                return Err(ConfigError::invalid(
                    setting,
                    "must be at most 86400 (a day)",
                ));
            }
        }
        let failures = &self.auth.failures;
        if failures.limit > 0 && (failures.window_secs == 0 || failures.max_clients == 0) {
            return Err(ConfigError::invalid(
                "auth.failures",
                "window_secs and max_clients must be positive when limit is set",
            ));
        }
        let any_mode = !self.auth.api_keys.is_empty() || !jwt.keys.is_empty() || webex.enabled;
        if !any_mode && !self.auth.insecure_no_auth {
            return Err(ConfigError::invalid(
                "auth",
                "has no mode: set api_keys, jwt.keys or webex.enabled; auth.insecure_no_auth=true exists for local development only",
            ));
        }
        Ok(Resolved {
            listen,
            admin_listen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis(mode: RedisMode) -> RedisConfig {
        RedisConfig {
            mode,
            ..RedisConfig::default()
        }
    }

    #[test]
    fn sentinel_and_cluster_need_their_nodes_and_say_which_setting() {
        let error = redis(RedisMode::Cluster).validate().expect_err("no nodes");
        assert!(error.to_string().contains("redis.nodes"), "{error}");
        let mut sentinel = redis(RedisMode::Sentinel);
        sentinel.nodes = vec!["redis://127.0.0.1:26379".into()];
        let error = sentinel.validate().expect_err("no master name");
        assert!(error.to_string().contains("redis.master_name"), "{error}");
        sentinel.master_name = "mymaster".into();
        sentinel.validate().expect("complete sentinel settings");
        let mut cluster = redis(RedisMode::Cluster);
        cluster.nodes = vec!["127.0.0.1:7000".into()];
        let error = cluster.validate().expect_err("not a URL");
        assert!(error.to_string().contains("127.0.0.1:7000"), "{error}");
    }

    #[test]
    fn default_apps_name_known_providers_and_the_older_spellings_still_count() {
        let mut config = Config::default();
        config.auth.api_keys = vec![ApiKey {
            name: "test".into(),
            sha256: "ab".repeat(32),
            scopes: vec![Scope::Register],
        }];
        config.devices.default_apns_app = "com.example.old".into();
        config.devices.default_apps = BTreeMap::from([("fcm".into(), "project".into())]);
        config.resolve().expect("known providers");
        assert_eq!(config.devices.default_app("apns"), "com.example.old");
        assert_eq!(config.devices.default_app("fcm"), "project");
        assert_eq!(config.devices.default_app("pager"), "");
        config.devices.default_apps = BTreeMap::from([("web-push".into(), "web".into())]);
        let error = config.resolve().expect_err("a typo");
        assert!(
            error.to_string().contains("devices.default_apps.web-push"),
            "{error}"
        );
    }

    fn with_api_key() -> Config {
        let mut config = Config::default();
        config.auth.api_keys = vec![ApiKey {
            name: "test".into(),
            sha256: "ab".repeat(32),
            scopes: vec![Scope::Register],
        }];
        config
    }

    #[test]
    fn a_short_hs256_secret_is_refused_naming_the_setting() {
        let mut config = with_api_key();
        config.auth.jwt.issuer = "https://idp.example.com".into();
        config.auth.jwt.audience = "pushline".into();
        let key = |secret: &str| JwtKey {
            algorithm: JwtAlgorithm::HS256,
            kid: None,
            secret: Some(pipeline::config::Secret::new(secret)),
            secret_file: None,
            public_key_file: None,
        };
        config.auth.jwt.keys = vec![key(&"s".repeat(MIN_HS256_SECRET - 1))];
        let error = config.resolve().expect_err("31 bytes");
        assert!(
            error.to_string().contains("auth.jwt.keys[0].secret"),
            "{error}"
        );
        config.auth.jwt.keys = vec![key(&"s".repeat(MIN_HS256_SECRET))];
        config.resolve().expect("32 bytes");
    }

    #[test]
    fn webex_base_urls_are_https_or_plain_http_to_loopback_only() {
        for ok in [
            "https://webexapis.com",
            "http://127.0.0.1:8080",
            "http://127.8.9.10",
            "http://[::1]:9000",
            "http://localhost:1234/",
            "http://LOCALHOST",
        ] {
            check_base_url("auth.webex.base_url", ok).expect(ok);
        }
        for bad in [
            "http://webexapis.com",
            "http://10.0.0.1",
            "http://[::ffff:10.0.0.1]",
            "http://localhost.example.com",
            "http://127.0.0.1.nip.io",
            "ftp://127.0.0.1",
            "webexapis.com",
        ] {
            let error = check_base_url("auth.webex.base_url", bad).expect_err(bad);
            assert!(error.to_string().contains("auth.webex.base_url"), "{error}");
        }
        let mut config = with_api_key();
        config.auth.webex.enabled = true;
        config.auth.webex.base_url = "http://webexapis.com".into();
        let error = config.resolve().expect_err("plain http to a remote host");
        assert!(error.to_string().contains("auth.webex.base_url"), "{error}");
    }

    #[test]
    fn the_mode_is_read_from_its_name() {
        let config: RedisConfig =
            serde_json::from_str(r#"{"mode":"cluster","nodes":["redis://a:7000"]}"#)
                .expect("parse");
        assert_eq!(config.mode, RedisMode::Cluster);
        config.validate().expect("valid");
    }
}
