//! In-app messages end to end over WebSocket: a producer's `inapp` part reaches a
//! connected device, a device that was away catches up in order (expired messages never
//! arrive), an acknowledgement holds across reconnections, nobody connects as another
//! person's device, another person becoming active on a device replaces the connection,
//! and protocol abuse closes only the abusing connection. The client is tokio-websockets,
//! a WebSocket implementation independent of the gateway's tungstenite.

use harness::mock::fcm::MockFcm;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use harness::services::{API_KEY, INAPP_APP, PRODUCER_KEY, Service, person_jwt, start_gateway};
use harness::stack::Stack;
use serde_json::{Value, json};
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

const WAIT: Duration = Duration::from_secs(10);

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// An app's connection, from the app's side.
struct App {
    ws: Socket,
}

/// How a connection ended, seen from the app.
#[derive(Debug, PartialEq, Eq)]
struct Closed {
    code: u16,
    reason: String,
}

impl App {
    /// Opens a connection without saying hello.
    async fn open(gateway: &Service) -> App {
        let uri = format!("ws://{}/v1/connect", gateway.addr);
        let (ws, _) = ClientBuilder::new()
            .uri(&uri)
            .expect("uri")
            .connect()
            .await
            .expect("the upgrade");
        App { ws }
    }

    /// Connects as `person` on `device` and waits for `ready`.
    async fn connect(gateway: &Service, person: &str, device: &str) -> App {
        let mut app = App::open(gateway).await;
        app.hello(&person_jwt(person), INAPP_APP, device).await;
        let ready = app.frame().await;
        assert_eq!(ready["type"], "ready", "{ready}");
        app
    }

    async fn hello(&mut self, credential: &str, app: &str, device: &str) {
        self.send(
            json!({"type": "hello", "credential": credential, "app": app, "device_id": device}),
        )
        .await;
    }

    async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
    }

    /// The next text frame (pings are answered by the client library).
    async fn frame(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("the connection is open")
                .expect("a frame");
            if let Some(text) = message.as_text() {
                return serde_json::from_str(text).expect("JSON");
            }
            assert!(!message.is_close(), "closed: {:?}", message.as_close());
        }
    }

    /// Sends `ping` and returns every message frame that came before the `pong`: what
    /// the gateway had to deliver when it read the ping.
    async fn drain(&mut self) -> Vec<Value> {
        self.send(json!({"type": "ping"})).await;
        let mut messages = Vec::new();
        loop {
            let frame = self.frame().await;
            match frame["type"].as_str() {
                Some("pong") => return messages,
                Some("message") => messages.push(frame),
                _ => panic!("unexpected frame {frame}"),
            }
        }
    }

    async fn ack(&mut self, seq: u64) {
        self.send(json!({"type": "ack", "seq": seq})).await;
    }

    /// Waits for the gateway to close the connection.
    async fn closed(&mut self) -> Closed {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("closed in time");
            match next {
                Some(Ok(message)) if message.is_close() => {
                    let (code, reason) = message.as_close().expect("a close frame");
                    return Closed {
                        code: code.into(),
                        reason: reason.to_owned(),
                    };
                }
                Some(Ok(_)) => continue,
                other => panic!("the connection ended without a close frame: {other:?}"),
            }
        }
    }
}

/// A stack with a gateway.
async fn stack() -> (Stack, Service) {
    stack_with(|_| {}).await
}

/// A stack with a gateway, after `adjust` changed the services' configurations.
async fn stack_with(adjust: impl FnOnce(&mut harness::stack::Configs)) -> (Stack, Service) {
    let stack = Stack::start_with(adjust).await;
    let gateway = start_gateway(stack.env.gateway_config()).await;
    gateway.wait_ready().await;
    (stack, gateway)
}

/// The in-app app is multi-user: several persons may hold one installation.
fn shared_installations(c: &mut harness::stack::Configs) {
    c.registry.devices.apps.insert(
        INAPP_APP.into(),
        registry::config::AppPolicy {
            multi_user: true,
            ..Default::default()
        },
    );
}

