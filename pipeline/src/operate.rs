//! Operator actions on the streams, used by `pushctl`: stream and consumer status, and
//! listing and replaying dead letters.
//!
//! Replay publishes each dead letter's original message back on the subject it was first
//! published on (without a `Nats-Msg-Id`, so JetStream's de-duplication window does not
//! drop it), waits for the JetStream ack, and only then deletes the dead letter — a
//! replay interrupted half-way repeats at most the letters not yet deleted.

use std::time::Duration;

use async_nats::jetstream::Context;
use base64::Engine as _;
use serde::Serialize;

use crate::contract::DeadLetter;
use crate::topology::{StreamKind, Topology};

/// One consumer's state.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerStatus {
    /// Durable name.
    pub name: String,
    /// Messages not yet delivered (lag).
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub ack_pending: usize,
    /// Redelivered at least once and still unacknowledged.
    pub redelivered: usize,
}

/// One stream's state.
#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    /// Stream name.
    pub name: String,
    /// Messages stored.
    pub messages: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// Its pushline consumers.
    pub consumers: Vec<ConsumerStatus>,
}

/// Why an operation failed.
pub type OperateError = String;

/// The state of every stream and consumer, each partition of a partitioned stream as a
/// stream of its own (`EVENTS`, `EVENTS_1`, …).
pub async fn streams(js: &Context, topology: &Topology) -> Result<Vec<StreamStatus>, OperateError> {
    let kinds = topology.consumers();
    let mut out = Vec::new();
    let every = topology
        .streams()
        .into_iter()
        .flat_map(|kind| (0..topology.partitions_of(kind)).map(move |partition| (kind, partition)));
    for (kind, partition) in every {
        let name = topology.stream_name_in(kind, partition);
        let stream = js
            .get_stream(&name)
            .await
            .map_err(|e| format!("stream {name}: {e}"))?;
        let info = stream
            .get_info()
            .await
            .map_err(|e| format!("stream {name}: {e}"))?;
        let mut consumers = Vec::new();
        for consumer in kinds.iter().filter(|c| c.stream() == kind) {
            if let Ok(info) = stream.consumer_info(&consumer.durable_name()).await {
                consumers.push(ConsumerStatus {
                    name: info.name.clone(),
                    pending: info.num_pending,
                    ack_pending: info.num_ack_pending,
                    redelivered: info.num_redelivered,
                });
            }
        }
        out.push(StreamStatus {
            name,
            messages: info.state.messages,
            bytes: info.state.bytes,
            consumers,
        });
    }
    Ok(out)
}

/// Which dead letters to act on.
#[derive(Debug, Clone, Default)]
pub struct DeadFilter {
    /// Only this stage (`fanout`, `prune`, a provider's name).
    pub stage: Option<String>,
    /// Only this reason.
    pub reason: Option<String>,
    /// Only letters dead for at least this long.
    pub older_than: Option<Duration>,
    /// Only letters dead for at most this long.
    pub newer_than: Option<Duration>,
    /// At most this many.
    pub limit: Option<usize>,
}

impl DeadFilter {
    fn matches(&self, letter: &DeadLetter, now_ms: u64) -> bool {
        let age = Duration::from_millis(now_ms.saturating_sub(letter.dead_at_ms));
        self.stage.as_ref().is_none_or(|s| *s == letter.stage)
            && self.reason.as_ref().is_none_or(|r| *r == letter.reason)
            && self.older_than.is_none_or(|d| age >= d)
            && self.newer_than.is_none_or(|d| age <= d)
    }
}

/// A stored dead letter.
#[derive(Debug, Clone, Serialize)]
pub struct DeadEntry {
    /// Its sequence in `DEAD`.
    pub sequence: u64,
    /// The letter.
    pub letter: DeadLetter,
}

/// The dead letters matching `filter`, oldest first.
pub async fn dead_letters(
    js: &Context,
    topology: &Topology,
    filter: &DeadFilter,
) -> Result<Vec<DeadEntry>, OperateError> {
    let name = topology.stream_name(StreamKind::Dead);
    let stream = js
        .get_stream(&name)
        .await
        .map_err(|e| format!("stream {name}: {e}"))?;
    let info = stream
        .get_info()
        .await
        .map_err(|e| format!("stream {name}: {e}"))?;
    let now = crate::contract::now_ms();
    let mut out = Vec::new();
    if info.state.messages == 0 {
        return Ok(out);
    }
    for sequence in info.state.first_sequence..=info.state.last_sequence {
        if filter.limit.is_some_and(|limit| out.len() >= limit) {
            break;
        }
        let Ok(message) = stream.get_raw_message(sequence).await else {
            continue; // deleted (replayed) letters leave gaps
        };
        let Ok(letter) = serde_json::from_slice::<DeadLetter>(&message.payload) else {
            continue;
        };
        if filter.matches(&letter, now) {
            out.push(DeadEntry { sequence, letter });
        }
    }
    Ok(out)
}

/// Publishes each entry's original message back to its subject, then deletes the entry.
/// Returns how many were replayed.
pub async fn replay(
    js: &Context,
    topology: &Topology,
    entries: &[DeadEntry],
) -> Result<usize, OperateError> {
    let name = topology.stream_name(StreamKind::Dead);
    let stream = js
        .get_stream(&name)
        .await
        .map_err(|e| format!("stream {name}: {e}"))?;
    let mut replayed = 0;
    for entry in entries {
        let letter = &entry.letter;
        let body = match (&letter.message, &letter.message_base64) {
            (Some(raw), _) => raw.get().as_bytes().to_vec(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("dead letter {}: bad base64: {e}", entry.sequence))?,
            (None, None) => {
                return Err(format!("dead letter {} carries no message", entry.sequence));
            }
        };
        // A replay interrupted before the letter was deleted, and run again, stores the
        // message once.
        crate::nats::publish_stored(
            js,
            &letter.subject,
            &format!("replay:{}", entry.sequence),
            None,
            &body.into(),
        )
        .await
        .map_err(|e| format!("dead letter {}: publish: {e}", entry.sequence))?;
        stream.delete_message(entry.sequence).await.map_err(|e| {
            format!(
                "dead letter {}: replayed but not deleted: {e}",
                entry.sequence
            )
        })?;
        replayed += 1;
    }
    Ok(replayed)
}
