//! The device HTTP API (documented in `docs/registry-api.md`).
//!
//! - `PUT /v1/devices/{token}`: register or refresh (idempotent): 201 new, 200 refreshed.
//! - `POST /v1/devices`: the same, the token in the body (`token`, or a Web Push
//!   `subscription` whose endpoint is the token).
//! - `DELETE /v1/devices/{token}`: 204, or 404 when not registered.
//! - `GET /v1/persons/{personId}/devices`: the person's live devices, each saying whether
//!   the person is the device's active user.
//! - `PUT /v1/persons/{personId}/devices/{deviceId}/active[?app=]`: switch the device's
//!   active user to the person (who must hold it).
//! - `DELETE /v1/persons/{personId}/devices`: removes them all.
//! - `POST /register`, `DELETE /register/{device_token}`: the Webex sample push server's
//!   API, which mobile samples already call.

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router, middleware};
use pipeline::contract::{Class, Environment, now_ms};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::auth::{Client, Principal};
use crate::config::DeviceLimit;
use crate::error::ApiError;
use crate::store::{
    ActivateError, Channel, Device, DeviceAttrs, Registered, Rules, SealedKey, token_device_id,
};
use crate::{AppState, SERVICE, validate};

/// The public router; browsers of `cors_origins` may call it from their pages.
pub fn router(state: AppState, cors_origins: &[String]) -> Router {
    let metrics = state.metrics.clone();
    let router = Router::new()
        .route("/v1/devices", post(post_device))
        .route("/v1/devices/{token}", put(put_device).delete(delete_device))
        .route(
            "/v1/persons/{person_id}/devices",
            get(list_devices).delete(delete_person),
        )
        .route(
            "/v1/persons/{person_id}/devices/{device_id}/active",
            put(activate),
        )
        .route("/register", post(sample_register))
        .route("/register/{token}", delete(delete_device))
        .merge(crate::inbox_api::routes())
        .layer(middleware::from_fn(pipeline::admin::json_errors))
        .layer(middleware::from_fn_with_state(
            (metrics, SERVICE),
            pipeline::admin::track_http,
        ))
        .with_state(state);
    match cors(cors_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// The CORS answer for `origins` (exact origins; none: no CORS headers at all, so
/// browsers refuse cross-origin calls).
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|origin| HeaderValue::from_str(origin).ok())
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// A JSON body extractor whose every refusal is an [`ApiError`] with a JSON body.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        use pipeline::json::BodyRefusal;
        let (parts, body) = request.into_parts();
        let bytes =
            pipeline::json::read_body(&parts.headers, body, state.body_limit, state.max_json_depth)
                .await
                .map_err(|refusal| match refusal {
                    BodyRefusal::NotJson => ApiError::UnsupportedMediaType,
                    BodyRefusal::TooLarge => ApiError::PayloadTooLarge,
                    too_deep @ BodyRefusal::TooDeep(_) => ApiError::Invalid(too_deep.to_string()),
                })?;
        let value = pipeline::json::parse(&bytes).map_err(ApiError::Invalid)?;
        Ok(JsonBody(value))
    }
}

/// `PUT /v1/devices/{token}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutDevice {
    /// Owner.
    pub person_id: String,
    /// The provider (`apns`, `fcm`, …).
    pub platform: String,
    /// The token (`POST /v1/devices` only; `PUT` names it in the path).
    #[serde(default)]
    pub token: Option<String>,
    /// A push subscription as the browser's `PushSubscription.toJSON()` gives it: its
    /// endpoint is the token, its keys are stored with it.
    #[serde(default)]
    pub subscription: Option<Subscription>,
    /// `voip` or `alert`; default by provider (`voip` for APNs, `alert` for the others).
    #[serde(default)]
    pub channel: Option<Channel>,
    /// The app (bundle id, project id, web app); default from `devices.default_apps`.
    #[serde(default)]
    pub app: Option<String>,
    /// Default from `devices.default_environment`.
    #[serde(default)]
    pub environment: Option<Environment>,
    /// The device (phone or app install) this token belongs to; tokens sent with the same
    /// id are one device. Default: the token is a device of its own.
    #[serde(default)]
    pub device_id: Option<String>,
    /// The device's 256-bit payload-encryption key, base64. Stored sealed, never returned.
    #[serde(default)]
    pub e2e_key: Option<pipeline::config::Secret>,
    /// The key's algorithm: `A256GCM` (the default and the only one).
    #[serde(default)]
    pub e2e_algorithm: Option<String>,
    /// The key id the device will see in every JWE header; default derived from the key.
    #[serde(default)]
    pub e2e_kid: Option<String>,
    /// The registering person becomes the device's active user (signing in); `false`
    /// refreshes the registration without switching (a background refresh, or an app
    /// backend refreshing every person of a shared device). Default `true`.
    #[serde(default)]
    pub activate: Option<bool>,
}

