//! The frame of every provider's mock (built with the `testing` feature): a real TLS
//! HTTP/2 server that records every request, checks it as the provider's [`Behaviour`]
//! says (what the real provider checks), and answers as a test scripts it (status and
//! reason, delay, connection drop, GOAWAY). Each provider crate brings its own
//! `Behaviour` in its `testing` module.
//!
//! Each mock makes its own CA at start; [`Mock::ca_pem`] is what a dispatcher is told to
//! trust. Waiting for requests uses a [`Notify`], never sleeps.

pub mod sandbox;
pub mod tls;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::CancellationToken;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// Where a mock listens and the name clients use for it.
#[derive(Debug, Clone)]
pub struct Listen {
    /// Address to bind (`127.0.0.1`; `0.0.0.0` inside a container).
    pub bind: String,
    /// Port (0 = any).
    pub port: u16,
    /// Host name clients use; it goes into the certificate and the URLs the mock hands out.
    pub host: String,
}

impl Listen {
    /// Loopback on `port`.
    pub fn loopback(port: u16) -> Self {
        Listen {
            bind: "127.0.0.1".into(),
            port,
            host: "127.0.0.1".into(),
        }
    }
}

/// One request a mock received, with what it answered.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Request path.
    pub path: String,
    /// Request headers, lowercase names.
    pub headers: HashMap<String, String>,
    /// Request body, as received.
    pub body: Bytes,
    /// When it was received (Unix ms).
    pub at_ms: u64,
    /// When it was received (Unix µs), for latency measurements.
    pub at_us: u64,
    /// The status answered.
    pub status: u16,
    /// Which connection it came on (counting from 1).
    pub connection: u64,
}

impl Recorded {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answer with this status, body and optional `Retry-After` (seconds).
    Status {
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
        /// `Retry-After`.
        retry_after: Option<u64>,
    },
    /// Wait, then answer as the inner reply (or success).
    Delay(Duration, Option<Box<Reply>>),
    /// Answer with this redirect status (3xx) and `Location`.
    Redirect(u16, String),
    /// Close the connection abruptly without answering.
    Drop,
    /// Send GOAWAY on the connection (it finishes open streams), then answer success.
    GoAway,
}

/// What a provider-specific handler decided about a request before scripting applies.
pub enum Checked {
    /// Refused by the mock's own validation, as the real provider would.
    Refuse(u16, String),
    /// Valid; `key` (a device token) selects scripted replies.
    Valid {
        /// The device token.
        key: String,
        /// The success body.
        ok: String,
        /// Headers of a success answer.
        ok_headers: Vec<(String, String)>,
    },
    /// Answered directly (e.g. the OAuth token endpoint), not recorded as a push.
    Direct(u16, String),
}

/// The provider-specific part of a mock.
pub trait Behaviour: Send + Sync + 'static {
    /// Validates one request as the real provider would.
    fn check(
        &self,
        path: &str,
        headers: &HashMap<String, String>,
        body: &Bytes,
        client_cert: bool,
    ) -> Checked;
}

#[derive(Default)]
struct Script {
    by_key: HashMap<String, VecDeque<Reply>>,
    global: VecDeque<Reply>,
    delay: Duration,
}

struct Shared<B> {
    behaviour: B,
    recorded: Mutex<Vec<Recorded>>,
    notify: Notify,
    script: Mutex<Script>,
    connections: AtomicU64,
}

/// A running mock server; stops when dropped.
pub struct Mock<B: Behaviour> {
    addr: SocketAddr,
    host: String,
    ca_pem: String,
    shared: Arc<Shared<B>>,
    shutdown: CancellationToken,
}

impl<B: Behaviour> Drop for Mock<B> {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl<B: Behaviour> Mock<B> {
    /// Starts a mock checking and answering as `behaviour` says, with a certificate of
    /// `ca`, listening as `at` says.
    pub async fn start(behaviour: B, ca: &tls::TestCa, at: &Listen) -> Self {
        Self::start_speaking(behaviour, ca, at, false).await
    }

