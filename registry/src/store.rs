//! The device store in Redis, owned by the registry alone.
//!
//! # Key layout
//!
//! With `p` the configured `redis.prefix` (default `pushline:`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `p` `person:{<person>}:devices`   | hash | token → device attributes (JSON) |
//! | `p` `person:{<person>}:refreshed` | zset | token → last registration, ms |
//! | `p` `person:{<person>}:created`   | hash | token → first registration, ms |
//! | `p` `token:{<token>}`             | string | the person owning the token, then (one per line) persons it is being moved away from |
//!
//! The `{…}` hash tags put a person's three keys in one Redis Cluster slot, so every
//! change to a person's devices is one atomic Lua script, and every script touches one
//! slot. The token index lives in the token's own slot.
//!
//! # Changes that span two slots
//!
//! Registering a token that another person holds changes three slots (the index, the
//! old owner, the new owner), and no Redis deployment makes that atomic. The rule is
//! **intent first, one owner at a time**:
//!
//! 1. the index is set to the new owner *followed by every person the token is leaving*;
//! 2. the token is removed from each person it is leaving;
//! 3. the token is added to the new owner (one script, with the eviction and expiry rules);
//! 4. the index is set to the new owner alone.
//!
//! Whatever step a crash, a timeout, a failover or a `MOVED` interrupts, the token is
//! held by at most one person (never rung for the person who gave it up), and the index
//! names everyone who may still hold it. The next registration, deletion or prune of that
//! token reads the index and finishes the move (a registration repeats the steps; a
//! deletion or prune removes the token from everyone the index names), so nothing stays
//! half-applied. A registration the client saw fail is retried by the client anyway.
//! Indexes written before this rule (the owner alone) read the same way.
//!
//! Person ids are stored in canonical form ([`crate::person::canonical`]): a Webex base64
//! id and its bare uuid address the same keys.
//!
//! Expiry: every registration refreshes `refreshed` and the keys' TTL. Registrations
//! older than the TTL are invisible to reads at once and removed by the next write to
//! that person; a person nobody refreshes disappears with the keys' TTL.

use std::time::Duration;

use pipeline::contract::{Environment, Platform};
use redis::{AsyncCommands, Script};

use crate::connection::Connection;
use serde::{Deserialize, Serialize};

/// Which pushes a device registration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// PushKit VoIP (APNs) — receives calls.
    Voip,
    /// Ordinary notifications; on FCM also calls (data messages).
    Alert,
}

/// The attributes stored for one device (everything but token, person and times).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAttrs {
    /// Provider.
    pub platform: Platform,
    /// Channel.
    pub channel: Channel,
    /// APNs bundle id or FCM project id.
    pub app: String,
    /// Provider environment.
    pub environment: Environment,
    /// The app's end-to-end encryption key, when it registered one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e_key: Option<String>,
}

/// A device registration as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The provider token.
    pub token: String,
    /// The owner.
    pub person_id: String,
    /// The stored attributes.
    #[serde(flatten)]
    pub attrs: DeviceAttrs,
    /// First registration, ms.
    pub created_at_ms: u64,
    /// Last registration, ms.
    pub updated_at_ms: u64,
}

/// Why a registration was removed as a side effect of another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Over the per-person cap; it was the least recently refreshed.
    Evicted,
    /// Not refreshed within the TTL.
    Expired,
}

impl Removal {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Removal::Evicted => "evicted",
            Removal::Expired => "expired",
        }
    }
}

/// The result of a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The token was new for this person.
    pub created: bool,
    /// The token belonged to another person and was moved.
    pub moved_from: Option<String>,
    /// Registrations of the same person removed to make room or because they expired.
    pub removed: Vec<(Removal, String)>,
}

/// What a conditional removal did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pruned {
    /// Removed.
    Removed,
    /// Kept: it was registered again after the cut-off.
    KeptNewer,
    /// Not registered.
    NotFound,
}

/// Redis errors, as the store reports them.
pub type StoreError = redis::RedisError;

/// Store policies.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Most devices one person may have; the least recently refreshed is evicted.
    pub max_devices_per_person: usize,
    /// A registration not refreshed within this is gone.
    pub ttl: Duration,
}

/// The Redis device store.
#[derive(Clone)]
pub struct Store {
    redis: Connection,
    prefix: String,
    policy: Policy,
    scripts: std::sync::Arc<Scripts>,
}

struct Scripts {
    register: Script,
    remove: Script,
    live: Script,
    compare_and_delete: Script,
}

