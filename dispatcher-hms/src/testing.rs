//! A mock Huawei Push Kit with its OAuth 2.0 token endpoint, over HTTP/2 and TLS, written
//! from Huawei's documentation of both, and the provider's [`SANDBOX`].
//!
//! - `POST /oauth2/v3/token` (a form): `grant_type=client_credentials`, `client_id` an
//!   OAuth client id of 1 to 64 digits that the mock serves, `client_secret` its secret;
//!   issues `{"access_token","expires_in","token_type":"Bearer"}`, or refuses with 400
//!   `{"error":1101,"sub_error":…,"error_description":…}` (`20002` a malformed client id,
//!   `20003` an unknown client, `12304` a wrong secret, `20182` another grant type). A
//!   test may script the endpoint's next answers ([`MockHms::script_token_endpoint`]),
//!   e.g. 429 flow control with `Retry-After`.
//! - `POST /v1/<clientId>/messages:send`: the bearer must be an access token the endpoint
//!   issued for that client (else 401 `80200001`) and not expired (else 401 `80200003`);
//!   the body must be `{"validate_only":bool,"message":{…}}` with exactly one target,
//!   `token` a list of 1 to 1000 tokens (else `80300010`), `data` a string,
//!   `android.urgency` `HIGH`/`NORMAL`, `HIGH` only with an `android.category` (Huawei
//!   delivers high-priority messages only for a classified scenario), `android.category`
//!   one of Huawei's documented categories ([`DOCUMENTED_CATEGORIES`], else `80100001`),
//!   `android.ttl` seconds (`"86400s"`, up to 9 decimals, at most 15 days, else
//!   `80100004`), `android.collapse_key` an integer from -1 to 100,
//!   `android.notification`'s `click_action` a type 1–4 with what that type needs and at
//!   most three `buttons` each named (at most 40 characters) with an `action_type` 0–4
//!   (else `80100003`); the message without its tokens at most 4096 bytes (else 400
//!   `80300008`). A token Push Kit never issued is illegal: the mock knows the tokens
//!   [`device_token`] makes (Push Kit's are opaque; this is the mock's own rule, not the
//!   spec's character check), and any other string is unknown to it: all of them → 400
//!   `80300007`, some → 200 `80100000` naming them in `msg`. Success is 200
//!   `{"code":"80000000","msg":"Success","requestId":"…"}`; with `validate_only: true`
//!   the message is checked and answered so but not pushed (not recorded).
//!
//! Answers a test scripts ([`MockHms::error`], [`MockHms::flow_control`]) carry an HTTP
//! status from Huawei's table for Push Kit (200, 400, 401, 404, 500, 502, 503).
//! [`Mock::delivered`] counts answers with HTTP 200, so a scripted partial failure
//! (`80100000`, which Huawei answers with 200) counts as delivered there.

use std::any::Any;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use pipeline::CancellationToken;
use pipeline::mock::sandbox::{BoxFuture, Running, Sandbox, ServeError};
use pipeline::mock::tls::TestCa;
use pipeline::mock::{Behaviour, Checked, Listen, Mock, Recorded, Reply};

/// The sandbox's app: the app id its mock serves (an AppGallery Connect app id is digits;
/// its secret is written to `hms-<app id>.secret`).
pub const SANDBOX_APP: &str = "10086000";
/// The token endpoint's path.
pub const TOKEN_PATH: &str = "/oauth2/v3/token";
/// How long the access tokens the mock issues live, unless a test says otherwise.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3_600);

/// The test-only secret of `app_id` the mock's token endpoint expects. It grants nothing
/// anywhere.
pub fn secret_of(app_id: &str) -> String {
    format!("pushline-test-secret-{app_id}")
}

/// How the tokens the mock "issued" begin.
const ISSUED_PREFIX: &str = "IQAAAACy0kYk";

