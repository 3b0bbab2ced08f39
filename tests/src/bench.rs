//! Pieces the benchmark binaries share: arguments, percentiles, a closed-loop HTTP load,
//! `h2load` against a mock, and what `/proc` says of a process (CPU, RSS, open-file limit)
//! and of the machine (listen-queue overflows).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// The value of `--name N`, or `default`; a value that is not a whole number stops the
/// program (exit code 2) rather than running on the default.
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    let Some(value) = args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
    else {
        return default;
    };
    value.parse().unwrap_or_else(|_| {
        eprintln!("{name} takes a whole number; got `{value}`");
        std::process::exit(2);
    })
}

/// Checks the command line before anything reads it: `--help` (or `-h`) prints the
/// options and exits; an option that is neither in `valued` (each takes a value) nor in
/// `switches`, or a valued one without its value, stops the program (exit code 2)
/// instead of a run on defaults nobody asked for.
pub fn check_args(valued: &[&str], switches: &[&str]) {
    let args: Vec<String> = std::env::args().collect();
    let program = args
        .first()
        .and_then(|p| std::path::Path::new(p).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut usage = format!("usage: {program}");
    for flag in valued {
        usage.push_str(&format!(" [{flag} VALUE]"));
    }
    for flag in switches {
        usage.push_str(&format!(" [{flag}]"));
    }
    usage.push_str(&format!(
        "\n(each option is explained at the top of tests/src/bin/{program}.rs)"
    ));
    match command_line(args.get(1..).unwrap_or_default(), valued, switches) {
        Ok(CommandLine::Run) => {}
        Ok(CommandLine::Help) => {
            println!("{usage}");
            std::process::exit(0);
        }
        Err(problem) => {
            eprintln!("{problem}\n{usage}");
            std::process::exit(2);
        }
    }
}

/// What a checked command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum CommandLine {
    Run,
    Help,
}

fn command_line(
    args: &[String],
    valued: &[&str],
    switches: &[&str],
) -> Result<CommandLine, String> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let arg = arg.as_str();
        if arg == "--help" || arg == "-h" {
            return Ok(CommandLine::Help);
        }
        if switches.contains(&arg) {
            continue;
        }
        if !valued.contains(&arg) {
            return Err(format!("unknown option `{arg}`"));
        }
        match args.next() {
            Some(value) if !value.starts_with("--") => {}
            _ => return Err(format!("{arg} needs a value")),
        }
    }
    Ok(CommandLine::Run)
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

/// Resident memory (`VmRSS`, KiB) of a running process, or `None` when it cannot be read.
pub fn vm_rss_kib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A process's open-file limit, soft and hard (`u64::MAX` for unlimited), from
/// `/proc/<pid>/limits`.
pub fn open_files_limit(pid: u32) -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut values = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .map(|v| {
            if v == "unlimited" {
                Some(u64::MAX)
            } else {
                v.parse().ok()
            }
        });
    Some((values.next()??, values.next()??))
}

/// Raises this process's soft open-file limit to its hard limit (at most 1,048,576) with
/// util-linux's `prlimit` (no `unsafe` in the workspace: `setrlimit` is not in std), and
/// returns the soft limit now in force. Children spawned afterwards inherit it.
pub fn raise_open_files() -> u64 {
    let pid = std::process::id();
    let Some((soft, hard)) = open_files_limit(pid) else {
        return 1_024;
    };
    let target = hard.min(1 << 20);
    if soft < target {
        let raised = std::process::Command::new("prlimit")
            .arg(format!("--pid={pid}"))
            .arg(format!(
                "--nofile={target}:{hard_text}",
                hard_text = if hard == u64::MAX {
                    "unlimited".to_owned()
                } else {
                    hard.to_string()
                }
            ))
            .status();
        if !raised.is_ok_and(|s| s.success()) {
            eprintln!(
                "could not raise the open-file limit with `prlimit` (util-linux); it stays {soft}"
            );
        }
    }
    open_files_limit(pid).map_or(soft, |(soft, _)| soft)
}

/// Connections the kernel dropped because a listener's accept queue was full
/// (`TcpExt: ListenOverflows` in `/proc/net/netstat`, for the whole network namespace:
/// other processes' listeners count too). A dropped SYN is retried by the client after
/// a second, which shows as a one-second step in connection times.
pub fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut tcp_ext = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (tcp_ext.next()?, tcp_ext.next()?);
    let index = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(index)?.parse().ok()
}

/// Waits until a service started by a benchmark answers `/readyz` 200 on `admin`, at most
/// 30 s.
pub async fn wait_ready(http: &reqwest::Client, admin: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while Instant::now() < deadline {
        if http
            .get(format!("http://127.0.0.1:{admin}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    anyhow::bail!("service on admin port {admin} not ready in 30 s")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(args: &[&str]) -> Result<CommandLine, String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        command_line(&args, &["--rate", "--drill"], &["--keep-logs"])
    }

    #[test]
    fn a_command_line_is_checked_before_a_run() {
        assert_eq!(line(&[]), Ok(CommandLine::Run));
        assert_eq!(
            line(&["--rate", "300", "--keep-logs", "--drill", "nats-node"]),
            Ok(CommandLine::Run)
        );
        assert_eq!(line(&["--rate", "300", "--help"]), Ok(CommandLine::Help));
        assert_eq!(line(&["-h"]), Ok(CommandLine::Help));
        assert_eq!(
            line(&["--rat", "300"]),
            Err("unknown option `--rat`".into())
        );
        assert_eq!(line(&["300"]), Err("unknown option `300`".into()));
        assert_eq!(line(&["--rate"]), Err("--rate needs a value".into()));
        assert_eq!(
            line(&["--rate", "--keep-logs"]),
            Err("--rate needs a value".into())
        );
    }
}
