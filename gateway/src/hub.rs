//! What every connection shares, whatever its transport: admitting a hello (credential,
//! app, device), the device's cursor in Redis, reading the device's messages from
//! `INAPP` in order, the live signal on the device's subject, the connections of this
//! replica by device and person (their limits), and a connection's [`Window`] (what it
//! sent, what was acknowledged).
//!
//! Each device's cursor and each connection's presence live in the registry's Redis
//! ([`registry::inapp`], whose keys the fan-out reads too). The cursor is kept as long
//! as the registration lives (`device_ttl_secs`), refreshed by every acknowledgement; a
//! connection's presence is written when it opens ([`Hub::present`]) and renewed every
//! heartbeat by the replica's one background task ([`Hub::background`]), which also
//! watches every device's active-user announcements. Every message a
//! connection sends, acknowledges or skips as expired is recorded in its event's status.
//!
//! A message acknowledged over a connection, or skipped by it as expired, is then removed
//! from `INAPP` ([`Hub::remove`]): the stream holds what is still to be delivered, not a
//! copy of what was (the person's inbox, when the app keeps one, is the kept copy). The
//! removals run off the acknowledgement's path, in the replica's one removal task, a few
//! at a time; one that fails leaves the message to `INAPP`'s `max_age` and is counted
//! (`pushline_inapp_messages_total{outcome="not_removed"}`). A removal never changes what
//! a device is delivered: the cursor already passed the message.
//!
//! The inbox and receipt requests of a connection are the [`Inboxes`]' (`crate::inbox`);
//! every connection also follows its person's inbox subject ([`Hub::inbox_changes`]).
//!
//! # Reading a device's messages
//!
//! | the stream's next message on the device's subject after `after` | [`Next`] |
//! |---|---|
//! | none | [`Next::Nothing`] |
//! | past its deadline | [`Next::Expired`] (skipped: never delivered) |
//! | not a readable in-app job | [`Next::Expired`] (skipped and logged) |
//! | otherwise | [`Next::Message`] |
//!
//! Reads go to the stream's leader (`STREAM.MSG.GET` next-by-subject), so a message whose
//! publish was acknowledged is readable at once, on any node of a cluster.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use pipeline::CancellationToken;
use pipeline::contract::{PushJob, now_ms};
use pipeline::metrics::Metrics;
use pipeline::topology::{StreamKind, Topology};
use pipeline::tracking::{Stage, StatusRecord, Tracker};
use registry::auth::{Authenticator, Client, Principal};
use registry::inapp::InAppState;
use registry::store::Store;
use tokio::sync::{OnceCell, mpsc};

use crate::config::Limits;
use crate::frames::{Close, Request};
use crate::inbox::Inboxes;

/// Longest wait for one Redis command or stream read on a connection's path.
const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// Removals from `INAPP` waiting for the removal task; beyond, one is not made (counted).
const REMOVALS_QUEUED: usize = 16_384;

/// Removals from `INAPP` in flight at once.
const REMOVALS_AT_ONCE: usize = 8;

/// A device a person connected from, admitted.
#[derive(Debug, Clone)]
pub struct Device {
    /// The person (canonical id).
    pub person: String,
    /// The app.
    pub app: String,
    /// The device id.
    pub device_id: String,
    /// The in-app registration's token.
    pub token: String,
    /// `INAPP` subject of this person on this device.
    pub subject: String,
}

/// One message read for a device.
#[derive(Debug)]
pub enum Next {
    /// Deliver it.
    Message {
        /// Its `INAPP` sequence.
        seq: u64,
        /// The job.
        job: Box<PushJob<inapp::spec::InAppPart>>,
    },
    /// Skip past this sequence: never delivered.
    Expired {
        /// Its `INAPP` sequence.
        seq: u64,
        /// Its event, when it could be read.
        event_id: Option<String>,
    },
    /// Nothing after the given sequence (yet).
    Nothing,
}

/// Everything a connection needs from the outside.
pub struct Hub {
    auth: Authenticator,
    store: Store,
    inapp: InAppState,
    tracker: Tracker,
    nats: async_nats::Client,
    js: Context,
    topology: Topology,
    stream: OnceCell<Stream>,
    apps: BTreeSet<String>,
    device_ttl: Duration,
    /// The connection bounds.
    pub limits: Limits,
    /// The gateway's metrics.
    pub metrics: Metrics,
    connections: Mutex<Connections>,
    /// This replica's id in presence fields.
    replica: String,
    inboxes: Inboxes,
    /// Sequences to remove from `INAPP` (with their app, for the metric), for the
    /// removal task.
    removals: mpsc::Sender<(u64, String)>,
    /// The removal task's end, until [`Hub::background`] starts it.
    removals_queue: Mutex<Option<mpsc::Receiver<(u64, String)>>>,
}

