//! Choosing a partition for each message, and routing around one that stalls.
//!
//! A publisher to a partitioned stream ([`crate::topology`]) keeps a [`Partitions`]: a
//! cheap health view, one "stalled until" instant per partition. A message's first
//! choice is its key's hash modulo the partitions, so a message published again under
//! the same id (a sender's retry) lands in the same stream and JetStream's duplicate
//! window drops it. [`Router::publish`] tries the partitions in [`order`]: healthy ones
//! first, from the first choice on ([`Router::publish`]); each try waits at most the ack budget
//! (`nats.partition_ack_budget_ms`) when another partition is left to try. A partition
//! that does not acknowledge in time, or answers with an error, is marked stalled for
//! [`STALL_HOLD`]; so is one whose stream or consumer [`watch`] finds without a leader,
//! every time it looks. A mark is never cleared early: it runs out [`STALL_HOLD`] after
//! the last stall seen, which leaves the readers of a partition whose leader was just
//! elected time to pull from it again before publishers send to it.
//!
//! | try on partition `p` | then |
//! |---|---|
//! | acked (proof of storage, [`crate::nats::publish_stored`]) | done |
//! | no ack within the budget, or an error | mark `p` stalled; try the next partition in [`order`] |
//! | every partition tried | the last error: the caller retries within its own budget |
//!
//! A message whose timed-out publish was stored after all is then stored twice, in two
//! partitions, under one id: its readers de-duplicate it (fan-out by event id,
//! dispatchers by job, `docs/contract.md`).
//!
//! With one partition there is nowhere else to go: the one try waits as long as the
//! caller allows, as before partitions existed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::publish::PublishAck;

use crate::nats::StoreError;
use crate::topology::{ConsumerKind, Topology};

/// How long a partition that stalled is passed over (unless every other one is too)
/// after the last stall seen.
pub const STALL_HOLD: Duration = Duration::from_secs(2);

/// How often [`watch`] asks the server about every partition.
pub const WATCH_EVERY: Duration = Duration::from_millis(500);

/// A publisher's view of which partitions of one stream are healthy; cheap to clone.
#[derive(Debug, Clone)]
pub struct Partitions {
    stalled_until_ms: Arc<[AtomicU64]>,
}

