//! Connecting to NATS with the configured credentials, TLS and reconnect policy.

use std::time::Duration;

use crate::config::NatsConfig;

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
    let urls = config
        .url
        .split(',')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(",");
    Ok(options.connect(urls).await?)
}

/// True when the client is connected right now.
pub fn is_connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// Readiness: connected, and JetStream answers for `stream` within 2 s.
pub async fn check_stream(client: &async_nats::Client, stream: &str) -> Result<(), String> {
    if !is_connected(client) {
        return Err("NATS is not connected".into());
    }
    let js = async_nats::jetstream::new(client.clone());
    match tokio::time::timeout(Duration::from_secs(2), js.get_stream_no_info(stream)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("JetStream stream {stream}: {e}")),
        Err(_) => Err(format!("JetStream stream {stream}: no answer within 2s")),
    }
}