/// A fresh token in Push Kit's shape (base64url, 130 characters), distinct for each
/// `n`: one the mock knows as issued.
pub fn device_token(n: u64) -> String {
    let stamp = pipeline::mock::now_us();
    let head = format!("{ISSUED_PREFIX}{stamp:016x}{n:016x}_");
    let pad: String = "Hw-9".chars().cycle().take(130 - head.len()).collect();
    head + &pad
}

/// Whether the mock issued `token` (made by [`device_token`]): Push Kit answers any other
/// as an illegal token.
fn issued(token: &str) -> bool {
    token.len() == 130 && token.starts_with(ISSUED_PREFIX)
}

/// The categories Huawei documents for `android.category`: its message-classification
/// scenarios, and `PLAY_VOICE` (voice broadcast). Kept apart from the spec's own list on
/// purpose: the mock checks what Huawei's pages say, not what the client sends.
pub const DOCUMENTED_CATEGORIES: &[&str] = &[
    "IM",
    "VOIP",
    "SUBSCRIPTION",
    "TRAVEL",
    "HEALTH",
    "WORK",
    "ACCOUNT",
    "EXPRESS",
    "FINANCE",
    "DEVICE_REMINDER",
    "MAIL",
    "CUSTOMER_SERVICE",
    "PLAY_VOICE",
    "MARKETING",
];

struct Issued {
    app_id: String,
    expires: Instant,
}

/// The Push Kit checks and the token endpoint.
pub struct Hms {
    secrets: Mutex<HashMap<String, String>>,
    issued: Mutex<HashMap<String, Issued>>,
    lifetime: Mutex<Duration>,
    counter: AtomicU64,
    token_requests: AtomicU64,
    token_script: Mutex<std::collections::VecDeque<(u16, String)>>,
}

/// A running mock Push Kit.
pub struct MockHms(Mock<Hms>);

impl std::ops::Deref for MockHms {
    type Target = Mock<Hms>;

    fn deref(&self) -> &Mock<Hms> {
        &self.0
    }
}

/// The HTTP status the mock answers a Push Kit result code with: one of the statuses of
/// Huawei's table (200, 400, 401, 404, 500, 502, 503) — success and partial success 200,
/// the OAuth and permission codes 401, Huawei's internal faults 500, any other fault in
/// the request 400.
pub fn status_of(code: &str) -> u16 {
    match code {
        "80000000" | "80100000" => 200,
        "80200001" | "80200003" | "80300002" => 401,
        "80600003" | "81000001" => 500,
        _ => 400,
    }
}

fn answer(code: &str, msg: &str, request_id: u64) -> String {
    serde_json::json!({"code": code, "msg": msg, "requestId": request_id.to_string()}).to_string()
}

impl MockHms {
    /// Starts a mock serving `apps` (app ids) on `port` (0 = any).
    pub async fn start_hms(ca: &TestCa, apps: &[&str], port: u16) -> Self {
        Self::start_hms_at(ca, apps, &Listen::loopback(port)).await
    }

    /// Like [`MockHms::start_hms`], listening as `at` says.
    pub async fn start_hms_at(ca: &TestCa, apps: &[&str], at: &Listen) -> Self {
        let behaviour = Hms {
            secrets: Mutex::new(apps.iter().map(|a| (a.to_string(), secret_of(a))).collect()),
            issued: Mutex::new(HashMap::new()),
            lifetime: Mutex::new(TOKEN_LIFETIME),
            counter: AtomicU64::new(0),
            token_requests: AtomicU64::new(0),
            token_script: Mutex::new(Default::default()),
        };
        MockHms(Mock::start(behaviour, ca, at).await)
    }

