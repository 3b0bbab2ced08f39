//! A mock APNs: HTTP/2 over TLS at `POST /3/device/<token>`, checking what APNs checks —
//! path and token format, `apns-topic` present and one of the configured bundle ids
//! (`.voip` for VoIP), ES256 provider tokens against the configured key (`kid`, `iss`,
//! signature, age under an hour) or else a client certificate, priority, and payload size
//! (5120 bytes VoIP, 4096 otherwise). Answers like APNs: `apns-id` on success,
//! `{"reason": …}` (and `timestamp` on 410) on errors.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePrivateKey;

use pipeline::mock::sandbox::{BoxFuture, Running, ServeError};
use pipeline::mock::tls::TestCa;
use pipeline::mock::{Behaviour, Checked, Mock, Reply};

/// A team's provider-token key as the mock knows it.
struct TeamKey {
    team_id: String,
    key: VerifyingKey,
}

/// The APNs-specific checks.
pub struct Apns {
    bundles: Vec<String>,
    keys: Mutex<HashMap<String, TeamKey>>,
    /// Tokens whose signature was already checked, with their `iat`: like APNs, the
    /// signature is verified once per token, the age on every request.
    verified: Mutex<HashMap<String, u64>>,
}

/// A running mock APNs.
pub struct MockApns(Mock<Apns>);

impl std::ops::Deref for MockApns {
    type Target = Mock<Apns>;

    fn deref(&self) -> &Mock<Apns> {
        &self.0
    }
}

/// A generated provider-token key (the `.p8` a team downloads from Apple).
pub struct P8Key {
    /// Team id.
    pub team_id: String,
    /// Key id.
    pub key_id: String,
    /// PKCS#8 PEM.
    pub pem: String,
}

impl P8Key {
    /// A new P-256 key.
    pub fn generate(team_id: &str, key_id: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        P8Key {
            team_id: team_id.into(),
            key_id: key_id.into(),
            pem: pair.serialize_pem(),
        }
    }

    /// Writes the PEM to `dir/AuthKey_<key id>.p8`.
    pub fn write(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join(format!("AuthKey_{}.p8", self.key_id));
        std::fs::write(&path, &self.pem).expect("write .p8");
        path
    }
}

impl MockApns {
    /// Revokes the provider-token key `key_id`, as a team does in the Apple portal: every
    /// token it signed is refused from now on (403 `InvalidProviderToken`).
    pub fn revoke_key(&self, key_id: &str) {
        let apns = &self.state();
        apns.keys.lock().expect("keys lock").remove(key_id);
        apns.verified.lock().expect("verified lock").clear();
    }

    /// Starts a mock accepting pushes for `bundles` with provider tokens signed by `keys`,
    /// on `port` (0 = any).
    pub async fn start_apns(ca: &TestCa, bundles: &[&str], keys: &[&P8Key], port: u16) -> Self {
        Self::start_apns_at(ca, bundles, keys, &pipeline::mock::Listen::loopback(port)).await
    }

    /// Like [`MockApns::start_apns`], listening as `at` says.
    pub async fn start_apns_at(
        ca: &TestCa,
        bundles: &[&str],
        keys: &[&P8Key],
        at: &pipeline::mock::Listen,
    ) -> Self {
        let behaviour = Apns {
            bundles: bundles.iter().map(|b| b.to_string()).collect(),
            keys: Mutex::new(HashMap::new()),
            verified: Mutex::new(HashMap::new()),
        };
        for key in keys {
            behaviour.trust(key);
        }
        MockApns(Mock::start(behaviour, ca, at).await)
    }