/// The parts a [`Hub`] is made of.
pub struct Parts {
    /// The registry's authenticator.
    pub auth: Authenticator,
    /// The registry's device store.
    pub store: Store,
    /// The in-app cursors and presence, in the registry's Redis.
    pub inapp: InAppState,
    /// Status records.
    pub tracker: Tracker,
    /// NATS.
    pub nats: async_nats::Client,
    /// Subjects and streams.
    pub topology: Topology,
    /// The apps served.
    pub apps: BTreeSet<String>,
    /// `device_ttl_secs`.
    pub device_ttl: Duration,
    /// Bounds.
    pub limits: Limits,
    /// Metrics.
    pub metrics: Metrics,
    /// The persons' inboxes, in the registry's Redis.
    pub inbox: registry::inbox::Inbox,
    /// The apps that keep an inbox (`inbox_apps`).
    pub inbox_apps: BTreeSet<String>,
}

impl Hub {
    /// A hub of `parts`.
    pub fn new(parts: Parts) -> Self {
        let js = pipeline::topology::jetstream(parts.nats.clone());
        let inboxes = Inboxes::new(
            parts.inbox,
            registry::inbox::InboxNotices::new(parts.nats.clone(), parts.topology.clone()),
            registry::receipts::Receipts::new(
                js.clone(),
                parts.topology.clone(),
                parts.tracker.clone(),
                parts.store.clone(),
                parts.metrics.clone(),
            ),
            parts.inbox_apps,
            parts.metrics.clone(),
        );
        let (removals, removals_queue) = mpsc::channel(REMOVALS_QUEUED);
        Hub {
            auth: parts.auth,
            store: parts.store,
            inapp: parts.inapp,
            tracker: parts.tracker,
            js,
            nats: parts.nats,
            topology: parts.topology,
            stream: OnceCell::new(),
            apps: parts.apps,
            device_ttl: parts.device_ttl,
            limits: parts.limits,
            metrics: parts.metrics,
            connections: Mutex::new(Connections::default()),
            replica: format!("{:016x}", rand_id()),
            inboxes,
            removals,
            removals_queue: Mutex::new(Some(removals_queue)),
        }
    }

    /// Carries out an inbox or receipt `request` of the connection of `device` over
    /// `transport` and answers its frame's JSON (`crate::inbox`); a refusal is an `error`
    /// frame, never a reason to close.
    pub async fn answer(
        &self,
        device: &Device,
        request: Request,
        transport: &'static str,
    ) -> String {
        self.inboxes.answer(device, request, transport).await
    }

    /// The changes to the person's inboxes (their inbox subject, core NATS), for as long
    /// as the connection lives; [`crate::inbox::change_frame`] picks its app's.
    pub async fn inbox_changes(&self, device: &Device) -> Result<async_nats::Subscriber, Close> {
        within(
            self.nats
                .subscribe(self.topology.inbox_subject(&device.person)),
        )
        .await?
        .map_err(|_| Close::Unavailable)
    }

    /// Removes the messages `seqs` (acknowledged or skipped: the cursor passed them) from
    /// `INAPP`, off the caller's path; a removal that cannot be queued is counted and
    /// left to the stream's `max_age`.
    pub fn remove(&self, device: &Device, seqs: impl IntoIterator<Item = u64>) {
        for seq in seqs {
            if self.removals.try_send((seq, device.app.clone())).is_err() {
                self.metrics
                    .inapp_messages
                    .with_label_values(&[&device.app, "not_removed"])
                    .inc();
            }
        }
    }

    /// The replica's removal task: takes [`Hub::remove`]'s sequences, at most
    /// [`REMOVALS_AT_ONCE`] in flight, until the hub is gone.
    async fn removing(self: std::sync::Arc<Self>, queue: mpsc::Receiver<(u64, String)>) {
        use futures::StreamExt as _;
        let hub = std::sync::Arc::downgrade(&self);
        drop(self);
        let seqs = futures::stream::unfold(queue, |mut queue| async move {
            queue.recv().await.map(|removal| (removal, queue))
        });
        seqs.for_each_concurrent(REMOVALS_AT_ONCE, |(seq, app)| {
            let hub = hub.clone();
            async move {
                if let Some(hub) = hub.upgrade() {
                    hub.remove_now(seq, &app).await;
                }
            }
        })
        .await;
    }

