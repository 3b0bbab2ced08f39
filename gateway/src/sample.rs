//! The sample web app (`sample_app`, development only): with it on, the WebSocket
//! listener also answers a browser's `GET /` and `GET /sample-app` with one static page
//! (`gateway/static/`), and the page's script, style sheet and service worker beside it.
//! The files are compiled into the binary: nothing is read from disk at run time.
//!
//! The listener speaks WebSocket through tungstenite, which refuses any request that is
//! not an upgrade, so the request head is read here first:
//!
//! | the request | what happens |
//! |---|---|
//! | `GET` (or `HEAD`) of one of [`ASSETS`]' paths, not an upgrade | the file, then the connection is closed |
//! | anything else (the upgrade on `/v1/connect`, any other path) | handed to [`ws::serve`] with the bytes already read put back in front, exactly as without `sample_app` |
//! | no complete head within `limits.hello_timeout_ms`, or one over [`MAX_HEAD`] bytes | closed |
//!
//! Without `sample_app` none of this runs: connections go straight to [`ws::serve`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pipeline::CancellationToken;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use crate::hub::Hub;
use crate::ws;

/// A static file of the sample app.
#[derive(Debug, PartialEq, Eq)]
pub struct Asset {
    /// The paths it answers.
    pub paths: &'static [&'static str],
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static str,
}

/// The sample app's files.
pub const ASSETS: &[Asset] = &[
    Asset {
        paths: &["/", "/sample-app", "/sample-app.html"],
        content_type: "text/html; charset=utf-8",
        body: include_str!("../static/sample-app.html"),
    },
    Asset {
        paths: &["/sample-app.js"],
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../static/sample-app.js"),
    },
    Asset {
        paths: &["/sample-app.css"],
        content_type: "text/css; charset=utf-8",
        body: include_str!("../static/sample-app.css"),
    },
    Asset {
        paths: &["/sample-app-sw.js"],
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../static/sample-app-sw.js"),
    },
];

/// Longest request head read before deciding (a browser's is well under 2 KiB).
pub const MAX_HEAD: usize = 8 * 1024;

/// The page's scripts and styles are its own files; it talks to the registry (another
/// port, given in its address) and to this gateway's WebSocket.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self' http: https: ws: wss:; img-src 'self' data:; frame-ancestors 'none'";

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// One of the sample app's files; `head_only` for `HEAD`.
    Asset {
        /// The file.
        asset: &'static Asset,
        /// Answer without the body.
        head_only: bool,
    },
    /// Anything else: the WebSocket transport's business.
    WebSocket,
}

/// Decides from a complete request head (up to and including its blank line).
pub fn route(head: &[u8]) -> Route {
    let Ok(head) = std::str::from_utf8(head) else {
        return Route::WebSocket;
    };
    let mut lines = head.split("\r\n");
    let mut request = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target)) = (request.next(), request.next()) else {
        return Route::WebSocket;
    };
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::WebSocket,
    };
    let upgrade = lines.any(|line| {
        line.split_once(':')
            .is_some_and(|(name, _)| name.trim().eq_ignore_ascii_case("upgrade"))
    });
    let path = target.split(['?', '#']).next().unwrap_or_default();
    match ASSETS.iter().find(|asset| asset.paths.contains(&path)) {
        Some(asset) if !upgrade => Route::Asset { asset, head_only },
        _ => Route::WebSocket,
    }
}

/// The complete answer for `asset`.
fn response(asset: &Asset, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {}\r\ncontent-length: {}\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\ncontent-security-policy: {CONTENT_SECURITY_POLICY}\r\nconnection: close\r\n\r\n",
        asset.content_type,
        asset.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(asset.body.as_bytes());
    }
    out
}

