//! A mock Web Push service (RFC 8030) that reads every push the way a browser and a real
//! push service would, with implementations pushline does not use:
//!
//! - subscriptions are made here, with Mozilla's `ece` crate (OpenSSL underneath), and
//!   handed out as `PushSubscription.toJSON()` objects;
//! - `POST /push/<id>`: an unknown subscription is 404; the `Authorization: vapid t=…,
//!   k=…` token must verify (ES256, with `josekit`) under the expected application server
//!   key, name this service's origin in `aud`, expire within a day and name a `mailto:`
//!   or `https:` `sub` (else 403); `Content-Encoding: aes128gcm`, `TTL`, `Urgency` and
//!   `Topic` must be well-formed (else 400); the body must decrypt with `ece` (else 400).
//!   Each push that decrypts is kept for the test to read, whatever a script then
//!   answers; [`Mock::delivered`] holds those answered with success.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use ece::EcKeyComponents;

use pipeline::mock::sandbox::{BoxFuture, Running, ServeError};
use pipeline::mock::tls::TestCa;
use pipeline::mock::{Behaviour, Checked, Mock, Recorded};

/// One push as the browser would read it.
#[derive(Debug, Clone)]
pub struct Message {
    /// The subscription's id (the endpoint's last segment).
    pub subscription: String,
    /// The decrypted payload.
    pub plaintext: Vec<u8>,
    /// `TTL`, seconds.
    pub ttl: u64,
    /// `Urgency`, when given.
    pub urgency: Option<String>,
    /// `Topic`, when given.
    pub topic: Option<String>,
}

impl Message {
    /// The payload as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.plaintext).expect("the payload is JSON")
    }
}

/// The push-service checks and the browsers' keys.
pub struct PushService {
    application_server_key: String,
    origin: Mutex<String>,
    subscriptions: Mutex<HashMap<String, (EcKeyComponents, [u8; 16])>>,
    messages: Mutex<Vec<Message>>,
    counter: AtomicU64,
}

/// A running mock push service.
pub struct MockPushService(Mock<PushService>);

impl std::ops::Deref for MockPushService {
    type Target = Mock<PushService>;

    fn deref(&self) -> &Mock<PushService> {
        &self.0
    }
}

impl MockPushService {
    /// Starts a push service accepting pushes signed by `application_server_key`
    /// (base64url of the uncompressed public key).
    pub async fn start_push_service(ca: &TestCa, application_server_key: &str) -> Self {
        Self::start_push_service_at(
            ca,
            application_server_key,
            &pipeline::mock::Listen::loopback(0),
        )
        .await
    }

    /// Like [`MockPushService::start_push_service`], speaking HTTP/1.1 only, as some push
    /// services and proxies do, listening as `at` says.
    pub async fn start_push_service_http1(
        ca: &TestCa,
        application_server_key: &str,
        at: &pipeline::mock::Listen,
    ) -> Self {
        MockPushService(
            Mock::start_speaking(Self::behaviour(application_server_key), ca, at, true).await,
        )
        .with_origin()
    }

    /// Like [`MockPushService::start_push_service`], listening as `at` says.
    pub async fn start_push_service_at(
        ca: &TestCa,
        application_server_key: &str,
        at: &pipeline::mock::Listen,
    ) -> Self {
        MockPushService(Mock::start(Self::behaviour(application_server_key), ca, at).await)
            .with_origin()
    }

    fn behaviour(application_server_key: &str) -> PushService {
        PushService {
            application_server_key: application_server_key.to_owned(),
            origin: Mutex::new(String::new()),
            subscriptions: Mutex::new(HashMap::new()),
            messages: Mutex::new(Vec::new()),
            counter: AtomicU64::new(0),
        }
    }

    fn with_origin(self) -> Self {
        *self.state().origin.lock().expect("lock") = self.url();
        self
    }

    /// A new subscription, as a browser's `PushSubscription.toJSON()` gives it.
    pub fn subscribe(&self) -> serde_json::Value {
        let (pair, auth) = ece::generate_keypair_and_auth_secret().expect("browser keys");
        let components = pair.raw_components().expect("components");
        let public = pair.pub_as_raw().expect("public key");
        let n = self.state().counter.fetch_add(1, Ordering::Relaxed);
        let id = format!("sub-{n}");
        self.state()
            .subscriptions
            .lock()
            .expect("lock")
            .insert(id.clone(), (components, auth));
        serde_json::json!({
            "endpoint": format!("{}/push/{id}", self.url()),
            "expirationTime": null,
            "keys": {
                "p256dh": URL_SAFE_NO_PAD.encode(public),
                "auth": URL_SAFE_NO_PAD.encode(auth),
            },
        })
    }

