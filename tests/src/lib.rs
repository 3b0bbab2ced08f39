//! pushline's test harness: real `nats-server -js` and `redis-server` per test, services
//! run in-process on port 0, and condition waits with timeouts (never fixed sleeps).
//!
//! # Layout
//!
//! - [`servers`]: spawning and stopping `nats-server` and `redis-server`.
//! - [`services`]: running ingest and the registry in-process with test configuration.
//! - [`wait`]: waiting for a condition with a deadline.
//! - [`webex`]: building and signing Webex webhooks.
#![forbid(unsafe_code)]

pub mod servers;
pub mod services;
pub mod wait;
pub mod webex;
