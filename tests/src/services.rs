//! Runs pushline services in-process against the test's own NATS and Redis, on port-0
//! listeners, and reads what they left in JetStream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use pipeline::CancellationToken;
use pipeline::config::{LogFormat, NatsConfig, Secret, TelemetryConfig};
use pipeline::mock::sandbox::{Running, downcast};
use pipeline::topology::{StreamKind, Topology};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::servers::{NatsServer, RedisServer};

/// The webhook secret test configurations accept.
pub const WEBHOOK_SECRET: &str = "test-webhook-secret";
/// The producer API key test configurations accept (producer `crm`).
pub const PRODUCER_KEY: &str = "test-producer-key";
/// The registry API key test configurations accept.
pub const API_KEY: &str = "test-api-key";
/// The default APNs bundle id in test configurations.
pub const APNS_APP: &str = dispatcher_apns::testing::SANDBOX_APP;
/// The default FCM project in test configurations.
pub const FCM_APP: &str = dispatcher_fcm::testing::SANDBOX_APP;
/// The web app (VAPID key set) the tests register browsers for.
pub const WEB_APP: &str = dispatcher_webpush::testing::SANDBOX_APP;

/// One test's NATS and Redis, and a unique prefix for names and keys.
pub struct Env {
    /// The NATS server.
    pub nats: NatsServer,
    /// The Redis server.
    pub redis: RedisServer,
    /// Prefix of streams, subjects and Redis keys.
    pub prefix: String,
    /// Ports reserved for this test's mock push services: the endpoint policy of the
    /// registry and of Web Push dispatchers allows exactly these origins on loopback.
    pub push_service_ports: Vec<u16>,
    push_services_started: std::sync::atomic::AtomicUsize,
}

impl Env {
    /// Starts NATS and Redis for one test.
    pub fn start() -> Self {
        Self::start_with_redis_args(&[])
    }

