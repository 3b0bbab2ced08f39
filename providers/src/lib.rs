//! The one list of push providers. A provider is its own crate (its
//! [`pipeline::provider::Spec`] and its dispatcher); registering it is one line below,
//! and everything the shared services do per provider follows from this list: streams,
//! subjects, consumers, `pushctl`, the device API, `/v1/notify` and the fan-out.
//! In-app messages are listed like a provider ([`inapp`]); their jobs are held in `INAPP`
//! instead of a push stream ([`topology`]).
//!
//! # Layout
//!
//! - the list ([`all`], [`topology`]): each provider's [`Spec`], one line each;
//! - [`testing`] (feature `testing`): each dispatched provider's sandbox
//!   ([`pipeline::mock::sandbox`]), one line each, and its crate, for the test stack,
//!   `pushline-mock` and the benchmarks.
//!
//! Adding a provider: its crate (`dispatcher-<name>/`, with `deploy/` for its deployment
//! files), its line in each list here and its dependency in `Cargo.toml`, then
//! `deploy/k8s/render-dispatchers.py` for the deployment (`docs/providers.md`).
#![forbid(unsafe_code)]

use std::sync::OnceLock;

use pipeline::config::NatsConfig;
use pipeline::provider::{Providers, Spec};
use pipeline::topology::Topology;

/// The providers, one line each.
#[rustfmt::skip]
static LIST: &[&dyn Spec] = &[
    &dispatcher_apns::spec::SPEC,
    &dispatcher_fcm::spec::SPEC,
    &dispatcher_webpush::spec::SPEC,
    &dispatcher_hms::spec::SPEC,
    &inapp::spec::SPEC,
];

/// Each dispatched provider's sandbox and its crate, for tests and local runs: its mock, a
/// device the mock accepts, its dispatcher pointed at the mock
/// ([`pipeline::mock::sandbox`]).
#[cfg(feature = "testing")]
pub mod testing {
    use pipeline::mock::sandbox::Sandbox;

    pub use dispatcher_apns;
    pub use dispatcher_fcm;
    pub use dispatcher_hms;
    pub use dispatcher_webpush;

    /// The sandboxes, one line each, in the order of the providers' list.
    #[rustfmt::skip]
    pub static SANDBOXES: &[&dyn Sandbox] = &[
        &dispatcher_apns::testing::SANDBOX,
        &dispatcher_fcm::testing::SANDBOX,
        &dispatcher_webpush::testing::SANDBOX,
        &dispatcher_hms::testing::SANDBOX,
    ];
}

/// Every provider, in the order they are listed.
pub fn all() -> Providers {
    static ALL: OnceLock<Providers> = OnceLock::new();
    ALL.get_or_init(|| Providers::new(LIST)).clone()
}

/// The topology of the shared services (ingest, the registry, `pushctl`): a push stream
/// per dispatched provider, and `INAPP` when a provider is held.
pub fn topology(config: &NatsConfig) -> Topology {
    let all = all();
    Topology::new(config, &all.dispatched()).with_inapp(all.holds())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_list_is_well_formed() {
        let all = super::all();
        assert!(!all.names().is_empty());
        for spec in all.iter() {
            assert!(all.get(spec.name()).is_some());
        }
    }

    #[cfg(feature = "testing")]
    #[test]
    fn every_dispatched_provider_has_a_sandbox_in_the_order_of_the_list() {
        let dispatched: Vec<&str> = super::all()
            .iter()
            .filter(|spec| !spec.held())
            .map(|spec| spec.name())
            .collect();
        let sandboxes: Vec<&str> = super::testing::SANDBOXES
            .iter()
            .map(|sandbox| sandbox.name())
            .collect();
        assert_eq!(sandboxes, dispatched);
    }

    #[cfg(feature = "testing")]
    #[test]
    fn sandbox_ports_are_unique_and_not_the_control_port() {
        let mut ports: Vec<u16> = super::testing::SANDBOXES
            .iter()
            .map(|sandbox| sandbox.sandbox_port())
            .collect();
        assert!(
            !ports.contains(&8445),
            "8445 is pushline-mock's control port"
        );
        let all = ports.len();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), all, "two sandboxes share a port");
    }
}
