//! The whole pipeline for one test: NATS, Redis, every provider's mock, and ingest, the
//! registry and every provider's dispatcher in-process.

use std::time::Duration;

use serde_json::Value;

use crate::services::{
    API_KEY, DispatcherConfig, Env, Providers, Service, WEB_APP, WEBHOOK_SECRET, start_ingest,
    start_provider, start_registry,
};

/// A mock push service and the Web Push dispatcher sending to it.
pub struct WebPush {
    /// The push service browsers subscribe at.
    pub service: crate::mock::webpush::MockPushService,
    /// dispatcher-webpush.
    pub dispatcher: Service,
    /// Its configuration.
    pub config: dispatcher_webpush::config::Config,
    _dir: tempfile::TempDir,
}

/// Every service's configuration, for tests to adjust before start.
pub struct Configs {
    /// ingest.
    pub ingest: ingest::config::Config,
    /// registry.
    pub registry: registry::config::Config,
    /// Each provider's dispatcher, in the order of the providers' list.
    pub dispatchers: Vec<DispatcherConfig>,
}

impl Configs {
    /// The dispatcher configuration of provider `name`.
    pub fn dispatcher(&self, name: &str) -> &DispatcherConfig {
        self.dispatchers
            .iter()
            .find(|config| config.name == name)
            .unwrap_or_else(|| panic!("no dispatcher {name}"))
    }

    /// The dispatcher configuration of provider `name`, to change.
    pub fn dispatcher_mut(&mut self, name: &str) -> &mut DispatcherConfig {
        self.dispatchers
            .iter_mut()
            .find(|config| config.name == name)
            .unwrap_or_else(|| panic!("no dispatcher {name}"))
    }

    /// Changes every service's NATS settings.
    pub fn each_nats(&mut self, change: impl Fn(&mut pipeline::config::NatsConfig)) {
        change(&mut self.ingest.nats);
        change(&mut self.registry.nats);
        for dispatcher in &mut self.dispatchers {
            let mut nats = dispatcher.nats();
            change(&mut nats);
            dispatcher.set_nats(&nats);
        }
    }

    /// Changes provider `name`'s dispatcher configuration through its type `C`.
    pub fn adjust<C>(&mut self, name: &str, change: impl FnOnce(&mut C))
    where
        C: serde::de::DeserializeOwned + serde::Serialize,
    {
        self.dispatcher_mut(name).adjust(change);
    }
}

/// A running pipeline.
pub struct Stack {
    /// NATS and Redis.
    pub env: Env,
    /// Mock providers.
    pub providers: Providers,
    /// ingest.
    pub ingest: Service,
    /// registry.
    pub registry: Service,
    /// Each provider's dispatcher (`None` once taken by a test).
    dispatchers: Vec<(&'static str, Option<Service>)>,
    /// The configurations it started with.
    pub configs: Configs,
    http: reqwest::Client,
    /// Mock push services started, to give each a port of `env.push_service_ports`.
    push_services_started: std::sync::atomic::AtomicUsize,
}

impl Stack {
    /// Starts everything with test defaults.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts everything after `adjust` changed the configurations.
    pub async fn start_with(adjust: impl FnOnce(&mut Configs)) -> Self {
        Self::start_on(Env::start(), adjust).await
    }

    /// Starts everything with extra `redis-server` arguments.
    pub async fn start_with_redis_args(redis_args: &[String]) -> Self {
        Self::start_on(Env::start_with_redis_args(redis_args), |_| {}).await
    }