    /// Like [`Env::start`], with extra `redis-server` arguments (persistence, say).
    pub fn start_with_redis_args(redis_args: &[String]) -> Self {
        tracing_init();
        Env {
            nats: NatsServer::start(),
            redis: RedisServer::start_with(redis_args),
            prefix: format!("t{}_", rand::random::<u32>()),
            push_service_ports: (0..2).map(|_| crate::servers::free_port()).collect(),
            push_services_started: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The origins of this test's mock push services, as `endpoints.private_origins`.
    pub fn push_service_origins(&self) -> Vec<String> {
        self.push_service_ports
            .iter()
            .map(|port| format!("https://127.0.0.1:{port}"))
            .collect()
    }

    /// The next of [`Env::push_service_ports`] for a test's own mock push service (they
    /// are taken in turn).
    pub fn next_push_service_port(&self) -> u16 {
        let started = self
            .push_services_started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.push_service_ports[started % self.push_service_ports.len()]
    }

    /// NATS settings pointing at this test's server.
    pub fn nats_config(&self) -> NatsConfig {
        NatsConfig {
            url: self.nats.url(),
            prefix: self.prefix.clone(),
            publish_timeout_ms: 1_000,
            ..NatsConfig::default()
        }
    }

    /// Ingest configured for this test.
    pub fn ingest_config(&self) -> ingest::config::Config {
        let mut config = ingest::config::Config {
            nats: self.nats_config(),
            telemetry: telemetry(),
            ..Default::default()
        };
        config.webex.secrets = vec![Secret::new(WEBHOOK_SECRET)];
        config.producers.keys = vec![ingest::config::ProducerKey {
            name: "crm".into(),
            sha256: hex::encode(Sha256::digest(PRODUCER_KEY.as_bytes())),
            previous_sha256: None,
            rate_per_sec: 1_000.0,
            burst: 1_000,
            callback_url: None,
            callback_secret: None,
            apps: Vec::new(),
        }];
        config
    }

    /// The registry configured for this test.
    pub fn registry_config(&self) -> registry::config::Config {
        let mut config = registry::config::Config {
            nats: self.nats_config(),
            telemetry: telemetry(),
            ..Default::default()
        };
        config.redis.url = self.redis.url();
        config.redis.prefix = format!("{}:", self.prefix);
        config.devices.default_apns_app = APNS_APP.into();
        config.devices.default_fcm_app = FCM_APP.into();
        config.endpoints.private_origins = self.push_service_origins();
        config.auth.api_keys = vec![registry::config::ApiKey {
            name: "test".into(),
            sha256: hex::encode(Sha256::digest(API_KEY.as_bytes())),
            scopes: vec![
                registry::config::Scope::Register,
                registry::config::Scope::Read,
            ],
        }];
        config.fanout.retry_base_ms = 20;
        config.prune.retry_base_ms = 20;
        config
    }

    /// The gateway configured for this test: the registry's Redis and prefix, persons'
    /// JWTs, and [`INAPP_APP`].
    pub fn gateway_config(&self) -> gateway::config::Config {
        let mut config = gateway::config::Config {
            listen: "127.0.0.1:0".into(),
            admin_listen: "127.0.0.1:0".into(),
            nats: self.nats_config(),
            telemetry: telemetry(),
            ..Default::default()
        };
        config.apps.insert(INAPP_APP.into());
        config.redis.url = self.redis.url();
        config.redis.prefix = format!("{}:", self.prefix);
        config.auth.jwt = person_jwt_config();
        config
    }

    /// The topology under this test's prefix.
    pub fn topology(&self) -> Topology {
        providers::topology(&self.nats_config())
    }

    /// A JetStream context on this test's server.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::connect(self.nats.url())
            .await
            .expect("connect to test NATS");
        async_nats::jetstream::new(client)
    }

    /// Every message now stored in a stream, oldest first (empty if it does not exist).
    pub async fn stream_messages(&self, kind: StreamKind) -> Vec<StreamMessage> {
        let js = self.jetstream().await;
        let Ok(stream) = js.get_stream(self.topology().stream_name(kind)).await else {
            return Vec::new();
        };
        let Ok(info) = stream.get_info().await else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if info.state.messages == 0 {
            return out;
        }
        for seq in info.state.first_sequence..=info.state.last_sequence {
            if let Ok(message) = stream.get_raw_message(seq).await {
                out.push(message);
            }
        }
        out
    }

    /// Waits until `kind` holds exactly `count` messages and returns them.
    pub async fn wait_messages(&self, kind: StreamKind, count: usize) -> Vec<StreamMessage> {
        crate::wait::until(
            &format!("{count} messages in {kind:?}"),
            Duration::from_secs(10),
            || async {
                let messages = self.stream_messages(kind).await;
                (messages.len() == count).then_some(messages)
            },
        )
        .await
    }
}

fn telemetry() -> TelemetryConfig {
    TelemetryConfig {
        format: LogFormat::Pretty,
        filter: "warn".into(),
    }
}

/// Logs of in-process services at `warn` (or `RUST_LOG`); a no-op once a test installed
/// its own subscriber.
fn tracing_init() {
    pipeline::telemetry::init(&TelemetryConfig {
        format: LogFormat::Pretty,
        filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
    });
}

/// A service running in this process; stopped when dropped.
pub struct Service {
    /// Public address.
    pub addr: SocketAddr,
    /// Admin address (`/metrics`, `/healthz`, `/readyz`).
    pub admin: SocketAddr,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<()>>,
}

impl Service {
    /// `http://<public address><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://<admin address><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Stops it gracefully and waits until it has stopped.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }

    /// Waits until `/readyz` answers 200; on timeout the panic says what it answered last.
    /// The bound is generous: on a three-node cluster, on two busy cores, creating every
    /// partition's streams and consumers (each a Raft group) can take tens of seconds.
    pub async fn wait_ready(&self) {
        let url = self.admin_url("/readyz");
        let client = reqwest::Client::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(45);
        loop {
            let last = match client.get(&url).send().await {
                Ok(response) if response.status() == 200 => return,
                Ok(response) => format!(
                    "{}: {}",
                    response.status(),
                    response.text().await.unwrap_or_default()
                ),
                Err(error) => error.to_string(),
            };
            assert!(
                std::time::Instant::now() < deadline,
                "{url} not ready after 45s; last answer: {last}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.admin_url("/metrics"))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn listeners() -> (TcpListener, TcpListener) {
    let api = TcpListener::bind("127.0.0.1:0").await.expect("bind api");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    (api, admin)
}

async fn spawn<F, E>(run: impl FnOnce(TcpListener, TcpListener, CancellationToken) -> F) -> Service
where
    F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    let (api, admin_listener) = listeners().await;
    let addr = api.local_addr().expect("api addr");
    let admin = admin_listener.local_addr().expect("admin addr");
    let shutdown = CancellationToken::new();
    let fut = run(api, admin_listener, shutdown.clone());
    let handle = tokio::spawn(async move {
        if let Err(error) = fut.await {
            panic!("service failed: {error}");
        }
    });
    Service {
        addr,
        admin,
        shutdown,
        handle: Some(handle),
    }
}

/// Starts ingest with `config`.
pub async fn start_ingest(config: ingest::config::Config) -> Service {
    spawn(|api, admin, shutdown| ingest::serve(config, api, admin, shutdown)).await
}

/// Starts the registry with `config`.
pub async fn start_registry(config: registry::config::Config) -> Service {
    spawn(|api, admin, shutdown| registry::serve(config, api, admin, shutdown)).await
}

/// Starts the gateway on port-0 listeners (`addr` is its WebSocket listener).
pub async fn start_gateway(config: gateway::config::Config) -> Service {
    spawn(|api, admin, shutdown| gateway::serve(config, api, admin, shutdown)).await
}

/// The app the gateway serves in tests.
pub const INAPP_APP: &str = "com.example.inapp";
/// The HS256 secret of the persons' JWTs in tests (registry and gateway alike).
pub const PERSON_JWT_SECRET: &str = "pushline-test-person-jwt-secret-32-bytes-long";
/// The JWT issuer in tests.
pub const PERSON_JWT_ISSUER: &str = "https://idp.pushline.test";

/// The `[auth.jwt]` of tests: HS256 tokens of [`person_jwt`].
pub fn person_jwt_config() -> registry::config::JwtAuthConfig {
    registry::config::JwtAuthConfig {
        keys: vec![registry::config::JwtKey {
            algorithm: registry::config::JwtAlgorithm::HS256,
            kid: None,
            secret: Some(pipeline::config::Secret::new(PERSON_JWT_SECRET)),
            secret_file: None,
            public_key_file: None,
        }],
        issuer: PERSON_JWT_ISSUER.into(),
        audience: "pushline".into(),
        ..registry::config::JwtAuthConfig::default()
    }
}

/// A JWT for `person`, valid for an hour, accepted by [`person_jwt_config`].
pub fn person_jwt(person: &str) -> String {
    let now = pipeline::contract::now_ms() / 1000;
    let claims = serde_json::json!({"sub": person, "iss": PERSON_JWT_ISSUER, "aud": "pushline", "iat": now, "exp": now + 3_600});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(PERSON_JWT_SECRET.as_bytes()),
    )
    .expect("a JWT")
}

/// The team of the sandbox APNs key in tests.
pub const TEAM_ID: &str = dispatcher_apns::testing::SANDBOX_TEAM_ID;
/// The provider-token key id in tests.
pub const KEY_ID: &str = dispatcher_apns::testing::SANDBOX_KEY_ID;

/// Every provider's sandbox mock (`providers::testing::SANDBOXES`), with what their
/// dispatchers read on disk.
pub struct Providers {
    /// The CA every mock chains to, for issuing client certificates.
    pub ca: crate::mock::tls::TestCa,
    /// Where credentials and CA files live.
    pub dir: tempfile::TempDir,
    running: Vec<Arc<dyn Running>>,
}

impl Providers {
    /// Starts every provider's mock on a free loopback port.
    pub async fn start() -> Self {
        let ca = crate::mock::tls::TestCa::new();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut running = Vec::new();
        for sandbox in providers::testing::SANDBOXES {
            running.push(
                sandbox
                    .start(&ca, &crate::mock::Listen::loopback(0), dir.path())
                    .await,
            );
        }
        Providers { ca, dir, running }
    }

    /// The running mock of type `M` (say, [`crate::mock::apns::MockApns`]).
    pub fn get<M: 'static>(&self) -> &M {
        self.running
            .iter()
            .find_map(|running| downcast::<M>(running.as_ref()))
            .unwrap_or_else(|| panic!("no {} runs", std::any::type_name::<M>()))
    }

    /// Every running mock, in the order of the providers' list.
    pub fn all(&self) -> &[Arc<dyn Running>] {
        &self.running
    }