/// Where a request head ends (the index after its blank line), if it is complete.
fn head_end(buffer: &[u8]) -> Option<usize> {
    buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// Serves one accepted connection of a listener with `sample_app` on: a sample app file,
/// or the WebSocket transport.
pub async fn serve<S>(hub: Arc<Hub>, mut io: S, peer: SocketAddr, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let timeout = Duration::from_millis(hub.limits.hello_timeout_ms);
    let mut head = Vec::with_capacity(1024);
    let read = tokio::time::timeout(timeout, async {
        let mut chunk = [0u8; 1024];
        loop {
            if head_end(&head).is_some() {
                return true;
            }
            if head.len() >= MAX_HEAD {
                return false;
            }
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    if read != Ok(true) {
        return;
    }
    let end = head_end(&head).unwrap_or(head.len());
    match route(&head[..end]) {
        Route::Asset { asset, head_only } => {
            let answer = response(asset, head_only);
            let _ = tokio::time::timeout(timeout, async {
                io.write_all(&answer).await?;
                io.shutdown().await
            })
            .await;
        }
        Route::WebSocket => ws::serve(hub, Replay::new(head, io), peer, shutdown).await,
    }
}

/// A connection whose first bytes were already read: they are read again first.
struct Replay<S> {
    read: Vec<u8>,
    at: usize,
    io: S,
}

impl<S> Replay<S> {
    fn new(read: Vec<u8>, io: S) -> Self {
        Replay { read, at: 0, io }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.read.len() {
            let n = buf.remaining().min(this.read.len() - this.at);
            buf.put_slice(&this.read[this.at..this.at + n]);
            this.at += n;
            if this.at == this.read.len() {
                this.read = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asset_at(path: &str) -> &'static Asset {
        ASSETS.iter().find(|a| a.paths.contains(&path)).expect(path)
    }

    #[test]
    fn a_browser_asking_for_the_page_gets_it() {
        for (head, path, head_only) in [
            ("GET / HTTP/1.1\r\nHost: x\r\n\r\n", "/", false),
            (
                "GET /sample-app?registry=http://127.0.0.1:1&token=a.b.c HTTP/1.1\r\nHost: x\r\n\r\n",
                "/sample-app",
                false,
            ),
            (
                "HEAD /sample-app.js HTTP/1.1\r\n\r\n",
                "/sample-app.js",
                true,
            ),
            (
                "GET /sample-app-sw.js HTTP/1.1\r\n\r\n",
                "/sample-app-sw.js",
                false,
            ),
        ] {
            assert_eq!(
                route(head.as_bytes()),
                Route::Asset {
                    asset: asset_at(path),
                    head_only
                },
                "{head}"
            );
        }
    }

    #[test]
    fn upgrades_and_other_requests_go_to_the_websocket_transport() {
        for head in [
            "GET /v1/connect HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nupgrade: websocket\r\n\r\n",
            "POST / HTTP/1.1\r\n\r\n",
            "GET /elsewhere HTTP/1.1\r\n\r\n",
            "GET /sample-app.json HTTP/1.1\r\n\r\n",
            "nonsense",
        ] {
            assert_eq!(route(head.as_bytes()), Route::WebSocket, "{head}");
        }
        assert_eq!(route(&[0xff, 0xfe, b' ', b'/']), Route::WebSocket);
    }

    #[test]
    fn a_head_ends_at_its_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
    }

    #[test]
    fn the_answer_says_what_it_is_and_how_long() {
        let asset = asset_at("/");
        let answer = String::from_utf8(response(asset, false)).expect("text");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(answer.contains("content-type: text/html; charset=utf-8\r\n"));
        assert!(answer.contains(&format!("content-length: {}\r\n", asset.body.len())));
        assert!(answer.ends_with(asset.body));
        let head_only = String::from_utf8(response(asset, true)).expect("text");
        assert!(head_only.ends_with("\r\n\r\n"));
    }

    #[tokio::test]
    async fn bytes_read_before_the_decision_are_read_again() {
        let (client, server) = tokio::io::duplex(64);
        let mut replay = Replay::new(b"GET /v1".to_vec(), server);
        let mut client = client;
        client.write_all(b"/connect").await.expect("write");
        drop(client);
        let mut all = String::new();
        replay.read_to_string(&mut all).await.expect("read");
        assert_eq!(all, "GET /v1/connect");
    }
}
