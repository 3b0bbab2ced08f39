//! The fan-out stage: one `Event` from `EVENTS` → one `PushJob` per matching device on
//! `PUSH_APNS` / `PUSH_FCM`.
//!
//! Which devices get an event:
//!
//! | class | APNs devices | FCM devices |
//! |---|---|---|
//! | `call` | channel `voip`, when the event has an APNs part | all, when it has an FCM part |
//! | `alert`, `background` | channel `alert`, with an APNs part | channel `alert`, with an FCM part |
//!
//! When the event asks for encryption, or the device's app policy does
//! (`encrypt_payloads`), each device's payload is encrypted with that device's key
//! ([`pipeline::jwe`]) before its job is published: the key never leaves the registry, and
//! the job carries only ciphertext. Devices that cannot get an encrypted payload (no key,
//! a key sealed under a KEK no longer configured, a body over the provider's limit once
//! encrypted) get nothing and are counted in `pushline_fanout_skipped_total`.
//!
//! Every job is published with `Nats-Msg-Id = <event id>:<hash of token>`, all jobs of an
//! event concurrently; the event is acked only when every job is stored. A retry
//! republishes all of them and JetStream drops the ones it already has.

use std::time::Duration;

use async_nats::jetstream::Context;
use futures::future::join_all;
use pipeline::config::WorkerConfig;
use pipeline::contract::{
    ApnsPart, Class, Event, FCM_DATA_MAX_BYTES, FcmPart, Platform, PushJob, VERSION,
    apns_max_bytes, now_ms,
};
use pipeline::metrics::Metrics;
use pipeline::retry::RetryInput;
use pipeline::topology::Topology;
use pipeline::tracking::{Queued, Stage, StatusRecord, Tracker};
use pipeline::worker::{Delivery, Handler, Outcome};

use crate::config::DevicesConfig;
use crate::keyring::Keyring;
use crate::store::{Channel, Device, Store};

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
    /// Writes each event's delivery status.
    pub tracker: Tracker,
}

/// Why a device got no encrypted payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The device registered no key.
    NoKey,
    /// Its key was sealed under a KEK that is no longer configured, or is damaged.
    KeyUnreadable,
    /// The encrypted body is over the provider's limit.
    TooLarge,
    /// The APNs payload is not a JSON object, so its `aps` cannot be kept in clear.
    Malformed,
}

impl Skip {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NoKey => "no_key",
            Skip::KeyUnreadable => "key_unreadable",
            Skip::TooLarge => "too_large",
            Skip::Malformed => "malformed",
        }
    }
}

/// Replaces the job's payload with its encryption for the device holding `key`.
pub fn encrypt_job(
    job: &mut PushJob,
    key: &pipeline::jwe::ContentKey,
    kid: &str,
) -> Result<(), Skip> {
    if let Some(apns) = &mut job.apns {
        let len = pipeline::jwe::apns_envelope_len(&apns.payload, kid.len())
            .map_err(|_| Skip::Malformed)?;
        if len > apns_max_bytes(apns.push_type) {
            return Err(Skip::TooLarge);
        }
        let body = pipeline::jwe::apns_envelope(key, kid, &apns.payload).map_err(|error| {
            tracing::error!(%error, "cannot encrypt an APNs payload");
            Skip::KeyUnreadable
        })?;
        *apns = ApnsPart {
            payload: body,
            ..apns.clone()
        };
    }
    if let Some(fcm) = &mut job.fcm {
        if pipeline::jwe::fcm_envelope_len(&fcm.data, kid.len()) > FCM_DATA_MAX_BYTES {
            return Err(Skip::TooLarge);
        }
        let data = pipeline::jwe::fcm_envelope(key, kid, &fcm.data).map_err(|error| {
            tracing::error!(%error, "cannot encrypt an FCM payload");
            Skip::KeyUnreadable
        })?;
        *fcm = FcmPart {
            data,
            ..fcm.clone()
        };
    }
    Ok(())
}

