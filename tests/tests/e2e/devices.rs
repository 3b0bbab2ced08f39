//! Devices as users have them, end to end through real NATS, Redis and the mock
//! providers: payloads encrypted per device (opened by an independent JOSE
//! implementation), keys that never leave the registry in clear, one device with several
//! tokens, several persons on one device, one device per person, a device limit that
//! refuses, and registrations written by the previous version.

use harness::mock::apns::MockApns;
use harness::mock::fcm::MockFcm;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use harness::services::{API_KEY, APNS_APP, Env, FCM_APP, PRODUCER_KEY, start_registry};
use harness::stack::Stack;
use harness::webex::{apns_payload, fcm_payload};
use pipeline::config::Secret;
use registry::keyring::KekConfig;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(15);

fn apns_token(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn fcm_token(n: u8) -> String {
    format!("device-{n}:APA91bH-0123456789abcdef")
}

fn kek(id: &str, byte: u8) -> KekConfig {
    KekConfig {
        id: id.into(),
        key: Some(Secret::new(STANDARD.encode([byte; 32]))),
        key_file: None,
    }
}

/// A device's key as the app would generate and send it.
fn device_key(byte: u8) -> ([u8; 32], String) {
    let key = [byte; 32];
    (key, STANDARD.encode(key))
}

/// Opens a JWE with josekit (OpenSSL underneath), not with pushline's code.
fn open(key: &[u8; 32], jwe: &str) -> Result<(Vec<u8>, josekit::jwe::JweHeader), String> {
    let decrypter = josekit::jwe::Dir
        .decrypter_from_bytes(key)
        .map_err(|e| e.to_string())?;
    josekit::jwe::deserialize_compact(jwe, &decrypter).map_err(|e| e.to_string())
}

async fn put(
    stack_registry: &harness::services::Service,
    token: &str,
    body: Value,
) -> (u16, String) {
    let response = reqwest::Client::new()
        .put(stack_registry.url(&format!("/v1/devices/{token}")))
        .bearer_auth(API_KEY)
        .json(&body)
        .send()
        .await
        .expect("PUT");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// `DELETE <path>` on the registry with the test API key; the status.
async fn delete(registry: &harness::services::Service, path: &str) -> u16 {
    reqwest::Client::new()
        .delete(registry.url(path))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("DELETE")
        .status()
        .as_u16()
}

async fn list(registry: &harness::services::Service, person: &str) -> (Vec<Value>, String) {
    let text = reqwest::Client::new()
        .get(registry.url(&format!("/v1/persons/{person}/devices")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("body");
    let body: Value = serde_json::from_str(&text).expect("json");
    (
        body["devices"].as_array().cloned().unwrap_or_default(),
        text,
    )
}

fn tokens(devices: &[Value]) -> Vec<String> {
    let mut tokens: Vec<String> = devices
        .iter()
        .map(|d| d["token"].as_str().expect("token").to_owned())
        .collect();
    tokens.sort();
    tokens
}

/// Every key and value under the test's prefix, as one text.
async fn redis_dump(env: &Env) -> String {
    let mut redis = redis::Client::open(env.redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", env.prefix))
        .query_async(&mut redis)
        .await
        .expect("keys");
    let mut dump = String::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .expect("type");
        let values: Vec<String> = match kind.as_str() {
            "string" => vec![
                redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut redis)
                    .await
                    .expect("get"),
            ],
            "hash" => redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .expect("hgetall"),
            _ => redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut redis)
                .await
                .expect("zrange"),
        };
        dump.push_str(&format!("{key} {}\n", values.join(" ")));
    }
    dump
}

async fn notify(stack: &Stack, body: Value) {
    let response = reqwest::Client::new()
        .post(stack.ingest.url("/v1/notify"))
        .bearer_auth(PRODUCER_KEY)
        .json(&body)
        .send()
        .await
        .expect("notify");
    assert_eq!(
        response.status(),
        200,
        "{}",
        response.text().await.unwrap_or_default()
    );
}

fn jwe_of_apns(body: &[u8]) -> (Value, String) {
    let value: Value = serde_json::from_slice(body).expect("APNs body");
    let jwe = value["jwe"]
        .as_str()
        .expect("the body carries a JWE")
        .to_owned();
    (value, jwe)
}

fn jwe_of_fcm(body: &[u8]) -> (Value, String) {
    let value: Value = serde_json::from_slice(body).expect("FCM body");
    let data = value["message"]["data"].clone();
    let jwe = data["jwe"]
        .as_str()
        .expect("the data map carries a JWE")
        .to_owned();
    (data, jwe)
}

#[tokio::test]
async fn encrypted_pushes_open_with_the_devices_key_in_an_independent_jose_library() {
    let stack = Stack::start_with(|c| {
        c.registry.devices.key_encryption_keys = vec![kek("kek-a", 1)];
        c.registry.devices.apps.insert(
            APNS_APP.into(),
            registry::config::AppPolicy {
                encrypt_payloads: true,
                ..Default::default()
            },
        );
    })
    .await;
    let (ios_key, ios_b64) = device_key(0x11);
    let (android_key, android_b64) = device_key(0x22);
    let ios = apns_token(1);
    let android = fcm_token(2);
    let (status, _) = put(
        &stack.registry,
        &ios,
        json!({"person_id": "erin", "platform": "apns", "e2e_key": ios_b64, "e2e_algorithm": "A256GCM", "e2e_kid": "erin-2026-12"}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = put(
        &stack.registry,
        &android,
        json!({"person_id": "erin", "platform": "fcm", "e2e_key": android_b64}),
    )
    .await;
    assert_eq!(status, 201);
    // A device of the encrypting app without a key gets nothing.
    stack.register_ios("erin", &apns_token(3)).await;

    // A Webex call: the APNs app's policy encrypts; the FCM app has none, so its payload
    // stays byte for byte what Webex sent.
    let apns = apns_payload("secret-call");
    let fcm = fcm_payload("secret-call");
    stack.call("erin", Some(&apns), Some(&fcm)).await;
    let pushed = stack
        .providers
        .get::<MockApns>()
        .wait_delivered(1, WAIT)
        .await;
    let (body, jwe) = jwe_of_apns(&pushed[0].body);
    assert_eq!(pushed[0].path, format!("/3/device/{ios}"));
    assert_eq!(body["aps"], json!({}), "aps stays in clear");
    assert!(body.get("callId").is_none() && body.get("caller").is_none());
    let (plain, header) = open(&ios_key, &jwe).expect("the device's key opens it");
    assert_eq!(String::from_utf8(plain).expect("utf-8"), apns);
    assert_eq!(header.algorithm(), Some("dir"));
    assert_eq!(header.content_encryption(), Some("A256GCM"));
    assert_eq!(header.key_id(), Some("erin-2026-12"));
    assert!(open(&android_key, &jwe).is_err(), "a wrong key fails");
    let mut tampered: Vec<String> = jwe.split('.').map(str::to_owned).collect();
    let mut ciphertext = URL_SAFE_NO_PAD.decode(&tampered[3]).expect("b64");
    ciphertext[0] ^= 1;
    tampered[3] = URL_SAFE_NO_PAD.encode(ciphertext);
    assert!(
        open(&ios_key, &tampered.join(".")).is_err(),
        "a changed byte fails"
    );
    let sent = stack
        .providers
        .get::<MockFcm>()
        .wait_delivered(1, WAIT)
        .await;
    let message: Value = serde_json::from_slice(&sent[0].body).expect("FCM body");
    assert_eq!(
        message["message"]["data"],
        serde_json::from_str::<Value>(&fcm).expect("json")
    );
    Stack::wait_metrics(
        &stack.registry,
        &[r#"pushline_fanout_skipped_total{platform="apns",reason="no_key"} 1"#],
    )
    .await;

    // A producer asks for encryption per message: the FCM device's data map is sealed too.
    let data = r#"{"type":"message","text":"for Erin only"}"#;
    notify(
        &stack,
        json!({"person_ids": ["erin"], "class": "alert", "fcm": {"data": serde_json::from_str::<Value>(data).expect("json")}, "idempotency_key": "enc-1", "encrypt": true}),
    )
    .await;
    let sent = stack
        .providers
        .get::<MockFcm>()
        .wait_delivered(2, WAIT)
        .await;
    let (map, jwe) = jwe_of_fcm(&sent[1].body);
    assert_eq!(
        map.as_object().expect("map").len(),
        1,
        "only the JWE: {map}"
    );
    let (plain, header) = open(&android_key, &jwe).expect("opens");
    assert_eq!(
        serde_json::from_slice::<Value>(&plain).expect("json"),
        serde_json::from_str::<Value>(data).expect("json")
    );
    assert_eq!(
        header.key_id().map(str::len),
        Some(16),
        "a default kid is derived from the key"
    );
    assert!(open(&ios_key, &jwe).is_err());

    // A payload that would not fit once encrypted is refused up front.
    let big = json!({"m": "x".repeat(3_000)});
    let response = reqwest::Client::new()
        .post(stack.ingest.url("/v1/notify"))
        .bearer_auth(PRODUCER_KEY)
        .json(&json!({"person_ids": ["erin"], "class": "alert", "fcm": {"data": big}, "idempotency_key": "enc-2", "encrypt": true}))
        .send()
        .await
        .expect("notify");
    assert_eq!(response.status(), 422);
    assert!(
        response
            .text()
            .await
            .expect("body")
            .contains("once encrypted")
    );
}

#[tokio::test]
async fn a_devices_key_is_never_returned_nor_stored_in_clear_and_survives_kek_rotation() {
    let mut stack = Stack::start_with(|c| {
        c.registry.devices.key_encryption_keys = vec![kek("kek-a", 1)];
    })
    .await;
    let (key, b64) = device_key(0x33);
    let forms = [b64.clone(), URL_SAFE_NO_PAD.encode(key), hex::encode(key)];
    let token = fcm_token(7);
    let (status, answer) = put(
        &stack.registry,
        &token,
        json!({"person_id": "finn", "platform": "fcm", "e2e_key": b64}),
    )
    .await;
    assert_eq!(status, 201);
    let (devices, listed) = list(&stack.registry, "finn").await;
    assert_eq!(devices[0]["e2e"]["algorithm"], "A256GCM");
    assert!(devices[0]["e2e"]["kid"].is_string());
    let dump = redis_dump(&stack.env).await;
    for form in &forms {
        assert!(
            !answer.contains(form.as_str()),
            "PUT answer shows the key: {answer}"
        );
        assert!(
            !listed.contains(form.as_str()),
            "GET answer shows the key: {listed}"
        );
        assert!(
            !dump.contains(form.as_str()),
            "Redis holds the key in clear:\n{dump}"
        );
    }
    assert!(dump.contains("\"sealed\":\"v1.kek-a."), "{dump}");

    // Rotation: a new KEK seals, the old one still opens what it sealed.
    let mut config = stack.configs.registry.clone();
    config.devices.key_encryption_keys = vec![kek("kek-b", 2), kek("kek-a", 1)];
    let rotated = start_registry(config).await;
    rotated.wait_ready().await;
    std::mem::replace(&mut stack.registry, rotated).stop().await;
    notify(
        &stack,
        json!({"person_ids": ["finn"], "class": "alert", "fcm": {"data": {"m": "after rotation"}}, "idempotency_key": "rot-1", "encrypt": true}),
    )
    .await;
    let sent = stack
        .providers
        .get::<MockFcm>()
        .wait_delivered(1, WAIT)
        .await;
    let (_, jwe) = jwe_of_fcm(&sent[0].body);
    let (plain, _) = open(&key, &jwe).expect("opens after rotation");
    assert_eq!(plain, br#"{"m":"after rotation"}"#);
    let (status, _) = put(
        &stack.registry,
        &token,
        json!({"person_id": "finn", "platform": "fcm", "e2e_key": b64}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        redis_dump(&stack.env)
            .await
            .contains("\"sealed\":\"v1.kek-b.")
    );

    // Deleting the device deletes its key.
    assert_eq!(
        delete(&stack.registry, &format!("/v1/devices/{token}")).await,
        204
    );
    assert!(!redis_dump(&stack.env).await.contains("sealed"));

    // Without a KEK there is nowhere safe to keep a key: refused, not stored in clear.
    let env = Env::start();
    let bare = start_registry(env.registry_config()).await;
    bare.wait_ready().await;
    let (status, answer) = put(
        &bare,
        &token,
        json!({"person_id": "finn", "platform": "fcm", "e2e_key": b64}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(answer.contains("key_encryption_keys"), "{answer}");
    let (status, answer) = put(
        &stack.registry,
        &token,
        json!({"person_id": "finn", "platform": "fcm", "e2e_key": STANDARD.encode([1u8; 16])}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(answer.contains("128 bits; A256GCM needs 256"), "{answer}");
}

#[tokio::test]
async fn a_shared_device_rings_every_person_on_it_and_a_logout_removes_only_that_person() {
    let stack = Stack::start_with(|c| {
        c.registry.devices.apps.insert(
            APNS_APP.into(),
            registry::config::AppPolicy {
                multi_user: true,
                ..Default::default()
            },
        );
    })
    .await;
    let shared = apns_token(5);
    stack.register_ios("ann", &shared).await;
    stack.register_ios("ben", &shared).await;
    stack
        .call("ann", Some(&apns_payload("for-ann")), None)
        .await;
    stack
        .call("ben", Some(&apns_payload("for-ben")), None)
        .await;
    let pushed = stack
        .providers
        .get::<MockApns>()
        .wait_delivered(2, WAIT)
        .await;
    let bodies: Vec<String> = pushed
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert!(
        pushed
            .iter()
            .all(|r| r.path == format!("/3/device/{shared}"))
    );
    assert!(
        bodies.iter().any(|b| b.contains("for-ann"))
            && bodies.iter().any(|b| b.contains("for-ben"))
    );

    // Ben logs out of the shared phone: Ann keeps it.
    assert_eq!(
        delete(
            &stack.registry,
            &format!("/v1/devices/{shared}?person_id=ben")
        )
        .await,
        204
    );
    assert_eq!(
        tokens(&list(&stack.registry, "ann").await.0),
        vec![shared.clone()]
    );
    assert!(list(&stack.registry, "ben").await.0.is_empty());
    stack
        .call("ben", Some(&apns_payload("ben-again")), None)
        .await;
    Stack::wait_metrics(
        &stack.registry,
        &[r#"pushline_fanout_events_total{outcome="no_devices"} 1"#],
    )
    .await;
    stack
        .call("ann", Some(&apns_payload("ann-again")), None)
        .await;
    let pushed = stack
        .providers
        .get::<MockApns>()
        .wait_delivered(3, WAIT)
        .await;
    assert!(String::from_utf8_lossy(&pushed[2].body).contains("ann-again"));
}

#[tokio::test]
async fn a_new_device_silences_the_old_one_under_the_single_device_policy() {
    let stack = Stack::start_with(|c| {
        c.registry.devices.apps.insert(
            APNS_APP.into(),
            registry::config::AppPolicy {
                single_device: true,
                ..Default::default()
            },
        );
    })
    .await;
    let (old, new) = (apns_token(1), apns_token(2));
    for (token, device) in [(&old, "old-iphone"), (&new, "new-iphone")] {
        let (status, _) = put(
            &stack.registry,
            token,
            json!({"person_id": "cat", "platform": "apns", "device_id": device}),
        )
        .await;
        assert_eq!(status, 201);
    }
    // Another app's device of the same person is not this policy's business.
    stack.register_android("cat", &fcm_token(3)).await;
    assert_eq!(
        tokens(&list(&stack.registry, "cat").await.0),
        vec![new.clone(), fcm_token(3)]
    );
    stack.call("cat", Some(&apns_payload("c1")), None).await;
    stack
        .providers
        .get::<MockApns>()
        .wait_delivered(1, WAIT)
        .await;
    Stack::wait_metrics(
        &stack.registry,
        &[
            r#"pushline_fanout_jobs_total{class="call",platform="apns"} 1"#,
            r#"pushline_fanout_events_total{outcome="fanned_out"} 1"#,
            r#"pushline_devices_removed_total{reason="replaced"} 1"#,
        ],
    )
    .await;
    let pushed = stack.providers.get::<MockApns>().requests();
    assert!(
        pushed.iter().all(|r| r.path == format!("/3/device/{new}")),
        "{pushed:?}"
    );
}

#[tokio::test]
async fn a_phones_tokens_are_one_device_counted_once_and_removed_together() {
    let env = Env::start();
    let mut config = env.registry_config();
    config.devices.max_per_person = 1;
    let registry = start_registry(config).await;
    registry.wait_ready().await;
    let (voip, alert) = (apns_token(1), apns_token(2));
    for (token, channel) in [(&voip, "voip"), (&alert, "alert")] {
        let (status, _) = put(
            &registry,
            token,
            json!({"person_id": "dan", "platform": "apns", "channel": channel, "device_id": "dans-iphone"}),
        )
        .await;
        assert_eq!(status, 201);
    }
    let (devices, _) = list(&registry, "dan").await;
    assert_eq!(
        tokens(&devices),
        vec![voip.clone(), alert.clone()],
        "one device, not two"
    );
    assert!(devices.iter().all(|d| d["device_id"] == "dans-iphone"));

    assert_eq!(
        delete(&registry, &format!("/v1/devices/{alert}")).await,
        204
    );
    assert!(
        list(&registry, "dan").await.0.is_empty(),
        "the VoIP token went with it"
    );
    assert_eq!(
        delete(&registry, &format!("/v1/devices/{voip}")).await,
        404,
        "its index went too"
    );

    // The sample server's body says where a misplaced token belongs.
    let response = reqwest::Client::new()
        .post(registry.url("/register"))
        .bearer_auth(API_KEY)
        .json(&json!({"personId": "dan", "msgToken": fcm_token(4)}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 400);
    let text = response.text().await.expect("body");
    assert!(text.contains("send it as fcmToken"), "{text}");
}

#[tokio::test]
async fn the_device_limit_can_refuse_instead_of_evicting() {
    let env = Env::start();
    let mut config = env.registry_config();
    config.devices.max_per_person = 1;
    config.devices.apps.insert(
        APNS_APP.into(),
        registry::config::AppPolicy {
            device_limit: registry::config::DeviceLimit::Refuse,
            ..Default::default()
        },
    );
    let registry = start_registry(config).await;
    registry.wait_ready().await;
    let body = |device: &str| json!({"person_id": "eva", "platform": "apns", "device_id": device});
    assert_eq!(put(&registry, &apns_token(1), body("first")).await.0, 201);
    let (status, answer) = put(&registry, &apns_token(2), body("second")).await;
    assert_eq!(status, 409, "{answer}");
    let answer: Value = serde_json::from_str(&answer).expect("json");
    assert_eq!(answer["error"]["code"], "device_limit");
    assert!(
        answer["error"]["message"]
            .as_str()
            .expect("message")
            .starts_with("Device limit exceeded")
    );
    assert_eq!(tokens(&list(&registry, "eva").await.0), vec![apns_token(1)]);
    // The device already there refreshes, and gains a token, without hitting the limit.
    assert_eq!(put(&registry, &apns_token(1), body("first")).await.0, 200);
    assert_eq!(put(&registry, &apns_token(3), body("first")).await.0, 201);
}

#[tokio::test]
async fn registrations_written_by_the_previous_version_keep_working() {
    let stack = Stack::start().await;
    let prefix = &stack.configs.registry.redis.prefix;
    let now = pipeline::contract::now_ms();
    let (ios, android) = (apns_token(9), fcm_token(9));
    let mut redis = redis::Client::open(stack.env.redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    // Exactly what the previous version wrote: no device ids, a plain `e2e_key`, a
    // one-line index.
    let keys = registry::store::person_keys(prefix, "gus");
    for (token, attrs) in [
        (
            &ios,
            format!(
                r#"{{"platform":"apns","channel":"voip","app":"{APNS_APP}","environment":"production","e2e_key":"legacy-plaintext-key"}}"#
            ),
        ),
        (
            &android,
            format!(
                r#"{{"platform":"fcm","channel":"alert","app":"{FCM_APP}","environment":"production"}}"#
            ),
        ),
    ] {
        let () = redis::pipe()
            .hset(&keys.devices, token, attrs)
            .ignore()
            .zadd(&keys.refreshed, token, now)
            .ignore()
            .hset(&keys.created, token, now)
            .ignore()
            .set(registry::store::token_key(prefix, token), "gus")
            .ignore()
            .query_async(&mut redis)
            .await
            .expect("write old records");
    }

    stack
        .call("gus", Some(&apns_payload("old")), Some(&fcm_payload("old")))
        .await;
    stack
        .providers
        .get::<MockApns>()
        .wait_delivered(1, WAIT)
        .await;
    stack
        .providers
        .get::<MockFcm>()
        .wait_delivered(1, WAIT)
        .await;
    let (devices, text) = list(&stack.registry, "gus").await;
    assert_eq!(devices.len(), 2);
    assert!(!text.contains("legacy-plaintext-key"), "{text}");
    assert!(devices.iter().all(|d| d["device_id"].is_string()));
    assert_ne!(
        devices[0]["device_id"], devices[1]["device_id"],
        "each its own device"
    );

    // Registering again rewrites the record in today's form; deleting still works.
    stack.register_ios("gus", &ios).await;
    assert!(
        !redis_dump(&stack.env)
            .await
            .contains("legacy-plaintext-key")
    );
    assert_eq!(
        delete(&stack.registry, &format!("/v1/devices/{android}")).await,
        204
    );
    assert_eq!(tokens(&list(&stack.registry, "gus").await.0), vec![ios]);
}

/// A registry (real NATS and Redis) whose iOS app is `multi_user`: one phone, several
/// persons.
async fn shared_device_registry(env: &Env) -> harness::services::Service {
    let mut config = env.registry_config();
    config.devices.apps.insert(
        APNS_APP.into(),
        registry::config::AppPolicy {
            multi_user: true,
            ..Default::default()
        },
    );
    let registry = start_registry(config).await;
    registry.wait_ready().await;
    registry
}

/// `person` registers `token` as part of the shared phone `device` with the test API key.
async fn register_on(
    registry: &harness::services::Service,
    token: &str,
    person: &str,
    device: &str,
    extra: Value,
) {
    let mut body = json!({"person_id": person, "platform": "apns", "device_id": device});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let (status, answer) = put(registry, token, body).await;
    assert!(status == 200 || status == 201, "{status} {answer}");
}

/// Whether `person`'s listing shows them as the active user of their one device (and,
/// when they are, since when).
async fn active_on(registry: &harness::services::Service, person: &str) -> (bool, Option<u64>) {
    let (devices, text) = list(registry, person).await;
    assert_eq!(devices.len(), 1, "{text}");
    let active = devices[0]["active"]
        .as_bool()
        .expect("`active` is a boolean");
    let since = devices[0]["active_since_ms"].as_u64();
    assert_eq!(active, since.is_some(), "since only when active: {text}");
    (active, since)
}

/// `PUT /v1/persons/{person}/devices/{device}/active` with `bearer`: status and body.
async fn switch_to(
    registry: &harness::services::Service,
    bearer: &str,
    person: &str,
    device: &str,
) -> (u16, Value) {
    let response = reqwest::Client::new()
        .put(registry.url(&format!("/v1/persons/{person}/devices/{device}/active")))
        .bearer_auth(bearer)
        .send()
        .await
        .expect("PUT active");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

#[tokio::test]
async fn the_last_person_to_register_on_a_shared_device_is_active_until_a_switch() {
    let env = Env::start();
    let registry = shared_device_registry(&env).await;
    let shared = apns_token(7);
    register_on(&registry, &shared, "ann", "family-ipad", json!({})).await;
    assert!(active_on(&registry, "ann").await.0, "alone on it");
    register_on(&registry, &shared, "ben", "family-ipad", json!({})).await;
    assert!(active_on(&registry, "ben").await.0, "Ben signed in last");
    assert!(
        !active_on(&registry, "ann").await.0,
        "Ann is listed inactive"
    );

    // A refresh that says so leaves the active user alone; a plain one signs in.
    register_on(
        &registry,
        &shared,
        "ann",
        "family-ipad",
        json!({"activate": false}),
    )
    .await;
    assert!(active_on(&registry, "ben").await.0);
    assert!(!active_on(&registry, "ann").await.0);

    // The explicit switch makes Ann active; the answer says since when.
    let (status, answer) = switch_to(&registry, API_KEY, "ann", "family-ipad").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["active"], true);
    assert_eq!(answer["app"], APNS_APP);
    let (active, since) = active_on(&registry, "ann").await;
    assert!(active);
    assert_eq!(since, answer["active_since_ms"].as_u64());
    assert!(!active_on(&registry, "ben").await.0);

    // Nobody can be switched onto a device they do not hold.
    let (status, answer) = switch_to(&registry, API_KEY, "cat", "family-ipad").await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["error"]["code"], "not_found");
    assert!(active_on(&registry, "ann").await.0, "nothing changed");
}

#[tokio::test]
async fn when_the_active_user_leaves_a_shared_device_the_latest_remaining_registrant_is_active() {
    let env = Env::start();
    let registry = shared_device_registry(&env).await;
    let shared = apns_token(8);
    for person in ["ann", "ben", "cat"] {
        register_on(&registry, &shared, person, "family-ipad", json!({})).await;
        // Registrations a millisecond apart, so "most recent" has one answer.
        let registered = pipeline::contract::now_ms();
        while pipeline::contract::now_ms() <= registered {
            tokio::task::yield_now().await;
        }
    }
    let (status, answer) = switch_to(&registry, API_KEY, "ann", "family-ipad").await;
    assert_eq!(status, 200, "{answer}");
    assert!(active_on(&registry, "ann").await.0);

    // Ann logs out: Cat, who registered after Ben, is the device's active user.
    assert_eq!(
        delete(&registry, &format!("/v1/devices/{shared}?person_id=ann")).await,
        204
    );
    assert!(list(&registry, "ann").await.0.is_empty());
    assert!(active_on(&registry, "cat").await.0);
    assert!(!active_on(&registry, "ben").await.0);

    // Cat logs out too: Ben is the one left.
    assert_eq!(
        delete(&registry, &format!("/v1/devices/{shared}?person_id=cat")).await,
        204
    );
    assert!(active_on(&registry, "ben").await.0);

    // Ann signs in again: the record that named her before her logout does not decide,
    // her new registration does.
    register_on(&registry, &shared, "ann", "family-ipad", json!({})).await;
    assert!(active_on(&registry, "ann").await.0);
    assert!(!active_on(&registry, "ben").await.0);
}

#[tokio::test]
async fn a_shared_device_registered_before_active_users_existed_has_its_latest_registrant_active() {
    let env = Env::start();
    let registry = shared_device_registry(&env).await;
    let prefix = format!("{}:", env.prefix);
    let now = pipeline::contract::now_ms();
    let shared = apns_token(9);
    let mut redis = redis::Client::open(env.redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    // What the previous version wrote: both persons' records and a shared index, no
    // device record. Dan refreshed a minute after Eve.
    let attrs = format!(
        r#"{{"platform":"apns","channel":"voip","app":"{APNS_APP}","environment":"production","device":"old-ipad"}}"#
    );
    for (person, at) in [("eve", now - 120_000), ("dan", now - 60_000)] {
        let keys = registry::store::person_keys(&prefix, person);
        let () = redis::pipe()
            .hset(&keys.devices, &shared, &attrs)
            .ignore()
            .zadd(&keys.refreshed, &shared, at)
            .ignore()
            .hset(&keys.created, &shared, at)
            .ignore()
            .query_async(&mut redis)
            .await
            .expect("write old records");
    }
    let () = redis::cmd("SET")
        .arg(registry::store::token_key(&prefix, &shared))
        .arg("eve\tdan")
        .query_async(&mut redis)
        .await
        .expect("index");
    assert!(active_on(&registry, "dan").await.0, "the latest registrant");
    assert!(!active_on(&registry, "eve").await.0);
    assert!(
        !redis_dump(&env).await.contains(":device:"),
        "reading wrote nothing"
    );
    // And the switch works on such a device.
    let (status, answer) = switch_to(&registry, API_KEY, "eve", "old-ipad").await;
    assert_eq!(status, 200, "{answer}");
    assert!(active_on(&registry, "eve").await.0);
    assert!(!active_on(&registry, "dan").await.0);
}