    /// The origins the registry must accept in devices' endpoints for these mocks.
    pub fn private_origins(&self) -> Vec<String> {
        self.running
            .iter()
            .flat_map(|running| running.private_origins())
            .collect()
    }

    /// Each provider's dispatcher configured for its mock and `env`: short timeouts and
    /// retries, no periodic credential check.
    pub fn dispatcher_configs(&self, env: &Env) -> Vec<DispatcherConfig> {
        self.running
            .iter()
            .map(|running| {
                let mut config = running.dispatcher_config(self.dir.path());
                config["nats"] = serde_json::to_value(env.nats_config()).expect("NATS settings");
                config["telemetry"] = serde_json::to_value(telemetry()).expect("telemetry");
                DispatcherConfig {
                    name: running.name(),
                    config,
                }
            })
            .collect()
    }
}

impl Providers {
    /// Provider `name`'s dispatcher configured for its mock and `env`.
    pub fn dispatcher_config(&self, env: &Env, name: &str) -> DispatcherConfig {
        self.dispatcher_configs(env)
            .into_iter()
            .find(|config| config.name == name)
            .unwrap_or_else(|| panic!("no provider {name}"))
    }
}

/// One provider's dispatcher configuration, as its configuration document.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// The provider.
    pub name: &'static str,
    /// The document (what its TOML file would hold).
    pub config: serde_json::Value,
}

impl DispatcherConfig {
    /// The configuration as the provider's type `C`.
    pub fn typed<C: serde::de::DeserializeOwned>(&self) -> C {
        serde_json::from_value(self.config.clone())
            .unwrap_or_else(|error| panic!("{}'s configuration: {error}", self.name))
    }

    /// Changes the configuration through its type `C`. A [`pipeline::config::Secret`] set
    /// here is written out redacted: set secrets in [`DispatcherConfig::config`].
    pub fn adjust<C>(&mut self, change: impl FnOnce(&mut C))
    where
        C: serde::de::DeserializeOwned + serde::Serialize,
    {
        let mut typed = self.typed::<C>();
        change(&mut typed);
        self.config = serde_json::to_value(typed).expect("a configuration serializes");
    }

    /// Its NATS settings.
    pub fn nats(&self) -> NatsConfig {
        serde_json::from_value(self.config["nats"].clone()).expect("NATS settings")
    }

    /// Sets its NATS settings.
    pub fn set_nats(&mut self, nats: &NatsConfig) {
        self.config["nats"] = serde_json::to_value(nats).expect("NATS settings");
    }
}

async fn admin_only() -> (TcpListener, SocketAddr) {
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let addr = admin.local_addr().expect("admin addr");
    (admin, addr)
}

fn spawn_admin_only<F, E>(admin: SocketAddr, shutdown: CancellationToken, fut: F) -> Service
where
    F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    let handle = tokio::spawn(async move {
        if let Err(error) = fut.await {
            panic!("service failed: {error}");
        }
    });
    Service {
        addr: admin,
        admin,
        shutdown,
        handle: Some(handle),
    }
}

/// Starts any provider's dispatcher: `serve` is its crate's `serve(config, admin,
/// shutdown)` with the configuration given (a dispatcher has only an admin listener), so
/// a provider's end-to-end tests start its dispatcher with nothing added here.
pub async fn start_dispatcher<F, Fut, E>(serve: F) -> Service
where
    F: FnOnce(TcpListener, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    let (listener, addr) = admin_only().await;
    let shutdown = CancellationToken::new();
    let fut = serve(listener, shutdown.clone());
    spawn_admin_only(addr, shutdown, fut)
}

/// Starts the dispatcher of the provider `config` names, with `config`.
pub async fn start_provider(config: &DispatcherConfig) -> Service {
    let sandbox = providers::testing::SANDBOXES
        .iter()
        .find(|sandbox| sandbox.name() == config.name)
        .unwrap_or_else(|| panic!("no sandbox for {}", config.name));
    let document = config.config.clone();
    start_dispatcher(|admin, shutdown| sandbox.serve(document, admin, shutdown)).await
}

impl Service {
    /// Stops it abruptly, as a crash would: the task is aborted, nothing is acked.
    pub fn abort(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
        // Drop then cancels the token, which only stops helpers the aborted task spawned
        // (its admin server); the aborted worker settles nothing.
    }
}