    async fn remove_now(&self, seq: u64, app: &str) {
        let removed = match self.stream().await {
            Ok(stream) => match within(stream.delete_message(seq)).await {
                Ok(Ok(_)) => Ok(()),
                // Already gone: another connection of the device removed it, or its age.
                Ok(Err(error)) if is_gone(&error) => Ok(()),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err("no answer in time".to_owned()),
            },
            Err(_) => Err("INAPP cannot be read".to_owned()),
        };
        let outcome = match removed {
            Ok(()) => "removed",
            Err(error) => {
                tracing::warn!(%error, seq, "cannot remove a delivered in-app message from INAPP; it stays until its max_age");
                "not_removed"
            }
        };
        self.metrics
            .inapp_messages
            .with_label_values(&[app, outcome])
            .inc();
    }

    /// The apps served (the `app` label of metrics).
    pub fn serves(&self, app: &str) -> bool {
        self.apps.contains(app)
    }

    /// Who is connecting: the credential's person, holding an in-app registration of `app`
    /// with `device_id` ([`Hub::activate`] then makes them its active user).
    pub async fn admit(
        &self,
        credential: &str,
        app: &str,
        device_id: &str,
        peer: SocketAddr,
    ) -> Result<Device, Close> {
        if !self.serves(app) {
            return Err(Close::Forbidden);
        }
        let mut headers = axum::http::HeaderMap::new();
        let bearer = axum::http::HeaderValue::try_from(format!("Bearer {credential}"))
            .map_err(|_| Close::Unauthorized)?;
        headers.insert(axum::http::header::AUTHORIZATION, bearer);
        let principal = self
            .auth
            .authenticate(&headers, Client::of(Some(peer)))
            .await
            .map_err(|error| match error {
                registry::error::ApiError::Unavailable => Close::Unavailable,
                _ => Close::Unauthorized,
            })?;
        let Principal::Person { id: person } = principal else {
            // API keys and the development switch name no person: a connection is one.
            return Err(Close::Unauthorized);
        };
        // A person is named as the store names them: an id that would read as another
        // (a JWT subject spelling a Webex id) is not taken for it.
        if !registry::person::canonical(&person).is_ok_and(|named| named == person.as_str()) {
            return Err(Close::Unauthorized);
        }
        let now = now_ms();
        let devices = within(self.store.devices(&person, now))
            .await?
            .map_err(|_| Close::Unavailable)?;
        let registration = devices
            .iter()
            .find(|d| {
                d.attrs.platform == inapp::spec::NAME
                    && d.attrs.app == app
                    && d.device_id() == device_id
            })
            .ok_or(Close::Forbidden)?;
        Ok(Device {
            subject: self.topology.inapp_subject(&registration.token, &person),
            token: registration.token.clone(),
            app: app.to_owned(),
            device_id: device_id.to_owned(),
            person,
        })
    }

    /// The highest sequence the person acknowledged on the device (0: none).
    pub async fn cursor(&self, device: &Device) -> Result<u64, Close> {
        within(self.inapp.cursor(&device.token, &device.person))
            .await?
            .map_err(|_| Close::Unavailable)
    }

    /// Moves the device's cursor to `seq` (never back): what a skipped, expired message
    /// does when nothing before it is in flight.
    pub async fn acknowledge(&self, device: &Device, seq: u64) -> Result<(), Close> {
        let ttl_ms = u64::try_from(self.device_ttl.as_millis()).unwrap_or(u64::MAX);
        within(
            self.inapp
                .acknowledge(&device.token, &device.person, seq, ttl_ms),
        )
        .await?
        .map_err(|_| Close::Unavailable)
    }

    /// The app acknowledged up to `window.acked`: the cursor moves, and every message
    /// that covers is recorded `acknowledged` in its event's status.
    pub async fn acknowledged(&self, device: &Device, window: &mut Window) -> Result<(), Close> {
        self.acknowledge(device, window.acked).await?;
        let messages = window.take_acknowledged();
        self.metrics
            .inapp_messages
            .with_label_values(&[&device.app, "acknowledged"])
            .inc_by(messages.len() as u64);
        self.remove(device, messages.iter().map(|(seq, _)| *seq));
        for (_, event_id) in messages {
            self.tracker
                .record(&self.record(device, &event_id, Stage::Acknowledged))
                .await;
        }
        Ok(())
    }

