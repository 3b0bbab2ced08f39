//! Connecting to NATS with the configured credentials, TLS and reconnect policy.

use std::time::Duration;

use crate::config::NatsConfig;
use crate::topology::{ConsumerKind, StreamKind, Topology};

/// Why a connection could not be set up (the server being down is *not* an error:
/// the client keeps retrying in the background).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The credentials file could not be read.
    #[error("nats.creds_file: {0}")]
    Credentials(#[source] std::io::Error),
    /// The options were refused.
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
    /// One of the seed URLs is not a NATS URL.
    #[error("nats.url: `{url}` is not a server URL: {reason}")]
    Url {
        /// The URL as written.
        url: String,
        /// Why it was refused.
        reason: String,
    },
}

/// The seed servers of a `nats.url` setting: one URL or a comma-separated list
/// (`nats://a:4222, nats://b:4222`). The client connects to any of them and learns the
/// rest of a cluster from the server it reaches.
pub fn seed_servers(url: &str) -> Result<Vec<async_nats::ServerAddr>, ConnectError> {
    url.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            part.parse::<async_nats::ServerAddr>()
                .map_err(|e| ConnectError::Url {
                    url: part.to_owned(),
                    reason: e.to_string(),
                })
        })
        .collect()
}

/// Connects with `name` as the client name. Returns at once even when the server is down;
/// the client reconnects by itself (within about a second of the server returning).
pub async fn connect(config: &NatsConfig, name: &str) -> Result<async_nats::Client, ConnectError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(10))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).clamp(100, 1_000))
        })
        .require_tls(config.tls_required);
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.expose().to_owned());
    }
    if let Some(token) = &config.token {
        options = options.token(token.expose().to_owned());
    }
    if let Some(path) = &config.creds_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(ConnectError::Credentials)?;
    }
    if let Some(ca) = &config.tls_ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    let servers = seed_servers(&config.url)?;
    Ok(options.connect(servers).await?)
}

/// True when the client is connected right now.
pub fn is_connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// Readiness: connected, JetStream answers, and every stream in `streams` and every
/// consumer in `consumers` exists, each asked of the server (a stream or consumer info
/// request) within 2 s.
pub async fn check_topology(
    client: &async_nats::Client,
    topology: &Topology,
    streams: &[StreamKind],
    consumers: &[ConsumerKind],
) -> Result<(), String> {
    if !is_connected(client) {
        return Err("NATS is not connected".into());
    }
    let js = async_nats::jetstream::new(client.clone());
    let within = |what: String| move |_| format!("{what}: no answer within 2s");
    for kind in streams {
        let name = topology.stream_name(*kind);
        tokio::time::timeout(Duration::from_secs(2), js.get_stream(&name))
            .await
            .map_err(within(format!("JetStream stream {name}")))?
            .map_err(|e| format!("JetStream stream {name}: {e}"))?;
    }
    for kind in consumers {
        let stream = topology.stream_name(kind.stream());
        let durable = kind.durable_name();
        let ask = async {
            js.get_stream_no_info(&stream)
                .await
                .map_err(|e| e.to_string())?
                .consumer_info(durable)
                .await
                .map_err(|e| e.to_string())
        };
        tokio::time::timeout(Duration::from_secs(2), ask)
            .await
            .map_err(within(format!("JetStream consumer {stream}/{durable}")))?
            .map_err(|e| format!("JetStream consumer {stream}/{durable}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_separated_url_is_a_list_of_seed_servers() {
        let seeds = seed_servers("nats://127.0.0.1:4222, nats://127.0.0.1:4223,127.0.0.1:4224")
            .expect("three seeds");
        assert_eq!(seeds.len(), 3);
        assert_eq!(seeds[1].port(), 4223);
    }

    #[test]
    fn a_bad_seed_is_named() {
        let error =
            seed_servers("nats://127.0.0.1:4222,nats://host:notaport").expect_err("bad port");
        assert!(
            error.to_string().contains("nats://host:notaport"),
            "{error}"
        );
    }
}
