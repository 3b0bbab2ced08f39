//! Producer keys, their rates and the admin keys of ingest's producer API: who holds a key
//! (SHA-256, compared in constant time) and each producer's token bucket, counted in
//! target persons. This replica's buckets are the fallback of the shared ones in NATS
//! ([`crate::shared`]).

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ProducersConfig;

/// A producer's token bucket: `tokens` left at `at_ms`. Kept per replica, and shared by
/// all replicas in NATS ([`crate::shared`]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, Deserialize)]
pub struct Bucket {
    /// Tokens (target persons) left.
    pub tokens: f64,
    /// When `tokens` was counted, ms.
    pub at_ms: u64,
}

impl Bucket {
    /// A full bucket.
    pub fn full(burst: f64, now_ms: u64) -> Self {
        Bucket {
            tokens: burst,
            at_ms: now_ms,
        }
    }

    /// The bucket refilled at `rate` up to `burst` by `now_ms`, with `cost` taken; or when
    /// to come back.
    pub fn take(self, now_ms: u64, rate: f64, burst: f64, cost: usize) -> Result<Self, OverRate> {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        let tokens = (self.tokens + elapsed * rate).min(burst);
        let cost = cost as f64;
        if tokens >= cost {
            return Ok(Bucket {
                tokens: tokens - cost,
                at_ms: now_ms.max(self.at_ms),
            });
        }
        let wait = ((cost.min(burst) - tokens) / rate).ceil().max(1.0);
        Err(OverRate {
            retry_after_secs: wait as u64,
        })
    }
}

struct Producer {
    name: String,
    /// The key's hash, and the previous key's while it is rotated out.
    hashes: Vec<[u8; 32]>,
    rate: f64,
    burst: f64,
}

/// Producer keys and their token buckets, and the admin keys.
pub struct Producers {
    producers: Vec<Producer>,
    admins: Vec<(String, [u8; 32])>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Who asks for an event's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reader {
    /// A producer: sees the events it sent.
    Producer(String),
    /// An admin key: sees every event.
    Admin(String),
}

fn key_hash(hex_sha256: &str) -> Option<[u8; 32]> {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(hex_sha256.to_ascii_lowercase(), &mut hash).ok()?;
    Some(hash)
}

/// A request over its producer's rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverRate {
    /// Seconds until enough tokens are back.
    pub retry_after_secs: u64,
}

impl Producers {
    /// From validated configuration.
    pub fn new(config: &ProducersConfig) -> Self {
        let producers = config
            .keys
            .iter()
            .filter_map(|k| {
                let previous = k.previous_sha256.as_deref().and_then(key_hash);
                Some(Producer {
                    name: k.name.clone(),
                    hashes: std::iter::once(key_hash(&k.sha256)?)
                        .chain(previous)
                        .collect(),
                    rate: k.rate_per_sec,
                    burst: f64::from(k.burst),
                })
            })
            .collect();
        let admins = config
            .admin_keys
            .iter()
            .filter_map(|k| Some((k.name.clone(), key_hash(&k.sha256)?)))
            .collect();
        Producers {
            producers,
            admins,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Who holds `key`, for reading event status: a producer or an admin key.
    pub fn reader(&self, key: &str) -> Option<Reader> {
        if let Some(producer) = self.authenticate(key) {
            return Some(Reader::Producer(producer.to_owned()));
        }
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for (name, admin) in &self.admins {
            if bool::from(admin.ct_eq(&hash)) {
                found = Some(Reader::Admin(name.clone()));
            }
        }
        found
    }

    /// The producer holding `key`, if any.
    pub fn authenticate(&self, key: &str) -> Option<&str> {
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for p in &self.producers {
            for known in &p.hashes {
                if bool::from(known.ct_eq(&hash)) {
                    found = Some(p.name.as_str());
                }
            }
        }
        found
    }

    /// Takes `cost` tokens from this replica's bucket of `producer` at `now_ms`, or says
    /// when to come back. Used when the shared buckets cannot be reached.
    pub fn take(&self, producer: &str, cost: usize, now_ms: u64) -> Result<(), OverRate> {
        let Some((rate, burst)) = self.rate(producer) else {
            return Err(OverRate {
                retry_after_secs: 1,
            });
        };
        self.take_from(producer, rate, burst, cost, now_ms)
    }

    /// Takes `cost` tokens from this replica's bucket named `bucket` (`rate` per second up
    /// to `burst`) at `now_ms`, or says when to come back.
    pub fn take_from(
        &self,
        bucket: &str,
        rate: f64,
        burst: f64,
        cost: usize,
        now_ms: u64,
    ) -> Result<(), OverRate> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets
            .entry(bucket.to_owned())
            .or_insert(Bucket::full(burst, now_ms));
        *bucket = bucket.take(now_ms, rate, burst, cost)?;
        Ok(())
    }

    /// The rate (per second) and burst of `producer`.
    pub fn rate(&self, producer: &str) -> Option<(f64, f64)> {
        self.producers
            .iter()
            .find(|p| p.name == producer)
            .map(|p| (p.rate, p.burst))
    }

    /// The burst of `producer` (requests costing more can never pass).
    pub fn burst(&self, producer: &str) -> usize {
        self.producers
            .iter()
            .find(|p| p.name == producer)
            .map(|p| p.burst as usize)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ProducersConfig {
        crate::config::tests::one_producer("crm", "k")
    }

    #[test]
    fn the_bucket_refills_at_its_rate() {
        let p = Producers::new(&config());
        let t0 = 1_000_000;
        assert_eq!(p.take("crm", 4, t0), Ok(()));
        assert_eq!(
            p.take("crm", 1, t0),
            Err(OverRate {
                retry_after_secs: 1
            })
        );
        assert_eq!(
            p.take("crm", 3, t0 + 500),
            Err(OverRate {
                retry_after_secs: 1
            })
        );
        assert_eq!(p.take("crm", 2, t0 + 1_000), Ok(()));
    }

    #[test]
    fn keys_name_their_producer() {
        let p = Producers::new(&config());
        assert_eq!(p.authenticate("k"), Some("crm"));
        assert_eq!(p.authenticate("nope"), None);
    }

    #[test]
    fn a_rotated_out_key_still_names_its_producer() {
        let mut config = config();
        config.keys[0].previous_sha256 = Some(hex::encode(Sha256::digest(b"old")));
        let p = Producers::new(&config);
        assert_eq!(p.authenticate("k"), Some("crm"));
        assert_eq!(p.authenticate("old"), Some("crm"));
    }
}