    /// Like `start`; with `http1` the mock speaks HTTP/1.1 only (no GOAWAY then).
    pub async fn start_speaking(behaviour: B, ca: &tls::TestCa, at: &Listen, http1: bool) -> Self {
        let protocol: &[u8] = if http1 { b"http/1.1" } else { b"h2" };
        let tls = ca.server_tls(&at.host, protocol);
        let listener = TcpListener::bind((at.bind.as_str(), at.port))
            .await
            .expect("bind mock");
        let addr = listener.local_addr().expect("mock addr");
        let shared = Arc::new(Shared {
            behaviour,
            recorded: Mutex::new(Vec::new()),
            notify: Notify::new(),
            script: Mutex::new(Script::default()),
            connections: AtomicU64::new(0),
        });
        let shutdown = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            tls.acceptor,
            shared.clone(),
            shutdown.clone(),
            http1,
        ));
        Mock {
            addr,
            host: at.host.clone(),
            ca_pem: tls.ca_pem,
            shared,
            shutdown,
        }
    }

    /// The behaviour it answers with (its state: keys it trusts, tokens it issued, …).
    pub fn state(&self) -> &B {
        &self.shared.behaviour
    }

    /// `https://<host>:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}:{}", self.host, self.addr.port())
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA certificate (PEM) its server certificate chains to.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes the CA certificate to `dir/name` and returns the path.
    pub fn write_ca(&self, dir: &std::path::Path, name: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.ca_pem).expect("write CA");
        path
    }

    /// Answers the next requests for `key` (a device token) with `replies`, in order.
    pub fn script(&self, key: &str, replies: impl IntoIterator<Item = Reply>) {
        let mut script = self.shared.script.lock().expect("script lock");
        script
            .by_key
            .entry(key.to_owned())
            .or_default()
            .extend(replies);
    }

    /// Answers the next requests, whatever their token, with `replies` (after any
    /// per-token script).
    pub fn script_all(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared
            .script
            .lock()
            .expect("script lock")
            .global
            .extend(replies);
    }

    /// Delays every answer by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.script.lock().expect("script lock").delay = delay;
    }

    /// Every push request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.recorded.lock().expect("record lock").clone()
    }

    /// Push requests answered 200 among those from the `from`-th on, and how many requests
    /// there are now. A poller copies each request once and holds the lock only while it
    /// copies the new ones: copying them all on every poll, under the lock that every
    /// answer takes, stalled the mock for seconds once it held a few hundred thousand.
    pub fn delivered_from(&self, from: usize) -> (Vec<Recorded>, usize) {
        let recorded = self.shared.recorded.lock().expect("record lock");
        let new = recorded
            .get(from..)
            .unwrap_or_default()
            .iter()
            .filter(|r| r.status == 200)
            .cloned()
            .collect();
        (new, recorded.len())
    }

    /// Push requests answered 200.
    pub fn delivered(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.status == 200)
            .collect()
    }

    /// Receive times (Unix ms) of pushes answered 200 at or after `since_ms`, without
    /// copying the requests (benchmarks poll this).
    pub fn delivered_times(&self, since_ms: u64) -> Vec<u64> {
        let recorded = self.shared.recorded.lock().expect("record lock");
        recorded
            .iter()
            .filter(|r| r.status == 200 && r.at_ms >= since_ms)
            .map(|r| r.at_ms)
            .collect()
    }

    /// How many pushes were answered 200 at or after `since_ms`.
    pub fn delivered_count(&self, since_ms: u64) -> usize {
        let recorded = self.shared.recorded.lock().expect("record lock");
        recorded
            .iter()
            .filter(|r| r.status == 200 && r.at_ms >= since_ms)
            .count()
    }

    /// How many connections clients opened.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Waits until `condition` holds over the recorded requests, or panics after `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&[Recorded]) -> bool,
    ) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            {
                let recorded = self.shared.recorded.lock().expect("record lock");
                if condition(&recorded) {
                    return recorded.clone();
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out after {timeout:?} waiting for {what}; received {:#?}",
                self.requests()
            );
            let _ = tokio::time::timeout(left, notified).await;
        }
    }

    /// Waits, without a limit, until more than `seen` requests were recorded; returns them all.
    pub async fn wait_beyond(&self, seen: usize) -> Vec<Recorded> {
        loop {
            let notified = self.shared.notify.notified();
            {
                let recorded = self.shared.recorded.lock().expect("record lock");
                if recorded.len() > seen {
                    return recorded.clone();
                }
            }
            notified.await;
        }
    }

    /// Waits until `n` pushes were answered 200.
    pub async fn wait_delivered(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        self.wait_for(&format!("{n} delivered pushes"), timeout, |r| {
            r.iter().filter(|r| r.status == 200).count() >= n
        })
        .await
        .into_iter()
        .filter(|r| r.status == 200)
        .collect()
    }
}

struct Connection {
    id: u64,
    drop: CancellationToken,
    goaway: CancellationToken,
    client_cert: bool,
}

