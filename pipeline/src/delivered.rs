//! A dispatcher's memory of the jobs its provider has already accepted, so a job that
//! comes back is not sent twice while its deadline lasts.
//!
//! A job can come back after it was delivered: its ack was lost when NATS restarted or a
//! node failed (the server redelivers it), or fan-out published it again after a restart
//! (an event whose ack was lost is fanned out again, and the restarted server's duplicate
//! window no longer knows job ids whose messages were already acked and deleted). Either
//! way it carries the same job id (`Nats-Msg-Id`), and ringing a phone twice for one call
//! is a bug users see.
//!
//! The memory is per replica (the 64-bit hash of the job id → its deadline), checked
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
    fn key(&self, job_id: &str) -> u64 {
        self.hasher.hash_one(job_id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims `job_id` for sending: [`Seen::New`] means the caller now owns it (in flight)
    /// and must call [`DeliveredJobs::delivered`] or [`DeliveredJobs::released`].
    pub fn claim(&self, job_id: &str, deadline_ms: u64, now_ms: u64) -> Seen {
        let key = self.key(job_id);
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
    pub fn delivered(&self, job_id: &str) {
        let key = self.key(job_id);
        if let Some(entry) = self.lock().get_mut(&key) {
            entry.delivered = true;
        }
    }

    /// The claimed job was not delivered (it will be retried, or is settled otherwise).
    pub fn released(&self, job_id: &str) {
        let key = self.key(job_id);
        let mut entries = self.lock();
        if entries.get(&key).is_some_and(|e| !e.delivered) {
            entries.remove(&key);
        }
    }

    /// Jobs remembered now (for tests and the benchmark).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        assert_eq!(memory.claim("e1:t1", 1_000, 10), Seen::New);
        assert_eq!(memory.claim("e1:t1", 1_000, 20), Seen::InFlight);
        memory.delivered("e1:t1");
        assert_eq!(memory.claim("e1:t1", 1_000, 30), Seen::Delivered);
        assert_eq!(memory.claim("e1:t2", 1_000, 30), Seen::New);
    }

    #[test]
    fn a_released_job_can_be_claimed_again() {
        let memory = DeliveredJobs::default();
        assert_eq!(memory.claim("e1:t1", 1_000, 10), Seen::New);
        memory.released("e1:t1");
        assert_eq!(memory.claim("e1:t1", 1_000, 20), Seen::New);
    }

    #[test]
    fn entries_past_their_deadline_are_forgotten_and_swept() {
        let memory = DeliveredJobs::default();
        for n in 0..2_000 {
            let id = format!("e{n}");
            assert_eq!(memory.claim(&id, 100, 10), Seen::New);
            memory.delivered(&id);
        }
        assert_eq!(memory.claim("e1", 100, 200), Seen::New, "past its deadline");
        for n in 0..2_000 {
            memory.claim(&format!("late{n}"), 10_000, 300);
        }
        assert!(memory.len() <= 2_100, "{} entries", memory.len());
    }
}