/// A push subscription (`PushSubscription.toJSON()`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// The push service URL: the device's token.
    pub endpoint: String,
    /// When the browser says the subscription ends (accepted, not used: the push service
    /// answers 404/410 for an ended one, which prunes it).
    #[serde(default, rename = "expirationTime")]
    pub expiration_time: Option<serde_json::Value>,
    /// The subscription's keys, checked by the provider.
    pub keys: Box<RawValue>,
}

/// A registration as the API shows it: the key appears only as its algorithm and id.
#[derive(Debug, Serialize)]
pub struct DeviceView {
    /// The device the token belongs to.
    pub device_id: String,
    /// The provider token.
    pub token: String,
    /// The owner (canonical).
    pub person_id: String,
    /// Provider.
    pub platform: String,
    /// Channel.
    pub channel: Channel,
    /// App.
    pub app: String,
    /// Provider environment.
    pub environment: Environment,
    /// The registered payload-encryption key, by algorithm and key id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e2e: Option<KeyView>,
    /// First registration, ms.
    pub created_at_ms: u64,
    /// Last registration, ms.
    pub updated_at_ms: u64,
    /// This person is the device's active user (in-app messages reach only them).
    pub active: bool,
    /// Since when, ms (only when active).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_since_ms: Option<u64>,
}

/// A key as the API shows it.
#[derive(Debug, Serialize)]
pub struct KeyView {
    /// `A256GCM`.
    pub algorithm: String,
    /// The key id.
    pub kid: String,
}

impl DeviceView {
    /// `device` as shown to its person, who is its active user since `active_since_ms`
    /// when that is given.
    fn new(device: Device, active_since_ms: Option<u64>) -> Self {
        DeviceView {
            active: active_since_ms.is_some(),
            active_since_ms,
            device_id: device.device_id(),
            e2e: device.attrs.e2e.map(|key| KeyView {
                algorithm: key.alg,
                kid: key.kid,
            }),
            token: device.token,
            person_id: device.person_id,
            platform: device.attrs.platform,
            channel: device.attrs.channel,
            app: device.attrs.app,
            environment: device.attrs.environment,
            created_at_ms: device.created_at_ms,
            updated_at_ms: device.updated_at_ms,
        }
    }
}

/// `person`'s live `devices` as the API shows them, each saying whether the person is its
/// active user.
async fn device_views(
    state: &AppState,
    person: &str,
    devices: Vec<Device>,
    now: u64,
) -> Result<Vec<DeviceView>, ApiError> {
    let actives = state.store.active_devices(person, &devices, now).await?;
    Ok(devices
        .into_iter()
        .map(|device| {
            let since = actives
                .get(&(device.attrs.app.clone(), device.device_id()))
                .copied();
            DeviceView::new(device, since)
        })
        .collect())
}

/// The app of `person`'s device `device_id` a switch is about: `named` when given (the
/// store checks the person holds it), else the one app the person holds that device id
/// in. `devices` are the person's live devices.
fn switch_app(
    devices: &[Device],
    device_id: &str,
    named: Option<&str>,
) -> Result<String, ApiError> {
    if let Some(app) = named {
        return Ok(app.to_owned());
    }
    let mut apps: Vec<&str> = devices
        .iter()
        .filter(|d| d.device_id() == device_id)
        .map(|d| d.attrs.app.as_str())
        .collect();
    apps.sort_unstable();
    apps.dedup();
    match apps.as_slice() {
        [] => Err(ApiError::NotFound(NOT_HELD)),
        [app] => Ok((*app).to_owned()),
        several => Err(ApiError::Invalid(format!(
            "`deviceId` is registered in {} apps; name one with ?app=",
            several.len()
        ))),
    }
}