    /// The token endpoint's URL.
    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.url())
    }

    /// Writes `app_id`'s secret to `dir/hms-<app_id>.secret`.
    pub fn write_secret(&self, dir: &Path, app_id: &str) -> PathBuf {
        let path = dir.join(format!("hms-{app_id}.secret"));
        std::fs::write(&path, secret_of(app_id)).expect("write secret");
        path
    }

    /// Forgets every access token issued so far (the next send gets 401 `80200001`).
    pub fn revoke_access_tokens(&self) {
        self.state().issued.lock().expect("lock").clear();
    }

    /// Lets every access token issued so far expire now (the next send gets 401
    /// `80200003`).
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        for issued in self.state().issued.lock().expect("lock").values_mut() {
            issued.expires = now;
        }
    }

    /// Access tokens issued from now on live `lifetime` (and say so in `expires_in`).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        *self.state().lifetime.lock().expect("lock") = lifetime;
    }

    /// Resets `app_id`'s secret in AppGallery Connect: the old one is refused (400
    /// `1101`/`12304`) and the access tokens issued with it too.
    pub fn reset_secret(&self, app_id: &str) {
        let hms = self.state();
        hms.secrets
            .lock()
            .expect("lock")
            .insert(app_id.to_owned(), format!("{}-reset", secret_of(app_id)));
        hms.issued
            .lock()
            .expect("lock")
            .retain(|_, issued| issued.app_id != app_id);
    }

    /// The token endpoint's next answers, `(status, body)` each, before it issues tokens
    /// again (e.g. `(429, "")` for flow control).
    pub fn script_token_endpoint(&self, answers: impl IntoIterator<Item = (u16, String)>) {
        self.state()
            .token_script
            .lock()
            .expect("lock")
            .extend(answers);
    }

    /// How many access tokens were requested.
    pub fn token_requests(&self) -> u64 {
        self.state().token_requests.load(Ordering::Relaxed)
    }

    /// A Push Kit answer with `code`, under the HTTP status Huawei documents for it.
    pub fn error(code: &str, msg: &str) -> Reply {
        Reply::Status {
            status: status_of(code),
            body: answer(code, msg, 0),
            retry_after: None,
        }
    }

    /// Flow control: HTTP `status` (Huawei documents 503; 429 is handled alike) with
    /// `Retry-After: retry_after_secs`.
    pub fn flow_control(status: u16, retry_after_secs: u64) -> Reply {
        Reply::Status {
            status,
            body: String::new(),
            retry_after: Some(retry_after_secs),
        }
    }

    /// A partial failure naming `illegal` as the tokens that failed (HTTP 200).
    pub fn partial(illegal: &[&str]) -> Reply {
        let msg =
            serde_json::json!({"success": 0, "failure": illegal.len(), "illegal_tokens": illegal});
        Reply::Status {
            status: 200,
            body: answer("80100000", &msg.to_string(), 0),
            retry_after: None,
        }
    }

    /// The request body of a recorded send, parsed.
    pub fn body_of(request: &Recorded) -> Value {
        serde_json::from_slice(&request.body).unwrap_or_default()
    }

    /// The (first) device token of a recorded send.
    pub fn token_of(request: &Recorded) -> String {
        Self::body_of(request)["message"]["token"][0]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The `data` of a recorded send, parsed from the string it is sent as.
    pub fn data_of(request: &Recorded) -> Value {
        Self::body_of(request)["message"]["data"]
            .as_str()
            .and_then(|data| serde_json::from_str(data).ok())
            .unwrap_or_default()
    }
}

