//! A dispatcher's memory of the jobs its provider has already accepted, so a job that
//! comes back is not sent twice while its deadline lasts.
//!
//! A job can come back after it was delivered: its ack was lost when NATS restarted or a
//! node failed (the server redelivers it), or fan-out published it again after a restart
//! (an event whose ack was lost is fanned out again, and the restarted server's duplicate
//! window no longer knows job ids whose messages were already acked and deleted). Either
//! way it is the same job (event id and device token; its `Nats-Msg-Id` may differ, see
//! [`crate::nats::publish_stored`]), and ringing a phone twice for one call is a bug users
//! see.
//!
//! The memory is per replica (a 64-bit hash of event id and token → the deadline), checked
//! before every send, and an entry is forgotten once its deadline has passed, since a job
//! past its deadline is dropped anyway. It costs one hash lookup per job and about 40
//! bytes per job whose deadline has not passed (60 s of calls at 7,500 pushes/s is ~18
//! MB). A job the server hands to a *different* replica is not caught; the
//! contract documentation says why this was chosen over a shared bucket.
//!
//! A job being sent is remembered as in flight, so a copy arriving meanwhile waits for
//! the first one's verdict instead of racing it.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;

/// What the memory knows of a job id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Never seen (or forgotten after its deadline): send it.
    New,
    /// Being sent right now by this replica.
    InFlight,
    /// Accepted by the provider already.
    Delivered,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    delivered: bool,
    deadline_ms: u64,
}

/// The memory; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct DeliveredJobs {
    entries: Mutex<HashMap<u64, Entry>>,
    hasher: std::collections::hash_map::RandomState,
    next_sweep_len: std::sync::atomic::AtomicUsize,
}

impl Default for DeliveredJobs {
    fn default() -> Self {
        DeliveredJobs {
            entries: Mutex::new(HashMap::new()),
            hasher: std::collections::hash_map::RandomState::new(),
            next_sweep_len: std::sync::atomic::AtomicUsize::new(1_024),
        }
    }
}

impl DeliveredJobs {
    /// The memory's key for the job of `event_id` to `token`.
    pub fn key(&self, event_id: &str, token: &str) -> u64 {
        self.hasher.hash_one((event_id, token))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims the job with `key` ([`DeliveredJobs::key`]) for sending: [`Seen::New`] means
    /// the caller now owns it (in flight) and must call [`DeliveredJobs::delivered`] or
    /// [`DeliveredJobs::released`].
    pub fn claim(&self, key: u64, deadline_ms: u64, now_ms: u64) -> Seen {
        let mut entries = self.lock();
        self.sweep_if_due(&mut entries, now_ms);
        match entries.get(&key) {
            Some(entry) if entry.deadline_ms > now_ms => {
                if entry.delivered {
                    Seen::Delivered
                } else {
                    Seen::InFlight
                }
            }
            _ => {
                entries.insert(
                    key,
                    Entry {
                        delivered: false,
                        deadline_ms,
                    },
                );
                Seen::New
            }
        }
    }

    /// The provider accepted the claimed job.
    pub fn delivered(&self, key: u64) {
        if let Some(entry) = self.lock().get_mut(&key) {
            entry.delivered = true;
        }
    }

    /// The claimed job was not delivered (it will be retried, or is settled otherwise).
    pub fn released(&self, key: u64) {
        let mut entries = self.lock();
        if entries.get(&key).is_some_and(|e| !e.delivered) {
            entries.remove(&key);
        }
    }

    /// Jobs remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Drops entries past their deadline whenever the map has doubled since the last
    /// sweep, so sweeping costs O(1) amortised per job.
    fn sweep_if_due(&self, entries: &mut HashMap<u64, Entry>, now_ms: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        if entries.len() < self.next_sweep_len.load(Relaxed) {
            return;
        }
        entries.retain(|_, entry| entry.deadline_ms > now_ms);
        self.next_sweep_len
            .store((entries.len() * 2).max(1_024), Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivered_job_is_not_sent_again_before_its_deadline() {
        let memory = DeliveredJobs::default();
        let job = memory.key("e1", "t1");
        assert_eq!(memory.claim(job, 1_000, 10), Seen::New);
        assert_eq!(memory.claim(job, 1_000, 20), Seen::InFlight);
        memory.delivered(job);
        assert_eq!(memory.claim(job, 1_000, 30), Seen::Delivered);
        assert_eq!(memory.claim(memory.key("e1", "t2"), 1_000, 30), Seen::New);
        assert_eq!(memory.claim(memory.key("e2", "t1"), 1_000, 30), Seen::New);
    }

    #[test]
    fn a_released_job_can_be_claimed_again() {
        let memory = DeliveredJobs::default();
        let job = memory.key("e1", "t1");
        assert_eq!(memory.claim(job, 1_000, 10), Seen::New);
        memory.released(job);
        assert_eq!(memory.claim(job, 1_000, 20), Seen::New);
    }

    #[test]
    fn entries_past_their_deadline_are_forgotten_and_swept() {
        let memory = DeliveredJobs::default();
        for n in 0..2_000 {
            let job = memory.key(&format!("e{n}"), "t");
            assert_eq!(memory.claim(job, 100, 10), Seen::New);
            memory.delivered(job);
        }
        let first = memory.key("e1", "t");
        assert_eq!(
            memory.claim(first, 100, 200),
            Seen::New,
            "past its deadline"
        );
        for n in 0..2_000 {
            memory.claim(memory.key(&format!("late{n}"), "t"), 10_000, 300);
        }
        assert!(memory.len() <= 2_100, "{} entries", memory.len());
    }
}