/// The answer to a switch the person cannot make: they hold no live registration on the
/// device (whether someone else does is not told).
const NOT_HELD: &str = "device is not registered for this person";

/// A device key as registered: validated, not yet sealed.
struct NewKey {
    key: pipeline::jwe::ContentKey,
    kid: String,
}

impl NewKey {
    fn read(
        key: Option<pipeline::config::Secret>,
        algorithm: Option<String>,
        kid: Option<String>,
    ) -> Result<Option<NewKey>, ApiError> {
        let Some(key) = key else {
            if algorithm.is_some() || kid.is_some() {
                return Err(ApiError::Invalid(
                    "`e2e_algorithm` and `e2e_kid` need `e2e_key`".into(),
                ));
            }
            return Ok(None);
        };
        if let Some(alg) = algorithm.filter(|a| a != pipeline::jwe::ALGORITHM) {
            return Err(ApiError::Invalid(format!(
                "`e2e_algorithm` `{}` is not supported; use A256GCM",
                alg.chars().take(32).collect::<String>()
            )));
        }
        let key = pipeline::jwe::ContentKey::from_base64(key.expose())
            .map_err(|why| ApiError::Invalid(format!("`e2e_key` {why}")))?;
        let kid = match kid {
            Some(kid) if pipeline::jwe::valid_kid(&kid) => kid,
            Some(_) => {
                return Err(ApiError::Invalid(format!(
                    "`e2e_kid` must be 1 to {} characters of A-Z a-z 0-9 . _ - :",
                    pipeline::jwe::MAX_KID
                )));
            }
            None => key.default_kid(),
        };
        Ok(Some(NewKey { key, kid }))
    }
}

fn operation(state: &AppState, op: &str, outcome: &str) {
    state
        .metrics
        .device_operations
        .with_label_values(&[op, outcome])
        .inc();
}

fn finish<T: IntoResponse>(state: &AppState, op: &str, result: Result<T, ApiError>) -> Response {
    match result {
        Ok(ok) => {
            operation(state, op, "ok");
            ok.into_response()
        }
        Err(error) => {
            operation(state, op, error.code());
            error.into_response()
        }
    }
}

/// One registration to validate and store.
struct Registration<'a> {
    token: &'a str,
    token_field: &'a str,
    person: &'a str,
    platform: &'a str,
    keys: Option<&'a RawValue>,
    channel: Option<Channel>,
    app: Option<String>,
    environment: Option<Environment>,
    device_id: String,
    e2e: Option<NewKey>,
    /// The caller may move the token away from another person (a service key).
    may_take: bool,
    /// The device's active user stays as it is.
    keep_active: bool,
}

/// What a registration stores, decided from the request, the provider and the
/// configuration before anything is stored (the token and its endpoint already checked):
/// its keys, person, app, channel and environment checked and defaulted. `e2e` is left
/// for the caller to seal; a key is refused when `can_seal` is false. Messages name the
/// field at fault.
fn plan_registration(
    spec: &dyn pipeline::provider::Spec,
    devices: &crate::config::DevicesConfig,
    can_seal: bool,
    r: &Registration<'_>,
) -> Result<DeviceAttrs, String> {
    let platform = r.platform;
    let keys = spec
        .check_keys("subscription.keys", r.keys)?
        .map(|keys| serde_json::from_str(keys.get()))
        .transpose()
        .map_err(|e| format!("`subscription.keys`: {e}"))?;
    validate::person_id("person_id", r.person)?;
    let app = r
        .app
        .clone()
        .unwrap_or_else(|| devices.default_app(platform).to_owned());
    if app.is_empty() {
        return Err(format!(
            "`app` is required (no devices.default_apps.{platform} is configured)"
        ));
    }
    validate::app("app", &app)?;
    if r.e2e.is_some() && !can_seal {
        return Err(
            "`e2e_key` is not accepted: this registry has no devices.key_encryption_keys to store it under".into(),
        );
    }
    let channel = r.channel.unwrap_or_else(|| spec.default_channel());
    if ![Class::Call, Class::Alert, Class::Background]
        .into_iter()
        .any(|class| spec.wants(class, channel))
    {
        return Err(format!(
            "`channel` {} is not a channel of {platform} devices",
            channel.as_str()
        ));
    }
    // The configured default where the provider has it (APNs' sandbox), else the
    // provider's own first environment; one named explicitly must exist.
    let environment = r.environment.unwrap_or_else(|| {
        let default = devices.default_environment;
        let known = spec.environments();
        if known.contains(&default) {
            default
        } else {
            known.first().copied().unwrap_or(default)
        }
    });
    if !spec.environments().contains(&environment) {
        return Err(format!(
            "`environment` {} does not exist for {platform}",
            environment.as_str()
        ));
    }
    Ok(DeviceAttrs {
        platform: platform.to_owned(),
        channel,
        app,
        environment,
        device_id: Some(r.device_id.clone()),
        e2e: None,
        keys,
    })
}