/// Sends an in-app message to `person`; its event id.
async fn notify(stack: &Stack, person: &str, key: &str, ttl_secs: u64, payload: Value) -> String {
    stack
        .notify(
            PRODUCER_KEY,
            &json!({
                "person_ids": [person],
                "class": "alert",
                "idempotency_key": key,
                "ttl_secs": ttl_secs,
                "inapp": {"payload": payload},
            }),
        )
        .await
}

#[tokio::test]
async fn a_connected_device_gets_its_message_and_an_ack_holds_across_reconnections() {
    let (stack, gateway) = stack().await;
    stack.register_inapp("ana", "install-ana-0001").await;
    let mut app = App::connect(&gateway, "ana", "install-ana-0001").await;
    let event = notify(&stack, "ana", "hello-1", 60, json!({"title": "Hi", "n": 1})).await;
    let message = app.frame().await;
    assert_eq!(message["type"], "message", "{message}");
    assert_eq!(message["event_id"], event.as_str());
    assert_eq!(message["payload"], json!({"title": "Hi", "n": 1}));
    assert_eq!(message["category"], "message");
    let seq = message["seq"].as_u64().expect("seq");
    app.ack(seq).await;
    assert!(app.drain().await.is_empty());
    drop(app);

    // The acknowledged message is not delivered again, on a new connection.
    let mut again = App::connect(&gateway, "ana", "install-ana-0001").await;
    assert!(again.drain().await.is_empty(), "nothing after the cursor");
}

#[tokio::test]
async fn an_unacknowledged_message_comes_again_with_the_same_id() {
    let (stack, gateway) = stack().await;
    stack.register_inapp("ben", "install-ben-0001").await;
    let mut app = App::connect(&gateway, "ben", "install-ben-0001").await;
    notify(&stack, "ben", "once", 60, json!({"x": 1})).await;
    let first = app.frame().await;
    drop(app);
    let mut again = App::connect(&gateway, "ben", "install-ben-0001").await;
    let repeated = again.drain().await;
    assert_eq!(repeated.len(), 1);
    assert_eq!(repeated[0]["id"], first["id"]);
    assert_eq!(repeated[0]["seq"], first["seq"]);
}

#[tokio::test]
async fn a_device_that_was_away_catches_up_in_order_and_expired_messages_never_arrive() {
    let (stack, gateway) = stack().await;
    stack.register_inapp("cleo", "install-cleo-0001").await;
    notify(&stack, "cleo", "a", 60, json!({"n": "a"})).await;
    notify(&stack, "cleo", "short", 1, json!({"n": "short"})).await;
    let expires_by = pipeline::contract::now_ms() + 1_000;
    notify(&stack, "cleo", "c", 60, json!({"n": "c"})).await;
    harness::wait::until_true("the short message's deadline to pass", WAIT, || async {
        pipeline::contract::now_ms() > expires_by
    })
    .await;
    let mut app = App::connect(&gateway, "cleo", "install-cleo-0001").await;
    let backlog = app.drain().await;
    let names: Vec<&str> = backlog
        .iter()
        .map(|m| m["payload"]["n"].as_str().expect("n"))
        .collect();
    assert_eq!(names, ["a", "c"], "in order, the expired one skipped");
    let seqs: Vec<u64> = backlog
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect();
    assert!(seqs[0] < seqs[1]);
}

