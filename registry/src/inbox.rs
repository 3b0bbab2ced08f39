//! The server-side inbox: the messages a person's app keeps (`inbox = true` in the app's
//! policy), with their read state, shared by every device of the person
//! (`docs/inapp.md`, "The inbox"). The fan-out keeps each event once per person and app;
//! the device API and the gateway read and change it; every change is announced on the
//! person's inbox subject (core NATS) so the person's other connections follow at once.
//!
//! # Keys
//!
//! With `p` the configured `redis.prefix`, `<person>` = `id_token(canonical person id)`
//! and `<app>` = `id_token(app)`:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `p` `inbox:{<person>}:<app>:order` | sorted set | message id → when it was kept (ms), strictly increasing within the inbox |
//! | `p` `inbox:{<person>}:<app>:unread` | sorted set | the unread ones, same scores |
//! | `p` `inbox:{<person>}:<app>:msgs` | hash | message id → the message (JSON, without id, time and read state) |
//! | `p` `inbox:{<person>}:<app>:meta` | hash | the app's retention when the last message was kept |
//! | `p` `inbox:{<person>}:apps` | set | the `<app>`s the person has an inbox of |
//!
//! Every key of a person shares their hash tag, so each operation is one script on one
//! node of a cluster and a person's data is removed together. Scores are the time a
//! message was kept, bumped by a millisecond where needed so that no two messages of one
//! inbox share one: a cursor (the last score of a page) is then exact, and a message
//! kept while someone pages lands before the first page, never in the middle of the
//! pages still to come. Retention is applied by every script: messages older than the
//! app's `inbox_max_age_secs` go, and beyond `inbox_max_messages` the oldest go; the keys
//! themselves expire that long after the last message was kept.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pipeline::contract::{Class, Event};
use pipeline::topology::{Topology, id_token};
use redis::Script;
use serde::{Deserialize, Serialize};

use crate::connection::Connection;

/// Most messages in one page.
pub const MAX_PAGE: u64 = 100;
/// A page's size when the caller names none.
pub const DEFAULT_PAGE: u64 = 20;
/// Most ids in one change.
pub const MAX_IDS: usize = 100;
/// Longest message id (an event id).
pub const MAX_ID_LEN: usize = 128;

/// Ages out what the app's retention no longer keeps. `KEYS`: order, unread, msgs, meta.
const TRIM: &str = r"
local function forget(ids)
  for _, id in ipairs(ids) do
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
  end
end
local function trim(now)
  local max_age = tonumber(redis.call('HGET', KEYS[4], 'max_age_ms') or '0')
  if max_age > 0 then
    forget(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - max_age), 'LIMIT', 0, 1000))
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - max_age))
  end
  local max = tonumber(redis.call('HGET', KEYS[4], 'max_messages') or '0')
  if max > 0 then
    local over = redis.call('ZCARD', KEYS[1]) - max
    if over > 0 then
      forget(redis.call('ZRANGE', KEYS[1], 0, over - 1))
    end
  end
end
";

/// Keeps a message once. `KEYS`: order, unread, msgs, meta, apps. `ARGV`: id, message,
/// now, max age (ms), max messages, the app's key. Answers {1 when new, unread, size}.
const KEEP: &str = r"
redis.call('HSET', KEYS[4], 'max_age_ms', ARGV[4], 'max_messages', ARGV[5])
local now = tonumber(ARGV[3])
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  return {0, redis.call('ZCARD', KEYS[2]), redis.call('ZCARD', KEYS[1])}
end
local score = now
local last = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #last == 2 and tonumber(last[2]) >= score then
  score = tonumber(last[2]) + 1
