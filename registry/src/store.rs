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
//! | `p` `person:{<person>}:order`     | hash | token → the sequence number of its last registration (field `""`: the person's counter), so registrations in the same millisecond keep their order when the device limit evicts |
//! | `p` `token:{<token>}`             | string | the persons holding the token (tab-separated; several only for multi-user apps), then (one per line) persons it is being moved away from |
//! | `p` `device:{<app>/<device>}:active`  | hash | `person` → the device's active person (canonical), `since` → when they became active, ms |
//! | `p` `device:{<app>/<device>}:persons` | zset | person → their last registration on the device, ms: who may hold it |
//!
//! The `{…}` hash tags put a person's four keys in one Redis Cluster slot, so every
//! change to a person's devices is one atomic Lua script, and every script touches one
//! slot. The token index lives in the token's own slot, a device's two keys in the
//! device's (app ids and device ids have no braces or `/`, [`device_keys`]).
//!
//! # Changes that span two slots
//!
//! Registering a token that another person holds changes three slots (the index, the
//! old owner, the new owner), and no Redis deployment makes that atomic. The rule is
//! **intent first, one owner at a time**:
//!
//! 1. the index is set to the new owner *followed by every person the token is leaving*
//!    (one script on the index: [`Rules::refuse_move`] is decided by the same script, so no
//!    registration can slip in between the check and the intent);
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
//! # Devices
//!
//! A device is one phone (or app install) and may hold several tokens: an iPhone's VoIP
//! and alert tokens share one `device` id in their attributes. Limits count devices, a
//! device's tokens are refreshed together (so they expire together), and deleting any
//! token of a device removes all of them for that person. Records written before devices
//! had ids have no `device` field: each such token is a device of its own.
//!
//! Per-app rules ([`Rules`]) decide what a registration does to the person's other
//! devices (one device per person; refuse or evict beyond the limit) and whether a token
//! held by another person moves (the default), is refused ([`Rules::refuse_move`]: a
//! person registering on an app that is not multi-user) or is shared (multi-user devices:
//! the index then names every holder, and each holder's registration lives and expires
//! on its own).
//!
//! Person ids are stored in canonical form ([`crate::person::parse`]): a Webex base64
//! id and its bare uuid address the same keys. The index separates persons with tabs and
//! newlines and the keys put them between braces, so a person id is checked by the one
//! person-id rule (no control characters, no braces) before any key is built from it: a
//! registration for an id that fails it is an error, a read or delete of one finds nothing.
//!
//! # The device's active person
//!
//! Several persons may hold one device (multi-user apps); one of them is its **active
//! person**: the last to register on it, to connect on it, or to be named by an explicit
//! switch ([`Store::set_active`]). Pushes go to every holder as before; in-app messages
//! only to the active person. The rule, decided by [`choose_active`]:
//!
//! | the device's `active` record | the device's active person |
//! |---|---|
//! | names a person who has held a live registration on the device since the record's `since` | that person |
//! | absent (a device registered before the record existed), or naming a person whose registration was deleted, pruned, replaced, evicted or expired (or deleted and made again since) | the live holder refreshed most recently, active since that registration |
//! | absent, and nobody holds the device | none |
//!
//! So when the active person's last registration on a device goes, by any path, the
//! holder who registered most recently becomes active: the phone still has signed-in
//! users and the app shows one of them, and it is the same rule that keeps devices
//! registered before the record existed working. Nothing has to be written when a
//! registration goes (expiry has no moment to write at, and deletes and prunes stay
//! one-slot operations): the record is a *claim*, checked against the person's keys on
//! every read, as the token index is.
//!
//! The record and the `persons` set live in the device's slot, apart from the persons'
//! slots, and one script writes both, after the person's registration is stored: nobody
//! is made active on a registration that does not exist yet, and a registration
//! interrupted between the two is one without the switch, which the client retries. A
//! registration with [`Rules::keep_active`] adds its person to `persons` and leaves the
//! record alone; it still counts as a refresh when no record decides. `persons` names candidates (trimmed to the TTL on every write; reads weigh the
//! [`MAX_CANDIDATES`] most recent and check each against its person's keys); reads from a
//! person's side ([`Store::active_devices`]) also ask the token index, so a device nobody
//! registered since the record existed still resolves by the rule.
//!
//! Expiry: every registration refreshes `refreshed` and the keys' TTL. Registrations
//! older than the TTL are invisible to reads at once and removed by the next write to
//! that person; a person nobody refreshes disappears with the keys' TTL.

use std::collections::HashMap;
use std::time::Duration;

pub use pipeline::contract::Channel;
use pipeline::contract::Environment;
use redis::{AsyncCommands, Script};

use crate::connection::Connection;
use serde::{Deserialize, Serialize};

/// The attributes stored for one device (everything but token, person and times).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAttrs {
    /// Provider name.
    pub platform: String,
    /// Channel.
    pub channel: Channel,
    /// APNs bundle id, FCM project id, Web Push VAPID key set.
    pub app: String,
    /// Provider environment.
    pub environment: Environment,
    /// The device the token belongs to; absent in records written before devices had
    /// ids (the token is then a device of its own, see [`Device::device_id`]).
    #[serde(default, rename = "device", skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The device's end-to-end key, sealed (records of earlier versions may carry a
    /// plain `e2e_key` field, which is ignored and dropped by the next registration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e: Option<SealedKey>,
    /// What else the provider needs to reach the device (a Web Push subscription's keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<serde_json::Value>,
}