/// The store's rules for a registration with `app`: its policy, and what the caller may
/// do.
fn rules_for(
    devices: &crate::config::DevicesConfig,
    app: &str,
    may_take: bool,
    keep_active: bool,
) -> Rules {
    let policy = devices.policy(app);
    Rules {
        multi_user: policy.multi_user,
        single_device: policy.single_device,
        refuse_over_limit: policy.device_limit == DeviceLimit::Refuse,
        refuse_move: !may_take,
        keep_active,
    }
}

impl AppState {
    /// 403 (counted with `reason`) unless `allowed`.
    fn require(&self, allowed: bool, reason: &'static str) -> Result<(), ApiError> {
        if allowed {
            Ok(())
        } else {
            Err(self.auth.refuse(
                reason,
                ApiError::Forbidden("not allowed for this person's devices"),
            ))
        }
    }

    /// A token that is a URL pushline will connect to must point where the deployment's
    /// endpoint policy allows ([`pipeline::egress`]); refusals are counted by reason.
    async fn check_endpoint(
        &self,
        spec: &dyn pipeline::provider::Spec,
        field: &str,
        token: &str,
    ) -> Result<(), ApiError> {
        let Some(url) = spec.endpoint(token) else {
            return Ok(());
        };
        self.endpoints
            .check_registration(&url)
            .await
            .map_err(|refusal| {
                self.metrics
                    .endpoints_refused
                    .with_label_values(&[spec.name(), refusal.metric_reason()])
                    .inc();
                ApiError::Invalid(format!("`{field}`: the endpoint {refusal}"))
            })
    }

    /// Validates and stores one registration.
    /// Checks the registration (the pure [`plan_registration`] once the token and its
    /// endpoint are known good), seals its key, stores it, then answers what the store
    /// decided.
    async fn register_one(&self, r: Registration<'_>) -> Result<Registered, ApiError> {
        let spec = validate::provider(&self.providers, "platform", r.platform)
            .map_err(ApiError::Invalid)?;
        spec.check_token(r.token_field, r.token)
            .map_err(ApiError::Invalid)?;
        self.check_endpoint(spec, r.token_field, r.token).await?;
        let mut attrs = plan_registration(spec, &self.devices, self.keyring.can_seal(), &r)
            .map_err(ApiError::Invalid)?;
        let Registration {
            token,
            person,
            e2e,
            may_take,
            keep_active,
            ..
        } = r;
        if let Some(NewKey { key, kid }) = e2e {
            attrs.e2e = Some(SealedKey {
                alg: pipeline::jwe::ALGORITHM.into(),
                kid,
                sealed: self.keyring.seal(token, &key).map_err(|error| {
                    tracing::error!(%error, "cannot seal a device key");
                    ApiError::Unavailable
                })?,
            });
        }
        let rules = rules_for(&self.devices, &attrs.app, may_take, keep_active);
        let registered_at = now_ms();
        let registered = self
            .store
            .register(token, person, &attrs, registered_at, rules)
            .await?;
        let announces = spec.held() && !keep_active && !registered.held && !registered.refused;
        if registered.held {
            tracing::warn!(
                token = %pipeline::telemetry::token_tag(token),
                app = %attrs.app,
                "registration refused: the token is registered to another person"
            );
            return Err(self.auth.refuse("token_held", ApiError::TokenHeld));
        }
        if registered.refused {
            return Err(ApiError::DeviceLimit(format!(
                "Device limit exceeded: the person already has {} devices; remove one first",
                self.devices.max_per_person
            )));
        }
        if registered.moved_from.is_some() {
            self.metrics
                .devices_removed
                .with_label_values(&["moved"])
                .inc();
        }
        for (why, _) in &registered.removed {
            self.metrics
                .devices_removed
                .with_label_values(&[why.as_str()])
                .inc();
        }
        if announces {
            self.notices.announce(token, person, registered_at).await;
        }
        Ok(registered)
    }
}

