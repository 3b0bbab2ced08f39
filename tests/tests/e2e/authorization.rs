//! Who may register, list and delete devices: API-key scopes, Webex user tokens and
//! customer JWTs, against a real registry, Redis and NATS.

use base64::Engine as _;
use harness::mock::webex_people::MockWebexPeople;
use harness::services::{Env, Service, start_registry};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use registry::config::{ApiKey, JwtAlgorithm, JwtKey, Scope};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const ALICE_UUID: &str = "0b7a9f3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
const BOB_UUID: &str = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a";
const JWT_SECRET: &str = "customer-idp-shared-secret-of-32-bytes-or-more";
const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "pushline";

fn webex_id(uuid: &str) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD
        .encode(format!("ciscospark://us/PEOPLE/{uuid}"))
}

fn token(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn key(name: &str, secret: &str, scopes: Vec<Scope>) -> ApiKey {
    ApiKey {
        name: name.into(),
        sha256: hex::encode(Sha256::digest(secret.as_bytes())),
        scopes,
    }
}

async fn put(registry: &Service, bearer: &str, token: &str, person: &str) -> reqwest::Response {
    reqwest::Client::new()
        .put(registry.url(&format!("/v1/devices/{token}")))
        .bearer_auth(bearer)
        .json(&json!({"person_id": person, "platform": "apns"}))
        .send()
        .await
        .expect("PUT")
}

async fn list(registry: &Service, bearer: &str, person: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(registry.url(&format!("/v1/persons/{person}/devices")))
        .bearer_auth(bearer)
        .send()
        .await
        .expect("GET")
}

async fn delete(registry: &Service, bearer: &str, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .delete(registry.url(path))
        .bearer_auth(bearer)
        .send()
        .await
        .expect("DELETE")
}

async fn refusals(registry: &Service, reason: &str) -> u64 {
    let needle =
        format!(r#"pushline_auth_refusals_total{{reason="{reason}",service="registry"}} "#);
    registry
        .metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&needle).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

struct Fixture {
    _env: Env,
    webex: MockWebexPeople,
    registry: Service,
    _dir: tempfile::TempDir,
    es256_pem: String,
}

async fn fixture() -> Fixture {
    fixture_with(|_| {}).await
}

async fn fixture_with(adjust: impl FnOnce(&mut registry::config::Config)) -> Fixture {
    let env = Env::start();
    let webex = MockWebexPeople::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let es256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let public = dir.path().join("idp-es256.pem");
    std::fs::write(&public, es256.public_key_pem()).expect("write key");
    let mut config = env.registry_config();
    config.auth.api_keys = vec![
        key("admin", "admin-key", vec![Scope::Admin]),
        key("reader", "read-key", vec![Scope::Read]),
        key("writer", "write-key", vec![Scope::Register]),
    ];
    config.auth.webex.enabled = true;
    config.auth.webex.base_url = webex.url();
    config.auth.jwt.issuer = ISSUER.into();
    config.auth.jwt.audience = AUDIENCE.into();
    config.auth.jwt.leeway_secs = 0;
    config.auth.jwt.keys = vec![
        JwtKey {
            algorithm: JwtAlgorithm::HS256,
            kid: None,
            secret: Some(pipeline::config::Secret::new(JWT_SECRET)),
            secret_file: None,
            public_key_file: None,
        },
        JwtKey {
            algorithm: JwtAlgorithm::ES256,
            kid: Some("es".into()),
            secret: None,
            secret_file: None,
            public_key_file: Some(public),
        },
    ];
    adjust(&mut config);
    let registry = start_registry(config).await;
    registry.wait_ready().await;
    webex.grant("alice-webex-token", &webex_id(ALICE_UUID));
    webex.grant("bob-webex-token", &webex_id(BOB_UUID));
    Fixture {
        _env: env,
        webex,
        registry,
        _dir: dir,
        es256_pem: es256.serialize_pem(),
    }
}

fn jwt_hs256(sub: &str, exp_offset: i64, aud: &str) -> String {
    let now = pipeline::contract::now_ms() as i64 / 1000;
    let claims =
        json!({"sub": sub, "iss": ISSUER, "aud": aud, "exp": now + exp_offset, "iat": now});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("jwt")
}

#[tokio::test]
async fn a_webex_user_manages_only_their_own_devices() {
    let f = fixture().await;
    let r = &f.registry;
    // Alice registers her phone, naming herself either way Webex spells her id.
    assert_eq!(
        put(r, "alice-webex-token", &token(1), ALICE_UUID)
            .await
            .status(),
        201
    );
    assert_eq!(
        put(r, "alice-webex-token", &token(2), &webex_id(ALICE_UUID))
            .await
            .status(),
        201
    );
    assert_eq!(
        list(r, "alice-webex-token", &webex_id(ALICE_UUID))
            .await
            .status(),
        200
    );

    // Bob's phone, registered by Bob.
    assert_eq!(
        put(r, "bob-webex-token", &token(3), BOB_UUID)
            .await
            .status(),
        201
    );

    // Alice can neither register for Bob nor see his devices.
    let forged = put(r, "alice-webex-token", &token(4), BOB_UUID).await;
    assert_eq!(forged.status(), 403);
    let body: Value = forged.json().await.expect("json");
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(list(r, "alice-webex-token", BOB_UUID).await.status(), 403);

    // Deleting Bob's token answers exactly like deleting a token that does not exist.
    let bobs = delete(r, "alice-webex-token", &format!("/v1/devices/{}", token(3))).await;
    let nobodys = delete(
        r,
        "alice-webex-token",
        &format!("/v1/devices/{}", token(99)),
    )
    .await;
    assert_eq!(bobs.status(), 404);
    assert_eq!(nobodys.status(), 404);
    assert_eq!(
        bobs.text().await.expect("body"),
        nobodys.text().await.expect("body")
    );
    let sample = delete(r, "alice-webex-token", &format!("/register/{}", token(3))).await;
    assert_eq!(sample.status(), 404);
    // Bob still has it.
    let bob_devices: Value = list(r, "bob-webex-token", BOB_UUID)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(bob_devices["devices"].as_array().map(Vec::len), Some(1));

    // Alice deletes her own.
    assert_eq!(
        delete(r, "alice-webex-token", &format!("/v1/devices/{}", token(1)))
            .await
            .status(),
        204
    );
    assert!(refusals(r, "not_owner").await >= 4);
}

#[tokio::test]
async fn the_sample_register_body_is_held_to_the_same_rule() {
    let f = fixture().await;
    let body = json!({"voipToken": token(5), "msgToken": token(6), "personId": webex_id(BOB_UUID), "email": "x@example.com"});
    let response = reqwest::Client::new()
        .post(f.registry.url("/register"))
        .bearer_auth("alice-webex-token")
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 403);
    let devices: Value = list(&f.registry, "admin-key", BOB_UUID)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(devices["devices"], json!([]));
}

#[tokio::test]
async fn webex_answers_are_cached_briefly_and_unknown_tokens_refused() {
    let f = fixture().await;
    assert_eq!(
        list(&f.registry, "alice-webex-token", ALICE_UUID)
            .await
            .status(),
        200
    );
    assert_eq!(
        list(&f.registry, "alice-webex-token", ALICE_UUID)
            .await
            .status(),
        200
    );
    assert_eq!(
        f.webex.calls(),
        1,
        "the second request used the cached answer"
    );
    assert_eq!(
        list(&f.registry, "stolen-or-made-up", ALICE_UUID)
            .await
            .status(),
        401
    );
    assert_eq!(refusals(&f.registry, "webex_rejected").await, 1);
}

#[tokio::test]
async fn webex_down_means_503_never_allow() {
    let f = fixture().await;
    f.webex.set_down(true);
    let response = put(&f.registry, "alice-webex-token", &token(1), ALICE_UUID).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(refusals(&f.registry, "webex_unavailable").await, 1);
    let devices: Value = list(&f.registry, "admin-key", ALICE_UUID)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(devices["devices"], json!([]));
}

#[tokio::test]
async fn a_jwt_person_manages_only_their_own_devices() {
    let f = fixture().await;
    let carol = jwt_hs256("carol", 300, AUDIENCE);
    assert_eq!(
        put(&f.registry, &carol, &token(1), "carol").await.status(),
        201
    );
    assert_eq!(
        put(&f.registry, &carol, &token(2), "dave").await.status(),
        403
    );
    assert_eq!(list(&f.registry, &carol, "dave").await.status(), 403);

    // ES256 from the same identity provider, selected by kid.
    let now = pipeline::contract::now_ms() / 1000;
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("es".into());
    let claims = json!({"sub": "erin", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300});
    let erin = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_ec_pem(f.es256_pem.as_bytes()).expect("key"),
    )
    .expect("jwt");
    assert_eq!(
        put(&f.registry, &erin, &token(3), "erin").await.status(),
        201
    );
}