    /// An APNs error answer.
    pub fn error(status: u16, reason: &str) -> Reply {
        Reply::Status {
            status,
            body: format!(r#"{{"reason":"{reason}"}}"#),
            retry_after: None,
        }
    }

    /// A 410 `Unregistered` with Apple's timestamp (ms).
    pub fn unregistered(timestamp_ms: u64) -> Reply {
        Reply::Status {
            status: 410,
            body: format!(r#"{{"reason":"Unregistered","timestamp":{timestamp_ms}}}"#),
            retry_after: None,
        }
    }

    /// A 429 `TooManyRequests` with `Retry-After`.
    pub fn too_many(retry_after_secs: u64) -> Reply {
        Reply::Status {
            status: 429,
            body: r#"{"reason":"TooManyRequests"}"#.into(),
            retry_after: Some(retry_after_secs),
        }
    }

    /// The device token of a recorded request.
    pub fn token_of(path: &str) -> &str {
        path.strip_prefix("/3/device/").unwrap_or("")
    }
}

impl Apns {
    fn trust(&self, key: &P8Key) {
        let signing = p256::ecdsa::SigningKey::from_pkcs8_pem(&key.pem).expect("P-256 PKCS#8");
        self.keys.lock().expect("keys lock").insert(
            key.key_id.clone(),
            TeamKey {
                team_id: key.team_id.clone(),
                key: *signing.verifying_key(),
            },
        );
    }

    /// Checks a provider token; the APNs reason on failure.
    fn check_token(&self, token: &str) -> Result<(), &'static str> {
        let known = self
            .verified
            .lock()
            .expect("verified lock")
            .get(token)
            .copied();
        let iat = match known {
            Some(iat) => iat,
            None => {
                let iat = self.verify_signature(token)?;
                self.verified
                    .lock()
                    .expect("verified lock")
                    .insert(token.to_owned(), iat);
                iat
            }
        };
        let now = pipeline::contract::now_ms() / 1000;
        if iat <= now + 60 && now.saturating_sub(iat) < 3_600 {
            Ok(())
        } else {
            Err("ExpiredProviderToken")
        }
    }

    /// Verifies a token's header, issuer and signature; returns its `iat`.
    fn verify_signature(&self, token: &str) -> Result<u64, &'static str> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("InvalidProviderToken");
        };
        let json = |part: &str| -> Option<serde_json::Value> {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
        };
        let (Some(header), Some(claims)) = (json(h), json(c)) else {
            return Err("InvalidProviderToken");
        };
        if header["alg"] != "ES256" {
            return Err("InvalidProviderToken");
        }
        let keys = self.keys.lock().expect("keys lock");
        let Some(team) = header["kid"].as_str().and_then(|kid| keys.get(kid)) else {
            return Err("InvalidProviderToken");
        };
        if claims["iss"].as_str() != Some(team.team_id.as_str()) {
            return Err("InvalidProviderToken");
        }
        let signature = URL_SAFE_NO_PAD
            .decode(s)
            .ok()
            .and_then(|b| Signature::from_slice(&b).ok());
        let Some(signature) = signature else {
            return Err("InvalidProviderToken");
        };
        if team
            .key
            .verify(format!("{h}.{c}").as_bytes(), &signature)
            .is_err()
        {
            return Err("InvalidProviderToken");
        }
        claims["iat"].as_u64().ok_or("InvalidProviderToken")
    }
}