/// Does `device` get `event`, and on which platform?
pub fn wants(event: &Event, device: &Device) -> bool {
    let a = &device.attrs;
    match (event.class, a.platform) {
        (Class::Call, Platform::Apns) => a.channel == Channel::Voip && event.apns.is_some(),
        (Class::Call, Platform::Fcm) => event.fcm.is_some(),
        (_, Platform::Apns) => a.channel == Channel::Alert && event.apns.is_some(),
        (_, Platform::Fcm) => a.channel == Channel::Alert && event.fcm.is_some(),
    }
}

/// The job for one device.
pub fn job(event: &Event, device: &Device) -> PushJob {
    let platform = device.attrs.platform;
    PushJob {
        v: VERSION,
        event_id: event.id.clone(),
        token: device.token.clone(),
        platform,
        app: device.attrs.app.clone(),
        environment: device.attrs.environment,
        class: event.class,
        received_at_ms: event.received_at_ms,
        deadline_ms: event.deadline_ms,
        apns: if platform == Platform::Apns {
            event.apns.clone()
        } else {
            None
        },
        fcm: if platform == Platform::Fcm {
            event.fcm.clone()
        } else {
            None
        },
        trace_id: event.trace_id.clone(),
    }
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

    /// The job for `device`, encrypted when the event or the app's policy asks for it.
    fn job_for(&self, event: &Event, device: &Device) -> Result<PushJob, Skip> {
        let mut job = job(event, device);
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
        encrypt_job(&mut job, &key, &sealed.kid)?;
        Ok(job)
    }

    /// The jobs of `event` for `devices`, leaving out (and counting) the devices that
    /// cannot get the encrypted payload it needs; their `skipped` records come second.
    fn jobs(&self, event: &Event, devices: &[&Device]) -> (Vec<PushJob>, Vec<StatusRecord>) {
        let mut jobs = Vec::with_capacity(devices.len());
        let mut skipped = Vec::new();
        for device in devices {
            match self.job_for(event, device) {
                Ok(job) => jobs.push(job),
                Err(skip) => {
                    self.metrics
                        .fanout_skipped
                        .with_label_values(&[device.attrs.platform.as_str(), skip.as_str()])
                        .inc();
                    let tag = pipeline::telemetry::token_tag(&device.token);
                    tracing::warn!(event_id = %event.id, token = %tag, reason = skip.as_str(), "device skipped: its payload must be encrypted");
                    skipped.push(StatusRecord {
                        device: Some(tag),
                        platform: Some(device.attrs.platform),
                        app: Some(device.attrs.app.clone()),
                        ..StatusRecord::event(&event.id, Stage::Skipped).because(skip.as_str())
                    });
                }
            }
        }
        (jobs, skipped)
    }

    async fn publish_jobs(&self, event: &Event, jobs: &[PushJob]) -> Result<(), String> {
        let headers = event.trace_id.as_deref().map(|trace| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(pipeline::contract::TRACE_HEADER, trace);
            headers
        });
        let headers = &headers;
        let sends = jobs.iter().map(|job| async move {
            let body = serde_json::to_vec(job).map_err(|e| e.to_string())?;
            let subject = self.topology.push_subject(job.platform, job.environment);
            pipeline::nats::publish_stored(
                &self.js,
                &subject,
                &job_id(&event.id, &job.token),
                headers.as_ref(),
                &body.into(),
            )
            .await
            .map_err(|e| e.to_string())?;
            self.metrics
                .fanout_jobs
                .with_label_values(&[job.platform.as_str(), job.class.as_str()])
                .inc();
            Ok::<(), String>(())
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
        let devices = match self.store.devices(&event.person_id, now).await {
            Ok(devices) => devices,
            Err(error) => {
                return self
                    .retry(delivery.attempt, &event, "redis", error.to_string())
                    .await;
            }
        };
        let targets: Vec<&Device> = devices.iter().filter(|d| wants(&event, d)).collect();
        let (jobs, skipped) = self.jobs(&event, &targets);
        for record in &skipped {
            self.tracker.record(record).await;
        }
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
        if let Err(error) = self.publish_jobs(&event, &jobs).await {
            return self.retry(delivery.attempt, &event, "publish", error).await;
        }
        self.metrics
            .fanout_events
            .with_label_values(&["fanned_out"])
            .inc();
        self.tracker
            .record(&StatusRecord {
                queued: jobs.iter().map(Queued::of).collect(),
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
    use crate::store::DeviceAttrs;
    use pipeline::contract::{ApnsPart, ApnsPushType, Environment, FcmPart, FcmPriority};
    use serde_json::value::RawValue;

    fn event(class: Class, apns: bool, fcm: bool) -> Event {
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
            apns: apns.then(|| ApnsPart {
                payload: RawValue::from_string("{}".into()).expect("raw"),
                push_type: ApnsPushType::Voip,
                priority: 10,
                collapse_id: None,
            }),
            fcm: fcm.then(|| FcmPart {
                data: RawValue::from_string("{}".into()).expect("raw"),
                priority: FcmPriority::High,
                collapse_key: None,
            }),
            trace_id: None,
            encrypt: false,
        }
    }

    fn device(platform: Platform, channel: Channel) -> Device {
        Device {
            token: "t".into(),
            person_id: "p".into(),
            attrs: DeviceAttrs {
                platform,
                channel,
                app: "a".into(),
                environment: Environment::Sandbox,
                device_id: None,
                e2e: None,
            },
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn calls_go_to_voip_and_fcm_devices_only() {
        let call = event(Class::Call, true, true);
        assert!(wants(&call, &device(Platform::Apns, Channel::Voip)));
        assert!(!wants(&call, &device(Platform::Apns, Channel::Alert)));
        assert!(wants(&call, &device(Platform::Fcm, Channel::Alert)));
    }

    #[test]
    fn alerts_go_to_alert_devices_only() {
        let alert = event(Class::Alert, true, true);
        assert!(!wants(&alert, &device(Platform::Apns, Channel::Voip)));
        assert!(wants(&alert, &device(Platform::Apns, Channel::Alert)));
        assert!(wants(&alert, &device(Platform::Fcm, Channel::Alert)));
    }

    #[test]
    fn a_missing_part_means_no_job_for_that_platform() {
        let apns_only = event(Class::Call, true, false);
        assert!(!wants(&apns_only, &device(Platform::Fcm, Channel::Alert)));
    }

    #[test]
    fn jobs_carry_only_their_platforms_part() {
        let e = event(Class::Call, true, true);
        let j = job(&e, &device(Platform::Fcm, Channel::Alert));
        assert!(j.apns.is_none() && j.fcm.is_some());
        assert_eq!(j.environment, Environment::Sandbox);
        assert_ne!(job_id("e", "t1"), job_id("e", "t2"));
    }

    #[test]
    fn an_encrypted_job_carries_only_ciphertext_and_keeps_its_headers() {
        let key = pipeline::jwe::ContentKey::from_bytes([3; 32]);
        let mut e = event(Class::Call, true, true);
        e.apns = Some(ApnsPart {
            payload: RawValue::from_string(r#"{"aps":{},"caller":"Alice"}"#.into()).expect("raw"),
            push_type: ApnsPushType::Voip,
            priority: 10,
            collapse_id: Some("c".into()),
        });
        let mut j = job(&e, &device(Platform::Apns, Channel::Voip));
        encrypt_job(&mut j, &key, "k").expect("encrypt");
        let apns = j.apns.expect("apns");
        assert!(!apns.payload.get().contains("Alice"));
        assert_eq!(apns.collapse_id.as_deref(), Some("c"));
        let body: serde_json::Value = serde_json::from_str(apns.payload.get()).expect("json");
        let plain = pipeline::jwe::decrypt(&key, body["jwe"].as_str().expect("jwe")).expect("open");
        assert_eq!(plain, br#"{"aps":{},"caller":"Alice"}"#);

        e.fcm = Some(FcmPart {
            data: RawValue::from_string(format!(r#"{{"m":"{}"}}"#, "x".repeat(3_500)))
                .expect("raw"),
            priority: FcmPriority::High,
            collapse_key: None,
        });
        let mut big = job(&e, &device(Platform::Fcm, Channel::Alert));
        assert_eq!(encrypt_job(&mut big, &key, "k"), Err(Skip::TooLarge));
    }
}
