//! pushline's test harness: real `nats-server -js` and `redis-server` per test, services
//! run in-process on port 0, and condition waits with timeouts (never fixed sleeps).
//!
//! # Layout
//!
//! - [`servers`]: spawning and stopping `nats-server` and `redis-server`.
//! - [`clusters`]: a JetStream cluster, Redis Cluster and Redis Sentinel, with node kills.
//! - [`drill`]: fault drills under load and their reports (tests and `pushline-drill`).
//! - [`logs`]: capturing the services' log for tests that read it.
//! - [`services`]: running each service in-process with test configuration.
//! - [`stack`]: the whole pipeline with mock providers, for end-to-end tests.
//! - [`bench`]: helpers shared by the benchmark binaries.
//! - [`mock`]: mock APNs and FCM (with its OAuth endpoint): real TLS HTTP/2 servers.
//! - [`wait`]: waiting for a condition with a deadline.
//! - [`webex`]: building and signing Webex webhooks.
#![forbid(unsafe_code)]

pub mod bench;
pub mod clusters;
pub mod drill;
pub mod logs;
pub mod mock;
pub mod servers;
pub mod services;
pub mod stack;
pub mod wait;
pub mod webex;

/// The part of `parts` for `provider`, read as that provider's own type.
pub fn part<T: serde::de::DeserializeOwned>(
    parts: &pipeline::contract::Parts,
    provider: &str,
) -> T {
    let raw = parts
        .get(provider)
        .unwrap_or_else(|| panic!("no {provider} part"));
    serde_json::from_str(raw.get()).unwrap_or_else(|e| panic!("{provider} part: {e}"))
}
