//! `pushctl`, the operators' command line: parsing (a pure function) and execution
//! against NATS and Redis, returning the text to print so tests can run it directly.
//!
//! ```text
//! pushctl [--config registry.toml] streams
//! pushctl [--config …] dead list   [--stage S] [--reason R] [--older-than SECS] [--newer-than SECS] [--limit N]
//! pushctl [--config …] dead replay [same filters] [--dry-run]
//! pushctl [--config …] devices <personId>     each device, and whether the person is its active user
//! pushctl [--config …] trace <event id | trace id>   what became of an event on each device
//! pushctl [--config …] webhooks list | ensure | reactivate   the Webex webhook ([webex_webhooks])
//! pushctl health <url>            exit 0 when the URL answers 2xx (container health checks)
//! ```
//!
//! Connection settings come from the registry's configuration (`[nats]`, `[redis]`), so
//! the same file and `PUSHLINE_*` variables work.

use std::time::Duration;

use async_nats::jetstream::Context;
use pipeline::contract::now_ms;
use pipeline::operate::{self, DeadFilter};
use pipeline::topology::Topology;
use pipeline::tracking;

use crate::config::Config;
use crate::store::{Policy, Store};

/// A parsed command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Stream and consumer status.
    Streams,
    /// List dead letters.
    DeadList(Filter),
    /// Replay dead letters.
    DeadReplay {
        /// Which.
        filter: Filter,
        /// Only say what would be replayed.
        dry_run: bool,
    },
    /// A person's devices.
    Devices(String),
    /// Delivery status of an event (by event id, or every event of a trace id).
    Trace(String),
    /// The Webex webhooks of the configured owner.
    WebhooksList,
    /// Create or update pushline's Webex webhook.
    WebhooksEnsure,
    /// Set pushline's Webex webhook active again.
    WebhooksReactivate,
    /// Probe a health URL.
    Health(String),
}

/// Dead-letter filter as given on the command line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// `--stage`.
    pub stage: Option<String>,
    /// `--reason`.
    pub reason: Option<String>,
    /// `--older-than` seconds.
    pub older_than_secs: Option<u64>,
    /// `--newer-than` seconds.
    pub newer_than_secs: Option<u64>,
    /// `--limit`.
    pub limit: Option<usize>,
}

impl Filter {
    fn to_dead(&self) -> DeadFilter {
        DeadFilter {
            stage: self.stage.clone(),
            reason: self.reason.clone(),
            older_than: self.older_than_secs.map(Duration::from_secs),
            newer_than: self.newer_than_secs.map(Duration::from_secs),
            limit: self.limit,
        }
    }
}

/// The usage text.
pub const USAGE: &str = "usage: pushctl [--config FILE] (streams | dead list [FILTERS] | dead replay [FILTERS] [--dry-run] | devices PERSON_ID | trace EVENT_OR_TRACE_ID | webhooks (list | ensure | reactivate) | health URL)
filters: --stage S --reason R --older-than SECS --newer-than SECS --limit N";

/// Parses the arguments after the program name (and after `--config FILE`).
pub fn parse(args: &[String]) -> Result<Command, String> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["streams"] => Ok(Command::Streams),
        ["devices", person] => Ok(Command::Devices((*person).to_owned())),
        ["trace", id] => Ok(Command::Trace((*id).to_owned())),
        ["webhooks", "list"] => Ok(Command::WebhooksList),
        ["webhooks", "ensure"] => Ok(Command::WebhooksEnsure),
        ["webhooks", "reactivate"] => Ok(Command::WebhooksReactivate),
        ["health", url] => Ok(Command::Health((*url).to_owned())),
        ["dead", "list", rest @ ..] => {
            let (filter, dry_run) = filters(rest)?;
            if dry_run {
                return Err("--dry-run goes with `dead replay`".into());
            }
            Ok(Command::DeadList(filter))
        }
        ["dead", "replay", rest @ ..] => {
            let (filter, dry_run) = filters(rest)?;
            Ok(Command::DeadReplay { filter, dry_run })
        }
        _ => Err(USAGE.into()),
    }
}