async fn put_device(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: Client,
    Path(token): Path<String>,
    body: Result<JsonBody<PutDevice>, ApiError>,
) -> Response {
    let result = async {
        let principal = state.auth.authenticate(&headers, client).await?;
        let JsonBody(body) = body?;
        if body.token.is_some() {
            return Err(ApiError::Invalid(
                "`token` is named in the path of PUT; send it in the body with POST /v1/devices"
                    .into(),
            ));
        }
        register_device(&state, &principal, token, body).await
    }
    .await;
    finish(&state, "register", result)
}

async fn post_device(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: Client,
    body: Result<JsonBody<PutDevice>, ApiError>,
) -> Response {
    let result = async {
        let principal = state.auth.authenticate(&headers, client).await?;
        let JsonBody(mut body) = body?;
        let token = match (body.token.take(), &body.subscription) {
            (Some(token), _) => token,
            (None, Some(subscription)) => subscription.endpoint.clone(),
            (None, None) => {
                return Err(ApiError::Invalid(
                    "`token` or `subscription` is required".into(),
                ));
            }
        };
        register_device(&state, &principal, token, body).await
    }
    .await;
    finish(&state, "register", result)
}

/// Registers `token` as `body` says, for `PUT` and `POST`, once `principal` is known.
async fn register_device(
    state: &AppState,
    principal: &Principal,
    token: String,
    body: PutDevice,
) -> Result<(StatusCode, Json<Option<DeviceView>>), ApiError> {
    validate::person_id("person_id", &body.person_id).map_err(ApiError::Invalid)?;
    state.require(principal.may_write(&body.person_id), "not_owner")?;
    if body
        .subscription
        .as_ref()
        .is_some_and(|subscription| subscription.endpoint != token)
    {
        return Err(ApiError::Invalid(
            "`subscription.endpoint` is not the token being registered".into(),
        ));
    }
    let device_id = match body.device_id {
        Some(id) => {
            validate::device_id("device_id", &id).map_err(ApiError::Invalid)?;
            id
        }
        None => token_device_id(&token),
    };
    let e2e = NewKey::read(body.e2e_key, body.e2e_algorithm, body.e2e_kid)?;
    let registered = state
        .register_one(Registration {
            token: &token,
            token_field: "token",
            person: &body.person_id,
            platform: &body.platform,
            keys: body.subscription.as_ref().map(|s| &*s.keys),
            channel: body.channel,
            app: body.app,
            environment: body.environment,
            device_id,
            e2e,
            may_take: principal.may_take_tokens(),
            keep_active: body.activate == Some(false),
        })
        .await?;
    let now = now_ms();
    let devices = state.store.devices(&body.person_id, now).await?;
    // The registered token's device, all its tokens (the active rule weighs them all).
    let of_device = devices
        .iter()
        .find(|d| d.token == token)
        .map(|d| (d.attrs.app.clone(), d.device_id()));
    let devices: Vec<Device> = devices
        .into_iter()
        .filter(|d| of_device.as_ref() == Some(&(d.attrs.app.clone(), d.device_id())))
        .collect();
    let device = device_views(state, &body.person_id, devices, now)
        .await?
        .into_iter()
        .find(|d| d.token == token);
    let status = if registered.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(device)))
}

/// `DELETE /v1/devices/{token}` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// Remove the device from this person only (logging out of a shared device). A
    /// person's own credentials imply it.
    #[serde(default)]
    pub person_id: Option<String>,
}

