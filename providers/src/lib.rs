//! The one list of push providers. A provider is its own crate (its
//! [`pipeline::provider::Spec`] and its dispatcher); registering it is one line below,
//! and everything the shared services do per provider follows from this list: streams,
//! subjects, consumers, `pushctl`, the device API, `/v1/notify` and the fan-out.
//! In-app messages are listed like a provider ([`inapp`]); their jobs are held in `INAPP`
//! instead of a push stream ([`topology`]).
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
    &inapp::spec::SPEC,
];

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
}