fn filters(words: &[&str]) -> Result<(Filter, bool), String> {
    let mut filter = Filter::default();
    let mut dry_run = false;
    let mut it = words.iter();
    while let Some(flag) = it.next() {
        if *flag == "--dry-run" {
            dry_run = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag} takes a whole number, not `{v}`"))
        };
        match *flag {
            "--stage" => filter.stage = Some((*value).to_owned()),
            "--reason" => filter.reason = Some((*value).to_owned()),
            "--older-than" => filter.older_than_secs = Some(number(value)?),
            "--newer-than" => filter.newer_than_secs = Some(number(value)?),
            "--limit" => filter.limit = Some(number(value)? as usize),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    Ok((filter, dry_run))
}

/// Runs `command` and returns what to print.
pub async fn execute(command: &Command, config: &Config) -> Result<String, String> {
    let topology = providers::topology(&config.nats);
    let js = || async {
        let client = pipeline::nats::connect(&config.nats, "pushctl")
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(pipeline::topology::jetstream(client))
    };
    match command {
        Command::Health(url) => health(url).await,
        Command::Streams => streams(&js().await?, &topology).await,
        Command::DeadList(filter) => dead_list(&js().await?, &topology, filter).await,
        Command::DeadReplay { filter, dry_run } => {
            dead_replay(&js().await?, &topology, filter, *dry_run).await
        }
        Command::Trace(id) => trace(&js().await?, &topology, id).await,
        Command::WebhooksList | Command::WebhooksEnsure | Command::WebhooksReactivate => {
            webhooks(command, config).await
        }
        Command::Devices(person) => devices(person, config).await,
    }
}

async fn health(url: &str) -> Result<String, String> {
    let response = reqwest::get(url).await.map_err(|e| format!("{url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url}: {}", response.status()));
    }
    Ok("ok\n".to_owned())
}

async fn streams(js: &Context, topology: &Topology) -> Result<String, String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    writeln!(
        out,
        "{:<22} {:>10} {:>12}   consumer: pending ack_pending redelivered",
        "stream", "messages", "bytes"
    )
    .ok();
    for s in operate::streams(js, topology).await? {
        let consumers: Vec<String> = s
            .consumers
            .iter()
            .map(|c| {
                format!(
                    "{}: {} {} {}",
                    c.name, c.pending, c.ack_pending, c.redelivered
                )
            })
            .collect();
        writeln!(
            out,
            "{:<22} {:>10} {:>12}   {}",
            s.name,
            s.messages,
            s.bytes,
            consumers.join(", ")
        )
        .ok();
    }
    Ok(out)
}

async fn dead_list(js: &Context, topology: &Topology, filter: &Filter) -> Result<String, String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let entries = operate::dead_letters(js, topology, &filter.to_dead()).await?;
    let now = now_ms();
    writeln!(
        out,
        "{:>8} {:>8} {:<8} {:<24} {:>8}  subject / last error",
        "seq", "age_s", "stage", "reason", "attempts"
    )
    .ok();
    for e in &entries {
        let l = &e.letter;
        writeln!(
            out,
            "{:>8} {:>8} {:<8} {:<24} {:>8}  {} / {}",
            e.sequence,
            now.saturating_sub(l.dead_at_ms) / 1000,
            l.stage,
            l.reason,
            l.attempts,
            l.subject,
            l.last_error
        )
        .ok();
    }
    writeln!(out, "{} dead letter(s)", entries.len()).ok();
    Ok(out)
}

async fn dead_replay(
    js: &Context,
    topology: &Topology,
    filter: &Filter,
    dry_run: bool,
) -> Result<String, String> {
    let entries = operate::dead_letters(js, topology, &filter.to_dead()).await?;
    if dry_run {
        return Ok(format!("would replay {} dead letter(s)\n", entries.len()));
    }
    let n = operate::replay(js, topology, &entries).await?;
    Ok(format!("replayed {n} dead letter(s)\n"))
}