#[tokio::test]
async fn expired_wrong_audience_and_forged_jwts_are_refused() {
    let f = fixture().await;
    let expired = jwt_hs256("carol", -10, AUDIENCE);
    assert_eq!(
        put(&f.registry, &expired, &token(1), "carol")
            .await
            .status(),
        401
    );
    assert_eq!(refusals(&f.registry, "expired_jwt").await, 1);

    let other_audience = jwt_hs256("carol", 300, "another-service");
    assert_eq!(
        put(&f.registry, &other_audience, &token(1), "carol")
            .await
            .status(),
        401
    );
    assert_eq!(refusals(&f.registry, "wrong_audience").await, 1);

    let now = pipeline::contract::now_ms() / 1000;
    let claims = json!({"sub": "carol", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300});
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(b"guessed"),
    )
    .expect("jwt");
    assert_eq!(
        put(&f.registry, &forged, &token(1), "carol").await.status(),
        401
    );
    assert_eq!(refusals(&f.registry, "invalid_jwt").await, 1);
    let devices: Value = list(&f.registry, "admin-key", "carol")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(devices["devices"], json!([]));
}

#[tokio::test]
async fn api_keys_act_only_within_their_scopes() {
    let f = fixture().await;
    let r = &f.registry;
    assert_eq!(put(r, "read-key", &token(1), "frank").await.status(), 403);
    assert_eq!(refusals(r, "not_owner").await, 1);
    assert_eq!(put(r, "write-key", &token(1), "frank").await.status(), 201);
    assert_eq!(list(r, "write-key", "frank").await.status(), 403);
    assert_eq!(list(r, "read-key", "frank").await.status(), 200);
    assert_eq!(
        delete(r, "read-key", &format!("/v1/devices/{}", token(1)))
            .await
            .status(),
        404
    );
    assert_eq!(
        delete(r, "admin-key", &format!("/v1/devices/{}", token(1)))
            .await
            .status(),
        204
    );
    assert_eq!(list(r, "no-such-key", "frank").await.status(), 401);
    let missing = reqwest::Client::new()
        .get(r.url("/v1/persons/frank/devices"))
        .send()
        .await
        .expect("GET");
    assert_eq!(missing.status(), 401);
    assert_eq!(refusals(r, "missing_credentials").await, 1);
}

