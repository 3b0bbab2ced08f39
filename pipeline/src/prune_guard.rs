//! Mass-pruning protection: a dispatcher stops token pruning for an app whose provider
//! suddenly calls most of its tokens invalid.
//!
//! A wrong bundle id or APNs environment, or a key of another team, makes APNs answer
//! `BadDeviceToken` / `DeviceTokenNotForTopic` for *every* device of the app; pruning on
//! those answers would delete every registration, and nobody's phone would ring again
//! until each app registered anew. Real invalid tokens are a few percent of answers.
//!
//! Each dispatcher replica counts, per app, the provider's answers about tokens
//! (accepted or invalid) over a sliding window (`window_secs`, in ten slices). While at
//! least `min_invalid` answers in the window were invalid **and** they are at least
//! `max_invalid_share` of all answers, the app's pruning is held: its feedback carries
//! the [`HOLD_HEADER`], which makes the prune stage dead-letter it (reason
//! `pruning_held`) instead of deleting the token, and `pushline_pruning_held{provider,app}`
//! is 1. The hold ends by itself once the share falls (the configuration was fixed). Held
//! feedback is kept in `DEAD`: `pushctl dead replay --stage prune --reason pruning_held`
//! prunes those tokens after all (replay does not carry the header), or it ages out.
//! Before the hold starts at most `min_invalid - 1` tokens of an app are pruned per
//! replica.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::metrics::Metrics;

/// The header on feedback whose pruning is held (its value names the reason).
pub const HOLD_HEADER: &str = "Pushline-Prune-Hold";

/// Slices of the window.
const SLICES: usize = 10;

/// `[prune_guard]` in the dispatchers' configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PruneGuardConfig {
    /// Hold pruning when the share of invalid-token answers jumps.
    pub enabled: bool,
    /// The share of answers (accepted + invalid) that, once invalid, holds pruning.
    pub max_invalid_share: f64,
    /// Fewer invalid answers than this in the window never hold pruning.
    pub min_invalid: u64,
    /// The window, seconds.
    pub window_secs: u64,
}

impl Default for PruneGuardConfig {
    fn default() -> Self {
        PruneGuardConfig {
            enabled: true,
            max_invalid_share: 0.5,
            min_invalid: 20,
            window_secs: 60,
        }
    }
}

impl PruneGuardConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.max_invalid_share > 0.0 && self.max_invalid_share <= 1.0) {
            return Err(ConfigError::invalid(
                "prune_guard.max_invalid_share",
                "must be above 0 and at most 1",
            ));
        }
        if self.min_invalid == 0 {
            return Err(ConfigError::invalid(
                "prune_guard.min_invalid",
                "must be positive",
            ));
        }
        if !(10..=3_600).contains(&self.window_secs) {
            return Err(ConfigError::invalid(
                "prune_guard.window_secs",
                "must be 10 to 3600",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Slice {
    /// Which slice of time (ms / slice length) these counts are of.
    epoch: u64,
    answers: u64,
    invalid: u64,
}

/// One replica's per-app answer counts.
pub struct PruneGuard {
    config: PruneGuardConfig,
    platform: &'static str,
    metrics: Metrics,
    apps: Mutex<HashMap<String, [Slice; SLICES]>>,
}

impl PruneGuard {
    /// A guard for `platform`'s dispatcher.
    pub fn new(config: PruneGuardConfig, platform: &'static str, metrics: Metrics) -> Self {
        PruneGuard {
            config,
            platform,
            metrics,
            apps: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one answer about a token of `app` (`invalid` or accepted) at `now_ms`, and
    /// says whether the app's pruning is held now.
    pub fn observe(&self, app: &str, invalid: bool, now_ms: u64) -> bool {
        if !self.config.enabled {
            return false;
        }
        let slice_ms = (self.config.window_secs * 1000 / SLICES as u64).max(1);
        let epoch = now_ms / slice_ms;
        let (answers, invalids) = {
            let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
            let slices = match apps.get_mut(app) {
                Some(slices) => slices,
                None => apps.entry(app.to_owned()).or_default(),
            };
            let slice = &mut slices[(epoch % SLICES as u64) as usize];
            if slice.epoch != epoch {
                *slice = Slice {
                    epoch,
                    ..Slice::default()
                };
            }
            slice.answers += 1;
            slice.invalid += u64::from(invalid);
            slices
                .iter()
                .filter(|s| s.epoch + SLICES as u64 > epoch)
                .fold((0, 0), |(a, i), s| (a + s.answers, i + s.invalid))
        };
        let held = invalids >= self.config.min_invalid
            && invalids as f64 >= self.config.max_invalid_share * answers as f64;
        let gauge = self
            .metrics
            .pruning_held
            .with_label_values(&[self.platform, app]);
        if held && gauge.get() == 0 {
            tracing::error!(
                app,
                invalids,
                answers,
                "most answers call tokens invalid: pruning held for this app (wrong bundle id, environment or key?)"
            );
        } else if !held && gauge.get() == 1 {
            tracing::warn!(
                app,
                invalids,
                answers,
                "invalid-token answers back to normal: pruning resumed for this app"
            );
        }
        gauge.set(i64::from(held));
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> PruneGuard {
        PruneGuard::new(
            PruneGuardConfig {
                min_invalid: 5,
                ..PruneGuardConfig::default()
            },
            "apns",
            Metrics::new("test"),
        )
    }

    #[test]
    fn a_few_dead_tokens_among_many_good_ones_are_pruned() {
        let g = guard();
        for i in 0..1_000 {
            assert!(!g.observe("app", i % 50 == 0, 1_000 + i));
        }
    }

    #[test]
    fn a_burst_of_invalid_answers_holds_pruning_for_that_app_only() {
        let g = guard();
        for i in 0..10 {
            g.observe("app", false, 1_000 + i);
            g.observe("other", false, 1_000 + i);
        }
        let held: Vec<bool> = (0..10).map(|i| g.observe("app", true, 2_000 + i)).collect();
        // Held from the invalid answer that makes them min_invalid and half of all.
        assert_eq!(
            held,
            [
                false, false, false, false, false, false, false, false, false, true
            ]
        );
        assert!(!g.observe("other", true, 2_100));
    }

    #[test]
    fn the_hold_ends_when_the_window_has_moved_past_the_burst() {
        let g = guard();
        for i in 0..20 {
            g.observe("app", true, 1_000 + i);
        }
        assert!(g.observe("app", true, 1_100));
        // A minute later the burst is out of the window; good answers only.
        assert!(!g.observe("app", false, 62_000));
    }

    #[test]
    fn off_means_never_held() {
        let g = PruneGuard::new(
            PruneGuardConfig {
                enabled: false,
                ..PruneGuardConfig::default()
            },
            "fcm",
            Metrics::new("test"),
        );
        assert!((0..100).all(|i| !g.observe("app", true, i)));
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = PruneGuardConfig {
            max_invalid_share: 1.5,
            ..PruneGuardConfig::default()
        };
        let error = bad.validate().expect_err("share over 1");
        assert!(error.to_string().contains("prune_guard.max_invalid_share"));
    }
}
