//! The WebSocket transport (RFC 6455): `GET /v1/connect`, one JSON text frame per
//! protocol frame (`docs/inapp.md`).
//!
//! A connection's life:
//!
//! 1. the upgrade (any other path: 404), with tungstenite's buffers kept small
//!    (`read_buffer_size` 1 KiB, grown only for a larger frame; nothing buffered for
//!    writing beyond the send queue);
//! 2. the hello within `limits.hello_timeout_ms`, admitted by the [`Hub`];
//! 3. the live subscription and the person's inbox subscription first, then the cursor,
//!    then the loop below until either side closes.
//!
//! | event | what the connection does |
//! |---|---|
//! | a live signal | remembers that the stream may have more |
//! | room (fewer than `max_unacked` unacknowledged) and maybe more | reads the next message after the last sent: sends it, skips it (expired) or learns there is none |
//! | `ack` up to `seq` | `seq` beyond what was sent: `protocol`; else moves the cursor (Redis) and frees room |
//! | `ping` | `pong` |
//! | `inbox.list`, `inbox.count`, `inbox.read`, `inbox.unread`, `inbox.delete`, `receipt` | carried out by the [`Hub`] (`crate::inbox`): its answer, or an `error` frame (the connection stays open) |
//! | a change to the person's inbox of the connection's app (their inbox subject) | `inbox.changed` |
//! | a WebSocket ping or pong | counts as life |
//! | binary, unknown or malformed frame, a second hello | closes `protocol` |
//! | a frame over `max_frame_bytes` | closes `too_large` |
//! | a send not written within `idle_timeout_secs` (the client stopped reading; its queue is full) | closes `slow_consumer` |
//! | heartbeat tick | closes `idle` if nothing came for `idle_timeout_secs`, else pings |
//! | evicted by a newer connection | closes `too_many_connections` or `replaced` |
//! | shutdown | closes `going_away` |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use pipeline::CancellationToken;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use crate::frames::{self, ClientFrame, Close, Control, ServerFrame};
use crate::hub::{Device, Hub, Window, recheck};

/// The transport's metric label.
pub const TRANSPORT: &str = "websocket";

/// The path apps connect to.
pub const PATH: &str = "/v1/connect";

/// tungstenite's settings for a gateway connection: small buffers, the frame limit, and
/// the send queue bound.
fn settings(hub: &Hub) -> WebSocketConfig {
    let limits = &hub.limits;
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(limits.max_send_queue_bytes)
        .max_frame_size(Some(limits.max_frame_bytes))
        .max_message_size(Some(limits.max_frame_bytes))
}

/// The upgrade's check: only [`PATH`] is served.
#[allow(clippy::result_large_err)] // the signature is tungstenite's handshake callback
fn only_connect(request: &Request, response: Response) -> Result<Response, ErrorResponse> {
    if request.uri().path() == PATH {
        Ok(response)
    } else {
        let mut refusal = ErrorResponse::new(Some("not found".into()));
        *refusal.status_mut() = axum::http::StatusCode::NOT_FOUND;
        Err(refusal)
    }
}

/// Serves one accepted connection (TLS already done, if any) until it closes.
pub async fn serve<S>(hub: Arc<Hub>, io: S, peer: SocketAddr, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(io, only_connect, Some(settings(&hub)));
    let timeout = Duration::from_millis(hub.limits.hello_timeout_ms);
    let Ok(Ok(mut ws)) = tokio::time::timeout(timeout, handshake).await else {
        return;
    };
    let reason = match session(&hub, &mut ws, peer, &shutdown).await {
        Ok(()) => "client",
        Err(close) => {
            let frame = CloseFrame {
                code: CloseCode::from(close.code()),
                reason: close.reason().into(),
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
            close.reason()
        }
    };
    hub.metrics
        .inapp_closed
        .with_label_values(&[TRANSPORT, reason])
        .inc();
}

/// A connection after its upgrade: `Ok` when the client closed, else why the gateway
/// closes it.
async fn session<S>(
    hub: &Hub,
    ws: &mut WebSocketStream<S>,
    peer: SocketAddr,
    shutdown: &CancellationToken,
) -> Result<(), Close>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let hello_timeout = Duration::from_millis(hub.limits.hello_timeout_ms);
    let hello = match tokio::time::timeout(hello_timeout, ws.next()).await {
        Ok(Some(Ok(WsMessage::Text(text)))) => frames::parse(&text)?,
        Ok(Some(Err(error))) => return Err(read_error(&error)),
        Ok(None | Some(Ok(WsMessage::Close(_)))) => return Ok(()),
        _ => return Err(Close::Protocol),
    };
    let ClientFrame::Control(Control::Hello {
        credential,
        app,
        device_id,
    }) = hello
    else {
        return Err(Close::Protocol);
    };
    let device = hub.admit(&credential, &app, &device_id, peer).await?;
    drop(credential);
    let joined = hub.join(&device, TRANSPORT).await?;
    let result = deliver(hub, ws, &device, &joined.cancelled, shutdown).await;
    match (result, joined.evicted.reason()) {
        (Err(_), Some(reason)) => Err(reason),
        (result, _) => result,
    }
}