impl Partitions {
    /// `count` partitions (at least 1), all healthy.
    pub fn new(count: usize) -> Self {
        Partitions {
            stalled_until_ms: (0..count.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// How many partitions there are.
    pub fn count(&self) -> usize {
        self.stalled_until_ms.len()
    }

    /// Marks `partition` stalled for [`STALL_HOLD`] from now.
    pub fn stalled(&self, partition: usize) {
        let until = now_ms() + STALL_HOLD.as_millis() as u64;
        self.stalled_until_ms[partition].store(until, Ordering::Relaxed);
    }

    /// Whether `partition` is passed over right now.
    pub fn is_stalled(&self, partition: usize) -> bool {
        self.stalled_until_ms[partition].load(Ordering::Relaxed) > now_ms()
    }

    /// The partitions to try for a message whose key is `key`, in order ([`order`]).
    pub fn order_for(&self, key: &str) -> Vec<usize> {
        let now = now_ms();
        let stalled: Vec<bool> = self
            .stalled_until_ms
            .iter()
            .map(|until| until.load(Ordering::Relaxed) > now)
            .collect();
        order(first_choice(key, self.count()), &stalled)
    }
}

/// A key's first-choice partition out of `count`: a hash that does not change between
/// processes or versions (FNV-1a), so every replica sends one message id to one stream.
pub fn first_choice(key: &str, count: usize) -> usize {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash % count.max(1) as u64) as usize
}

/// Every partition once: the healthy ones from `first` on (wrapping), then the stalled
/// ones in the same order (a stalled partition is still better than none).
pub fn order(first: usize, stalled: &[bool]) -> Vec<usize> {
    let count = stalled.len();
    let ring = (0..count).map(|i| (first + i) % count);
    let healthy = ring.clone().filter(|p| !stalled[*p]);
    let rest = ring.filter(|p| stalled[*p]);
    healthy.chain(rest).collect()
}

/// A publisher's routing over the partitions of one stream; cheap to clone.
#[derive(Debug, Clone)]
pub struct Router {
    js: Context,
    partitions: Partitions,
    ack_budget: Duration,
    reroutes: Option<prometheus::IntCounter>,
    /// `pushline_partition_leader_moves_total` and the `stream` label, for [`watch`].
    leader_moves: Option<(prometheus::IntCounterVec, String)>,
}

impl Router {
    /// Routes over `partitions` on `js`, each try bounded by `ack_budget` while another
    /// partition is left.
    pub fn new(js: Context, partitions: Partitions, ack_budget: Duration) -> Self {
        Router {
            js,
            partitions,
            ack_budget,
            reroutes: None,
            leader_moves: None,
        }
    }

    /// The same router counting the messages it sends around a stalled partition in
    /// `pushline_partition_reroutes_total{stream}`, and its watch's leader moves in
    /// `pushline_partition_leader_moves_total{stream,leader,outcome}`.
    pub fn counted(mut self, metrics: &crate::metrics::Metrics, stream: &str) -> Self {
        self.reroutes = Some(metrics.partition_reroutes.with_label_values(&[stream]));
        // Each series from zero, so the first failed move is an increase too.
        for leader in ["stream", "consumer"] {
            for outcome in ["moved", "failed"] {
                metrics
                    .partition_leader_moves
                    .with_label_values(&[stream, leader, outcome]);
            }
        }
        self.leader_moves = Some((metrics.partition_leader_moves.clone(), stream.to_owned()));
        self
    }

    /// Its health view.
    pub fn partitions(&self) -> &Partitions {
        &self.partitions
    }

    /// Publishes `payload` with `Nats-Msg-Id: msg_id` on the subject `subject_of` gives
    /// for a partition, trying partitions in [`Partitions::order_for`] order (keyed by
    /// `msg_id`) as the module documentation says: each try bounded by the ack budget when
    /// there is another partition to try, and by `last_bound` for the last one. Answers
    /// the partition that stored it and the ack.
    pub async fn publish(
        &self,
        subject_of: impl Fn(usize) -> String,
        msg_id: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: &bytes::Bytes,
        last_bound: Duration,
    ) -> Result<(usize, PublishAck), StoreError> {
        let order = self.partitions.order_for(msg_id);
        let mut last = None;
        for (i, partition) in order.iter().copied().enumerate() {
            let bound = if i + 1 < order.len() {
                self.ack_budget.min(last_bound)
            } else {
                last_bound
            };
            let subject = subject_of(partition);
            let publish = crate::nats::publish_stored(&self.js, &subject, msg_id, headers, payload);
            let error = match tokio::time::timeout(bound, publish).await {
                Ok(Ok(ack)) => {
                    if partition != first_choice(msg_id, order.len()) {
                        if let Some(reroutes) = &self.reroutes {
                            reroutes.inc();
                        }
                    }
                    return Ok((partition, ack));
                }
                Ok(Err(error)) => error,
                Err(_) => StoreError::NoAck(bound),
            };
            if order.len() > 1 {
                tracing::info!(partition, %error, "partition stalled; publishing to another one");
                self.partitions.stalled(partition);
            }
            last = Some(error);
        }
        Err(last.unwrap_or_else(|| StoreError::NoStream("no partition".into())))
    }
}

/// The routers of every provider's push stream, for the stages that publish push jobs
/// (fan-out, released pushes); cheap to clone.
#[derive(Debug, Clone)]
pub struct PushRouters {
    topology: Topology,
    routers: Arc<std::collections::HashMap<&'static str, Router>>,
}

impl PushRouters {
    /// A router for each provider's push stream of `topology`.
    pub fn new(
        js: &Context,
        topology: &Topology,
        ack_budget: Duration,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        let routers = topology
            .providers()
            .iter()
            .map(|provider| {
                let kind = crate::topology::StreamKind::Push(provider);
                let count = topology.partitions_of(kind);
                let router = Router::new(js.clone(), Partitions::new(count), ack_budget)
                    .counted(metrics, &topology.stream_name(kind));
                (*provider, router)
            })
            .collect();
        PushRouters {
            topology: topology.clone(),
            routers: Arc::new(routers),
        }
    }

    /// Publishes the push job `payload` for `provider` in `environment` under `msg_id`
    /// ([`Router::publish`]).
    pub async fn publish(
        &self,
        (provider, environment): (&str, crate::contract::Environment),
        msg_id: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: &bytes::Bytes,
        last_bound: Duration,
    ) -> Result<PublishAck, StoreError> {
        let subject_of = |partition| {
            self.topology
                .push_subject_in(partition, provider, environment)
        };
        match self.routers.get(provider) {
            Some(router) => router
                .publish(subject_of, msg_id, headers, payload, last_bound)
                .await
                .map(|(_, ack)| ack),
            None => Err(StoreError::NoStream(format!(
                "no push stream for {provider}"
            ))),
        }
    }

    /// Keeps every provider's health view current until `shutdown` ([`watch`]).
    pub async fn watch(&self, bound: Duration, shutdown: tokio_util::sync::CancellationToken) {
        let watches = self.routers.iter().map(|(provider, router)| {
            watch(
                router,
                self.topology.clone(),
                ConsumerKind::Dispatch(provider),
                bound,
                shutdown.clone(),
            )
        });
        futures::future::join_all(watches).await;
    }
}

/// Keeps `router`'s partitions (of the stream `consumer` reads) current until `shutdown`:
/// every [`WATCH_EVERY`], each partition whose stream or consumer does not answer an info
/// request with a leader within `bound` is marked stalled. The same looks balance the
/// partitions' leaders over the cluster's nodes ([`crate::balance`]): once every
/// partition has been settled for [`crate::balance::SETTLE`], a look may move one leader
/// (counted when the router is [`Router::counted`]). Does nothing with one partition.
pub async fn watch(
    router: &Router,
    topology: Topology,
    consumer: ConsumerKind,
    bound: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let (js, partitions) = (&router.js, &router.partitions);
    if partitions.count() < 2 {
        return;
    }
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Whether the server takes a named replica (until a step-down says otherwise).
    let named = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let jitter = crate::balance::SETTLE_JITTER.mul_f64(rand::random::<f64>());
    let mut gate =
        crate::balance::Gate::new(std::time::Instant::now(), crate::balance::SETTLE + jitter);
    // The move in flight, answered by its task.
    let mut moving: Option<tokio::task::JoinHandle<bool>> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(handle) = moving.take_if(|handle| handle.is_finished()) {
            if handle.await.unwrap_or(false) {
                gate.moved(std::time::Instant::now());
            } else {
                gate.failed(std::time::Instant::now());
            }
        }
        let checks = (0..partitions.count()).map(|partition| {
            let stream = topology.stream_name_in(consumer.stream(), partition);
            let durable = consumer.durable_name();
            async move {
                let look = tokio::time::timeout(bound, look(js, &stream, &durable)).await;
                look.unwrap_or(Look {
                    answered: false,
                    led: false,
                    placement: None,
                })
            }
        });
        let looks = futures::future::join_all(checks).await;
        for (partition, look) in looks.iter().enumerate() {
            if look.led {
                continue;
            }
            if !partitions.is_stalled(partition) {
                tracing::info!(partition, stream = %topology.stream_name_in(consumer.stream(), partition), "partition without a leader; publishing around it");
            }
            partitions.stalled(partition);
        }
        // Balancing decides on a full view (a cluster, every look answered): a look that
        // went unanswered decides nothing; one that found an election restarts the wait.
        if looks.iter().any(|look| look.answered && !look.led) {
            gate.unsettled(std::time::Instant::now());
            continue;
        }
        let Some(placements) = looks
            .into_iter()
            .map(|look| look.placement)
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        if !gate.observe(std::time::Instant::now(), &placements) || shutdown.is_cancelled() {
            continue;
        }
        let Some(chosen) = crate::balance::next_move(&placements, named.load(Ordering::Relaxed))
        else {
            continue;
        };
        let (partition, durable, to, leader) = match &chosen {
            crate::balance::Move::Stream { partition, to } => (*partition, None, to, "stream"),
            crate::balance::Move::Consumer { partition, to } => {
                (*partition, Some(consumer.durable_name()), to, "consumer")
            }
        };
        // A partition whose leader moves is passed over like a stalled one: its publishes
        // would wait out the hand-over, and its readers must pull from the new leader.
        partitions.stalled(partition);
        let stream = topology.stream_name_in(consumer.stream(), partition);
        let (js, to, named) = (js.clone(), to.clone(), named.clone());
        let counted = router.leader_moves.clone();
        let count = move |outcome: &str| {
            if let Some((moves, stream)) = &counted {
                moves.with_label_values(&[stream, leader, outcome]).inc();
            }
        };
        gate.moving();
        // On a task of its own: the looks go on while the leader steps down.
        moving = Some(tokio::spawn(async move {
            let bound = crate::balance::STEP_DOWN_WITHIN;
            match crate::balance::step_down(&js, &stream, durable.as_deref(), &to, bound).await {
                Ok(chosen) => {
                    named.store(chosen == crate::balance::Chosen::Named, Ordering::Relaxed);
                    tracing::info!(%stream, consumer = ?durable, %to, ?chosen, "moved a leader to balance the partitions");
                    count("moved");
                    true
                }
                Err(error) => {
                    tracing::warn!(%stream, consumer = ?durable, %to, %error, "cannot move a leader; backing off");
                    count("failed");
                    false
                }
            }
        }));
    }
}

/// One look at a partition.
struct Look {
    /// Whether the stream's info request was answered (with a leader or without one).
    answered: bool,
    /// Whether its stream and consumer both answered with a leader (a single server's
    /// answers carry no cluster: it leads them).
    led: bool,
    /// Where they are led, on a cluster.
    placement: Option<crate::balance::Partition>,
}

/// Looks at the stream `stream` and its consumer `durable`.
async fn look(js: &Context, stream: &str, durable: &str) -> Look {
    let mut look = Look {
        answered: false,
        led: false,
        placement: None,
    };
    let Ok(handle) = js.get_stream_no_info(stream).await else {
        return look;
    };
    let Ok(info) = handle.get_info().await else {
        return look;
    };
    let stream_group = crate::balance::Group::of(info.cluster.as_ref());
    if stream_group.as_ref().is_some_and(|g| g.leader.is_none()) {
        look.answered = true;
        return look;
    }
    let Ok(info) = handle.consumer_info(durable).await else {
        return look;
    };
    look.answered = true;
    let consumer_group = crate::balance::Group::of(info.cluster.as_ref());
    look.led = consumer_group.as_ref().is_none_or(|g| g.leader.is_some());
    look.placement = stream_group
        .zip(consumer_group)
        .map(|(stream, consumer)| crate::balance::Partition { stream, consumer });
    look
}

fn now_ms() -> u64 {
    crate::contract::now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_partitions_come_first_from_the_first_choice_on() {
        assert_eq!(order(1, &[false, false, false]), [1, 2, 0]);
        assert_eq!(order(1, &[false, true, false]), [2, 0, 1]);
        assert_eq!(order(0, &[true, true, false]), [2, 0, 1]);
        assert_eq!(order(0, &[false]), [0]);
        assert_eq!(order(0, &[true]), [0], "a stalled partition beats none");
    }

    #[test]
    fn one_key_always_picks_one_partition_and_keys_spread() {
        assert_eq!(first_choice("event-1", 3), first_choice("event-1", 3));
        assert_eq!(first_choice("anything", 1), 0);
        let mut seen = [0usize; 3];
        for i in 0..3_000 {
            seen[first_choice(&format!("event-{i}"), 3)] += 1;
        }
        assert!(seen.iter().all(|n| (800..1_200).contains(n)), "{seen:?}");
    }

    #[test]
    fn a_stalled_partition_is_passed_over() {
        let partitions = Partitions::new(3);
        let key = "k";
        let first = first_choice(key, 3);
        assert_eq!(partitions.order_for(key)[0], first);
        partitions.stalled(first);
        assert!(partitions.is_stalled(first));
        assert_ne!(partitions.order_for(key)[0], first);
        assert_eq!(*partitions.order_for(key).last().unwrap(), first);
        assert_eq!(partitions.order_for(key).len(), 3);
    }
}