/// The status of event `id`, or of every event of trace id `id`.
async fn trace(js: &Context, topology: &Topology, id: &str) -> Result<String, String> {
    let mut found = Vec::new();
    match tracking::read_event(js, topology, id)
        .await
        .map_err(|e| e.to_string())?
    {
        Some(status) => found.push(status),
        None => {
            for event_id in tracking::events_of_trace(js, topology, id)
                .await
                .map_err(|e| e.to_string())?
            {
                if let Some(status) = tracking::read_event(js, topology, &event_id)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    found.push(status);
                }
            }
        }
    }
    if found.is_empty() {
        return Err(format!(
            "no delivery status for `{id}` (neither an event id nor a trace id recorded in the last nats.tracking_max_age_secs)"
        ));
    }
    let mut out = String::new();
    for status in &found {
        write_status(&mut out, status);
    }
    Ok(out)
}

async fn webhooks(command: &Command, config: &Config) -> Result<String, String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let client = crate::webhooks::Client::new(&config.webex_webhooks).map_err(|e| e.to_string())?;
    match command {
        Command::WebhooksList => {
            for w in client.list().await? {
                writeln!(
                    out,
                    "{}  {:<8} {}/{}  {}  {}{}",
                    w.id,
                    w.status,
                    w.resource,
                    w.event,
                    w.name,
                    w.target_url,
                    w.filter.map_or(String::new(), |f| format!("  filter={f}"))
                )
                .ok();
            }
        }
        Command::WebhooksEnsure => match client.ensure().await? {
            crate::webhooks::Ensured::Created(id) => {
                writeln!(out, "created webhook {id}").ok();
            }
            crate::webhooks::Ensured::Updated(id) => {
                writeln!(out, "updated webhook {id} (active, URL and secret set)").ok();
            }
        },
        _ => {
            let webhook = client.find().await?.ok_or_else(|| {
                format!(
                    "no webhook named `{}` (pushctl webhooks ensure)",
                    config.webex_webhooks.name
                )
            })?;
            client.reactivate(&webhook).await?;
            writeln!(out, "webhook {} is active", webhook.id).ok();
        }
    }
    Ok(out)
}

async fn devices(person: &str, config: &Config) -> Result<String, String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let redis = crate::connect_redis(&config.redis).map_err(|e| e.to_string())?;
    let store = Store::new(
        redis,
        config.redis.prefix.clone(),
        Policy {
            max_devices_per_person: config.devices.max_per_person,
            ttl: Duration::from_secs(config.devices.ttl_secs),
        },
    );
    let now = now_ms();
    let devices = store
        .devices(person, now)
        .await
        .map_err(|e| e.to_string())?;
    let actives = store
        .active_devices(person, &devices, now)
        .await
        .map_err(|e| e.to_string())?;
    for d in &devices {
        let active = actives.get(&(d.attrs.app.clone(), d.device_id()));
        writeln!(
            out,
            "{}  device={} {} {} app={} env={} e2e={} active={} updated={}",
            pipeline::telemetry::token_tag(&d.token),
            d.device_id(),
            d.attrs.platform.as_str(),
            match d.attrs.channel {
                crate::store::Channel::Voip => "voip",
                crate::store::Channel::Alert => "alert",
            },
            d.attrs.app,
            d.attrs.environment.as_str(),
            d.attrs.e2e.as_ref().map_or("-", |k| k.kid.as_str()),
            active.map_or("no".to_owned(), |since| format!("yes(since={since})")),
            d.updated_at_ms
        )
        .ok();
    }
    writeln!(out, "{} device(s)", devices.len()).ok();
    Ok(out)
}