    /// Every push decrypted so far, in arrival order.
    pub fn messages(&self) -> Vec<Message> {
        self.state().messages.lock().expect("lock").clone()
    }

    /// The subscription id of an endpoint this service handed out.
    pub fn id_of(endpoint: &str) -> String {
        endpoint.rsplit('/').next().unwrap_or_default().to_owned()
    }
}

impl PushService {
    fn check_vapid(&self, authorization: Option<&String>) -> Result<(), String> {
        let value = authorization.ok_or("no Authorization")?;
        let rest = value.strip_prefix("vapid ").ok_or("not the vapid scheme")?;
        let mut token = None;
        let mut key = None;
        for param in rest.split(',') {
            match param.trim().split_once('=') {
                Some(("t", v)) => token = Some(v),
                Some(("k", v)) => key = Some(v),
                _ => return Err(format!("unexpected parameter {param}")),
            }
        }
        let (token, key) = (token.ok_or("no t=")?, key.ok_or("no k=")?);
        if key != self.application_server_key {
            return Err("k is not the application server key".into());
        }
        let point = URL_SAFE_NO_PAD
            .decode(key)
            .map_err(|_| "k is not base64url")?;
        if point.len() != 65 || point[0] != 4 {
            return Err("k is not an uncompressed P-256 point".into());
        }
        let mut jwk = josekit::jwk::Jwk::new("EC");
        jwk.set_curve("P-256");
        jwk.set_parameter("x", Some(URL_SAFE_NO_PAD.encode(&point[1..33]).into()))
            .map_err(|e| e.to_string())?;
        jwk.set_parameter("y", Some(URL_SAFE_NO_PAD.encode(&point[33..]).into()))
            .map_err(|e| e.to_string())?;
        let verifier = josekit::jws::ES256
            .verifier_from_jwk(&jwk)
            .map_err(|e| e.to_string())?;
        let (claims, _) = josekit::jwt::decode_with_verifier(token, &verifier)
            .map_err(|e| format!("the token does not verify: {e}"))?;
        let origin = self.origin.lock().expect("lock").clone();
        if claims.claim("aud") != Some(&serde_json::Value::String(origin)) {
            return Err(format!("aud {:?} is not this origin", claims.claim("aud")));
        }
        let now = std::time::SystemTime::now();
        let exp = claims.expires_at().ok_or("no exp")?;
        if exp <= now || exp > now + std::time::Duration::from_secs(86_400) {
            return Err("exp is not within the next 24 hours".into());
        }
        let sub = claims.subject().unwrap_or_default();
        if !(sub.starts_with("mailto:") || sub.starts_with("https:")) {
            return Err("sub is not a mailto: or https: contact".into());
        }
        Ok(())
    }
}

impl Behaviour for PushService {
    fn check(
        &self,
        path: &str,
        headers: &HashMap<String, String>,
        body: &Bytes,
        _client_cert: bool,
    ) -> Checked {
        let Some(id) = path.strip_prefix("/push/") else {
            return Checked::Refuse(404, "no such resource".into());
        };
        let Some((components, auth)) = self.subscriptions.lock().expect("lock").get(id).cloned()
        else {
            return Checked::Refuse(404, "no such subscription".into());
        };
        if let Err(why) = self.check_vapid(headers.get("authorization")) {
            return Checked::Refuse(403, why);
        }
        if headers.get("content-encoding").map(String::as_str) != Some("aes128gcm") {
            return Checked::Refuse(400, "Content-Encoding must be aes128gcm".into());
        }
        let Some(ttl) = headers.get("ttl").and_then(|t| t.parse::<u64>().ok()) else {
            return Checked::Refuse(400, "TTL is required".into());
        };
        let urgency = headers.get("urgency").cloned();
        if urgency
            .as_deref()
            .is_some_and(|u| !matches!(u, "very-low" | "low" | "normal" | "high"))
        {
            return Checked::Refuse(400, "bad Urgency".into());
        }
        let topic = headers.get("topic").cloned();
        if topic.as_deref().is_some_and(|t| {
            t.len() > 32
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        }) {
            return Checked::Refuse(400, "bad Topic".into());
        }
        if body.len() > 4_096 {
            return Checked::Refuse(413, "payload too large".into());
        }
        let plaintext = match ece::decrypt(&components, &auth, body) {
            Ok(plaintext) => plaintext,
            Err(e) => return Checked::Refuse(400, format!("cannot decrypt: {e}")),
        };
        self.messages.lock().expect("lock").push(Message {
            subscription: id.to_owned(),
            plaintext,
            ttl,
            urgency,
            topic,
        });
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let origin = self.origin.lock().expect("lock").clone();
        Checked::Valid {
            key: id.to_owned(),
            ok: String::new(),
            ok_headers: vec![("location".into(), format!("{origin}/message/{n}"))],
        }
    }
}

