//! Writes that need not leave at once, gathered for a moment and handed to the NATS client
//! together.
//!
//! At a steady rate every message makes its own socket writes: the ack of a finished
//! message and its status record each wake the client's connection task, which writes them
//! and wakes nats-server to read them. Nothing waits on those two (an ack only stops a
//! redelivery `ack_wait` later; a status record is read by operators), so they can wait a
//! millisecond or two for the next messages' acks and records and leave in the same write.
//! That is what a [`Coalescer`] does: [`Coalescer::ack`] and [`Coalescer::publish`] queue
//! the write, and a task hands each gathered batch to the client in one burst, which the
//! client writes in one go.
//!
//! What must be stored before the next step (a job, an event, a dead letter) is never
//! queued here: those publishes wait for JetStream's ack as before. Nak, term and progress
//! signals are not queued either: they are rare and their timing matters.
//!
//! Memory is bounded: the queue holds at most [`CAPACITY`] writes; beyond that a write is
//! made directly, as without a coalescer. [`Coalescer::flush`] returns once everything
//! queued before it has been handed to the client and the client has flushed, so a
//! graceful shutdown loses no ack.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

/// How long the first write of a batch waits for others to join it.
pub const WINDOW: Duration = Duration::from_millis(2);

/// Writes queued at most; a write beyond this is made directly.
pub const CAPACITY: usize = 8_192;

/// The most writes handed to the client in one burst.
const BURST: usize = 1_024;

/// One deferred write.
enum Pending {
    Ack(Box<jetstream::Message>),
    Publish {
        subject: Subject,
        headers: Option<HeaderMap>,
        payload: Bytes,
        done: Option<Done>,
    },
    Flush(oneshot::Sender<()>),
}

/// Told whether the client took a published message.
pub type Done = Box<dyn FnOnce(bool) + Send>;

/// A handle to one connection's coalescing task; clones share it.
#[derive(Clone)]
pub struct Coalescer {
    queue: mpsc::Sender<Pending>,
    client: async_nats::Client,
}

impl Coalescer {
    /// Starts the task that writes batches on `client`. It ends when every handle is
    /// dropped, after writing what is queued.
    pub fn start(client: async_nats::Client) -> Self {
        let (queue, rx) = mpsc::channel(CAPACITY);
        tokio::spawn(run(client.clone(), rx));
        Coalescer { queue, client }
    }

    /// Acknowledges `message` within [`WINDOW`] (at once when the queue is full).
    pub async fn ack(&self, message: jetstream::Message) -> Result<(), async_nats::Error> {
        match self.queue.try_send(Pending::Ack(Box::new(message))) {
            Ok(()) => Ok(()),
            Err(refused) => match refused.into_inner() {
                Pending::Ack(message) => message.ack().await,
                _ => Ok(()),
            },
        }
    }

    /// Publishes `payload` on `subject` (core NATS, no JetStream ack awaited) within
    /// [`WINDOW`], or at once when the queue is full; `done` is then told whether the
    /// client took the message. Never waits for the window.
    pub async fn publish(
        &self,
        subject: Subject,
        headers: Option<HeaderMap>,
        payload: Bytes,
        done: Option<Done>,
    ) {
        let pending = Pending::Publish {
            subject,
            headers,
            payload,
            done,
        };
        if let Err(refused) = self.queue.try_send(pending) {
            write(&self.client, refused.into_inner()).await;
        }
    }

    /// Returns once every write queued before this call has been handed to the client
    /// and the client has flushed its buffer to the server.
    pub async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.queue.send(Pending::Flush(done)).await.is_ok() {
            let _ = flushed.await;
        }
        let _ = self.client.flush().await;
    }
}

async fn run(client: async_nats::Client, mut rx: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(BURST);
    loop {
        if rx.recv_many(&mut batch, BURST).await == 0 {
            return;
        }
        // Let the writes of the next moment join this batch, unless it is full already
        // or someone waits on a flush.
        let waiting = batch.iter().any(|p| matches!(p, Pending::Flush(_)));
        if batch.len() < BURST && !waiting {
            tokio::time::sleep(WINDOW).await;
            while batch.len() < BURST {
                match rx.try_recv() {
                    Ok(pending) => batch.push(pending),
                    Err(_) => break,
                }
            }
        }
        // Handed over without yielding in between: the client's connection task runs
        // once this task waits again, and writes the whole burst at once.
        for pending in batch.drain(..) {
            write(&client, pending).await;
        }
    }
}

async fn write(client: &async_nats::Client, pending: Pending) {
    match pending {
        Pending::Ack(message) => {
            if let Err(error) = message.ack().await {
                // The server redelivers after ack_wait; handlers are idempotent.
                tracing::warn!(%error, "acknowledgement failed");
            }
        }
        Pending::Publish {
            subject,
            headers,
            payload,
            done,
        } => {
            let taken = match headers {
                Some(headers) => client.publish_with_headers(subject, headers, payload).await,
                None => client.publish(subject, payload).await,
            }
            .is_ok();
            if let Some(done) = done {
                done(taken);
            }
        }
        Pending::Flush(done) => {
            let _ = client.flush().await;
            let _ = done.send(());
        }
    }
}