/// Adds or refreshes `ARGV[1]` for a person; drops expired registrations; evicts beyond
/// the cap; refreshes key TTLs. Returns `{created, reason1, token1, reason2, token2, …}`.
const REGISTER: &str = r#"
local token, attrs = ARGV[1], ARGV[2]
local now, ttl, max = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local out = {0}
local function drop(t, why)
  redis.call('HDEL', KEYS[1], t)
  redis.call('ZREM', KEYS[2], t)
  redis.call('HDEL', KEYS[3], t)
  table.insert(out, why)
  table.insert(out, t)
end
for _, t in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - ttl))) do
  if t ~= token then drop(t, 'expired') end
end
out[1] = redis.call('HSET', KEYS[1], token, attrs)
redis.call('ZADD', KEYS[2], now, token)
redis.call('HSETNX', KEYS[3], token, now)
local n = redis.call('ZCARD', KEYS[2])
if n > max then
  local excess = n - max
  for _, t in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    if excess == 0 then break end
    if t ~= token then drop(t, 'evicted'); excess = excess - 1 end
  end
end
for _, k in ipairs(KEYS) do redis.call('PEXPIRE', k, ttl) end
return out
"#;

/// Removes `ARGV[1]` unless it was refreshed after `ARGV[2]` (ms; empty = always).
/// Returns 1 removed, 0 kept because newer, -1 not registered.
const REMOVE: &str = r#"
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score then return -1 end
if ARGV[2] ~= '' and tonumber(score) > tonumber(ARGV[2]) then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"#;

/// Live registrations: `{token, attrs, updated_ms, created_ms, …}` refreshed since
/// `ARGV[1]`.
const LIVE: &str = r#"
local live = redis.call('ZRANGEBYSCORE', KEYS[2], ARGV[1], '+inf', 'WITHSCORES')
local out = {}
for i = 1, #live, 2 do
  local t = live[i]
  local attrs = redis.call('HGET', KEYS[1], t)
  if attrs then
    table.insert(out, t)
    table.insert(out, attrs)
    table.insert(out, live[i + 1])
    table.insert(out, redis.call('HGET', KEYS[3], t) or live[i + 1])
  end
end
return out
"#;

/// Deletes the index `KEYS[1]` only while it names `ARGV[1]` as the owner (its first line).
const COMPARE_AND_DELETE: &str = r#"
local v = redis.call('GET', KEYS[1])
if v and (v == ARGV[1] or string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. '\n') then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// What the token index says: the owner, and the persons the token is being moved away
/// from (a move that was interrupted; see the module's rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The person the token belongs to.
    pub owner: String,
    /// Persons that may still hold the token from an interrupted move.
    pub leaving: Vec<String>,
}

impl IndexEntry {
    /// Reads an index value: the owner, then one leaving person per line.
    pub fn parse(value: &str) -> Option<IndexEntry> {
        let mut lines = value.split('\n').filter(|l| !l.is_empty());
        let owner = lines.next()?.to_owned();
        Some(IndexEntry {
            leaving: lines.filter(|l| *l != owner).map(str::to_owned).collect(),
            owner,
        })
    }

    /// The index value.
    pub fn value(&self) -> String {
        let mut value = self.owner.clone();
        for person in &self.leaving {
            value.push('\n');
            value.push_str(person);
        }
        value
    }

    /// Everyone who may hold the token: the owner first.
    pub fn holders(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.owner.as_str()).chain(self.leaving.iter().map(String::as_str))
    }
}

/// The keys of one person, built in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonKeys {
    /// token → attributes.
    pub devices: String,
    /// token → last registration.
    pub refreshed: String,
    /// token → first registration.
    pub created: String,
}

/// Keys of `person` under `prefix`.
pub fn person_keys(prefix: &str, person: &str) -> PersonKeys {
    PersonKeys {
        devices: format!("{prefix}person:{{{person}}}:devices"),
        refreshed: format!("{prefix}person:{{{person}}}:refreshed"),
        created: format!("{prefix}person:{{{person}}}:created"),
    }
}

/// The token-index key of `token` under `prefix`.
pub fn token_key(prefix: &str, token: &str) -> String {
    format!("{prefix}token:{{{token}}}")
}

impl Store {
    /// A store over a (lazily connecting) Redis connection.
    pub fn new(redis: Connection, prefix: String, policy: Policy) -> Self {
        Store {
            redis,
            prefix,
            policy,
            scripts: std::sync::Arc::new(Scripts {
                register: Script::new(REGISTER),
                remove: Script::new(REMOVE),
                live: Script::new(LIVE),
                compare_and_delete: Script::new(COMPARE_AND_DELETE),
            }),
        }
    }

