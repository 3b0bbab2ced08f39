//! A mock FCM HTTP v1 with its OAuth2 token endpoint, over HTTP/2 and TLS.
//!
//! - `POST /token`: checks the service account's RS256 assertion (signature, `iss`,
//!   `aud` = this endpoint, the messaging scope, `exp`) and issues an access token.
//! - `POST /v1/projects/<id>/messages:send`: checks the project, the bearer (issued and not
//!   revoked), and the message (`token`, `data` a map of strings, `android.priority`);
//!   errors use FCM's JSON shape with `details[].errorCode`.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::Verifier;
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;

use pipeline::mock::sandbox::{BoxFuture, Running, ServeError};
use pipeline::mock::tls::TestCa;
use pipeline::mock::{Behaviour, Checked, Mock, Recorded, Reply};

/// The test-only service-account key (see `dispatcher-fcm/fixtures/README.md`).
pub const SERVICE_ACCOUNT_KEY: &str = include_str!("../fixtures/fcm-test-service-account-key.pem");
/// The test service account's e-mail.
pub const CLIENT_EMAIL: &str = "pushline-test@pushline-test.iam.gserviceaccount.com";

/// The FCM-specific checks and the token endpoint.
pub struct Fcm {
    projects: Vec<String>,
    public_key: RsaPublicKey,
    token_uri: Mutex<String>,
    issued: Mutex<HashSet<String>>,
    counter: AtomicU64,
    token_requests: AtomicU64,
    deleted: std::sync::atomic::AtomicBool,
}

/// A running mock FCM.
pub struct MockFcm(Mock<Fcm>);

impl std::ops::Deref for MockFcm {
    type Target = Mock<Fcm>;

    fn deref(&self) -> &Mock<Fcm> {
        &self.0
    }
}

impl MockFcm {
    /// Starts a mock serving `projects` on `port` (0 = any).
    pub async fn start_fcm(ca: &TestCa, projects: &[&str], port: u16) -> Self {
        Self::start_fcm_at(ca, projects, &pipeline::mock::Listen::loopback(port)).await
    }

    /// Like [`MockFcm::start_fcm`], listening as `at` says.
    pub async fn start_fcm_at(ca: &TestCa, projects: &[&str], at: &pipeline::mock::Listen) -> Self {
        let private = RsaPrivateKey::from_pkcs8_pem(SERVICE_ACCOUNT_KEY).expect("fixture key");
        let behaviour = Fcm {
            projects: projects.iter().map(|p| p.to_string()).collect(),
            public_key: RsaPublicKey::from(&private),
            token_uri: Mutex::new(String::new()),
            issued: Mutex::new(HashSet::new()),
            counter: AtomicU64::new(0),
            token_requests: AtomicU64::new(0),
            deleted: std::sync::atomic::AtomicBool::new(false),
        };
        let mock = MockFcm(Mock::start(behaviour, ca, at).await);
        *mock.state().token_uri.lock().expect("lock") = format!("{}/token", mock.url());
        mock
    }

    /// A service-account key file for `project` whose `token_uri` is this mock.
    pub fn service_account_json(&self, project: &str) -> String {
        serde_json::json!({
            "type": "service_account",
            "project_id": project,
            "private_key_id": "pushline-test-key",
            "private_key": SERVICE_ACCOUNT_KEY,
            "client_email": CLIENT_EMAIL,
            "client_id": "1",
            "token_uri": self.state().token_uri.lock().expect("lock").clone(),
        })
        .to_string()
    }

    /// Writes [`MockFcm::service_account_json`] to `dir/<project>.json`.
    pub fn write_service_account(
        &self,
        dir: &std::path::Path,
        project: &str,
    ) -> std::path::PathBuf {
        let path = dir.join(format!("{project}.json"));
        std::fs::write(&path, self.service_account_json(project)).expect("write service account");
        path
    }

    /// Forgets every access token issued so far (the next send gets 401).
    pub fn revoke_access_tokens(&self) {
        self.state().issued.lock().expect("lock").clear();
    }

    /// Deletes the service account: access tokens are no longer issued (400
    /// `invalid_grant`) and the ones issued are refused (401).
    pub fn delete_service_account(&self) {
        let fcm = &self.state();
        fcm.deleted.store(true, Ordering::Relaxed);
        fcm.issued.lock().expect("lock").clear();
    }

    /// How many access tokens were requested.
    pub fn token_requests(&self) -> u64 {
        self.state().token_requests.load(Ordering::Relaxed)
    }

