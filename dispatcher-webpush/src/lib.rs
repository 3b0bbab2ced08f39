//! pushline Web Push dispatcher: consumes `PUSH_WEBPUSH` through the shared worker loop
//! and sends each job, encrypted for its browser (RFC 8291) and signed with the app's
//! VAPID key (RFC 8292), to the push service its subscription names.
//!
//! # Layout
//!
//! Only [`spec`] is built without the `client` feature (on by default): the shared
//! services link the spec alone, so a change to the client does not rebuild them.
//!
//! - [`spec`]: what the registry and ingest know of Web Push ([`pipeline::provider::Spec`]).
//! - [`client`]: the [`pipeline::dispatch::Provider`] for Web Push.
//! - [`config`]: the typed configuration (apps and their keys, CAs, timeouts).
//! - [`verdict`]: every push service answer and the verdict it maps to (a pure table).
//! - [`ece`]: the `aes128gcm` message encryption.
//! - [`vapid`]: ES256 tokens per push service origin.
//! - [`testing`] (feature `testing`): a mock a Web Push service checking what the real one checks,
//!   for end-to-end tests.
#![forbid(unsafe_code)]

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod config;
#[cfg(feature = "client")]
pub mod ece;
pub mod spec;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "client")]
pub mod vapid;
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
pub const SERVICE: &str = "dispatcher-webpush";

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
    let provider = client::WebPushProvider::new(&config.webpush)?;
    let setup = DispatcherSetup {
        service: SERVICE,
        nats: config.nats,
        worker: config.worker,
        prune_guard: config.prune_guard,
        credential_check_secs: 0,
    };
    tracing::info!("Web Push dispatcher starting");
    serve_dispatcher(setup, provider, metrics, admin, shutdown).await?;
    Ok(())
}