    /// Message `seq` of `job` went over the connection: the window and the event's status
    /// say so.
    pub async fn sent(
        &self,
        device: &Device,
        window: &mut Window,
        seq: u64,
        job: &PushJob<inapp::spec::InAppPart>,
    ) {
        window.mark_sent(seq, &job.event_id);
        self.metrics
            .inapp_messages
            .with_label_values(&[&device.app, "sent"])
            .inc();
        self.tracker
            .record(&self.record(device, &job.event_id, Stage::SentInApp))
            .await;
    }

    /// The status record of `event_id` for this in-app device.
    fn record(&self, device: &Device, event_id: &str, stage: Stage) -> StatusRecord {
        StatusRecord {
            device: Some(pipeline::telemetry::token_tag(&device.token)),
            platform: Some(inapp::spec::NAME.to_owned()),
            app: Some(device.app.clone()),
            ..StatusRecord::event(event_id, stage)
        }
    }

    /// Vouches in Redis for the connection `entry` of `device` right away (the fan-out
    /// then lets the device's pushes wait for its app, `docs/inapp.md`); the replica's
    /// background task renews it every heartbeat ([`Hub::background`]) and the entry
    /// withdraws it when dropped. A crashed replica's entries lapse after three heartbeats.
    pub async fn present(&self, device: &Device, entry: &Entry<'_>) {
        let written = within(self.inapp.set_present(
            &device.token,
            &device.person,
            &entry.field,
            self.present_until(),
        ))
        .await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::warn!(
                "cannot record an in-app connection's presence; its pushes will not wait for it"
            );
        }
    }

    fn present_until(&self) -> u64 {
        now_ms() + 3_000 * self.limits.heartbeat_secs
    }

    /// The replica's own work while it runs: one subscription to every device's
    /// active-user announcements (`active.*`: a connection of another person on an
    /// announced device closes, `replaced`), and one renewal of every connection's
    /// presence per heartbeat. Per replica rather than per connection, so a connection
    /// costs one subscription (its live signal) and no task of its own.
    pub async fn background(
        self: std::sync::Arc<Self>,
        shutdown: CancellationToken,
    ) -> Result<(), Close> {
        use futures::StreamExt as _;
        let queue = self
            .removals_queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(queue) = queue {
            tokio::spawn(self.clone().removing(queue));
        }
        let mut notices = within(self.nats.subscribe(self.topology.active_subjects()))
            .await?
            .map_err(|_| Close::Unavailable)?;
        let mut heartbeat = tokio::time::interval(Duration::from_secs(self.limits.heartbeat_secs));
        heartbeat.reset();
        let hub = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    notice = notices.next() => {
                        let Some(notice) = notice else { break };
                        if let Some(device) = hub.topology.active_device(notice.subject.as_str()) {
                            hub.announced(device, &notice.payload);
                        }
                    }
                    _ = heartbeat.tick() => hub.renew_presence().await,
                }
            }
        });
        Ok(())
    }

    /// A person became the active user of the device `device` (`id_token` of its in-app
    /// token; `notice` is [`pipeline::topology::active_notice`]): this replica's
    /// connections of others on it that are older than the announcement go. A younger
    /// one stays: the announcement was overtaken (a registration announced on the
    /// registry's connection, arriving after a newer person connected here).
    fn announced(&self, device: &str, notice: &[u8]) {
        let (person, at_ms) = pipeline::topology::read_active_notice(notice);
        let connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        for other in connections.by_device.get(device).into_iter().flatten() {
            if other.person_tag.as_bytes() != person && at_ms.is_none_or(|at| at >= other.since_ms)
            {
                other.evict(Close::Replaced);
            }
        }
    }

    async fn renew_presence(&self) {
        use futures::StreamExt as _;
        let live: Vec<(String, String, String)> = {
            let connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
            connections
                .by_device
                .values()
                .flatten()
                .map(|c| (c.token.clone(), c.person.clone(), c.field.clone()))
                .collect()
        };
        let until = self.present_until();
        futures::stream::iter(live)
            .for_each_concurrent(32, |(token, person, field)| async move {
                let _ = within(self.inapp.set_present(&token, &person, &field, until)).await;
            })
            .await;
    }

    async fn stream(&self) -> Result<&Stream, Close> {
        self.stream
            .get_or_try_init(|| async {
                let name = self.topology.stream_name(StreamKind::InApp);
                within(self.js.get_stream(name))
                    .await?
                    .map_err(|_| Close::Unavailable)
            })
            .await
    }

    /// The device's next message after sequence `after`.
    pub async fn next(&self, device: &Device, after: u64) -> Result<Next, Close> {
        let stream = self.stream().await?;
        let read = stream
            .raw_message_builder()
            .sequence(after + 1)
            .next_by_subject(device.subject.clone())
            .send();
        let message = match within(read).await? {
            Ok(message) => message,
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => {
                return Ok(Next::Nothing);
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read INAPP");
                return Err(Close::Unavailable);
            }
        };
        let seq = message.sequence;
        let job: PushJob<inapp::spec::InAppPart> = match serde_json::from_slice(&message.payload) {
            Ok(job) => job,
            Err(error) => {
                tracing::error!(%error, seq, "an INAPP message is not an in-app job; skipped");
                return Ok(Next::Expired {
                    seq,
                    event_id: None,
                });
            }
        };
        if job.deadline_ms <= now_ms() {
            return Ok(Next::Expired {
                seq,
                event_id: Some(job.event_id),
            });
        }
        Ok(Next::Message {
            seq,
            job: Box::new(job),
        })
    }

    /// The next message to send on a connection whose `window` has room
    /// ([`Window::has_room`]), or `None` once the stream has nothing more for now
    /// (`window.more` cleared; the first time, the catch-up's size is observed for
    /// `transport`). Expired messages are skipped here, never delivered: the cursor passes
    /// one when nothing before it is in flight. The caller sends the message, then
    /// [`Window::mark_sent`].
    pub async fn next_to_send(
        &self,
        device: &Device,
        window: &mut Window,
        transport: &str,
    ) -> Result<Option<(u64, Box<PushJob<inapp::spec::InAppPart>>)>, Close> {
        loop {
            match self.next(device, window.sent).await? {
                Next::Message { seq, job } => {
                    window.found();
                    return Ok(Some((seq, job)));
                }
                Next::Expired { seq, event_id } => {
                    window.found();
                    window.sent = seq;
                    self.metrics
                        .inapp_messages
                        .with_label_values(&[&device.app, "expired"])
                        .inc();
                    self.remove(device, [seq]);
                    if let Some(event_id) = event_id {
                        self.tracker
                            .record(&self.record(device, &event_id, Stage::Expired))
                            .await;
                    }
                    if window.unacked.is_empty() {
                        // Nothing in flight before it: the cursor may pass it.
                        window.acked = seq;
                        self.acknowledge(device, seq).await?;
                    }
                }
                Next::Nothing => {
                    window.nothing(std::time::Instant::now());
                    if let Some(count) = window.catch_up.take() {
                        self.metrics
                            .inapp_catchup
                            .with_label_values(&[transport])
                            .observe(count as f64);
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// Everything a connection does once admitted, whatever its transport: counted on
    /// this replica ([`Hub::enter`], which may evict older ones), present in Redis
    /// ([`Hub::present`]), its person made the device's active user ([`Hub::activate`]),
    /// and counted in `pushline_inapp_connections{transport}` until the returned
    /// [`Joined`] drops.
    pub async fn join(&self, device: &Device, transport: &str) -> Result<Joined<'_>, Close> {
        let (entry, cancelled, evicted) = self.enter(device);
        self.present(device, &entry).await;
        self.activate(device).await?;
        let gauge = self
            .metrics
            .inapp_connections
            .with_label_values(&[transport, &device.app]);
        gauge.inc();
        Ok(Joined {
            cancelled,
            evicted,
            _entry: entry,
            gauge,
        })
    }

    /// Makes the connection's person the device's active user and tells every replica,
    /// whose connections of other persons on the device close (`replaced`). Called once
    /// the replica watches the announcements ([`Hub::background`], from its start), so no
    /// newer announcement can slip past it.
    pub async fn activate(&self, device: &Device) -> Result<(), Close> {
        let now = now_ms();
        within(
            self.store
                .set_active(&device.app, &device.device_id, &device.person, now),
        )
        .await?
        .map_err(|_| Close::Unavailable)?;
        let announced = self.nats.publish(
            self.topology.active_subject(&device.token),
            pipeline::topology::active_notice(&device.person, now).into(),
        );
        within(announced).await?.map_err(|_| Close::Unavailable)
    }

    /// The live signal: a message on the device's subject whenever one is stored.
    pub async fn live(&self, device: &Device) -> Result<async_nats::Subscriber, Close> {
        within(self.nats.subscribe(device.subject.clone()))
            .await?
            .map_err(|_| Close::Unavailable)
    }

    /// Counts a connection of `device` on this replica; its token is cancelled when the
    /// connection must go (`reason`): a newer connection of the device or person over the
    /// limits, or of another person on the same device. Dropping the entry forgets it.
    pub fn enter(&self, device: &Device) -> (Entry<'_>, CancellationToken, Evicted) {
        let token = CancellationToken::new();
        let evicted = Evicted::default();
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let id = connections.next_id;
        connections.next_id += 1;
        let field = format!("{}-{id}", self.replica);
        let this = Connected {
            id,
            person: device.person.clone(),
            person_tag: pipeline::topology::id_token(&device.person),
            token: device.token.clone(),
            field: field.clone(),
            cancel: token.clone(),
            evicted: evicted.clone(),
            since_ms: now_ms(),
        };
        let device_key = pipeline::topology::id_token(&device.token);
        let on_device = connections.by_device.entry(device_key.clone()).or_default();
        // Another person on this device: they are not its active user any more.
        on_device.retain(|other| {
            let stays = other.person == this.person;
            if !stays {
                other.evict(Close::Replaced);
            }
            stays
        });
        while on_device.len() >= self.limits.max_connections_per_device {
            if let Some(oldest) = on_device.pop_front() {
                oldest.evict(Close::TooManyConnections);
            }
        }
        on_device.push_back(this.clone());
        let of_person = connections
            .by_person
            .entry(device.person.clone())
            .or_default();
        while of_person.len() >= self.limits.max_connections_per_person {
            if let Some(oldest) = of_person.pop_front() {
                oldest.evict(Close::TooManyConnections);
            }
        }
        of_person.push_back(this);
        (
            Entry {
                hub: self,
                id,
                device: device_key,
                token: device.token.clone(),
                person: device.person.clone(),
                field,
            },
            token,
            evicted,
        )
    }
}

/// A random connection id.
fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(now_ms());
    hasher.finish()
}

/// A connection on this replica ([`Hub::join`]): forgotten, its presence withdrawn and
/// its gauge lowered when dropped.
pub struct Joined<'a> {
    /// Cancelled when the connection must go (evicted: see `evicted`).
    pub cancelled: CancellationToken,
    /// Why it must go, once it must.
    pub evicted: Evicted,
    _entry: Entry<'a>,
    gauge: prometheus::IntGauge,
}

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Why a connection was told to go, once it was.
#[derive(Debug, Clone, Default)]
pub struct Evicted(std::sync::Arc<Mutex<Option<Close>>>);

impl Evicted {
    /// The reason, once evicted.
    pub fn reason(&self) -> Option<Close> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records why the connection must go (the first reason stays).
    fn set(&self, reason: Close) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(reason);
    }
}