#[tokio::test]
async fn nobody_connects_as_another_persons_device() {
    let (stack, gateway) = stack().await;
    stack.register_inapp("dora", "install-dora-0001").await;
    notify(&stack, "dora", "secret", 60, json!({"secret": true})).await;
    for (credential, app_id, closed) in [
        (person_jwt("eve"), INAPP_APP, (4003, "forbidden")),
        (
            "not-a-credential".to_owned(),
            INAPP_APP,
            (4001, "unauthorized"),
        ),
        (API_KEY.to_owned(), INAPP_APP, (4001, "unauthorized")),
        (person_jwt("dora"), "com.example.other", (4003, "forbidden")),
    ] {
        let mut app = App::open(&gateway).await;
        app.hello(&credential, app_id, "install-dora-0001").await;
        assert_eq!(
            app.closed().await,
            Closed {
                code: closed.0,
                reason: closed.1.into()
            }
        );
    }
    // Dora herself still gets it.
    let mut dora = App::connect(&gateway, "dora", "install-dora-0001").await;
    assert_eq!(dora.drain().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_reach_a_live_connection_on_a_three_node_cluster() {
    // The live signal is the publish, which reaches the gateway before the replicas have
    // stored the message: the gateway reads again until it is there, rather than waiting
    // for a later signal that, for the last message, never comes.
    let cluster = harness::clusters::NatsCluster::start().await;
    let url = cluster.url();
    let on_cluster = |nats: &mut pipeline::config::NatsConfig| {
        nats.url = url.clone();
        nats.replicas = 3;
    };
    let stack = Stack::start_with(|c| {
        c.keep_dispatchers(&[]);
        c.each_nats(on_cluster);
    })
    .await;
    let mut config = stack.env.gateway_config();
    on_cluster(&mut config.nats);
    let gateway = start_gateway(config).await;
    gateway.wait_ready().await;
    stack.register_inapp("ola", "install-ola-0001").await;
    let mut app = App::connect(&gateway, "ola", "install-ola-0001").await;
    for i in 0..5 {
        notify(&stack, "ola", &format!("m{i}"), 60, json!({"i": i})).await;
        let message = app.frame().await;
        assert_eq!(message["payload"], json!({"i": i}), "{message}");
        app.ack(message["seq"].as_u64().expect("seq")).await;
    }
}

#[tokio::test]
async fn protocol_abuse_closes_that_connection_only() {
    let (stack, gateway) = stack().await;
    stack.register_inapp("finn", "install-finn-0001").await;
    let mut bystander = App::connect(&gateway, "finn", "install-finn-0001").await;

    let mut binary = App::connect(&gateway, "finn", "install-finn-0001").await;
    binary
        .ws
        .send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    assert_eq!(binary.closed().await.code, 4008);

    let mut unknown = App::connect(&gateway, "finn", "install-finn-0001").await;
    unknown
        .send(json!({"type": "subscribe", "topic": "#"}))
        .await;
    assert_eq!(unknown.closed().await.code, 4008);

    let mut ahead = App::connect(&gateway, "finn", "install-finn-0001").await;
    ahead.ack(1_000_000).await;
    assert_eq!(ahead.closed().await.code, 4008);

    let mut huge = App::connect(&gateway, "finn", "install-finn-0001").await;
    huge.send(json!({"type": "ping", "pad": "x".repeat(64 * 1024)}))
        .await;
    assert_eq!(huge.closed().await.code, 1009);

    let mut silent = App::open(&gateway).await;
    silent
        .ws
        .send(Message::text("not json"))
        .await
        .expect("send");
    assert_eq!(silent.closed().await.code, 4008);

    notify(&stack, "finn", "after", 60, json!({"still": "here"})).await;
    let message = bystander.frame().await;
    assert_eq!(message["payload"], json!({"still": "here"}));
}

#[tokio::test]
async fn another_person_becoming_active_on_the_device_replaces_the_connection() {
    let (stack, gateway) = stack_with(shared_installations).await;
    // A shared tablet: one installation, two persons (an app backend registers both).
    let device = "install-tablet-01";
    stack.register_inapp("gus", device).await;
    stack.register_inapp("hal", device).await;
    notify(&stack, "gus", "for-gus", 60, json!({"to": "gus"})).await;
    let mut hal = App::connect(&gateway, "hal", device).await;
    assert!(hal.drain().await.is_empty(), "gus's message is not hal's");
    let mut gus = App::connect(&gateway, "gus", device).await;
    assert_eq!(
        hal.closed().await,
        Closed {
            code: 4011,
            reason: "replaced".into()
        }
    );
    let backlog = gus.drain().await;
    assert_eq!(backlog.len(), 1);
    assert_eq!(backlog[0]["payload"], json!({"to": "gus"}));
}

// The delivery rule: a push waits behind the in-app message of a connected, active device.

/// A stack with a gateway whose registry waits `window_ms` for in-app acknowledgements,
/// and whose producers may poll the status.
async fn rule_stack(window_ms: u64) -> (Stack, Service) {
    stack_with(|c| {
        c.registry.devices.inapp_ack_window_ms = window_ms;
        shared_installations(c);
        c.ingest.producers.status_rate_per_sec = 1_000.0;
        c.ingest.producers.status_burst = 1_000;
    })
    .await
}

/// Registers an Android phone's FCM token on `device` for `person`.
async fn register_phone(stack: &Stack, person: &str, device: &str) -> String {
    let token = format!("fcm-token-of-{device}-{person}");
    stack
        .register(
            &token,
            json!({"person_id": person, "platform": "fcm", "device_id": device}),
        )
        .await;
    token
}

/// An alert with an in-app part and an FCM part for `person`.
async fn alert(stack: &Stack, person: &str, key: &str) -> String {
    stack
        .notify(
            PRODUCER_KEY,
            &json!({
                "person_ids": [person],
                "class": "alert",
                "idempotency_key": key,
                "ttl_secs": 60,
                "inapp": {"payload": {"said": key}},
                "fcm": {"data": {"said": key}},
            }),
        )
        .await
}

/// The event's status once `done` holds of it.
async fn status_when(stack: &Stack, event: &str, done: impl Fn(&Value) -> bool) -> Value {
    harness::wait::until_ok("the event's status", WAIT, || async {
        let body: Value = reqwest::Client::new()
            .get(stack.ingest.url(&format!("/v1/events/{event}")))
            .bearer_auth(PRODUCER_KEY)
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .unwrap_or(Value::Null);
        if done(&body) {
            Ok(body)
        } else {
            Err(format!("{body:#}"))
        }
    })
    .await
}

fn outcome_of<'a>(status: &'a Value, platform: &str) -> &'a str {
    status["devices"]
        .as_array()
        .and_then(|devices| devices.iter().find(|d| d["platform"] == platform))
        .and_then(|d| d["outcome"].as_str())
        .unwrap_or("")
}

