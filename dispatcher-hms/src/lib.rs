//! pushline Huawei Push Kit (HMS) dispatcher: consumes `PUSH_HMS` through the shared
//! worker loop and sends Push Kit messages over persistent connections (HTTP/2 or
//! HTTP/1.1, as ALPN negotiates).
//!
//! # Layout
//!
//! Only [`spec`] is built without the `client` feature (on by default): the shared
//! services link the spec alone, so a change to the client does not rebuild them.
//!
//! - [`spec`]: what the registry and ingest know of HMS ([`pipeline::provider::Spec`]).
//! - [`client`]: the [`pipeline::dispatch::Provider`] for Push Kit.
//! - [`config`]: the typed configuration (apps and their secrets, endpoints, CAs, pool
//!   size).
//! - [`verdict`]: every Push Kit result code and the verdict it maps to (a pure table).
//! - [`oauth`]: OAuth 2.0 client-credentials access tokens, cached and refreshed, a
//!   failed fetch shared and backed off, a refused token renewed at most once a minute.
//! - [`message`]: the request body, `data` carried as the string of its JSON.
//! - [`testing`] (feature `testing`): a mock Push Kit and token endpoint checking what
//!   Huawei's check, and the provider's sandbox, for end-to-end tests.
#![forbid(unsafe_code)]

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod config;
#[cfg(feature = "client")]
pub mod message;
#[cfg(feature = "client")]
pub mod oauth;
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
pub const SERVICE: &str = "dispatcher-hms";

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
    let metrics = Metrics::new(SERVICE);
    let provider = client::HmsProvider::new(&config.hms)?;
    let setup = DispatcherSetup {
        service: SERVICE,
        nats: config.nats,
        worker: config.worker,
        prune_guard: config.prune_guard,
        credential_check_secs: config.hms.credential_check_secs,
    };
    tracing::info!("HMS dispatcher starting");
    serve_dispatcher(setup, provider, metrics, admin, shutdown).await?;
    Ok(())
}
