//! The MQTT 3.1.1 transport (`docs/inapp.md`, "The MQTT protocol"): packets framed by
//! `rmqtt-codec`'s v3 codec, the connection's rules here, everything shared with the
//! WebSocket transport (admission, cursor, reading `INAPP`, the [`Window`]) in the
//! [`Hub`]. pushline is not a broker: a device subscribes to its own topic and publishes
//! only its acknowledgements and its inbox requests.
//!
//! A connection's life:
//!
//! 1. CONNECT within `limits.hello_timeout_ms`: `client_id` the device id, `username` the
//!    app, `password` the credential; checked by [`read_connect`], then admitted by the
//!    [`Hub`]; a refusal is a CONNACK with its return code ([`refusal_code`]), then the
//!    connection closes;
//! 2. the live subscription, the person's inbox subscription, the cursor, CONNACK (`session_present` when the session was
//!    not clean and the device has a cursor: then the device's topic counts as subscribed
//!    at QoS 1 at once);
//! 3. the loop below until either side closes.
//!
//! | event | what the connection does |
//! |---|---|
//! | subscribed, room (fewer than `max_unacked` unacknowledged) and maybe more | reads the next message after the last sent: PUBLISHes it on `inapp/<device id>` at the subscription's QoS (a packet id for QoS 1), skips it (expired) or learns there is none |
//! | a live signal | remembers that the stream may have more |
//! | SUBSCRIBE | each filter: the device's own topic is granted min(QoS, 1), any other (another device, `#`, `+`) fails (0x80); SUBACK |
//! | UNSUBSCRIBE | the device's own topic stops deliveries; UNSUBACK |
//! | the 17th SUBSCRIBE or UNSUBSCRIBE | closes `protocol` (a flood) |
//! | PUBLISH to `inapp/<device id>/ack`, QoS 0 or 1, `{"seq":N}` | `N` beyond what was sent: `protocol`; else moves the cursor (Redis), then PUBACK (QoS 1) |
//! | PUBLISH to `inapp/<device id>/inbox`, QoS 0 or 1, an inbox request or a receipt (the WebSocket frame's JSON) | carried out by the [`Hub`] (`crate::inbox`); its answer (or `error` frame) PUBLISHed at QoS 0 on `inapp/<device id>` while that is subscribed, then PUBACK (QoS 1) |
//! | a change to the person's inbox of the connection's app (their inbox subject), while `inapp/<device id>` is subscribed | `inbox.changed` PUBLISHed at QoS 0 on `inapp/<device id>` |
//! | PUBACK of a delivery | acknowledges every message up to that delivery's `seq` |
//! | PUBACK of an unknown packet id | ignored (its message was already acknowledged) |
//! | PINGREQ | PINGRESP |
//! | DISCONNECT, or the socket closes | ends (`client`) |
//! | a PUBLISH to the inbox topic that is not JSON or not an inbox request or receipt | closes `protocol` |
//! | any other PUBLISH, QoS 2, a second CONNECT, a packet only servers send, a malformed packet | closes `protocol` |
//! | a packet over `max_frame_bytes` | closes `too_large` |
//! | nothing received for 1.5 × the keep-alive ([`silence_allowed`]) | closes `idle` |
//! | a packet not written within `idle_timeout_secs` (the client stopped reading) | closes `slow_consumer` |
//! | evicted by a newer connection | closes `too_many_connections` or `replaced` |
//! | shutdown | closes `going_away` |
//!
//! MQTT 3.1.1 has no way for a server to say why it closes an established connection:
//! the reason is counted in `pushline_inapp_closed_total{transport="mqtt",reason}`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt as _;
use pipeline::CancellationToken;
use rmqtt_codec::error::DecodeError;
use rmqtt_codec::types::{MQTT_LEVEL_311, Publish};
use rmqtt_codec::v3::{
    Codec, Connect, ConnectAck, ConnectAckReason, Packet, QoS, SubscribeReturnCode,
};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::time::Instant;
use tokio_util::codec::{Encoder as _, FramedRead};

use crate::frames::{self, Close};
use crate::hub::{Device, Hub, Window};

/// The transport's metric label.
pub const TRANSPORT: &str = "mqtt";

/// Most SUBSCRIBE and UNSUBSCRIBE packets one connection may send; one more is a flood.
pub const MAX_SUBSCRIBES: usize = 16;

/// The read buffer a connection starts with; it grows only for a larger packet.
const READ_BUFFER: usize = 4 * 1024;

