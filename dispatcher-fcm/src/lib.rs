//! pushline FCM dispatcher: consumes `PUSH_FCM` through the shared worker loop and sends
//! FCM HTTP v1 data messages over persistent HTTP/2 connections.
//!
//! # Layout
//!
//! - [`spec`]: what the registry and ingest know of FCM ([`pipeline::provider::Spec`]).
//! - [`client`]: the [`pipeline::dispatch::Provider`] for FCM.
//! - [`config`]: the typed configuration (projects, endpoint, CAs, pool size).
//! - [`verdict`]: every FCM error code and the verdict it maps to (a pure table).
//! - [`oauth`]: service-account OAuth2 access tokens, cached and refreshed.
//! - [`message`]: the request body, `data` passed through unaltered.
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod message;
pub mod oauth;
pub mod spec;
pub mod verdict;

use pipeline::CancellationToken;
use pipeline::dispatch::{DispatcherSetup, serve as serve_dispatcher};
use pipeline::metrics::Metrics;
use tokio::net::TcpListener;

use crate::config::Config;

/// Service name in metrics and logs.
pub const SERVICE: &str = "dispatcher-fcm";

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
    let metrics = Metrics::new(SERVICE);
    let provider = client::FcmProvider::new(&config.fcm)?;
    let setup = DispatcherSetup {
        service: SERVICE,
        nats: config.nats,
        worker: config.worker,
        prune_guard: config.prune_guard,
        credential_check_secs: config.fcm.credential_check_secs,
    };
    tracing::info!("FCM dispatcher starting");
    serve_dispatcher(setup, provider, metrics, admin, shutdown).await?;
    Ok(())
}
