//! The registry against real Redis and NATS JetStream: device API, policies, fan-out and
//! feedback pruning.

use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use dispatcher_apns::spec::ApnsPart;
use dispatcher_fcm::spec::FcmPart;
use harness::services::{API_KEY, APNS_APP, Env, FCM_APP, Service, start_registry};
use harness::wait;
use pipeline::contract::{Class, Environment, Event, Feedback, Parts, PushJob, VERSION, now_ms};
use pipeline::topology::StreamKind;
use registry::store::Rules;
use serde_json::value::RawValue;
use serde_json::{Value, json};

fn apns_token(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn fcm_token(n: u8) -> String {
    format!("fcm-token:{n}-APA91bHPRgkFLJu6ck_q")
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn put_device(registry: &Service, token: &str, body: Value) -> reqwest::Response {
    client()
        .put(registry.url(&format!("/v1/devices/{token}")))
        .bearer_auth(API_KEY)
        .json(&body)
        .send()
        .await
        .expect("PUT device")
}

async fn devices(registry: &Service, person: &str) -> Vec<Value> {
    let body: Value = client()
        .get(registry.url(&format!("/v1/persons/{person}/devices")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("GET devices")
        .json()
        .await
        .expect("json");
    body["devices"].as_array().cloned().unwrap_or_default()
}

fn tokens(devices: &[Value]) -> Vec<String> {
    let mut t: Vec<String> = devices
        .iter()
        .map(|d| d["token"].as_str().unwrap_or_default().to_owned())
        .collect();
    t.sort();
    t
}

async fn started(env: &Env) -> Service {
    let registry = start_registry(env.registry_config()).await;
    registry.wait_ready().await;
    registry
}

fn call_event(id: &str, person: &str, deadline_ms: u64) -> Event {
    Event {
        v: VERSION,
        id: id.into(),
        source: "webex".into(),
        resource: "telephony_push".into(),
        event: "updated".into(),
        person_id: person.into(),
        class: Class::Call,
        received_at_ms: now_ms(),
        deadline_ms,
        parts: Parts::from([
            (
                "apns".to_owned(),
                RawValue::from_string(
                    r#"{"payload":{"aps":{},"k":1},"push_type":"voip","priority":10}"#.into(),
                )
                .expect("raw"),
            ),
            (
                "fcm".to_owned(),
                RawValue::from_string(r#"{"data":{"k":"1"},"priority":"high"}"#.into())
                    .expect("raw"),
            ),
        ]),
        trace_id: None,
        encrypt: false,
    }
}

async fn publish_event(env: &Env, event: &Event) {
    let js = env.jetstream().await;
    js.publish(
        env.topology().event_subject(&event.source, &event.resource),
        serde_json::to_vec(event).expect("json").into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");
}

fn jobs(messages: &[StreamMessage]) -> Vec<(String, PushJob)> {
    messages
        .iter()
        .map(|m| {
            (
                m.subject.to_string(),
                serde_json::from_slice(&m.payload).expect("a PushJob"),
            )
        })
        .collect()
}

#[tokio::test]
async fn device_api_requires_an_api_key() {
    let env = Env::start();
    let registry = started(&env).await;
    let body = json!({"person_id": "p", "platform": "apns"});
    let no_key = client()
        .put(registry.url(&format!("/v1/devices/{}", apns_token(1))))
        .json(&body)
        .send()
        .await
        .expect("PUT");
    assert_eq!(no_key.status(), 401);
    let wrong = client()
        .put(registry.url(&format!("/v1/devices/{}", apns_token(1))))
        .bearer_auth("wrong")
        .json(&body)
        .send()
        .await
        .expect("PUT");
    assert_eq!(wrong.status(), 401);
    let error: Value = wrong.json().await.expect("json");
    assert_eq!(error["error"]["code"], "unauthorized");
    assert!(devices(&registry, "p").await.is_empty());
}

#[tokio::test]
async fn register_is_idempotent_and_delete_removes() {
    let env = Env::start();
    let registry = started(&env).await;
    let token = apns_token(1);
    let body = json!({"person_id": "alice", "platform": "apns", "channel": "voip", "environment": "sandbox"});
    assert_eq!(
        put_device(&registry, &token, body.clone()).await.status(),
        201
    );
    let again = put_device(&registry, &token, body).await;
    assert_eq!(again.status(), 200);
    let device: Value = again.json().await.expect("json");
    assert_eq!(device["app"], APNS_APP);
    assert_eq!(device["environment"], "sandbox");
    assert!(device["updated_at_ms"].as_u64() >= device["created_at_ms"].as_u64());
    assert_eq!(
        tokens(&devices(&registry, "alice").await),
        vec![token.clone()]
    );

    let deleted = client()
        .delete(registry.url(&format!("/v1/devices/{token}")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(deleted.status(), 204);
    assert!(devices(&registry, "alice").await.is_empty());
    let again = client()
        .delete(registry.url(&format!("/v1/devices/{token}")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(again.status(), 404);
}

#[tokio::test]
async fn bad_registrations_get_400_naming_the_field() {
    let env = Env::start();
    let registry = started(&env).await;
    let cases = [
        (
            "nothex",
            json!({"person_id": "p", "platform": "apns"}),
            "token",
        ),
        (
            &apns_token(1) as &str,
            json!({"person_id": "", "platform": "apns"}),
            "person_id",
        ),
        (
            &apns_token(1),
            json!({"person_id": "p", "platform": "apns", "app": "bad/app"}),
            "app",
        ),
        (
            &apns_token(1),
            json!({"person_id": "p", "platform": "carrier-pigeon"}),
            "platform",
        ),
        (
            &fcm_token(1),
            json!({"person_id": "p", "platform": "fcm", "channel": "voip"}),
            "channel",
        ),
    ];
    for (token, body, needle) in cases {
        let response = put_device(&registry, token, body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.expect("json");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(needle),
            "{body}: {error}"
        );
    }
    let not_json = client()
        .put(registry.url(&format!("/v1/devices/{}", apns_token(1))))
        .bearer_auth(API_KEY)
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .expect("PUT");
    assert_eq!(not_json.status(), 415);
}

#[tokio::test]
async fn the_sample_servers_register_body_registers_each_token() {
    let env = Env::start();
    let registry = started(&env).await;
    let body = json!({
        "email": "ada@example.com",
        "voipToken": apns_token(1),
        "msgToken": apns_token(2),
        "fcmToken": fcm_token(3),
        "personId": "ada",
    });
    let response = client()
        .post(registry.url("/register"))
        .bearer_auth(API_KEY)
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    let listed = devices(&registry, "ada").await;
    let by_token = |t: &str| {
        listed
            .iter()
            .find(|d| d["token"] == t)
            .cloned()
            .expect("registered")
    };
    assert_eq!(by_token(&apns_token(1))["channel"], "voip");
    assert_eq!(by_token(&apns_token(2))["channel"], "alert");
    assert_eq!(by_token(&fcm_token(3))["platform"], "fcm");
    assert_eq!(by_token(&fcm_token(3))["app"], FCM_APP);
    // The tokens one registration brought together are one device.
    let device = by_token(&apns_token(1))["device_id"].clone();
    assert!(device.is_string());
    assert!(
        listed.iter().all(|d| d["device_id"] == device),
        "{listed:?}"
    );

    // Logging the phone out removes all its tokens, whichever one names it.
    let deleted = client()
        .delete(registry.url(&format!("/register/{}", apns_token(2))))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(deleted.status(), 204);
    assert_eq!(devices(&registry, "ada").await, Vec::<Value>::new());
}

#[tokio::test]
async fn the_device_cap_evicts_the_least_recently_refreshed() {
    let env = Env::start();
    let mut config = env.registry_config();
    config.devices.max_per_person = 3;
    let registry = start_registry(config).await;
    registry.wait_ready().await;
    for n in 1..=3 {
        put_device(
            &registry,
            &apns_token(n),
            json!({"person_id": "bob", "platform": "apns"}),
        )
        .await;
    }
    // Refresh 1, so 2 is now the least recently refreshed.
    put_device(
        &registry,
        &apns_token(1),
        json!({"person_id": "bob", "platform": "apns"}),
    )
    .await;
    put_device(
        &registry,
        &apns_token(4),
        json!({"person_id": "bob", "platform": "apns"}),
    )
    .await;
    assert_eq!(
        tokens(&devices(&registry, "bob").await),
        [apns_token(1), apns_token(3), apns_token(4)]
    );
    assert!(
        registry
            .metrics()
            .await
            .contains(r#"pushline_devices_removed_total{reason="evicted"} 1"#)
    );
}

#[tokio::test]
async fn a_token_registered_for_another_person_moves_to_them() {
    let env = Env::start();
    let registry = started(&env).await;
    let token = apns_token(7);
    put_device(
        &registry,
        &token,
        json!({"person_id": "old-owner", "platform": "apns"}),
    )
    .await;
    put_device(
        &registry,
        &token,
        json!({"person_id": "new-owner", "platform": "apns"}),
    )
    .await;
    assert!(devices(&registry, "old-owner").await.is_empty());
    assert_eq!(tokens(&devices(&registry, "new-owner").await), [token]);
}

#[tokio::test]
async fn an_event_fans_out_one_job_per_matching_device() {
    let env = Env::start();
    let registry = started(&env).await;
    let person = "carol";
    put_device(&registry, &apns_token(1), json!({"person_id": person, "platform": "apns", "channel": "voip", "environment": "production"})).await;
    put_device(&registry, &apns_token(2), json!({"person_id": person, "platform": "apns", "channel": "voip", "environment": "sandbox"})).await;
    put_device(
        &registry,
        &apns_token(3),
        json!({"person_id": person, "platform": "apns", "channel": "alert"}),
    )
    .await;
    put_device(
        &registry,
        &fcm_token(4),
        json!({"person_id": person, "platform": "fcm"}),
    )
    .await;
    put_device(
        &registry,
        &apns_token(5),
        json!({"person_id": "someone-else", "platform": "apns"}),
    )
    .await;

    let event = call_event("evt-1", person, now_ms() + 60_000);
    publish_event(&env, &event).await;

    let apns = jobs(&env.wait_messages(StreamKind::Push("apns"), 2).await);
    let fcm = jobs(&env.wait_messages(StreamKind::Push("fcm"), 1).await);
    let subject = |env_name: &str| format!("{}push.apns.{env_name}", env.prefix);
    let production = apns
        .iter()
        .find(|(_, j)| j.token == apns_token(1))
        .expect("production job");
    assert_eq!(production.0, subject("production"));
    let sandbox = apns
        .iter()
        .find(|(_, j)| j.token == apns_token(2))
        .expect("sandbox job");
    assert_eq!(sandbox.0, subject("sandbox"));
    assert_eq!(sandbox.1.environment, Environment::Sandbox);
    let part: ApnsPart = serde_json::from_str(sandbox.1.part.get()).expect("apns part");
    assert_eq!(part.payload.get(), r#"{"aps":{},"k":1}"#);
    let (fcm_subject, fcm_job) = &fcm[0];
    assert_eq!(fcm_subject, &format!("{}push.fcm.production", env.prefix));
    assert_eq!(fcm_job.platform, "fcm");
    assert_eq!(fcm_job.app, FCM_APP);
    let part: FcmPart = serde_json::from_str(fcm_job.part.get()).expect("fcm part");
    assert_eq!(part.data.get(), r#"{"k":"1"}"#);
    assert_eq!(fcm_job.deadline_ms, event.deadline_ms);

    // Each job has its own de-duplication id; the event was acked and left EVENTS.
    let ids: std::collections::HashSet<String> = env
        .stream_messages(StreamKind::Push("apns"))
        .await
        .iter()
        .map(|m| m.headers.get("Nats-Msg-Id").expect("msg id").to_string())
        .collect();
    assert_eq!(ids.len(), 2);
    env.wait_messages(StreamKind::Events, 0).await;
}

#[tokio::test]
async fn a_person_without_devices_and_an_expired_event_are_counted_not_failed() {
    let env = Env::start();
    let registry = started(&env).await;
    put_device(
        &registry,
        &apns_token(1),
        json!({"person_id": "dave", "platform": "apns"}),
    )
    .await;
    publish_event(
        &env,
        &call_event("nobody", "no-such-person", now_ms() + 60_000),
    )
    .await;
    publish_event(
        &env,
        &call_event("late", "dave", now_ms().saturating_sub(1)),
    )
    .await;
    wait::until_true("both events counted", Duration::from_secs(10), || async {
        let m = registry.metrics().await;
        m.contains(r#"pushline_fanout_events_total{outcome="no_devices"} 1"#)
            && m.contains(r#"pushline_fanout_events_total{outcome="expired"} 1"#)
    })
    .await;
    env.wait_messages(StreamKind::Events, 0).await;
    assert!(
        env.stream_messages(StreamKind::Push("apns"))
            .await
            .is_empty()
    );
    assert!(env.stream_messages(StreamKind::Dead).await.is_empty());
}

#[tokio::test]
async fn a_malformed_event_is_dead_lettered_with_its_reason() {
    let env = Env::start();
    let _registry = started(&env).await;
    let js = env.jetstream().await;
    js.publish(
        env.topology().event_subject("webex", "telephony_push"),
        "not an event".into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");
    let dead = env.wait_messages(StreamKind::Dead, 1).await;
    let letter: Value = serde_json::from_slice(&dead[0].payload).expect("json");
    assert_eq!(letter["stage"], "fanout");
    assert_eq!(letter["reason"], "malformed");
    assert!(letter["message_base64"].is_string());
    env.wait_messages(StreamKind::Events, 0).await;
}

async fn feedback(env: &Env, token: &str, provider_timestamp_ms: Option<u64>) {
    let feedback = Feedback {
        v: VERSION,
        platform: "apns".into(),
        token: token.into(),
        app: APNS_APP.into(),
        reason: "Unregistered".into(),
        provider_timestamp_ms,
        observed_at_ms: now_ms(),
        event_id: None,
    };
    let js = env.jetstream().await;
    js.publish(
        env.topology().feedback_subject("apns"),
        serde_json::to_vec(&feedback).expect("json").into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");
}

#[tokio::test]
async fn feedback_prunes_a_token_but_not_one_registered_again_later() {
    let env = Env::start();
    let registry = started(&env).await;
    let stale = apns_token(1);
    let renewed = apns_token(2);
    put_device(
        &registry,
        &stale,
        json!({"person_id": "erin", "platform": "apns"}),
    )
    .await;
    let before_renewal = now_ms().saturating_sub(1);
    put_device(
        &registry,
        &renewed,
        json!({"person_id": "erin", "platform": "apns"}),
    )
    .await;

    feedback(&env, &stale, None).await;
    // Apple says `renewed` went invalid before it was registered again: keep it.
    feedback(&env, &renewed, Some(before_renewal.saturating_sub(1_000))).await;

    wait::until_true("feedback handled", Duration::from_secs(10), || async {
        let m = registry.metrics().await;
        m.contains(r#"pushline_feedback_total{outcome="pruned",platform="apns"} 1"#)
            && m.contains(
                r#"pushline_feedback_total{outcome="kept_reregistered",platform="apns"} 1"#,
            )
    })
    .await;
    assert_eq!(tokens(&devices(&registry, "erin").await), [renewed]);

    // The next call for erin skips the pruned token.
    publish_event(&env, &call_event("after-prune", "erin", now_ms() + 60_000)).await;
    let jobs = jobs(&env.wait_messages(StreamKind::Push("apns"), 1).await);
    assert_eq!(jobs[0].1.token, apns_token(2));
}

#[tokio::test]
async fn readyz_fails_when_redis_is_down() {
    let mut env = Env::start();
    let registry = started(&env).await;
    env.redis.stop();
    wait::until_true(
        "/readyz to report Redis down",
        Duration::from_secs(10),
        || async {
            let response = reqwest::get(registry.admin_url("/readyz"))
                .await
                .expect("readyz");
            if response.status() != 503 {
                return false;
            }
            let body: Value = response.json().await.expect("json");
            body["problem"]
                .as_str()
                .unwrap_or_default()
                .contains("Redis")
        },
    )
    .await;
    // The API says so too, with a JSON error, not a hang or a 500.
    let response = put_device(
        &registry,
        &apns_token(1),
        json!({"person_id": "p", "platform": "apns"}),
    )
    .await;
    assert_eq!(response.status(), 503);
}

/// A store on the test's Redis (at most 10 devices, one hour's TTL) and the attributes
/// of an iOS VoIP device.
fn store_with_an_hour_ttl(
    config: &registry::config::Config,
) -> (registry::store::Store, registry::store::DeviceAttrs) {
    use registry::store::{Channel, DeviceAttrs, Policy, Store};
    let store = Store::new(
        registry::connect_redis(&config.redis).expect("redis"),
        config.redis.prefix.clone(),
        Policy {
            max_devices_per_person: 10,
            ttl: Duration::from_secs(3_600),
        },
    );
    let attrs = DeviceAttrs {
        platform: "apns".into(),
        channel: Channel::Voip,
        app: APNS_APP.into(),
        environment: Environment::Production,
        device_id: None,
        e2e: None,
        keys: None,
    };
    (store, attrs)
}

/// Thirty devices registered in one millisecond with room for three: each registration
/// evicts the one registered earliest, never a later one (the millisecond timestamps tie,
/// the order of the registrations does not).
#[tokio::test]
async fn devices_registered_in_one_millisecond_are_evicted_oldest_first() {
    use registry::store::{Policy, Store};
    let env = Env::start();
    let config = env.registry_config();
    let (_, attrs) = store_with_an_hour_ttl(&config);
    let store = Store::new(
        registry::connect_redis(&config.redis).expect("redis"),
        config.redis.prefix.clone(),
        Policy {
            max_devices_per_person: 3,
            ttl: Duration::from_secs(3_600),
        },
    );
    let t0 = 1_700_000_000_000u64;
    for n in 1..=30u8 {
        store
            .register(&apns_token(n), "hana", &attrs, t0, Rules::default())
            .await
            .expect("register");
        let mut live: Vec<String> = store
            .devices("hana", t0)
            .await
            .expect("devices")
            .into_iter()
            .map(|device| device.token)
            .collect();
        live.sort();
        let mut newest: Vec<String> = (n.saturating_sub(2).max(1)..=n).map(apns_token).collect();
        newest.sort();
        assert_eq!(live, newest, "after registration {n}");
    }
}

#[tokio::test]
async fn registrations_expire_unless_refreshed_within_the_ttl() {
    let env = Env::start();
    let config = env.registry_config();
    let (store, attrs) = store_with_an_hour_ttl(&config);
    let t0 = 1_700_000_000_000u64;
    let hour = 3_600_000u64;
    store
        .register(&apns_token(1), "gina", &attrs, t0, Rules::default())
        .await
        .expect("register");
    store
        .register(&apns_token(2), "gina", &attrs, t0, Rules::default())
        .await
        .expect("register");
    // Token 2 is refreshed half-way through its TTL; token 1 is not.
    store
        .register(
            &apns_token(2),
            "gina",
            &attrs,
            t0 + hour / 2,
            Rules::default(),
        )
        .await
        .expect("refresh");

    let later = t0 + hour + 1;
    let live: Vec<String> = store
        .devices("gina", later)
        .await
        .expect("devices")
        .into_iter()
        .map(|d| d.token)
        .collect();
    assert_eq!(live, vec![apns_token(2)]);

    // The next write for the person removes the expired registration for good.
    let registered = store
        .register(&apns_token(3), "gina", &attrs, later, Rules::default())
        .await
        .expect("register");
    assert_eq!(
        registered.removed,
        vec![(registry::store::Removal::Expired, apns_token(1))]
    );
    assert_eq!(
        store.owners(&apns_token(1)).await.expect("owner"),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn when_the_active_users_registration_expires_the_holder_refreshed_last_is_active() {
    use registry::store::{ActivateError, Active};
    let env = Env::start();
    let config = env.registry_config();
    let (store, mut attrs) = store_with_an_hour_ttl(&config);
    attrs.device_id = Some("family-ipad".into());
    let shared = Rules {
        multi_user: true,
        ..Rules::default()
    };
    let t0 = 1_700_000_000_000u64;
    let hour = 3_600_000u64;
    let token = apns_token(1);
    store
        .register(&token, "ann", &attrs, t0, shared)
        .await
        .expect("register");
    store
        .register(&token, "ben", &attrs, t0 + 1, shared)
        .await
        .expect("register");
    // Ann's app refreshes in the background without switching; Ben's never does.
    let background = Rules {
        keep_active: true,
        ..shared
    };
    store
        .register(&token, "ann", &attrs, t0 + hour / 2, background)
        .await
        .expect("refresh");
    assert_eq!(
        store
            .active(APNS_APP, "family-ipad", t0 + hour / 2)
            .await
            .expect("read"),
        Some(Active {
            person_id: "ben".into(),
            since_ms: t0 + 1
        })
    );

    let later = t0 + hour + 2;
    assert_eq!(
        store
            .active(APNS_APP, "family-ipad", later)
            .await
            .expect("read"),
        Some(Active {
            person_id: "ann".into(),
            since_ms: t0 + hour / 2
        }),
        "Ben's registration expired: Ann, refreshed last, is active"
    );
    assert!(matches!(
        store
            .set_active(APNS_APP, "family-ipad", "ben", later)
            .await,
        Err(ActivateError::NotRegistered)
    ));
    assert!(
        matches!(
            store
                .set_active("com.example.other", "family-ipad", "ann", later)
                .await,
            Err(ActivateError::NotRegistered)
        ),
        "a device is its app and its id"
    );
    assert_eq!(
        store
            .set_active(APNS_APP, "family-ipad", "ann", later)
            .await
            .expect("switch"),
        Active {
            person_id: "ann".into(),
            since_ms: later
        }
    );
    assert_eq!(
        store
            .active(APNS_APP, "family-ipad", t0 + 2 * hour + 1)
            .await
            .expect("read"),
        None,
        "nobody refreshed: nobody holds the device"
    );
}

#[tokio::test]
async fn an_interrupted_move_is_finished_by_the_next_operation_on_the_token() {
    use registry::store::token_key;
    let env = Env::start();
    let config = env.registry_config();
    let (store, attrs) = store_with_an_hour_ttl(&config);
    let now = pipeline::contract::now_ms();
    let tokens_of = |person: &'static str| {
        let store = store.clone();
        async move {
            store
                .devices(person, now)
                .await
                .expect("devices")
                .into_iter()
                .map(|d| d.token)
                .collect::<Vec<_>>()
        }
    };
    let mut redis = redis::Client::open(env.redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let interrupt_move_to_bob = |token: String| {
        // What a crash right after the first step of moving `token` from alice to bob
        // leaves: the index records the intent, alice still holds the token.
        redis::cmd("SET")
            .arg(token_key(&config.redis.prefix, &token))
            .arg("bob\nalice")
            .to_owned()
    };

    // A registration repeats the move and finishes it.
    store
        .register(&apns_token(1), "alice", &attrs, now, Rules::default())
        .await
        .expect("register");
    let () = interrupt_move_to_bob(apns_token(1))
        .query_async(&mut redis)
        .await
        .expect("set");
    store
        .register(&apns_token(1), "bob", &attrs, now, Rules::default())
        .await
        .expect("register again");
    assert_eq!(tokens_of("alice").await, Vec::<String>::new());
    assert_eq!(tokens_of("bob").await, vec![apns_token(1)]);
    assert_eq!(
        store.owners(&apns_token(1)).await.expect("owner"),
        vec!["bob".to_owned()]
    );

    // A deletion removes the token from everyone the index names.
    store
        .register(&apns_token(2), "alice", &attrs, now, Rules::default())
        .await
        .expect("register");
    let () = interrupt_move_to_bob(apns_token(2))
        .query_async(&mut redis)
        .await
        .expect("set");
    store.remove(&apns_token(2)).await.expect("remove");
    assert!(!tokens_of("alice").await.contains(&apns_token(2)));
    assert!(!tokens_of("bob").await.contains(&apns_token(2)));
    assert_eq!(
        store.owners(&apns_token(2)).await.expect("owner"),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_base64_id_that_decodes_to_anything_but_a_person_is_refused_and_creates_no_key() {
    use base64::Engine as _;
    let env = Env::start();
    let registry = started(&env).await;
    let b64 = |uri: &str| base64::engine::general_purpose::STANDARD_NO_PAD.encode(uri);
    for uri in [
        "ciscospark://us/PEOPLE/x}\ty\nz",
        "ciscospark://us/ROOM/0b7a9f3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
        "ciscospark://us/PEOPLE/ALICE",
    ] {
        let response = put_device(
            &registry,
            &apns_token(1),
            json!({"person_id": b64(uri), "platform": "apns"}),
        )
        .await;
        assert_eq!(response.status(), 400, "{uri:?}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], "invalid");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("`person_id`"), "{message}");
        let sample = client()
            .post(registry.url("/register"))
            .bearer_auth(API_KEY)
            .json(&json!({"voipToken": apns_token(2), "personId": b64(uri)}))
            .send()
            .await
            .expect("POST /register");
        assert_eq!(sample.status(), 400, "{uri:?}");
    }
    let mut redis = redis::Client::open(env.redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut redis)
        .await
        .expect("KEYS");
    assert!(
        keys.iter()
            .all(|k| !k.contains("person:") && !k.contains("token:")),
        "{keys:?}"
    );

    // A Webex person id registered in base64 still rings when addressed by its uuid.
    let uuid = "0b7a9f3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
    let response = put_device(
        &registry,
        &apns_token(3),
        json!({"person_id": b64(&format!("ciscospark://us/PEOPLE/{uuid}")), "platform": "apns"}),
    )
    .await;
    assert_eq!(response.status(), 201);
    assert_eq!(tokens(&devices(&registry, uuid).await), [apns_token(3)]);
}