/// A dispatcher configuration for the web app `app` signing with the VAPID key
/// `key_file`, trusting `ca_file` for the push services at `private_origins` (the mocks),
/// on `nats`, with short timeouts for tests.
pub fn dispatcher_config(
    app: &str,
    key_file: &std::path::Path,
    (ca_file, private_origins): (&std::path::Path, Vec<String>),
    nats: pipeline::config::NatsConfig,
    telemetry: pipeline::config::TelemetryConfig,
) -> crate::config::Config {
    let mut config = crate::config::Config {
        nats,
        telemetry,
        ..Default::default()
    };
    config.webpush.ca_files = vec![ca_file.to_owned()];
    config.webpush.endpoints.private_origins = private_origins;
    config.webpush.request_timeout_ms = 2_000;
    config.webpush.apps = vec![crate::config::AppConfig {
        app: app.into(),
        subject: "mailto:ops@pushline.test".into(),
        private_key_file: Some(key_file.to_owned()),
        private_key: None,
    }];
    config
}

/// The sandbox's web app (its application server key is `vapid.pem`).
pub const SANDBOX_APP: &str = "web.pushline-test";

/// Web Push in the sandbox ([`pipeline::mock::sandbox`]): a push service accepting pushes
/// signed with a fresh application server key, written to `vapid.pem`; its devices are
/// subscriptions made at it.
pub static SANDBOX: WebPushSandbox = WebPushSandbox;

/// See [`SANDBOX`].
pub struct WebPushSandbox;

impl pipeline::mock::sandbox::Sandbox for WebPushSandbox {
    fn name(&self) -> &'static str {
        "webpush"
    }

    fn sandbox_port(&self) -> u16 {
        8446
    }

    fn start<'a>(
        &'a self,
        ca: &'a TestCa,
        at: &'a pipeline::mock::Listen,
        dir: &'a std::path::Path,
    ) -> BoxFuture<'a, std::sync::Arc<dyn Running>> {
        Box::pin(async move {
            let key =
                rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
            let public = URL_SAFE_NO_PAD.encode(key.public_key_raw());
            let mock = MockPushService::start_push_service_at(ca, &public, at).await;
            std::fs::write(dir.join("vapid.pem"), key.serialize_pem()).expect("write the key");
            mock.write_ca(dir, "ca.pem");
            std::sync::Arc::new(mock) as std::sync::Arc<dyn Running>
        })
    }

    fn serve(
        &self,
        config: serde_json::Value,
        admin: tokio::net::TcpListener,
        shutdown: pipeline::CancellationToken,
    ) -> BoxFuture<'static, Result<(), ServeError>> {
        Box::pin(async move {
            let config: crate::config::Config = serde_json::from_value(config)?;
            crate::serve(config, admin, shutdown).await?;
            Ok(())
        })
    }
}

impl Running for MockPushService {
    fn name(&self) -> &'static str {
        "webpush"
    }

    fn url(&self) -> String {
        Mock::url(self)
    }

    fn dispatcher_config(&self, dir: &std::path::Path) -> serde_json::Value {
        let config = dispatcher_config(
            SANDBOX_APP,
            &dir.join("vapid.pem"),
            (&dir.join("ca.pem"), self.private_origins()),
            Default::default(),
            Default::default(),
        );
        pipeline::mock::sandbox::provider_part(&config)
    }

    fn device(&self, person: &str) -> serde_json::Value {
        serde_json::json!({
            "person_id": person,
            "platform": "webpush",
            "app": SANDBOX_APP,
            "subscription": self.subscribe(),
        })
    }

    fn private_origins(&self) -> Vec<String> {
        vec![Mock::url(self)]
    }

    fn wait_beyond(&self, seen: usize) -> BoxFuture<'_, Vec<Recorded>> {
        Box::pin(Mock::wait_beyond(self, seen))
    }

    fn pushes(&self) -> Vec<Recorded> {
        self.requests()
    }

    fn describe(&self, r: &Recorded) -> Option<String> {
        let id = MockPushService::id_of(&r.path);
        let plaintext = self
            .messages()
            .iter()
            .rev()
            .find(|m| m.subscription == id)
            .map(|m| pipeline::mock::sandbox::excerpt(&m.plaintext))
            .unwrap_or_else(|| "(not decrypted)".to_owned());
        Some(format!(
            "Web  {} ← {id} urgency={} ttl={} decrypted={plaintext}",
            r.status,
            r.header("urgency").unwrap_or("-"),
            r.header("ttl").unwrap_or("-"),
        ))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
