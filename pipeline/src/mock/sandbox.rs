//! What a provider brings to the sandbox: its mock, a device the mock accepts, and how
//! its dispatcher is pointed at the mock. Each provider crate's `testing` module has one
//! [`Sandbox`] (`testing::SANDBOX`), and the providers crate lists them (its `testing`
//! feature); everything that runs "every provider" against mocks reads that list and
//! names no provider: the test stack, `pushline-mock` (the local run, the container and
//! live checks, the benchmarks).

use std::any::Any;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpListener;

use super::tls::TestCa;
use super::{Listen, Recorded};
use crate::CancellationToken;

/// A boxed future, for the object-safe seams below.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why an in-process dispatcher stopped.
pub type ServeError = Box<dyn std::error::Error + Send + Sync>;

/// One provider's sandbox.
pub trait Sandbox: Send + Sync {
    /// The provider's name (its [`crate::provider::Spec::name`]).
    fn name(&self) -> &'static str;

    /// The port its mock listens on in the sandbox (`pushline-mock`, docker-compose; the
    /// local run adds an offset): unique among the providers, never the control port 8445.
    fn sandbox_port(&self) -> u16;

    /// Starts the provider's mock serving the sandbox's apps, listening as `at` says with
    /// a certificate of `ca`, and writes into `dir` what its dispatcher reads
    /// (credentials, and `ca.pem` when nothing else wrote it).
    fn start<'a>(
        &'a self,
        ca: &'a TestCa,
        at: &'a Listen,
        dir: &'a Path,
    ) -> BoxFuture<'a, Arc<dyn Running>>;

    /// Runs the provider's dispatcher in-process with `config` (its configuration
    /// document, as JSON) until `shutdown`.
    fn serve(
        &self,
        config: serde_json::Value,
        admin: TcpListener,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<(), ServeError>>;
}

/// A provider's running mock.
pub trait Running: Send + Sync + 'static {
    /// The provider's name.
    fn name(&self) -> &'static str;

    /// The mock's base URL.
    fn url(&self) -> String;

    /// The provider's part of its dispatcher's configuration pointing at this mock (the
    /// document without `admin_listen`, `[nats]` and `[telemetry]`, which the caller
    /// adds), reading what [`Sandbox::start`] wrote into `dir`. Paths in it are `dir`'s.
    fn dispatcher_config(&self, dir: &Path) -> serde_json::Value;

    /// A fresh device of `person` that this mock accepts, in the sandbox's app: the
    /// registry's `POST /v1/devices` body.
    fn device(&self, person: &str) -> serde_json::Value;

    /// Origins outside the public internet that the registry must accept in devices'
    /// endpoints (its `[endpoints] private_origins`): a push service's, for providers
    /// whose devices name where they are reached.
    fn private_origins(&self) -> Vec<String> {
        Vec::new()
    }

    /// Every request the mock received, waiting until there are more than `seen`.
    fn wait_beyond(&self, seen: usize) -> BoxFuture<'_, Vec<Recorded>>;

    /// The requests that were pushes (not, say, token requests).
    fn pushes(&self) -> Vec<Recorded>;

    /// One line saying what a push was, for a person watching the sandbox; `None` for a
    /// request that was not a push.
    fn describe(&self, request: &Recorded) -> Option<String>;

    /// The mock itself, for tests that script it ([`downcast`]).
    fn as_any(&self) -> &dyn Any;
}

/// The typed mock behind `running`, when it is an `M`.
pub fn downcast<M: 'static>(running: &dyn Running) -> Option<&M> {
    running.as_any().downcast_ref::<M>()
}

/// The provider's part of a dispatcher's configuration (see
/// [`Running::dispatcher_config`]): `config` as JSON without `admin_listen`, `nats` and
/// `telemetry`.
pub fn provider_part(config: &impl serde::Serialize) -> serde_json::Value {
    let mut value = serde_json::to_value(config).expect("a configuration serializes");
    if let Some(document) = value.as_object_mut() {
        for shared in ["admin_listen", "nats", "telemetry"] {
            document.remove(shared);
        }
    }
    value
}

/// A device token no other call gave out: `bytes` bytes in hex, from the clock and a
/// counter.
pub fn fresh_token(bytes: usize) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let seed = format!("{:016x}{n:016x}", super::now_us());
    seed.chars().cycle().take(bytes * 2).collect::<String>()
}

/// The first 160 characters of a body, for one line of output.
pub fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(160).collect()
}