/// A device's end-to-end key as stored: sealed by [`crate::keyring::Keyring`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedKey {
    /// Content encryption, `A256GCM`.
    pub alg: String,
    /// The key id sent in every JWE header.
    pub kid: String,
    /// The sealed key.
    pub sealed: String,
}

/// The device id of a token registered without one: the token is its own device.
pub fn token_device_id(token: &str) -> String {
    format!("t-{}", pipeline::telemetry::token_tag(token))
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

impl Device {
    /// The device this token belongs to.
    pub fn device_id(&self) -> String {
        self.attrs
            .device_id
            .clone()
            .unwrap_or_else(|| token_device_id(&self.token))
    }
}

/// A device's active person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Active {
    /// The person (canonical).
    pub person_id: String,
    /// When they became active, ms: the registration, connection or switch that made them
    /// so, or, when no record decides, their last registration on the device.
    pub since_ms: u64,
}

/// One person's live registration on one device, as [`choose_active`] weighs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registrant {
    /// The person (canonical).
    pub person_id: String,
    /// Their first registration of the device's live tokens, ms.
    pub created_ms: u64,
    /// Their last registration on the device, ms.
    pub refreshed_ms: u64,
}

/// The device's active person, by the rule in the module documentation: the `record`'s
/// person while they hold the device without a break since it was written, else the live
/// holder refreshed most recently (ties: the smallest person id, so every reader agrees).
pub fn choose_active(record: Option<&Active>, registrants: &[Registrant]) -> Option<Active> {
    if let Some(record) = record
        && registrants.iter().any(|r| record_holds(record, r))
    {
        return Some(record.clone());
    }
    registrants
        .iter()
        .max_by(|a, b| {
            a.refreshed_ms
                .cmp(&b.refreshed_ms)
                .then_with(|| b.person_id.cmp(&a.person_id))
        })
        .map(|r| Active {
            person_id: r.person_id.clone(),
            since_ms: r.refreshed_ms,
        })
}

/// Whether `record` decides for `registrant`: it names them, and their live registration
/// began no later than the record (one deleted and made again since does not revive it).
fn record_holds(record: &Active, registrant: &Registrant) -> bool {
    registrant.person_id == record.person_id && registrant.created_ms <= record.since_ms
}

/// Why [`Store::set_active`] did not make a person active.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The person holds no live registration with that app and device id (or the ids
    /// are not ones the registry stores).
    #[error("the person holds no live registration on this device")]
    NotRegistered,
    /// Redis failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Most holders of one device a read weighs: the most recently registered.
pub const MAX_CANDIDATES: usize = 32;

/// Why a registration was removed as a side effect of another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Over the per-person cap; its device was the least recently refreshed.
    Evicted,
    /// Not refreshed within the TTL.
    Expired,
    /// Another device of the same app replaced it (one device per person).
    Replaced,
}

impl Removal {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Removal::Evicted => "evicted",
            Removal::Expired => "expired",
            Removal::Replaced => "replaced",
        }
    }
}

/// What an app's policy (and the request) asks of one registration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules {
    /// The token may be held by several persons at once.
    pub multi_user: bool,
    /// The person's other devices of the same app are removed.
    pub single_device: bool,
    /// At the device limit a new device is refused instead of evicting the oldest.
    pub refuse_over_limit: bool,
    /// A token another person owns is refused ([`Registered::held`]) instead of moved.
    /// Ignored with `multi_user` (the token is shared, nobody loses it).
    pub refuse_move: bool,
    /// The registration leaves the device's active person as it is (a refresh in the
    /// background); otherwise the registering person becomes active on the device.
    pub keep_active: bool,
}

/// The result of a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The token was new for this person.
    pub created: bool,
    /// Refused: the person is at the device limit and the app refuses new devices. Nothing
    /// was registered (registrations that had expired were still removed).
    pub refused: bool,
    /// Refused: another person owns the token and [`Rules::refuse_move`] was set.
    /// Nothing was changed.
    pub held: bool,
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

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis failed; its error keeps its kind (I/O, timeout, server error, …).
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A record could not be written as JSON.
    #[error("cannot encode the device: {0}")]
    Encode(#[source] serde_json::Error),
    /// A person id that is none: the caller validates ids before storing.
    #[error("not a person id: {0}")]
    NotAPerson(String),
}

impl From<redis::ParsingError> for StoreError {
    fn from(error: redis::ParsingError) -> Self {
        StoreError::Redis(error.into())
    }
}

impl StoreError {
    /// Bounded label for metrics and logs.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            StoreError::Redis(error) if error.is_timeout() => "timeout",
            StoreError::Redis(error)
                if error.is_connection_dropped()
                    || error.is_connection_refusal()
                    || error.is_io_error() =>
            {
                "connection"
            }
            StoreError::Redis(error) => match error.kind() {
                redis::ErrorKind::Server(_) => "server",
                redis::ErrorKind::AuthenticationFailed => "auth",
                redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType => "protocol",
                _ => "other",
            },
            StoreError::Encode(_) => "encode",
            StoreError::NotAPerson(_) => "not_a_person",
        }
    }
}

/// Store policies.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Most devices one person may have (a device's tokens count once).
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
    remove_device: Script,
    live: Script,
    index_drop: Script,
    index_join: Script,
    index_claim: Script,
    device_record: Script,
    device_read: Script,
}

