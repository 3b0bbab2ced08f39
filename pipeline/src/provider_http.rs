//! The HTTP client every dispatcher uses to reach its provider: HTTP/2 only (or, for
//! push services that may not speak it, negotiated by ALPN), TLS by
//! rustls (public roots compiled in, plus configured extra CAs so tests and staging can
//! use a local peer), `TCP_NODELAY` on (without it each request waits on Nagle and
//! delayed ACKs, ~40 ms), keep-alive pings so idle connections survive.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::ConfigError;

/// How to build a provider client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Extra CA certificates (PEM files) to trust.
    pub ca_files: Vec<PathBuf>,
    /// Upper bound on one request, including connecting.
    pub request_timeout: Duration,
    /// The setting that names `ca_files`, for error messages.
    pub ca_setting: &'static str,
}

/// Builds one client (one pool; with HTTP/2 that is one multiplexed connection per host).
pub fn client(
    options: &ClientOptions,
    identity: Option<reqwest::Identity>,
) -> Result<reqwest::Client, ConfigError> {
    build(options, identity, true)
}

/// Like [`client`] but negotiating HTTP/2 or HTTP/1.1 by ALPN, for endpoints such as
/// OAuth token servers that need not speak HTTP/2.
pub fn negotiating_client(options: &ClientOptions) -> Result<reqwest::Client, ConfigError> {
    build(options, None, false)
}

/// The builder [`negotiating_client`] finishes, for a client that needs more (a resolver
/// of its own, a pool that forgets idle hosts): finish it with [`finish`].
pub fn negotiating_builder(options: &ClientOptions) -> Result<reqwest::ClientBuilder, ConfigError> {
    builder(options, None, false)
}

/// Builds the client of a builder from [`negotiating_builder`].
pub fn finish(
    options: &ClientOptions,
    builder: reqwest::ClientBuilder,
) -> Result<reqwest::Client, ConfigError> {
    builder.build().map_err(|e| {
        ConfigError::invalid(
            options.ca_setting,
            format!("cannot build the HTTP client: {e}"),
        )
    })
}

fn build(
    options: &ClientOptions,
    identity: Option<reqwest::Identity>,
    http2_only: bool,
) -> Result<reqwest::Client, ConfigError> {
    finish(options, builder(options, identity, http2_only)?)
}

fn builder(
    options: &ClientOptions,
    identity: Option<reqwest::Identity>,
    http2_only: bool,
) -> Result<reqwest::ClientBuilder, ConfigError> {
    let mut builder = reqwest::Client::builder().use_rustls_tls();
    if http2_only {
        builder = builder.http2_prior_knowledge();
    }
    builder = builder
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Some(Duration::from_secs(30)))
        .http2_keep_alive_timeout(Duration::from_secs(10))
        .http2_keep_alive_while_idle(true)
        .redirect(no_redirects())
        .pool_idle_timeout(None)
        .connect_timeout(options.request_timeout.min(Duration::from_secs(5)))
        .timeout(options.request_timeout);
    for path in &options.ca_files {
        let pem = std::fs::read(path).map_err(|source| ConfigError::File {
            setting: options.ca_setting.to_owned(),
            path: path.clone(),
            source,
        })?;
        let certificate = reqwest::Certificate::from_pem(&pem).map_err(|e| {
            ConfigError::invalid(
                options.ca_setting,
                format!("{}: not a PEM certificate: {e}", path.display()),
            )
        })?;
        builder = builder.add_root_certificate(certificate);
    }
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    Ok(builder)
}

/// Largest error answer read from a provider, bytes: every provider's error body is a
/// short JSON object; past this the answer is dropped (and with it, on HTTP/1.1, the
/// connection; on HTTP/2, the stream).
pub const MAX_ERROR_BODY: usize = 8 * 1024;

/// The redirect policy of every outbound client: none. A 3xx is an answer like any other;
/// following it would let whoever answers choose where pushline connects next.
pub fn no_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::none()
}

/// The verdict on a request that got no answer (connection refused or lost, TLS failure,
/// timeout): retried. The detail never carries the request's URL, which may hold a
/// device's token (APNs, Web Push endpoints) or a project id: it reads `<url>` instead.
pub fn transport_verdict(provider: &str, error: &reqwest::Error) -> crate::dispatch::Verdict {
    let reason = if error.is_timeout() {
        "timeout"
    } else {
        "connection"
    };
    crate::dispatch::Verdict::retry(
        reason,
        format!("{provider} request failed: {}", without_url(error)),
        None,
    )
}

/// `error`'s text with its URL, wherever it appears, replaced by `<url>`.
fn without_url(error: &reqwest::Error) -> String {
    let text = error.to_string();
    match error.url() {
        Some(url) => text.replace(url.as_str(), "<url>"),
        None => text,
    }
}

/// Why a body was not read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is longer than the limit; what was read is discarded.
    #[error("the answer is longer than {limit} bytes")]
    TooLong {
        /// The limit, bytes.
        limit: usize,
    },
    /// The transfer failed.
    #[error("the answer could not be read: {0}")]
    Transfer(#[source] reqwest::Error),
}

