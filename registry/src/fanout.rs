//! The fan-out stage: one `Event` from `EVENTS` → one `PushJob` per matching device on
//! its provider's stream (`PUSH_<PROVIDER>`), or, for in-app devices, on the device's
//! subject of `INAPP`, where it waits for the device (`docs/inapp.md`).
//!
//! A device gets an event when the event has a part for the device's provider and the
//! provider wants the event's class on the device's channel
//! ([`pipeline::provider::Spec::wants`]); the job carries that part alone.
//!
//! When the event asks for encryption, or the device's app policy does
//! (`encrypt_payloads`), each device's part is encrypted with that device's key by its
//! provider ([`pipeline::provider::Spec::encrypt`]) before its job is published: the key never leaves the registry, and
//! the job carries only ciphertext. Devices that cannot get an encrypted payload (no key,
//! a key sealed under a KEK no longer configured, a body over the provider's limit once
//! encrypted) get nothing and are counted in `pushline_fanout_skipped_total`.
//!
//! Every job is published with `Nats-Msg-Id = <event id>:<hash of token>`, all jobs of an
//! event concurrently, each to its partition of its provider's push stream or around a
//! stalled one ([`pipeline::partition`]); the event is acked only when every job is
//! stored. A retry republishes all of them and JetStream drops the ones it already has.
//!
//! An event can be stored twice, in two partitions of `EVENTS` (ingest routed around a
//! partition whose ack came late), or come back after it was fanned out (its ack was
//! lost). The fan-out remembers the events it fanned out until their deadlines
//! ([`pipeline::delivered::DeliveredJobs`], keyed by event id): a copy of one is acked
//! unsent (`pushline_fanout_events_total{outcome="duplicate"}`), and a copy arriving
//! while the first is being fanned out waits for it. The memory is per replica; a copy
//! that another replica reads fans out to the same job ids, which the dispatchers do not
//! send twice.

use std::time::Duration;

use async_nats::jetstream::Context;
use futures::future::join_all;
use pipeline::config::WorkerConfig;
use pipeline::contract::{Event, PushJob, VERSION, now_ms};
use pipeline::delivered::Seen;
use pipeline::metrics::Metrics;
use pipeline::provider::Providers;
pub use pipeline::provider::Skip;
use pipeline::retry::RetryInput;
use pipeline::topology::Topology;
use pipeline::tracking::{Queued, Stage, StatusRecord, Tracker};
use pipeline::worker::{Delivery, Handler, Outcome};

use crate::config::DevicesConfig;
use crate::keyring::Keyring;
use crate::store::{Device, Store};

/// How often a device skipped for want of an encrypted payload (no key, a key that
/// cannot be opened, …) is logged; every skip is counted in
/// `pushline_fanout_skipped_total`.
pub const SKIP_LOG_INTERVAL: Duration = Duration::from_secs(600);

/// The fan-out handler.
pub struct Fanout {
    /// Device store.
    pub store: Store,
    /// JetStream, for publishing jobs.
    pub js: Context,
    /// Subjects.
    pub topology: Topology,
    /// Retry timing.
    pub worker: WorkerConfig,
    /// Publish-ack bound.
    pub publish_timeout: Duration,
    /// Metrics.
    pub metrics: Metrics,
    /// App policies (which apps' payloads are encrypted).
    pub devices: std::sync::Arc<DevicesConfig>,
    /// Opens devices' sealed keys.
    pub keyring: std::sync::Arc<Keyring>,
    /// Logs a device skipped for want of encryption once per [`SKIP_LOG_INTERVAL`].
    pub skip_log: std::sync::Arc<crate::log_once::LogOnce>,
    /// Writes each event's delivery status.
    pub tracker: Tracker,
    /// The providers.
    pub providers: Providers,
    /// In-app presence (whether a device's pushes may wait for its app).
    pub inapp: crate::inapp::InAppState,
    /// Persons' inboxes (apps with `inbox = true`).
    pub inbox: crate::inbox::Inbox,
    /// Tells a person's live connections of a message kept in their inbox.
    pub inbox_notices: crate::inbox::InboxNotices,
    /// Where push jobs go: each provider's push stream partitions.
    pub push: pipeline::partition::PushRouters,
    /// The events fanned out by this replica, until their deadlines.
    pub fanned_out: std::sync::Arc<pipeline::delivered::DeliveredJobs>,
}