/// Adds or refreshes the token `ARGV[1]` (attributes `ARGV[2]`, device `ARGV[6]`, app
/// `ARGV[7]`) for a person: drops expired registrations; with `ARGV[8]` = 1 removes the
/// person's other devices of the app; refreshes the device's other tokens with it; beyond
/// `ARGV[5]` devices evicts the least recently refreshed devices (registrations in the
/// same millisecond in the order they were made, by `KEYS[4]`), or with `ARGV[9]` = 1
/// refuses (first element -1) before changing anything else. Refreshes key TTLs.
/// Returns `{created, reason1, token1, reason2, token2, …}`.
const REGISTER: &str = r#"
local token, attrs = ARGV[1], ARGV[2]
local now, ttl, max = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local device, app = ARGV[6], ARGV[7]
local single, refuse = ARGV[8] == '1', ARGV[9] == '1'
local out = {0}
local function drop(t, why)
  redis.call('HDEL', KEYS[1], t)
  redis.call('ZREM', KEYS[2], t)
  redis.call('HDEL', KEYS[3], t)
  redis.call('HDEL', KEYS[4], t)
  table.insert(out, why)
  table.insert(out, t)
end
for _, t in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - ttl))) do
  if t ~= token then drop(t, 'expired') end
end
local devices, order, replaced = {}, {}, {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local t = all[i]
  if t ~= token then
    local d, a_app = '\0' .. t, nil
    local ok, a = pcall(cjson.decode, all[i + 1])
    if ok and type(a) == 'table' then
      if type(a.device) == 'string' then d = a.device end
      a_app = a.app
    end
    if single and a_app == app and d ~= device then
      table.insert(replaced, t)
    else
      local score = tonumber(redis.call('ZSCORE', KEYS[2], t) or '0')
      local seq = tonumber(redis.call('HGET', KEYS[4], t) or '0')
      local g = devices[d]
      if not g then
        g = {score = score, seq = seq, tokens = {}}
        devices[d] = g
        table.insert(order, d)
      end
      if score > g.score then g.score = score end
      if seq > g.seq then g.seq = seq end
      table.insert(g.tokens, t)
    end
  end
end
local is_new = devices[device] == nil
if is_new and #order >= max and refuse then
  out[1] = -1
  return out
end
for _, t in ipairs(replaced) do drop(t, 'replaced') end
out[1] = redis.call('HSET', KEYS[1], token, attrs)
redis.call('ZADD', KEYS[2], now, token)
redis.call('HSETNX', KEYS[3], token, now)
local seq = redis.call('HINCRBY', KEYS[4], '', 1)
redis.call('HSET', KEYS[4], token, seq)
if not is_new then
  for _, t in ipairs(devices[device].tokens) do
    redis.call('ZADD', KEYS[2], now, t)
    redis.call('HSET', KEYS[4], t, seq)
  end
end
local count = #order
if is_new then count = count + 1 end
if count > max then
  -- Least recently refreshed first; in the same millisecond, registered first.
  table.sort(order, function(x, y)
    local a, b = devices[x], devices[y]
    if a.score ~= b.score then return a.score < b.score end
    return a.seq < b.seq
  end)
  for _, d in ipairs(order) do
    if count <= max then break end
    if d ~= device then
      for _, t in ipairs(devices[d].tokens) do drop(t, 'evicted') end
      count = count - 1
    end
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
redis.call('HDEL', KEYS[4], ARGV[1])
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

/// Removes the token `ARGV[1]` and every other token of its device from a person.
/// Returns the removed tokens.
const REMOVE_DEVICE: &str = r#"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return {} end
local function device_of(t, r)
  local ok, a = pcall(cjson.decode, r)
  if ok and type(a) == 'table' and type(a.device) == 'string' then return a.device end
  return '\0' .. t
end
local d = device_of(ARGV[1], raw)
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local t = all[i]
  if t == ARGV[1] or device_of(t, all[i + 1]) == d then
    redis.call('HDEL', KEYS[1], t)
    redis.call('ZREM', KEYS[2], t)
    redis.call('HDEL', KEYS[3], t)
    redis.call('HDEL', KEYS[4], t)
    table.insert(out, t)
  end
end
return out
"#;

/// Takes the person `ARGV[1]` off the token index `KEYS[1]` (its first line lists the
/// holders, tab-separated); deletes the index when nobody is left. Returns 1 when the
/// person was named.
const INDEX_DROP: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local first, rest = v, ''
local nl = string.find(v, '\n', 1, true)
if nl then first, rest = string.sub(v, 1, nl - 1), string.sub(v, nl) end
local holders, found = {}, false
for h in string.gmatch(first, '[^\t]+') do
  if h == ARGV[1] then found = true else table.insert(holders, h) end
end
if not found then return 0 end
if #holders == 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], table.concat(holders, '\t') .. rest, 'KEEPTTL')
end
return 1
"#;

/// Adds the person `ARGV[1]` to the holders of the token index `KEYS[1]` (a multi-user
/// device) and sets its TTL to `ARGV[2]` ms.
const INDEX_JOIN: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
local first, rest = v, ''
local nl = string.find(v, '\n', 1, true)
if nl then first, rest = string.sub(v, 1, nl - 1), string.sub(v, nl) end
for h in string.gmatch(first, '[^\t]+') do
  if h == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 0
  end
end
redis.call('SET', KEYS[1], first .. '\t' .. ARGV[1] .. rest, 'PX', ARGV[2])
return 1
"#;

/// Claims the token index `KEYS[1]` for the person `ARGV[1]` on an app that is not
/// multi-user: with `ARGV[3]` = 1 and another person among the owners, returns nil and
/// changes nothing; else returns everyone else the index names (owners, then persons an
/// interrupted move was leaving) and, when there is anyone, sets the index to the intent
/// `ARGV[1]` followed by them, one per line, with a TTL of `ARGV[2]` ms. The parsing is
/// [`IndexEntry::parse`]'s.
const INDEX_CLAIM: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return {} end
local lines = {}
for l in string.gmatch(v, '[^\n]+') do table.insert(lines, l) end
if #lines == 0 then return {} end
local leaving, seen = {}, {[ARGV[1]] = true}
local owners = 0
for h in string.gmatch(lines[1], '[^\t]+') do
  owners = owners + 1
  if not seen[h] then
    if ARGV[3] == '1' then return false end
    seen[h] = true
    table.insert(leaving, h)
  end
end
if owners == 0 then return {} end
for i = 2, #lines do
  if not seen[lines[i]] then
    seen[lines[i]] = true
    table.insert(leaving, lines[i])
  end
end
if #leaving > 0 then
  redis.call('SET', KEYS[1], ARGV[1] .. '\n' .. table.concat(leaving, '\n'), 'PX', ARGV[2])
end
return leaving
"#;

/// Records `ARGV[1]` as a holder of the device (`KEYS[2]`, score `ARGV[2]` ms, members
/// older than `ARGV[3]` ms dropped) and with `ARGV[5]` = 1 as its active person
/// (`KEYS[1]`, since `ARGV[4]`); both keys' TTL becomes `ARGV[3]` ms.
const DEVICE_RECORD: &str = r#"
local person, at, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], at, person)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (at - ttl))
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[1], 'person', person, 'since', ARGV[4])
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
"#;

