//! The public listeners hold connections under bounds: a client that sends its headers
//! slowly, or nothing at all, is closed within the timeouts while others are answered;
//! connections over the cap are closed at once; oversized headers get a JSON 431.

use std::time::{Duration, Instant};

use harness::stack::Stack;
use pipeline::listener::ConnectionsConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Waits until the server closes `stream` (a read returns end of file or an error), at
/// most `within`; the time it took.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + within),
            stream.read(&mut buffer),
        )
        .await
        {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the connection was still open after {within:?}"),
        }
    }
}

/// A request on the public API that needs no credentials: an unknown route, answered
/// 404.
async fn answered(addr: std::net::SocketAddr) -> u16 {
    reqwest::Client::new()
        .get(format!("http://{addr}/nothing-here"))
        .send()
        .await
        .expect("answered")
        .status()
        .as_u16()
}

fn tight() -> ConnectionsConfig {
    ConnectionsConfig {
        max_connections: 64,
        header_read_timeout_ms: 600,
        max_header_bytes: 2_048,
        idle_timeout_ms: 1_000,
        body_read_timeout_ms: 500,
    }
}

#[tokio::test]
async fn a_request_whose_body_never_comes_is_answered_in_time() {
    let stack = Stack::start_with(|c| c.ingest.connections = tight()).await;
    let mut stream = TcpStream::connect(stack.ingest.addr)
        .await
        .expect("connect");
    stream
        .write_all(
            b"POST /webhooks/webex HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{",
        )
        .await
        .expect("write");
    let started = Instant::now();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    let head = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 4"), "{head}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Its admission is free again: an ordinary request is answered.
    assert_eq!(answered(stack.ingest.addr).await, 404);
}

#[tokio::test]
async fn slow_and_idle_connections_are_closed_while_others_are_answered() {
    let stack = Stack::start_with(|c| {
        c.ingest.connections = tight();
        c.registry.connections = tight();
    })
    .await;
    for addr in [stack.ingest.addr, stack.registry.addr] {
        let mut slow = Vec::new();
        for _ in 0..20 {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream
                .write_all(b"POST /webhooks/webex HTTP/1.1\r\nhost: x\r\n")
                .await
                .expect("write");
            slow.push(stream);
        }
        let mut idle = Vec::new();
        for _ in 0..20 {
            idle.push(TcpStream::connect(addr).await.expect("connect"));
        }
        // The slow ones keep sending a header line now and then, never finishing.
        let trickle = tokio::spawn(async move {
            for i in 0..40 {
                for stream in &mut slow {
                    let _ = stream.write_all(format!("x-{i}: y\r\n").as_bytes()).await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            slow
        });
        assert_eq!(answered(addr).await, 404, "answered meanwhile");
        let mut slow = trickle.await.expect("trickle");
        for stream in slow.iter_mut().chain(idle.iter_mut()) {
            let took = closed_within(stream, Duration::from_secs(5)).await;
            assert!(took < Duration::from_secs(5));
        }
        assert_eq!(answered(addr).await, 404, "answered after");
    }
}

#[tokio::test]
async fn a_keep_alive_connection_is_closed_once_idle() {
    let stack = Stack::start_with(|c| c.ingest.connections = tight()).await;
    let mut stream = TcpStream::connect(stack.ingest.addr)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /nothing-here HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = vec![0u8; 4096];
    let n = stream.read(&mut answer).await.expect("answer");
    assert!(answer[..n].starts_with(b"HTTP/1.1 404"));
    let took = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(
        took < Duration::from_secs(3),
        "an idle keep-alive connection is closed within the timeouts ({took:?})"
    );
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let stack = Stack::start_with(|c| {
        c.registry.connections = ConnectionsConfig {
            max_connections: 5,
            idle_timeout_ms: 60_000,
            header_read_timeout_ms: 60_000,
            ..ConnectionsConfig::default()
        };
    })
    .await;
    let addr = stack.registry.addr;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // Every held connection is accepted before the next is tried.
    harness::wait::until_true(
        "the five connections to count",
        Duration::from_secs(5),
        || async {
            stack
                .registry
                .metrics()
                .await
                .contains(r#"pushline_http_connections{service="registry"} 5"#)
        },
    )
    .await;
    let mut over = TcpStream::connect(addr).await.expect("connect");
    let _ = over.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let took = closed_within(&mut over, Duration::from_secs(2)).await;
    assert!(took < Duration::from_secs(1), "closed at once ({took:?})");
    assert!(stack.registry.metrics().await.contains(
        r#"pushline_http_connections_closed_total{reason="over_limit",service="registry"} 1"#
    ));
    drop(held);
    harness::wait::until_true("a slot to free up", Duration::from_secs(5), || async {
        reqwest::Client::new()
            .get(format!("http://{addr}/nothing-here"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 404)
    })
    .await;
}

#[tokio::test]
async fn headers_over_the_limit_get_a_json_431() {
    let stack = Stack::start_with(|c| c.ingest.connections = tight()).await;
    let http = reqwest::Client::new();
    let response = http
        .post(stack.ingest.url("/webhooks/webex"))
        .header("x-padding", "a".repeat(3_000))
        .body("{}")
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 431);
    let body: serde_json::Value = response.json().await.expect("a JSON body");
    assert_eq!(body["error"]["code"], "headers_too_large", "{body}");
    // Far beyond it, hyper stops reading: still a 431, and the service is unharmed.
    let response = http
        .post(stack.ingest.url("/webhooks/webex"))
        .header("x-padding", "a".repeat(64 * 1024))
        .body("{}")
        .send()
        .await;
    if let Ok(response) = response {
        assert_eq!(response.status(), 431);
    }
    assert_eq!(answered(stack.ingest.addr).await, 404);
}