#[derive(Debug, Clone)]
struct Connected {
    id: u64,
    person: String,
    /// `id_token(person)`, as announcements name them.
    person_tag: String,
    /// The device's in-app token.
    token: String,
    /// The connection's presence field (this replica's id and the connection's).
    field: String,
    cancel: CancellationToken,
    evicted: Evicted,
    /// When it joined (Unix ms): announcements older than that do not close it.
    since_ms: u64,
}

impl Connected {
    fn evict(&self, reason: Close) {
        self.evicted.set(reason);
        self.cancel.cancel();
    }
}

#[derive(Default)]
struct Connections {
    next_id: u64,
    /// By `id_token` of the device's in-app token, as announcements name devices.
    by_device: HashMap<String, VecDeque<Connected>>,
    by_person: HashMap<String, VecDeque<Connected>>,
}

/// A connection counted by [`Hub::enter`]; forgotten when dropped.
pub struct Entry<'a> {
    hub: &'a Hub,
    id: u64,
    device: String,
    token: String,
    person: String,
    field: String,
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        {
            let mut connections = self
                .hub
                .connections
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(list) = connections.by_device.get_mut(&self.device) {
                list.retain(|c| c.id != self.id);
                if list.is_empty() {
                    connections.by_device.remove(&self.device);
                }
            }
            if let Some(list) = connections.by_person.get_mut(&self.person) {
                list.retain(|c| c.id != self.id);
                if list.is_empty() {
                    connections.by_person.remove(&self.person);
                }
            }
        }
        // Withdraw the connection's presence without making the caller wait.
        let inapp = self.hub.inapp.clone();
        let (token, person, field) = (
            std::mem::take(&mut self.token),
            std::mem::take(&mut self.person),
            std::mem::take(&mut self.field),
        );
        tokio::spawn(async move {
            let _ = within(inapp.clear_present(&token, &person, &field)).await;
        });
    }
}