async fn accept_loop<B: Behaviour>(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared<B>>,
    shutdown: CancellationToken,
    http1: bool,
) {
    loop {
        let (tcp, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let client_cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty());
            let id = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
            let conn = Arc::new(Connection {
                id,
                drop: CancellationToken::new(),
                goaway: CancellationToken::new(),
                client_cert,
            });
            let service_conn = conn.clone();
            let service_shared = shared.clone();
            let service = hyper::service::service_fn(move |request| {
                let shared = service_shared.clone();
                let conn = service_conn.clone();
                async move { Ok::<_, Infallible>(handle(&shared, &conn, request).await) }
            });
            if http1 {
                let http = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = http => {}
                    () = conn.drop.cancelled() => {}
                    () = shutdown.cancelled() => {}
                }
                return;
            }
            let http = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(1_000)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(http);
            tokio::select! {
                _ = http.as_mut() => {}
                () = conn.drop.cancelled() => {}
                () = shutdown.cancelled() => {}
                () = conn.goaway.cancelled() => {
                    http.as_mut().graceful_shutdown();
                    tokio::select! {
                        _ = http.as_mut() => {}
                        () = conn.drop.cancelled() => {}
                    }
                }
            }
        });
    }
}

fn response(status: u16, body: String, headers: &[(String, String)]) -> Response<Full<Bytes>> {
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

async fn handle<B: Behaviour>(
    shared: &Shared<B>,
    conn: &Connection,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let method_ok = request.method() == hyper::Method::POST;
    let headers: HashMap<String, String> = request
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let at_us = now_us();
    let checked = if method_ok {
        shared
            .behaviour
            .check(&path, &headers, &body, conn.client_cert)
    } else {
        Checked::Refuse(405, r#"{"reason":"MethodNotAllowed"}"#.into())
    };
    let (key, ok, ok_headers) = match checked {
        Checked::Direct(status, body) => return response(status, body, &[]),
        Checked::Refuse(status, reply) => {
            record(shared, conn, path, headers, body, at_us, status);
            return response(status, reply, &[]);
        }
        Checked::Valid {
            key,
            ok,
            ok_headers,
        } => (key, ok, ok_headers),
    };
    let (reply, delay) = {
        let mut script = shared.script.lock().expect("script lock");
        let reply = script
            .by_key
            .get_mut(&key)
            .and_then(VecDeque::pop_front)
            .or_else(|| script.global.pop_front());
        (reply, script.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut reply = reply;
    while let Some(Reply::Delay(pause, inner)) = reply {
        tokio::time::sleep(pause).await;
        reply = inner.map(|r| *r);
    }
    match reply {
        None | Some(Reply::Delay(..)) => {
            record(shared, conn, path, headers, body, at_us, 200);
            response(200, ok, &ok_headers)
        }
        Some(Reply::GoAway) => {
            conn.goaway.cancel();
            record(shared, conn, path, headers, body, at_us, 200);
            response(200, ok, &ok_headers)
        }
        Some(Reply::Drop) => {
            record(shared, conn, path, headers, body, at_us, 0);
            conn.drop.cancel();
            std::future::pending::<()>().await;
            unreachable!("the connection is dropped")
        }
        Some(Reply::Redirect(status, location)) => {
            record(shared, conn, path, headers, body, at_us, status);
            response(status, String::new(), &[("location".to_owned(), location)])
        }
        Some(Reply::Status {
            status,
            body: reply,
            retry_after,
        }) => {
            record(shared, conn, path, headers, body, at_us, status);
            let extra: Vec<(String, String)> = retry_after
                .map(|s| ("retry-after".to_owned(), s.to_string()))
                .into_iter()
                .collect();
            response(status, reply, &extra)
        }
    }
}

/// Serves `app` over plain HTTP on a free loopback port until the returned token is
/// cancelled: the small mocks of Webex's APIs.
pub async fn serve_loopback(app: axum::Router) -> (SocketAddr, crate::CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = crate::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    (addr, shutdown)
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn record<B>(
    shared: &Shared<B>,
    conn: &Connection,
    path: String,
    headers: HashMap<String, String>,
    body: Bytes,
    at_us: u64,
    status: u16,
) {
    shared.recorded.lock().expect("record lock").push(Recorded {
        path,
        headers,
        body,
        at_ms: at_us / 1000,
        at_us,
        status,
        connection: conn.id,
    });
    shared.notify.notify_waiters();
}
