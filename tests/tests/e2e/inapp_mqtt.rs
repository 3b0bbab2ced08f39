//! In-app messages end to end over MQTT 3.1.1: a subscribed device gets a producer's
//! message and its PUBACK moves the cursor, a device that was away catches up in order
//! (and a persistent session resumes without subscribing), no subscription reaches
//! another device's messages, bad credentials get a refusing CONNACK, and protocol abuse
//! (a malformed packet, an oversized one, a flood of subscriptions) closes only the
//! abusing connection. The client is rumqttc, an MQTT implementation independent of the
//! gateway's codec; raw packets are written with rumqttc's own encoder.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use harness::services::{API_KEY, INAPP_APP, PRODUCER_KEY, person_jwt};
use harness::stack::Stack;
use pipeline::CancellationToken;
use rumqttc::{
    AsyncClient, ConnAck, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill,
    MqttOptions, Packet, Publish, QoS, SubscribeFilter, SubscribeReasonCode,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

/// A gateway with its MQTT listener, on port-0 listeners; stopped when dropped.
struct Gateway {
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
            mqtt: mqtt.local_addr().expect("addr"),
            admin: admin.local_addr().expect("addr"),
            shutdown: CancellationToken::new(),
        };
        let serving = gateway::serve_with_mqtt(
            stack.env.gateway_config(),
            ws,
            Some(mqtt),
            admin,
            gateway.shutdown.clone(),
        );
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

    /// The value of the gateway's metric line naming every one of `labels`, 0 without one.
    async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics");
        text.lines()
            .filter(|line| line.starts_with(&format!("{name}{{")))
            .filter(|line| labels.iter().all(|label| line.contains(label)))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until the gateway counted a connection closed for `reason`.
    async fn closed_for(&self, reason: &str) {
        let label = format!("reason=\"{reason}\"");
        harness::wait::until_true(&format!("a close for {reason}"), WAIT, || async {
            self.metric(
                "pushline_inapp_closed_total",
                &["transport=\"mqtt\"", &label],
            )
            .await
                >= 1.0
        })
        .await;
    }

    /// Waits until the gateway counted `count` cursor moves.
    async fn acknowledged(&self, count: f64) {
        harness::wait::until_true("the cursor to move", WAIT, || async {
            self.metric(
                "pushline_inapp_messages_total",
                &["outcome=\"acknowledged\""],
            )
            .await
                >= count
        })
        .await;
    }
}

/// The MQTT options of `device` of [`INAPP_APP`] presenting `credential`.
fn options(gateway: &Gateway, device: &str, app: &str, credential: &str) -> MqttOptions {
    let mut options = MqttOptions::new(device, gateway.mqtt.ip().to_string(), gateway.mqtt.port());
    options
        .set_credentials(app, credential)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1024 * 1024, 1024 * 1024);
    options
}

/// An app's MQTT connection, from the app's side.
struct App {
    client: AsyncClient,
    events: EventLoop,
    device: String,
}

impl App {
    /// Connects with `options`: the CONNACK, or the connection's error.
    async fn open(options: MqttOptions) -> Result<(App, ConnAck), ConnectionError> {
        let device = options.client_id();
        let (client, mut events) = AsyncClient::new(options, 64);
        let connack = match tokio::time::timeout(WAIT, events.poll())
            .await
            .expect("an answer in time")?
        {
            Event::Incoming(Packet::ConnAck(connack)) => connack,
            other => panic!("expected a CONNACK, got {other:?}"),
        };
        Ok((
            App {
                client,
                events,
                device,
            },
            connack,
        ))
    }