end
redis.call('ZADD', KEYS[1], score, ARGV[1])
redis.call('ZADD', KEYS[2], score, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
trim(now)
local ttl = tonumber(ARGV[4])
for i = 1, 4 do
  redis.call('PEXPIRE', KEYS[i], ttl)
end
redis.call('SADD', KEYS[5], ARGV[6])
if redis.call('PTTL', KEYS[5]) < ttl then
  redis.call('PEXPIRE', KEYS[5], ttl)
end
return {1, redis.call('ZCARD', KEYS[2]), redis.call('ZCARD', KEYS[1])}
";

/// A page, newest first. `KEYS`: order, unread, msgs, meta. `ARGV`: now, the exclusive
/// upper bound (`+inf` or `(<score>`), the page size, `1` for unread only. Answers
/// {unread, more (0/1), then id, score, message, read (0/1) per message}.
const LIST: &str = r"
trim(tonumber(ARGV[1]))
local source = KEYS[1]
if ARGV[4] == '1' then source = KEYS[2] end
local limit = tonumber(ARGV[3])
local found = redis.call('ZREVRANGEBYSCORE', source, ARGV[2], '-inf', 'WITHSCORES', 'LIMIT', 0, limit + 1)
local n = #found / 2
local more = 0
if n > limit then
  more = 1
  n = limit
end
local out = {redis.call('ZCARD', KEYS[2]), more}
for i = 1, n do
  local id = found[2 * i - 1]
  out[#out + 1] = id
  out[#out + 1] = found[2 * i]
  out[#out + 1] = redis.call('HGET', KEYS[3], id) or '{}'
  if redis.call('ZSCORE', KEYS[2], id) then
    out[#out + 1] = 0
  else
    out[#out + 1] = 1
  end
end
return out
";

/// The unread count. `KEYS`: order, unread, msgs, meta. `ARGV`: now.
const COUNT: &str = r"
trim(tonumber(ARGV[1]))
return redis.call('ZCARD', KEYS[2])
";

/// Marks read or unread, or deletes. `KEYS`: order, unread, msgs, meta. `ARGV`: now, op
/// (`read`, `unread`, `delete`), mode (`ids`, `up_to`, `all`), then the ids (or the one
/// id). Answers {changed, unread}, or {-1, id} for an id the inbox does not hold
/// (nothing changed).
const CHANGE: &str = r"
trim(tonumber(ARGV[1]))
local op, mode = ARGV[2], ARGV[3]
local targets = {}
if mode == 'all' then
  targets = redis.call('ZRANGE', KEYS[1], 0, -1)
elseif mode == 'up_to' then
  local score = redis.call('ZSCORE', KEYS[1], ARGV[4])
  if not score then return {-1, ARGV[4]} end
  targets = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', score)
else
  for i = 4, #ARGV do
    if not redis.call('ZSCORE', KEYS[1], ARGV[i]) then return {-1, ARGV[i]} end
    targets[#targets + 1] = ARGV[i]
  end
end
local changed = 0
for _, id in ipairs(targets) do
  if op == 'read' then
    changed = changed + redis.call('ZREM', KEYS[2], id)
  elseif op == 'unread' then
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score then
      changed = changed + redis.call('ZADD', KEYS[2], 'NX', score, id)
      -- A set made again here lives no longer than the inbox it belongs to.
      local ttl = redis.call('PTTL', KEYS[1])
      if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
    end
  else
    changed = changed + redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
  end
end
return {changed, redis.call('ZCARD', KEYS[2])}
";

/// How long and how much one app's inbox keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Messages older than this go, ms.
    pub max_age_ms: u64,
    /// Beyond this many messages the oldest go.
    pub max_messages: u64,
}

/// What a change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// A new message was kept (announced by the fan-out only).
    Added,
    /// Marked read.
    Read,
    /// Marked unread.
    Unread,
    /// Deleted.
    Deleted,
}

impl Op {
    /// The label in metrics and the script's verb.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Added => "added",
            Op::Read => "read",
            Op::Unread => "unread",
            Op::Deleted => "deleted",
        }
    }
}

/// Which messages a change is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    /// These (each must be in the inbox, or nothing changes).
    Ids(Vec<String>),
    /// That message and every older one.
    UpTo(String),
    /// All of them.
    All,
}

/// A change as callers send it: exactly one of `ids`, `up_to`, `all`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    /// These messages.
    #[serde(default)]
    pub ids: Option<Vec<String>>,
    /// That message and every older one.
    #[serde(default)]
    pub up_to: Option<String>,
    /// All of them (`true`).
    #[serde(default)]
    pub all: Option<bool>,
}

impl Selection {
    /// The selection, or why it is not one.
    pub fn parse(self) -> Result<Select, String> {
        match (self.ids, self.up_to, self.all) {
            (Some(ids), None, None) => {
                if ids.is_empty() || ids.len() > MAX_IDS {
                    return Err(format!("`ids` must hold 1 to {MAX_IDS} message ids"));
                }
                for (i, id) in ids.iter().enumerate() {
                    check_id(&format!("ids[{i}]"), id)?;
                }
                Ok(Select::Ids(ids))
            }
            (None, Some(id), None) => {
                check_id("up_to", &id)?;
                Ok(Select::UpTo(id))
            }
            (None, None, Some(true)) => Ok(Select::All),
            (None, None, Some(false)) => Err("`all` must be true when given".into()),
            _ => Err("give exactly one of `ids`, `up_to`, `all`".into()),
        }
    }
}

/// A message id (an event id): 1 to [`MAX_ID_LEN`] characters of `A-Z a-z 0-9 . _ : = + / -`.
pub fn check_id(field: &str, id: &str) -> Result<(), String> {
    let ok = (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:=+/-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{field}` must be a message id: 1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 . _ : = + / -"
        ))
    }
}

/// Where a page starts: after the message whose score the cursor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(u64);

impl Cursor {
    /// The opaque form callers carry.
    pub fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(format!("i1.{}", self.0))
    }

    /// A cursor this inbox gave, or why it is not one.
    pub fn decode(text: &str) -> Result<Cursor, String> {
        let bad = || "`cursor` is not a cursor this inbox gave".to_owned();
        if text.len() > 64 {
            return Err(bad());
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
        let text = std::str::from_utf8(&bytes).map_err(|_| bad())?;
        let score = text.strip_prefix("i1.").ok_or_else(bad)?;
        if score.is_empty() || !score.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        score.parse().map(Cursor).map_err(|_| bad())
    }
}

/// Which page to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageQuery {
    /// How many messages, 1 to [`MAX_PAGE`].
    pub limit: u64,
    /// After which message; the newest first when `None`.
    pub cursor: Option<Cursor>,
    /// Only the unread ones.
    pub unread_only: bool,
}

impl PageQuery {
    /// The query callers sent, or why it is not one.
    pub fn parse(
        limit: Option<u64>,
        cursor: Option<&str>,
        unread_only: bool,
    ) -> Result<Self, String> {
        let limit = limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(format!("`limit` must be 1 to {MAX_PAGE}"));
        }
        let cursor = cursor
            .filter(|c| !c.is_empty())
            .map(Cursor::decode)
            .transpose()?;
        Ok(PageQuery {
            limit,
            cursor,
            unread_only,
        })
    }
}

/// A page of the inbox, as the API and the live connection answer it.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    /// The messages, newest first.
    pub messages: Vec<Box<serde_json::value::RawValue>>,
    /// The next page's cursor; `None` on the last page.
    pub next_cursor: Option<String>,
    /// The unread count of the whole inbox.
    pub unread: u64,
}

/// What keeping a message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    /// It was not in the inbox before.
    pub new: bool,
    /// The unread count after it.
    pub unread: u64,
    /// How many messages the inbox holds.
    pub size: u64,
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Changed {
    /// How many messages changed.
    pub changed: u64,
    /// The unread count after it.
    pub unread: u64,
}

/// Why an inbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    /// An id the inbox does not hold; nothing changed.
    #[error("no message `{0}` in this inbox")]
    UnknownMessage(String),
    /// Redis failed or did not answer.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// The inbox keys of one deployment.
#[derive(Clone)]
pub struct Inbox {
    redis: Connection,
    prefix: String,
    keep: Script,
    list: Script,
    count: Script,
    change: Script,
}

impl Inbox {
    /// The inboxes under `prefix` on `redis`.
    pub fn new(redis: Connection, prefix: &str) -> Self {
        let script = |body: &str| Script::new(&format!("{TRIM}\n{body}"));
        Inbox {
            redis,
            prefix: prefix.to_owned(),
            keep: script(KEEP),
            list: script(LIST),
            count: script(COUNT),
            change: script(CHANGE),
        }
    }

    fn person_key(&self, person: &str) -> String {
        format!("{}inbox:{{{}}}", self.prefix, id_token(person))
    }

    /// The four keys of `person`'s inbox of `app`: order, unread, msgs, meta.
    fn keys(&self, person: &str, app: &str) -> [String; 4] {
        let base = format!("{}:{}", self.person_key(person), id_token(app));
        ["order", "unread", "msgs", "meta"].map(|what| format!("{base}:{what}"))
    }

    /// Keeps message `id` (`message`: the JSON object [`message_of`] made) in `person`'s
    /// inbox of `app`, once: keeping it again changes nothing.
    pub async fn keep(
        &self,
        person: &str,
        app: &str,
        id: &str,
        message: &str,
        now_ms: u64,
        retention: Retention,
    ) -> Result<Kept, redis::RedisError> {
        let mut redis = self.redis.clone();
        let mut invocation = self.keep.prepare_invoke();
        for key in self.keys(person, app) {
            invocation.key(key);
        }
        let (new, unread, size): (u8, u64, u64) = invocation
            .key(format!("{}:apps", self.person_key(person)))
            .arg(id)
            .arg(message)
            .arg(now_ms)
            .arg(retention.max_age_ms.max(1))
            .arg(retention.max_messages.max(1))
            .arg(id_token(app))
            .invoke_async(&mut redis)
            .await?;
        Ok(Kept {
            new: new == 1,
            unread,
            size,
        })
    }

    /// A page of `person`'s inbox of `app`.
    pub async fn list(
        &self,
        person: &str,
        app: &str,
        query: &PageQuery,
        now_ms: u64,
    ) -> Result<Page, redis::RedisError> {
        let mut redis = self.redis.clone();
        let mut invocation = self.list.prepare_invoke();
        for key in self.keys(person, app) {
            invocation.key(key);
        }
        let below = match query.cursor {
            Some(Cursor(score)) => format!("({score}"),
            None => "+inf".into(),
        };
        let flat: Vec<redis::Value> = invocation
            .arg(now_ms)
            .arg(below)
            .arg(query.limit)
            .arg(u8::from(query.unread_only))
            .invoke_async(&mut redis)
            .await?;
        page_of(&flat)
    }

    /// The unread count of `person`'s inbox of `app`.
    pub async fn unread(
        &self,
        person: &str,
        app: &str,
        now_ms: u64,
    ) -> Result<u64, redis::RedisError> {
        let mut redis = self.redis.clone();
        let mut invocation = self.count.prepare_invoke();
        for key in self.keys(person, app) {
            invocation.key(key);
        }
        invocation.arg(now_ms).invoke_async(&mut redis).await
    }

    /// Marks `select` read or unread, or deletes it ([`Op::Added`] is the fan-out's).
    pub async fn change(
        &self,
        person: &str,
        app: &str,
        op: Op,
        select: &Select,
        now_ms: u64,
    ) -> Result<Changed, InboxError> {
        let verb = match op {
            Op::Read => "read",
            Op::Unread => "unread",
            Op::Deleted => "delete",
            Op::Added => unreachable!("messages are added by keep"),
        };
        let mut redis = self.redis.clone();
        let mut invocation = self.change.prepare_invoke();
        for key in self.keys(person, app) {
            invocation.key(key);
        }
        invocation.arg(now_ms).arg(verb);
        match select {
            Select::Ids(ids) => {
                invocation.arg("ids");
                for id in ids {
                    invocation.arg(id);
                }
            }
            Select::UpTo(id) => {
                invocation.arg("up_to").arg(id);
            }
            Select::All => {
                invocation.arg("all");
            }
        }
        let (changed, unread): (i64, redis::Value) = invocation.invoke_async(&mut redis).await?;
        if changed < 0 {
            let id: String =
                redis::from_redis_value_ref(&unread).map_err(redis::RedisError::from)?;
            return Err(InboxError::UnknownMessage(id));
        }
        Ok(Changed {
            changed: changed as u64,
            unread: redis::from_redis_value_ref(&unread).map_err(redis::RedisError::from)?,
        })
    }

    /// Removes every inbox of `person`; answers how many apps' inboxes there were.
    pub async fn remove_person(&self, person: &str) -> Result<u64, redis::RedisError> {
        let mut redis = self.redis.clone();
        let apps_key = format!("{}:apps", self.person_key(person));
        let apps: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&apps_key)
            .query_async(&mut redis)
            .await?;
        let base = self.person_key(person);
        let mut keys = vec![apps_key];
        for app in &apps {
            for what in ["order", "unread", "msgs", "meta"] {
                keys.push(format!("{base}:{app}:{what}"));
            }
        }
        // One slot (the person's hash tag): one DEL, in a cluster too.
        redis::cmd("DEL")
            .arg(&keys)
            .query_async::<()>(&mut redis)
            .await?;
        Ok(apps.len() as u64)
    }
}

/// Reads the list script's answer.
fn page_of(flat: &[redis::Value]) -> Result<Page, redis::RedisError> {
    let int = |v: &redis::Value| redis::from_redis_value_ref::<u64>(v);
    let text = |v: &redis::Value| redis::from_redis_value_ref::<String>(v);
    let (unread, more) = match flat {
        [unread, more, ..] => (int(unread)?, int(more)? == 1),
        _ => return Ok(empty_page()),
    };
    let mut messages = Vec::new();
    let mut last = None;
    for chunk in flat[2..].chunks_exact(4) {
        let id = text(&chunk[0])?;
        let score = score_of(&text(&chunk[1])?);
        let body = text(&chunk[2])?;
        let read = int(&chunk[3])? == 1;
        last = Some(score);
        if let Some(message) = served(&id, score, read, &body) {
            messages.push(message);
        }
    }
    Ok(Page {
        messages,
        next_cursor: more.then_some(last).flatten().map(|s| Cursor(s).encode()),
        unread,
    })
}

fn empty_page() -> Page {
    Page {
        messages: Vec::new(),
        next_cursor: None,
        unread: 0,
    }
}

/// A score as Redis writes it (an integer, possibly in a float's notation).
fn score_of(text: &str) -> u64 {
    text.parse::<u64>()
        .or_else(|_| text.parse::<f64>().map(|f| f as u64))
        .unwrap_or(0)
}

/// A kept message as served: its id, time and read state, then what was kept, byte for
/// byte.
fn served(
    id: &str,
    at_ms: u64,
    read: bool,
    kept: &str,
) -> Option<Box<serde_json::value::RawValue>> {
    let inner = kept.trim().strip_prefix('{')?.strip_suffix('}')?.trim();
    let id = serde_json::to_string(id).ok()?;
    let sep = if inner.is_empty() { "" } else { "," };
    serde_json::value::RawValue::from_string(format!(
        r#"{{"id":{id},"at_ms":{at_ms},"read":{read}{sep}{inner}}}"#
    ))
    .ok()
}

/// What `event` keeps in an inbox of an app whose devices got it through `providers`:
/// its in-app part (payload, category, actions) when it has one, otherwise the parts of
/// those providers, as sent. `None` for calls (a ring is not a message) and for events
/// asking for end-to-end encryption (only devices may read them).
pub fn message_of(event: &Event, providers: &[&str]) -> Option<String> {
    if event.class == Class::Call || event.encrypt {
        return None;
    }
    let class = serde_json::to_string(&event.class).ok()?;
    if let Some(inapp) = event.parts.get(inapp::spec::NAME) {
        let inner = inapp
            .get()
            .trim()
            .strip_prefix('{')?
            .strip_suffix('}')?
            .trim();
        let sep = if inner.is_empty() { "" } else { "," };
        return Some(format!(r#"{{"class":{class}{sep}{inner}}}"#));
    }
    let mut parts = Vec::new();
    for provider in providers {
        if let Some(part) = event.parts.get(*provider)
            && !parts.iter().any(|(name, _)| name == provider)
        {
            parts.push((*provider, part.get()));
        }
    }
    if parts.is_empty() {
        return None;
    }
    let push: Vec<String> = parts
        .iter()
        .map(|(name, part)| format!("{}:{part}", serde_json::to_string(name).unwrap_or_default()))
        .collect();
    Some(format!(
        r#"{{"class":{class},"push":{{{}}}}}"#,
        push.join(",")
    ))
}

/// A change to one inbox, as announced on the person's inbox subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The app whose inbox changed.
    pub app: String,
    /// What happened.
    pub op: Op,
    /// Which messages, when named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    /// That message and every older one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_to: Option<String>,
    /// All of them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// The unread count after it.
    pub unread: u64,
}

impl Change {
    /// The change `op` made to `select` of `app`'s inbox, leaving `unread` unread.
    pub fn of(app: &str, op: Op, select: &Select, unread: u64) -> Self {
        let (ids, up_to, all) = match select {
            Select::Ids(ids) => (Some(ids.clone()), None, false),
            Select::UpTo(id) => (None, Some(id.clone()), false),
            Select::All => (None, None, true),
        };
        Change {
            app: app.to_owned(),
            op,
            ids,
            up_to,
            all,
            unread,
        }
    }

    /// The live connection's frame for it (`inbox.changed`, without the app: a
    /// connection is of one app).
    pub fn frame(&self) -> serde_json::Value {
        let mut frame = serde_json::json!({
            "type": "inbox.changed", "op": self.op, "unread": self.unread,
        });
        if let Some(ids) = &self.ids {
            frame["ids"] = serde_json::json!(ids);
        }
        if let Some(up_to) = &self.up_to {
            frame["up_to"] = serde_json::json!(up_to);
        }
        if self.all {
            frame["all"] = serde_json::json!(true);
        }
        frame
    }
}

/// Announces inbox changes to the gateways holding the person's connections
/// (`inbox.<person>`, core NATS). A notice lost in a NATS outage leaves a connection's
/// view stale until it lists again; nothing stored is lost.
#[derive(Clone)]
pub struct InboxNotices {
    client: async_nats::Client,
    topology: Topology,
}

impl InboxNotices {
    /// Notices on `client` under `topology`'s prefix.
    pub fn new(client: async_nats::Client, topology: Topology) -> Self {
        InboxNotices { client, topology }
    }

    /// Announces `change` to `person`'s connections.
    pub async fn announce(&self, person: &str, change: &Change) {
        let Ok(body) = serde_json::to_vec(change) else {
            return;
        };
        let subject = self.topology.inbox_subject(person);
        if let Err(error) = self.client.publish(subject, body.into()).await {
            tracing::warn!(%error, "cannot announce an inbox change to the gateways");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::contract::{Parts, VERSION};
    use serde_json::value::RawValue;

    fn event(class: Class, parts: &[(&str, &str)]) -> Event {
        let parts: Parts = parts
            .iter()
            .map(|(name, part)| {
                (
                    (*name).to_owned(),
                    RawValue::from_string((*part).into()).expect("raw"),
                )
            })
            .collect();
        Event {
            v: VERSION,
            id: "e1".into(),
            source: "api".into(),
            resource: "crm".into(),
            event: "notify".into(),
            person_id: "p".into(),
            class,
            received_at_ms: 1,
            deadline_ms: 2,
            parts,
            trace_id: None,
            encrypt: false,
        }
    }

    #[test]
    fn an_in_app_part_is_kept_as_sent_and_pushes_by_their_parts() {
        let inapp = r#"{"payload":{"title":"Hi","n":1.50},"category":"prompt"}"#;
        let e = event(
            Class::Alert,
            &[("inapp", inapp), ("fcm", r#"{"data":{"a":"1"}}"#)],
        );
        let kept = message_of(&e, &["fcm", "inapp"]).expect("kept");
        assert_eq!(
            kept,
            r#"{"class":"alert","payload":{"title":"Hi","n":1.50},"category":"prompt"}"#
        );
        let served = served("e1", 7, false, &kept).expect("served");
        let value: serde_json::Value = serde_json::from_str(served.get()).expect("json");
        assert_eq!(value["id"], "e1");
        assert_eq!(value["at_ms"], 7);
        assert_eq!(value["read"], false);
        assert!(served.get().contains(r#""n":1.50"#), "byte for byte");

        let push = event(
            Class::Alert,
            &[
                ("fcm", r#"{"data":{"a":"1"}}"#),
                ("apns", r#"{"payload":{}}"#),
            ],
        );
        assert_eq!(
            message_of(&push, &["fcm", "fcm"]).as_deref(),
            Some(r#"{"class":"alert","push":{"fcm":{"data":{"a":"1"}}}}"#)
        );
        assert_eq!(
            message_of(&push, &["webpush"]),
            None,
            "no part of its providers"
        );
    }

    #[test]
    fn calls_and_encrypted_events_are_never_kept() {
        let call = event(Class::Call, &[("apns", r#"{"payload":{}}"#)]);
        assert_eq!(message_of(&call, &["apns"]), None);
        let mut secret = event(Class::Alert, &[("inapp", r#"{"payload":{}}"#)]);
        secret.encrypt = true;
        assert_eq!(message_of(&secret, &["inapp"]), None);
    }

    #[test]
    fn cursors_round_trip_and_anything_else_is_refused() {
        let cursor = Cursor(1_767_225_600_123);
        assert_eq!(Cursor::decode(&cursor.encode()), Ok(cursor));
        for bad in ["", "x", "aTEu", "aTEuMTJh", &"A".repeat(100), "i1.5"] {
            assert!(Cursor::decode(bad).is_err(), "{bad:?}");
        }
        assert!(PageQuery::parse(Some(0), None, false).is_err());
        assert!(PageQuery::parse(Some(MAX_PAGE + 1), None, false).is_err());
        assert!(PageQuery::parse(None, Some("nope"), false).is_err());
        let q = PageQuery::parse(None, Some(""), true).expect("first page");
        assert_eq!(q.limit, DEFAULT_PAGE);
        assert_eq!(q.cursor, None);
    }

    #[test]
    fn a_selection_is_exactly_one_of_ids_up_to_all() {
        let s = |ids: Option<Vec<&str>>, up_to: Option<&str>, all: Option<bool>| {
            Selection {
                ids: ids.map(|ids| ids.into_iter().map(String::from).collect()),
                up_to: up_to.map(String::from),
                all,
            }
            .parse()
        };
        assert_eq!(
            s(Some(vec!["a"]), None, None),
            Ok(Select::Ids(vec!["a".into()]))
        );
        assert_eq!(s(None, Some("a"), None), Ok(Select::UpTo("a".into())));
        assert_eq!(s(None, None, Some(true)), Ok(Select::All));
        assert!(s(None, None, None).is_err());
        assert!(s(Some(vec!["a"]), Some("b"), None).is_err());
        assert!(s(Some(vec![]), None, None).is_err());
        assert!(s(None, None, Some(false)).is_err());
        assert!(s(Some(vec!["a b"]), None, None).is_err());
        assert!(s(Some(vec!["x"; MAX_IDS + 1]), None, None).is_err());
    }

    #[test]
    fn a_change_names_what_it_changed() {
        let c = Change::of("app", Op::Read, &Select::UpTo("e9".into()), 2);
        let frame = c.frame();
        assert_eq!(frame["type"], "inbox.changed");
        assert_eq!(frame["op"], "read");
        assert_eq!(frame["up_to"], "e9");
        assert_eq!(frame["unread"], 2);
        assert!(frame.get("ids").is_none() && frame.get("all").is_none());
        let json = serde_json::to_string(&c).expect("json");
        assert_eq!(serde_json::from_str::<Change>(&json).expect("back"), c);
    }
}
