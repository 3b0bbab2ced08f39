//! The whole pipeline for one test: NATS, Redis, every provider's mock, and ingest, the
//! registry and every provider's dispatcher in-process.

use std::time::Duration;

use serde_json::Value;

use crate::services::{
    API_KEY, DispatcherConfig, Env, Providers, Service, WEBHOOK_SECRET, start_ingest,
    start_provider, start_registry,
};

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

    /// Keeps only the dispatchers of `providers` (the others' mocks still run, idle).
    pub fn keep_dispatchers(&mut self, providers: &[&str]) {
        self.dispatchers
            .retain(|config| providers.contains(&config.name));
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
