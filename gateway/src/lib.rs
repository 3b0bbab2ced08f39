//! pushline gateway: holds apps' live connections and delivers each device's in-app
//! messages from the `INAPP` stream, in order, at least once (`docs/inapp.md`).
//!
//! A replica holds whichever connections its load balancer gives it: a message reaches
//! a device through NATS subject interest (the replica holding the device's connection
//! subscribes to the device's subject), and each device's progress is its cursor in
//! Redis, so a client reconnecting to any replica resumes where it acknowledged. Replicas
//! share nothing else.
//!
//! # Layout
//!
//! - [`config`]: the typed configuration (listener, TLS, apps, limits, and the registry's
//!   `[auth]` and `[redis]`).
//! - [`frames`]: the protocol's frames and closing codes.
//! - [`hub`]: what connections share: admission, cursors, reading `INAPP`, the live
//!   signal, connection limits by device and person.
//! - [`inbox`]: the server-side inbox and receipts over a connection: one answer per
//!   request, whatever the transport, and the person's inbox changes.
//! - [`ws`]: the WebSocket transport.
//! - [`mqtt`]: the MQTT 3.1.1 transport.
//! - [`sample`]: the sample web app's page on the WebSocket listener (`sample_app`,
//!   development only).
//!
//! # Endpoints
//!
//! `listen`: `GET /v1/connect` (WebSocket upgrade); with `sample_app`, also `GET /` and
//! `GET /sample-app` (the sample web app). `listen_mqtt`: MQTT 3.1.1.
//! `admin_listen`: `/metrics`, `/healthz`, `/readyz` (NATS connected, `INAPP` exists,
//! Redis answers). Both transports share `[tls]` and `limits.max_connections`.
#![forbid(unsafe_code)]

pub mod config;
pub mod frames;
pub mod hub;
pub mod inbox;
pub mod mqtt;
pub mod sample;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pipeline::CancellationToken;
use pipeline::admin::{self, BoxFuture, Readiness};
use pipeline::metrics::Metrics;
use pipeline::topology::{StreamKind, Topology};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::{Config, TlsConfig};
use crate::hub::{Hub, Parts};

/// Service name in metrics and logs.
pub const SERVICE: &str = "gateway";

/// Signals buffered per subscription ([`async_nats::ConnectOptions::subscription_capacity`]).
const SIGNALS: usize = 16;

/// Longest a stopping gateway waits for its connections to close.
const DRAIN: Duration = Duration::from_secs(5);

/// Why the gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] pipeline::config::ConfigError),
    /// NATS options refused.
    #[error(transparent)]
    Nats(#[from] pipeline::nats::ConnectError),
    /// Redis URL or options refused.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A listener could not be bound or served.
    #[error("{what}: {source}")]
    Io {
        /// Which listener.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// Connections waiting to be accepted: a replica's clients reconnect all at once when
/// another replica dies, and the default of 128 drops most of such a storm (each dropped
/// client waits a second to retry).
const BACKLOG: u32 = 4_096;

fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Binds `listen`, `listen_mqtt` and `admin_listen` and serves until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let resolved = config.resolve()?;
    let bind = |addr: std::net::SocketAddr| async move {
        listen(addr).map_err(|source| RunError::Io {
            what: format!("cannot listen on {addr}"),
            source,
        })
    };
    let listener = bind(resolved.listen).await?;
    let mqtt = bind(resolved.listen_mqtt).await?;
    let admin = bind(resolved.admin_listen).await?;
    serve_with_mqtt(config, listener, Some(mqtt), admin, shutdown).await
}

struct Ready {
    client: async_nats::Client,
    topology: Topology,
    redis: registry::connection::Connection,
}

impl Readiness for Ready {
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            pipeline::nats::check_topology(&self.client, &self.topology, &[StreamKind::InApp], &[])
                .await?;
            match tokio::time::timeout(Duration::from_secs(2), self.redis.check()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("Redis: {e}")),
                Err(_) => Err("Redis: no answer within 2 s".into()),
            }
        })
    }
}

/// Serves WebSocket and admin on the given listeners (tests pass port-0 listeners) until
/// `shutdown`; no MQTT.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    serve_with_mqtt(config, listener, None, admin_listener, shutdown).await
}