async fn deliver<S>(
    hub: &Hub,
    ws: &mut WebSocketStream<S>,
    device: &Device,
    evicted: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<(), Close>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = &hub.limits;
    let idle = Duration::from_secs(limits.idle_timeout_secs);
    // Subscribed before the cursor is read: nothing stored in between goes unsignalled.
    let mut live = hub.live(device).await?;
    let mut changes = hub.inbox_changes(device).await?;
    let mut window = Window::new(hub.cursor(device).await?);
    send(
        ws,
        &ServerFrame::Ready {
            person_id: &device.person,
            heartbeat_secs: limits.heartbeat_secs,
        },
        idle,
    )
    .await?;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(limits.heartbeat_secs));
    heartbeat.reset();
    let mut last_heard = Instant::now();
    loop {
        while window.has_room(limits.max_unacked) {
            let Some((seq, job)) = hub.next_to_send(device, &mut window, TRANSPORT).await? else {
                break;
            };
            send_text(ws, frames::message_text(seq, &job)?, idle).await?;
            hub.sent(device, &mut window, seq, &job).await;
        }
        tokio::select! {
            frame = ws.next() => {
                last_heard = Instant::now();
                match frame {
                    None | Some(Ok(WsMessage::Close(_))) => return Ok(()),
                    Some(Err(error)) => return Err(read_error(&error)),
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                    Some(Ok(WsMessage::Text(text))) => match frames::parse(&text)? {
                        ClientFrame::Control(Control::Ack { seq }) => {
                            if window.ack(seq)?.is_some() {
                                hub.acknowledged(device, &mut window).await?;
                            }
                        }
                        ClientFrame::Control(Control::Ping) => {
                            send(ws, &ServerFrame::Pong, idle).await?;
                        }
                        ClientFrame::Control(Control::Hello { .. }) => {
                            return Err(Close::Protocol);
                        }
                        ClientFrame::Request(request) => {
                            let answer = hub.answer(device, request, TRANSPORT).await;
                            send_text(ws, answer, idle).await?;
                        }
                    },
                    Some(Ok(_)) => return Err(Close::Protocol),
                }
            }
            signal = live.next() => {
                if signal.is_none() {
                    return Err(Close::Unavailable);
                }
                window.signalled(std::time::Instant::now());
            }
            () = recheck(window.recheck_at()) => window.recheck_due(),
            change = changes.next() => {
                let Some(change) = change else {
                    return Err(Close::Unavailable);
                };
                if let Some(frame) = crate::inbox::change_frame(&change.payload, &device.app) {
                    send_text(ws, frame, idle).await?;
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() >= idle {
                    return Err(Close::Idle);
                }
                let ping = ws.send(WsMessage::Ping(Default::default()));
                tokio::time::timeout(idle, ping)
                    .await
                    .map_err(|_| Close::SlowConsumer)?
                    .map_err(|error| write_error(&error))?;
            }
            () = evicted.cancelled() => return Err(Close::TooManyConnections),
            () = shutdown.cancelled() => return Err(Close::GoingAway),
        }
    }
}

/// Sends `frame`, waiting at most `within` for the client to take it.
async fn send<S>(
    ws: &mut WebSocketStream<S>,
    frame: &ServerFrame<'_>,
    within: Duration,
) -> Result<(), Close>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let text = serde_json::to_string(frame).map_err(|_| Close::Unavailable)?;
    send_text(ws, text, within).await
}

/// Sends a frame's JSON `text`, waiting at most `within` for the client to take it.
async fn send_text<S>(
    ws: &mut WebSocketStream<S>,
    text: String,
    within: Duration,
) -> Result<(), Close>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(within, ws.send(WsMessage::text(text)))
        .await
        .map_err(|_| Close::SlowConsumer)?
        .map_err(|error| write_error(&error))
}

fn read_error(error: &WsError) -> Close {
    match error {
        WsError::Capacity(_) => Close::TooLarge,
        _ => Close::Protocol,
    }
}

fn write_error(error: &WsError) -> Close {
    match error {
        WsError::WriteBufferFull(_) => Close::SlowConsumer,
        _ => Close::Protocol,
    }
}
