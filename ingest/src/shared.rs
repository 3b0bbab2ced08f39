//! What every ingest replica must agree on for `/v1/notify`, kept in NATS key-value
//! buckets next to the streams: which idempotency keys were already stored, and each
//! producer's rate bucket.
//!
//! - **Idempotency for an event's whole life.** JetStream's de-duplication window (120 s by
//!   default) forgets an event id after the window, and after a server restart it forgets
//!   every id whose message was already consumed; a producer's retry after either would
//!   ring twice. Each stored event's id is also written to `<prefix>notify_keys`, kept
//!   `producers.max_ttl_secs` (the longest an event can live), and a request whose event
//!   id is there is answered as a duplicate without publishing. The id is written after
//!   the event is stored, so a request that failed leaves nothing behind; two requests
//!   racing each other are still caught by the de-duplication window.
//! - **One rate per producer, not one per replica.** The token bucket lives in
//!   `<prefix>notify_rates` under the producer's name and is updated by compare-and-set on
//!   its revision, so replicas taking tokens at once retry instead of overwriting each
//!   other.
//!
//! When the buckets cannot be reached, ingest falls back to the per-replica bucket and the
//! de-duplication window and logs a warning: producers are never refused because NATS
//! key-value is briefly unavailable while events can still be stored.

use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::kv::{self, CreateErrorKind, Store, UpdateErrorKind};
use async_nats::jetstream::stream::{self, DiscardPolicy, StorageType};
use tokio::sync::OnceCell;

use crate::producers::{Bucket, OverRate};

/// Compare-and-set tries before giving up on the shared bucket.
const CAS_TRIES: usize = 8;

/// The shared buckets of one ingest replica (opened on first use).
pub struct Shared {
    js: Context,
    prefix: String,
    replicas: usize,
    keys_max_age: Duration,
    stores: OnceCell<(Store, Store)>,
}

impl Shared {
    /// Buckets named with `prefix`, replicated `replicas` times; idempotency keys are kept
    /// `keys_max_age`.
    pub fn new(js: Context, prefix: &str, replicas: usize, keys_max_age: Duration) -> Self {
        Shared {
            js,
            prefix: prefix.to_owned(),
            replicas,
            keys_max_age,
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

    async fn stores(&self) -> Result<&(Store, Store), String> {
        self.stores
            .get_or_try_init(|| async {
                let keys = self.open("notify_keys", self.keys_max_age).await?;
                // A bucket of a producer that is gone ages out.
                let rates = self
                    .open("notify_rates", Duration::from_secs(86_400))
                    .await?;
                Ok((keys, rates))
            })
            .await
    }

    /// Whether an event with `event_id` was already stored.
    pub async fn seen(&self, event_id: &str) -> Result<bool, String> {
        let (keys, _) = self.stores().await?;
        keys.get(event_id)
            .await
            .map(|value| value.is_some())
            .map_err(|e| format!("idempotency key: {e}"))
    }

    /// Remembers that the event with `event_id` is stored.
    pub async fn remember(&self, event_id: &str) -> Result<(), String> {
        let (keys, _) = self.stores().await?;
        keys.put(event_id, bytes::Bytes::new())
            .await
            .map(|_| ())
            .map_err(|e| format!("idempotency key: {e}"))
    }

    /// Takes `cost` tokens from `producer`'s shared bucket (`rate` per second up to
    /// `burst`) at `now_ms`: `Ok(Err(…))` is over the rate, `Err` means the bucket could
    /// not be reached.
    pub async fn take(
        &self,
        producer: &str,
        rate: f64,
        burst: f64,
        cost: usize,
        now_ms: u64,
    ) -> Result<Result<(), OverRate>, String> {
        let (_, rates) = self.stores().await?;
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
