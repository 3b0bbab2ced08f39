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
    connect_with(config, name, async_nats::ConnectOptions::new()).await
}

/// Like [`connect`], starting from `options` (a subscription capacity, say).
pub async fn connect_with(
    config: &NatsConfig,
    name: &str,
    options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, ConnectError> {
    let mut options = options
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
/// request) within 2 s, on every partition ([`crate::topology`]). A partition that does
/// not answer in time (its leader is being elected) is tolerated while another partition
/// of the same stream answers, since publishers and readers go on around it; one the
/// server says is missing is not.
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
    for kind in streams {
        let asks = topology.stream_names(*kind).into_iter().map(|name| {
            let js = &js;
            async move {
                let answer = tokio::time::timeout(Duration::from_secs(2), js.get_stream(&name))
                    .await
                    .map(|found| found.map(|_| ()).map_err(|e| e.to_string()));
                (name, Answer::of(answer))
            }
        });
        partitions_ready(futures::future::join_all(asks).await)?;
    }
    for kind in consumers {
        let durable = kind.durable_name();
        let asks = topology
            .stream_names(kind.stream())
            .into_iter()
            .map(|stream| {
                let (js, durable) = (&js, &durable);
                async move {
                    let ask = async {
                        js.get_stream_no_info(&stream)
                            .await
                            .map_err(|e| e.to_string())?
                            .consumer_info(durable)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    };
                    let answer = tokio::time::timeout(Duration::from_secs(2), ask).await;
                    (format!("{stream}/{durable}"), Answer::of(answer))
                }
            });
        let answers = futures::future::join_all(asks).await;
        partitions_ready(answers)
            .map_err(|e| e.replace("JetStream stream", "JetStream consumer"))?;
    }
    Ok(())
}

/// What one partition answered a readiness question.
#[derive(Debug)]
enum Answer {
    /// It exists and answered.
    Answered,
    /// The server refused (it is missing, say).
    Refused(String),
    /// No answer in time (its leader is being elected).
    Silent,
}

impl Answer {
    fn of<E>(answer: Result<Result<(), String>, E>) -> Answer {
        match answer {
            Ok(Ok(())) => Answer::Answered,
            Ok(Err(error)) => Answer::Refused(error),
            Err(_) => Answer::Silent,
        }
    }
}

/// The readiness rule over one stream's (or consumer's) partitions.
fn partitions_ready(answers: Vec<(String, Answer)>) -> Result<(), String> {
    let mut answered = false;
    let mut silent = Vec::new();
    for (name, answer) in answers {
        match answer {
            Answer::Answered => answered = true,
            Answer::Refused(error) => return Err(format!("JetStream stream {name}: {error}")),
            Answer::Silent => silent.push(name),
        }
    }
    match (answered, silent.first()) {
        (false, Some(name)) => Err(format!("JetStream stream {name}: no answer within 2s")),
        _ => Ok(()),
    }
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
    fn a_duplicate_without_a_sequence_proves_nothing() {
        let ack = |sequence, duplicate| async_nats::jetstream::publish::PublishAck {
            stream: "EVENTS".into(),
            sequence,
            domain: String::new(),
            duplicate,
            value: None,
        };
        assert!(ack_proves_stored(&ack(7, false)));
        assert!(
            ack_proves_stored(&ack(7, true)),
            "a duplicate of a stored message"
        );
        assert!(
            !ack_proves_stored(&ack(0, true)),
            "staged, maybe never stored"
        );
    }

    #[test]
    fn a_partition_electing_a_leader_leaves_the_stream_ready_but_a_missing_one_does_not() {
        let ok = |name: &str| (name.to_owned(), Answer::Answered);
        let silent = |name: &str| (name.to_owned(), Answer::Silent);
        let missing = |name: &str| (name.to_owned(), Answer::Refused("stream not found".into()));
        assert!(partitions_ready(vec![ok("E"), silent("E_1"), ok("E_2")]).is_ok());
        let none = partitions_ready(vec![silent("E"), silent("E_1")]).expect_err("none answers");
        assert!(none.contains("E: no answer within 2s"), "{none}");
        let gone = partitions_ready(vec![ok("E"), missing("E_1")]).expect_err("one is missing");
        assert!(gone.contains("E_1: stream not found"), "{gone}");
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

/// Why [`publish_stored`] could not store a message.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The publish, or waiting for its ack, failed; async-nats's error keeps its kind
    /// (stream not found, timed out, broken pipe, …).
    #[error("JetStream publish failed: {0}")]
    Publish(#[source] async_nats::jetstream::context::PublishError),
    /// Every id tried was answered as an unconfirmed duplicate.
    #[error("JetStream kept answering `duplicate` without a sequence for `{0}`")]
    Unconfirmed(String),
    /// No partition acknowledged within its bound ([`crate::partition`]).
    #[error("no ack within {0:?}")]
    NoAck(std::time::Duration),
    /// Nowhere to publish it: no partition, or no push stream for the provider.
    #[error("no stream to publish to: {0}")]
    NoStream(String),
}

impl StoreError {
    /// Bounded label for metrics and logs.
    pub fn metric_reason(&self) -> &'static str {
        use async_nats::jetstream::context::PublishErrorKind as Kind;
        match self {
            StoreError::Publish(error) => match error.kind() {
                Kind::StreamNotFound => "stream_not_found",
                Kind::WrongLastMessageId | Kind::WrongLastSequence => "wrong_last",
                Kind::TimedOut => "timeout",
                Kind::BrokenPipe => "broken_pipe",
                Kind::MaxAckPending => "max_ack_pending",
                Kind::MaxPayloadExceeded => "max_payload",
                Kind::Other => "other",
            },
            StoreError::Unconfirmed(_) => "unconfirmed",
            StoreError::NoAck(_) => "timeout",
            StoreError::NoStream(_) => "stream_not_found",
        }
    }
}

/// How many derived ids [`publish_stored`] tries after an unconfirmed duplicate.
const DERIVED_IDS: u32 = 3;

/// Whether an ack proves the message is in the stream. nats-server before 2.11 stages a
/// message id with sequence 0 when a publish is proposed; when a leader election drops
/// the proposal, every later publish with that id is answered `duplicate` with sequence 0
/// until the duplicate window has passed, although nothing was stored (fixed upstream in
/// nats-server 2.11). Such an answer is no proof.
pub fn ack_proves_stored(ack: &async_nats::jetstream::publish::PublishAck) -> bool {
    !(ack.duplicate && ack.sequence == 0)
}

/// Publishes `payload` with `Nats-Msg-Id: msg_id` (and `headers`) and waits for the ack,
/// until the ack proves the message is stored ([`ack_proves_stored`]). After an
/// unconfirmed duplicate it publishes again under a derived id (`<msg_id>~1`, `~2`, …):
/// if the first copy was stored after all, the stream then holds the message twice, which
/// is what every consumer already handles (events fan out to the same job ids, and
/// dispatchers never send a delivered job again), while a message lost to the election
/// would be a call that never rings.
pub async fn publish_stored(
    js: &async_nats::jetstream::Context,
    subject: &str,
    msg_id: &str,
    headers: Option<&async_nats::HeaderMap>,
    payload: &bytes::Bytes,
) -> Result<async_nats::jetstream::publish::PublishAck, StoreError> {
    use async_nats::jetstream::message::PublishMessage;
    let mut id = std::borrow::Cow::Borrowed(msg_id);
    for derived in 1..=DERIVED_IDS + 1 {
        let mut message = PublishMessage::build().payload(payload.clone());
        if let Some(headers) = headers {
            message = message.headers(headers.clone());
        }
        let ack = js
            .send_publish(subject.to_owned(), message.message_id(id.as_ref()))
            .await
            .map_err(StoreError::Publish)?
            .await
            .map_err(StoreError::Publish)?;
        if ack_proves_stored(&ack) {
            return Ok(ack);
        }
        tracing::warn!(msg_id = %id, "JetStream answered an unconfirmed duplicate; publishing under a derived id");
        id = format!("{msg_id}~{derived}").into();
    }
    Err(StoreError::Unconfirmed(msg_id.to_owned()))
}