async fn delete_device(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: Client,
    Path(token): Path<String>,
    query: Result<Query<DeleteQuery>, QueryRejection>,
) -> Response {
    let result = async {
        let principal = state.auth.authenticate(&headers, client).await?;
        validate::any_token(&state.providers, "token", &token).map_err(ApiError::Invalid)?;
        let Query(query) =
            query.map_err(|e| ApiError::Invalid(format!("query: {}", e.body_text())))?;
        if let Some(person) = &query.person_id {
            validate::person_id("person_id", person).map_err(ApiError::Invalid)?;
        }
        // A person may delete only their own registration; "not yours" and "not there"
        // get the same answer, so nobody learns whether someone else's token exists.
        let only = match (&query.person_id, principal.may_delete_any()) {
            (Some(person), true) => Some(person.clone()),
            (None, true) => None,
            (named, false) => {
                let me = principal.person().unwrap_or_default().to_owned();
                let entry = state.store.index_entry(&token).await?;
                let mine = named.as_deref().is_none_or(|n| principal.is(n))
                    && entry
                        .as_ref()
                        .is_some_and(|e| e.owners.iter().any(|o| principal.is(o)));
                if !mine {
                    if entry.is_some() {
                        state
                            .auth
                            .refuse("not_owner", ApiError::NotFound("device is not registered"));
                    }
                    return Err(ApiError::NotFound("device is not registered"));
                }
                Some(me)
            }
        };
        let removed = match only {
            Some(person) => state.store.remove_for(&token, &person).await?,
            None => state.store.remove(&token).await?,
        };
        if removed == 0 {
            return Err(ApiError::NotFound("device is not registered"));
        }
        state
            .metrics
            .devices_removed
            .with_label_values(&["deleted"])
            .inc_by(removed as u64);
        Ok(StatusCode::NO_CONTENT)
    }
    .await;
    finish(&state, "delete", result)
}

async fn list_devices(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: Client,
    Path(person): Path<String>,
) -> Response {
    let result = async {
        let principal = state.auth.authenticate(&headers, client).await?;
        validate::person_id("personId", &person).map_err(ApiError::Invalid)?;
        state.require(principal.may_read(&person), "not_owner")?;
        let now = now_ms();
        let devices = state.store.devices(&person, now).await?;
        let devices = device_views(&state, &person, devices, now).await?;
        Ok(Json(
            serde_json::json!({ "person_id": person, "devices": devices }),
        ))
    }
    .await;
    finish(&state, "list", result)
}

async fn delete_person(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: Client,
    Path(person): Path<String>,
) -> Response {
    let result = async {
        let principal = state.auth.authenticate(&headers, client).await?;
        validate::person_id("personId", &person).map_err(ApiError::Invalid)?;
        state.require(principal.may_write(&person), "not_owner")?;
        let removed = state.store.remove_person(&person).await?;
        if let Ok(canonical) = crate::person::canonical(&person) {
            state.inbox.remove_person(&canonical).await?;
        }
        state
            .metrics
            .devices_removed
            .with_label_values(&["deleted"])
            .inc_by(removed as u64);
        Ok(Json(
            serde_json::json!({ "person_id": person, "removed": removed }),
        ))
    }
    .await;
    finish(&state, "delete_person", result)
}

/// `PUT /v1/persons/{personId}/devices/{deviceId}/active` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivateQuery {
    /// The device's app; needed only when the person holds the device id in several apps.
    #[serde(default)]
    pub app: Option<String>,
}

