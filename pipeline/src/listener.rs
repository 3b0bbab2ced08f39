//! The public listeners (ingest's webhooks and producer API, the registry's device API):
//! what a connection may cost before anyone knows who is on it.
//!
//! A connection is held by hyper (HTTP/1.1, or HTTP/2 with prior knowledge) under four
//! bounds, all in [`ConnectionsConfig`]:
//!
//! | bound | what happens |
//! |---|---|
//! | `max_connections` open | the next connection is accepted and closed at once (`over_limit`) |
//! | request head not complete within `header_read_timeout_ms` | hyper closes the connection (HTTP/1.1; the timer starts when a connection waits for a request, so an idle keep-alive connection is closed by it too) |
//! | headers over `max_header_bytes` | `431` with a JSON body; past twice that, hyper stops reading and answers a bare `431` |
//! | a request body not complete within `body_read_timeout_ms` | the body read fails: the handler answers 4xx and its permit is free |
//! | no request for `idle_timeout_ms` and none in flight | the connection is closed (`idle`; HTTP/2 included: its pings and window updates are no requests) |
//! | more than [`MAX_STREAMS`] requests at once on one HTTP/2 connection | refused by HTTP/2 flow control |
//!
//! So the memory of the listener is bounded before authentication: at most
//! `max_connections` connections, each holding at most a read buffer of twice
//! `max_header_bytes` (measured in `docs/security.md`).
//!
//! Every request carries the peer's address as axum's [`ConnectInfo`], for per-client
//! limits.
//!
//! Shutdown: the listener stops accepting when `shutdown` fires; connections finish the
//! requests they have (HTTP/1.1 closes after its current response, HTTP/2 sends GOAWAY),
//! for at most [`DRAIN`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;

use crate::CancellationToken;
use crate::config::ConfigError;
use crate::metrics::Metrics;

/// Longest a stopping listener waits for its connections' requests to finish.
pub const DRAIN: Duration = Duration::from_secs(30);

/// Most requests in flight on one HTTP/2 connection: one client cannot hold more of a
/// service's admission than a few connections' worth.
pub const MAX_STREAMS: u32 = 32;

/// `[connections]`: the public listener's bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// Most connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Longest a client may take to send a request's head (request line and headers),
    /// counted from when the connection waits for it, milliseconds.
    pub header_read_timeout_ms: u64,
    /// Largest request head (request line and headers), bytes; larger → 431.
    pub max_header_bytes: usize,
    /// A connection with no request for this long, and none in flight, is closed,
    /// milliseconds.
    pub idle_timeout_ms: u64,
    /// Longest a client may take to send a request's body, from its head on,
    /// milliseconds; a body still incomplete then is an error the handler answers.
    pub body_read_timeout_ms: u64,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            max_connections: 8_192,
            header_read_timeout_ms: 10_000,
            max_header_bytes: 16 * 1024,
            idle_timeout_ms: 60_000,
            body_read_timeout_ms: 10_000,
        }
    }
}

impl ConnectionsConfig {
    /// Checks the bounds, naming the setting at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(ConfigError::invalid(
                "connections.max_connections",
                "must be positive",
            ));
        }
        if self.header_read_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "connections.header_read_timeout_ms",
                "must be positive",
            ));
        }
        if !(1_024..=1024 * 1024).contains(&self.max_header_bytes) {
            return Err(ConfigError::invalid(
                "connections.max_header_bytes",
                "must be 1024 to 1048576",
            ));
        }
        if self.idle_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "connections.idle_timeout_ms",
                "must be positive",
            ));
        }
        if self.body_read_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "connections.body_read_timeout_ms",
                "must be positive",
            ));
        }
        Ok(())
    }

    /// hyper's own bound on a request head: past it hyper stops reading.
    fn hard_header_limit(&self) -> usize {
        self.max_header_bytes.saturating_mul(2)
    }
}

