//! The server-side inbox over the device API, end to end: an app with `inbox = true`
//! keeps every message to a person once (in-app and push alike, never a call), pages
//! newest first with cursors that hold while messages arrive, read state and deletion,
//! retention by count and by age, a person's inbox removed with the person, nobody
//! reading or changing another's; receipts and actions reach delivery status and the
//! producer's signed `message.action` callback; the inbox survives Redis and NATS
//! restarting.

use harness::mock::apns::MockApns;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use harness::services::{API_KEY, Env, INAPP_APP, PRODUCER_KEY, person_jwt};
use harness::stack::{Configs, Stack};
use hmac::{Hmac, Mac};
use pipeline::config::Secret;
use serde_json::{Value, json};
use sha2::Sha256;

const WAIT: Duration = Duration::from_secs(10);

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// The in-app app keeps an inbox, with `adjust` applied to its policy.
fn inbox_on(adjust: impl FnOnce(&mut registry::config::AppPolicy)) -> impl FnOnce(&mut Configs) {
    move |c| {
        let mut policy = registry::config::AppPolicy {
            inbox: true,
            ..Default::default()
        };
        adjust(&mut policy);
        c.registry.devices.apps.insert(INAPP_APP.into(), policy);
        c.registry.auth.jwt = harness::services::person_jwt_config();
    }
}

async fn stack() -> Stack {
    Stack::start_with(inbox_on(|_| {})).await
}

/// Sends an in-app message to `person`; its event id.
async fn message(stack: &Stack, person: &str, key: &str, payload: Value) -> String {
    stack
        .notify(
            PRODUCER_KEY,
            &json!({
                "person_ids": [person], "class": "alert", "idempotency_key": key,
                "ttl_secs": 60, "inapp": {"payload": payload},
            }),
        )
        .await
}

/// Sends a message to `person` and waits until the fan-out kept it, the `n`th message
/// this test's inbox kept. Messages sent a moment apart may be kept in either order
/// (`docs/inapp.md`, "The inbox"), so a test of the order sends the next only then.
async fn kept_in_turn(stack: &Stack, person: &str, key: &str, payload: Value, n: usize) -> String {
    let id = message(stack, person, key, payload).await;
    let kept = format!(r#"pushline_inbox_messages_total{{outcome="kept"}} {n}"#);
    Stack::wait_metrics(&stack.registry, &[&kept]).await;
    id
}

/// `person`'s side of the inbox API.
struct Person<'a> {
    stack: &'a Stack,
    jwt: String,
}