/// The first pause before reading the stream again after a live signal found nothing.
pub const RECHECK_FIRST: Duration = Duration::from_millis(20);
/// How long after a signal the stream is read again while it shows nothing new.
pub const RECHECK_FOR: Duration = Duration::from_secs(2);

/// A live signal whose message was not readable yet: the signal is the publish itself,
/// which reaches subscribers before the stream has stored it (on one server its store
/// runs a moment later; on a cluster, once the replicas agreed). So a read that finds
/// nothing after a signal is made again after [`RECHECK_FIRST`], doubling, until
/// [`RECHECK_FOR`] has passed since the signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Recheck {
    since: std::time::Instant,
    pause: Duration,
    at: Option<std::time::Instant>,
}

/// What a connection has sent and what was acknowledged.
#[derive(Debug)]
pub struct Window {
    /// The highest sequence acknowledged (the cursor).
    pub acked: u64,
    /// The highest sequence sent or skipped.
    pub sent: u64,
    /// Sequences sent and not yet acknowledged, in order.
    pub unacked: VecDeque<u64>,
    /// The stream may hold more after `sent`.
    pub more: bool,
    /// Messages sent since the connection began, until the stream first had nothing
    /// more (then `None`): the catch-up's size.
    pub catch_up: Option<u64>,
    /// The events of the messages in `unacked`, with their sequences.
    events: VecDeque<(u64, String)>,
    /// A signal the stream has not shown a message for yet.
    recheck: Option<Recheck>,
}

