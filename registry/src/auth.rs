//! Who is calling the device API, and what they may do.
//!
//! A bearer credential becomes a [`Principal`]:
//!
//! 1. a configured **API key** (compared as SHA-256, in constant time) → a service with
//!    scopes (`register`, `read`, `admin`);
//! 2. else, with JWT keys configured and a token shaped like a JWT → the person in `sub`,
//!    taken as it is, after checking signature, `exp`, `nbf`, `iss`, `aud` and the
//!    token's lifetime (`auth.jwt.max_lifetime_secs`);
//! 3. else, with Webex enabled → the person Webex says owns the access token
//!    (`GET /v1/people/me`, see below; Webex unreachable → 503, never allow).
//!
//! Webex look-ups are the one step an outsider can make pushline spend someone else's
//! quota on, so each is bounded:
//!
//! | step | rule | setting |
//! |---|---|---|
//! | answer cached | accepted tokens reused, refused tokens refused again, by the token's SHA-256 | `auth.webex.cache_secs`, `negative_cache_secs`, `cache_entries` |
//! | identical look-ups | one call; every request for the same token waits for it | — |
//! | concurrent look-ups | at most this many; a request that cannot start within the timeout gets 503 | `auth.webex.max_concurrent_lookups`, `timeout_ms` |
//! | the call | no redirects, the answer read to at most [`MAX_WEBEX_ANSWER`] bytes | — |
//!
//! **Failure limit.** Every 401 for a credential that was presented counts against the
//! client's address ([`Client`]) in fixed windows (`[auth.failures]`). A client at the
//! limit gets 429 with `Retry-After` for anything that would fail or need a Webex
//! look-up, until its window ends; valid API keys, valid JWTs and Webex tokens already
//! cached still pass, so a guessing neighbour behind the same address does not lock
//! out working credentials.
//!
//! A person may register, list and delete only their own devices: the id a request
//! names, in canonical form ([`crate::person`]), must be the principal's id. Every
//! refusal is counted in `pushline_auth_refusals_total{service,reason}`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pipeline::config::ConfigError;
use pipeline::metrics::Metrics;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::{OnceCell, Semaphore};

use crate::config::{
    AuthConfig, FailureLimitConfig, JwtAlgorithm, JwtAuthConfig, MIN_HS256_SECRET, Scope,
    WebexAuthConfig,
};
use crate::error::ApiError;
use crate::person;

/// Largest `/v1/people/me` answer read, bytes (a person record is well under 2 KiB).
pub const MAX_WEBEX_ANSWER: usize = 64 * 1024;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An app backend holding an API key.
    Service {
        /// The key's name.
        name: String,
        /// What it may do.
        scopes: Vec<Scope>,
    },
    /// A person, proven by a JWT or a Webex access token.
    Person {
        /// The id their devices are stored under: a Webex person's uuid, a JWT's `sub`
        /// as it is.
        id: String,
    },
    /// Authentication is off (development only).
    Insecure,
}

impl Principal {
    fn has(&self, scope: Scope) -> bool {
        match self {
            Principal::Service { scopes, .. } => {
                scopes.contains(&scope) || scopes.contains(&Scope::Admin)
            }
            Principal::Insecure => true,
            Principal::Person { .. } => false,
        }
    }

    /// The person this is, when it is one.
    pub fn person(&self) -> Option<&str> {
        match self {
            Principal::Person { id } => Some(id),
            _ => None,
        }
    }

    /// Whether `person` (as a request names it) is this person themselves: its canonical
    /// form is exactly the principal's id. The principal's id itself is never rewritten.
    pub fn is(&self, person: &str) -> bool {
        matches!(self, Principal::Person { id }
            if person::canonical(person).is_ok_and(|named| named == id.as_str()))
    }

    /// May register or delete `person`'s devices.
    pub fn may_write(&self, person: &str) -> bool {
        self.has(Scope::Register) || self.is(person)
    }

    /// May list `person`'s devices.
    pub fn may_read(&self, person: &str) -> bool {
        self.has(Scope::Read) || self.is(person)
    }

    /// May delete any token without proving ownership.
    pub fn may_delete_any(&self) -> bool {
        self.has(Scope::Register)
    }