#[tokio::test]
async fn an_acknowledged_in_app_message_sends_no_push() {
    let (stack, gateway) = rule_stack(500).await;
    let device = "install-ivy-0001";
    stack.register_inapp("ivy", device).await;
    register_phone(&stack, "ivy", device).await;
    let mut app = App::connect(&gateway, "ivy", device).await;
    let event = alert(&stack, "ivy", "seen").await;
    let message = app.frame().await;
    app.ack(message["seq"].as_u64().expect("seq")).await;
    let status = status_when(&stack, &event, |s| s["outcome"] == "delivered").await;
    assert_eq!(outcome_of(&status, "inapp"), "acknowledged", "{status:#}");
    // The held push is dropped once its window has passed and the FALLBACK record is gone.
    harness::wait::until_true("the held push to be settled", WAIT, || async {
        stack
            .env
            .stream_messages(pipeline::topology::StreamKind::Fallback)
            .await
            .is_empty()
    })
    .await;
    assert!(
        stack.providers.get::<MockFcm>().delivered().is_empty(),
        "no push"
    );
}

#[tokio::test]
async fn an_unacknowledged_in_app_message_falls_back_to_the_push() {
    let (stack, gateway) = rule_stack(300).await;
    let device = "install-jon-0001";
    stack.register_inapp("jon", device).await;
    register_phone(&stack, "jon", device).await;
    let mut app = App::connect(&gateway, "jon", device).await;
    let event = alert(&stack, "jon", "unseen").await;
    let message = app.frame().await;
    assert_eq!(message["payload"], json!({"said": "unseen"}));
    let pushes = stack
        .providers
        .get::<MockFcm>()
        .wait_delivered(1, WAIT)
        .await;
    assert_eq!(pushes.len(), 1);
    let status = status_when(&stack, &event, |s| {
        s["outcome"] == "delivered" && outcome_of(s, "fcm") == "accepted"
    })
    .await;
    assert_eq!(
        outcome_of(&status, "inapp"),
        "fell_back_to_push",
        "{status:#}"
    );
}

