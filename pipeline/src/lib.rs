//! pushline's shared contract and runtime, used by every service.
//!
//! # Layout
//!
//! - [`contract`]: the messages on the wire (`Event`, `PushJob`, `Feedback`, `DeadLetter`).
//! - [`topology`]: streams, subjects and durable consumers, created idempotently.
//! - [`partition`]: choosing a partition per message, routing around a stalled one.
//! - [`balance`]: spreading the partitions' leaders over the cluster's nodes.
//! - [`config`]: layered typed configuration (defaults → TOML → `PUSHLINE_*` env).
//! - [`nats`]: connecting with credentials, TLS and a fast reconnect policy.
//! - [`provider_http`]: the HTTP/2 client dispatchers use to reach their providers.
//! - [`egress`]: where user-chosen endpoints may make pushline connect.
//! - [`listener`]: the public listeners' bounds (connections, header time and size, idle).
//! - [`worker`]: the one JetStream consumer loop (bounded concurrency, ack/nak/dead-letter).
//! - [`retry`]: the retry-delay function.
//! - [`jwe`]: per-device payload encryption (JWE `dir` + `A256GCM`) and its envelopes.
//! - [`json`]: structural limits (nesting depth) checked before parsing.
//! - [`provider`]: the seam every push provider plugs into (its [`provider::Spec`]).
//! - [`dispatch`]: the sending trait and the handler every dispatcher shares.
//! - [`delivered`]: a dispatcher's memory of jobs already delivered (no second ring).
//! - [`prune_guard`]: holds mass pruning back when a provider rejects too many tokens.
//! - [`tracking`]: per-event delivery status records.
//! - [`metrics`]: the catalogue of every Prometheus metric.
//! - [`mock`] (feature `testing`): the frame of every provider's mock, a real TLS HTTP/2
//!   server that records, checks and answers as scripted, and its test CA.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz` and the HTTP metrics middleware.
//! - [`operate`]: stream status and dead-letter replay for operators (`pushctl`).
//! - [`telemetry`]: log setup and token hashing for logs.
//! - [`shutdown`]: the signal → `CancellationToken` bridge.
#![forbid(unsafe_code)]

pub mod admin;
pub mod balance;
pub mod config;
pub mod contract;
pub mod delivered;
pub mod dispatch;
pub mod egress;
pub mod json;
pub mod jwe;
pub mod listener;
pub mod metrics;
#[cfg(feature = "testing")]
pub mod mock;
pub mod nats;
pub mod operate;
pub mod partition;
pub mod provider;
pub mod provider_http;
pub mod prune_guard;
pub mod retry;
pub mod shutdown;
pub mod telemetry;
pub mod topology;
pub mod tracking;
pub mod worker;

pub use tokio_util::sync::CancellationToken;