/// The topic a device's messages are delivered on.
pub fn delivery_topic(device_id: &str) -> String {
    format!("inapp/{device_id}")
}

/// The topic a device publishes its acknowledgements to.
pub fn ack_topic(device_id: &str) -> String {
    format!("inapp/{device_id}/ack")
}

/// The topic a device publishes its inbox requests and receipts to.
pub fn inbox_topic(device_id: &str) -> String {
    format!("inapp/{device_id}/inbox")
}

/// What a SUBSCRIBE's `filter` is granted on the connection of `device_id`: its own topic,
/// exactly (no wildcard is ever expanded), at most QoS 1; anything else fails.
pub fn grant(filter: &str, requested: QoS, device_id: &str) -> SubscribeReturnCode {
    if filter == delivery_topic(device_id) {
        SubscribeReturnCode::Success(requested.less_value(QoS::AtLeastOnce))
    } else {
        SubscribeReturnCode::Failure
    }
}

/// How long a connection may stay silent: 1.5 × its keep-alive (the MQTT rule), the
/// keep-alive being the client's, at most `idle_timeout_secs` (also when the client asks
/// for none: 0).
pub fn silence_allowed(keep_alive_secs: u16, idle_timeout_secs: u64) -> Duration {
    let keep_alive = match u64::from(keep_alive_secs) {
        0 => idle_timeout_secs,
        secs => secs.min(idle_timeout_secs),
    };
    Duration::from_millis(keep_alive.saturating_mul(1_500))
}

/// Who a CONNECT says it is.
#[derive(Debug, PartialEq, Eq)]
pub struct Hello<'a> {
    /// `client_id`: the device id.
    pub device_id: &'a str,
    /// `username`: the app.
    pub app: &'a str,
    /// `password`: the credential.
    pub credential: &'a str,
}

/// A CONNECT refused: the CONNACK return code, and the reason counted.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// CONNACK's return code.
    pub code: ConnectAckReason,
    /// Why, as a closing reason.
    pub close: Close,
}

impl From<Close> for Refusal {
    fn from(close: Close) -> Self {
        Refusal {
            code: refusal_code(close),
            close,
        }
    }
}

/// Another protocol level than MQTT 3.1.1's.
const UNSUPPORTED_LEVEL: Refusal = Refusal {
    code: ConnectAckReason::UnacceptableProtocolVersion,
    close: Close::Protocol,
};

/// No client id: no device.
const NO_CLIENT_ID: Refusal = Refusal {
    code: ConnectAckReason::IdentifierRejected,
    close: Close::Forbidden,
};

/// The CONNACK return code of an admission refused by the hub.
pub fn refusal_code(close: Close) -> ConnectAckReason {
    match close {
        Close::Unauthorized => ConnectAckReason::BadUserNameOrPassword,
        Close::Forbidden => ConnectAckReason::NotAuthorized,
        _ => ConnectAckReason::ServiceUnavailable,
    }
}

/// What a CONNECT asks, before the hub is asked: MQTT 3.1.1 only, no last will (a device
/// publishes nothing but its acknowledgements), a device id, an app and a credential.
pub fn read_connect(connect: &Connect) -> Result<Hello<'_>, Refusal> {
    if connect.protocol.level() != MQTT_LEVEL_311 {
        return Err(UNSUPPORTED_LEVEL);
    }
    if connect.client_id.is_empty() {
        return Err(NO_CLIENT_ID);
    }
    if connect.last_will.is_some() {
        return Err(Refusal {
            code: ConnectAckReason::NotAuthorized,
            close: Close::Forbidden,
        });
    }
    let (Some(app), Some(password)) = (&connect.username, &connect.password) else {
        return Err(Close::Unauthorized.into());
    };
    let credential = std::str::from_utf8(password).map_err(|_| Close::Unauthorized)?;
    Ok(Hello {
        device_id: &connect.client_id,
        app,
        credential,
    })
}

/// QoS 1 deliveries waiting for their PUBACK: packet id ↔ `INAPP` sequence, in the order
/// sent.
#[derive(Debug, Default)]
pub struct InFlight {
    last_id: u16,
    sent: VecDeque<(NonZeroU16, u64)>,
}

impl InFlight {
    /// A packet id for the delivery of `seq`: the one after the last (wrapping, never 0),
    /// skipping ids still in flight; `None` when all 65,535 are.
    pub fn assign(&mut self, seq: u64) -> Option<NonZeroU16> {
        for _ in 0..u16::MAX {
            self.last_id = self.last_id.wrapping_add(1);
            let Some(id) = NonZeroU16::new(self.last_id) else {
                continue;
            };
            if self.sent.iter().all(|&(other, _)| other != id) {
                self.sent.push_back((id, seq));
                return Some(id);
            }
        }
        None
    }