/// Reads `response`'s body, at most `limit` bytes: a `Content-Length` over it is refused
/// before reading anything, and a body that grows past it is dropped at that point, so
/// a peer never makes pushline hold more than `limit` bytes of one answer.
pub async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<bytes::Bytes, BodyError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(BodyError::TooLong { limit });
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transfer)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLong { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// A provider's error answer: status, `Retry-After` (seconds), and the JSON body parsed as
/// `T` (its default when the body is missing, longer than [`MAX_ERROR_BODY`] or not that
/// shape).
pub async fn error_answer<T: serde::de::DeserializeOwned + Default>(
    response: reqwest::Response,
) -> (u16, Option<Duration>, T) {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = read_bounded(response, MAX_ERROR_BODY)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    (status, retry_after, body)
}

/// A provider endpoint from configuration (`setting` names it in the error), parsed and
/// checked once at start; pushes append their paths with [`with_path`].
pub fn base_url(setting: &str, url: &str) -> Result<reqwest::Url, ConfigError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ConfigError::invalid(setting, format!("`{url}` is not a URL: {e}")))?;
    if parsed.cannot_be_a_base() || !matches!(parsed.scheme(), "https" | "http") {
        return Err(ConfigError::invalid(
            setting,
            format!("`{url}` is not an http(s) endpoint"),
        ));
    }
    Ok(parsed)
}

/// `base` with `segments` appended to its path (each percent-encoded as a path segment;
/// a trailing slash on `base` is not doubled).
pub fn with_path(base: &reqwest::Url, segments: &[&str]) -> reqwest::Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_appended_once_to_a_parsed_base() {
        for base in ["https://api.push.apple.com", "https://api.push.apple.com/"] {
            let base = base_url("apns.production_url", base).unwrap();
            assert_eq!(
                with_path(&base, &["3", "device", "ab12"]).as_str(),
                "https://api.push.apple.com/3/device/ab12"
            );
        }
        let base = base_url("fcm.base_url", "https://fcm.example:8443/prefix/").unwrap();
        assert_eq!(
            with_path(&base, &["v1", "projects", "p-1", "messages:send"]).as_str(),
            "https://fcm.example:8443/prefix/v1/projects/p-1/messages:send"
        );
        // A segment cannot add path levels of its own.
        assert_eq!(
            with_path(&base, &["a/b"]).as_str(),
            "https://fcm.example:8443/prefix/a%2Fb"
        );
    }

    /// A request that finds nobody listening is retried, and its detail never shows the
    /// URL (which holds the device's token for APNs and Web Push).
    #[tokio::test]
    async fn a_transport_failure_is_retried_without_its_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let url = format!("http://{addr}/3/device/secret-device-token");
        let error = reqwest::Client::new()
            .post(&url)
            .send()
            .await
            .expect_err("nobody listens");
        match transport_verdict("APNs", &error) {
            crate::dispatch::Verdict::Retry {
                reason: "connection",
                detail,
                retry_after: None,
                credential: false,
            } => {
                assert!(detail.starts_with("APNs request failed: "), "{detail}");
                assert!(!detail.contains("secret-device-token"), "{detail}");
                assert!(detail.contains("<url>"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// A peer answering 500 with a body that never ends (64 MiB here), chunked: the
    /// reader gives up at the limit and the connection is dropped, so the peer cannot
    /// send the rest.
    #[tokio::test]
    async fn an_endless_error_answer_is_dropped_at_the_limit() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        const ENDLESS: usize = 64 << 20;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let peer = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut head = [0u8; 4096];
            let _ = socket.read(&mut head).await;
            let chunk = format!("10000\r\n{}\r\n", "a".repeat(0x10000));
            let mut sent = 0;
            if socket
                .write_all(b"HTTP/1.1 500 Oops\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .is_err()
            {
                return sent;
            }
            while sent < ENDLESS && socket.write_all(chunk.as_bytes()).await.is_ok() {
                sent += 0x10000;
            }
            sent
        });
        let client = reqwest::Client::new();
        let response = client
            .post(format!("http://{addr}/push"))
            .send()
            .await
            .expect("answer");
        let error = read_bounded(response, MAX_ERROR_BODY)
            .await
            .expect_err("too long");
        assert!(matches!(
            error,
            BodyError::TooLong {
                limit: MAX_ERROR_BODY
            }
        ));
        drop(client);
        let sent = peer.await.expect("peer");
        assert!(
            sent < ENDLESS / 4,
            "the connection was dropped: the peer got {sent} bytes out"
        );
    }

    #[tokio::test]
    async fn an_answer_declaring_a_long_body_is_refused_before_reading() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut head = [0u8; 4096];
            let _ = socket.read(&mut head).await;
            let _ = socket
                .write_all(b"HTTP/1.1 500 Oops\r\ncontent-length: 67108864\r\n\r\n{")
                .await;
            let _ = socket.read(&mut head).await;
        });
        let response = reqwest::Client::new()
            .post(format!("http://{addr}/push"))
            .send()
            .await
            .expect("answer");
        assert!(matches!(
            read_bounded(response, MAX_ERROR_BODY).await,
            Err(BodyError::TooLong { .. })
        ));
    }

    #[test]
    fn endpoints_that_are_not_http_urls_are_refused_naming_the_setting() {
        for bad in [
            "api.push.apple.com",
            "mailto:ops@example.com",
            "ftp://x.example",
        ] {
            let error = base_url("apns.production_url", bad)
                .unwrap_err()
                .to_string();
            assert!(error.contains("apns.production_url"), "{error}");
        }
    }
}