/// The device's record: `{person or false, since or false, holder1, holder2, …}`, the
/// `ARGV[1]` most recently registered holders first.
const DEVICE_READ: &str = r#"
local record = redis.call('HMGET', KEYS[1], 'person', 'since')
local out = {record[1], record[2]}
for _, p in ipairs(redis.call('ZREVRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1)) do
  table.insert(out, p)
end
return out
"#;

/// What the token index says: who holds the token, and the persons it is being moved
/// away from (a move that was interrupted; see the module's rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The persons the token belongs to: one, or several on a multi-user device.
    pub owners: Vec<String>,
    /// Persons that may still hold the token from an interrupted move.
    pub leaving: Vec<String>,
}

impl IndexEntry {
    /// Reads an index value: the owners (tab-separated), then one leaving person per line.
    pub fn parse(value: &str) -> Option<IndexEntry> {
        let mut lines = value.split('\n').filter(|l| !l.is_empty());
        let owners: Vec<String> = lines
            .next()?
            .split('\t')
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect();
        if owners.is_empty() {
            return None;
        }
        Some(IndexEntry {
            leaving: lines
                .filter(|l| !owners.iter().any(|o| o == l))
                .map(str::to_owned)
                .collect(),
            owners,
        })
    }

    /// The index value.
    pub fn value(&self) -> String {
        let mut value = self.owners.join("\t");
        for person in &self.leaving {
            value.push('\n');
            value.push_str(person);
        }
        value
    }

    /// Everyone who may hold the token: the owners first.
    pub fn holders(&self) -> impl Iterator<Item = &str> {
        self.owners
            .iter()
            .chain(self.leaving.iter())
            .map(String::as_str)
    }

    /// Whether `person` (canonical) is one of the owners.
    pub fn is_owner(&self, person: &str) -> bool {
        self.owners.iter().any(|o| o == person)
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
    /// token → sequence number of its last registration (the tie-break of `refreshed`).
    pub order: String,
}

/// Keys of `person` under `prefix`.
pub fn person_keys(prefix: &str, person: &str) -> PersonKeys {
    PersonKeys {
        devices: format!("{prefix}person:{{{person}}}:devices"),
        refreshed: format!("{prefix}person:{{{person}}}:refreshed"),
        created: format!("{prefix}person:{{{person}}}:created"),
        order: format!("{prefix}person:{{{person}}}:order"),
    }
}

/// The keys of one device, built in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKeys {
    /// The active person and since when.
    pub active: String,
    /// Who may hold the device, by last registration.
    pub persons: String,
}

/// Keys of the device `device_id` of `app` under `prefix`, or none when either id breaks
/// its rule ([`crate::validate::app`], [`crate::validate::device_id`]: no braces, no
/// `/`), so no id can reach another device's keys or slot.
pub fn device_keys(prefix: &str, app: &str, device_id: &str) -> Option<DeviceKeys> {
    crate::validate::app("app", app).ok()?;
    crate::validate::device_id("device_id", device_id).ok()?;
    Some(DeviceKeys {
        active: format!("{prefix}device:{{{app}/{device_id}}}:active"),
        persons: format!("{prefix}device:{{{app}/{device_id}}}:persons"),
    })
}

/// `person`'s live registration on the device `device_id` of `app`, from their live
/// `devices`: first and last registration of its tokens.
fn registrant_of(
    person: &str,
    devices: &[Device],
    app: &str,
    device_id: &str,
) -> Option<Registrant> {
    devices
        .iter()
        .filter(|d| d.attrs.app == app && d.device_id() == device_id)
        .fold(None, |found: Option<Registrant>, d| {
            Some(match found {
                None => Registrant {
                    person_id: person.to_owned(),
                    created_ms: d.created_at_ms,
                    refreshed_ms: d.updated_at_ms,
                },
                Some(r) => Registrant {
                    created_ms: r.created_ms.min(d.created_at_ms),
                    refreshed_ms: r.refreshed_ms.max(d.updated_at_ms),
                    ..r
                },
            })
        })
}

/// The token-index key of `token` under `prefix`.
pub fn token_key(prefix: &str, token: &str) -> String {
    format!("{prefix}token:{{{token}}}")
}

/// The id `person` is stored under, or none when it is not a person id (nobody is stored
/// under it, so reads find nothing and deletes remove nothing).
fn stored_id(person: &str) -> Option<String> {
    crate::person::parse("person_id", person).ok()
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
                remove_device: Script::new(REMOVE_DEVICE),
                live: Script::new(LIVE),
                index_drop: Script::new(INDEX_DROP),
                index_join: Script::new(INDEX_JOIN),
                index_claim: Script::new(INDEX_CLAIM),
                device_record: Script::new(DEVICE_RECORD),
                device_read: Script::new(DEVICE_READ),
            }),
        }
    }

    fn ttl_ms(&self) -> u64 {
        self.policy.ttl.as_millis() as u64
    }

    /// Registers or refreshes `token` for `person` as part of the device named in
    /// `attrs` (or its own device), by the app's `rules`: a token another person holds is
    /// moved (by the rule in the module documentation), refused, or, on a multi-user
    /// device, shared. A `person` that is not a valid person id is an error, before any
    /// key is built from it.
    pub async fn register(
        &self,
        token: &str,
        person: &str,
        attrs: &DeviceAttrs,
        now_ms: u64,
        rules: Rules,
    ) -> Result<Registered, StoreError> {
        let person = &*crate::person::parse("person_id", person).map_err(StoreError::NotAPerson)?;
        let index = token_key(&self.prefix, token);
        let mut moved_from = None;
        if rules.multi_user {
            let mut redis = self.redis.clone();
            let _: i64 = self
                .scripts
                .index_join
                .key(&index)
                .arg(person)
                .arg(self.ttl_ms())
                .invoke_async(&mut redis)
                .await?;
        } else {
            let mut redis = self.redis.clone();
            let claimed: Option<Vec<String>> = self
                .scripts
                .index_claim
                .key(&index)
                .arg(person)
                .arg(self.ttl_ms())
                .arg(u8::from(rules.refuse_move))
                .invoke_async(&mut redis)
                .await?;
            let Some(leaving) = claimed else {
                return Ok(Registered {
                    created: false,
                    refused: false,
                    held: true,
                    moved_from: None,
                    removed: Vec::new(),
                });
            };
            if !leaving.is_empty() {
                for (n, old) in leaving.iter().enumerate() {
                    if self.remove_from(old, token, None).await? == Pruned::Removed && n == 0 {
                        moved_from = Some(old.clone());
                    }
                }
            }
        }
        let keys = person_keys(&self.prefix, person);
        let device = attrs
            .device_id
            .clone()
            .unwrap_or_else(|| token_device_id(token));
        let attrs_json = serde_json::to_string(attrs).map_err(StoreError::Encode)?;
        let mut redis = self.redis.clone();
        let reply: Vec<redis::Value> = self
            .scripts
            .register
            .key(&keys.devices)
            .key(&keys.refreshed)
            .key(&keys.created)
            .key(&keys.order)
            .arg(token)
            .arg(attrs_json)
            .arg(now_ms)
            .arg(self.ttl_ms())
            .arg(self.policy.max_devices_per_person)
            .arg(&device)
            .arg(&attrs.app)
            .arg(u8::from(rules.single_device))
            .arg(u8::from(rules.refuse_over_limit))
            .invoke_async(&mut redis)
            .await?;
        let first = match reply.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        };
        let mut removed = Vec::new();
        for pair in reply.get(1..).unwrap_or_default().chunks(2) {
            if let [why, removed_token] = pair {
                let why: String = redis::from_redis_value_ref(why)?;
                let removed_token: String = redis::from_redis_value_ref(removed_token)?;
                let why = match why.as_str() {
                    "evicted" => Removal::Evicted,
                    "replaced" => Removal::Replaced,
                    _ => Removal::Expired,
                };
                removed.push((why, removed_token));
            }
        }
        let refused = first < 0;
        if refused {
            self.index_drop(token, person).await?;
        } else if !rules.multi_user {
            self.set_index(&index, person).await?;
        }
        for (_, removed_token) in &removed {
            self.index_drop(removed_token, person).await?;
        }
        if !refused {
            let since = (!rules.keep_active).then_some(now_ms);
            self.record_device(&attrs.app, &device, person, now_ms, since)
                .await?;
        }
        Ok(Registered {
            created: first == 1,
            refused,
            held: false,
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
            .map_err(StoreError::from)
    }

    /// Who holds `token`, per the token index.
    pub async fn index_entry(&self, token: &str) -> Result<Option<IndexEntry>, StoreError> {
        let mut redis = self.redis.clone();
        let value: Option<String> = redis.get(token_key(&self.prefix, token)).await?;
        Ok(value.as_deref().and_then(IndexEntry::parse))
    }

    /// The persons holding `token` (empty when nobody does).
    pub async fn owners(&self, token: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .index_entry(token)
            .await?
            .map(|entry| entry.owners)
            .unwrap_or_default())
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
            .key(&keys.order)
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

    async fn index_drop(&self, token: &str, person: &str) -> Result<(), StoreError> {
        let mut redis = self.redis.clone();
        let _: i64 = self
            .scripts
            .index_drop
            .key(token_key(&self.prefix, token))
            .arg(person)
            .invoke_async(&mut redis)
            .await?;
        Ok(())
    }

    /// Removes the device holding `token` (all its tokens) from `person` and takes the
    /// person off the removed tokens' indexes. Returns the removed tokens.
    async fn remove_device_of(&self, person: &str, token: &str) -> Result<Vec<String>, StoreError> {
        let keys = person_keys(&self.prefix, person);
        let mut redis = self.redis.clone();
        let removed: Vec<String> = self
            .scripts
            .remove_device
            .key(&keys.devices)
            .key(&keys.refreshed)
            .key(&keys.created)
            .key(&keys.order)
            .arg(token)
            .invoke_async(&mut redis)
            .await?;
        for removed_token in &removed {
            self.index_drop(removed_token, person).await?;
        }
        if !removed.iter().any(|t| t == token) {
            // Not held (an interrupted move named this person): the index still lets go.
            self.index_drop(token, person).await?;
        }
        Ok(removed)
    }

    /// Removes the device holding `token` from everyone holding it (finishing an
    /// interrupted move): every token of that device goes. Returns how many registrations
    /// were removed (0: the token was not registered).
    pub async fn remove(&self, token: &str) -> Result<usize, StoreError> {
        let Some(entry) = self.index_entry(token).await? else {
            return Ok(0);
        };
        let mut removed = 0;
        for holder in entry.holders() {
            removed += self.remove_device_of(holder, token).await?.len();
        }
        Ok(removed)
    }

    /// Removes the device holding `token` from `person` only (a person logging out of a
    /// shared device). Returns how many registrations were removed.
    pub async fn remove_for(&self, token: &str, person: &str) -> Result<usize, StoreError> {
        let Some(person) = stored_id(person) else {
            return Ok(0);
        };
        Ok(self.remove_device_of(&person, token).await?.len())
    }

    /// Prunes `token` after a provider rejected it at `invalid_since_ms`, from everyone
    /// holding it, unless they registered it again after that instant. Returns the
    /// outcome and the persons it was removed from.
    pub async fn prune(
        &self,
        token: &str,
        invalid_since_ms: u64,
    ) -> Result<(Pruned, Vec<String>), StoreError> {
        let Some(entry) = self.index_entry(token).await? else {
            return Ok((Pruned::NotFound, Vec::new()));
        };
        let mut result = Pruned::NotFound;
        let mut removed_from = Vec::new();
        for holder in entry.holders() {
            match self
                .remove_from(holder, token, Some(invalid_since_ms))
                .await?
            {
                Pruned::KeptNewer => {
                    if result == Pruned::NotFound {
                        result = Pruned::KeptNewer;
                    }
                }
                pruned => {
                    if pruned == Pruned::Removed {
                        result = Pruned::Removed;
                        removed_from.push(holder.to_owned());
                    }
                    self.index_drop(token, holder).await?;
                }
            }
        }
        Ok((result, removed_from))
    }

    /// The live (not expired) devices of `person`, oldest registration first.
    pub async fn devices(&self, person: &str, now_ms: u64) -> Result<Vec<Device>, StoreError> {
        let Some(person) = stored_id(person) else {
            return Ok(Vec::new());
        };
        let person = &*person;
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

    /// Records `person` (canonical) as a holder of the device, registered at `at_ms`, and
    /// with `since` as its active person since then ([`DEVICE_RECORD`]). Ids that cannot
    /// have keys are not recorded: no record decides for them.
    async fn record_device(
        &self,
        app: &str,
        device_id: &str,
        person: &str,
        at_ms: u64,
        since: Option<u64>,
    ) -> Result<(), StoreError> {
        let Some(keys) = device_keys(&self.prefix, app, device_id) else {
            return Ok(());
        };
        let mut redis = self.redis.clone();
        let _: i64 = self
            .scripts
            .device_record
            .key(&keys.active)
            .key(&keys.persons)
            .arg(person)
            .arg(at_ms)
            .arg(self.ttl_ms())
            .arg(since.unwrap_or(0))
            .arg(u8::from(since.is_some()))
            .invoke_async(&mut redis)
            .await?;
        Ok(())
    }

    /// Makes `person` the active person of the device `device_id` of `app` (a switch of
    /// user, or the app connecting for them), from `now_ms` on. Only a person holding a
    /// live registration with that app and device id may become active; anyone else is
    /// [`ActivateError::NotRegistered`] and nothing changes.
    pub async fn set_active(
        &self,
        app: &str,
        device_id: &str,
        person: &str,
        now_ms: u64,
    ) -> Result<Active, ActivateError> {
        let Some(person) = stored_id(person) else {
            return Err(ActivateError::NotRegistered);
        };
        if device_keys(&self.prefix, app, device_id).is_none() {
            return Err(ActivateError::NotRegistered);
        }
        let devices = self.devices(&person, now_ms).await?;
        let holder =
            registrant_of(&person, &devices, app, device_id).ok_or(ActivateError::NotRegistered)?;
        // Never before the registration it rests on (clocks of two replicas may differ).
        let since = now_ms.max(holder.created_ms);
        self.record_device(app, device_id, &person, holder.refreshed_ms, Some(since))
            .await?;
        Ok(Active {
            person_id: person,
            since_ms: since,
        })
    }

    /// The active person of the device `device_id` of `app`, by the rule in the module
    /// documentation; none when nobody holds it. A device nobody has registered since the
    /// record existed has no holders on record: [`Store::active_devices`], which starts
    /// from a person, finds them.
    pub async fn active(
        &self,
        app: &str,
        device_id: &str,
        now_ms: u64,
    ) -> Result<Option<Active>, StoreError> {
        let Some(keys) = device_keys(&self.prefix, app, device_id) else {
            return Ok(None);
        };
        self.resolve(&keys, app, device_id, &[], &mut HashMap::new(), now_ms)
            .await
    }

    /// The devices, among `person`'s live `devices` (as [`Store::devices`] read them), on
    /// which `person` is the active person, by `(app, device id)`, with since when.
    pub async fn active_devices(
        &self,
        person: &str,
        devices: &[Device],
        now_ms: u64,
    ) -> Result<HashMap<(String, String), u64>, StoreError> {
        let mut mine = HashMap::new();
        let Some(person) = stored_id(person) else {
            return Ok(mine);
        };
        let mut groups: Vec<((String, String), Vec<&str>)> = Vec::new();
        for device in devices {
            let id = (device.attrs.app.clone(), device.device_id());
            match groups.iter_mut().find(|(g, _)| *g == id) {
                Some((_, tokens)) => tokens.push(&device.token),
                None => groups.push((id, vec![&device.token])),
            }
        }
        let mut cache = HashMap::from([(person.clone(), devices.to_vec())]);
        for ((app, device_id), tokens) in groups {
            // Ids no key can be built from have no record (registered before ids were
            // checked): nobody is recorded active on them.
            let Some(keys) = device_keys(&self.prefix, &app, &device_id) else {
                continue;
            };
            let active = self
                .resolve(&keys, &app, &device_id, &tokens, &mut cache, now_ms)
                .await?;
            if let Some(active) = active.filter(|a| a.person_id == person) {
                mine.insert((app, device_id), active.since_ms);
            }
        }
        Ok(mine)
    }

    /// Reads the device's record and weighs its holders ([`choose_active`]): the recorded
    /// person first; only when the record does not decide, every candidate — the
    /// recorded holders and the persons the token index names for `tokens`. `cache`
    /// keeps each person's live devices across calls.
    async fn resolve(
        &self,
        keys: &DeviceKeys,
        app: &str,
        device_id: &str,
        tokens: &[&str],
        cache: &mut HashMap<String, Vec<Device>>,
        now_ms: u64,
    ) -> Result<Option<Active>, StoreError> {
        let mut redis = self.redis.clone();
        let flat: Vec<Option<String>> = self
            .scripts
            .device_read
            .key(&keys.active)
            .key(&keys.persons)
            .arg(MAX_CANDIDATES)
            .invoke_async(&mut redis)
            .await?;
        let record = match (flat.first(), flat.get(1)) {
            (Some(Some(person)), Some(Some(since))) => since.parse().ok().map(|since_ms| Active {
                person_id: person.clone(),
                since_ms,
            }),
            _ => None,
        };
        let mut registrants = Vec::new();
        if let Some(record) = &record {
            if let Some(holder) = self
                .registrant(&record.person_id, app, device_id, cache, now_ms)
                .await?
            {
                if record_holds(record, &holder) {
                    return Ok(Some(record.clone()));
                }
                registrants.push(holder);
            }
        }
        let mut candidates: Vec<String> = flat.into_iter().skip(2).flatten().collect();
        for token in tokens {
            if let Some(entry) = self.index_entry(token).await? {
                candidates.extend(entry.owners);
            }
        }
        for candidate in candidates {
            if registrants.iter().any(|r| r.person_id == candidate) {
                continue;
            }
            if let Some(holder) = self
                .registrant(&candidate, app, device_id, cache, now_ms)
                .await?
            {
                registrants.push(holder);
            }
        }
        Ok(choose_active(record.as_ref(), &registrants))
    }

    /// `person`'s live registration on the device, read once per `cache`.
    async fn registrant(
        &self,
        person: &str,
        app: &str,
        device_id: &str,
        cache: &mut HashMap<String, Vec<Device>>,
        now_ms: u64,
    ) -> Result<Option<Registrant>, StoreError> {
        if !cache.contains_key(person) {
            let devices = self.devices(person, now_ms).await?;
            cache.insert(person.to_owned(), devices);
        }
        Ok(cache
            .get(person)
            .and_then(|devices| registrant_of(person, devices, app, device_id)))
    }

    /// Removes every device of `person`; returns how many tokens.
    pub async fn remove_person(&self, person: &str) -> Result<usize, StoreError> {
        let Some(person) = stored_id(person) else {
            return Ok(0);
        };
        let person = &*person;
        let keys = person_keys(&self.prefix, person);
        let mut redis = self.redis.clone();
        let tokens: Vec<String> = redis.hkeys(&keys.devices).await?;
        let _: i64 = redis
            .del(&[&keys.devices, &keys.refreshed, &keys.created, &keys.order])
            .await?;
        for token in &tokens {
            self.index_drop(token, person).await?;
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
    fn store_errors_keep_their_kind_for_metrics() {
        let io = StoreError::from(redis::RedisError::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(io.metric_reason(), "connection");
        let encode = serde_json::from_str::<u8>("x").expect_err("not json");
        assert_eq!(StoreError::Encode(encode).metric_reason(), "encode");
        let parse = StoreError::from(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "reply",
        )));
        assert_eq!(parse.metric_reason(), "protocol");
    }

    #[test]
    fn a_persons_keys_share_one_cluster_slot() {
        let keys = person_keys("pushline:", "Y2lzY29zcGFyazovL3VzL1BFT1BMRS8x");
        for key in [&keys.devices, &keys.refreshed, &keys.created, &keys.order] {
            assert!(key.contains("{Y2lzY29zcGFyazovL3VzL1BFT1BMRS8x}"), "{key}");
            assert!(key.starts_with("pushline:person:"));
        }
        assert_ne!(keys.devices, keys.refreshed);
        assert_eq!(token_key("p:", "abc"), "p:token:{abc}");
    }

    fn holder(person: &str, created_ms: u64, refreshed_ms: u64) -> Registrant {
        Registrant {
            person_id: person.into(),
            created_ms,
            refreshed_ms,
        }
    }

    fn active(person: &str, since_ms: u64) -> Active {
        Active {
            person_id: person.into(),
            since_ms,
        }
    }

    #[test]
    fn the_recorded_person_stays_active_while_they_hold_the_device() {
        let record = active("ann", 50);
        // Ben registered later without switching: Ann is still the one.
        let holders = [holder("ann", 10, 60), holder("ben", 20, 90)];
        assert_eq!(choose_active(Some(&record), &holders), Some(record));
    }

    #[test]
    fn without_a_record_the_most_recently_refreshed_holder_is_active() {
        let holders = [holder("ann", 10, 60), holder("ben", 20, 90)];
        assert_eq!(choose_active(None, &holders), Some(active("ben", 90)));
        assert_eq!(choose_active(None, &[]), None, "nobody holds the device");
        // Equal times: every reader picks the same person.
        let tied = [holder("zoe", 1, 5), holder("amy", 1, 5)];
        assert_eq!(choose_active(None, &tied), Some(active("amy", 5)));
    }

    #[test]
    fn a_record_naming_someone_who_left_the_device_yields_to_the_latest_holder() {
        let record = active("ann", 50);
        // Ann's registration was deleted, pruned or expired: she is not a holder.
        assert_eq!(
            choose_active(Some(&record), &[holder("ben", 20, 40)]),
            Some(active("ben", 40))
        );
        // Deleted and registered again (without switching) after the record: the
        // record no longer speaks for her; the latest holder is active.
        assert_eq!(
            choose_active(
                Some(&record),
                &[holder("ann", 70, 70), holder("ben", 20, 80)]
            ),
            Some(active("ben", 80))
        );
        assert_eq!(choose_active(Some(&record), &[]), None);
    }

    #[test]
    fn a_devices_keys_share_one_slot_and_no_id_can_leave_it() {
        let keys = device_keys("p:", "com.example.app", "5F2C-iPhone:1").expect("keys");
        assert_eq!(
            keys.active,
            "p:device:{com.example.app/5F2C-iPhone:1}:active"
        );
        assert_eq!(
            keys.persons,
            "p:device:{com.example.app/5F2C-iPhone:1}:persons"
        );
        assert!(device_keys("p:", "com.example.app", &token_device_id("ab")).is_some());
        assert_eq!(device_keys("p:", "a}b", "d"), None);
        assert_eq!(device_keys("p:", "a/b", "d"), None, "app ids have no slash");
        assert_eq!(device_keys("p:", "app", "d{x}"), None);
        assert_eq!(device_keys("p:", "app", ""), None);
    }

    #[test]
    fn a_holders_registration_spans_all_the_devices_tokens() {
        let device = |token: &str, device: &str, app: &str, created, updated| Device {
            token: token.into(),
            person_id: "ann".into(),
            attrs: DeviceAttrs {
                platform: "apns".into(),
                channel: Channel::Voip,
                app: app.into(),
                environment: Environment::Production,
                device_id: Some(device.into()),
                e2e: None,
                keys: None,
            },
            created_at_ms: created,
            updated_at_ms: updated,
        };
        let devices = [
            device("t1", "phone", "app", 10, 30),
            device("t2", "phone", "app", 20, 40),
            device("t3", "phone", "other", 1, 99),
            device("t4", "tablet", "app", 1, 99),
        ];
        assert_eq!(
            registrant_of("ann", &devices, "app", "phone"),
            Some(holder("ann", 10, 40))
        );
        assert_eq!(registrant_of("ann", &devices, "app", "watch"), None);
    }

    #[test]
    fn an_index_names_the_owner_first_then_the_persons_a_move_is_leaving() {
        let plain = IndexEntry::parse("alice").expect("entry");
        assert_eq!(plain.owners, vec!["alice"]);
        assert!(
            plain.leaving.is_empty(),
            "indexes written before moves were recorded"
        );
        let moving = IndexEntry {
            owners: vec!["bob".into()],
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
        let shared = IndexEntry::parse("alice\tbob\ncarol").expect("shared");
        assert_eq!(shared.owners, vec!["alice", "bob"]);
        assert_eq!(shared.leaving, vec!["carol"]);
        assert!(shared.is_owner("bob") && !shared.is_owner("carol"));
        assert_eq!(IndexEntry::parse(&shared.value()), Some(shared));
    }
}