/// Serves `router` on `listener` under `config`'s bounds until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: &ConnectionsConfig,
    metrics: Metrics,
    service: &'static str,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.header_read_timeout_ms))
        .max_buf_size(config.hard_header_limit().max(8_192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.hard_header_limit()).unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_STREAMS)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let open = metrics.http_connections.with_label_values(&[service]);
    let over_limit = metrics
        .http_connections_closed
        .with_label_values(&[service, "over_limit"]);
    let idle = metrics
        .http_connections_closed
        .with_label_values(&[service, "idle"]);
    let (idle_timeout, max_header_bytes, body_timeout) = (
        Duration::from_millis(config.idle_timeout_ms),
        config.max_header_bytes,
        Duration::from_millis(config.body_read_timeout_ms),
    );
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors or similar: wait instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            over_limit.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::default());
        let io = TokioIo::new(IdleTimeout::new(stream, idle_timeout, activity.clone()));
        let router = router.clone();
        let handler = hyper::service::service_fn(move |request: Request<Incoming>| {
            let guard = InFlight::enter(&activity);
            let router = router.clone();
            async move {
                let request = request.map(|body| DeadlineBody::new(body, body_timeout));
                let response = answer(router, request, peer, max_header_bytes).await;
                drop(guard);
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let connection = graceful.watch(
            builder
                .serve_connection_with_upgrades(io, handler)
                .into_owned(),
        );
        let (open, idle) = (open.clone(), idle.clone());
        tokio::spawn(async move {
            open.inc();
            if let Err(error) = connection.await {
                if is_idle(&*error) {
                    idle.inc();
                }
            }
            open.dec();
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain period; they end with the process");
    }
    Ok(())
}

/// The router's answer, or a JSON 431 for a head over `max_header_bytes`.
async fn answer(
    router: Router,
    request: Request<DeadlineBody<Incoming>>,
    peer: SocketAddr,
    max_header_bytes: usize,
) -> Response {
    if head_bytes(request.uri(), request.headers()) > max_header_bytes {
        return headers_too_large(max_header_bytes);
    }
    let mut request = request.map(axum::body::Body::new);
    request.extensions_mut().insert(ConnectInfo(peer));
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// The size of a request head as it came on the wire, near enough: the target and every
/// header line.
pub fn head_bytes(uri: &Uri, headers: &HeaderMap) -> usize {
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len());
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + target
}

/// `431` with the JSON error body every pushline error has.
pub fn headers_too_large(limit: usize) -> Response {
    let body = serde_json::json!({"error": {
        "code": "headers_too_large",
        "message": format!("the request's headers are over {limit} bytes"),
    }});
    (
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        [(axum::http::header::CONNECTION, "close")],
        axum::Json(body),
    )
        .into_response()
}

/// A connection's requests: how many are in flight, and when the last began or ended
/// (ms on the connection's own clock, [`Activity::now`]).
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
    started: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

impl Activity {
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last_ms.store(self.now(), Ordering::Relaxed);
    }

    /// When the connection stops being busy: now while a request is in flight, else the
    /// last request's time plus `timeout`.
    fn idle_at(&self, timeout: Duration) -> Instant {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Instant::now() + timeout;
        }
        self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + timeout
    }
}

/// Counts a request in flight on its connection while alive.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: &Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.touch();
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request body that must be complete within a deadline set when the request began: a
/// client trickling its body (or sending none after its head) cannot hold a handler's
/// admission longer than that.
pub struct DeadlineBody<B> {
    inner: B,
    deadline: Pin<Box<Sleep>>,
}

impl<B> DeadlineBody<B> {
    fn new(inner: B, within: Duration) -> Self {
        DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(within)),
        }
    }
}

/// The body did not arrive within `connections.body_read_timeout_ms`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimeout;

impl<B> hyper::body::Body for DeadlineBody<B>
where
    B: hyper::body::Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The error an idle connection's reads end with.
#[derive(Debug, thiserror::Error)]
#[error("connection idle")]
struct Idle;

fn is_idle(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if error
            .downcast_ref::<io::Error>()
            .and_then(|e| e.get_ref())
            .is_some_and(|inner| inner.is::<Idle>())
        {
            return true;
        }
        source = error.source();
    }
    false
}

/// A connection's socket that fails its reads once no request has begun or ended for
/// `timeout` and none is in flight. Bytes do not count: HTTP/2 pings and window updates
/// would keep an unused connection alive forever. hyper keeps a read pending on every
/// connection that waits for a request (HTTP/1.1) or frames (HTTP/2), so the timer is
/// polled there, and re-armed when it fires early.
struct IdleTimeout<S> {
    inner: S,
    timer: Pin<Box<Sleep>>,
    timeout: Duration,
    activity: Arc<Activity>,
}

impl<S> IdleTimeout<S> {
    fn new(inner: S, timeout: Duration, activity: Arc<Activity>) -> Self {
        IdleTimeout {
            inner,
            timer: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            activity,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => loop {
                if this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let deadline = this.activity.idle_at(this.timeout);
                if deadline <= Instant::now() {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, Idle)));
                }
                this.timer.as_mut().reset(deadline);
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_counts_the_target_and_every_header_line() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", "12345".parse().expect("value"));
        let uri: Uri = "/v1/notify?x=1".parse().expect("uri");
        assert_eq!(head_bytes(&uri, &headers), 14 + 3 + 5 + 4);
    }

    #[test]
    fn bounds_are_checked() {
        assert!(ConnectionsConfig::default().validate().is_ok());
        let zero = ConnectionsConfig {
            max_connections: 0,
            ..ConnectionsConfig::default()
        };
        assert!(
            zero.validate()
                .unwrap_err()
                .to_string()
                .contains("connections.max_connections")
        );
        let small = ConnectionsConfig {
            max_header_bytes: 10,
            ..ConnectionsConfig::default()
        };
        assert!(small.validate().is_err());
    }

    #[tokio::test]
    async fn an_idle_socket_fails_its_read_and_a_request_in_flight_keeps_it() {
        use tokio::io::AsyncReadExt as _;
        tokio::time::pause();
        let (client, server) = tokio::io::duplex(64);
        let activity = Arc::new(Activity::default());
        let mut idle = Box::pin(IdleTimeout::new(
            server,
            Duration::from_secs(5),
            activity.clone(),
        ));
        let guard = InFlight::enter(&activity);
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(20), idle.read(&mut byte)).await;
        assert!(read.is_err(), "a request in flight keeps the connection");
        drop(guard);
        let started = Instant::now();
        let error = idle.read(&mut byte).await.expect_err("idle");
        assert!(started.elapsed() <= Duration::from_millis(5_100));
        assert!(is_idle(&error));
        drop(client);
    }
}