#[tokio::test]
async fn a_disconnected_device_gets_the_push_at_once_and_the_message_when_it_connects() {
    let (stack, gateway) = rule_stack(60_000).await;
    let device = "install-kim-0001";
    stack.register_inapp("kim", device).await;
    register_phone(&stack, "kim", device).await;
    alert(&stack, "kim", "while-away").await;
    // Not held: the window is a minute, the push comes now.
    assert_eq!(
        stack
            .providers
            .get::<MockFcm>()
            .wait_delivered(1, WAIT)
            .await
            .len(),
        1
    );
    let mut app = App::connect(&gateway, "kim", device).await;
    let backlog = app.drain().await;
    assert_eq!(backlog.len(), 1);
    assert_eq!(backlog[0]["payload"], json!({"said": "while-away"}));
}

#[tokio::test]
async fn an_inactive_person_gets_pushes_and_their_in_app_messages_once_active() {
    let (stack, gateway) = rule_stack(60_000).await;
    let device = "install-shared-01";
    stack.register_inapp("lea", device).await;
    register_phone(&stack, "lea", device).await;
    // Max signs in last: he is the active user, and his app is connected.
    stack.register_inapp("max", device).await;
    let mut max = App::connect(&gateway, "max", device).await;
    alert(&stack, "lea", "for-lea").await;
    assert_eq!(
        stack
            .providers
            .get::<MockFcm>()
            .wait_delivered(1, WAIT)
            .await
            .len(),
        1,
        "an inactive person's push is not held"
    );
    assert!(max.drain().await.is_empty(), "nothing in-app for Max");
    let mut lea = App::connect(&gateway, "lea", device).await;
    let backlog = lea.drain().await;
    assert_eq!(backlog.len(), 1);
    assert_eq!(backlog[0]["payload"], json!({"said": "for-lea"}));
}

#[tokio::test]
async fn a_crashed_replicas_clients_reconnect_to_another_and_lose_nothing() {
    let (stack, first) = stack().await;
    let second = start_gateway(stack.env.gateway_config()).await;
    second.wait_ready().await;
    stack.register_inapp("nia", "install-nia-0001").await;
    stack.register_inapp("oto", "install-oto-0001").await;
    let mut nia = App::connect(&first, "nia", "install-nia-0001").await;
    let mut oto = App::connect(&second, "oto", "install-oto-0001").await;
    for n in 0..10 {
        notify(&stack, "nia", &format!("nia-{n}"), 60, json!({"n": n})).await;
        notify(&stack, "oto", &format!("oto-{n}"), 60, json!({"n": n})).await;
    }
    // Nia processes the first five and acknowledges them; the rest are on the wire.
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(nia.frame().await);
    }
    app_ack(&mut nia, &seen[4]).await;
    assert!(nia.drain().await.is_empty());
    first.abort();
    for n in 10..20 {
        notify(&stack, "nia", &format!("nia-{n}"), 60, json!({"n": n})).await;
        notify(&stack, "oto", &format!("oto-{n}"), 60, json!({"n": n})).await;
    }
    // Nia's app reconnects, through the load balancer, to the replica still there.
    let mut nia = App::connect(&second, "nia", "install-nia-0001").await;
    let resumed: Vec<u64> = nia
        .drain()
        .await
        .iter()
        .map(|m| m["payload"]["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(
        resumed,
        (5..20).collect::<Vec<u64>>(),
        "in order, none lost"
    );
    // Oto, on the replica that stayed, got everything live.
    let mut got = Vec::new();
    while got.len() < 20 {
        let frame = oto.frame().await;
        got.push(frame["payload"]["n"].as_u64().expect("n"));
    }
    assert_eq!(got, (0..20).collect::<Vec<u64>>());
}