    fn ttl_ms(&self) -> u64 {
        self.policy.ttl.as_millis() as u64
    }

    /// Registers or refreshes `token` for `person`, moving it from any other owner (by
    /// the rule in the module documentation).
    pub async fn register(
        &self,
        token: &str,
        person: &str,
        attrs: &DeviceAttrs,
        now_ms: u64,
    ) -> Result<Registered, StoreError> {
        let person = &*crate::person::canonical(person);
        let index = token_key(&self.prefix, token);
        let leaving: Vec<String> = self
            .index_entry(token)
            .await?
            .map(|entry| {
                entry
                    .holders()
                    .filter(|p| *p != person)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let mut moved_from = None;
        if !leaving.is_empty() {
            let intent = IndexEntry {
                owner: person.to_owned(),
                leaving: leaving.clone(),
            };
            self.set_index(&index, &intent.value()).await?;
            for (n, old) in leaving.iter().enumerate() {
                if self.remove_from(old, token, None).await? == Pruned::Removed && n == 0 {
                    moved_from = Some(old.clone());
                }
            }
        }
        let keys = person_keys(&self.prefix, person);
        let attrs_json = serde_json::to_string(attrs).map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::Client,
                "cannot encode device",
                e.to_string(),
            ))
        })?;
        let mut redis = self.redis.clone();
        let reply: Vec<redis::Value> = self
            .scripts
            .register
            .key(&keys.devices)
            .key(&keys.refreshed)
            .key(&keys.created)
            .arg(token)
            .arg(attrs_json)
            .arg(now_ms)
            .arg(self.ttl_ms())
            .arg(self.policy.max_devices_per_person)
            .invoke_async(&mut redis)
            .await?;
        let created = matches!(reply.first(), Some(redis::Value::Int(1)));
        let mut removed = Vec::new();
        for pair in reply.get(1..).unwrap_or_default().chunks(2) {
            if let [why, removed_token] = pair {
                let why: String = redis::from_redis_value_ref(why)?;
                let removed_token: String = redis::from_redis_value_ref(removed_token)?;
                let why = if why == "evicted" {
                    Removal::Evicted
                } else {
                    Removal::Expired
                };
                removed.push((why, removed_token));
            }
        }
        self.set_index(&index, person).await?;
        for (_, removed_token) in &removed {
            self.unindex(removed_token, person).await?;
        }
        Ok(Registered {
            created,
            moved_from,
            removed,
        })
    }

    async fn set_index(&self, index: &str, value: &str) -> Result<(), StoreError> {
        let mut redis = self.redis.clone();
        redis
            .set_options(
                index,
                value,
                redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(self.ttl_ms())),
            )
            .await
    }

    async fn index_entry(&self, token: &str) -> Result<Option<IndexEntry>, StoreError> {
        let mut redis = self.redis.clone();
        let value: Option<String> = redis.get(token_key(&self.prefix, token)).await?;
        Ok(value.as_deref().and_then(IndexEntry::parse))
    }

    /// Removes `token` from `person` unless refreshed after `not_after_ms`.
    async fn remove_from(
        &self,
        person: &str,
        token: &str,
        not_after_ms: Option<u64>,
    ) -> Result<Pruned, StoreError> {
        let keys = person_keys(&self.prefix, person);
        let mut redis = self.redis.clone();
        let code: i64 = self
            .scripts
            .remove
            .key(&keys.devices)
            .key(&keys.refreshed)
            .key(&keys.created)
            .arg(token)
            .arg(not_after_ms.map(|t| t.to_string()).unwrap_or_default())
            .invoke_async(&mut redis)
            .await?;
        Ok(match code {
            1 => Pruned::Removed,
            0 => Pruned::KeptNewer,
            _ => Pruned::NotFound,
        })
    }

    async fn unindex(&self, token: &str, person: &str) -> Result<(), StoreError> {
        let mut redis = self.redis.clone();
        let _: i64 = self
            .scripts
            .compare_and_delete
            .key(token_key(&self.prefix, token))
            .arg(person)
            .invoke_async(&mut redis)
            .await?;
        Ok(())
    }

    /// The person owning `token`, per the token index.
    pub async fn owner(&self, token: &str) -> Result<Option<String>, StoreError> {
        Ok(self.index_entry(token).await?.map(|entry| entry.owner))
    }

    /// Removes `token` wherever it is registered (finishing an interrupted move). Returns
    /// the former owner.
    pub async fn remove(&self, token: &str) -> Result<Option<String>, StoreError> {
        let Some(entry) = self.index_entry(token).await? else {
            return Ok(None);
        };
        let mut removed = Pruned::NotFound;
        for (n, holder) in entry.holders().enumerate() {
            let result = self.remove_from(holder, token, None).await?;
            if n == 0 {
                removed = result;
            }
        }
        self.unindex(token, &entry.owner).await?;
        Ok((removed == Pruned::Removed).then_some(entry.owner))
    }

    /// Prunes `token` after a provider rejected it at `invalid_since_ms`, unless it was
    /// registered again after that instant.
    pub async fn prune(&self, token: &str, invalid_since_ms: u64) -> Result<Pruned, StoreError> {
        let Some(entry) = self.index_entry(token).await? else {
            return Ok(Pruned::NotFound);
        };
        let mut result = Pruned::NotFound;
        for (n, holder) in entry.holders().enumerate() {
            let pruned = self
                .remove_from(holder, token, Some(invalid_since_ms))
                .await?;
            if n == 0 {
                result = pruned;
            }
        }
        if result != Pruned::KeptNewer {
            self.unindex(token, &entry.owner).await?;
        }
        Ok(result)
    }

    /// The live (not expired) devices of `person`, oldest registration first.
    pub async fn devices(&self, person: &str, now_ms: u64) -> Result<Vec<Device>, StoreError> {
        let person = &*crate::person::canonical(person);
        let keys = person_keys(&self.prefix, person);
        let mut redis = self.redis.clone();
        let since = now_ms.saturating_sub(self.ttl_ms());
        let flat: Vec<String> = self
            .scripts
            .live
            .key(&keys.devices)
            .key(&keys.refreshed)
            .key(&keys.created)
            .arg(since)
            .invoke_async(&mut redis)
            .await?;
        let mut devices = Vec::with_capacity(flat.len() / 4);
        for row in flat.chunks_exact(4) {
            let Ok(attrs) = serde_json::from_str::<DeviceAttrs>(&row[1]) else {
                tracing::warn!(token = %pipeline::telemetry::token_tag(&row[0]), "unreadable device record skipped");
                continue;
            };
            devices.push(Device {
                token: row[0].clone(),
                person_id: person.to_owned(),
                attrs,
                updated_at_ms: row[2].parse().unwrap_or(0),
                created_at_ms: row[3].parse().unwrap_or(0),
            });
        }
        Ok(devices)
    }

    /// Removes every device of `person`; returns how many.
    pub async fn remove_person(&self, person: &str) -> Result<usize, StoreError> {
        let person = &*crate::person::canonical(person);
        let keys = person_keys(&self.prefix, person);
        let mut redis = self.redis.clone();
        let tokens: Vec<String> = redis.hkeys(&keys.devices).await?;
        let _: i64 = redis
            .del(&[&keys.devices, &keys.refreshed, &keys.created])
            .await?;
        for token in &tokens {
            self.unindex(token, person).await?;
        }
        Ok(tokens.len())
    }

    /// Readiness: the store can serve (see [`Connection::check`]).
    pub async fn check(&self) -> Result<(), String> {
        self.redis.check().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_persons_keys_share_one_cluster_slot() {
        let keys = person_keys("pushline:", "Y2lzY29zcGFyazovL3VzL1BFT1BMRS8x");
        for key in [&keys.devices, &keys.refreshed, &keys.created] {
            assert!(key.contains("{Y2lzY29zcGFyazovL3VzL1BFT1BMRS8x}"), "{key}");
            assert!(key.starts_with("pushline:person:"));
        }
        assert_ne!(keys.devices, keys.refreshed);
        assert_eq!(token_key("p:", "abc"), "p:token:{abc}");
    }

    #[test]
    fn an_index_names_the_owner_first_then_the_persons_a_move_is_leaving() {
        let plain = IndexEntry::parse("alice").expect("entry");
        assert_eq!(plain.owner, "alice");
        assert!(
            plain.leaving.is_empty(),
            "indexes written before moves were recorded"
        );
        let moving = IndexEntry {
            owner: "bob".into(),
            leaving: vec!["alice".into(), "carol".into()],
        };
        assert_eq!(IndexEntry::parse(&moving.value()), Some(moving.clone()));
        assert_eq!(
            moving.holders().collect::<Vec<_>>(),
            vec!["bob", "alice", "carol"]
        );
        assert_eq!(IndexEntry::parse(""), None);
        assert_eq!(
            IndexEntry::parse("bob\nbob").expect("entry").leaving,
            Vec::<String>::new(),
            "an owner is never also leaving"
        );
    }
}