    /// An FCM error answer in the v1 shape.
    pub fn error(status: u16, error_code: &str, message: &str) -> Reply {
        Reply::Status {
            status,
            body: error_body(status, error_code, message),
            retry_after: None,
        }
    }

    /// The device token of a recorded send.
    pub fn token_of(request: &Recorded) -> String {
        serde_json::from_slice::<serde_json::Value>(&request.body)
            .ok()
            .and_then(|v| v["message"]["token"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        500 => "INTERNAL",
        503 => "UNAVAILABLE",
        _ => "UNKNOWN",
    }
}

fn error_body(status: u16, error_code: &str, message: &str) -> String {
    let mut details = Vec::new();
    if !error_code.is_empty() {
        details.push(serde_json::json!({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}));
    }
    serde_json::json!({"error": {"code": status, "message": message, "status": status_name(status), "details": details}}).to_string()
}

impl Fcm {
    fn issue_token(&self, body: &Bytes) -> Checked {
        self.token_requests.fetch_add(1, Ordering::Relaxed);
        let form: HashMap<&str, &str> = std::str::from_utf8(body)
            .unwrap_or("")
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .collect();
        let grant_ok = form.get("grant_type").is_some_and(|g| {
            g.replace("%3A", ":") == "urn:ietf:params:oauth:grant-type:jwt-bearer"
        });
        let refused = |why: &str| {
            Checked::Direct(
                400,
                serde_json::json!({"error": "invalid_grant", "error_description": why}).to_string(),
            )
        };
        if !grant_ok {
            return refused("grant_type");
        }
        let Some(assertion) = form.get("assertion") else {
            return refused("assertion missing");
        };
        if self.deleted.load(Ordering::Relaxed) {
            return refused("Invalid grant: account not found");
        }
        if let Err(why) = self.check_assertion(assertion) {
            return refused(why);
        }
        let token = format!(
            "mock-access-{}",
            self.counter.fetch_add(1, Ordering::Relaxed) + 1
        );
        self.issued.lock().expect("lock").insert(token.clone());
        Checked::Direct(
            200,
            serde_json::json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})
                .to_string(),
        )
    }

    fn check_assertion(&self, jwt: &str) -> Result<(), &'static str> {
        let mut parts = jwt.split('.');
        let (Some(h), Some(c), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("not a JWT");
        };
        let signature = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| "signature encoding")?;
        let signature = Signature::try_from(signature.as_slice()).map_err(|_| "signature")?;
        VerifyingKey::<Sha256>::new(self.public_key.clone())
            .verify(format!("{h}.{c}").as_bytes(), &signature)
            .map_err(|_| "bad signature")?;
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).map_err(|_| "claims encoding")?)
                .map_err(|_| "claims")?;
        let token_uri = self.token_uri.lock().expect("lock").clone();
        if claims["iss"] != CLIENT_EMAIL || claims["aud"] != token_uri.as_str() {
            return Err("iss or aud");
        }
        if !claims["scope"]
            .as_str()
            .unwrap_or("")
            .contains("firebase.messaging")
        {
            return Err("scope");
        }
        if claims["exp"].as_u64().unwrap_or(0) <= pipeline::contract::now_ms() / 1000 {
            return Err("expired assertion");
        }
        Ok(())
    }
}

fn refuse(status: u16, code: &str, message: &str) -> Checked {
    Checked::Refuse(status, error_body(status, code, message))
}

impl Behaviour for Fcm {
    fn check(
        &self,
        path: &str,
        headers: &HashMap<String, String>,
        body: &Bytes,
        _client_cert: bool,
    ) -> Checked {
        if path == "/token" {
            return self.issue_token(body);
        }
        let Some(project) = path
            .strip_prefix("/v1/projects/")
            .and_then(|p| p.strip_suffix("/messages:send"))
        else {
            return refuse(404, "", "Requested entity was not found.");
        };
        if !self.projects.iter().any(|p| p == project) {
            return refuse(404, "", "Requested entity was not found.");
        }
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.strip_prefix("Bearer "));
        if !bearer.is_some_and(|b| self.issued.lock().expect("lock").contains(b)) {
            return refuse(401, "", "Request had invalid authentication credentials.");
        }
        let Ok(request) = serde_json::from_slice::<serde_json::Value>(body) else {
            return refuse(400, "INVALID_ARGUMENT", "Invalid JSON payload received.");
        };
        let message = &request["message"];
        let Some(token) = message["token"].as_str().filter(|t| !t.is_empty()) else {
            return refuse(
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
            );
        };
        if let Some(data) = message.get("data") {
            let all_strings = data
                .as_object()
                .is_some_and(|m| m.values().all(|v| v.is_string()));
            if !all_strings {
                return refuse(
                    400,
                    "INVALID_ARGUMENT",
                    "Invalid value at 'message.data': values must be strings",
                );
            }
        }
        if !matches!(
            message["android"]["priority"].as_str(),
            None | Some("HIGH" | "NORMAL")
        ) {
            return refuse(
                400,
                "INVALID_ARGUMENT",
                "Invalid value at 'message.android.priority'",
            );
        }
        let name = format!(
            "projects/{project}/messages/{}",
            self.counter.fetch_add(1, Ordering::Relaxed)
        );
        Checked::Valid {
            key: token.to_owned(),
            ok: serde_json::json!({ "name": name }).to_string(),
            ok_headers: Vec::new(),
        }
    }
}