/// Serves on the given listeners until `shutdown`: WebSocket on `listener`, MQTT on
/// `mqtt_listener` when given.
pub async fn serve_with_mqtt(
    config: Config,
    listener: TcpListener,
    mqtt_listener: Option<TcpListener>,
    admin_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    config.resolve()?;
    let tls = config.tls.as_ref().map(acceptor).transpose()?;
    let metrics = Metrics::new(SERVICE);
    // A connection's subscriptions are wake-up signals: a few buffered are plenty, and a
    // connection stuck on a slow client must not pile up every message meanwhile (the
    // client drops what does not fit; the connection reads the stream anyway).
    let client = pipeline::nats::connect_with(
        &config.nats,
        "pushline-gateway",
        async_nats::ConnectOptions::new().subscription_capacity(SIGNALS),
    )
    .await?;
    let topology = providers::topology(&config.nats);
    let redis = registry::connect_redis(&config.redis)?;
    let store = registry::store::Store::new(
        redis.clone(),
        config.redis.prefix.clone(),
        registry::store::Policy {
            // The gateway registers nothing: the device limit is the registry's business.
            max_devices_per_person: usize::MAX,
            ttl: Duration::from_secs(config.device_ttl_secs),
        },
    );
    let hub = Arc::new(Hub::new(Parts {
        auth: registry::auth::Authenticator::new(&config.auth, metrics.clone())?
            .for_service(SERVICE),
        store,
        inapp: registry::inapp::InAppState::new(redis.clone(), &config.redis.prefix),
        tracker: pipeline::tracking::Tracker::new(
            client.clone(),
            topology.clone(),
            config.nats.tracking,
            metrics.clone(),
        ),
        nats: client.clone(),
        topology: topology.clone(),
        apps: config.apps.clone(),
        device_ttl: Duration::from_secs(config.device_ttl_secs),
        limits: config.limits.clone(),
        metrics: metrics.clone(),
        inbox: registry::inbox::Inbox::new(redis.clone(), &config.redis.prefix),
        inbox_apps: config.inbox_apps.clone(),
    }));
    let ready = Arc::new(Ready {
        client: client.clone(),
        topology: topology.clone(),
        redis,
    });
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        admin::router(metrics.clone(), ready),
        shutdown.clone(),
    ));
    // INAPP is created by whichever service gets there first; the gateway needs it too.
    let js = pipeline::topology::jetstream(client);
    let setup_shutdown = shutdown.clone();
    let setup = tokio::spawn(async move {
        pipeline::topology::ensure_until_ready(&js, &topology, &setup_shutdown).await;
    });
    let address = |l: Option<&TcpListener>| {
        l.and_then(|l| l.local_addr().ok())
            .map(|a| a.to_string())
            .unwrap_or_default()
    };
    // Watching announcements before the first connection: none can be missed.
    if hub.clone().background(shutdown.clone()).await.is_err() {
        tracing::error!(
            "cannot subscribe to active-user announcements; connections of persons replaced on their devices will stay open"
        );
    }
    tracing::info!(listen = %address(Some(&listener)), listen_mqtt = %address(mqtt_listener.as_ref()), tls = tls.is_some(), "gateway listening");
    let web = if config.sample_app {
        tracing::warn!(listen = %address(Some(&listener)), "sample_app is on: the WebSocket listener also serves the sample web app (development only)");
        Transport::WebSocketAndSampleApp
    } else {
        Transport::WebSocket
    };
    accept(
        hub,
        (listener, web),
        mqtt_listener,
        tls,
        config.limits.max_connections,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    let _ = setup.await;
    let _ = admin_task.await;
    Ok(())
}

/// A listener's protocol.
#[derive(Debug, Clone, Copy)]
enum Transport {
    WebSocket,
    /// WebSocket, and the sample web app's files on their paths (`sample_app`).
    WebSocketAndSampleApp,
    Mqtt,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::WebSocket | Transport::WebSocketAndSampleApp => ws::TRANSPORT,
            Transport::Mqtt => mqtt::TRANSPORT,
        }
    }

    async fn serve<S>(self, hub: Arc<Hub>, io: S, peer: SocketAddr, shutdown: CancellationToken)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        match self {
            Transport::WebSocket => ws::serve(hub, io, peer, shutdown).await,
            Transport::WebSocketAndSampleApp => sample::serve(hub, io, peer, shutdown).await,
            Transport::Mqtt => mqtt::serve(hub, io, peer, shutdown).await,
        }
    }
}

/// The next connection on `listener`; never, without one.
async fn accept_on(
    listener: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Accepts connections on both listeners (the first with its WebSocket transport) until
/// `shutdown`, at most `max_connections` at once whatever their transport (one more is
/// closed at once), then waits up to [`DRAIN`] for them to close.
async fn accept(
    hub: Arc<Hub>,
    (listener, web): (TcpListener, Transport),
    mqtt_listener: Option<TcpListener>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    max_connections: usize,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (accepted, transport) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => (accepted, web),
            accepted = accept_on(mqtt_listener.as_ref()) => (accepted, Transport::Mqtt),
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            hub.metrics
                .inapp_closed
                .with_label_values(&[transport.label(), "over_limit"])
                .inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (hub, tls, shutdown) = (hub.clone(), tls.clone(), shutdown.clone());
        connections.spawn(async move {
            match tls {
                None => transport.serve(hub, stream, peer, shutdown).await,
                Some(tls) => {
                    let timeout = Duration::from_millis(hub.limits.hello_timeout_ms);
                    if let Ok(Ok(stream)) = tokio::time::timeout(timeout, tls.accept(stream)).await
                    {
                        transport.serve(hub, stream, peer, shutdown).await;
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    drop(mqtt_listener);
    if tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        connections.abort_all();
    }
}

/// The TLS acceptor of `[tls]`, with ring as the crypto provider.
fn acceptor(tls: &TlsConfig) -> Result<tokio_rustls::TlsAcceptor, RunError> {
    use pipeline::config::ConfigError;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certificates = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ConfigError::invalid("tls.cert_file", e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|e| ConfigError::invalid("tls.key_file", e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ConfigError::invalid("tls", e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certificates, key)
    .map_err(|e| ConfigError::invalid("tls.key_file", e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
