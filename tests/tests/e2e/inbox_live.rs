//! The server-side inbox over the live connection, end to end: a change made on one of a
//! person's devices reaches their other devices and nobody else's, the inbox is listed,
//! counted, marked and deleted with frames, refused requests are answered with an `error`
//! frame and keep the connection open, receipts are taken from the connection, the MQTT
//! inbox topic answers the same JSON, and an in-app message is removed from `INAPP` once
//! its app acknowledged it (or a connection skipped it as expired). Clients are
//! tokio-websockets and rumqttc, independent of the gateway's tungstenite and codec.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use harness::services::{INAPP_APP, PRODUCER_KEY, person_jwt};
use harness::stack::Stack;
use pipeline::CancellationToken;
use pipeline::topology::StreamKind;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

const WAIT: Duration = Duration::from_secs(10);

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// A gateway serving WebSocket and MQTT, whose app keeps an inbox; stopped when dropped.
struct Gateway {
    ws: SocketAddr,
    mqtt: SocketAddr,
    admin: SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Gateway {
    async fn start(stack: &Stack) -> Gateway {
        let bind = || TcpListener::bind("127.0.0.1:0");
        let (ws, mqtt, admin) = (
            bind().await.expect("bind"),
            bind().await.expect("bind"),
            bind().await.expect("bind"),
        );
        let gateway = Gateway {
            ws: ws.local_addr().expect("addr"),
            mqtt: mqtt.local_addr().expect("addr"),
            admin: admin.local_addr().expect("addr"),
            shutdown: CancellationToken::new(),
        };
        let mut config = stack.env.gateway_config();
        config.inbox_apps.insert(INAPP_APP.into());
        let serving =
            gateway::serve_with_mqtt(config, ws, Some(mqtt), admin, gateway.shutdown.clone());
        tokio::spawn(async move {
            if let Err(error) = serving.await {
                panic!("gateway failed: {error}");
            }
        });
        let ready = format!("http://{}/readyz", gateway.admin);
        harness::wait::until_true("the gateway to be ready", Duration::from_secs(20), || {
            let ready = ready.clone();
            async move {
                reqwest::get(&ready)
                    .await
                    .is_ok_and(|response| response.status() == 200)
            }
        })
        .await;
        gateway
    }
}

/// A stack whose in-app app keeps an inbox, and its gateway.
async fn stack() -> (Stack, Gateway) {
    let stack = Stack::start_with(|c| {
        c.registry.devices.apps.insert(
            INAPP_APP.into(),
            registry::config::AppPolicy {
                inbox: true,
                ..Default::default()
            },
        );
    })
    .await;
    let gateway = Gateway::start(&stack).await;
    (stack, gateway)
}

/// Sends an in-app message to `person`, living `ttl_secs`; its event id.
async fn notify(stack: &Stack, person: &str, key: &str, ttl_secs: u64) -> String {
    stack
        .notify(
            PRODUCER_KEY,
            &json!({
                "person_ids": [person], "class": "alert", "idempotency_key": key,
                "ttl_secs": ttl_secs, "inapp": {"payload": {"key": key, "n": 1.50}},
            }),
        )
        .await
}

/// An app's WebSocket connection, from the app's side.
struct App {
    ws: Socket,
}

impl App {
    /// Connects as `person` on `device` and waits for `ready`.
    async fn connect(gateway: &Gateway, person: &str, device: &str) -> App {
        App::connect_to(gateway.ws, person, device).await
    }

    /// Connects as `person` on `device` to the gateway listening on `ws`.
    async fn connect_to(ws: SocketAddr, person: &str, device: &str) -> App {
        let uri = format!("ws://{ws}/v1/connect");
        let (ws, _) = ClientBuilder::new()
            .uri(&uri)
            .expect("uri")
            .connect()
            .await
            .expect("the upgrade");
        let mut app = App { ws };
        app.send(json!({"type": "hello", "credential": person_jwt(person),
            "app": INAPP_APP, "device_id": device}))
            .await;
        let ready = app.frame().await;
        assert_eq!(ready["type"], "ready", "{ready}");
        app
    }

    async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
    }

    /// The next text frame.
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

