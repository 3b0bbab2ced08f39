//! Gateway configuration (`PUSHLINE_<SECTION>__<KEY>` for every field). The credentials
//! apps present are checked with the registry's own rules (`[auth]`), and devices are read
//! from the registry's Redis (`[redis]`): both sections mean what they mean there.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use pipeline::config::{ConfigError, NatsConfig, TelemetryConfig, parse_addr};
use registry::config::{AuthConfig, RedisConfig};
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The WebSocket listener (`/v1/connect`); 8884 by convention with TLS.
    pub listen: String,
    /// The MQTT 3.1.1 listener; 8883 by convention with TLS. TLS is `[tls]`, shared
    /// with `listen`.
    pub listen_mqtt: String,
    /// Admin address for `/metrics`, `/healthz`, `/readyz`.
    pub admin_listen: String,
    /// TLS for `listen` and `listen_mqtt`; without it the listeners speak plain `ws://`
    /// and MQTT over TCP (development, or behind a TLS-terminating load balancer).
    pub tls: Option<TlsConfig>,
    /// The apps whose devices may connect (their in-app `app` names); a hello naming
    /// another app is refused. Also the `app` label of the gateway's metrics.
    pub apps: BTreeSet<String>,
    /// The apps of `apps` that keep a server-side inbox: those with `inbox = true` in the
    /// registry's app policy (`[devices.apps."<app>"]`). Their connections may list and
    /// change the person's inbox; another app's inbox requests are refused `no_inbox`.
    pub inbox_apps: BTreeSet<String>,
    /// Bounds on connections and what each may hold.
    pub limits: Limits,
    /// How long a registration lives unless refreshed, seconds: the registry's
    /// `devices.ttl_secs`.
    pub device_ttl_secs: u64,
    /// Who may connect: the registry's `[auth]` (API keys are refused: a connection is
    /// always one person).
    pub auth: AuthConfig,
    /// The registry's Redis (devices, active users) and the gateway's cursors.
    pub redis: RedisConfig,
    /// NATS connection and stream layout.
    pub nats: NatsConfig,
    /// Logs.
    pub telemetry: TelemetryConfig,
    /// Development only: `listen` also serves the sample web app (`GET /`,
    /// `GET /sample-app`), a page that signs in, connects and shows the inbox.
    pub sample_app: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:8884".into(),
            listen_mqtt: "0.0.0.0:8883".into(),
            admin_listen: "127.0.0.1:9085".into(),
            tls: None,
            apps: BTreeSet::new(),
            inbox_apps: BTreeSet::new(),
            limits: Limits::default(),
            device_ttl_secs: 60 * 86_400,
            auth: AuthConfig::default(),
            redis: RedisConfig::default(),
            nats: NatsConfig::default(),
            telemetry: TelemetryConfig::default(),
            sample_app: false,
        }
    }
}

/// `[tls]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// `[limits]`: what one connection, one device, one person and the whole replica may hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Most connections open on this replica; more are closed at once.
    pub max_connections: usize,
    /// Most connections of one device (one app installation) on this replica; one more
    /// closes the oldest (`too_many_connections`).
    pub max_connections_per_device: usize,
    /// Most connections of one person on this replica; one more closes their oldest.
    pub max_connections_per_person: usize,
    /// Largest frame a client may send, bytes (`too_large`).
    pub max_frame_bytes: usize,
    /// Most messages sent and not yet acknowledged; the rest wait.
    pub max_unacked: usize,
    /// Most bytes waiting to be written to one connection; beyond, the connection is
    /// closed (`slow_consumer`) rather than held in memory.
    pub max_send_queue_bytes: usize,
    /// How long a new connection has to send its hello, milliseconds.
    pub hello_timeout_ms: u64,
    /// A ping every this many seconds.
    pub heartbeat_secs: u64,
    /// A connection that sends nothing (no frame, no pong) for this long is closed.
    pub idle_timeout_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 20_000,
            max_connections_per_device: 4,
            max_connections_per_person: 16,
            max_frame_bytes: 16 * 1024,
            max_unacked: 64,
            max_send_queue_bytes: 256 * 1024,
            hello_timeout_ms: 10_000,
            heartbeat_secs: 30,
            idle_timeout_secs: 75,
        }
    }
}