async fn counter(registry: &Service, series: &str) -> u64 {
    let needle = format!("{series} ");
    registry
        .metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&needle).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

async fn tokens_of(registry: &Service, person: &str) -> Vec<String> {
    let body: Value = list(registry, "admin-key", person)
        .await
        .json()
        .await
        .expect("json");
    body["devices"]
        .as_array()
        .map(|devices| {
            devices
                .iter()
                .filter_map(|d| d["token"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn jwt_with(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("jwt")
}

#[tokio::test]
async fn identical_bogus_webex_tokens_sent_at_once_cost_one_look_up() {
    // The failure limit, tested on its own below, would answer the later requests itself.
    let f = fixture_with(|config| config.auth.failures.limit = 0).await;
    let url = f.registry.url(&format!("/v1/persons/{ALICE_UUID}/devices"));
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let url = url.clone();
        requests.spawn(async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth("made-up-webex-token")
                .send()
                .await
                .expect("GET")
                .status()
        });
    }
    let statuses = requests.join_all().await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    assert!(
        f.webex.calls() <= 1,
        "{} look-ups for one token",
        f.webex.calls()
    );
    // Refused tokens are remembered: asking again costs nothing either.
    assert_eq!(
        list(&f.registry, "made-up-webex-token", ALICE_UUID)
            .await
            .status(),
        401
    );
    assert!(f.webex.calls() <= 1);
    assert_eq!(refusals(&f.registry, "webex_rejected").await, 31);
    // A real token is still looked up.
    assert_eq!(
        list(&f.registry, "alice-webex-token", ALICE_UUID)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_client_that_keeps_failing_gets_429_and_webex_is_not_asked() {
    let f = fixture_with(|config| {
        config.auth.failures.limit = 5;
        config.auth.failures.window_secs = 600;
    })
    .await;
    for n in 0..5 {
        let bogus = format!("guess-{n}");
        assert_eq!(list(&f.registry, &bogus, ALICE_UUID).await.status(), 401);
    }
    assert_eq!(f.webex.calls(), 5);
    let limited = list(&f.registry, "guess-5", ALICE_UUID).await;
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=600).contains(&retry_after), "{retry_after}");
    let body: Value = limited.json().await.expect("json");
    assert_eq!(body["error"]["code"], "too_many_failures");
    assert_eq!(f.webex.calls(), 5, "no look-up for a client at the limit");
    let forged = jwt_hs256("carol", 300, "another-service");
    assert_eq!(
        put(&f.registry, &forged, &token(1), "carol").await.status(),
        429
    );
    assert_eq!(refusals(&f.registry, "too_many_failures").await, 2);
    // Working credentials from the same client still work.
    assert_eq!(
        list(&f.registry, "admin-key", ALICE_UUID).await.status(),
        200
    );
    let carol = jwt_hs256("carol", 300, AUDIENCE);
    assert_eq!(
        put(&f.registry, &carol, &token(1), "carol").await.status(),
        201
    );
}

#[tokio::test]
async fn a_jwt_subject_is_taken_as_it_is_never_decoded_into_another_person() {
    let f = fixture().await;
    let r = &f.registry;
    assert_eq!(put(r, "admin-key", &token(1), "alice").await.status(), 201);
    assert_eq!(
        put(r, "alice-webex-token", &token(2), ALICE_UUID)
            .await
            .status(),
        201
    );
    let b64url = |uri: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uri);
    let as_alice = jwt_hs256(&b64url("ciscospark://us/PEOPLE/ALICE"), 300, AUDIENCE);
    assert_eq!(list(r, &as_alice, "alice").await.status(), 403);
    assert_eq!(put(r, &as_alice, &token(3), "alice").await.status(), 403);
    let as_alice_uuid = jwt_hs256(
        &b64url(&format!("ciscospark://us/PEOPLE/{ALICE_UUID}")),
        300,
        AUDIENCE,
    );
    assert_eq!(list(r, &as_alice_uuid, ALICE_UUID).await.status(), 403);
    assert_eq!(
        put(r, &as_alice_uuid, &token(4), ALICE_UUID).await.status(),
        403
    );
    assert_eq!(tokens_of(r, "alice").await, vec![token(1)]);
    assert_eq!(tokens_of(r, ALICE_UUID).await, vec![token(2)]);
}

#[tokio::test]
async fn a_person_cannot_take_a_token_registered_to_another_person() {
    let f = fixture().await;
    let r = &f.registry;
    let carol = jwt_hs256("carol", 300, AUDIENCE);
    let dave = jwt_hs256("dave", 300, AUDIENCE);
    assert_eq!(put(r, &carol, &token(1), "carol").await.status(), 201);
    let taken = put(r, &dave, &token(1), "dave").await;
    assert_eq!(taken.status(), 409);
    let body: Value = taken.json().await.expect("json");
    assert_eq!(body["error"]["code"], "token_held");
    assert_eq!(
        tokens_of(r, "carol").await,
        vec![token(1)],
        "carol keeps it"
    );
    assert!(tokens_of(r, "dave").await.is_empty());
    assert_eq!(refusals(r, "token_held").await, 1);
    assert_eq!(
        counter(
            r,
            r#"pushline_device_operations_total{operation="register",outcome="token_held"}"#
        )
        .await,
        1
    );
    // Carol refreshing her own token is not a move.
    assert_eq!(put(r, &carol, &token(1), "carol").await.status(), 200);
    // An app backend vouches for the device: the token moves.
    assert_eq!(put(r, "write-key", &token(1), "dave").await.status(), 201);
    assert!(tokens_of(r, "carol").await.is_empty());
    assert_eq!(tokens_of(r, "dave").await, vec![token(1)]);
}

#[tokio::test]
async fn on_a_multi_user_app_a_second_person_shares_the_token() {
    let f = fixture_with(|config| {
        config.devices.apps.insert(
            harness::services::APNS_APP.into(),
            registry::config::AppPolicy {
                multi_user: true,
                ..Default::default()
            },
        );
    })
    .await;
    let r = &f.registry;
    let carol = jwt_hs256("carol", 300, AUDIENCE);
    let dave = jwt_hs256("dave", 300, AUDIENCE);
    assert_eq!(put(r, &carol, &token(1), "carol").await.status(), 201);
    assert_eq!(put(r, &dave, &token(1), "dave").await.status(), 201);
    assert_eq!(tokens_of(r, "carol").await, vec![token(1)]);
    assert_eq!(tokens_of(r, "dave").await, vec![token(1)]);
}

#[tokio::test]
async fn a_jwt_living_longer_than_the_maximum_is_refused() {
    let f = fixture().await;
    let now = pipeline::contract::now_ms() / 1000;
    let ten_years = 10 * 365 * 86_400;
    let claims = |iat: Option<u64>, exp: u64| {
        let mut claims = json!({"sub": "carol", "iss": ISSUER, "aud": AUDIENCE, "exp": exp});
        if let Some(iat) = iat {
            claims["iat"] = json!(iat);
        }
        jwt_with(claims)
    };
    for (what, token_) in [
        (
            "iat now, exp in ten years",
            claims(Some(now), now + ten_years),
        ),
        ("no iat, exp in two days", claims(None, now + 2 * 86_400)),
        (
            "iat in the future",
            claims(Some(now + ten_years - 60), now + ten_years),
        ),
    ] {
        assert_eq!(
            put(&f.registry, &token_, &token(1), "carol").await.status(),
            401,
            "{what}"
        );
    }
    assert_eq!(refusals(&f.registry, "jwt_lifetime_too_long").await, 3);
    let day = claims(Some(now), now + 86_400);
    assert_eq!(
        put(&f.registry, &day, &token(1), "carol").await.status(),
        201
    );
}

#[tokio::test]
async fn a_short_hs256_secret_stops_the_registry_at_start_naming_the_setting() {
    let env = Env::start();
    let mut config = env.registry_config();
    config.auth.jwt.issuer = ISSUER.into();
    config.auth.jwt.audience = AUDIENCE.into();
    config.auth.jwt.keys = vec![JwtKey {
        algorithm: JwtAlgorithm::HS256,
        kid: None,
        secret: Some(pipeline::config::Secret::new("customer-idp-shared-secret")),
        secret_file: None,
        public_key_file: None,
    }];
    let shutdown = pipeline::CancellationToken::new();
    let run = registry::run(config, shutdown.clone());
    let error = tokio::time::timeout(std::time::Duration::from_secs(10), run)
        .await
        .expect("refused at start, not served")
        .expect_err("a 26-byte secret");
    assert!(
        error.to_string().contains("auth.jwt.keys[0].secret"),
        "{error}"
    );
}

#[tokio::test]
async fn a_person_switches_only_themselves_and_only_onto_a_device_they_hold() {
    let f = fixture_with(|c| {
        c.devices.apps.insert(
            harness::services::APNS_APP.into(),
            registry::config::AppPolicy {
                multi_user: true,
                ..Default::default()
            },
        );
    })
    .await;
    let r = &f.registry;
    let register = |person: &'static str, token: String, device: &'static str| async move {
        let response = reqwest::Client::new()
            .put(r.url(&format!("/v1/devices/{token}")))
            .bearer_auth("admin-key")
            .json(&json!({"person_id": person, "platform": "apns", "device_id": device}))
            .send()
            .await
            .expect("PUT");
        assert!(response.status().is_success(), "{}", response.status());
    };
    register(ALICE_UUID, token(1), "family-ipad").await;
    register(BOB_UUID, token(1), "family-ipad").await;
    register(BOB_UUID, token(2), "bobs-phone").await;
    let switch = |bearer: &'static str, person: &'static str, device: &'static str| async move {
        let response = reqwest::Client::new()
            .put(r.url(&format!("/v1/persons/{person}/devices/{device}/active")))
            .bearer_auth(bearer)
            .send()
            .await
            .expect("PUT active");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("a JSON answer");
        (status, body)
    };

    // Alice, signed in with her own Webex token, switches the shared iPad to herself.
    let (status, body) = switch("alice-webex-token", ALICE_UUID, "family-ipad").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["active"], true);

    // She cannot switch it to Bob, nor make herself active on Bob's phone: a device she
    // does not hold answers as one that does not exist.
    let (status, body) = switch("alice-webex-token", BOB_UUID, "family-ipad").await;
    assert_eq!((status, &body["error"]["code"]), (403, &json!("forbidden")));
    let (status, bobs) = switch("alice-webex-token", ALICE_UUID, "bobs-phone").await;
    assert_eq!((status, &bobs["error"]["code"]), (404, &json!("not_found")));
    let (_, nobodys) = switch("alice-webex-token", ALICE_UUID, "no-such-phone").await;
    assert_eq!(bobs, nobodys);

    // Reading is not switching; an app backend with `register` may switch anyone.
    let (status, _) = switch("read-key", BOB_UUID, "family-ipad").await;
    assert_eq!(status, 403);
    let (status, body) = switch("write-key", BOB_UUID, "family-ipad").await;
    assert_eq!(status, 200, "{body}");
    let listed: Value = list(r, "alice-webex-token", ALICE_UUID)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(listed["devices"][0]["active"], false, "{listed}");

    // Ids that break the rules are refused before anything is read.
    let (status, body) = switch("write-key", BOB_UUID, "a%20b").await;
    assert_eq!((status, &body["error"]["code"]), (400, &json!("invalid")));
}