    /// Frames until the first for which `wanted` holds (that one last).
    async fn until(&mut self, wanted: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let frame = self.frame().await;
            let done = wanted(&frame);
            seen.push(frame);
            if done {
                return seen;
            }
        }
    }

    /// Sends `request` with `ref` and returns its answer (frames in between, such as
    /// messages and inbox changes, are passed over).
    async fn ask(&mut self, reference: &str, mut request: Value) -> Value {
        request["ref"] = json!(reference);
        self.send(request).await;
        let seen = self.until(|f| f["ref"] == reference).await;
        seen.last().cloned().expect("an answer")
    }

    /// Waits for `count` messages kept in the connection's inbox (`inbox.changed`,
    /// `added`), passing over everything else.
    async fn added(&mut self, count: usize) {
        for _ in 0..count {
            self.until(|f| f["type"] == "inbox.changed" && f["op"] == "added")
                .await;
        }
    }
}

fn is_change(frame: &Value) -> bool {
    frame["type"] == "inbox.changed"
}

#[tokio::test]
async fn a_read_on_one_device_reaches_the_persons_other_devices_and_nobody_elses() {
    let (stack, gateway) = stack().await;
    stack.register_inapp("ana", "install-ana-phone").await;
    stack.register_inapp("ana", "install-ana-laptop").await;
    stack.register_inapp("bob", "install-bob-phone").await;
    let mut phone = App::connect(&gateway, "ana", "install-ana-phone").await;
    let mut laptop = App::connect(&gateway, "ana", "install-ana-laptop").await;
    let mut bob = App::connect(&gateway, "bob", "install-bob-phone").await;

    let event = notify(&stack, "ana", "for-ana", 60).await;
    phone.added(1).await;
    laptop.added(1).await;
    let read = phone
        .ask("r1", json!({"type": "inbox.read", "ids": [event]}))
        .await;
    assert_eq!(
        read,
        json!({"type": "inbox.done", "ref": "r1", "changed": 1, "unread": 0})
    );
    let change = laptop.until(is_change).await.pop().expect("a change");
    assert_eq!(
        change,
        json!({"type": "inbox.changed", "op": "read", "ids": [event], "unread": 0})
    );
    // The sender's own connection follows too.
    let own = phone.until(|f| is_change(f) && f["op"] == "read").await;
    assert_eq!(own.last(), Some(&change));

    // Bob's connection hears only of his own inbox: his own change, announced after
    // Ana's on the same NATS connection, is the first change he sees.
    let mine = notify(&stack, "bob", "for-bob", 60).await;
    let before = bob.until(is_change).await;
    let first = before.last().expect("a change");
    assert_eq!(first["op"], "added");
    assert_eq!(first["ids"], json!([mine]), "not Ana's: {first}");
    let _ = bob
        .ask("b1", json!({"type": "inbox.read", "all": true}))
        .await;
    let changes: Vec<Value> = bob.until(|f| is_change(f) && f["op"] == "read").await;
    assert!(
        changes
            .iter()
            .filter(|f| is_change(f))
            .all(|f| f["all"] == true),
        "{changes:?}"
    );
}

#[tokio::test]
async fn the_inbox_is_listed_counted_marked_and_deleted_with_frames() {
    let (stack, gateway) = stack().await;
    stack.register_inapp("cleo", "install-cleo-0001").await;
    let mut app = App::connect(&gateway, "cleo", "install-cleo-0001").await;
    let mut events = Vec::new();
    for key in ["one", "two", "three"] {
        events.push(notify(&stack, "cleo", key, 60).await);
        app.added(1).await;
    }

    let page = app
        .ask("l1", json!({"type": "inbox.list", "limit": 2}))
        .await;
    assert_eq!(page["type"], "inbox.page", "{page}");
    assert_eq!(page["unread"], 3);
    let ids: Vec<&str> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        ids,
        [events[2].as_str(), events[1].as_str()],
        "newest first"
    );
    assert_eq!(
        page["messages"][0]["payload"],
        json!({"key": "three", "n": 1.5})
    );
    assert_eq!(page["messages"][0]["read"], false);
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let rest = app
        .ask(
            "l2",
            json!({"type": "inbox.list", "limit": 2, "cursor": cursor}),
        )
        .await;
    assert_eq!(rest["messages"][0]["id"], events[0].as_str());
    assert_eq!(rest["next_cursor"], Value::Null, "the last page");

    let read = app
        .ask("m1", json!({"type": "inbox.read", "up_to": events[1]}))
        .await;
    assert_eq!(
        (read["changed"].as_u64(), read["unread"].as_u64()),
        (Some(2), Some(1))
    );
    let count = app.ask("c1", json!({"type": "inbox.count"})).await;
    assert_eq!(
        count,
        json!({"type": "inbox.count", "ref": "c1", "unread": 1})
    );
    let unread = app
        .ask("m2", json!({"type": "inbox.unread", "ids": [events[0]]}))
        .await;
    assert_eq!(unread["unread"], 2);
    let unread_only = app
        .ask("l3", json!({"type": "inbox.list", "unread_only": true}))
        .await;
    assert_eq!(unread_only["messages"].as_array().map(Vec::len), Some(2));

    let deleted = app
        .ask("d1", json!({"type": "inbox.delete", "ids": [events[2]]}))
        .await;
    assert_eq!(
        deleted,
        json!({"type": "inbox.done", "ref": "d1", "changed": 1, "unread": 1})
    );
    let left = app.ask("l4", json!({"type": "inbox.list"})).await;
    assert_eq!(left["messages"].as_array().map(Vec::len), Some(2));
    assert!(
        left["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .all(|m| m["id"] != events[2].as_str())
    );
}