impl Hms {
    fn issue_token(&self, headers: &HashMap<String, String>, body: &Bytes) -> Checked {
        self.token_requests.fetch_add(1, Ordering::Relaxed);
        if let Some((status, body)) = self.token_script.lock().expect("lock").pop_front() {
            return Checked::Direct(status, body);
        }
        let refused = |sub_error: u32, why: &str| {
            Checked::Direct(
                400,
                serde_json::json!({"error": 1101, "sub_error": sub_error, "error_description": why})
                    .to_string(),
            )
        };
        let form_type = headers
            .get("content-type")
            .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
        if !form_type {
            return refused(20001, "content type is not a form");
        }
        let form: HashMap<String, String> =
            url::form_urlencoded::parse(body).into_owned().collect();
        if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
            return refused(20182, "invalid grant_type");
        }
        let client_id = form.get("client_id").map(String::as_str).unwrap_or("");
        if client_id.is_empty()
            || client_id.len() > 64
            || !client_id.bytes().all(|b| b.is_ascii_digit())
        {
            return refused(20002, "invalid client_id");
        }
        let expected = self.secrets.lock().expect("lock").get(client_id).cloned();
        let Some(expected) = expected else {
            return refused(20003, "client_id not found");
        };
        if form.get("client_secret") != Some(&expected) {
            return refused(12304, "invalid client_secret");
        }
        let lifetime = *self.lifetime.lock().expect("lock");
        let token = format!(
            "CgB6e3x9mock{}-{client_id}==",
            self.counter.fetch_add(1, Ordering::Relaxed) + 1
        );
        self.issued.lock().expect("lock").insert(
            token.clone(),
            Issued {
                app_id: client_id.to_owned(),
                expires: Instant::now()
                    .checked_add(lifetime)
                    .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365)),
            },
        );
        Checked::Direct(
            200,
            serde_json::json!({"access_token": token, "expires_in": lifetime.as_secs(), "token_type": "Bearer"})
                .to_string(),
        )
    }

    fn check_bearer(&self, app_id: &str, headers: &HashMap<String, String>) -> Result<(), Checked> {
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.strip_prefix("Bearer "));
        let issued = self.issued.lock().expect("lock");
        match bearer.and_then(|b| issued.get(b)) {
            Some(issued) if issued.app_id != app_id => {
                Err(refuse("80200001", "Oauth authentication error"))
            }
            Some(issued) if Instant::now() >= issued.expires => {
                Err(refuse("80200003", "Oauth Token expired"))
            }
            Some(_) => Ok(()),
            None => Err(refuse("80200001", "Oauth authentication error")),
        }
    }
}

fn refuse(code: &str, msg: &str) -> Checked {
    Checked::Refuse(status_of(code), answer(code, msg, 0))
}

/// Whether `ttl` is Push Kit's form (`"86400"`, `"86400s"`, `"0.5s"`: up to 9 decimals)
/// and at most 15 days.
fn ttl_ok(ttl: &str) -> bool {
    let number = ttl.strip_suffix(['s', 'S']).unwrap_or(ttl);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    !whole.is_empty()
        && digits(whole)
        && digits(fraction)
        && fraction.len() <= 9
        && (!number.contains('.') || !fraction.is_empty())
        && whole
            .parse::<u64>()
            .is_ok_and(|s| s < 1_296_000 || (s == 1_296_000 && fraction.bytes().all(|b| b == b'0')))
}

/// What is wrong with an `AndroidNotification`, if anything.
fn notification_problem(notification: &Value) -> Option<&'static str> {
    let notification = notification.as_object()?;
    for field in ["title", "body"] {
        if notification.get(field).is_some_and(|v| !v.is_string()) {
            return Some("notification title and body are strings");
        }
    }
    if let Some(action) = notification.get("click_action") {
        let given = |field: &str| action[field].as_str().is_some_and(|s| !s.is_empty());
        match action["type"].as_u64() {
            Some(1) if given("intent") || given("action") => {}
            Some(1) => return Some("click_action type 1 needs intent or action"),
            Some(2) if given("url") => {}
            Some(2) => return Some("click_action type 2 needs url"),
            Some(3) => {}
            Some(4) if given("rich_resource") => {}
            _ => return Some("click_action type must be 1 to 4"),
        }
    }
    if let Some(buttons) = notification.get("buttons") {
        let Some(buttons) = buttons.as_array().filter(|b| b.len() <= 3) else {
            return Some("at most 3 buttons");
        };
        for button in buttons {
            let named = button["name"]
                .as_str()
                .is_some_and(|n| !n.is_empty() && n.chars().count() <= 40);
            let acts = button["action_type"].as_u64().is_some_and(|t| t <= 4);
            if !(named && acts) {
                return Some(
                    "a button has a name of at most 40 characters and an action_type 0 to 4",
                );
            }
        }
    }
    None
}

