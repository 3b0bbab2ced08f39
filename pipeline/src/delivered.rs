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
//! past its deadline is dropped anyway (swept within a second). It costs one hash lookup
//! per job and 17 bytes of table per job whose deadline has not passed, about twice that
//! counting the table's spare room (60 s of calls at 7,500 pushes/s is ~8–15 MB). A job
//! the server hands to a *different* replica is not caught; the contract documentation
//! says why this was chosen over a shared bucket.
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

/// An entry: the job's deadline (ms since the epoch, far below 2⁶³) with the top bit set
/// once it was delivered — 16 bytes a job with its key, not 24.
#[derive(Debug, Clone, Copy)]
struct Entry(u64);

impl Entry {
    const DELIVERED: u64 = 1 << 63;

    fn in_flight(deadline_ms: u64) -> Entry {
        Entry(deadline_ms & !Self::DELIVERED)
    }

    fn deadline_ms(self) -> u64 {
        self.0 & !Self::DELIVERED
    }

    fn delivered(self) -> bool {
        self.0 & Self::DELIVERED != 0
    }
}

/// The memory; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct DeliveredJobs {
    entries: Mutex<HashMap<u64, Entry>>,
    hasher: std::collections::hash_map::RandomState,
    next_sweep_len: std::sync::atomic::AtomicUsize,
    next_sweep_at_ms: std::sync::atomic::AtomicU64,
}

impl Default for DeliveredJobs {
    fn default() -> Self {
        DeliveredJobs {
            entries: Mutex::new(HashMap::new()),
            hasher: std::collections::hash_map::RandomState::new(),
            next_sweep_len: std::sync::atomic::AtomicUsize::new(1_024),
            next_sweep_at_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl DeliveredJobs {
    /// Below this many entries only doubling triggers a sweep.
    const SWEEP_ABOVE: usize = 4_096;

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
            Some(entry) if entry.deadline_ms() > now_ms => {
                if entry.delivered() {
                    Seen::Delivered
                } else {
                    Seen::InFlight
                }
            }
            _ => {
                entries.insert(key, Entry::in_flight(deadline_ms));
                Seen::New
            }
        }
    }

    /// The provider accepted the claimed job.
    pub fn delivered(&self, key: u64) {
        if let Some(entry) = self.lock().get_mut(&key) {
            entry.0 |= Entry::DELIVERED;
        }
    }

    /// The claimed job was not delivered (it will be retried, or is settled otherwise).
    pub fn released(&self, key: u64) {
        let mut entries = self.lock();
        if entries.get(&key).is_some_and(|e| !e.delivered()) {
            entries.remove(&key);
        }
    }

    /// Jobs remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Drops entries past their deadline whenever the map has doubled since the last
    /// sweep (O(1) amortised per job), and at most a second after the last one once it
    /// holds more than a few: under a steady load the map then holds the jobs whose
    /// deadline has not passed plus a second's worth, instead of growing to twice that
    /// (and, while the table grows, three times) before a sweep.
    fn sweep_if_due(&self, entries: &mut HashMap<u64, Entry>, now_ms: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let doubled = entries.len() >= self.next_sweep_len.load(Relaxed);
        let a_second_on =
            entries.len() >= Self::SWEEP_ABOVE && now_ms >= self.next_sweep_at_ms.load(Relaxed);
        if !doubled && !a_second_on {
            return;
        }
        entries.retain(|_, entry| entry.deadline_ms() > now_ms);
        self.next_sweep_len
            .store((entries.len() * 2).max(1_024), Relaxed);
        self.next_sweep_at_ms.store(now_ms + 1_000, Relaxed);
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

    #[test]
    fn a_large_memory_is_swept_every_second_not_only_when_it_doubles() {
        let memory = DeliveredJobs::default();
        // 10,000 jobs whose deadlines pass at 1,000 ms, claimed at time 0 (one sweep of
        // an empty past at the 4,096th), then 1,000 more a second later.
        for n in 0..10_000 {
            let job = memory.key(&format!("e{n}"), "t");
            assert_eq!(memory.claim(job, 1_000, 0), Seen::New);
            memory.delivered(job);
        }
        assert_eq!(memory.len(), 10_000, "nothing has passed its deadline yet");
        for n in 0..1_000 {
            memory.claim(memory.key(&format!("late{n}"), "t"), 60_000, 1_500);
        }
        assert_eq!(
            memory.len(),
            1_000,
            "the passed jobs are gone without doubling"
        );
        assert_eq!(
            memory.claim(memory.key("late1", "t"), 60_000, 1_600),
            Seen::InFlight
        );
    }

    #[test]
    fn the_delivered_mark_keeps_the_deadline() {
        let entry = Entry::in_flight(1_764_000_000_000);
        assert!(!entry.delivered());
        let delivered = Entry(entry.0 | Entry::DELIVERED);
        assert!(delivered.delivered());
        assert_eq!(delivered.deadline_ms(), 1_764_000_000_000);
    }
}