/// The apps among `jobs` and `held` (what an event's devices got), each with the
/// providers its devices got it through, in a stable order.
pub fn apps_reached<'a>(
    jobs: impl IntoIterator<Item = &'a PushJob>,
) -> std::collections::BTreeMap<&'a str, Vec<&'a str>> {
    let mut apps: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for job in jobs {
        let providers = apps.entry(job.app.as_str()).or_default();
        if !providers.contains(&job.platform.as_str()) {
            providers.push(job.platform.as_str());
        }
    }
    for providers in apps.values_mut() {
        providers.sort_unstable();
    }
    apps
}

/// The job of `event` for `device`: `None` when the device does not get it (no part for
/// its provider, a provider that does not want the class on the device's channel, or a
/// provider no longer configured).
pub fn job(providers: &Providers, event: &Event, device: &Device) -> Option<PushJob> {
    let a = &device.attrs;
    let spec = providers.get(&a.platform)?;
    let part = event.parts.get(&a.platform)?;
    if !spec.wants(event.class, a.channel) {
        return None;
    }
    Some(PushJob {
        v: VERSION,
        event_id: event.id.clone(),
        token: device.token.clone(),
        keys: a
            .keys
            .as_ref()
            .and_then(|keys| serde_json::value::to_raw_value(keys).ok()),
        platform: a.platform.clone(),
        app: a.app.clone(),
        environment: a.environment,
        class: event.class,
        received_at_ms: event.received_at_ms,
        deadline_ms: event.deadline_ms,
        part: part.clone(),
        trace_id: event.trace_id.clone(),
    })
}

/// Replaces the job's part with its encryption for the device holding `key`.
pub fn encrypt_job(
    providers: &Providers,
    job: &mut PushJob,
    key: &pipeline::jwe::ContentKey,
    kid: &str,
) -> Result<(), Skip> {
    let spec = providers.get(&job.platform).ok_or(Skip::Malformed)?;
    job.part = spec.encrypt(&job.part, key, kid)?;
    Ok(())
}

/// A device's job, with what the in-app rule needs to know of the device.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The job.
    pub job: PushJob,
    /// The device it is for ([`Device::device_id`]).
    pub device_id: String,
    /// The registration's app.
    pub app: String,
    /// Whether it is an in-app job (its provider is held).
    pub held: bool,
}

/// What goes now and what waits, by the in-app rule: a device whose in-app message goes
/// to a live connection of its active person (`waiting`: their device ids) keeps its
/// pushes back until the app acknowledges the message or the window passes — except for
/// calls, which ring by push whatever the app shows.
///
/// | job | class | its device in `waiting` | |
/// |---|---|---|---|
/// | in-app | any | any | now (stored in `INAPP` for the device) |
/// | push | call | any | now |
/// | push | alert, background | no | now |
/// | push | alert, background | yes | held, behind the device's in-app message |
#[derive(Debug, Default)]
pub struct Hold {
    /// Published now.
    pub now: Vec<Planned>,
    /// Held, by device id.
    pub held: std::collections::BTreeMap<String, Vec<PushJob>>,
}

/// Splits `jobs` by the in-app rule (see [`Hold`]).
pub fn hold(
    class: pipeline::contract::Class,
    jobs: Vec<Planned>,
    waiting: &std::collections::HashSet<String>,
) -> Hold {
    let mut split = Hold::default();
    for planned in jobs {
        let waits = !planned.held
            && class != pipeline::contract::Class::Call
            && waiting.contains(&planned.device_id);
        if waits {
            split
                .held
                .entry(planned.device_id.clone())
                .or_default()
                .push(planned.job);
        } else {
            split.now.push(planned);
        }
    }
    split
}

/// The event's person as the store and the gateway name them (canonical: a Webex base64
/// id and its bare uuid are one person, `crate::person`), for in-app subjects, presence
/// and cursors; an id that is not a person's is kept as it came (it has no devices).
pub fn person_of(event: &Event) -> String {
    crate::person::canonical(&event.person_id)
        .map(std::borrow::Cow::into_owned)
        .unwrap_or_else(|_| event.person_id.clone())
}