    /// Connects as `person` on `device` (clean session) and subscribes to its topic at
    /// QoS 1.
    async fn connect(gateway: &Gateway, person: &str, device: &str) -> App {
        let (mut app, _) = App::open(options(gateway, device, INAPP_APP, &person_jwt(person)))
            .await
            .expect("connected");
        let topic = format!("inapp/{device}");
        assert_eq!(
            app.subscribe(vec![SubscribeFilter::new(topic, QoS::AtLeastOnce)])
                .await,
            [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
        app
    }

    /// The next packet the gateway sends.
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

    /// Subscribes to `filters` in one SUBSCRIBE; the SUBACK's codes.
    async fn subscribe(&mut self, filters: Vec<SubscribeFilter>) -> Vec<SubscribeReasonCode> {
        self.client
            .subscribe_many(filters)
            .await
            .expect("subscribe");
        loop {
            match self.incoming().await {
                Packet::SubAck(suback) => return suback.return_codes,
                Packet::Publish(publish) => panic!("a message before the SUBACK: {publish:?}"),
                _ => {}
            }
        }
    }

    /// The next message: its topic and its JSON frame.
    async fn message(&mut self) -> (Publish, Value) {
        loop {
            if let Packet::Publish(publish) = self.incoming().await {
                let frame = serde_json::from_slice(&publish.payload).expect("JSON");
                return (publish, frame);
            }
        }
    }

    /// Acknowledges up to `seq` on the ack topic at QoS 1 and returns every message that
    /// came before the gateway's PUBACK: what it had to deliver when it read the ack.
    async fn ack(&mut self, seq: u64) -> Vec<Value> {
        let topic = format!("inapp/{}/ack", self.device);
        self.client
            .publish(
                topic,
                QoS::AtLeastOnce,
                false,
                json!({"seq": seq}).to_string(),
            )
            .await
            .expect("publish");
        let mut messages = Vec::new();
        let mut sent = None;
        loop {
            let event = tokio::time::timeout(WAIT, self.events.poll())
                .await
                .expect("a packet in time")
                .expect("the connection is open");
            match event {
                Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) => sent = Some(pkid),
                Event::Incoming(Packet::PubAck(puback)) if Some(puback.pkid) == sent => {
                    return messages;
                }
                Event::Incoming(Packet::Publish(publish)) => {
                    messages.push(serde_json::from_slice(&publish.payload).expect("JSON"));
                }
                _ => {}
            }
        }
    }

    /// What the gateway had to deliver: [`App::ack`] of nothing new.
    async fn drain(&mut self) -> Vec<Value> {
        self.ack(0).await
    }

    /// Waits for the gateway to close the connection.
    async fn closed(&mut self) {
        loop {
            match tokio::time::timeout(WAIT, self.events.poll())
                .await
                .expect("closed in time")
            {
                Ok(_) => continue,
                Err(ConnectionError::Io(_) | ConnectionError::MqttState(_)) => return,
                Err(other) => panic!("unexpected error {other:?}"),
            }
        }
    }
}

/// A stack with a gateway serving MQTT.
async fn stack() -> (Stack, Gateway) {
    let stack = Stack::start_with(|_| {}).await;
    let gateway = Gateway::start(&stack).await;
    (stack, gateway)
}

/// Sends an in-app message to `person`; its event id.
async fn notify(stack: &Stack, person: &str, key: &str, payload: Value) -> String {
    stack
        .notify(
            PRODUCER_KEY,
            &json!({
                "person_ids": [person],
                "class": "alert",
                "idempotency_key": key,
                "ttl_secs": 60,
                "inapp": {"payload": payload},
            }),
        )
        .await
}

#[tokio::test]
async fn a_subscribed_device_gets_its_message_and_its_puback_moves_the_cursor() {
    let (stack, gateway) = stack().await;
    stack.register_inapp("ana", "mqtt-ana-0001").await;
    let mut app = App::connect(&gateway, "ana", "mqtt-ana-0001").await;
    let event = notify(&stack, "ana", "hello-1", json!({"title": "Hi", "n": 1})).await;
    let (publish, message) = app.message().await;
    assert_eq!(publish.topic, "inapp/mqtt-ana-0001");
    assert_eq!(publish.qos, QoS::AtLeastOnce);
    assert_eq!(message["type"], "message", "{message}");
    assert_eq!(message["event_id"], event.as_str());
    assert_eq!(message["payload"], json!({"title": "Hi", "n": 1}));
    // rumqttc answers the QoS 1 PUBLISH with a PUBACK, and nothing else.
    gateway.acknowledged(1.0).await;
    drop(app);

    // The acknowledged message is not delivered again, on a new connection.
    let mut again = App::connect(&gateway, "ana", "mqtt-ana-0001").await;
    assert!(again.drain().await.is_empty(), "nothing after the cursor");
}

#[tokio::test]
async fn a_device_that_was_away_catches_up_in_order_and_a_persistent_session_resumes() {
    let (stack, gateway) = stack().await;
    let device = "mqtt-cleo-0001";
    stack.register_inapp("cleo", device).await;
    for n in ["a", "b", "c"] {
        notify(&stack, "cleo", n, json!({"n": n})).await;
    }
    let mut persistent = options(&gateway, device, INAPP_APP, &person_jwt("cleo"));
    persistent.set_clean_session(false);
    let (mut app, connack) = App::open(persistent.clone()).await.expect("connected");
    assert!(!connack.session_present, "no cursor yet: no session");
    let topic = format!("inapp/{device}");
    app.subscribe(vec![SubscribeFilter::new(topic, QoS::AtLeastOnce)])
        .await;
    let mut backlog = Vec::new();
    for _ in 0..3 {
        backlog.push(app.message().await.1);
    }
    let names: Vec<&str> = backlog
        .iter()
        .map(|m| m["payload"]["n"].as_str().expect("n"))
        .collect();
    assert_eq!(names, ["a", "b", "c"], "in order");
    let seqs: Vec<u64> = backlog
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(app.ack(seqs[2]).await.is_empty());
    drop(app);

    // Away again: the next message waits; the session is present and delivers at once.
    notify(&stack, "cleo", "d", json!({"n": "d"})).await;
    let (mut app, connack) = App::open(persistent).await.expect("connected");
    assert!(connack.session_present, "the device has a cursor");
    let (_, message) = app.message().await;
    assert_eq!(message["payload"], json!({"n": "d"}));
}

#[tokio::test]
async fn no_subscription_reaches_another_devices_messages() {
    let (stack, gateway) = stack().await;
    stack.register_inapp("ivy", "mqtt-ivy-0001").await;
    stack.register_inapp("jon", "mqtt-jon-0001").await;
    let (mut ivy, _) = App::open(options(
        &gateway,
        "mqtt-ivy-0001",
        INAPP_APP,
        &person_jwt("ivy"),
    ))
    .await
    .expect("connected");
    let codes = ivy
        .subscribe(
            [
                "inapp/mqtt-jon-0001",
                "#",
                "inapp/+",
                "inapp/#",
                "+/mqtt-jon-0001",
                "inapp/mqtt-ivy-0001",
            ]
            .into_iter()
            .map(|filter| SubscribeFilter::new(filter.into(), QoS::AtLeastOnce))
            .collect(),
        )
        .await;
    assert_eq!(
        codes,
        [
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
        ]
    );
    notify(&stack, "jon", "for-jon", json!({"to": "jon"})).await;
    notify(&stack, "ivy", "for-ivy", json!({"to": "ivy"})).await;
    let (publish, message) = ivy.message().await;
    assert_eq!(publish.topic, "inapp/mqtt-ivy-0001");
    assert_eq!(message["payload"], json!({"to": "ivy"}));
    assert!(ivy.drain().await.is_empty(), "jon's message never comes");

    // Jon's own connection gets his.
    let mut jon = App::connect(&gateway, "jon", "mqtt-jon-0001").await;
    assert_eq!(jon.message().await.1["payload"], json!({"to": "jon"}));
}

#[tokio::test]
async fn bad_credentials_get_a_refusing_connack() {
    let (stack, gateway) = stack().await;
    let device = "mqtt-dora-0001";
    stack.register_inapp("dora", device).await;
    notify(&stack, "dora", "secret", json!({"secret": true})).await;
    let mut with_will = options(&gateway, device, INAPP_APP, &person_jwt("dora"));
    with_will.set_last_will(LastWill::new(
        "inapp/mqtt-dora-0001/gone",
        "bye",
        QoS::AtMostOnce,
        false,
    ));
    for (options, code) in [
        (
            options(&gateway, device, INAPP_APP, &person_jwt("eve")),
            ConnectReturnCode::NotAuthorized,
        ),
        (
            options(&gateway, device, INAPP_APP, "not-a-credential"),
            ConnectReturnCode::BadUserNamePassword,
        ),
        (
            options(&gateway, device, INAPP_APP, API_KEY),
            ConnectReturnCode::BadUserNamePassword,
        ),
        (
            options(&gateway, device, "com.example.other", &person_jwt("dora")),
            ConnectReturnCode::NotAuthorized,
        ),
        (with_will, ConnectReturnCode::NotAuthorized),
    ] {
        match App::open(options).await {
            Err(ConnectionError::ConnectionRefused(refused)) => assert_eq!(refused, code),
            Err(other) => panic!("expected a refusal ({code:?}), got {other:?}"),
            Ok(_) => panic!("expected a refusal ({code:?}), got connected"),
        }
    }
    // Dora herself still gets it.
    let mut dora = App::connect(&gateway, "dora", device).await;
    assert_eq!(dora.message().await.1["payload"], json!({"secret": true}));
}

/// A raw TCP connection after a CONNECT as `person` on `device`, encoded by rumqttc's own
/// packet writer, and its CONNACK.
async fn raw_connected(gateway: &Gateway, person: &str, device: &str) -> TcpStream {
    let mut socket = TcpStream::connect(gateway.mqtt).await.expect("connect");
    let mut connect = rumqttc::Connect::new(device);
    connect.set_login(INAPP_APP, person_jwt(person));
    let mut bytes = BytesMut::new();
    connect.write(&mut bytes).expect("a CONNECT");
    socket.write_all(&bytes).await.expect("write");
    let mut read = BytesMut::new();
    loop {
        match rumqttc::mqttbytes::v4::Packet::read(&mut read, 1024) {
            Ok(rumqttc::mqttbytes::v4::Packet::ConnAck(connack)) => {
                assert_eq!(connack.code, ConnectReturnCode::Success);
                return socket;
            }
            Ok(other) => panic!("expected a CONNACK, got {other:?}"),
            Err(_) => {
                let n = tokio::time::timeout(WAIT, socket.read_buf(&mut read))
                    .await
                    .expect("a CONNACK in time")
                    .expect("read");
                assert!(n > 0, "closed before the CONNACK");
            }
        }
    }
}

/// Waits until the gateway closes `socket` (end of stream or reset), whatever it sent.
async fn closed(mut socket: TcpStream) {
    let mut sink = vec![0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, socket.read(&mut sink))
            .await
            .expect("closed in time")
        {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

#[tokio::test]
async fn malformed_and_oversized_packets_close_that_connection_only() {
    let (stack, gateway) = stack().await;
    let device = "mqtt-finn-0001";
    stack.register_inapp("finn", device).await;
    let mut bystander = App::connect(&gateway, "finn", device).await;

    // Before any CONNECT: a packet of the reserved type 15.
    let mut garbage = TcpStream::connect(gateway.mqtt).await.expect("connect");
    garbage.write_all(&[0xf0, 0x00]).await.expect("write");
    closed(garbage).await;

    // After a CONNECT: a SUBSCRIBE without a topic filter.
    let mut malformed = raw_connected(&gateway, "finn", device).await;
    malformed
        .write_all(&[0x82, 0x02, 0x00, 0x01])
        .await
        .expect("write");
    closed(malformed).await;
    gateway.closed_for("protocol").await;

    // A packet over limits.max_frame_bytes (16 KiB by default).
    let (mut huge, _) = App::open(options(&gateway, device, INAPP_APP, &person_jwt("finn")))
        .await
        .expect("connected");
    let topic = format!("inapp/{device}/ack");
    huge.client
        .publish(topic, QoS::AtMostOnce, false, vec![b' '; 64 * 1024])
        .await
        .expect("publish");
    huge.closed().await;
    gateway.closed_for("too_large").await;

    notify(&stack, "finn", "after", json!({"still": "here"})).await;
    let (_, message) = bystander.message().await;
    assert_eq!(message["payload"], json!({"still": "here"}));
}

#[tokio::test]
async fn a_flood_of_subscribes_closes_that_client() {
    let (stack, gateway) = stack().await;
    let device = "mqtt-gus-0001";
    stack.register_inapp("gus", device).await;
    let mut flood = App::connect(&gateway, "gus", device).await;
    // One SUBSCRIBE was the connection's own; fifteen more are answered.
    for _ in 0..gateway::mqtt::MAX_SUBSCRIBES - 1 {
        let codes = flood
            .subscribe(vec![SubscribeFilter::new("#".into(), QoS::AtMostOnce)])
            .await;
        assert_eq!(codes, [SubscribeReasonCode::Failure]);
    }
    flood
        .client
        .subscribe("#", QoS::AtMostOnce)
        .await
        .expect("subscribe");
    flood.closed().await;
    gateway.closed_for("protocol").await;

    // Another connection of the same device is not affected.
    let mut app = App::connect(&gateway, "gus", device).await;
    notify(&stack, "gus", "after", json!({"n": 1})).await;
    assert_eq!(app.message().await.1["payload"], json!({"n": 1}));
}
