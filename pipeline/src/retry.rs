//! Retry scheduling: one small pure function so every stage backs off the same way.

use std::time::Duration;

/// What a stage knows when it decides to try a message again.
#[derive(Debug, Clone, Copy)]
pub struct RetryInput {
    /// The delivery that just failed, counting from 1.
    pub attempt: u64,
    /// First delay.
    pub base: Duration,
    /// Longest delay.
    pub max: Duration,
    /// The provider's `Retry-After`, when it sent one; honoured even above `max`.
    pub retry_after: Option<Duration>,
    /// Time left before the message's deadline, when it has one.
    pub time_left: Option<Duration>,
}

impl RetryInput {
    /// The try after failed `attempt`, backing off as `worker` says, with no deadline and
    /// no `Retry-After`.
    pub fn after(attempt: u64, worker: &crate::config::WorkerConfig) -> Self {
        RetryInput {
            attempt,
            base: Duration::from_millis(worker.retry_base_ms),
            max: Duration::from_millis(worker.retry_max_ms),
            retry_after: None,
            time_left: None,
        }
    }

    /// With the provider's `Retry-After`.
    pub fn honouring(self, retry_after: Option<Duration>) -> Self {
        RetryInput {
            retry_after,
            ..self
        }
    }

    /// With `time_left` until `deadline_ms` (less `margin_ms`), seen at `now_ms`.
    pub fn before(self, deadline_ms: u64, margin_ms: u64, now_ms: u64) -> Self {
        RetryInput {
            time_left: Some(Duration::from_millis(
                deadline_ms.saturating_sub(now_ms).saturating_sub(margin_ms),
            )),
            ..self
        }
    }

    /// [`retry_delay`] with fresh randomness.
    pub fn delay(self) -> Option<Duration> {
        retry_delay(self, rand::random::<f64>())
    }
}

/// The delay before the next attempt: `base · 2^(attempt-1)` capped at `max`, with
/// "equal jitter" (half fixed, half random, from `jitter` in `[0, 1)`), raised to the
/// provider's `Retry-After`. `None` when the next attempt would land after the deadline,
/// so the caller drops the message instead of delivering it late.
pub fn retry_delay(input: RetryInput, jitter: f64) -> Option<Duration> {
    let exponent = input.attempt.saturating_sub(1).min(32) as u32;
    let backoff = input
        .base
        .checked_mul(1u32 << exponent.min(31))
        .unwrap_or(input.max)
        .min(input.max);
    let half = backoff / 2;
    let jittered = half + half.mul_f64(jitter.clamp(0.0, 1.0));
    let delay = match input.retry_after {
        Some(after) => jittered.max(after),
        None => jittered,
    };
    match input.time_left {
        Some(left) if delay >= left => None,
        _ => Some(delay),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_reads_a_worker_section_and_a_deadline() {
        let worker = crate::config::WorkerConfig {
            retry_base_ms: 100,
            retry_max_ms: 800,
            ..Default::default()
        };
        let next = RetryInput::after(3, &worker)
            .honouring(Some(Duration::from_secs(2)))
            .before(10_000, 500, 4_000);
        assert_eq!(next.attempt, 3);
        assert_eq!(next.base, Duration::from_millis(100));
        assert_eq!(next.max, Duration::from_millis(800));
        assert_eq!(next.retry_after, Some(Duration::from_secs(2)));
        assert_eq!(next.time_left, Some(Duration::from_millis(5_500)));
        assert_eq!(
            RetryInput::after(1, &worker)
                .before(1_000, 500, 900)
                .time_left,
            Some(Duration::ZERO),
            "past the margin: no time left"
        );
        assert_eq!(
            RetryInput::after(1, &worker).before(1_000, 0, 950).delay(),
            None
        );
    }

    fn input(attempt: u64) -> RetryInput {
        RetryInput {
            attempt,
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
            retry_after: None,
            time_left: None,
        }
    }

    #[test]
    fn doubles_per_attempt_within_jitter_bounds() {
        assert_eq!(retry_delay(input(1), 0.0), Some(Duration::from_millis(50)));
        assert_eq!(retry_delay(input(1), 1.0), Some(Duration::from_millis(100)));
        assert_eq!(retry_delay(input(3), 0.0), Some(Duration::from_millis(200)));
        assert_eq!(retry_delay(input(3), 1.0), Some(Duration::from_millis(400)));
    }

    #[test]
    fn is_capped_at_max_even_for_huge_attempts() {
        assert_eq!(retry_delay(input(1_000), 1.0), Some(Duration::from_secs(5)));
        assert_eq!(
            retry_delay(input(u64::MAX), 0.0),
            Some(Duration::from_millis(2_500))
        );
    }

    #[test]
    fn honours_retry_after_above_backoff() {
        let mut i = input(1);
        i.retry_after = Some(Duration::from_secs(30));
        assert_eq!(retry_delay(i, 0.5), Some(Duration::from_secs(30)));
    }

    #[test]
    fn never_schedules_past_the_deadline() {
        let mut i = input(2);
        i.time_left = Some(Duration::from_millis(150));
        assert_eq!(retry_delay(i, 1.0), None);
        assert_eq!(retry_delay(i, 0.0), Some(Duration::from_millis(100)));
        i.retry_after = Some(Duration::from_secs(1));
        assert_eq!(retry_delay(i, 0.0), None);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_delay_is_never_past_the_deadline_and_never_before_retry_after(
            attempt in 0u64..10_000,
            base_ms in 1u64..5_000,
            extra_ms in 0u64..60_000,
            retry_after_ms in proptest::option::of(0u64..120_000),
            left_ms in proptest::option::of(0u64..120_000),
            jitter in 0.0f64..1.0,
        ) {
            let input = RetryInput {
                attempt,
                base: Duration::from_millis(base_ms),
                max: Duration::from_millis(base_ms + extra_ms),
                retry_after: retry_after_ms.map(Duration::from_millis),
                time_left: left_ms.map(Duration::from_millis),
            };
            if let Some(delay) = retry_delay(input, jitter) {
                if let Some(left) = input.time_left { prop_assert!(delay < left); }
                if let Some(after) = input.retry_after { prop_assert!(delay >= after); }
                prop_assert!(delay <= input.max.max(input.retry_after.unwrap_or_default()));
            }
        }
    }
}