/// The de-duplication id of the job for `token` in `event_id`.
pub fn job_id(event_id: &str, token: &str) -> String {
    format!("{event_id}:{}", pipeline::telemetry::token_tag(token))
}

impl Fanout {
    async fn retry(
        &self,
        attempt: u64,
        event: &Event,
        reason: &'static str,
        error: String,
    ) -> Outcome {
        let now = now_ms();
        let next = RetryInput::after(attempt, &self.worker).before(event.deadline_ms, 0, now);
        match next.delay() {
            Some(delay) => Outcome::Retry {
                delay,
                reason,
                error,
                deadline_ms: Some(event.deadline_ms),
            },
            None => {
                self.expired(event, reason).await;
                tracing::warn!(event_id = %event.id, %error, "event expired while retrying");
                Outcome::Ack
            }
        }
    }

    async fn expired(&self, event: &Event, reason: &str) {
        let record = StatusRecord::event(&event.id, Stage::Expired).because(reason);
        self.tracker.record(&record).await;
        self.metrics.expired.with_label_values(&["fanout"]).inc();
        self.metrics
            .fanout_events
            .with_label_values(&["expired"])
            .inc();
    }

    /// `job` for `device`, encrypted when the event or the app's policy asks for it.
    fn sealed(&self, event: &Event, mut job: PushJob, device: &Device) -> Result<PushJob, Skip> {
        if !(event.encrypt || self.devices.policy(&device.attrs.app).encrypt_payloads) {
            return Ok(job);
        }
        let sealed = device.attrs.e2e.as_ref().ok_or(Skip::NoKey)?;
        let key = self
            .keyring
            .unseal(&device.token, &sealed.sealed)
            .map_err(|error| {
                tracing::error!(%error, token = %pipeline::telemetry::token_tag(&device.token), "device key cannot be opened");
                Skip::KeyUnreadable
            })?;
        encrypt_job(&self.providers, &mut job, &key, &sealed.kid)?;
        Ok(job)
    }

    /// The jobs of `event` for the devices among `devices` that get it, leaving out (and
    /// counting) those that cannot get the encrypted payload it needs; their `skipped`
    /// records come second.
    fn jobs(&self, event: &Event, devices: &[Device]) -> (Vec<Planned>, Vec<StatusRecord>) {
        let mut jobs = Vec::with_capacity(devices.len());
        let mut skipped = Vec::new();
        for device in devices {
            let Some(job) = job(&self.providers, event, device) else {
                continue;
            };
            match self.sealed(event, job, device) {
                Ok(job) => jobs.push(Planned {
                    held: self.providers.get(&job.platform).is_some_and(|s| s.held()),
                    job,
                    device_id: device.device_id(),
                    app: device.attrs.app.clone(),
                }),
                Err(skip) => {
                    self.metrics
                        .fanout_skipped
                        .with_label_values(&[device.attrs.platform.as_str(), skip.as_str()])
                        .inc();
                    let tag = pipeline::telemetry::token_tag(&device.token);
                    let key = format!("{tag}/{}", skip.as_str());
                    if let Some(times) = self.skip_log.due(&key, std::time::Instant::now()) {
                        tracing::warn!(event_id = %event.id, token = %tag, reason = skip.as_str(), times, "device skipped: its payload must be encrypted (logged once per device and interval; times = skips since last logged)");
                    }
                    skipped.push(StatusRecord {
                        device: Some(tag),
                        platform: Some(device.attrs.platform.clone()),
                        app: Some(device.attrs.app.clone()),
                        ..StatusRecord::event(&event.id, Stage::Skipped).because(skip.as_str())
                    });
                }
            }
        }
        (jobs, skipped)
    }