    /// May move a token away from the person holding it (an app backend vouches for the
    /// device; a person only for themselves).
    pub fn may_take_tokens(&self) -> bool {
        self.has(Scope::Register)
    }
}

/// Who a request came from, as the failure limit tells clients apart: the peer's address
/// (an IPv6 address by its /64, which one subscriber usually holds whole), or one shared
/// bucket when the listener did not record the peer (`ConnectInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    /// The peer's address (IPv6: its /64; IPv4-mapped IPv6: the IPv4 address).
    Address(IpAddr),
    /// Not known.
    Unknown,
}

impl Client {
    /// The client of a peer address.
    pub fn of(peer: Option<SocketAddr>) -> Client {
        match peer.map(|peer| peer.ip()) {
            None => Client::Unknown,
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => Client::Address(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    Client::Address(IpAddr::V6(Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
            Some(ip) => Client::Address(ip),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0);
        Ok(Client::of(peer))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

struct KeyEntry {
    name: String,
    hash: [u8; 32],
    scopes: Vec<Scope>,
}

/// Why a credential was refused: the metric reason and the answer.
struct Refusal {
    reason: &'static str,
    error: ApiError,
}

impl Refusal {
    fn new(reason: &'static str, error: ApiError) -> Self {
        Refusal { reason, error }
    }

    /// A credential was presented and is not valid: what the failure limit counts. A
    /// missing credential is not a guess, and a Webex outage is not the client's failure.
    fn is_failure(&self) -> bool {
        matches!(self.error, ApiError::Unauthorized(_)) && self.reason != "missing_credentials"
    }
}

/// Turns a request's bearer into a [`Principal`].
pub struct Authenticator {
    keys: Vec<KeyEntry>,
    jwt: Option<JwtVerifier>,
    webex: Option<WebexVerifier>,
    failures: FailureLimit,
    insecure: bool,
    metrics: Metrics,
    service: &'static str,
}

/// Checks the JWT keys as the authenticator will load them (reads key files): an HS256
/// secret shorter than [`MIN_HS256_SECRET`] bytes or an unreadable key names its setting.
pub fn check_jwt_keys(config: &JwtAuthConfig) -> Result<(), ConfigError> {
    if !config.keys.is_empty() {
        JwtVerifier::new(config)?;
    }
    Ok(())
}

impl Authenticator {
    /// From validated configuration (reads key files).
    pub fn new(config: &AuthConfig, metrics: Metrics) -> Result<Self, ConfigError> {
        let keys = config
            .api_keys
            .iter()
            .filter_map(|k| {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(k.sha256.to_ascii_lowercase(), &mut hash).ok()?;
                Some(KeyEntry {
                    name: k.name.clone(),
                    hash,
                    scopes: k.scopes.clone(),
                })
            })
            .collect();
        let jwt = (!config.jwt.keys.is_empty())
            .then(|| JwtVerifier::new(&config.jwt))
            .transpose()?;
        let webex = config
            .webex
            .enabled
            .then(|| WebexVerifier::new(&config.webex))
            .transpose()?;
        Ok(Authenticator {
            keys,
            jwt,
            webex,
            failures: FailureLimit::new(&config.failures),
            insecure: config.insecure_no_auth,
            metrics,
            service: crate::SERVICE,
        })
    }

    /// The same authenticator counting its refusals for `service` (the gateway
    /// authenticates apps with the registry's rules).
    pub fn for_service(mut self, service: &'static str) -> Self {
        self.service = service;
        self
    }

    /// Counts a refusal and returns the error for it.
    pub fn refuse(&self, reason: &'static str, error: ApiError) -> ApiError {
        self.metrics
            .auth_refusals
            .with_label_values(&[self.service, reason])
            .inc();
        error
    }

    /// The caller of a request from `client`, or 401 / 429 / 503.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        client: Client,
    ) -> Result<Principal, ApiError> {
        if self.insecure {
            return Ok(Principal::Insecure);
        }
        let now = Instant::now();
        let blocked = self.failures.blocked(client, now);
        let refusal = match self.identify(headers, blocked.is_none()).await {
            Ok(principal) => return Ok(principal),
            Err(refusal) => refusal,
        };
        match blocked {
            Some(wait) if refusal.is_failure() || refusal.reason == BLOCKED => {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Err(self.refuse("too_many_failures", ApiError::TooManyFailures(secs)))
            }
            _ => {
                if refusal.is_failure() {
                    self.failures.record(client, now);
                }
                Err(self.refuse(refusal.reason, refusal.error))
            }
        }
    }

    /// Who the bearer is; Webex is asked only when `may_look_up`.
    async fn identify(&self, headers: &HeaderMap, may_look_up: bool) -> Result<Principal, Refusal> {
        let Some(bearer) = pipeline::admin::bearer(headers) else {
            return Err(Refusal::new(
                "missing_credentials",
                ApiError::Unauthorized("a bearer credential is required"),
            ));
        };
        let hash: [u8; 32] = Sha256::digest(bearer.as_bytes()).into();
        let mut service = None;
        for key in &self.keys {
            if bool::from(key.hash.ct_eq(&hash)) {
                service = Some(Principal::Service {
                    name: key.name.clone(),
                    scopes: key.scopes.clone(),
                });
            }
        }
        if let Some(service) = service {
            return Ok(service);
        }
        if let Some(jwt) = &self.jwt {
            if bearer.split('.').count() == 3 {
                return jwt
                    .verify(bearer, pipeline::contract::now_ms() / 1000)
                    .map(|id| Principal::Person { id })
                    .map_err(|reason| {
                        Refusal::new(reason, ApiError::Unauthorized("the token is not valid"))
                    });
            }
        }
        if let Some(webex) = &self.webex {
            return match webex.person(bearer, &hash, may_look_up).await {
                Ok(id) => Ok(Principal::Person { id }),
                Err(WebexError::Rejected) => Err(Refusal::new(
                    "webex_rejected",
                    ApiError::Unauthorized("Webex did not accept the token"),
                )),
                Err(WebexError::Blocked) => Err(Refusal::new(
                    BLOCKED,
                    ApiError::Unauthorized("Webex was not asked"),
                )),
                Err(WebexError::Busy) => {
                    tracing::warn!("Webex look-ups at their limit; refusing");
                    Err(Refusal::new("webex_busy", ApiError::Unavailable))
                }
                Err(WebexError::Unavailable(problem)) => {
                    tracing::warn!(%problem, "Webex people API unavailable; refusing");
                    Err(Refusal::new("webex_unavailable", ApiError::Unavailable))
                }
            };
        }
        Err(Refusal::new(
            "unknown_credentials",
            ApiError::Unauthorized("unknown credentials"),
        ))
    }
}

/// The refusal of a Webex token that was not looked up because its client is at the
/// failure limit (always answered as `too_many_failures`).
const BLOCKED: &str = "too_many_failures";

/// Failed authentications per client, in fixed windows.
struct FailureLimit {
    limit: u32,
    window: Duration,
    max_clients: usize,
    clients: Mutex<HashMap<Client, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

impl FailureLimit {
    fn new(config: &FailureLimitConfig) -> Self {
        FailureLimit {
            limit: config.limit,
            window: Duration::from_secs(config.window_secs),
            max_clients: config.max_clients,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// How long `client` must wait, when it is at the limit.
    fn blocked(&self, client: Client, now: Instant) -> Option<Duration> {
        if self.limit == 0 {
            return None;
        }
        let clients = lock(&self.clients);
        let window = clients.get(&client)?;
        let ends = window.started + self.window;
        (now < ends && window.failures >= self.limit).then(|| ends - now)
    }

    /// Counts one failure of `client`.
    fn record(&self, client: Client, now: Instant) {
        if self.limit == 0 {
            return;
        }
        let mut clients = lock(&self.clients);
        if !clients.contains_key(&client) && clients.len() >= self.max_clients {
            let window = self.window;
            clients.retain(|_, w| now < w.started + window);
            if clients.len() >= self.max_clients {
                let oldest = clients
                    .iter()
                    .min_by_key(|(_, w)| w.started)
                    .map(|(c, _)| *c);
                if let Some(oldest) = oldest {
                    clients.remove(&oldest);
                }
            }
        }
        let window = clients.entry(client).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now >= window.started + self.window {
            *window = Window {
                started: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
    }
}

/// A map from token hashes whose entries expire `ttl` after insertion and which never
/// holds more than `capacity`: when full it drops the expired entries, then the one
/// closest to expiring.
struct TtlCache<V> {
    ttl: Duration,
    capacity: usize,
    entries: HashMap<[u8; 32], (V, Instant)>,
}

impl<V: Clone> TtlCache<V> {
    fn new(ttl: Duration, capacity: usize) -> Self {
        TtlCache {
            ttl,
            capacity,
            entries: HashMap::new(),
        }
    }

    fn get(&self, key: &[u8; 32], now: Instant) -> Option<V> {
        self.entries
            .get(key)
            .filter(|(_, until)| now < *until)
            .map(|(value, _)| value.clone())
    }

    fn insert(&mut self, key: [u8; 32], value: V, now: Instant) {
        if self.ttl.is_zero() || self.capacity == 0 {
            return;
        }
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            self.entries.retain(|_, (_, until)| *until > now);
            if self.entries.len() >= self.capacity {
                let soonest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(key, _)| *key);
                if let Some(soonest) = soonest {
                    self.entries.remove(&soonest);
                }
            }
        }
        self.entries.insert(key, (value, now + self.ttl));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// How long a token claims to live, seconds: from `iat` (or now, when there is none or
/// it lies in the future) to `exp`.
fn lifetime_secs(exp: u64, iat: Option<u64>, now: u64) -> u64 {
    exp.saturating_sub(iat.map_or(now, |iat| iat.min(now)))
}

struct JwtVerifier {
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
    issuer: String,
    audience: String,
    leeway: u64,
    max_lifetime: u64,
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    exp: f64,
    #[serde(default)]
    iat: Option<f64>,
}

impl JwtVerifier {
    fn new(config: &JwtAuthConfig) -> Result<Self, ConfigError> {
        let mut keys = Vec::new();
        for (i, key) in config.keys.iter().enumerate() {
            let setting = format!("auth.jwt.keys[{i}]");
            let read = |path: &std::path::Path| {
                std::fs::read(path).map_err(|source| ConfigError::File {
                    setting: setting.clone(),
                    path: path.to_owned(),
                    source,
                })
            };
            let bad = |e: jsonwebtoken::errors::Error| {
                ConfigError::invalid(setting.clone(), format!("unusable key: {e}"))
            };
            let (algorithm, decoding) = match key.algorithm {
                JwtAlgorithm::HS256 => {
                    let (secret, secret_setting) = match (&key.secret, &key.secret_file) {
                        (Some(secret), _) => (
                            secret.expose().as_bytes().to_vec(),
                            format!("{setting}.secret"),
                        ),
                        (None, Some(path)) => (
                            pipeline::config::read_secret_file(&setting, path)?
                                .expose()
                                .as_bytes()
                                .to_vec(),
                            format!("{setting}.secret_file"),
                        ),
                        (None, None) => {
                            return Err(ConfigError::invalid(setting, "HS256 needs a secret"));
                        }
                    };
                    if secret.len() < MIN_HS256_SECRET {
                        return Err(ConfigError::invalid(
                            secret_setting,
                            format!(
                                "an HS256 secret must be at least {MIN_HS256_SECRET} bytes (it has {})",
                                secret.len()
                            ),
                        ));
                    }
                    (Algorithm::HS256, DecodingKey::from_secret(&secret))
                }
                JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
                    let Some(path) = &key.public_key_file else {
                        return Err(ConfigError::invalid(setting, "needs public_key_file"));
                    };
                    let pem = read(path)?;
                    if key.algorithm == JwtAlgorithm::RS256 {
                        (
                            Algorithm::RS256,
                            DecodingKey::from_rsa_pem(&pem).map_err(bad)?,
                        )
                    } else {
                        (
                            Algorithm::ES256,
                            DecodingKey::from_ec_pem(&pem).map_err(bad)?,
                        )
                    }
                }
            };
            keys.push((key.kid.clone(), algorithm, decoding));
        }
        Ok(JwtVerifier {
            keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway_secs,
            max_lifetime: config.max_lifetime_secs,
        })
    }

    /// The person in a valid token's `sub` (verbatim), or the refusal reason; `now` in
    /// seconds since the epoch.
    fn verify(&self, token: &str, now: u64) -> Result<String, &'static str> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "invalid_jwt")?;
        let candidates = self.keys.iter().filter(|(kid, alg, _)| {
            *alg == header.alg
                && (kid.is_none()
                    || header.kid.is_none()
                    || kid.as_deref() == header.kid.as_deref())
        });
        let mut reason = "invalid_jwt";
        for (_, algorithm, key) in candidates {
            let mut validation = Validation::new(*algorithm);
            validation.set_issuer(&[&self.issuer]);
            validation.set_audience(&[&self.audience]);
            validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
            validation.validate_nbf = true;
            validation.leeway = self.leeway;
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => {
                    let claims = data.claims;
                    if pipeline::contract::check_person_id("sub", &claims.sub).is_err() {
                        return Err("invalid_jwt");
                    }
                    let lifetime =
                        lifetime_secs(claims.exp as u64, claims.iat.map(|iat| iat as u64), now);
                    if lifetime > self.max_lifetime {
                        return Err("jwt_lifetime_too_long");
                    }
                    return Ok(claims.sub);
                }
                Err(error) => {
                    reason = match error.kind() {
                        ErrorKind::ExpiredSignature => "expired_jwt",
                        ErrorKind::ImmatureSignature => "jwt_not_yet_valid",
                        ErrorKind::InvalidAudience => "wrong_audience",
                        ErrorKind::InvalidIssuer => "wrong_issuer",
                        _ => reason,
                    };
                    if reason != "invalid_jwt" {
                        return Err(reason);
                    }
                }
            }
        }
        Err(reason)
    }
}

#[derive(Debug, Clone)]
enum WebexError {
    /// Webex said the token is not valid (401 / 403).
    Rejected,
    /// Not asked: the client is at the failure limit.
    Blocked,
    /// No look-up slot within the timeout.
    Busy,
    /// Webex could not answer usefully.
    Unavailable(String),
}

/// One look-up's answer, shared by every request waiting for it.
type Answer = Result<String, WebexError>;

/// The answers Webex gave, by token hash.
struct Answers {
    accepted: TtlCache<String>,
    refused: TtlCache<()>,
}

struct WebexVerifier {
    http: reqwest::Client,
    url: String,
    timeout: Duration,
    answers: Mutex<Answers>,
    lookups: Semaphore,
    /// Look-ups in flight, by token hash. Weak: a look-up every waiter gave up on
    /// (cancelled requests) leaves a dead entry that the next join replaces or a sweep
    /// removes.
    flights: Mutex<HashMap<[u8; 32], Weak<OnceCell<Answer>>>>,
}

/// Dead in-flight entries are swept once this many are listed.
const FLIGHTS_SWEEP: usize = 1024;

impl WebexVerifier {
    fn new(config: &WebexAuthConfig) -> Result<Self, ConfigError> {
        crate::config::check_base_url("auth.webex.base_url", &config.base_url)?;
        let timeout = Duration::from_millis(config.timeout_ms);
        // The shared builder follows no redirects (`provider_http::no_redirects`): a
        // 3xx from the people API is an unavailable answer, never a second request.
        let options = pipeline::provider_http::ClientOptions {
            ca_files: config.ca_files.clone(),
            request_timeout: timeout,
            ca_setting: "auth.webex.ca_files",
        };
        Ok(WebexVerifier {
            http: pipeline::provider_http::negotiating_client(&options)?,
            url: format!("{}/v1/people/me", config.base_url.trim_end_matches('/')),
            timeout,
            answers: Mutex::new(Answers {
                accepted: TtlCache::new(
                    Duration::from_secs(config.cache_secs),
                    config.cache_entries,
                ),
                refused: TtlCache::new(
                    Duration::from_secs(config.negative_cache_secs),
                    config.cache_entries,
                ),
            }),
            lookups: Semaphore::new(config.max_concurrent_lookups),
            flights: Mutex::new(HashMap::new()),
        })
    }

    /// The person owning `token` (SHA-256 `hash`): cached, or asked of Webex when
    /// `may_look_up`, once for every concurrent request with the same token.
    async fn person(&self, token: &str, hash: &[u8; 32], may_look_up: bool) -> Answer {
        if let Some(answer) = self.cached(hash, Instant::now()) {
            return answer;
        }
        if !may_look_up {
            return Err(WebexError::Blocked);
        }
        let flight = self.join(hash);
        // If the request running the look-up is cancelled, another waiter runs it.
        let answer = flight
            .get_or_init(|| self.look_up(token, hash))
            .await
            .clone();
        let mut flights = lock(&self.flights);
        if flights
            .get(hash)
            .is_some_and(|listed| std::ptr::eq(listed.as_ptr(), Arc::as_ptr(&flight)))
        {
            flights.remove(hash);
        }
        answer
    }

    fn cached(&self, hash: &[u8; 32], now: Instant) -> Option<Answer> {
        let answers = lock(&self.answers);
        if let Some(id) = answers.accepted.get(hash, now) {
            return Some(Ok(id));
        }
        answers
            .refused
            .get(hash, now)
            .map(|()| Err(WebexError::Rejected))
    }

    /// The look-up in flight for `hash`, or a new one.
    fn join(&self, hash: &[u8; 32]) -> Arc<OnceCell<Answer>> {
        let mut flights = lock(&self.flights);
        if let Some(flight) = flights.get(hash).and_then(Weak::upgrade) {
            return flight;
        }
        if flights.len() >= FLIGHTS_SWEEP {
            flights.retain(|_, flight| flight.strong_count() > 0);
        }
        let flight = Arc::new(OnceCell::new());
        flights.insert(*hash, Arc::downgrade(&flight));
        flight
    }

    async fn look_up(&self, token: &str, hash: &[u8; 32]) -> Answer {
        // A look-up that finished just before this one was joined has answered already.
        if let Some(answer) = self.cached(hash, Instant::now()) {
            return answer;
        }
        let Ok(Ok(_permit)) = tokio::time::timeout(self.timeout, self.lookups.acquire()).await
        else {
            return Err(WebexError::Busy);
        };
        let answer = self.ask(token).await;
        let now = Instant::now();
        let mut answers = lock(&self.answers);
        match &answer {
            Ok(id) => answers.accepted.insert(*hash, id.clone(), now),
            Err(WebexError::Rejected) => answers.refused.insert(*hash, (), now),
            Err(_) => {}
        }
        answer
    }

    async fn ask(&self, token: &str) -> Answer {
        let response = self
            .http
            .get(&self.url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| WebexError::Unavailable(e.without_url().to_string()))?;
        match response.status().as_u16() {
            200 => {}
            401 | 403 => return Err(WebexError::Rejected),
            status => return Err(WebexError::Unavailable(format!("status {status}"))),
        }
        let body = pipeline::provider_http::read_bounded(response, MAX_WEBEX_ANSWER)
            .await
            .map_err(|error| {
                WebexError::Unavailable(match error {
                    pipeline::provider_http::BodyError::Transfer(e) => {
                        format!("unreadable answer: {}", e.without_url())
                    }
                    too_long => too_long.to_string(),
                })
            })?;
        #[derive(serde::Deserialize)]
        struct Me {
            id: String,
        }
        let me: Me = serde_json::from_slice(&body)
            .map_err(|e| WebexError::Unavailable(format!("unreadable answer: {e}")))?;
        person::parse("id", &me.id)
            .map_err(|_| WebexError::Unavailable("the answer's id is not a person's".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(id: &str) -> Principal {
        Principal::Person { id: id.into() }
    }

    #[test]
    fn people_may_touch_only_their_own_devices() {
        let alice = person("alice");
        assert!(alice.may_write("alice") && alice.may_read("alice"));
        assert!(!alice.may_write("bob") && !alice.may_read("bob"));
        assert!(!alice.may_delete_any() && !alice.may_take_tokens());
    }

    #[test]
    fn a_principals_own_id_is_never_rewritten() {
        use base64::Engine as _;
        let crafted =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("ciscospark://us/PEOPLE/ALICE");
        let jwt_person = person(&crafted);
        assert!(!jwt_person.is("alice") && !jwt_person.is("ALICE"));
        assert!(!jwt_person.is(&crafted), "the named id is not a person's");
        let uuid = "0b7a9f3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
        let webex_id = base64::engine::general_purpose::STANDARD_NO_PAD
            .encode(format!("ciscospark://us/PEOPLE/{uuid}"));
        assert!(person(uuid).is(&webex_id) && person(uuid).is(uuid));
        assert!(
            !person(&webex_id).is(uuid),
            "a principal's id is not decoded"
        );
    }

    #[test]
    fn scopes_decide_for_services() {
        let reader = Principal::Service {
            name: "r".into(),
            scopes: vec![Scope::Read],
        };
        assert!(
            reader.may_read("anyone") && !reader.may_write("anyone") && !reader.may_delete_any()
        );
        let writer = Principal::Service {
            name: "w".into(),
            scopes: vec![Scope::Register],
        };
        assert!(writer.may_write("anyone") && !writer.may_read("anyone"));
        assert!(writer.may_take_tokens() && !reader.may_take_tokens());
        let admin = Principal::Service {
            name: "a".into(),
            scopes: vec![Scope::Admin],
        };
        assert!(admin.may_write("x") && admin.may_read("x") && admin.may_delete_any());
    }

    #[test]
    fn cached_answers_expire_and_the_cache_never_outgrows_its_bound() {
        let start = Instant::now();
        let ttl = Duration::from_secs(60);
        let mut cache = TtlCache::new(ttl, 2);
        cache.insert([1; 32], "a", start);
        assert_eq!(cache.get(&[1; 32], start + ttl / 2), Some("a"));
        assert_eq!(cache.get(&[1; 32], start + ttl), None, "expired");
        cache.insert([2; 32], "b", start + Duration::from_secs(1));
        cache.insert([3; 32], "c", start + Duration::from_secs(2));
        assert_eq!(cache.len(), 2, "the soonest to expire made room");
        assert_eq!(cache.get(&[1; 32], start), None);
        let later = start + ttl + Duration::from_secs(1);
        cache.insert([4; 32], "d", later);
        assert_eq!(cache.len(), 2, "the expired one went first");
        assert_eq!(cache.get(&[3; 32], later), Some("c"));
        assert_eq!(cache.get(&[4; 32], later), Some("d"));
        let mut off = TtlCache::new(Duration::ZERO, 2);
        off.insert([1; 32], (), start);
        assert_eq!(off.len(), 0, "a zero TTL caches nothing");
    }

    #[test]
    fn a_client_at_the_failure_limit_waits_for_its_window_to_end() {
        let limit = FailureLimit::new(&FailureLimitConfig {
            limit: 2,
            window_secs: 60,
            max_clients: 2,
        });
        let start = Instant::now();
        let a = Client::of(Some("192.0.2.1:4000".parse().expect("addr")));
        let b = Client::of(Some("192.0.2.2:4000".parse().expect("addr")));
        limit.record(a, start);
        assert_eq!(limit.blocked(a, start), None);
        limit.record(a, start + Duration::from_secs(10));
        assert_eq!(
            limit.blocked(a, start + Duration::from_secs(15)),
            Some(Duration::from_secs(45))
        );
        assert_eq!(limit.blocked(b, start), None, "per client");
        assert_eq!(limit.blocked(a, start + Duration::from_secs(60)), None);
        limit.record(a, start + Duration::from_secs(61));
        assert_eq!(
            limit.blocked(a, start + Duration::from_secs(61)),
            None,
            "a new window"
        );
        let off = FailureLimit::new(&FailureLimitConfig {
            limit: 0,
            ..FailureLimitConfig::default()
        });
        off.record(a, start);
        assert_eq!(off.blocked(a, start), None);
    }

    #[test]
    fn clients_are_told_apart_by_address_and_ipv6_by_its_64() {
        let of = |addr: &str| Client::of(Some(addr.parse().expect("addr")));
        assert_eq!(
            of("[2001:db8:1:2:aaaa::1]:1"),
            of("[2001:db8:1:2:bbbb::2]:2")
        );
        assert_ne!(of("[2001:db8:1:2::1]:1"), of("[2001:db8:1:3::1]:1"));
        assert_eq!(of("[::ffff:192.0.2.1]:1"), of("192.0.2.1:9"));
        assert_eq!(Client::of(None), Client::Unknown);
    }

    #[test]
    fn a_token_lives_from_iat_or_from_now() {
        assert_eq!(lifetime_secs(1_000 + 3_600, Some(1_000), 2_000), 3_600);
        assert_eq!(lifetime_secs(1_000 + 3_600, None, 2_000), 2_600);
        assert_eq!(
            lifetime_secs(10_000_000, Some(9_999_000), 2_000),
            10_000_000 - 2_000,
            "an iat in the future does not shorten the lifetime"
        );
        assert_eq!(lifetime_secs(1_000, Some(2_000), 3_000), 0);
    }
}