impl Hms {
    fn check_send(&self, app_id: &str, headers: &HashMap<String, String>, body: &Bytes) -> Checked {
        if let Err(refused) = self.check_bearer(app_id, headers) {
            return refused;
        }
        let json_type = headers
            .get("content-type")
            .is_some_and(|t| t.starts_with("application/json"));
        let Some(request) = json_type
            .then(|| serde_json::from_slice::<Value>(body).ok())
            .flatten()
        else {
            return refuse("80100003", "Illegal payload, the body is not JSON");
        };
        if request
            .get("validate_only")
            .is_some_and(|v| !v.is_boolean())
        {
            return refuse("80100001", "validate_only must be a boolean");
        }
        let message = &request["message"];
        if !message.is_object() {
            return refuse("80100003", "Illegal payload, message is required");
        }
        let targets = ["token", "topic", "condition"]
            .iter()
            .filter(|t| message.get(**t).is_some())
            .count();
        if targets != 1 {
            return refuse(
                "80100003",
                "Illegal payload, exactly one of token, topic, condition",
            );
        }
        let Some(tokens) = message["token"]
            .as_array()
            .filter(|t| (1..=1_000).contains(&t.len()))
            .and_then(|t| t.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
        else {
            return refuse("80300010", "the number of tokens must be 1 to 1000");
        };
        let token_bytes: usize = tokens.iter().map(|t| t.len() + 3).sum();
        if body.len().saturating_sub(token_bytes) > 4_096 {
            return refuse("80300008", "the message body size exceeds 4096 bytes");
        }
        if message.get("data").is_some_and(|d| !d.is_string()) {
            return refuse("80100003", "Illegal payload, data must be a string");
        }
        if let Some(android) = message.get("android") {
            if let Some(problem) = android_problem(android) {
                return problem;
            }
        }
        let illegal: Vec<&str> = tokens.iter().copied().filter(|t| !issued(t)).collect();
        let id = self.counter.fetch_add(1, Ordering::Relaxed);
        if request["validate_only"] == Value::Bool(true) && illegal.is_empty() {
            // Checked only: answered as a success, never pushed nor recorded as one.
            return Checked::Direct(200, answer("80000000", "Success", id));
        }
        if illegal.len() == tokens.len() {
            return refuse("80300007", "All the tokens are invalid");
        }
        if !illegal.is_empty() {
            let msg = serde_json::json!({"success": tokens.len() - illegal.len(), "failure": illegal.len(), "illegal_tokens": illegal});
            return Checked::Refuse(200, answer("80100000", &msg.to_string(), id));
        }
        Checked::Valid {
            key: tokens[0].to_owned(),
            ok: answer("80000000", "Success", id),
            ok_headers: Vec::new(),
        }
    }
}

/// What is wrong with `android` (an `AndroidConfig`), as Push Kit would answer it.
fn android_problem(android: &Value) -> Option<Checked> {
    if !android.is_object() {
        return Some(refuse(
            "80100003",
            "Illegal payload, android must be an object",
        ));
    }
    if !matches!(
        android.get("urgency").map(Value::as_str),
        None | Some(Some("HIGH" | "NORMAL"))
    ) {
        return Some(refuse("80100001", "android.urgency must be HIGH or NORMAL"));
    }
    let category = android.get("category");
    let category_ok = category.is_none_or(|c| {
        c.as_str()
            .is_some_and(|c| DOCUMENTED_CATEGORIES.contains(&c))
    });
    if !category_ok {
        return Some(refuse("80100001", "android.category is not a category"));
    }
    if android["urgency"] == "HIGH" && category.is_none() {
        return Some(refuse(
            "80100001",
            "android.urgency HIGH needs the category of its scenario",
        ));
    }
    if android
        .get("ttl")
        .is_some_and(|t| !t.as_str().is_some_and(ttl_ok))
    {
        return Some(refuse("80100004", "android.ttl is not a valid TTL"));
    }
    let collapse_ok = android
        .get("collapse_key")
        .is_none_or(|k| k.as_i64().is_some_and(|k| (-1..=100).contains(&k)));
    if !collapse_ok {
        return Some(refuse("80100001", "android.collapse_key must be -1 to 100"));
    }
    if let Some(notification) = android.get("notification") {
        if !notification.is_object() {
            return Some(refuse(
                "80100003",
                "Illegal payload, notification must be an object",
            ));
        }
        if let Some(problem) = notification_problem(notification) {
            return Some(refuse("80100003", &format!("Illegal payload, {problem}")));
        }
    }
    None
}

impl Behaviour for Hms {
    fn check(
        &self,
        path: &str,
        headers: &HashMap<String, String>,
        body: &Bytes,
        _client_cert: bool,
    ) -> Checked {
        if path == TOKEN_PATH {
            return self.issue_token(headers, body);
        }
        match path
            .strip_prefix("/v1/")
            .and_then(|p| p.strip_suffix("/messages:send"))
        {
            Some(app_id) if !app_id.contains('/') => self.check_send(app_id, headers, body),
            _ => Checked::Refuse(404, String::new()),
        }
    }
}

/// A dispatcher configuration sending to `mock` (trusting `ca_file`) for [`SANDBOX_APP`] with
/// its secret in `secret_file`, on `nats`: short timeouts and retries for tests, no
/// periodic credential check.
pub fn dispatcher_config(
    mock: &MockHms,
    ca_file: &Path,
    secret_file: &Path,
    nats: pipeline::config::NatsConfig,
    telemetry: pipeline::config::TelemetryConfig,
) -> crate::config::Config {
    let mut config = crate::config::Config {
        nats,
        telemetry,
        ..Default::default()
    };
    config.hms.base_url = mock.url();
    config.hms.token_url = mock.token_url();
    config.hms.ca_files = vec![ca_file.to_owned()];
    config.hms.request_timeout_ms = 2_000;
    config.hms.credential_check_secs = 0;
    config.hms.apps = vec![crate::config::AppConfig {
        app_id: SANDBOX_APP.into(),
        client_id: None,
        client_secret_file: Some(secret_file.to_owned()),
        client_secret: None,
    }];
    config.worker.retry_base_ms = 20;
    config.worker.retry_max_ms = 500;
    config
}

/// HMS in the sandbox: a [`MockHms`] serving [`SANDBOX_APP`].
#[derive(Debug)]
pub struct HmsSandbox;

/// The one [`HmsSandbox`].
pub static SANDBOX: HmsSandbox = HmsSandbox;

/// The secret file [`Sandbox::start`] writes into `dir`.
fn secret_file(dir: &Path) -> PathBuf {
    dir.join(format!("hms-{SANDBOX_APP}.secret"))
}

impl Sandbox for HmsSandbox {
    fn name(&self) -> &'static str {
        crate::spec::NAME
    }