fn refuse(status: u16, reason: &str) -> Checked {
    Checked::Refuse(status, format!(r#"{{"reason":"{reason}"}}"#))
}

impl Behaviour for Apns {
    fn check(
        &self,
        path: &str,
        headers: &HashMap<String, String>,
        body: &Bytes,
        client_cert: bool,
    ) -> Checked {
        let Some(token) = path.strip_prefix("/3/device/") else {
            return refuse(404, "BadPath");
        };
        if token.len() < 64 || token.len() % 2 != 0 || !token.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return refuse(400, "BadDeviceToken");
        }
        let Some(topic) = headers.get("apns-topic") else {
            return refuse(400, "MissingTopic");
        };
        let push_type = headers
            .get("apns-push-type")
            .map(String::as_str)
            .unwrap_or("alert");
        let bundle = topic.strip_suffix(".voip").unwrap_or(topic);
        if !self.bundles.iter().any(|b| b == bundle) {
            return refuse(400, "TopicDisallowed");
        }
        if (push_type == "voip") != topic.ends_with(".voip") {
            return refuse(400, "BadTopic");
        }
        match headers.get("authorization") {
            Some(value) => {
                let Some(jwt) = value
                    .strip_prefix("bearer ")
                    .or_else(|| value.strip_prefix("Bearer "))
                else {
                    return refuse(403, "InvalidProviderToken");
                };
                if let Err(reason) = self.check_token(jwt) {
                    return refuse(403, reason);
                }
            }
            None if client_cert => {}
            None => return refuse(403, "MissingProviderToken"),
        }
        if let Some(priority) = headers.get("apns-priority") {
            if !matches!(priority.as_str(), "1" | "5" | "10") {
                return refuse(400, "BadPriority");
            }
        }
        if headers
            .get("apns-expiration")
            .is_some_and(|e| e.parse::<u64>().is_err())
        {
            return refuse(400, "BadExpirationDate");
        }
        if body.is_empty() {
            return refuse(400, "PayloadEmpty");
        }
        // A token no device can have (what credential checks push to), as APNs answers it.
        if !token.is_empty() && token.bytes().all(|b| b == b'0') {
            return refuse(400, "BadDeviceToken");
        }
        let limit = if push_type == "voip" { 5_120 } else { 4_096 };
        if body.len() > limit {
            return refuse(413, "PayloadTooLarge");
        }
        let id = headers
            .get("apns-id")
            .cloned()
            .unwrap_or_else(|| "00000000-0000-0000-0000-000000000000".into());
        Checked::Valid {
            key: token.to_owned(),
            ok: String::new(),
            ok_headers: vec![("apns-id".into(), id)],
        }
    }
}

/// A dispatcher configuration sending to `mock` (trusting `ca_file`) for `bundle_id` in
/// both environments with the provider-token key `key_file` (`team_id`, `key_id`), on
/// `nats`: short timeouts and retries for tests, no periodic credential check (a test
/// that counts requests sees only its own).
pub fn dispatcher_config(
    mock: &MockApns,
    ca_file: &std::path::Path,
    bundle_id: &str,
    (team_id, key_id, key_file): (&str, &str, &std::path::Path),
    nats: pipeline::config::NatsConfig,
    telemetry: pipeline::config::TelemetryConfig,
) -> crate::config::Config {
    let mut config = crate::config::Config {
        nats,
        telemetry,
        ..Default::default()
    };
    config.apns.production_url = mock.url();
    config.apns.sandbox_url = mock.url();
    config.apns.ca_files = vec![ca_file.to_owned()];
    config.apns.request_timeout_ms = 2_000;
    config.apns.credential_check_secs = 0;
    config.apns.apps = vec![crate::config::AppConfig {
        bundle_id: bundle_id.into(),
        environments: vec![
            pipeline::contract::Environment::Production,
            pipeline::contract::Environment::Sandbox,
        ],
        team_id: Some(team_id.into()),
        key_id: Some(key_id.into()),
        key_file: Some(key_file.to_owned()),
        certificate_file: None,
        certificate_key_file: None,
        key_base64: None,
        certificate_base64: None,
        certificate_key_base64: None,
        certificate_password: None,
    }];
    config.worker.retry_base_ms = 20;
    config.worker.retry_max_ms = 500;
    config
}

/// The sandbox's app: the bundle id its mock accepts (VoIP pushes on `<bundle>.voip`).
pub const SANDBOX_APP: &str = "com.example.pushline";
/// The sandbox's team id.
pub const SANDBOX_TEAM_ID: &str = "TEAM123456";
/// The sandbox's provider-token key id (its `.p8` is `AuthKey_<id>.p8`).
pub const SANDBOX_KEY_ID: &str = "KEY1234567";

/// APNs in the sandbox ([`pipeline::mock::sandbox`]): a mock for [`SANDBOX_APP`] trusting
/// a fresh provider-token key, written to `AuthKey_<SANDBOX_KEY_ID>.p8`.
pub static SANDBOX: ApnsSandbox = ApnsSandbox;

/// See [`SANDBOX`].
pub struct ApnsSandbox;

impl pipeline::mock::sandbox::Sandbox for ApnsSandbox {
    fn name(&self) -> &'static str {
        "apns"
    }

    fn sandbox_port(&self) -> u16 {
        8443
    }

    fn start<'a>(
        &'a self,
        ca: &'a TestCa,
        at: &'a pipeline::mock::Listen,
        dir: &'a std::path::Path,
    ) -> BoxFuture<'a, std::sync::Arc<dyn Running>> {
        Box::pin(async move {
            let key = P8Key::generate(SANDBOX_TEAM_ID, SANDBOX_KEY_ID);
            let mock = MockApns::start_apns_at(ca, &[SANDBOX_APP], &[&key], at).await;
            key.write(dir);
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

impl Running for MockApns {
    fn name(&self) -> &'static str {
        "apns"
    }

    fn url(&self) -> String {
        Mock::url(self)
    }

    fn dispatcher_config(&self, dir: &std::path::Path) -> serde_json::Value {
        let config = dispatcher_config(
            self,
            &dir.join("ca.pem"),
            SANDBOX_APP,
            (
                SANDBOX_TEAM_ID,
                SANDBOX_KEY_ID,
                &dir.join(format!("AuthKey_{SANDBOX_KEY_ID}.p8")),
            ),
            Default::default(),
            Default::default(),
        );
        pipeline::mock::sandbox::provider_part(&config)
    }

    fn device(&self, person: &str) -> serde_json::Value {
        serde_json::json!({
            "person_id": person,
            "platform": "apns",
            "app": SANDBOX_APP,
            "channel": "voip",
            "token": pipeline::mock::sandbox::fresh_token(32),
        })
    }

    fn wait_beyond(&self, seen: usize) -> BoxFuture<'_, Vec<pipeline::mock::Recorded>> {
        Box::pin(Mock::wait_beyond(self, seen))
    }

    fn pushes(&self) -> Vec<pipeline::mock::Recorded> {
        self.requests()
    }

    fn describe(&self, r: &pipeline::mock::Recorded) -> Option<String> {
        Some(format!(
            "APNs {} ← {} push-type={} topic={} body={}",
            r.status,
            MockApns::token_of(&r.path)
                .chars()
                .take(12)
                .collect::<String>(),
            r.header("apns-push-type").unwrap_or("-"),
            r.header("apns-topic").unwrap_or("-"),
            pipeline::mock::sandbox::excerpt(&r.body),
        ))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