    /// A PUBACK of `id`: the sequence it acknowledges up to, every delivery sent before it
    /// included (QoS 1 acknowledgements come in order); `None` for an id not in flight.
    pub fn puback(&mut self, id: NonZeroU16) -> Option<u64> {
        let position = self.sent.iter().position(|&(other, _)| other == id)?;
        let (_, seq) = self.sent.drain(..=position).next_back()?;
        Some(seq)
    }

    /// The cursor moved to `seq`: deliveries up to it need no PUBACK any more.
    pub fn acknowledged(&mut self, seq: u64) {
        self.sent.retain(|&(_, sent)| sent > seq);
    }
}

/// The payload of a PUBLISH to the ack topic.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ack {
    seq: u64,
}

/// How a connection ends.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The client closed it (DISCONNECT or the socket).
    Client,
    /// The gateway closes it.
    Closed(Close),
}

impl From<Close> for End {
    fn from(close: Close) -> Self {
        End::Closed(close)
    }
}

impl End {
    fn reason(&self) -> &'static str {
        match self {
            End::Client => "client",
            End::Closed(close) => close.reason(),
        }
    }
}

/// What a read error means.
fn read_error(error: &DecodeError) -> End {
    match error {
        DecodeError::MaxSizeExceeded { .. } => Close::TooLarge.into(),
        DecodeError::Io(_) => End::Client,
        _ => Close::Protocol.into(),
    }
}

/// The writing half of a connection: one packet at a time, never more than
/// `max_send_queue_bytes` waiting, each taken by the client within `within`.
struct Outbox<W> {
    io: W,
    codec: Codec,
    max_bytes: usize,
    within: Duration,
}

impl<W: AsyncWrite + Unpin> Outbox<W> {
    async fn send(&mut self, packet: Packet) -> Result<(), End> {
        let mut buffer = BytesMut::new();
        self.codec
            .encode(packet, &mut buffer)
            .map_err(|_| Close::Unavailable)?;
        if buffer.len() > self.max_bytes {
            return Err(Close::SlowConsumer.into());
        }
        let io = &mut self.io;
        let write = async move {
            io.write_all(&buffer).await?;
            io.flush().await
        };
        match tokio::time::timeout(self.within, write).await {
            Err(_) => Err(Close::SlowConsumer.into()),
            Ok(Err(_)) => Err(End::Client),
            Ok(Ok(())) => Ok(()),
        }
    }
}

type Packets<R> = FramedRead<R, Codec>;

/// Serves one accepted connection (TLS already done, if any) until it closes.
pub async fn serve<S>(hub: Arc<Hub>, io: S, peer: SocketAddr, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = &hub.limits;
    let max_packet = u32::try_from(limits.max_frame_bytes).unwrap_or(u32::MAX);
    let (read, write) = tokio::io::split(io);
    let mut packets = FramedRead::with_capacity(read, Codec::new(max_packet), READ_BUFFER);
    let mut outbox = Outbox {
        io: write,
        codec: Codec::new(max_packet),
        max_bytes: limits.max_send_queue_bytes,
        within: Duration::from_secs(limits.idle_timeout_secs),
    };
    let end = match session(&hub, &mut packets, &mut outbox, peer, &shutdown).await {
        Ok(()) => End::Client,
        Err(end) => end,
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), outbox.io.shutdown()).await;
    tracing::debug!(reason = end.reason(), "mqtt connection closed");
    hub.metrics
        .inapp_closed
        .with_label_values(&[TRANSPORT, end.reason()])
        .inc();
}