/// The configuration's addresses, checked.
#[derive(Debug, Clone, Copy)]
pub struct Resolved {
    /// `listen`.
    pub listen: SocketAddr,
    /// `listen_mqtt`.
    pub listen_mqtt: SocketAddr,
    /// `admin_listen`.
    pub admin_listen: SocketAddr,
}

impl Config {
    /// Validates every setting, naming the one at fault.
    pub fn resolve(&self) -> Result<Resolved, ConfigError> {
        let listen = parse_addr("listen", &self.listen)?;
        let listen_mqtt = parse_addr("listen_mqtt", &self.listen_mqtt)?;
        let admin_listen = parse_addr("admin_listen", &self.admin_listen)?;
        self.nats.validate()?;
        self.redis.validate()?;
        registry::auth::check_jwt_keys(&self.auth.jwt)?;
        if self.apps.is_empty() {
            return Err(ConfigError::invalid(
                "apps",
                "is empty: list the apps whose devices may connect",
            ));
        }
        if let Some(bad) = self
            .apps
            .iter()
            .find(|app| registry::validate::app("apps", app).is_err())
        {
            return Err(ConfigError::invalid(
                "apps",
                format!("`{bad}` is not an app id"),
            ));
        }
        if let Some(bad) = self.inbox_apps.difference(&self.apps).next() {
            return Err(ConfigError::invalid(
                "inbox_apps",
                format!("`{bad}` is not one of `apps`"),
            ));
        }
        let l = &self.limits;
        for (setting, value, min) in [
            ("limits.max_connections", l.max_connections as u64, 1),
            (
                "limits.max_connections_per_device",
                l.max_connections_per_device as u64,
                1,
            ),
            (
                "limits.max_connections_per_person",
                l.max_connections_per_person as u64,
                1,
            ),
            ("limits.max_frame_bytes", l.max_frame_bytes as u64, 1_024),
            ("limits.max_unacked", l.max_unacked as u64, 1),
            (
                "limits.max_send_queue_bytes",
                l.max_send_queue_bytes as u64,
                16 * 1024,
            ),
            ("limits.hello_timeout_ms", l.hello_timeout_ms, 100),
            ("limits.heartbeat_secs", l.heartbeat_secs, 1),
        ] {
            if value < min {
                return Err(ConfigError::invalid(
                    setting,
                    format!("must be at least {min}"),
                ));
            }
        }
        if l.idle_timeout_secs <= l.heartbeat_secs {
            return Err(ConfigError::invalid(
                "limits.idle_timeout_secs",
                "must be above limits.heartbeat_secs (a client answers the ping in between)",
            ));
        }
        if self.device_ttl_secs < 60 {
            return Err(ConfigError::invalid(
                "device_ttl_secs",
                "must be at least 60",
            ));
        }
        Ok(Resolved {
            listen,
            listen_mqtt,
            admin_listen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Config {
        Config {
            apps: ["com.example.app".to_owned()].into(),
            ..Config::default()
        }
    }

    #[test]
    fn the_defaults_with_an_app_are_valid() {
        assert!(valid().resolve().is_ok());
    }

    #[test]
    fn bad_settings_are_named() {
        let mut no_apps = valid();
        no_apps.apps.clear();
        let mut tiny_frames = valid();
        tiny_frames.limits.max_frame_bytes = 10;
        let mut idle_before_ping = valid();
        idle_before_ping.limits.idle_timeout_secs = idle_before_ping.limits.heartbeat_secs;
        let mut bad_app = valid();
        bad_app.apps.insert("has space".into());
        let mut stray_inbox = valid();
        stray_inbox.inbox_apps.insert("com.example.other".into());
        let mut bad_mqtt = valid();
        bad_mqtt.listen_mqtt = "8883".into();
        for (config, setting) in [
            (no_apps, "apps"),
            (tiny_frames, "limits.max_frame_bytes"),
            (idle_before_ping, "limits.idle_timeout_secs"),
            (bad_app, "apps"),
            (stray_inbox, "inbox_apps"),
            (bad_mqtt, "listen_mqtt"),
        ] {
            let error = config.resolve().expect_err(setting).to_string();
            assert!(error.contains(setting), "{error}");
        }
    }
}
