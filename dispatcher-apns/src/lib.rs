//! pushline APNs dispatcher: consumes `PUSH_APNS` through the shared worker loop and sends
//! each job to APNs over persistent HTTP/2 connections.
//!
//! # Layout
//!
//! Only [`spec`] is built without the `client` feature (on by default): the shared
//! services link the spec alone, so a change to the client does not rebuild them.
//!
//! - [`spec`]: what the registry and ingest know of APNs ([`pipeline::provider::Spec`]).
//! - [`client`]: the [`pipeline::dispatch::Provider`] for APNs.
//! - [`config`]: the typed configuration (apps, endpoints, CAs, pool size).
//! - [`verdict`]: every APNs reason and the verdict it maps to (a pure table).
//! - [`jwt`]: ES256 provider tokens, aligned and reused.
//! - [`certificate`]: certificate authentication: PEM files or a PKCS#12 archive as the
//!   TLS client identity, and its expiry.
//! - [`testing`] (feature `testing`): a mock APNs checking what the real one checks,
//!   for end-to-end tests.
#![forbid(unsafe_code)]

#[cfg(feature = "client")]
pub mod certificate;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod config;
#[cfg(feature = "client")]
pub mod jwt;
pub mod spec;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "client")]
pub mod verdict;

#[cfg(feature = "client")]
use pipeline::CancellationToken;
#[cfg(feature = "client")]
use pipeline::dispatch::{DispatcherSetup, serve as serve_dispatcher};
#[cfg(feature = "client")]
use pipeline::metrics::Metrics;
#[cfg(feature = "client")]
use tokio::net::TcpListener;

#[cfg(feature = "client")]
use crate::config::Config;

/// Service name in metrics and logs.
#[cfg(feature = "client")]
pub const SERVICE: &str = "dispatcher-apns";

/// Why the dispatcher could not run.
#[cfg(feature = "client")]
pub use pipeline::dispatch::DispatcherError as RunError;

/// Binds `admin_listen` and runs until `shutdown`.
#[cfg(feature = "client")]
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let admin = pipeline::dispatch::bind_admin(config.resolve()?).await?;
    serve(config, admin, shutdown).await
}

/// Runs with the given admin listener until `shutdown`.
#[cfg(feature = "client")]
pub async fn serve(
    config: Config,
    admin: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    config.resolve()?;
    let provider = client::ApnsProvider::new(&config.apns)?;
    let metrics = Metrics::new(SERVICE);
    for (app, not_after) in provider.certificate_expiries() {
        metrics
            .credential_expiry
            .with_label_values(&[spec::NAME, app])
            .set(*not_after as f64);
    }
    let setup = DispatcherSetup {
        service: SERVICE,
        nats: config.nats,
        worker: config.worker,
        prune_guard: config.prune_guard,
        credential_check_secs: config.apns.credential_check_secs,
    };
    tracing::info!("APNs dispatcher starting");
    serve_dispatcher(setup, provider, metrics, admin, shutdown).await?;
    Ok(())
}