    /// The device ids among `jobs`' in-app devices whose in-app message goes to a live
    /// connection of the event's person, who is the device's active user: their pushes
    /// may wait. Nothing for calls, nor for events without an in-app job.
    async fn waiting(
        &self,
        event: &Event,
        devices: &[Device],
        jobs: &[Planned],
        now: u64,
    ) -> Result<std::collections::HashSet<String>, String> {
        let mut waiting = std::collections::HashSet::new();
        let inapp: Vec<&Planned> = jobs.iter().filter(|p| p.held).collect();
        if inapp.is_empty() || event.class == pipeline::contract::Class::Call {
            return Ok(waiting);
        }
        let has_pushes = |device_id: &str| jobs.iter().any(|p| !p.held && p.device_id == device_id);
        let active = self
            .store
            .active_devices(&event.person_id, devices, now)
            .await
            .map_err(|e| e.to_string())?;
        for planned in inapp {
            if !has_pushes(&planned.device_id)
                || !active.contains_key(&(planned.app.clone(), planned.device_id.clone()))
            {
                continue;
            }
            let present = self
                .inapp
                .is_present(&planned.job.token, &person_of(event), now)
                .await
                .map_err(|e| e.to_string())?;
            if present {
                waiting.insert(planned.device_id.clone());
            }
        }
        Ok(waiting)
    }

    /// Publishes the held pushes of each waiting device behind its in-app message, whose
    /// `INAPP` sequence `published` tells.
    async fn publish_fallbacks(
        &self,
        event: &Event,
        held: std::collections::BTreeMap<String, Vec<PushJob>>,
        published: &[(Planned, u64)],
        now: u64,
    ) -> Result<(), String> {
        for (device_id, jobs) in held {
            let Some((inapp, seq)) = published
                .iter()
                .find(|(p, _)| p.held && p.device_id == device_id)
            else {
                continue;
            };
            let fallback = pipeline::contract::Fallback {
                v: VERSION,
                event_id: event.id.clone(),
                person_id: person_of(event),
                token: inapp.job.token.clone(),
                app: inapp.app.clone(),
                seq: *seq,
                ack_by_ms: now + self.devices.inapp_ack_window_ms,
                deadline_ms: event.deadline_ms,
                jobs,
                trace_id: event.trace_id.clone(),
            };
            let body = serde_json::to_vec(&fallback).map_err(|e| e.to_string())?;
            pipeline::nats::publish_stored(
                &self.js,
                &self.topology.fallback_subject(&inapp.job.token),
                &format!("fallback:{}", job_id(&event.id, &inapp.job.token)),
                None,
                &body.into(),
            )
            .await
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Keeps `event` once in the inbox of each app of `reached` that keeps one, and tells
    /// the person's live connections; answers each such app's unread count. An event
    /// kept before (a retried fan-out) is not kept or announced again.
    async fn keep_in_inboxes(
        &self,
        event: &Event,
        reached: std::collections::BTreeMap<&str, Vec<&str>>,
        now: u64,
    ) -> Result<std::collections::BTreeMap<String, u64>, String> {
        let mut unread = std::collections::BTreeMap::new();
        let person = person_of(event);
        for (app, providers) in reached {
            let Some(retention) = self.devices.policy(app).inbox() else {
                continue;
            };
            let Some(message) = crate::inbox::message_of(event, &providers) else {
                if event.encrypt {
                    self.metrics
                        .inbox_messages
                        .with_label_values(&["not_kept"])
                        .inc();
                }
                continue;
            };
            let kept = self
                .inbox
                .keep(&person, app, &event.id, &message, now, retention)
                .await
                .map_err(|e| e.to_string())?;
            unread.insert(app.to_owned(), kept.unread);
            let outcome = if kept.new { "kept" } else { "duplicate" };
            self.metrics
                .inbox_messages
                .with_label_values(&[outcome])
                .inc();
            if kept.new {
                self.metrics
                    .inbox_size
                    .with_label_values::<&str>(&[])
                    .observe(kept.size as f64);
                let select = crate::inbox::Select::Ids(vec![event.id.clone()]);
                let change =
                    crate::inbox::Change::of(app, crate::inbox::Op::Added, &select, kept.unread);
                self.inbox_notices.announce(&person, &change).await;
            }
        }
        Ok(unread)
    }

    /// Puts each app's unread count on its pushes where its policy asks for a badge and
    /// the provider shows one ([`pipeline::provider::Spec::badge`]).
    fn badge<'a>(
        &self,
        jobs: impl Iterator<Item = &'a mut PushJob>,
        unread: &std::collections::BTreeMap<String, u64>,
    ) {
        for job in jobs {
            let Some(count) = unread.get(&job.app) else {
                continue;
            };
            if !self.devices.policy(&job.app).inbox_badge {
                continue;
            }
            if let Some(part) = self
                .providers
                .get(&job.platform)
                .and_then(|spec| spec.badge(&job.part, *count))
            {
                job.part = part;
            }
        }
    }

    /// Publishes `jobs`, answering each one's stream sequence.
    async fn publish_jobs(&self, event: &Event, jobs: &[&PushJob]) -> Result<Vec<u64>, String> {
        let headers = event.trace_id.as_deref().map(|trace| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(pipeline::contract::TRACE_HEADER, trace);
            headers
        });
        let headers = &headers;
        let sends = jobs.iter().map(|job| async move {
            let body = serde_json::to_vec(job).map_err(|e| e.to_string())?.into();
            let id = job_id(&event.id, &job.token);
            let ack = match self.providers.get(&job.platform) {
                Some(spec) if spec.held() => {
                    let subject = self.topology.inapp_subject(&job.token, &person_of(event));
                    pipeline::nats::publish_stored(&self.js, &subject, &id, headers.as_ref(), &body)
                        .await
                }
                _ => {
                    let to = (job.platform.as_str(), job.environment);
                    self.push
                        .publish(to, &id, headers.as_ref(), &body, self.publish_timeout)
                        .await
                }
            }
            .map_err(|e| e.to_string())?;
            self.metrics
                .fanout_jobs
                .with_label_values(&[&job.platform, job.class.as_str()])
                .inc();
            Ok::<u64, String>(ack.sequence)
        });
        let results = tokio::time::timeout(self.publish_timeout, join_all(sends))
            .await
            .map_err(|_| format!("push jobs not acked within {:?}", self.publish_timeout))?;
        results.into_iter().collect()
    }
}