/// A connection from its CONNECT on.
async fn session<R, W>(
    hub: &Hub,
    packets: &mut Packets<R>,
    outbox: &mut Outbox<W>,
    peer: SocketAddr,
    shutdown: &CancellationToken,
) -> Result<(), End>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let hello_timeout = Duration::from_millis(hub.limits.hello_timeout_ms);
    let connect = match tokio::time::timeout(hello_timeout, packets.next()).await {
        Err(_) => return Err(Close::Protocol.into()),
        Ok(None) => return Ok(()),
        Ok(Some(Ok((Packet::Connect(connect), _)))) => connect,
        Ok(Some(Ok(_))) => return Err(Close::Protocol.into()),
        // A CONNECT of another protocol level (MQTT 5), or without a client id on a
        // persistent session: the codec refuses it, the client is told why.
        Ok(Some(Err(DecodeError::UnsupportedProtocolLevel))) => {
            return refuse(outbox, UNSUPPORTED_LEVEL).await;
        }
        Ok(Some(Err(DecodeError::InvalidClientId))) => {
            return refuse(outbox, NO_CLIENT_ID).await;
        }
        Ok(Some(Err(error))) => return Err(read_error(&error)),
    };
    let hello = match read_connect(&connect) {
        Ok(hello) => hello,
        Err(refusal) => return refuse(outbox, refusal).await,
    };
    let device = match hub
        .admit(hello.credential, hello.app, hello.device_id, peer)
        .await
    {
        Ok(device) => device,
        Err(close) => return refuse(outbox, close.into()).await,
    };
    let joined = hub.join(&device, TRANSPORT).await?;
    let result = deliver(
        hub,
        packets,
        outbox,
        &device,
        &connect,
        &joined.cancelled,
        shutdown,
    )
    .await;
    match (result, joined.evicted.reason()) {
        (Err(End::Closed(_)), Some(reason)) => Err(reason.into()),
        (result, _) => result,
    }
}

/// Answers a refused CONNECT, then closes.
async fn refuse<W: AsyncWrite + Unpin>(
    outbox: &mut Outbox<W>,
    refusal: Refusal,
) -> Result<(), End> {
    outbox.send(connack(refusal.code, false)).await?;
    Err(refusal.close.into())
}

fn connack(return_code: ConnectAckReason, session_present: bool) -> Packet {
    Packet::ConnectAck(ConnectAck {
        return_code,
        session_present,
    })
}

