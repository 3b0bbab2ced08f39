//! What the registry and the gateway share of in-app devices in Redis: where each person
//! is on each device (the cursor of acknowledged messages) and whether a live connection
//! holds it (presence). The gateway writes both; the fan-out reads presence to decide
//! whether a device's pushes wait for its in-app acknowledgement, and the fall-back
//! worker reads the cursor to know whether they must go (`docs/inapp.md`).
//!
//! # Keys
//!
//! With `p` the configured `redis.prefix`, `<token>` the device's in-app token and
//! `<person>` `id_token(person id)`:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `p` `inapp:{<token>}:cursor` | hash | `<person>` → the highest `INAPP` sequence acknowledged |
//! | `p` `inapp:{<token>}:present` | hash | `<person>/<connection>` → until when (ms) the connection vouches for itself |
//!
//! Both keys of a device share its hash tag. A cursor only moves forward (one script), so
//! two connections acknowledging at once cannot move it back. Presence is renewed by
//! every heartbeat of the connection and removed when it closes; a replica that dies
//! leaves entries that lapse on their own by their time.

use pipeline::topology::{Topology, id_token};
use redis::Script;

use crate::connection::Connection;

/// Moves a cursor forward only: `HSET` unless the stored value is already as high.
const FORWARD: &str = r"
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > current then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return current
";

/// The in-app keys of one deployment.
#[derive(Clone)]
pub struct InAppState {
    redis: Connection,
    prefix: String,
    forward: Script,
}

impl InAppState {
    /// The keys under `prefix` on `redis`.
    pub fn new(redis: Connection, prefix: &str) -> Self {
        InAppState {
            redis,
            prefix: prefix.to_owned(),
            forward: Script::new(FORWARD),
        }
    }

    fn key(&self, token: &str, what: &str) -> String {
        format!("{}inapp:{{{token}}}:{what}", self.prefix)
    }

    /// The highest sequence `person` acknowledged on the device of `token` (0: none).
    pub async fn cursor(&self, token: &str, person: &str) -> Result<u64, redis::RedisError> {
        let mut redis = self.redis.clone();
        let seq: Option<u64> = redis::cmd("HGET")
            .arg(self.key(token, "cursor"))
            .arg(id_token(person))
            .query_async(&mut redis)
            .await?;
        Ok(seq.unwrap_or(0))
    }

    /// Moves `person`'s cursor on the device of `token` to `seq` unless it is already as
    /// far; the key lives `ttl_ms` after the last move.
    pub async fn acknowledge(
        &self,
        token: &str,
        person: &str,
        seq: u64,
        ttl_ms: u64,
    ) -> Result<(), redis::RedisError> {
        let mut redis = self.redis.clone();
        self.forward
            .key(self.key(token, "cursor"))
            .arg(id_token(person))
            .arg(seq)
            .arg(ttl_ms.max(1))
            .invoke_async::<u64>(&mut redis)
            .await?;
        Ok(())
    }

    /// Marks `person` connected on the device of `token` through `connection` until
    /// `until_ms`.
    pub async fn set_present(
        &self,
        token: &str,
        person: &str,
        connection: &str,
        until_ms: u64,
    ) -> Result<(), redis::RedisError> {
        let mut redis = self.redis.clone();
        let key = self.key(token, "present");
        redis::pipe()
            .cmd("HSET")
            .arg(&key)
            .arg(presence_field(person, connection))
            .arg(until_ms)
            .ignore()
            .cmd("PEXPIREAT")
            .arg(&key)
            .arg(until_ms)
            .arg("GT")
            .ignore()
            .cmd("PEXPIREAT")
            .arg(&key)
            .arg(until_ms)
            .arg("NX")
            .ignore()
            .query_async::<()>(&mut redis)
            .await
    }

    /// Forgets `connection` of `person` on the device of `token`.
    pub async fn clear_present(
        &self,
        token: &str,
        person: &str,
        connection: &str,
    ) -> Result<(), redis::RedisError> {
        let mut redis = self.redis.clone();
        redis::cmd("HDEL")
            .arg(self.key(token, "present"))
            .arg(presence_field(person, connection))
            .query_async::<()>(&mut redis)
            .await
    }

    /// Whether a live connection of `person` holds the device of `token` at `now_ms`.
    pub async fn is_present(
        &self,
        token: &str,
        person: &str,
        now_ms: u64,
    ) -> Result<bool, redis::RedisError> {
        let mut redis = self.redis.clone();
        let entries: Vec<(String, u64)> = redis::cmd("HGETALL")
            .arg(self.key(token, "present"))
            .query_async(&mut redis)
            .await?;
        Ok(present_in(&entries, person, now_ms))
    }
}

/// Tells the gateways who became a device's active user (`active.<device>`, core NATS):
/// a replica holding another person's connection on that device closes it (`replaced`).
/// Only persons holding the device's in-app token (a shared installation of a
/// multi-user app) can replace each other: a device id alone proves nothing.
/// A notice lost in a NATS outage leaves that connection open until it reconnects; the
/// fan-out already treats the other person as inactive.
#[derive(Clone)]
pub struct ActiveNotices {
    client: async_nats::Client,
    topology: Topology,
}

impl ActiveNotices {
    /// Notices on `client` under `topology`'s prefix.
    pub fn new(client: async_nats::Client, topology: Topology) -> Self {
        ActiveNotices { client, topology }
    }

    /// Announces that `person` became the active user, at `at_ms`, of the device whose
    /// in-app token is `token`.
    pub async fn announce(&self, token: &str, person: &str, at_ms: u64) {
        let subject = self.topology.active_subject(token);
        let notice = pipeline::topology::active_notice(person, at_ms);
        if let Err(error) = self.client.publish(subject, notice.into()).await {
            tracing::warn!(%error, "cannot announce a device's active user to the gateways");
        }
    }
}

fn presence_field(person: &str, connection: &str) -> String {
    format!("{}/{connection}", id_token(person))
}

/// Whether `entries` (field → until) hold a live connection of `person` at `now_ms`.
fn present_in(entries: &[(String, u64)], person: &str, now_ms: u64) -> bool {
    let tag = id_token(person);
    entries.iter().any(|(field, until)| {
        field
            .strip_prefix(tag.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
            && *until > now_ms
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_is_a_live_connection_of_that_person() {
        let ana = presence_field("ana", "c1");
        let bob = presence_field("bob", "c2");
        let entries = vec![(ana.clone(), 2_000), (bob, 500)];
        assert!(present_in(&entries, "ana", 1_000));
        assert!(!present_in(&entries, "ana", 2_000), "lapsed");
        assert!(!present_in(&entries, "bob", 1_000), "lapsed");
        assert!(!present_in(&entries, "cy", 1_000));
        assert!(!present_in(&[], "ana", 0));
    }
}