#[tokio::test]
async fn refused_requests_are_answered_and_keep_the_connection_open() {
    let (stack, gateway) = stack().await;
    stack.register_inapp("dora", "install-dora-0001").await;
    stack.register_inapp("eve", "install-eve-0001").await;
    let mut app = App::connect(&gateway, "dora", "install-dora-0001").await;
    let eves_message = notify(&stack, "eve", "for-eve", 60).await;
    let mine = notify(&stack, "dora", "for-dora", 60).await;
    app.added(1).await;

    for (request, error) in [
        (
            json!({"type": "inbox.read", "ids": ["no-such-message"]}),
            "unknown_message",
        ),
        // Another person's message is not in this inbox: nothing changes.
        (
            json!({"type": "inbox.delete", "ids": [eves_message]}),
            "unknown_message",
        ),
        (json!({"type": "inbox.list", "limit": 100_000}), "invalid"),
        (
            json!({"type": "inbox.list", "cursor": "bm90LWEtY3Vyc29y"}),
            "invalid",
        ),
        (json!({"type": "inbox.list", "limit": "ten"}), "invalid"),
        (
            json!({"type": "inbox.read", "ids": [mine], "all": true}),
            "invalid",
        ),
        (
            json!({"type": "inbox.count", "person_id": "eve"}),
            "invalid",
        ),
        (
            json!({"type": "receipt", "event_id": eves_message, "kind": "read"}),
            "unknown_message",
        ),
        (
            json!({"type": "receipt", "event_id": mine, "kind": "action"}),
            "invalid",
        ),
    ] {
        let answer = app.ask("bad", request.clone()).await;
        assert_eq!(answer["type"], "error", "{request} → {answer}");
        assert_eq!(answer["error"], error, "{request} → {answer}");
        assert!(answer["message"].is_string());
    }
    // Still open, and nothing changed.
    let count = app.ask("after", json!({"type": "inbox.count"})).await;
    assert_eq!(count["unread"], 1);
    let receipt = app
        .ask(
            "rc",
            json!({"type": "receipt", "event_id": mine, "kind": "action", "action": "yes", "reply": "On my way"}),
        )
        .await;
    assert_eq!(receipt, json!({"type": "receipt.done", "ref": "rc"}));

    // Not JSON still closes, as before.
    app.ws.send(Message::text("{not json")).await.expect("send");
    loop {
        let next = tokio::time::timeout(WAIT, app.ws.next())
            .await
            .expect("closed in time");
        match next {
            Some(Ok(message)) if message.is_close() => {
                let (code, _) = message.as_close().expect("close");
                assert_eq!(u16::from(code), 4008);
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("ended without a close frame: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_gateway_not_told_the_app_keeps_an_inbox_answers_no_inbox_and_still_takes_receipts() {
    let (stack, _) = stack().await;
    // The registry keeps the inbox, but this gateway's `inbox_apps` does not name the app.
    let gateway = harness::services::start_gateway(stack.env.gateway_config()).await;
    gateway.wait_ready().await;
    stack.register_inapp("hal", "install-hal-0001").await;
    let mut app = App::connect_to(gateway.addr, "hal", "install-hal-0001").await;
    let event = notify(&stack, "hal", "for-hal", 60).await;
    app.until(|f| f["type"] == "message").await;
    for request in [
        json!({"type": "inbox.list"}),
        json!({"type": "inbox.count"}),
        json!({"type": "inbox.read", "all": true}),
    ] {
        let answer = app.ask("n", request).await;
        assert_eq!(answer["error"], "no_inbox", "{answer}");
    }
    let receipt = app
        .ask(
            "r",
            json!({"type": "receipt", "event_id": event, "kind": "delivered"}),
        )
        .await;
    assert_eq!(receipt, json!({"type": "receipt.done", "ref": "r"}));
}

#[tokio::test]
async fn an_acknowledged_message_and_an_expired_one_are_removed_from_inapp() {
    let (stack, gateway) = stack().await;
    stack.register_inapp("finn", "install-finn-0001").await;
    // Expires while the device is away: the connection skips it, then it goes.
    notify(&stack, "finn", "short", 1).await;
    let expires_by = pipeline::contract::now_ms() + 1_000;
    stack.env.wait_messages(StreamKind::InApp, 1).await;
    harness::wait::until_true("the short message's deadline to pass", WAIT, || async {
        pipeline::contract::now_ms() > expires_by
    })
    .await;
    let mut app = App::connect(&gateway, "finn", "install-finn-0001").await;
    stack.env.wait_messages(StreamKind::InApp, 0).await;

    notify(&stack, "finn", "kept", 60).await;
    let message = app
        .until(|f| f["type"] == "message")
        .await
        .pop()
        .expect("message");
    let seq = message["seq"].as_u64().expect("seq");
    let stored = stack.env.wait_messages(StreamKind::InApp, 1).await;
    assert_eq!(
        stored[0].sequence, seq,
        "delivered, not yet acknowledged: kept"
    );
    app.send(json!({"type": "ack", "seq": seq})).await;
    stack.env.wait_messages(StreamKind::InApp, 0).await;
    // The inbox keeps its copies, by its own retention: the expired message's too.
    let page = app.ask("l", json!({"type": "inbox.list"})).await;
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(2));
}

/// An app's MQTT connection subscribed to its topic.
struct MqttApp {
    client: AsyncClient,
    events: rumqttc::EventLoop,
    device: String,
}

impl MqttApp {
    async fn connect(gateway: &Gateway, person: &str, device: &str) -> MqttApp {
        let mut options =
            MqttOptions::new(device, gateway.mqtt.ip().to_string(), gateway.mqtt.port());
        options
            .set_credentials(INAPP_APP, person_jwt(person))
            .set_keep_alive(Duration::from_secs(30));
        let (client, events) = AsyncClient::new(options, 64);
        let mut app = MqttApp {
            client,
            events,
            device: device.to_owned(),
        };
        app.client
            .subscribe(format!("inapp/{device}"), QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        loop {
            if let Packet::SubAck(_) = app.incoming().await {
                return app;
            }
        }
    }

    async fn incoming(&mut self) -> Packet {
        loop {
            let event = tokio::time::timeout(WAIT, self.events.poll())
                .await
                .expect("a packet in time")
                .expect("the connection is open");
            if let Event::Incoming(packet) = event {
                return packet;
            }
        }
    }

    /// Publishes `request` with `ref` to the inbox topic at `qos`; its answer, received
    /// on the device's topic (other frames passed over), and whether the request's PUBACK
    /// came (QoS 1).
    async fn ask(&mut self, reference: &str, mut request: Value, qos: QoS) -> (Value, bool) {
        request["ref"] = json!(reference);
        let topic = format!("inapp/{}/inbox", self.device);
        self.client
            .publish(topic, qos, false, request.to_string())
            .await
            .expect("publish");
        let mut acked = false;
        let mut answer = None;
        while answer.is_none() || (qos == QoS::AtLeastOnce && !acked) {
            match self.incoming().await {
                Packet::PubAck(_) => acked = true,
                Packet::Publish(publish) => {
                    assert_eq!(publish.topic, format!("inapp/{}", self.device));
                    let frame: Value = serde_json::from_slice(&publish.payload).expect("JSON");
                    if frame["ref"] == reference {
                        answer = Some(frame);
                    }
                }
                _ => {}
            }
        }
        (answer.expect("an answer"), acked)
    }

    /// Frames on the device's topic until the first for which `wanted` holds.
    async fn until(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        loop {
            if let Packet::Publish(publish) = self.incoming().await {
                let frame: Value = serde_json::from_slice(&publish.payload).expect("JSON");
                if wanted(&frame) {
                    return frame;
                }
            }
        }
    }
}

#[tokio::test]
async fn the_mqtt_inbox_topic_answers_and_follows_the_persons_changes() {
    let (stack, gateway) = stack().await;
    stack.register_inapp("gus", "mqtt-gus-0001").await;
    stack.register_inapp("gus", "install-gus-0002").await;
    let mut device = MqttApp::connect(&gateway, "gus", "mqtt-gus-0001").await;
    let mut browser = App::connect(&gateway, "gus", "install-gus-0002").await;
    let event = notify(&stack, "gus", "over-mqtt", 60).await;
    device.until(|f| is_change(f) && f["op"] == "added").await;

    let (count, acked) = device
        .ask("q0", json!({"type": "inbox.count"}), QoS::AtMostOnce)
        .await;
    assert_eq!(
        count,
        json!({"type": "inbox.count", "ref": "q0", "unread": 1})
    );
    assert!(!acked, "QoS 0: no PUBACK");
    let (page, acked) = device
        .ask("q1", json!({"type": "inbox.list"}), QoS::AtLeastOnce)
        .await;
    assert!(acked, "QoS 1: PUBACK");
    assert_eq!(page["messages"][0]["id"], event.as_str());
    let (error, _) = device
        .ask(
            "q2",
            json!({"type": "inbox.read", "ids": ["unknown"]}),
            QoS::AtLeastOnce,
        )
        .await;
    assert_eq!(error["error"], "unknown_message");

    // Read in the browser: the MQTT device follows.
    let _ = browser
        .ask("w1", json!({"type": "inbox.read", "all": true}))
        .await;
    let change = device.until(|f| is_change(f) && f["op"] == "read").await;
    assert_eq!(
        change,
        json!({"type": "inbox.changed", "op": "read", "all": true, "unread": 0})
    );
    // And the other way round.
    let (done, _) = device
        .ask(
            "q3",
            json!({"type": "inbox.unread", "ids": [event]}),
            QoS::AtLeastOnce,
        )
        .await;
    assert_eq!(done["unread"], 1);
    let change = browser
        .until(|f| is_change(f) && f["op"] == "unread")
        .await
        .pop()
        .expect("a change");
    assert_eq!(change["ids"], json!([event]));

    // A publish to the inbox topic that is not a request closes the connection.
    device
        .client
        .publish(
            format!("inapp/{}/inbox", device.device),
            QoS::AtMostOnce,
            false,
            json!({"type": "ack", "seq": 1}).to_string(),
        )
        .await
        .expect("publish");
    while tokio::time::timeout(WAIT, device.events.poll())
        .await
        .expect("closed in time")
        .is_ok()
    {}
}

#[tokio::test]
async fn the_inbox_survives_the_gateway_restarting() {
    let (stack, gateway) = stack().await;
    stack.register_inapp("rio", "install-rio-0001").await;
    let mut app = App::connect(&gateway, "rio", "install-rio-0001").await;
    let first = notify(&stack, "rio", "before-1", 60).await;
    let second = notify(&stack, "rio", "before-2", 60).await;
    app.added(2).await;
    let done = app
        .ask("r1", json!({"type": "inbox.read", "ids": [first]}))
        .await;
    assert_eq!(done["unread"], 1, "{done}");
    drop(app);
    drop(gateway);

    // Another gateway (a restart, or any other replica): the same inbox, read state and all.
    let again = Gateway::start(&stack).await;
    let mut app = App::connect(&again, "rio", "install-rio-0001").await;
    let page = app.ask("r2", json!({"type": "inbox.list"})).await;
    assert_eq!(page["type"], "inbox.page", "{page}");
    let ids: Vec<&str> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, [second.as_str(), first.as_str()]);
    assert_eq!(page["messages"][1]["read"], true);
    assert_eq!(page["unread"], 1);
}