impl Handler for Fanout {
    async fn handle(&self, delivery: Delivery<'_>) -> Outcome {
        let event: Event = match pipeline::worker::decode(delivery.payload) {
            Ok(event) => event,
            Err(dead) => return dead,
        };
        let now = now_ms();
        if now >= event.deadline_ms {
            self.expired(&event, "deadline").await;
            return Outcome::Ack;
        }
        let key = self.fanned_out.key(&event.id, "");
        match self.fanned_out.claim(key, event.deadline_ms, now) {
            Seen::New => {}
            Seen::Delivered => {
                tracing::info!(event_id = %event.id, "event already fanned out; a copy acked unsent");
                self.metrics
                    .fanout_events
                    .with_label_values(&["duplicate"])
                    .inc();
                return Outcome::Ack;
            }
            Seen::InFlight => {
                // The other copy decides the event's fate: this one waits for it, and
                // when it may wait no longer it is acked as the duplicate it is, never
                // recorded as the event expiring.
                let next = RetryInput::after(delivery.attempt, &self.worker).before(
                    event.deadline_ms,
                    0,
                    now,
                );
                return match next.delay() {
                    Some(delay) => Outcome::Retry {
                        delay,
                        reason: "in_flight",
                        error: "a copy of the event is being fanned out".to_owned(),
                        deadline_ms: Some(event.deadline_ms),
                    },
                    None => {
                        self.metrics
                            .fanout_events
                            .with_label_values(&["duplicate"])
                            .inc();
                        Outcome::Ack
                    }
                };
            }
        }
        let outcome = self.fan_out(&delivery, &event, now).await;
        if outcome == Outcome::Ack {
            self.fanned_out.delivered(key);
        } else {
            self.fanned_out.released(key);
        }
        outcome
    }
}