/// A dispatcher configuration sending to `mock` (trusting `ca_file`) with the service
/// account `service_account_file`, on `nats`: short timeouts and retries for tests, no
/// periodic credential check.
pub fn dispatcher_config(
    mock: &MockFcm,
    ca_file: &std::path::Path,
    service_account_file: &std::path::Path,
    nats: pipeline::config::NatsConfig,
    telemetry: pipeline::config::TelemetryConfig,
) -> crate::config::Config {
    let mut config = crate::config::Config {
        nats,
        telemetry,
        ..Default::default()
    };
    config.fcm.base_url = mock.url();
    config.fcm.ca_files = vec![ca_file.to_owned()];
    config.fcm.request_timeout_ms = 2_000;
    config.fcm.credential_check_secs = 0;
    config.fcm.projects = vec![crate::config::ProjectConfig {
        project_id: None,
        service_account_file: Some(service_account_file.to_owned()),
        service_account_base64: None,
    }];
    config.worker.retry_base_ms = 20;
    config.worker.retry_max_ms = 500;
    config
}

/// The sandbox's app: the FCM project its mock serves (its service account is
/// `<project>.json`).
pub const SANDBOX_APP: &str = "pushline-test";

/// FCM in the sandbox ([`pipeline::mock::sandbox`]): a mock serving [`SANDBOX_APP`], whose
/// service account (with this mock as its `token_uri`) is written to `<project>.json`.
pub static SANDBOX: FcmSandbox = FcmSandbox;

/// See [`SANDBOX`].
pub struct FcmSandbox;

impl pipeline::mock::sandbox::Sandbox for FcmSandbox {
    fn name(&self) -> &'static str {
        "fcm"
    }

    fn sandbox_port(&self) -> u16 {
        8444
    }

    fn start<'a>(
        &'a self,
        ca: &'a TestCa,
        at: &'a pipeline::mock::Listen,
        dir: &'a std::path::Path,
    ) -> BoxFuture<'a, std::sync::Arc<dyn Running>> {
        Box::pin(async move {
            let mock = MockFcm::start_fcm_at(ca, &[SANDBOX_APP], at).await;
            mock.write_service_account(dir, SANDBOX_APP);
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

impl Running for MockFcm {
    fn name(&self) -> &'static str {
        "fcm"
    }

    fn url(&self) -> String {
        Mock::url(self)
    }

    fn dispatcher_config(&self, dir: &std::path::Path) -> serde_json::Value {
        let config = dispatcher_config(
            self,
            &dir.join("ca.pem"),
            &dir.join(format!("{SANDBOX_APP}.json")),
            Default::default(),
            Default::default(),
        );
        pipeline::mock::sandbox::provider_part(&config)
    }

    fn device(&self, person: &str) -> serde_json::Value {
        serde_json::json!({
            "person_id": person,
            "platform": "fcm",
            "app": SANDBOX_APP,
            "token": format!("sandbox:{}", pipeline::mock::sandbox::fresh_token(16)),
        })
    }

    fn wait_beyond(&self, seen: usize) -> BoxFuture<'_, Vec<Recorded>> {
        Box::pin(Mock::wait_beyond(self, seen))
    }

    fn pushes(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path != "/token")
            .collect()
    }

    fn describe(&self, r: &Recorded) -> Option<String> {
        (r.path != "/token").then(|| {
            format!(
                "FCM  {} ← {}",
                r.status,
                pipeline::mock::sandbox::excerpt(&r.body)
            )
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
