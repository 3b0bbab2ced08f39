//! pushline's in-app provider: messages an app shows while its user is in it, delivered
//! over the live connection the app keeps to the gateway instead of a push service
//! (`docs/inapp.md`).
//!
//! This crate is what the shared services know of it, like a push provider's `spec`: the
//! device token (an installation id), the `inapp` part a producer sends, and its
//! encryption. Its jobs are **held** ([`pipeline::provider::Spec::held`]): the fan-out
//! keeps them in the `INAPP` stream for the device rather than handing them to a
//! dispatcher.
//!
//! # Layout
//!
//! - [`spec`]: the [`pipeline::provider::Spec`] of in-app messages and the part it carries.
#![forbid(unsafe_code)]

pub mod spec;