/// The admitted connection: deliveries and the client's packets (the module's table).
async fn deliver<R, W>(
    hub: &Hub,
    packets: &mut Packets<R>,
    outbox: &mut Outbox<W>,
    device: &Device,
    connect: &Connect,
    evicted: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<(), End>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let limits = &hub.limits;
    // Packet ids are 16 bits: never more in flight than there are ids.
    let max_unacked = limits.max_unacked.min(usize::from(u16::MAX));
    // Subscribed before the cursor is read: nothing stored in between goes unsignalled.
    let mut live = hub.live(device).await?;
    let mut changes = hub.inbox_changes(device).await?;
    let mut window = Window::new(hub.cursor(device).await?);
    let session_present = !connect.clean_session && window.acked > 0;
    outbox
        .send(connack(
            ConnectAckReason::ConnectionAccepted,
            session_present,
        ))
        .await?;
    let topic = delivery_topic(&device.device_id);
    let acks = ack_topic(&device.device_id);
    let requests = inbox_topic(&device.device_id);
    // A present session's subscription is the device's topic at QoS 1.
    let mut subscription = session_present.then_some(QoS::AtLeastOnce);
    let mut subscribes = 0usize;
    let mut in_flight = InFlight::default();
    let silence = silence_allowed(connect.keep_alive, limits.idle_timeout_secs);
    let idle = tokio::time::sleep(silence);
    tokio::pin!(idle);
    loop {
        if let Some(qos) = subscription {
            while window.has_room(max_unacked) {
                let Some((seq, job)) = hub.next_to_send(device, &mut window, TRANSPORT).await?
                else {
                    break;
                };
                let packet_id = match qos {
                    QoS::AtMostOnce => None,
                    _ => Some(in_flight.assign(seq).ok_or(Close::Unavailable)?),
                };
                let publish = Publish {
                    dup: false,
                    retain: false,
                    qos,
                    topic: topic.as_str().into(),
                    packet_id,
                    payload: frames::message_text(seq, &job)?.into(),
                    properties: None,
                };
                outbox.send(Packet::Publish(Box::new(publish))).await?;
                hub.sent(device, &mut window, seq, &job).await;
            }
        }
        tokio::select! {
            packet = packets.next() => {
                idle.as_mut().reset(Instant::now() + silence);
                let packet = match packet {
                    None => return Ok(()),
                    Some(Err(error)) => return Err(read_error(&error)),
                    Some(Ok((packet, _))) => packet,
                };
                match packet {
                    Packet::Publish(publish) if publish.qos == QoS::ExactlyOnce => {
                        return Err(Close::Protocol.into());
                    }
                    Packet::Publish(publish) if publish.topic == requests.as_str() => {
                        let request = frames::parse_request(&publish.payload)?;
                        let answer = hub.answer(device, request, TRANSPORT).await;
                        if subscription.is_some() {
                            outbox.send(frame_packet(&topic, answer)).await?;
                        }
                        if let Some(packet_id) = publish.packet_id {
                            outbox.send(Packet::PublishAck { packet_id }).await?;
                        }
                    }
                    Packet::Publish(publish) => {
                        if publish.topic != acks.as_str() {
                            return Err(Close::Protocol.into());
                        }
                        let Ack { seq } = serde_json::from_slice(&publish.payload)
                            .map_err(|_| Close::Protocol)?;
                        if let Some(cursor) = window.ack(seq)? {
                            hub.acknowledged(device, &mut window).await?;
                            in_flight.acknowledged(cursor);
                        }
                        if let Some(packet_id) = publish.packet_id {
                            outbox.send(Packet::PublishAck { packet_id }).await?;
                        }
                    }
                    Packet::PublishAck { packet_id } => {
                        if let Some(seq) = in_flight.puback(packet_id)
                            && window.ack(seq)?.is_some()
                        {
                            hub.acknowledged(device, &mut window).await?;
                        }
                    }
                    Packet::Subscribe { packet_id, topic_filters } => {
                        subscribes += 1;
                        if subscribes > MAX_SUBSCRIBES {
                            return Err(Close::Protocol.into());
                        }
                        let status: Vec<_> = topic_filters
                            .iter()
                            .map(|(filter, qos)| grant(filter, *qos, &device.device_id))
                            .collect();
                        for code in &status {
                            if let SubscribeReturnCode::Success(qos) = code {
                                subscription = Some(*qos);
                            }
                        }
                        outbox.send(Packet::SubscribeAck { packet_id, status }).await?;
                    }
                    Packet::Unsubscribe { packet_id, topic_filters } => {
                        subscribes += 1;
                        if subscribes > MAX_SUBSCRIBES {
                            return Err(Close::Protocol.into());
                        }
                        if topic_filters.iter().any(|filter| *filter == topic) {
                            subscription = None;
                        }
                        outbox.send(Packet::UnsubscribeAck { packet_id }).await?;
                    }
                    Packet::PingRequest => outbox.send(Packet::PingResponse).await?,
                    Packet::Disconnect => return Ok(()),
                    _ => return Err(Close::Protocol.into()),
                }
            }
            signal = live.next() => {
                if signal.is_none() {
                    return Err(Close::Unavailable.into());
                }
                window.signalled(std::time::Instant::now());
            }
            () = crate::hub::recheck(window.recheck_at()) => window.recheck_due(),
            change = changes.next() => {
                let Some(change) = change else {
                    return Err(Close::Unavailable.into());
                };
                if subscription.is_some()
                    && let Some(frame) = crate::inbox::change_frame(&change.payload, &device.app)
                {
                    outbox.send(frame_packet(&topic, frame)).await?;
                }
            }
            () = &mut idle => return Err(Close::Idle.into()),
            () = evicted.cancelled() => return Err(Close::TooManyConnections.into()),
            () = shutdown.cancelled() => return Err(Close::GoingAway.into()),
        }
    }
}