/// Switches the device's active user to the person: the person themselves, or a service
/// key with `register`; only a person holding a live registration on the device.
async fn activate(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: Client,
    Path((person, device_id)): Path<(String, String)>,
    query: Result<Query<ActivateQuery>, QueryRejection>,
) -> Response {
    let result = async {
        let principal = state.auth.authenticate(&headers, client).await?;
        validate::person_id("personId", &person).map_err(ApiError::Invalid)?;
        validate::device_id("deviceId", &device_id).map_err(ApiError::Invalid)?;
        let Query(query) =
            query.map_err(|e| ApiError::Invalid(format!("query: {}", e.body_text())))?;
        if let Some(app) = &query.app {
            validate::app("app", app).map_err(ApiError::Invalid)?;
        }
        state.require(principal.may_write(&person), "not_owner")?;
        let now = now_ms();
        let devices = state.store.devices(&person, now).await?;
        let app = switch_app(&devices, &device_id, query.app.as_deref())?;
        let active = state
            .store
            .set_active(&app, &device_id, &person, now)
            .await
            .map_err(|error| match error {
                ActivateError::NotRegistered => ApiError::NotFound(NOT_HELD),
                ActivateError::Store(error) => ApiError::from(error),
            })?;
        for inapp in devices.iter().filter(|d| {
            d.attrs.platform == inapp::spec::NAME
                && d.attrs.app == app
                && d.device_id() == device_id
        }) {
            state.notices.announce(&inapp.token, &person, now).await;
        }
        Ok(Json(serde_json::json!({
            "person_id": person,
            "device_id": device_id,
            "app": app,
            "active": true,
            "active_since_ms": active.since_ms,
        })))
    }
    .await;
    finish(&state, "activate", result)
}

/// The Webex sample push server's registration body.
#[derive(Debug, Deserialize)]
pub struct SampleRegister {
    /// The user's e-mail (accepted, not stored).
    #[serde(default)]
    pub email: Option<String>,
    /// PushKit token → APNs `voip`.
    #[serde(rename = "voipToken", default)]
    pub voip_token: Option<String>,
    /// Notification token → APNs `alert`.
    #[serde(rename = "msgToken", default)]
    pub msg_token: Option<String>,
    /// FCM token → FCM `alert`.
    #[serde(rename = "fcmToken", default)]
    pub fcm_token: Option<String>,
    /// The Webex person id.
    #[serde(rename = "personId")]
    pub person_id: String,
    /// The phone these tokens belong to; default derived from the first token given, so
    /// the tokens of one call are one device.
    #[serde(rename = "deviceId", default)]
    pub device_id: Option<String>,
}