    fn sandbox_port(&self) -> u16 {
        8447
    }

    fn start<'a>(
        &'a self,
        ca: &'a TestCa,
        at: &'a Listen,
        dir: &'a Path,
    ) -> BoxFuture<'a, Arc<dyn Running>> {
        Box::pin(async move {
            let mock = MockHms::start_hms_at(ca, &[SANDBOX_APP], at).await;
            mock.write_secret(dir, SANDBOX_APP);
            // Always: a file left by an earlier run would name another CA.
            mock.write_ca(dir, "ca.pem");
            Arc::new(mock) as Arc<dyn Running>
        })
    }

    fn serve(
        &self,
        config: Value,
        admin: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<(), ServeError>> {
        Box::pin(async move {
            let config: crate::config::Config = serde_json::from_value(config)?;
            crate::serve(config, admin, shutdown).await?;
            Ok(())
        })
    }
}

static DEVICES: AtomicU64 = AtomicU64::new(0);

impl Running for MockHms {
    fn name(&self) -> &'static str {
        crate::spec::NAME
    }

    fn url(&self) -> String {
        self.0.url()
    }

    fn dispatcher_config(&self, dir: &Path) -> Value {
        let config = dispatcher_config(
            self,
            &dir.join("ca.pem"),
            &secret_file(dir),
            Default::default(),
            Default::default(),
        );
        pipeline::mock::sandbox::provider_part(&config)
    }

    fn device(&self, person: &str) -> Value {
        serde_json::json!({
            "person_id": person,
            "platform": crate::spec::NAME,
            "app": SANDBOX_APP,
            "token": device_token(DEVICES.fetch_add(1, Ordering::Relaxed)),
        })
    }

    fn wait_beyond(&self, seen: usize) -> BoxFuture<'_, Vec<Recorded>> {
        Box::pin(self.0.wait_beyond(seen))
    }

    fn pushes(&self) -> Vec<Recorded> {
        self.0.requests()
    }

    fn describe(&self, request: &Recorded) -> Option<String> {
        request
            .path
            .strip_prefix("/v1/")?
            .strip_suffix("/messages:send")?;
        let body = Self::body_of(request);
        let android = &body["message"]["android"];
        let field = |name: &str| android[name].as_str().unwrap_or("-").to_owned();
        let data = body["message"]["data"].as_str().unwrap_or("-");
        Some(format!(
            "HMS  {} ← urgency={} category={} ttl={} data={}",
            request.status,
            field("urgency"),
            field("category"),
            field("ttl"),
            pipeline::mock::sandbox::excerpt(data.as_bytes()),
        ))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::provider::Spec as _;

    #[test]
    fn sandbox_tokens_are_tokens_the_spec_takes() {
        let a = device_token(1);
        assert_eq!(a.len(), 130);
        assert_ne!(a, device_token(2));
        crate::spec::SPEC.check_token("token", &a).expect("a token");
        assert!(issued(&a));
        assert!(
            !issued(&format!("{ISSUED_PREFIX}{}", "A".repeat(118))[..129]),
            "too short"
        );
        let well_formed_but_unknown = "A".repeat(130);
        crate::spec::SPEC
            .check_token("token", &well_formed_but_unknown)
            .expect("the spec takes it");
        assert!(
            !issued(&well_formed_but_unknown),
            "Push Kit does not know it"
        );
    }

    #[test]
    fn ttls_are_read_as_push_kit_reads_them() {
        for good in [
            "86400",
            "86400s",
            "0.5s",
            "42.500s",
            "1296000s",
            "1296000.000s",
        ] {
            assert!(ttl_ok(good), "{good}");
        }
        for bad in [
            "",
            "s",
            "1.s",
            "-1s",
            "1.0000000001s",
            "1296001s",
            "1296000.5s",
            "5m",
        ] {
            assert!(!ttl_ok(bad), "{bad}");
        }
    }

    #[test]
    fn notifications_are_checked_as_documented() {
        let ok = serde_json::json!({"title": "Ada", "click_action": {"type": 1, "action": "com.example.ANSWER"},
            "buttons": [{"name": "Answer", "action_type": 1, "intent_type": 1, "intent": "x"}, {"name": "Decline", "action_type": 3}]});
        assert_eq!(notification_problem(&ok), None);
        for bad in [
            serde_json::json!({"click_action": {"type": 1}}),
            serde_json::json!({"click_action": {"type": 2}}),
            serde_json::json!({"click_action": {"type": 9}}),
            serde_json::json!({"buttons": [{"name": "", "action_type": 0}]}),
            serde_json::json!({"buttons": [{"name": "a", "action_type": 5}]}),
            serde_json::json!({"buttons": [{"name": "a", "action_type": 0}, {"name": "b", "action_type": 0}, {"name": "c", "action_type": 0}, {"name": "d", "action_type": 0}]}),
            serde_json::json!({"title": 1}),
        ] {
            assert!(notification_problem(&bad).is_some(), "{bad}");
        }
    }
}
