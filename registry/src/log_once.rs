//! Logging a condition that repeats with every push (a device that cannot get the
//! encrypted payload its app requires) once per key and interval instead of per push:
//! the metric counts every occurrence, the log says which device and how often it was
//! seen since it was last logged.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most keys remembered; past this, keys not logged within the interval are forgotten.
const MAX_KEYS: usize = 10_000;

/// When each key was last logged and how often it was seen since.
#[derive(Debug)]
pub struct LogOnce {
    every: Duration,
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

impl LogOnce {
    /// Logs each key at most once per `every`.
    pub fn new(every: Duration) -> Self {
        LogOnce {
            every,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records that `key` happened at `now`: `Some(n)` when it is to be logged now, `n`
    /// being how many times it happened since it was last logged (this one included),
    /// `None` while it was logged less than the interval ago.
    pub fn due(&self, key: &str, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((logged, count)) = seen.get_mut(key) {
            *count += 1;
            if now.saturating_duration_since(*logged) < self.every {
                return None;
            }
            let times = *count;
            *logged = now;
            *count = 0;
            return Some(times);
        }
        if seen.len() >= MAX_KEYS {
            let every = self.every;
            seen.retain(|_, (logged, _)| now.saturating_duration_since(*logged) < every);
        }
        seen.insert(key.to_owned(), (now, 0));
        Some(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_logged_once_per_interval_with_its_count() {
        let log = LogOnce::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(log.due("a", t0), Some(1));
        assert_eq!(log.due("a", t0 + Duration::from_secs(1)), None);
        assert_eq!(log.due("b", t0 + Duration::from_secs(1)), Some(1));
        assert_eq!(log.due("a", t0 + Duration::from_secs(59)), None);
        assert_eq!(log.due("a", t0 + Duration::from_secs(60)), Some(3));
        assert_eq!(log.due("a", t0 + Duration::from_secs(61)), None);
    }

    #[test]
    fn keys_not_seen_within_the_interval_are_forgotten_at_the_bound() {
        let log = LogOnce::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for n in 0..MAX_KEYS {
            log.due(&n.to_string(), t0);
        }
        assert_eq!(
            log.due("new", t0 + Duration::from_secs(61)),
            Some(1),
            "logged"
        );
        assert_eq!(log.seen.lock().expect("lock").len(), 1);
    }
}