async fn sample_register(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: Client,
    body: Result<JsonBody<SampleRegister>, ApiError>,
) -> Response {
    let result = async {
        let principal = state.auth.authenticate(&headers, client).await?;
        let JsonBody(body) = body?;
        validate::person_id("personId", &body.person_id).map_err(ApiError::Invalid)?;
        state.require(principal.may_write(&body.person_id), "not_owner")?;
        let targets = [
            ("voipToken", body.voip_token.as_deref(), "apns", Channel::Voip),
            ("msgToken", body.msg_token.as_deref(), "apns", Channel::Alert),
            ("fcmToken", body.fcm_token.as_deref(), "fcm", Channel::Alert),
        ];
        let present: Vec<_> = targets
            .into_iter()
            .filter_map(|(f, t, p, c)| t.filter(|t| !t.is_empty()).map(|t| (f, t, p, c)))
            .collect();
        if present.is_empty() {
            return Err(ApiError::Invalid(
                "one of `voipToken`, `msgToken` or `fcmToken` is required".into(),
            ));
        }
        // Validate everything before storing anything.
        for (field, token, platform, _) in &present {
            validate::sample_token(&state.providers, field, platform, token)
                .map_err(ApiError::Invalid)?;
        }
        let device_id = match body.device_id {
            Some(id) => {
                validate::device_id("deviceId", &id).map_err(ApiError::Invalid)?;
                id
            }
            None => token_device_id(present[0].1),
        };
        let mut registered = Vec::new();
        for (field, token, platform, channel) in present {
            state
                .register_one(Registration {
                    token,
                    token_field: field,
                    person: &body.person_id,
                    platform,
                    keys: None,
                    channel: Some(channel),
                    app: None,
                    environment: None,
                    device_id: device_id.clone(),
                    e2e: None,
                    may_take: principal.may_take_tokens(),
                    keep_active: false,
                })
                .await?;
            registered.push(field);
        }
        Ok(Json(
            serde_json::json!({ "personId": body.person_id, "deviceId": device_id, "registered": registered }),
        ))
    }
    .await;
    finish(&state, "register", result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration<'a>(platform: &'a str, token: &'a str) -> Registration<'a> {
        Registration {
            token,
            token_field: "token",
            person: "ann",
            platform,
            keys: None,
            channel: None,
            app: None,
            environment: None,
            device_id: "phone".into(),
            e2e: None,
            may_take: false,
            keep_active: false,
        }
    }

    #[test]
    fn a_registration_is_planned_with_the_providers_and_the_configurations_defaults() {
        let providers = providers::all();
        let apns = providers.get("apns").expect("apns");
        let mut devices = crate::config::DevicesConfig::default();
        let token = "ab".repeat(32);
        let r = registration("apns", &token);
        let error = plan_registration(apns, &devices, false, &r).expect_err("no app");
        assert!(error.contains("`app` is required"), "{error}");
        devices.default_apns_app = "com.example.app".into();
        devices.default_environment = Environment::Sandbox;
        let attrs = plan_registration(apns, &devices, false, &r).expect("planned");
        assert_eq!(attrs.app, "com.example.app");
        assert_eq!(attrs.channel, apns.default_channel());
        assert_eq!(attrs.environment, Environment::Sandbox);
        assert_eq!(attrs.device_id.as_deref(), Some("phone"));
        // FCM has no sandbox: its own environment is taken instead.
        devices.default_fcm_app = "project".into();
        let fcm = providers.get("fcm").expect("fcm");
        let attrs =
            plan_registration(fcm, &devices, false, &registration("fcm", "t:1")).expect("planned");
        assert_eq!(attrs.environment, Environment::Production);
    }

    #[test]
    fn a_registration_that_cannot_be_stored_as_asked_is_refused_naming_the_field() {
        let providers = providers::all();
        let apns = providers.get("apns").expect("apns");
        let devices = crate::config::DevicesConfig {
            default_apns_app: "com.example.app".into(),
            ..Default::default()
        };
        let token = "ab".repeat(32);
        let with_key = Registration {
            e2e: Some(NewKey {
                key: pipeline::jwe::ContentKey::from_bytes([7; 32]),
                kid: "k".into(),
            }),
            ..registration("apns", &token)
        };
        let error = plan_registration(apns, &devices, false, &with_key).expect_err("no KEK");
        assert!(error.contains("`e2e_key`"), "{error}");
        let fcm = providers.get("fcm").expect("fcm");
        let sandbox = Registration {
            environment: Some(Environment::Sandbox),
            app: Some("project".into()),
            ..registration("fcm", "t:1")
        };
        let error = plan_registration(fcm, &devices, false, &sandbox).expect_err("no sandbox");
        assert!(error.contains("`environment`"), "{error}");
        let nobody = Registration {
            person: "",
            ..registration("apns", &token)
        };
        let error = plan_registration(apns, &devices, false, &nobody).expect_err("person");
        assert!(error.contains("person_id"), "{error}");
    }

    fn device(token: &str, device_id: &str, app: &str) -> Device {
        Device {
            token: token.into(),
            person_id: "ann".into(),
            attrs: DeviceAttrs {
                platform: "apns".into(),
                channel: Channel::Voip,
                app: app.into(),
                environment: Environment::Production,
                device_id: Some(device_id.into()),
                e2e: None,
                keys: None,
            },
            created_at_ms: 1,
            updated_at_ms: 1,
        }
    }

    #[test]
    fn a_switch_names_the_app_only_when_the_device_id_is_in_several() {
        let devices = [
            device("t1", "phone", "com.example.chat"),
            device("t2", "phone", "com.example.chat"),
            device("t3", "tablet", "com.example.chat"),
            device("t4", "tablet", "com.example.mail"),
        ];
        assert_eq!(
            switch_app(&devices, "phone", None).expect("one app"),
            "com.example.chat"
        );
        let several = switch_app(&devices, "tablet", None).expect_err("two apps");
        assert!(
            matches!(&several, ApiError::Invalid(m) if m.contains("?app=")),
            "{several}"
        );
        assert_eq!(
            switch_app(&devices, "tablet", Some("com.example.mail")).expect("named"),
            "com.example.mail"
        );
        assert!(matches!(
            switch_app(&devices, "watch", None),
            Err(ApiError::NotFound(NOT_HELD))
        ));
    }
}
