//! Log setup: `tracing` with JSON or pretty output and an env-style filter.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the global subscriber. `RUST_LOG`, when set, wins over the configured filter.
/// Calling it twice is harmless (the second call does nothing), so tests may call it.
pub fn init(config: &TelemetryConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// A short, stable, non-reversible tag for a secret-ish value such as a device token,
/// for logs: the first 12 hex digits of its SHA-256.
pub fn token_tag(token: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(token.as_bytes());
    hex::encode(&digest[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_tag_is_short_and_hides_the_token() {
        let tag = token_tag("abcdef0123456789");
        assert_eq!(tag.len(), 12);
        assert!(!tag.contains("abcdef0123"));
        assert_eq!(tag, token_tag("abcdef0123456789"));
    }
}
