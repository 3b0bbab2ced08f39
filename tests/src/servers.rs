//! Real `nats-server` (JetStream) and `redis-server` processes, one per test, on free
//! loopback ports with their own temporary directories; killed when dropped.
//!
//! Ports are chosen by binding port 0 and releasing it, so another listener may take the
//! port before the server binds it. Two guards make that harmless: a port is never handed
//! out twice in one process, and each server is started with a unique name its readiness
//! probe must see (NATS `server_name`, Redis `dbfilename`), so a server that lost the race
//! is retried on another port instead of being mistaken for the winner.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The server binary: from PATH, else from the system directories Debian installs into
/// (`nats-server` lives in `/usr/sbin`, often not on a user's PATH).
pub(crate) fn locate(binary: &str) -> std::path::PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(binary).is_file()))
        .unwrap_or(false);
    if !on_path {
        for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
            let candidate = Path::new(dir).join(binary);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    std::path::PathBuf::from(binary)
}

/// Fails with a message naming the binary and the package that provides it.
pub(crate) fn require(binary: &str, package: &str) {
    match Command::new(locate(binary))
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

/// A free TCP port on 127.0.0.1 for a test server, never one handed out before in this
/// process. It is drawn from below the kernel's ephemeral range (which starts at 32768 by
/// default), so it cannot be reused meanwhile by an outgoing connection or a port-0
/// listener between this check and the server binding it.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let (low, high) = ephemeral_range();
    let (from, to) = if low > 12_000 {
        (10_000, low.min(32_000))
    } else {
        (high + 1, 65_000)
    };
    loop {
        let port = rand::random_range(from..to);
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        given.push(port);
        return port;
    }
}

fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((parts.next()??, parts.next()??))
        })
        .unwrap_or((32_768, 60_999))
}

/// A name unique to one server process.
pub(crate) fn unique_name(kind: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("pushline-test-{kind}-{}-{n}", std::process::id())
}

/// What to send, and the text the answer must contain, to know the server is ours and up.
pub(crate) struct Probe {
    send: &'static [u8],
    expect: String,
}

pub(crate) fn nats_probe(name: &str) -> Probe {
    Probe {
        send: b"",
        expect: format!("\"server_name\":\"{name}\""),
    }
}

pub(crate) fn redis_probe(name: &str) -> Probe {
    Probe {
        send: b"CONFIG GET dbfilename\r\n",
        expect: name.to_owned(),
    }
}

/// Starts a server with `spawn(port)` until one answers `probe` (at most 8 ports).
pub(crate) fn start_on_free_port(
    name: &str,
    probe: &Probe,
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

/// Starts a server on a port it must have (a restart, a cluster node whose peers know
/// the port), retrying for up to 10 s while the port is still held by its predecessor.
pub(crate) fn respawn_on(
    port: u16,
    probe: &Probe,
    name: &str,
    mut spawn: impl FnMut() -> Child,
) -> Child {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut child = spawn();
        if wait_listening(&mut child, port, probe) {
            return child;
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            Instant::now() < deadline,
            "{name} did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (up to 10 s) for `port` to answer `probe`; false if the child exited first.
pub(crate) fn wait_listening(child: &mut Child, port: u16, probe: &Probe) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pause = Duration::from_millis(2);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if answers(addr, probe) {
            return true;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    false
}

fn answers(addr: SocketAddr, probe: &Probe) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if !probe.send.is_empty() && stream.write_all(probe.send).is_err() {
        return false;
    }
    let mut answer = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    while answer.len() < 8192 {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return false,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
        }
        if String::from_utf8_lossy(&answer).contains(probe.expect.as_str()) {
            return true;
        }
    }
    false
}

/// A `nats-server -js` with its own store directory.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    name: String,
}

impl NatsServer {
    /// Starts a fresh server.
    pub fn start() -> Self {
        require("nats-server", "nats-server");
        let dir = tempfile::tempdir().expect("temp dir");
        let store = dir.path().to_owned();
        let name = unique_name("nats");
        let (child, port) = start_on_free_port("nats-server", &nats_probe(&name), |port| {
            spawn_nats(port, &store, &name)
        });
        NatsServer {
            child: Some(child),
            port,
            dir,
            name,
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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
        let (port, dir, name) = (self.port, self.dir.path(), &self.name);
        self.child = Some(respawn_on(port, &nats_probe(name), name, || {
            spawn_nats(port, dir, name)
        }));
    }
}

fn spawn_nats(port: u16, store: &Path, name: &str) -> Child {
    spawn_nats_with(port, store, name, &[])
}

/// Spawns `nats-server -js` with `extra` arguments (cluster settings), logging to the
/// store directory's `nats-server.log`.
pub(crate) fn spawn_nats_with(port: u16, store: &Path, name: &str, extra: &[String]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(store.join("nats-server.log"))
        .expect("nats-server log file");
    Command::new(locate("nats-server"))
        .args([
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-n",
            name,
            "-js",
            "-sd",
        ])
        .arg(store)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn nats-server")
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // A server that died during the test explains failures that look like timeouts;
        // a failing test gets the server's log either way.
        if let Some(child) = self.child.as_mut() {
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || std::thread::panicking() {
                let status = exited
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "still running".into());
                let log = std::fs::read_to_string(self.dir.path().join("nats-server.log"))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!(
                    "nats-server {} ({status}); last log lines:\n{}",
                    self.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        self.stop();
    }
}

/// A `redis-server` without persistence.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    name: String,
    extra: Vec<String>,
}

/// Spawns `redis-server` on `port` with `extra` arguments, without persistence.
pub(crate) fn spawn_redis(port: u16, dir: &Path, name: &str, extra: &[String]) -> Child {
    Command::new(locate("redis-server"))
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--dbfilename",
            name,
            "--dir",
        ])
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server")
}

impl RedisServer {
    /// Starts a fresh server.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts a fresh server with extra `redis-server` arguments.
    pub fn start_with(extra: &[String]) -> Self {
        require("redis-server", "redis-server");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().to_owned();
        let name = unique_name("redis");
        let (child, port) = start_on_free_port("redis-server", &redis_probe(&name), |port| {
            spawn_redis(port, &path, &name, extra)
        });
        RedisServer {
            child: Some(child),
            port,
            dir,
            name,
            extra: extra.to_vec(),
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (`SIGKILL`).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same arguments (empty, unless they
    /// turned persistence on: `--appendonly yes`).
    pub fn restart(&mut self) {
        self.stop();
        let (port, dir, name, extra) = (self.port, self.dir.path(), &self.name, &self.extra);
        self.child = Some(respawn_on(port, &redis_probe(name), name, || {
            spawn_redis(port, dir, name, extra)
        }));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