impl Window {
    /// A window starting after the cursor `acked`.
    pub fn new(acked: u64) -> Self {
        Window {
            acked,
            sent: acked,
            unacked: VecDeque::new(),
            more: true,
            catch_up: Some(0),
            events: VecDeque::new(),
            recheck: None,
        }
    }

    /// A live signal at `now`: the stream may hold more, and if a read finds nothing the
    /// message is on its way ([`Recheck`]).
    pub fn signalled(&mut self, now: std::time::Instant) {
        self.more = true;
        self.recheck = Some(Recheck {
            since: now,
            pause: RECHECK_FIRST,
            at: None,
        });
    }

    /// A read found a message (sent or skipped): what was signalled is being read.
    pub fn found(&mut self) {
        self.recheck = None;
    }

    /// A read found nothing at `now`: the stream has nothing more for now, and after a
    /// signal it is read again in a moment, until [`RECHECK_FOR`] after the signal.
    pub fn nothing(&mut self, now: std::time::Instant) {
        self.more = false;
        if let Some(recheck) = self.recheck.as_mut() {
            if now.duration_since(recheck.since) + recheck.pause > RECHECK_FOR {
                self.recheck = None;
            } else {
                recheck.at = Some(now + recheck.pause);
                recheck.pause *= 2;
            }
        }
    }

    /// When the stream is to be read again, if a signal is still unanswered.
    pub fn recheck_at(&self) -> Option<std::time::Instant> {
        self.recheck.and_then(|r| r.at)
    }

    /// The time to read the stream again has come.
    pub fn recheck_due(&mut self) {
        self.more = true;
        if let Some(recheck) = self.recheck.as_mut() {
            recheck.at = None;
        }
    }

    /// Records that the message `seq` of `event_id` was sent.
    pub fn mark_sent(&mut self, seq: u64, event_id: &str) {
        self.sent = seq;
        self.unacked.push_back(seq);
        self.events.push_back((seq, event_id.to_owned()));
        if let Some(count) = self.catch_up.as_mut() {
            *count += 1;
        }
    }

    /// Whether another message may be read and sent.
    pub fn has_room(&self, max_unacked: usize) -> bool {
        self.more && self.unacked.len() < max_unacked
    }

