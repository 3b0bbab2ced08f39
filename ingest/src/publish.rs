//! Publishing events to `EVENTS` and waiting for the JetStream ack, within a bound.
//!
//! A webhook is answered 200 only once JetStream has stored its event. When NATS is
//! disconnected the publisher fails at once; when it is slow, after
//! `nats.publish_timeout_ms`. Either way the webhook gets 503 and the producer retries;
//! a retry of an event that did reach the stream is de-duplicated by `Nats-Msg-Id`.

use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use pipeline::metrics::Metrics;

/// Header carrying the producer's trace id through NATS.
pub const TRACE_HEADER: &str = "Pushline-Trace-Id";

/// Why an event was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The client is not connected to any server.
    #[error("NATS is not connected")]
    Disconnected,
    /// No ack within the bound.
    #[error("no JetStream ack within {0:?}")]
    Timeout(Duration),
    /// JetStream refused or the request failed.
    #[error("JetStream publish failed: {0}")]
    Failed(String),
}

/// The result of a stored publish.
#[derive(Debug, Clone, Copy)]
pub struct Stored {
    /// JetStream had already stored a message with this id (a redelivered webhook).
    pub duplicate: bool,
}

/// Publishes events with de-duplication ids and bounded waits.
#[derive(Clone)]
pub struct Publisher {
    client: async_nats::Client,
    js: Context,
    timeout: Duration,
    stream_label: String,
    metrics: Metrics,
}

impl Publisher {
    /// A publisher on `client`; `stream_label` names the stream in metrics.
    pub fn new(
        client: async_nats::Client,
        timeout: Duration,
        stream_label: String,
        metrics: Metrics,
    ) -> Self {
        let js = pipeline::topology::jetstream(client.clone());
        Publisher {
            client,
            js,
            timeout,
            stream_label,
            metrics,
        }
    }

    /// Publishes `payload` on `subject` with `Nats-Msg-Id: msg_id` and waits for the ack.
    pub async fn publish(
        &self,
        subject: String,
        msg_id: &str,
        trace_id: Option<&str>,
        payload: Bytes,
    ) -> Result<Stored, PublishError> {
        if !pipeline::nats::is_connected(&self.client) {
            return Err(PublishError::Disconnected);
        }
        let mut message = PublishMessage::build().payload(payload).message_id(msg_id);
        if let Some(trace) = trace_id {
            message = message.header(TRACE_HEADER, trace);
        }
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, async {
            let ack = self
                .js
                .send_publish(subject, message)
                .await
                .map_err(|e| PublishError::Failed(e.to_string()))?;
            ack.await.map_err(|e| PublishError::Failed(e.to_string()))
        })
        .await
        .map_err(|_| PublishError::Timeout(self.timeout))??;
        self.metrics
            .publish_duration
            .with_label_values(&[&self.stream_label])
            .observe(started.elapsed().as_secs_f64());
        Ok(Stored {
            duplicate: result.duplicate,
        })
    }

    /// Readiness: connected, and the stream answers.
    pub async fn check(&self, stream: &str) -> Result<(), String> {
        pipeline::nats::check_stream(&self.client, stream).await
    }
}
