//! Pieces the benchmark binaries share: arguments, percentiles, a closed-loop HTTP load
//! and `h2load` against a mock.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// The value of `--name N`, or `default`.
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The value of `--json FILE`.
pub fn json_path() -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// The `p`th percentile of sorted values (NaN when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Requests per second that `concurrency` keep-alive workers get through `n` requests
/// built by `request` (closed loop: the maximum the server sustains with this client).
pub async fn closed_loop<F>(n: usize, concurrency: usize, request: F) -> f64
where
    F: Fn(usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let request = Arc::new(request);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (request, next) = (request.clone(), next.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let _ = request(i).send().await;
            }
        });
    }
    while workers.join_next().await.is_some() {}
    n as f64 / started.elapsed().as_secs_f64()
}

/// Stops a benchmark before it starts when `h2load` (the mock provider's ceiling) is
/// missing, saying how to install it; `--no-h2load` runs without that ceiling.
pub fn require_h2load() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--no-h2load") {
        return Ok(());
    }
    let found = std::process::Command::new("h2load")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    anyhow::ensure!(
        found,
        "h2load is needed for the mock provider's ceiling: install it with `apt-get install -y nghttp2-client` (Debian/Ubuntu), or pass --no-h2load to run without that ceiling"
    );
    Ok(())
}

/// `h2load -n N -c 1 -m 100` POSTing `payload` with `headers` to `url`; requests/s, or
/// `None` when h2load could not run (see [`require_h2load`]).
pub fn h2load(
    url: &str,
    headers: &[String],
    payload: &str,
    n: usize,
    dir: &std::path::Path,
) -> Option<f64> {
    let body = dir.join("h2load-payload.json");
    std::fs::write(&body, payload).ok()?;
    let mut command = std::process::Command::new("h2load");
    command
        .args(["-n", &n.to_string(), "-c", "1", "-m", "100", "-d"])
        .arg(&body);
    for header in headers {
        command.args(["-H", header]);
    }
    let output = command.arg(url).output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    // "finished in 1.23s, 40000.00 req/s, …"
    let line = text.lines().find(|l| l.starts_with("finished in"))?;
    line.split(", ")
        .nth(1)?
        .strip_suffix(" req/s")?
        .trim()
        .parse()
        .ok()
}

/// CPU seconds (user + system) in a `/proc/<pid>/stat` or `/proc/<pid>/task/<tid>/stat`
/// file, or `None` when it cannot be read.
pub fn stat_cpu_seconds(path: &std::path::Path) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command: utime is field 14, stime 15 (1-based).
    let after = stat.rsplit_once(')')?.1;
    let mut fields = after.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0) // USER_HZ is 100 on Linux
}