/// A frame that is not an `INAPP` message (an answer, an inbox change) PUBLISHed on the
/// device's `topic` at QoS 0: nothing to acknowledge, nothing kept for a redelivery (an
/// app asks again, or lists its inbox, after a reconnection).
fn frame_packet(topic: &str, frame: String) -> Packet {
    Packet::Publish(Box::new(Publish {
        dup: false,
        retain: false,
        qos: QoS::AtMostOnce,
        topic: topic.into(),
        packet_id: None,
        payload: frame.into(),
        properties: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVICE: &str = "install-0001";

    #[test]
    fn only_the_devices_own_topic_is_granted_and_at_most_qos_1() {
        assert_eq!(
            grant("inapp/install-0001", QoS::ExactlyOnce, DEVICE),
            SubscribeReturnCode::Success(QoS::AtLeastOnce)
        );
        assert_eq!(
            grant("inapp/install-0001", QoS::AtMostOnce, DEVICE),
            SubscribeReturnCode::Success(QoS::AtMostOnce)
        );
        for other in [
            "#",
            "+",
            "inapp/#",
            "inapp/+",
            "inapp/+/ack",
            "inapp/install-0002",
            "inapp/install-0001/#",
            "inapp/install-0001/ack",
            "inapp/install-00011",
        ] {
            assert_eq!(
                grant(other, QoS::AtLeastOnce, DEVICE),
                SubscribeReturnCode::Failure,
                "{other}"
            );
        }
    }

    #[test]
    fn the_keep_alive_is_the_clients_at_most_the_idle_timeout_with_half_again_of_grace() {
        assert_eq!(silence_allowed(10, 75), Duration::from_secs(15));
        assert_eq!(silence_allowed(600, 75), Duration::from_millis(112_500));
        assert_eq!(
            silence_allowed(0, 75),
            Duration::from_millis(112_500),
            "no keep-alive asked: the idle timeout"
        );
    }

    fn connect() -> Connect {
        Connect {
            client_id: DEVICE.into(),
            username: Some("com.example.app".into()),
            password: Some("a-credential".into()),
            keep_alive: 30,
            ..Connect::default()
        }
    }

    #[test]
    fn a_connect_names_device_app_and_credential() {
        let connect = connect();
        assert_eq!(
            read_connect(&connect),
            Ok(Hello {
                device_id: DEVICE,
                app: "com.example.app",
                credential: "a-credential"
            })
        );
    }

    #[test]
    fn a_connect_is_refused_with_the_return_code_that_says_why() {
        let mut v31 = connect();
        v31.protocol = rmqtt_codec::types::Protocol(rmqtt_codec::types::MQTT_LEVEL_31);
        let mut no_id = connect();
        no_id.client_id = "".into();
        let mut will = connect();
        will.last_will = Some(rmqtt_codec::v3::LastWill {
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "inapp/install-0001/gone".into(),
            message: "bye".into(),
        });
        let mut no_password = connect();
        no_password.password = None;
        let mut no_app = connect();
        no_app.username = None;
        let mut binary_password = connect();
        binary_password.password = Some(vec![0xff, 0xfe].into());
        for (connect, code) in [
            (v31, ConnectAckReason::UnacceptableProtocolVersion),
            (no_id, ConnectAckReason::IdentifierRejected),
            (will, ConnectAckReason::NotAuthorized),
            (no_password, ConnectAckReason::BadUserNameOrPassword),
            (no_app, ConnectAckReason::BadUserNameOrPassword),
            (binary_password, ConnectAckReason::BadUserNameOrPassword),
        ] {
            assert_eq!(read_connect(&connect).map_err(|r| r.code), Err(code));
        }
        assert_eq!(
            refusal_code(Close::Unauthorized),
            ConnectAckReason::BadUserNameOrPassword
        );
        assert_eq!(
            refusal_code(Close::Forbidden),
            ConnectAckReason::NotAuthorized
        );
        assert_eq!(
            refusal_code(Close::Unavailable),
            ConnectAckReason::ServiceUnavailable
        );
    }

    fn id(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).expect("not 0")
    }

    #[test]
    fn a_puback_acknowledges_its_delivery_and_every_one_before_it() {
        let mut in_flight = InFlight::default();
        assert_eq!(in_flight.assign(10), Some(id(1)));
        assert_eq!(in_flight.assign(12), Some(id(2)));
        assert_eq!(in_flight.assign(15), Some(id(3)));
        assert_eq!(in_flight.puback(id(2)), Some(12));
        assert_eq!(in_flight.puback(id(1)), None, "already covered by id 2");
        assert_eq!(in_flight.puback(id(3)), Some(15));
        assert_eq!(in_flight.puback(id(9)), None, "never sent");
    }

    #[test]
    fn an_explicit_ack_clears_deliveries_and_their_ids_are_not_reused_at_once() {
        let mut in_flight = InFlight::default();
        in_flight.assign(10);
        in_flight.assign(11);
        in_flight.acknowledged(10);
        assert_eq!(
            in_flight.puback(id(1)),
            None,
            "a late PUBACK changes nothing"
        );
        assert_eq!(in_flight.assign(12), Some(id(3)));
        assert_eq!(in_flight.puback(id(3)), Some(12));
    }

    #[test]
    fn packet_ids_wrap_past_zero_and_skip_those_in_flight() {
        let mut in_flight = InFlight {
            last_id: u16::MAX - 1,
            ..InFlight::default()
        };
        assert_eq!(in_flight.assign(1), Some(id(u16::MAX)));
        assert_eq!(in_flight.assign(2), Some(id(1)), "0 is never a packet id");
        in_flight.last_id = u16::MAX - 1;
        assert_eq!(
            in_flight.assign(3),
            Some(id(2)),
            "65535 and 1 are still in flight"
        );
    }
}
