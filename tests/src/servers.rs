//! Real `nats-server` (JetStream) and `redis-server` processes, one per test, on free
//! loopback ports with their own temporary directories; killed when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Fails with a message naming the binary and the package that provides it.
fn require(binary: &str, package: &str) {
    match Command::new(binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{binary}` is not on PATH; the tests need a real one. Install it with \
             `apt-get install -y {package}` (Debian/Ubuntu)."
        ),
        Err(e) => panic!("cannot run `{binary} --version`: {e}"),
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released for the server to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// How to tell that the server on a port is really ours and ready: what to send, and
/// the prefix its answer starts with.
#[derive(Clone, Copy)]
struct Probe {
    send: &'static [u8],
    expect: &'static [u8],
}

const NATS_PROBE: Probe = Probe {
    send: b"",
    expect: b"INFO ",
};
const REDIS_PROBE: Probe = Probe {
    send: b"PING\r\n",
    expect: b"+PONG",
};

/// Starts a server with `spawn(port)` and waits until it answers its protocol; retries on
/// another port if the chosen one was taken meanwhile (another test's listener may grab a
/// released port before the server binds it).
fn start_on_free_port(
    name: &str,
    probe: Probe,
    mut spawn: impl FnMut(u16) -> Child,
) -> (Child, u16) {
    for _ in 0..8 {
        let port = free_port();
        let mut child = spawn(port);
        if wait_listening(&mut child, port, probe) {
            return (child, port);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("{name} did not start on any of 8 ports");
}

/// Waits (up to 10 s) for `port` to answer `probe` while `child` runs; false if the child
/// exited first (its port was taken).
fn wait_listening(child: &mut Child, port: u16, probe: Probe) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pause = Duration::from_millis(2);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if answers(addr, probe) {
            // Still ours? A server that lost the port race exits right after binding fails.
            return matches!(child.try_wait(), Ok(None));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    false
}

fn answers(addr: SocketAddr, probe: Probe) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if !probe.send.is_empty() && stream.write_all(probe.send).is_err() {
        return false;
    }
    let mut buffer = [0u8; 16];
    let mut read = 0;
    while read < probe.expect.len() {
        match stream.read(&mut buffer[read..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => read += n,
        }
    }
    buffer.starts_with(probe.expect)
}

/// A `nats-server -js` with its own store directory.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl NatsServer {
    /// Starts a fresh server.
    pub fn start() -> Self {
        require("nats-server", "nats-server");
        let dir = tempfile::tempdir().expect("temp dir");
        let store = dir.path().to_owned();
        let (child, port) =
            start_on_free_port("nats-server", NATS_PROBE, |port| spawn_nats(port, &store));
        NatsServer {
            child: Some(child),
            port,
            dir,
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its store stays for [`NatsServer::restart`]).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = spawn_nats(self.port, self.dir.path());
            if wait_listening(&mut child, self.port, NATS_PROBE) {
                self.child = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "nats-server did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn spawn_nats(port: u16, store: &Path) -> Child {
    Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nats-server")
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `redis-server` without persistence.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    _dir: TempDir,
}

impl RedisServer {
    /// Starts a fresh server.
    pub fn start() -> Self {
        require("redis-server", "redis-server");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().to_owned();
        let (child, port) = start_on_free_port("redis-server", REDIS_PROBE, |port| {
            Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server")
        });
        RedisServer {
            child: Some(child),
            port,
            _dir: dir,
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
