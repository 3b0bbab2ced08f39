//! pushline APNs dispatcher: consumes `PUSH_APNS` through the shared worker loop and sends
//! each job to APNs over persistent HTTP/2 connections.
//!
//! # Layout
//!
//! - [`spec`]: what the registry and ingest know of APNs ([`pipeline::provider::Spec`]).
//! - [`client`]: the [`pipeline::dispatch::Provider`] for APNs.
//! - [`config`]: the typed configuration (apps, endpoints, CAs, pool size).
//! - [`verdict`]: every APNs reason and the verdict it maps to (a pure table).
//! - [`jwt`]: ES256 provider tokens, aligned and reused.
//! - [`certificate`]: certificate authentication: PEM files or a PKCS#12 archive as the
//!   TLS client identity, and its expiry.
#![forbid(unsafe_code)]

pub mod certificate;
pub mod client;
pub mod config;
pub mod jwt;
pub mod spec;
pub mod verdict;

use pipeline::CancellationToken;
use pipeline::dispatch::{DispatcherSetup, serve as serve_dispatcher};
use pipeline::metrics::Metrics;
use tokio::net::TcpListener;

use crate::config::Config;

/// Service name in metrics and logs.
pub const SERVICE: &str = "dispatcher-apns";

/// Why the dispatcher could not run.
pub use pipeline::dispatch::DispatcherError as RunError;

/// Binds `admin_listen` and runs until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let admin = pipeline::dispatch::bind_admin(config.resolve()?).await?;
    serve(config, admin, shutdown).await
}

/// Runs with the given admin listener until `shutdown`.
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