    /// An ack up to `seq`: the new cursor when it moves, or the protocol error of an ack
    /// beyond what was sent.
    pub fn ack(&mut self, seq: u64) -> Result<Option<u64>, Close> {
        if seq > self.sent {
            return Err(Close::Protocol);
        }
        if seq <= self.acked {
            return Ok(None);
        }
        self.acked = seq;
        while self.unacked.front().is_some_and(|&s| s <= seq) {
            self.unacked.pop_front();
        }
        Ok(Some(seq))
    }

    /// The sent messages the cursor now covers (sequence, event), once each.
    pub fn take_acknowledged(&mut self) -> Vec<(u64, String)> {
        let mut messages = Vec::new();
        while self.events.front().is_some_and(|(s, _)| *s <= self.acked) {
            if let Some(message) = self.events.pop_front() {
                messages.push(message);
            }
        }
        messages
    }
}

/// Waits until `at`, or forever without one: a `select!` arm for [`Window::recheck_at`].
pub async fn recheck(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Whether a removal failed only because the message is not there any more.
fn is_gone(error: &async_nats::jetstream::stream::DeleteMessageError) -> bool {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::stream::DeleteMessageErrorKind;
    // nats-server answers a removal of a missing message with a failed removal (10057)
    // whose description says "no message found" or "sequence not found", depending on
    // the storage; a failed removal with any other description is a failure.
    matches!(error.kind(), DeleteMessageErrorKind::JetStream(e)
        if e.error_code() == ErrorCode::NO_MESSAGE_FOUND
            || e.error_code() == ErrorCode::SEQUENCE_NOT_FOUND
            || (e.error_code() == ErrorCode::STREAM_MESSAGE_DELETE_FAILED
                && e.to_string().to_ascii_lowercase().contains("found")))
}

/// `future` within [`IO_TIMEOUT`], or [`Close::Unavailable`].
pub(crate) async fn within<T>(future: impl std::future::Future<Output = T>) -> Result<T, Close> {
    tokio::time::timeout(IO_TIMEOUT, future)
        .await
        .map_err(|_| Close::Unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_move_the_cursor_forward_only_and_never_past_what_was_sent() {
        let mut window = Window::new(10);
        window.sent = 15;
        window.unacked.extend([12, 14, 15]);
        assert_eq!(window.ack(9), Ok(None), "an old ack changes nothing");
        assert_eq!(window.ack(14), Ok(Some(14)));
        assert_eq!(window.unacked, [15]);
        assert_eq!(window.ack(16), Err(Close::Protocol), "beyond what was sent");
        assert_eq!(window.ack(15), Ok(Some(15)));
        assert!(window.unacked.is_empty());
    }

    #[test]
    fn a_signal_whose_message_is_not_stored_yet_is_read_again_for_a_while() {
        let t0 = std::time::Instant::now();
        let ms = Duration::from_millis;
        let mut window = Window::new(0);
        // Nothing after a catch-up with no signal: wait for one.
        window.nothing(t0);
        assert!(!window.more);
        assert_eq!(window.recheck_at(), None);

        // A signal, and the read finds nothing: read again 20 ms later, then 40, 80…
        window.signalled(t0);
        assert!(window.more);
        window.nothing(t0);
        assert_eq!(window.recheck_at(), Some(t0 + ms(20)));
        window.recheck_due();
        assert!(window.more);
        assert_eq!(window.recheck_at(), None, "one read per pause");
        window.nothing(t0 + ms(20));
        assert_eq!(window.recheck_at(), Some(t0 + ms(60)));
        // The message is there: no more reads for that signal.
        window.recheck_due();
        window.found();
        window.nothing(t0 + ms(61));
        assert_eq!(window.recheck_at(), None);

        // A signal whose message never shows: given up once the next pause would pass
        // RECHECK_FOR after the signal.
        window.signalled(t0);
        let mut now = t0;
        let mut reads = 0;
        while let Some(at) = {
            window.nothing(now);
            window.recheck_at()
        } {
            window.recheck_due();
            now = at;
            reads += 1;
            assert!(now <= t0 + RECHECK_FOR);
        }
        assert_eq!(
            reads, 6,
            "20 + 40 + … + 640 ms, then 1280 ms would pass 2 s"
        );
        assert!(!window.more);
    }

    #[test]
    fn room_is_the_unacked_bound_while_more_may_come() {
        let mut window = Window::new(0);
        assert!(window.has_room(2));
        window.unacked.extend([1, 2]);
        assert!(!window.has_room(2));
        window.unacked.clear();
        window.more = false;
        assert!(!window.has_room(2));
    }
}