    /// Starts everything on `env` after `adjust` changed the configurations: every
    /// provider's mock and dispatcher (`providers::testing::SANDBOXES`).
    pub async fn start_on(env: Env, adjust: impl FnOnce(&mut Configs)) -> Self {
        let providers = Providers::start().await;
        let mut registry = env.registry_config();
        registry
            .endpoints
            .private_origins
            .extend(providers.private_origins());
        let mut configs = Configs {
            ingest: env.ingest_config(),
            registry,
            dispatchers: providers.dispatcher_configs(&env),
        };
        adjust(&mut configs);
        let ingest = start_ingest(configs.ingest.clone()).await;
        let registry = start_registry(configs.registry.clone()).await;
        let mut dispatchers = Vec::new();
        for config in &configs.dispatchers {
            dispatchers.push((config.name, Some(start_provider(config).await)));
        }
        ingest.wait_ready().await;
        registry.wait_ready().await;
        for (_, dispatcher) in &dispatchers {
            dispatcher.as_ref().expect("started").wait_ready().await;
        }
        Stack {
            env,
            providers,
            ingest,
            registry,
            dispatchers,
            configs,
            http: reqwest::Client::new(),
            push_services_started: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Provider `name`'s dispatcher.
    pub fn dispatcher(&self, name: &str) -> &Service {
        self.dispatchers
            .iter()
            .find(|(provider, _)| *provider == name)
            .and_then(|(_, service)| service.as_ref())
            .unwrap_or_else(|| panic!("the {name} dispatcher is not running"))
    }

    /// Every dispatcher the stack still runs.
    pub fn dispatchers(&self) -> impl Iterator<Item = &Service> {
        self.dispatchers
            .iter()
            .filter_map(|(_, service)| service.as_ref())
    }

    /// Takes provider `name`'s dispatcher out of the stack (to stop or abort it).
    pub fn take_dispatcher(&mut self, name: &str) -> Service {
        self.dispatchers
            .iter_mut()
            .find(|(provider, _)| *provider == name)
            .and_then(|(_, service)| service.take())
            .unwrap_or_else(|| panic!("the {name} dispatcher is not running"))
    }

    /// Stops provider `name`'s dispatcher, if the stack still runs it, and runs `serve`
    /// (its crate's `serve(config, admin, shutdown)`, with a configuration the test made)
    /// instead, ready (returned, not kept in the stack).
    pub async fn replace_dispatcher<F, Fut, E>(&mut self, name: &str, serve: F) -> Service
    where
        F: FnOnce(tokio::net::TcpListener, pipeline::CancellationToken) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        if let Some((_, running)) = self
            .dispatchers
            .iter_mut()
            .find(|(provider, _)| *provider == name)
            && let Some(running) = running.take()
        {
            running.stop().await;
        }
        let replacement = crate::services::start_dispatcher(serve).await;
        replacement.wait_ready().await;
        replacement
    }

    /// Registers `token` with `body` (`PUT /v1/devices/{token}`); panics unless 2xx.
    pub async fn register(&self, token: &str, body: Value) {
        let response = self
            .http
            .put(self.registry.url(&format!("/v1/devices/{token}")))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .expect("register");
        assert!(
            response.status().is_success(),
            "register {token}: {}",
            response.status()
        );
    }

    /// Starts a mock push service and a Web Push dispatcher for [`WEB_APP`], with a fresh
    /// application server key, after `adjust` changed the dispatcher's configuration; they
    /// take the place of the stack's own.
    pub async fn start_webpush(
        &mut self,
        adjust: impl FnOnce(&mut dispatcher_webpush::config::Config),
    ) -> WebPush {
        self.start_webpush_speaking(false, adjust).await
    }

    /// Like [`Stack::start_webpush`]; with `http1` the push service speaks HTTP/1.1 only.
    pub async fn start_webpush_speaking(
        &mut self,
        http1: bool,
        adjust: impl FnOnce(&mut dispatcher_webpush::config::Config),
    ) -> WebPush {
        use crate::mock::webpush::MockPushService;
        use base64::Engine as _;
        // Its own push service and dispatcher take the place of the stack's.
        if let Some((_, Some(running))) = self
            .dispatchers
            .iter_mut()
            .find(|(provider, _)| *provider == "webpush")
            .map(|(name, running)| (*name, running.take()))
        {
            running.stop().await;
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        let public = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.public_key_raw());
        let ports = &self.env.push_service_ports;
        let port = ports[self
            .push_services_started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % ports.len()];
        let at = crate::mock::Listen::loopback(port);
        let service = if http1 {
            MockPushService::start_push_service_http1(&self.providers.ca, &public, &at).await
        } else {
            MockPushService::start_push_service_at(&self.providers.ca, &public, &at).await
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let key_file = dir.path().join("vapid.pem");
        std::fs::write(&key_file, key.serialize_pem()).expect("write the key");
        let ca_file = service.write_ca(dir.path(), "push-ca.pem");
        let mut config = dispatcher_webpush::testing::dispatcher_config(
            WEB_APP,
            &key_file,
            (&ca_file, self.env.push_service_origins()),
            self.env.nats_config(),
            self.configs
                .dispatcher("webpush")
                .typed::<dispatcher_webpush::config::Config>()
                .telemetry,
        );
        adjust(&mut config);
        let serving = config.clone();
        let dispatcher = crate::services::start_dispatcher(|admin, shutdown| {
            dispatcher_webpush::serve(serving, admin, shutdown)
        })
        .await;
        dispatcher.wait_ready().await;
        WebPush {
            service,
            dispatcher,
            config,
            _dir: dir,
        }
    }

    /// Registers a browser's push subscription for `person` (`POST /v1/devices`).
    pub async fn register_browser(&self, person: &str, subscription: &Value) {
        let response = self
            .http
            .post(self.registry.url("/v1/devices"))
            .bearer_auth(API_KEY)
            .json(&serde_json::json!({
                "person_id": person,
                "platform": "webpush",
                "app": WEB_APP,
                "subscription": subscription,
            }))
            .send()
            .await
            .expect("register");
        let status = response.status();
        assert!(
            status.is_success(),
            "register a browser: {status} {}",
            response.text().await.unwrap_or_default()
        );
    }

    /// Registers `device` (its installation id, as token and device id) for in-app
    /// messages of `person` on [`crate::services::INAPP_APP`].
    pub async fn register_inapp(&self, person: &str, device: &str) {
        self.register(
            device,
            serde_json::json!({"person_id": person, "platform": "inapp", "app": crate::services::INAPP_APP, "device_id": device}),
        )
        .await;
    }

    /// Registers an iOS VoIP device for `person`.
    pub async fn register_ios(&self, person: &str, token: &str) {
        self.register(
            token,
            serde_json::json!({"person_id": person, "platform": "apns", "channel": "voip"}),
        )
        .await;
    }

    /// Registers an Android device for `person`.
    pub async fn register_android(&self, person: &str, token: &str) {
        self.register(
            token,
            serde_json::json!({"person_id": person, "platform": "fcm"}),
        )
        .await;
    }

    /// `POST /v1/notify` with producer `key`; returns the first event's id (panics without).
    pub async fn notify(&self, key: &str, body: &Value) -> String {
        let answer: Value = self
            .http
            .post(self.ingest.url("/v1/notify"))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("notify")
            .json()
            .await
            .expect("json");
        answer["events"][0]["event_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no event id in {answer}"))
            .to_owned()
    }

    /// `GET /v1/persons/{person}/devices`: the person's devices.
    pub async fn devices(&self, person: &str) -> Vec<Value> {
        let answer: Value = self
            .http
            .get(self.registry.url(&format!("/v1/persons/{person}/devices")))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("GET devices")
            .json()
            .await
            .expect("json");
        answer["devices"].as_array().cloned().unwrap_or_default()
    }

    /// Posts a signed webhook body; panics unless 200; returns the response JSON.
    pub async fn webhook(&self, body: &str) -> Value {
        self.traced_webhook(body, None).await
    }

    /// Posts a signed webhook body with Webex's `TrackingID` header when `trace` is given;
    /// panics unless 200; returns the response JSON.
    pub async fn traced_webhook(&self, body: &str, trace: Option<&str>) -> Value {
        let mut request = self
            .http
            .post(self.ingest.url("/webhooks/webex"))
            .header("content-type", "application/json")
            .header(
                "x-spark-signature",
                crate::webex::sign(body, WEBHOOK_SECRET),
            );
        if let Some(trace) = trace {
            request = request.header("trackingid", trace);
        }
        let response = request.body(body.to_owned()).send().await.expect("webhook");
        assert_eq!(response.status(), 200, "webhook refused");
        response.json().await.expect("json")
    }

    /// Sends a `telephony_push` call for `person` with the given payloads.
    pub async fn call(&self, person: &str, apns: Option<&str>, fcm: Option<&str>) -> Value {
        self.webhook(&crate::webex::telephony_push(person, apns, fcm))
            .await
    }

    /// Waits until a `/metrics` of `service` contains every line in `expected`.
    pub async fn wait_metrics(service: &Service, expected: &[&str]) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = service.metrics().await;
            if expected.iter().all(|line| text.lines().any(|l| l == *line)) {
                return;
            }
            if std::time::Instant::now() > deadline {
                let shown: Vec<&str> = text
                    .lines()
                    .filter(|l| l.starts_with("pushline_"))
                    .collect();
                panic!(
                    "metrics never showed {expected:#?}; last:\n{}",
                    shown.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
