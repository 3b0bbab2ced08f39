//! What every ingest replica must agree on, kept in NATS key-value buckets next to the
//! streams: which `/v1/notify` idempotency keys and which webhook events were already
//! stored, and each producer's rate buckets.
//!
//! - **Idempotency for an event's whole life.** JetStream's de-duplication window (120 s by
//!   default) forgets an event id after the window, and after a server restart it forgets
//!   every id whose message was already consumed; a producer's retry after either would
//!   ring twice. Each stored event's id is also written to `<prefix>notify_keys`, kept
//!   `producers.max_ttl_secs` (the longest an event can live), and a request whose event
//!   id is there is answered as a duplicate without publishing. The id is written after
//!   the event is stored, so a request that failed leaves nothing behind; two requests
//!   racing each other are still caught by the de-duplication window.
//! - **A replayed webhook is a duplicate for the whole replay window.** Each stored
//!   webhook's event id ([`crate::webex::event_id`]) is written to `<prefix>webhook_ids`,
//!   kept [`crate::config::WebexConfig::replay_window_secs`]: as long as a replayed event
//!   could still pass the freshness check or still be before its ring expiry. A webhook
//!   whose id is there is answered as a duplicate and rings nothing, on every replica and
//!   after JetStream's window or a server restart. Written after the event is stored, as
//!   for notify.
//! - **One rate per producer, not one per replica.** The token bucket lives in
//!   `<prefix>notify_rates` under the producer's name and is updated by compare-and-set on
//!   its revision, so replicas taking tokens at once retry instead of overwriting each
//!   other. Status look-ups draw on buckets of their own in the same store, named
//!   `status.p.<producer>` and `status.a.<admin key>`.
//!
//! When the buckets cannot be reached, ingest falls back to the per-replica bucket and the
//! de-duplication window and logs a warning: producers are never refused because NATS
//! key-value is briefly unavailable while events can still be stored. Nor are they held:
//! while NATS is not connected the buckets are not asked at all, and an answer that takes
//! longer than [`SHARED_TIMEOUT`] is given up on, so an outage is met by the publish's own
//! retry budget, not by a wait in front of it.

use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::kv::{self, CreateErrorKind, Store, UpdateErrorKind};
use async_nats::jetstream::stream::{self, DiscardPolicy, StorageType};
use tokio::sync::OnceCell;

use crate::producers::{Bucket, OverRate};

/// Compare-and-set tries before giving up on the shared bucket.
const CAS_TRIES: usize = 8;

/// Longest wait for one shared-bucket operation (opening the buckets on first use
/// included) before the request goes on without it.
pub const SHARED_TIMEOUT: Duration = Duration::from_secs(1);

/// Which stored ids a look-up is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ids {
    /// Events of `/v1/notify` (idempotency keys), kept an event's longest life.
    Notify,
    /// Webhook events, kept the replay window.
    Webhooks,
}

/// The shared buckets of one ingest replica (opened on first use).
pub struct Shared {
    js: Context,
    prefix: String,
    replicas: usize,
    keys_max_age: Duration,
    webhook_ids_max_age: Duration,
    stores: OnceCell<Stores>,
}

struct Stores {
    notify_keys: Store,
    webhook_ids: Store,
    rates: Store,
}

impl Shared {
    /// Buckets named with `prefix`, replicated `replicas` times; notify's idempotency keys
    /// are kept `keys_max_age`, webhook event ids `webhook_ids_max_age`.
    pub fn new(
        js: Context,
        prefix: &str,
        replicas: usize,
        keys_max_age: Duration,
        webhook_ids_max_age: Duration,
    ) -> Self {
        Shared {
            js,
            prefix: prefix.to_owned(),
            replicas,
            keys_max_age,
            webhook_ids_max_age,
            stores: OnceCell::new(),
        }
    }

    /// Opens the bucket, creating it first if needed. The bucket's stream is created here
    /// rather than by the client's key-value helper, which first asks the server for its
    /// account limits in a form nats-server 2.9 does not answer.
    async fn open(&self, name: &str, max_age: Duration) -> Result<Store, String> {
        let bucket = format!("{}{name}", self.prefix);
        if let Ok(store) = self.js.get_key_value(&bucket).await {
            return Ok(store);
        }
        let created = self
            .js
            .create_stream(stream::Config {
                name: format!("KV_{bucket}"),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                max_age,
                storage: StorageType::File,
                num_replicas: self.replicas,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: DiscardPolicy::New,
                ..Default::default()
            })
            .await;
        let opened = self.js.get_key_value(&bucket).await;
        match (created, opened) {
            (_, Ok(store)) => Ok(store),
            (Err(error), Err(_)) => Err(format!("key-value bucket {bucket}: {error}")),
            (Ok(_), Err(error)) => Err(format!("key-value bucket {bucket}: {error}")),
        }
    }