impl<'a> Person<'a> {
    fn new(stack: &'a Stack, person: &str) -> Self {
        Person {
            stack,
            jwt: person_jwt(person),
        }
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = http()
            .get(self.stack.registry.url(path))
            .bearer_auth(&self.jwt)
            .send()
            .await
            .expect("GET");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = http()
            .post(self.stack.registry.url(path))
            .bearer_auth(&self.jwt)
            .json(&body)
            .send()
            .await
            .expect("POST");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A page, asserting 200.
    async fn page(&self, query: &str) -> Value {
        let (status, page) = self.get(&format!("/v1/inbox/{INAPP_APP}{query}")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page
    }

    /// The ids of a page.
    async fn ids(&self, query: &str) -> Vec<String> {
        ids(&self.page(query).await)
    }

    /// Waits until the inbox holds `n` messages.
    async fn holding(&self, n: usize) -> Value {
        harness::wait::until("the inbox to hold its messages", WAIT, || async {
            let page = self.page("?limit=100").await;
            (page["messages"].as_array().map_or(0, Vec::len) == n).then_some(page)
        })
        .await
    }
}

fn ids(page: &Value) -> Vec<String> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn each_message_is_kept_once_per_person_newest_first_and_a_call_never() {
    let stack = stack().await;
    stack.register_inapp("ana", "install-ana-0001").await;
    // A second device of the same app: the message is still kept once.
    stack.register_inapp("ana", "install-ana-0002").await;
    stack
        .register(
            "fcm-token-of-ana-phone-0001",
            json!({"person_id": "ana", "platform": "fcm", "app": INAPP_APP, "device_id": "install-ana-0001"}),
        )
        .await;
    let first = kept_in_turn(&stack, "ana", "m1", json!({"title": "Hi", "n": 1.50}), 1).await;
    let pushed = stack
        .notify(
            PRODUCER_KEY,
            &json!({
                "person_ids": ["ana"], "class": "alert", "idempotency_key": "m2", "ttl_secs": 60,
                "fcm": {"data": {"title": "Pushed"}},
            }),
        )
        .await;
    stack
        .notify(
            PRODUCER_KEY,
            &json!({
                "person_ids": ["ana"], "class": "call", "idempotency_key": "ring", "ttl_secs": 30,
                "fcm": {"data": {"call": "1"}, "priority": "high"},
            }),
        )
        .await;
    let ana = Person::new(&stack, "ana");
    let page = ana.holding(2).await;
    assert_eq!(ids(&page), [pushed.clone(), first.clone()], "newest first");
    assert_eq!(page["unread"], 2);
    assert_eq!(page["next_cursor"], Value::Null);
    let kept = &page["messages"][1];
    assert_eq!(kept["read"], false);
    assert_eq!(kept["class"], "alert");
    assert_eq!(kept["payload"], json!({"title": "Hi", "n": 1.50}));
    let push = &page["messages"][0];
    assert_eq!(push["push"]["fcm"]["data"], json!({"title": "Pushed"}));
    assert!(push.get("payload").is_none());

    // The same message sent again (the producer retried) is not kept twice.
    message(&stack, "ana", "m1", json!({"title": "Hi", "n": 1.50})).await;
    let (_, count) = ana.get(&format!("/v1/inbox/{INAPP_APP}/unread")).await;
    assert_eq!(count, json!({"unread": 2}));
    Stack::wait_metrics(
        &stack.registry,
        &[r#"pushline_inbox_messages_total{outcome="kept"} 2"#],
    )
    .await;
}

#[tokio::test]
async fn an_app_without_an_inbox_keeps_nothing() {
    let stack =
        Stack::start_with(|c| c.registry.auth.jwt = harness::services::person_jwt_config()).await;
    stack.register_inapp("ben", "install-ben-0001").await;
    message(&stack, "ben", "m1", json!({"title": "Hi"})).await;
    let ben = Person::new(&stack, "ben");
    let (status, body) = ben.get(&format!("/v1/inbox/{INAPP_APP}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "no_inbox");
    let mut redis = redis::Client::open(stack.env.redis.url())
        .expect("redis")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{}*inbox:*", stack.env.prefix))
        .query_async(&mut redis)
        .await
        .expect("KEYS");
    assert!(keys.is_empty(), "{keys:?}");
}

#[tokio::test]
async fn pages_hold_while_messages_arrive() {
    let stack = stack().await;
    stack.register_inapp("cleo", "install-cleo-0001").await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(kept_in_turn(&stack, "cleo", &format!("m{i}"), json!({"i": i}), i + 1).await);
    }
    let cleo = Person::new(&stack, "cleo");
    cleo.holding(5).await;
    let first = cleo.page("?limit=2").await;
    assert_eq!(ids(&first), [sent[4].clone(), sent[3].clone()]);
    let cursor = first["next_cursor"].as_str().expect("a cursor").to_owned();

    // Two more arrive while Cleo pages: they come before the first page, never into the
    // pages still to come.
    let later = [
        kept_in_turn(&stack, "cleo", "late-1", json!({"late": 1}), 6).await,
        kept_in_turn(&stack, "cleo", "late-2", json!({"late": 2}), 7).await,
    ];
    cleo.holding(7).await;
    let second = cleo.page(&format!("?limit=2&cursor={cursor}")).await;
    assert_eq!(ids(&second), [sent[2].clone(), sent[1].clone()]);
    let cursor = second["next_cursor"].as_str().expect("a cursor");
    let last = cleo.page(&format!("?limit=2&cursor={cursor}")).await;
    assert_eq!(ids(&last), [sent[0].clone()]);
    assert_eq!(last["next_cursor"], Value::Null);
    assert_eq!(
        cleo.ids("?limit=2").await,
        [later[1].clone(), later[0].clone()]
    );
}

#[tokio::test]
async fn read_state_and_deletion() {
    let stack = stack().await;
    stack.register_inapp("dora", "install-dora-0001").await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(message(&stack, "dora", &format!("m{i}"), json!({"i": i})).await);
    }
    let dora = Person::new(&stack, "dora");
    dora.holding(5).await;
    let path = |op: &str| format!("/v1/inbox/{INAPP_APP}/{op}");

    let (status, done) = dora.post(&path("read"), json!({"ids": [sent[4]]})).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done, json!({"changed": 1, "unread": 4}));
    assert_eq!(dora.ids("?unread_only=true").await.len(), 4);
    let (_, done) = dora.post(&path("read"), json!({"up_to": sent[1]})).await;
    assert_eq!(done, json!({"changed": 2, "unread": 2}), "m1 and m0");
    let (_, done) = dora.post(&path("unread"), json!({"ids": [sent[0]]})).await;
    assert_eq!(done, json!({"changed": 1, "unread": 3}));
    assert_eq!(
        dora.ids("?unread_only=true").await,
        [sent[3].clone(), sent[2].clone(), sent[0].clone()]
    );
    let page = dora.page("").await;
    assert_eq!(page["messages"][0]["read"], true);
    assert_eq!(page["messages"][1]["read"], false);
    let (_, done) = dora.post(&path("read"), json!({"all": true})).await;
    assert_eq!(done, json!({"changed": 3, "unread": 0}));

    let delete_one = |id: &str| {
        http()
            .delete(
                stack
                    .registry
                    .url(&format!("/v1/inbox/{INAPP_APP}/messages/{id}")),
            )
            .bearer_auth(&dora.jwt)
            .send()
    };
    assert_eq!(
        delete_one(&sent[4]).await.expect("DELETE").status(),
        StatusCode::NO_CONTENT
    );
    let again = delete_one(&sent[4]).await.expect("DELETE");
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    let body: Value = again.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unknown_message");
    let (_, done) = dora.post(&path("delete"), json!({"up_to": sent[1]})).await;
    assert_eq!(done["changed"], 2);
    assert_eq!(dora.ids("").await, [sent[3].clone(), sent[2].clone()]);

    // Bad input: a clear 4xx, and nothing changes.
    for (query, why) in [
        ("?limit=1000", "limit"),
        ("?limit=0", "limit"),
        ("?cursor=not-a-cursor", "cursor"),
        ("?limit=ten", "query"),
    ] {
        let (status, body) = dora.get(&format!("/v1/inbox/{INAPP_APP}{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert!(
            body["error"]["message"]
                .as_str()
                .expect("message")
                .contains(why),
            "{body}"
        );
    }
    for body in [
        json!({}),
        json!({"ids": []}),
        json!({"ids": [sent[3]], "all": true}),
        json!({"all": false}),
        json!({"ids": ["no spaces allowed"]}),
        json!({"ids": vec!["x"; 101]}),
        json!({"ids": [sent[3]], "extra": 1}),
    ] {
        let (status, answer) = dora.post(&path("read"), body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {answer}");
    }
    let (status, answer) = dora
        .post(&path("read"), json!({"ids": [sent[3], "0000unknown"]}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(answer["error"]["code"], "unknown_message");
    assert_eq!(dora.ids("").await.len(), 2, "nothing deleted by refusals");
    let (_, count) = dora.get(&format!("/v1/inbox/{INAPP_APP}/unread")).await;
    assert_eq!(count["unread"], 0, "nothing marked by refusals");
}

#[tokio::test]
async fn retention_by_count_and_by_age() {
    let stack = Stack::start_with(|c| {
        inbox_on(|p| p.inbox_max_messages = 3)(c);
        c.registry.devices.apps.insert(
            "com.example.brief".into(),
            registry::config::AppPolicy {
                inbox: true,
                inbox_max_age_secs: 1,
                ..Default::default()
            },
        );
    })
    .await;
    stack.register_inapp("finn", "install-finn-0001").await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(kept_in_turn(&stack, "finn", &format!("m{i}"), json!({"i": i}), i + 1).await);
    }
    let finn = Person::new(&stack, "finn");
    harness::wait::until_true("the newest three kept", WAIT, || async {
        finn.ids("").await == [sent[4].clone(), sent[3].clone(), sent[2].clone()]
    })
    .await;

    stack
        .register(
            "install-finn-brief",
            json!({"person_id": "finn", "platform": "inapp", "app": "com.example.brief", "device_id": "install-finn-brief"}),
        )
        .await;
    message(&stack, "finn", "brief", json!({"brief": true})).await;
    let brief = |query: &'static str| {
        let finn = &finn;
        async move {
            let (status, page) = finn
                .get(&format!("/v1/inbox/com.example.brief{query}"))
                .await;
            assert_eq!(status, StatusCode::OK, "{page}");
            page
        }
    };
    let kept = harness::wait::until("the brief message kept", WAIT, || async {
        let page = brief("").await;
        (page["messages"].as_array().map_or(0, Vec::len) == 1).then_some(page)
    })
    .await;
    // Read, then unread again: the unread mark ages out with its message.
    let brief_id = kept["messages"][0]["id"].clone();
    let path = |op: &str| format!("/v1/inbox/com.example.brief/{op}");
    let (_, done) = finn.post(&path("read"), json!({"all": true})).await;
    assert_eq!(done["unread"], 0, "{done}");
    let (_, done) = finn.post(&path("unread"), json!({"ids": [brief_id]})).await;
    assert_eq!(done["unread"], 1, "{done}");
    // Older than a second: gone from the page and from the count.
    harness::wait::until_true("the brief message aged out", WAIT, || async {
        let page = brief("").await;
        page["messages"].as_array().is_some_and(Vec::is_empty) && page["unread"] == 0
    })
    .await;
}

#[tokio::test]
async fn nobody_reads_or_changes_anothers_inbox_and_it_goes_with_the_person() {
    let stack = stack().await;
    stack.register_inapp("gus", "install-gus-0001").await;
    let id = message(&stack, "gus", "private", json!({"secret": true})).await;
    let gus = Person::new(&stack, "gus");
    gus.holding(1).await;

    let eve = Person::new(&stack, "eve");
    let page = eve.page("").await;
    assert!(ids(&page).is_empty(), "Eve's own inbox is empty");
    for op in ["read", "unread", "delete"] {
        let (status, body) = eve
            .post(&format!("/v1/inbox/{INAPP_APP}/{op}"), json!({"ids": [id]}))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{op}: {body}");
        assert_eq!(body["error"]["code"], "unknown_message");
    }
    let service = http()
        .get(stack.registry.url(&format!("/v1/inbox/{INAPP_APP}")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("GET");
    assert_eq!(
        service.status(),
        StatusCode::FORBIDDEN,
        "API keys are refused"
    );
    let nobody = http()
        .get(stack.registry.url(&format!("/v1/inbox/{INAPP_APP}")))
        .send()
        .await
        .expect("GET");
    assert_eq!(nobody.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(gus.page("").await["unread"], 1, "untouched");

    let deleted = http()
        .delete(stack.registry.url("/v1/persons/gus/devices"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("DELETE");
    assert!(deleted.status().is_success());
    let page = gus.page("").await;
    assert!(ids(&page).is_empty() && page["unread"] == 0, "{page}");
}

const KEY: [u8; 24] = *b"producer-callback-key-24";

/// Every callback the producer's endpoint received.
type Calls = Arc<Mutex<Vec<(HeaderMap, String)>>>;

async fn endpoint(State(calls): State<Calls>, headers: HeaderMap, body: String) -> StatusCode {
    calls.lock().expect("calls").push((headers, body));
    StatusCode::NO_CONTENT
}

#[tokio::test]
async fn receipts_and_actions_reach_status_and_the_producers_signed_callback() {
    let calls = Calls::default();
    let app = Router::new()
        .route("/hooks", post(endpoint))
        .with_state(calls.clone());
    let (addr, _stop) = harness::mock::serve_loopback(app).await;
    let stack = Stack::start_with(|c| {
        inbox_on(|_| {})(c);
        let producer = &mut c.ingest.producers.keys[0];
        producer.callback_url = Some(format!("http://{addr}/hooks"));
        producer.callback_secret = Some(Secret::new(format!("whsec_{}", STANDARD.encode(KEY))));
    })
    .await;
    stack.register_inapp("hana", "install-hana-0001").await;
    stack.register_inapp("ivan", "install-ivan-0001").await;
    let event = stack
        .notify(
            PRODUCER_KEY,
            &json!({
                "person_ids": ["hana"], "class": "alert", "idempotency_key": "prompt-1",
                "ttl_secs": 60,
                "inapp": {"payload": {"q": "Join?"}, "category": "prompt",
                          "actions": [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}]},
            }),
        )
        .await;
    let hana = Person::new(&stack, "hana");
    hana.holding(1).await;
    async fn report(
        who: &Person<'_>,
        event: &str,
        device: &str,
        mut body: Value,
    ) -> (StatusCode, Value) {
        body["event_id"] = json!(event);
        body["app"] = json!(INAPP_APP);
        body["device_id"] = json!(device);
        who.post("/v1/receipts", body).await
    }
    let (status, answer) =
        report(&hana, &event, "install-hana-0001", json!({"kind": "read"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let (status, _) = report(
        &hana,
        &event,
        "install-hana-0001",
        json!({"kind": "action", "action": "yes", "reply": "on my way"}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    // Not sent to Ivan, nor to a device Hana does not hold; malformed reports are 400.
    let ivan = Person::new(&stack, "ivan");
    let (status, body) = report(&ivan, &event, "install-ivan-0001", json!({"kind": "read"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "unknown_message");
    let (status, _) = report(&hana, &event, "install-ivan-0001", json!({"kind": "read"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = report(
        &hana,
        &event,
        "install-hana-0001",
        json!({"kind": "action"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = report(
        &hana,
        &event,
        "install-hana-0001",
        json!({"kind": "opened"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // In the event's status, per device.
    let status = harness::wait::until("the receipts in the status", WAIT, || async {
        let status: Value = http()
            .get(stack.ingest.url(&format!("/v1/events/{event}")))
            .bearer_auth(PRODUCER_KEY)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (status["devices"][0]["receipts"].as_array()?.len() == 2).then_some(status)
    })
    .await;
    // The same reports again (an app retrying): taken, not recorded, one callback.
    for body in [
        json!({"kind": "read"}),
        json!({"kind": "action", "action": "yes", "reply": "on my way"}),
    ] {
        let (status, _) = report(&hana, &event, "install-hana-0001", body).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    Stack::wait_metrics(
        &stack.registry,
        &[
            r#"pushline_receipts_total{kind="read",outcome="duplicate",transport="http"} 1"#,
            r#"pushline_receipts_total{kind="action",outcome="duplicate",transport="http"} 1"#,
        ],
    )
    .await;
    let receipts = &status["devices"][0]["receipts"];
    assert_eq!(receipts[0]["kind"], "read");
    assert_eq!(receipts[1]["kind"], "action");
    assert_eq!(receipts[1]["action"], "yes");
    assert_eq!(receipts[1]["reply"], "on my way");

    // The producer hears the answer, signed.
    let (headers, body) = harness::wait::until("the message.action callback", WAIT, || async {
        calls
            .lock()
            .expect("calls")
            .iter()
            .find(|(_, body)| body.contains("message.action"))
            .cloned()
    })
    .await;
    let header = |name: &str| headers[name].to_str().expect("ascii").to_owned();
    let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&KEY).expect("key");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    assert_eq!(header("webhook-signature"), expected);
    assert!(
        id.starts_with(&format!("action:{event}:")) && id.ends_with(":yes"),
        "one id per answer of one device: {id}"
    );
    let actions = calls
        .lock()
        .expect("calls")
        .iter()
        .filter(|(_, body)| body.contains("message.action"))
        .count();
    assert_eq!(actions, 1, "the repeated answer made no second callback");
    let callback: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(callback["type"], "message.action");
    let data = &callback["data"];
    assert_eq!(data["event_id"], event.as_str());
    assert_eq!(data["person_id"], "hana");
    assert_eq!(data["app"], INAPP_APP);
    assert_eq!(data["action"], "yes");
    assert_eq!(data["reply"], "on my way");
    assert!(
        !body.contains("install-hana"),
        "no device token in a callback"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_inbox_survives_redis_and_nats_restarting() {
    let env = Env::start_with_redis_args(&["--appendonly".into(), "yes".into()]);
    let mut stack = Stack::start_on(env, inbox_on(|_| {})).await;
    stack.register_inapp("jo", "install-jo-0001").await;
    let first = message(&stack, "jo", "before", json!({"n": 1})).await;
    {
        let jo = Person::new(&stack, "jo");
        jo.holding(1).await;
        let (_, done) = jo
            .post(&format!("/v1/inbox/{INAPP_APP}/read"), json!({"all": true}))
            .await;
        assert_eq!(done["unread"], 0);
    }

    tokio::task::block_in_place(|| {
        stack.env.redis.restart();
        stack.env.nats.restart();
    });
    // A message sent after both came back joins the one kept before, read state intact.
    let second = harness::wait::until("a message after the restarts", WAIT * 3, || async {
        let answer = http()
            .post(stack.ingest.url("/v1/notify"))
            .bearer_auth(PRODUCER_KEY)
            .json(&json!({
                "person_ids": ["jo"], "class": "alert", "idempotency_key": "after",
                "ttl_secs": 60, "inapp": {"payload": {"n": 2}},
            }))
            .send()
            .await
            .ok()?;
        let body: Value = answer.json().await.ok()?;
        body["events"][0]["event_id"].as_str().map(String::from)
    })
    .await;
    let jo = Person::new(&stack, "jo");
    let page = harness::wait::until("both messages", WAIT * 3, || async {
        let (status, page) = jo.get(&format!("/v1/inbox/{INAPP_APP}")).await;
        (status == StatusCode::OK && ids(&page).len() == 2).then_some(page)
    })
    .await;
    assert_eq!(ids(&page), [second, first]);
    assert_eq!(page["messages"][1]["read"], true);
    assert_eq!(page["unread"], 1);
}

#[tokio::test]
async fn an_app_that_asks_gets_the_unread_count_as_its_badge() {
    use harness::services::APNS_APP;
    let stack = Stack::start_with(|c| {
        c.registry.devices.apps.insert(
            APNS_APP.into(),
            registry::config::AppPolicy {
                inbox: true,
                inbox_badge: true,
                ..Default::default()
            },
        );
        c.registry.auth.jwt = harness::services::person_jwt_config();
    })
    .await;
    let token = "ab".repeat(32);
    stack
        .register(
            &token,
            json!({"person_id": "kai", "platform": "apns", "channel": "alert"}),
        )
        .await;
    for key in ["b1", "b2"] {
        stack
            .notify(
                PRODUCER_KEY,
                &json!({
                    "person_ids": ["kai"], "class": "alert", "idempotency_key": key,
                    "ttl_secs": 60,
                    "apns": {"payload": {"aps": {"alert": {"title": key}}, "ref": 1.50}},
                }),
            )
            .await;
    }
    let pushes = stack
        .providers
        .get::<MockApns>()
        .wait_delivered(2, WAIT)
        .await;
    // Each push carries the count once its message was kept (the fan-out may take the
    // two events in either order).
    let mut badges: Vec<u64> = pushes
        .iter()
        .map(|push| {
            let body: Value = serde_json::from_slice(&push.body).expect("json");
            body["aps"]["badge"].as_u64().expect("a badge")
        })
        .collect();
    badges.sort_unstable();
    assert_eq!(badges, [1, 2]);
    let first: Value = serde_json::from_slice(&pushes[0].body).expect("json");
    assert_eq!(first["ref"], 1.5, "the rest of the payload as sent");
    // Read on another device: the next push says so.
    let kai = Person::new(&stack, "kai");
    let (_, done) = kai
        .post(&format!("/v1/inbox/{APNS_APP}/read"), json!({"all": true}))
        .await;
    assert_eq!(done["unread"], 0);
    stack
        .notify(
            PRODUCER_KEY,
            &json!({
                "person_ids": ["kai"], "class": "alert", "idempotency_key": "b3",
                "ttl_secs": 60, "apns": {"payload": {"aps": {"alert": "b3"}}},
            }),
        )
        .await;
    let pushes = stack
        .providers
        .get::<MockApns>()
        .wait_delivered(3, WAIT)
        .await;
    let last = pushes
        .iter()
        .map(|p| serde_json::from_slice::<Value>(&p.body).expect("json"))
        .find(|body| body["aps"]["alert"] == "b3")
        .expect("the third push");
    assert_eq!(last["aps"]["badge"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inboxes_work_on_redis_cluster_each_person_on_one_node() {
    use harness::clusters::RedisCluster;
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let nodes = cluster.urls();
    let stack = Stack::start_with(|c| {
        inbox_on(|_| {})(c);
        c.registry.redis.mode = registry::config::RedisMode::Cluster;
        c.registry.redis.nodes = nodes;
    })
    .await;
    let persons: Vec<String> = (0..12).map(|i| format!("cluster-person-{i}")).collect();
    let mut sent = Vec::new();
    for person in &persons {
        let device = format!("install-{person}");
        stack.register_inapp(person, &device).await;
        sent.push(
            message(
                &stack,
                person,
                &format!("c-{person}"),
                json!({"to": person}),
            )
            .await,
        );
    }
    for (person, id) in persons.iter().zip(&sent) {
        let p = Person::new(&stack, person);
        let page = p.holding(1).await;
        assert_eq!(ids(&page), std::slice::from_ref(id));
        let (status, done) = p
            .post(&format!("/v1/inbox/{INAPP_APP}/read"), json!({"up_to": id}))
            .await;
        assert_eq!(status, StatusCode::OK, "{done}");
        assert_eq!(done["unread"], 0);
    }
    // The inboxes are spread over the primaries, each person's keys on one of them.
    let mut nodes_holding_inboxes = 0;
    for url in cluster.urls() {
        let mut node = redis::Client::open(url)
            .expect("node")
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*inbox:*")
            .query_async(&mut node)
            .await
            .expect("KEYS");
        let mut tags: Vec<&str> = keys
            .iter()
            .filter_map(|k| k.split_once('{')?.1.split_once('}').map(|(tag, _)| tag))
            .collect();
        tags.sort_unstable();
        tags.dedup();
        // Each person's keys sit together: order, msgs, meta, apps (unread is empty
        // once all is read, and Redis keeps no empty set).
        assert_eq!(keys.len(), tags.len() * 4, "{keys:?}");
        nodes_holding_inboxes += usize::from(!keys.is_empty());
    }
    assert!(
        nodes_holding_inboxes >= 2,
        "12 persons on one node of three"
    );
    // A person's inbox goes with them in one command, on whichever node holds them.
    let deleted = http()
        .delete(
            stack
                .registry
                .url(&format!("/v1/persons/{}/devices", persons[0])),
        )
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("DELETE");
    assert!(deleted.status().is_success());
    assert!(ids(&Person::new(&stack, &persons[0]).page("").await).is_empty());
    assert_eq!(
        ids(&Person::new(&stack, &persons[1]).page("").await),
        [sent[1].clone()]
    );
}