impl Fanout {
    /// Fans out `event` (claimed by this replica).
    async fn fan_out(&self, delivery: &Delivery<'_>, event: &Event, now: u64) -> Outcome {
        let devices = match self.store.devices(&event.person_id, now).await {
            Ok(devices) => devices,
            Err(error) => {
                return self
                    .retry(delivery.attempt, event, "redis", error.to_string())
                    .await;
            }
        };
        let (jobs, skipped) = self.jobs(event, &devices);
        for record in &skipped {
            self.tracker.record(record).await;
        }
        let waiting = match self.waiting(event, &devices, &jobs, now).await {
            Ok(waiting) => waiting,
            Err(error) => return self.retry(delivery.attempt, event, "redis", error).await,
        };
        let Hold {
            now: mut jobs,
            mut held,
        } = hold(event.class, jobs, &waiting);
        if jobs.is_empty() {
            self.metrics
                .fanout_events
                .with_label_values(&["no_devices"])
                .inc();
            self.tracker
                .record(&StatusRecord::event(&event.id, Stage::NoDevices))
                .await;
            tracing::debug!(event_id = %event.id, "no devices for event");
            return Outcome::Ack;
        }
        // Stamped before publishing: a dispatcher may send a job before its record is written.
        let queued_at_ms = now_ms();
        // Kept before the pushes go, for the unread count their badges carry; a call is
        // never kept, so it waits on nothing here.
        // Nothing to do (and nothing to allocate) for a call, or where no app keeps one.
        let unread = if event.class == pipeline::contract::Class::Call
            || !self.devices.keeps_inboxes()
        {
            Default::default()
        } else {
            let reached = apps_reached(jobs.iter().map(|p| &p.job).chain(held.values().flatten()));
            match self.keep_in_inboxes(event, reached, queued_at_ms).await {
                Ok(unread) => unread,
                Err(error) => return self.retry(delivery.attempt, event, "redis", error).await,
            }
        };
        if !unread.is_empty() {
            self.badge(
                jobs.iter_mut()
                    .map(|p| &mut p.job)
                    .chain(held.values_mut().flatten()),
                &unread,
            );
        }
        let pushes: Vec<&PushJob> = jobs.iter().map(|p| &p.job).collect();
        let sequences = match self.publish_jobs(event, &pushes).await {
            Ok(sequences) => sequences,
            Err(error) => return self.retry(delivery.attempt, event, "publish", error).await,
        };
        let published: Vec<(Planned, u64)> = jobs.into_iter().zip(sequences).collect();
        if let Err(error) = self
            .publish_fallbacks(event, held, &published, queued_at_ms)
            .await
        {
            return self.retry(delivery.attempt, event, "publish", error).await;
        }
        let jobs: Vec<&PushJob> = published.iter().map(|(p, _)| &p.job).collect();
        self.metrics
            .fanout_events
            .with_label_values(&["fanned_out"])
            .inc();
        self.tracker
            .record(&StatusRecord {
                queued: jobs.iter().map(|job| Queued::of(*job)).collect(),
                at_ms: queued_at_ms,
                ..StatusRecord::event(&event.id, Stage::FannedOut)
            })
            .await;
        tracing::debug!(event_id = %event.id, jobs = jobs.len(), "event fanned out");
        Outcome::Ack
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Channel, DeviceAttrs};
    use pipeline::contract::{Class, Environment, Parts};
    use serde_json::value::RawValue;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.into()).expect("raw")
    }

    fn event(class: Class, parts: &[(&str, &str)]) -> Event {
        let parts: Parts = parts
            .iter()
            .map(|(name, part)| ((*name).to_owned(), raw(part)))
            .collect();
        Event {
            v: VERSION,
            id: "e".into(),
            source: "webex".into(),
            resource: "telephony_push".into(),
            event: "updated".into(),
            person_id: "p".into(),
            class,
            received_at_ms: 1,
            deadline_ms: 2,
            parts,
            trace_id: None,
            encrypt: false,
        }
    }

    const APNS: (&str, &str) = ("apns", r#"{"payload":{},"push_type":"voip","priority":10}"#);
    const FCM: (&str, &str) = ("fcm", r#"{"data":{},"priority":"high"}"#);

    fn device(platform: &str, channel: Channel) -> Device {
        Device {
            token: "t".into(),
            person_id: "p".into(),
            attrs: DeviceAttrs {
                platform: platform.into(),
                channel,
                app: "a".into(),
                environment: Environment::Sandbox,
                device_id: None,
                e2e: None,
                keys: None,
            },
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn gets(event: &Event, device: &Device) -> bool {
        job(&providers::all(), event, device).is_some()
    }

    fn planned(platform: &str, device_id: &str) -> Planned {
        let mut d = device(platform, Channel::Alert);
        d.token = format!("{platform}-{device_id}");
        let alert = event(
            Class::Alert,
            &[
                FCM,
                ("inapp", r#"{"payload":{}}"#),
                ("apns", r#"{"payload":{}}"#),
            ],
        );
        Planned {
            job: job(&providers::all(), &alert, &d).expect("a job"),
            device_id: device_id.into(),
            app: "a".into(),
            held: platform == "inapp",
        }
    }

    #[test]
    fn a_waiting_devices_pushes_are_held_behind_its_in_app_message_but_never_a_call() {
        let jobs = || {
            vec![
                planned("inapp", "phone"),
                planned("fcm", "phone"),
                planned("fcm", "tablet"),
            ]
        };
        let waiting: std::collections::HashSet<String> = ["phone".to_owned()].into();
        let split = hold(Class::Alert, jobs(), &waiting);
        let now: Vec<&str> = split.now.iter().map(|p| p.job.token.as_str()).collect();
        assert_eq!(now, ["inapp-phone", "fcm-tablet"]);
        assert_eq!(split.held.len(), 1);
        assert_eq!(split.held["phone"][0].token, "fcm-phone");

        let call = hold(Class::Call, jobs(), &waiting);
        assert_eq!(call.now.len(), 3, "a call rings by push");
        assert!(call.held.is_empty());

        let nobody = hold(Class::Alert, jobs(), &Default::default());
        assert_eq!(nobody.now.len(), 3);
    }

    #[test]
    fn calls_go_to_voip_and_fcm_devices_only() {
        let call = event(Class::Call, &[APNS, FCM]);
        assert!(gets(&call, &device("apns", Channel::Voip)));
        assert!(!gets(&call, &device("apns", Channel::Alert)));
        assert!(gets(&call, &device("fcm", Channel::Alert)));
    }

    #[test]
    fn alerts_go_to_alert_devices_only() {
        let alert = event(Class::Alert, &[APNS, FCM]);
        assert!(!gets(&alert, &device("apns", Channel::Voip)));
        assert!(gets(&alert, &device("apns", Channel::Alert)));
        assert!(gets(&alert, &device("fcm", Channel::Alert)));
    }

    #[test]
    fn a_missing_part_or_an_unknown_provider_means_no_job() {
        let apns_only = event(Class::Call, &[APNS]);
        assert!(!gets(&apns_only, &device("fcm", Channel::Alert)));
        let call = event(Class::Call, &[APNS, FCM, ("pager", "{}")]);
        assert!(!gets(&call, &device("pager", Channel::Alert)));
    }

    #[test]
    fn jobs_carry_only_their_providers_part() {
        let e = event(Class::Call, &[APNS, FCM]);
        let j = job(&providers::all(), &e, &device("fcm", Channel::Alert)).expect("job");
        assert_eq!(j.part.get(), FCM.1);
        assert_eq!(j.environment, Environment::Sandbox);
        assert_ne!(job_id("e", "t1"), job_id("e", "t2"));
    }

    #[test]
    fn an_encrypted_job_carries_only_ciphertext_and_keeps_its_headers() {
        let key = pipeline::jwe::ContentKey::from_bytes([3; 32]);
        let providers = providers::all();
        let apns = r#"{"payload":{"aps":{},"caller":"Alice"},"push_type":"voip","priority":10,"collapse_id":"c"}"#;
        let e = event(Class::Call, &[("apns", apns)]);
        let mut j = job(&providers, &e, &device("apns", Channel::Voip)).expect("job");
        encrypt_job(&providers, &mut j, &key, "k").expect("encrypt");
        assert!(!j.part.get().contains("Alice"));
        let part: serde_json::Value = serde_json::from_str(j.part.get()).expect("json");
        assert_eq!(part["collapse_id"], "c");
        let body = &part["payload"];
        let plain = pipeline::jwe::decrypt(&key, body["jwe"].as_str().expect("jwe")).expect("open");
        assert_eq!(plain, br#"{"aps":{},"caller":"Alice"}"#);

        let big = format!(
            r#"{{"data":{{"m":"{}"}},"priority":"high"}}"#,
            "x".repeat(3_500)
        );
        let e = event(Class::Call, &[("fcm", &big)]);
        let mut big = job(&providers, &e, &device("fcm", Channel::Alert)).expect("job");
        assert_eq!(
            encrypt_job(&providers, &mut big, &key, "k"),
            Err(Skip::TooLarge)
        );
    }
}