/// One event's status as text: a summary line, one line per device, then the history.
fn write_status(out: &mut String, status: &tracking::EventStatus) {
    use std::fmt::Write as _;
    let ms = |at: Option<u64>| at.map_or("-".to_owned(), |t| t.to_string());
    writeln!(out, "event {}  outcome={}", status.event_id, status.outcome).ok();
    if let Some(r) = &status.received {
        writeln!(
            out,
            "  from {}/{} for {} class={} received={} deadline={} trace={}",
            r.source,
            r.resource,
            r.person_id,
            r.class.as_str(),
            ms(status.received_at_ms),
            r.deadline_ms,
            r.trace_id.as_deref().unwrap_or("-")
        )
        .ok();
    }
    for d in &status.devices {
        writeln!(
            out,
            "  device {} {} app={} outcome={} at={} queued={} sent={} retries={} reason={} provider_id={}",
            d.device,
            d.platform.as_deref().unwrap_or("-"),
            d.app.as_deref().unwrap_or("-"),
            d.outcome.as_str(),
            d.outcome_at_ms,
            ms(d.queued_at_ms),
            ms(d.sent_at_ms),
            d.retries,
            d.last_reason.as_deref().unwrap_or("-"),
            d.provider_id.as_deref().unwrap_or("-"),
        )
        .ok();
        for receipt in &d.receipts {
            writeln!(
                out,
                "    reported {} at={}{}{}",
                receipt.kind.as_str(),
                receipt.at_ms,
                receipt
                    .action
                    .as_deref()
                    .map_or(String::new(), |a| format!(" action={a}")),
                receipt
                    .reply
                    .as_deref()
                    .map_or(String::new(), |r| format!(" reply={r:?}")),
            )
            .ok();
        }
    }
    for r in &status.history {
        writeln!(
            out,
            "    {} {:<14} {}{}{}",
            r.at_ms,
            r.stage.as_str(),
            r.device.as_deref().unwrap_or("(event)"),
            r.attempt.map_or(String::new(), |a| format!(" attempt={a}")),
            r.reason
                .as_deref()
                .map_or(String::new(), |reason| format!(" reason={reason}")),
        )
        .ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn commands_and_filters_parse() {
        assert_eq!(parse(&args("streams")), Ok(Command::Streams));
        assert_eq!(
            parse(&args("devices p1")),
            Ok(Command::Devices("p1".into()))
        );
        assert_eq!(
            parse(&args("trace ROUTER_5f2a")),
            Ok(Command::Trace("ROUTER_5f2a".into()))
        );
        assert_eq!(
            parse(&args(
                "dead replay --stage apns --reason BadTopic --older-than 60 --limit 5 --dry-run"
            )),
            Ok(Command::DeadReplay {
                filter: Filter {
                    stage: Some("apns".into()),
                    reason: Some("BadTopic".into()),
                    older_than_secs: Some(60),
                    newer_than_secs: None,
                    limit: Some(5)
                },
                dry_run: true
            })
        );
    }

    #[test]
    fn mistakes_are_explained() {
        assert!(
            parse(&args("dead list --limit many"))
                .expect_err("number")
                .contains("whole number")
        );
        assert!(parse(&args("dead list --dry-run")).is_err());
        assert!(
            parse(&args("dead list --colour red"))
                .expect_err("unknown")
                .contains("unknown option")
        );
        assert!(
            parse(&args("frobnicate"))
                .expect_err("usage")
                .starts_with("usage")
        );
    }

    #[test]
    fn a_trace_shows_what_the_app_reported_per_device() {
        use tracking::{Stage, StatusRecord};
        let device = |stage| StatusRecord {
            device: Some("3f9a2c1b7d4e".into()),
            platform: Some("inapp".into()),
            app: Some("com.example.app".into()),
            ..StatusRecord::event("e1", stage)
        };
        let mut action = device(Stage::Action);
        action.action = Some("yes".into());
        action.reply = Some("on my way".into());
        let status = tracking::fold(
            "e1",
            vec![device(Stage::Acknowledged), device(Stage::Read), action],
        )
        .expect("status");
        let mut out = String::new();
        write_status(&mut out, &status);
        assert!(out.contains("    reported read at="), "{out}");
        assert!(
            out.contains(r#"reported action at="#)
                && out.contains(r#"action=yes reply="on my way""#),
            "{out}"
        );
    }
}