async fn app_ack(app: &mut App, message: &Value) {
    app.ack(message["seq"].as_u64().expect("seq")).await;
}

#[tokio::test]
async fn an_encrypting_apps_in_app_payload_opens_with_an_independent_jose_library() {
    use base64::Engine as _;
    let (stack, gateway) = stack_with(|c| {
        c.registry.devices.key_encryption_keys = vec![registry::keyring::KekConfig {
            id: "kek-1".into(),
            key: Some(pipeline::config::Secret::new(
                base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
            )),
            key_file: None,
        }];
        c.registry.devices.apps.insert(
            INAPP_APP.into(),
            registry::config::AppPolicy {
                encrypt_payloads: true,
                ..Default::default()
            },
        );
    })
    .await;
    let key = [42u8; 32];
    stack
        .register(
            "install-pia-0001",
            json!({"person_id": "pia", "platform": "inapp", "app": INAPP_APP,
                   "device_id": "install-pia-0001",
                   "e2e_key": base64::engine::general_purpose::STANDARD.encode(key)}),
        )
        .await;
    let mut app = App::connect(&gateway, "pia", "install-pia-0001").await;
    notify(
        &stack,
        "pia",
        "sealed",
        60,
        json!({"secret": "the code is 4711"}),
    )
    .await;
    let message = app.frame().await;
    let jwe = message["payload"]["jwe"].as_str().expect("a JWE payload");
    assert!(!jwe.contains("4711"));
    let decrypter = josekit::jwe::Dir
        .decrypter_from_bytes(key)
        .expect("a decrypter");
    let (plain, header) = josekit::jwe::deserialize_compact(jwe, &decrypter).expect("opens");
    assert_eq!(header.content_encryption(), Some("A256GCM"));
    let plain: Value = serde_json::from_slice(&plain).expect("JSON");
    assert_eq!(plain, json!({"secret": "the code is 4711"}));
}

#[tokio::test]
async fn another_person_signing_in_closes_the_connection_whichever_replica_holds_it() {
    let (stack, first) = stack_with(shared_installations).await;
    let second = start_gateway(stack.env.gateway_config()).await;
    second.wait_ready().await;
    let device = "install-kiosk-01";
    stack.register_inapp("quin", device).await;
    let mut quin = App::connect(&second, "quin", device).await;
    assert!(quin.drain().await.is_empty());
    // Rae signs in on the same device (her registration makes her its active user); her
    // app is not even connected, and not to the replica holding Quin's connection.
    stack.register_inapp("rae", device).await;
    assert_eq!(
        quin.closed().await,
        Closed {
            code: 4011,
            reason: "replaced".into()
        }
    );
    drop(first);
}

#[tokio::test]
async fn a_webex_id_reaches_its_person_in_app_and_a_subject_spelling_one_is_not_them() {
    use base64::Engine as _;
    let (stack, gateway) = stack().await;
    let uuid = "0b7a9f3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
    let webex_id = base64::engine::general_purpose::STANDARD_NO_PAD
        .encode(format!("ciscospark://us/PEOPLE/{uuid}"));
    stack.register_inapp(&webex_id, "install-uuid-0001").await;
    // A JWT whose subject spells the Webex id is not the person it decodes to.
    let mut impostor = App::open(&gateway).await;
    impostor
        .hello(&person_jwt(&webex_id), INAPP_APP, "install-uuid-0001")
        .await;
    assert_eq!(impostor.closed().await.code, 4001);
    // The person (as the store names them) gets what a producer sends to either spelling.
    let mut app = App::connect(&gateway, uuid, "install-uuid-0001").await;
    notify(&stack, &webex_id, "by-webex-id", 60, json!({"n": 1})).await;
    notify(&stack, uuid, "by-uuid", 60, json!({"n": 2})).await;
    let first = app.frame().await;
    let second = app.frame().await;
    assert_eq!(first["payload"], json!({"n": 1}));
    assert_eq!(second["payload"], json!({"n": 2}));
}