    async fn stores(&self) -> Result<&Stores, String> {
        self.stores
            .get_or_try_init(|| async {
                Ok(Stores {
                    notify_keys: self.open("notify_keys", self.keys_max_age).await?,
                    webhook_ids: self.open("webhook_ids", self.webhook_ids_max_age).await?,
                    // A bucket of a producer that is gone ages out.
                    rates: self
                        .open("notify_rates", Duration::from_secs(86_400))
                        .await?,
                })
            })
            .await
    }

    /// Runs `operation` on the buckets unless NATS is not connected, for at most
    /// [`SHARED_TIMEOUT`].
    async fn bounded<T>(
        &self,
        operation: impl Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        if self.js.client().connection_state() != async_nats::connection::State::Connected {
            return Err("NATS is not connected".into());
        }
        tokio::time::timeout(SHARED_TIMEOUT, operation)
            .await
            .map_err(|_| format!("no answer within {SHARED_TIMEOUT:?}"))?
    }

    async fn ids(&self, ids: Ids) -> Result<&Store, String> {
        let stores = self.stores().await?;
        Ok(match ids {
            Ids::Notify => &stores.notify_keys,
            Ids::Webhooks => &stores.webhook_ids,
        })
    }

    /// Whether an event with `event_id` was already stored.
    pub async fn seen(&self, ids: Ids, event_id: &str) -> Result<bool, String> {
        self.bounded(async {
            self.ids(ids)
                .await?
                .get(event_id)
                .await
                .map(|value| value.is_some())
                .map_err(|e| format!("stored event id: {e}"))
        })
        .await
    }

    /// Remembers that the event with `event_id` is stored.
    pub async fn remember(&self, ids: Ids, event_id: &str) -> Result<(), String> {
        self.bounded(async {
            self.ids(ids)
                .await?
                .put(event_id, bytes::Bytes::new())
                .await
                .map(|_| ())
                .map_err(|e| format!("stored event id: {e}"))
        })
        .await
    }

    /// Takes `cost` tokens from the shared bucket named `producer` (`rate` per second up
    /// to `burst`) at `now_ms`: `Ok(Err(…))` is over the rate, `Err` means the bucket could
    /// not be reached.
    pub async fn take(
        &self,
        producer: &str,
        rate: f64,
        burst: f64,
        cost: usize,
        now_ms: u64,
    ) -> Result<Result<(), OverRate>, String> {
        self.bounded(self.take_unbounded(producer, rate, burst, cost, now_ms))
            .await
    }

    async fn take_unbounded(
        &self,
        producer: &str,
        rate: f64,
        burst: f64,
        cost: usize,
        now_ms: u64,
    ) -> Result<Result<(), OverRate>, String> {
        let rates = &self.stores().await?.rates;
        let failed = |e: &dyn std::fmt::Display| format!("rate bucket of {producer}: {e}");
        for _ in 0..CAS_TRIES {
            let entry = rates.entry(producer).await.map_err(|e| failed(&e))?;
            let (bucket, revision) = match &entry {
                Some(entry) if entry.operation == kv::Operation::Put => (
                    serde_json::from_slice::<Bucket>(&entry.value)
                        .unwrap_or(Bucket::full(burst, now_ms)),
                    Some(entry.revision),
                ),
                _ => (Bucket::full(burst, now_ms), None),
            };
            let taken = match bucket.take(now_ms, rate, burst, cost) {
                Ok(taken) => taken,
                Err(over) => return Ok(Err(over)),
            };
            let value: bytes::Bytes = serde_json::to_vec(&taken).map_err(|e| failed(&e))?.into();
            let written = match revision {
                Some(revision) => rates.update(producer, value, revision).await.map_err(|e| {
                    (
                        e.kind() == UpdateErrorKind::WrongLastRevision,
                        e.to_string(),
                    )
                }),
                None => rates.create(producer, value).await.map_err(|e| {
                    let raced = matches!(e.kind(), CreateErrorKind::AlreadyExists);
                    (raced, e.to_string())
                }),
            };
            match written {
                Ok(_) => return Ok(Ok(())),
                // Another replica took tokens first: read again.
                Err((true, _)) => continue,
                Err((false, error)) => return Err(failed(&error)),
            }
        }
        Err(failed(&"too many concurrent updates"))
    }
}
