//! Spreading the leaders of a partitioned stream over the cluster's nodes.
//!
//! A partition is worth having only if a node's death stalls no more than its share of
//! them. The cluster does not see to that: nats-server places each new stream's and
//! consumer's leader where it likes (the drills saw all three partitions of `EVENTS` led
//! by one node, whose `kill -9` then stalled every partition for the whole election, 3.6 s
//! on nats-server 2.15), and after a node comes back it leads nothing until something
//! moves leaders to it. So the publisher that watches a stream's partitions
//! ([`crate::partition::watch`]) also balances them, one leader move at a time, by asking
//! the current leader to step down in favour of a chosen replica (`preferred`
//! placement; a server that does not know it picks a replica itself, and the next look
//! corrects that).
//!
//! [`next_move`] is the decision, from one look at every partition:
//!
//! | what the look finds | move |
//! |---|---|
//! | a partition whose stream or consumer has no leader, or a replica not current | none: an election or a catch-up is under way; let it finish |
//! | one node leads at least two more partitions' streams than another | that node's first partition whose current replicas include a node leading fewest: its stream, to that node |
//! | a partition whose consumer is led elsewhere than its stream (and the stream's leader is a current replica of the consumer), where the server takes a named replica | that consumer, to its stream's leader |
//! | where it does not: one node leads at least two more partitions' consumers than another | that node's first partition's consumer, to a node leading fewest |
//! | otherwise | none |
//!
//! Streams first, then each consumer beside its stream, so a node's death takes whole
//! partitions (stream and reader together) and no more than its share of them. A server
//! that does not take a named replica (nats-server before 2.11) picks one itself, which
//! lands a consumer beside its stream only by chance (on 2.9.10 one consumer was moved
//! eight times in 12 s after a node came back): there the consumers are spread on their
//! own, like the streams, and a node's death may stall its share of streams and another
//! share of consumers. The
//! watch moves at most one leader at a time ([`Gate`]): only after every partition has
//! had the same leaders, every replica current, for [`SETTLE`] plus a jitter of the
//! watch's own; never while its previous move is unanswered; and after a failed move
//! only once a back-off has passed. Several replicas of the publishers each run a watch:
//! a move by one changes the leaders the others see, which restarts their wait.

use std::time::Duration;

use async_nats::jetstream::Context;

/// How long a step-down may take to be answered (nats-server 2.9 answers once the new
/// leader is elected, which takes longer than a publish's ack budget on a busy machine).
pub const STEP_DOWN_WITHIN: Duration = Duration::from_secs(2);

/// How long every partition must have had the same leaders, every replica current,
/// before a leader is moved (each watch adds a jitter of up to [`SETTLE_JITTER`]).
pub const SETTLE: Duration = Duration::from_secs(2);

/// The most a watch adds to [`SETTLE`], chosen once per watch, so that replicas of the
/// publishers seeing the same cluster do not decide the same move in the same look.
pub const SETTLE_JITTER: Duration = Duration::from_secs(1);

/// The longest back-off after failed moves (it doubles from one second per failure).
pub const MAX_BACK_OFF: Duration = Duration::from_secs(60);

/// When a watch may decide a move: a pure state machine over the looks, with the time
/// passed in.
#[derive(Debug)]
pub struct Gate {
    settle: Duration,
    unsettled_at: std::time::Instant,
    leaders: Option<Vec<(Option<String>, Option<String>)>>,
    moving: bool,
    back_off_until: Option<std::time::Instant>,
    failures: u32,
}

impl Gate {
    /// A gate waiting `settle` (with its jitter) from `now`; one that starts on a settled
    /// cluster may decide after that.
    pub fn new(now: std::time::Instant, settle: Duration) -> Self {
        Gate {
            settle,
            unsettled_at: now,
            leaders: None,
            moving: false,
            back_off_until: None,
            failures: 0,
        }
    }

    /// A look found a partition without a leader (an election): the wait starts again.
    pub fn unsettled(&mut self, now: std::time::Instant) {
        self.unsettled_at = now;
    }

    /// A full view of the partitions: whether a move may be decided now. The wait starts
    /// again when a group is not settled or any leader differs from the last view (an
    /// election, or another replica's move).
    pub fn observe(&mut self, now: std::time::Instant, partitions: &[Partition]) -> bool {
        let leaders: Vec<_> = partitions
            .iter()
            .map(|p| (p.stream.leader.clone(), p.consumer.leader.clone()))
            .collect();
        if !partitions.iter().all(Partition::settled)
            || self.leaders.as_ref().is_some_and(|last| *last != leaders)
        {
            self.unsettled_at = now;
        }
        self.leaders = Some(leaders);
        !self.moving
            && self.back_off_until.is_none_or(|until| now >= until)
            && now.saturating_duration_since(self.unsettled_at) >= self.settle
    }

    /// A move was decided: nothing more until it is answered.
    pub fn moving(&mut self) {
        self.moving = true;
    }

    /// The move was answered: the wait starts again (the move shows in the next looks).
    pub fn moved(&mut self, now: std::time::Instant) {
        self.moving = false;
        self.failures = 0;
        self.back_off_until = None;
        self.unsettled_at = now;
    }

    /// The move failed: no move before a back-off of 1 s doubling per failure, at most
    /// [`MAX_BACK_OFF`].
    pub fn failed(&mut self, now: std::time::Instant) {
        self.moving = false;
        let back_off = Duration::from_secs(1u64 << self.failures.min(6)).min(MAX_BACK_OFF);
        self.failures = self.failures.saturating_add(1);
        self.back_off_until = now.checked_add(back_off);
        self.unsettled_at = now;
    }
}

/// Where one Raft group (a partition's stream, or its consumer) is led, and which of its
/// other replicas are current.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    /// The leader's server name, when it has one.
    pub leader: Option<String>,
    /// The replicas other than the leader that are current (caught up and online).
    pub current: Vec<String>,
    /// Whether a replica other than the leader is behind or offline.
    pub lagging: bool,
}

impl Group {
    /// The group as an info request describes it (`None`: a single server, which leads
    /// everything).
    pub fn of(cluster: Option<&async_nats::jetstream::stream::ClusterInfo>) -> Option<Group> {
        let cluster = cluster?;
        Some(Group {
            leader: cluster.leader.clone().filter(|l| !l.is_empty()),
            current: cluster
                .replicas
                .iter()
                .filter(|r| r.current && !r.offline)
                .map(|r| r.name.clone())
                .collect(),
            lagging: cluster.replicas.iter().any(|r| !r.current || r.offline),
        })
    }

    fn settled(&self) -> bool {
        self.leader.is_some() && !self.lagging
    }
}

/// One partition: its stream's group and its consumer's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Partition {
    /// The stream.
    pub stream: Group,
    /// The durable consumer the watching publisher cares about.
    pub consumer: Group,
}

impl Partition {
    /// Whether both groups have a leader and every replica is current.
    pub fn settled(&self) -> bool {
        self.stream.settled() && self.consumer.settled()
    }
}

/// A leader to move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Move {
    /// Partition `partition`'s stream, to the server `to`.
    Stream {
        /// The partition.
        partition: usize,
        /// The server to lead it.
        to: String,
    },
    /// Partition `partition`'s consumer, to the server `to`.
    Consumer {
        /// The partition.
        partition: usize,
        /// The server to lead it.
        to: String,
    },
}

/// The one leader move that brings `partitions` closer to balanced, if any (the table
/// in the module documentation); consumers are moved only when `named` (the server
/// takes a named replica).
pub fn next_move(partitions: &[Partition], named: bool) -> Option<Move> {
    if !partitions.iter().all(Partition::settled) {
        return None;
    }
    if let Some((partition, to)) = spread(partitions.iter().map(|p| &p.stream)) {
        return Some(Move::Stream { partition, to });
    }
    if !named {
        // Without a named replica a consumer cannot be put beside its stream: spread the
        // consumers on their own.
        return spread(partitions.iter().map(|p| &p.consumer))
            .map(|(partition, to)| Move::Consumer { partition, to });
    }
    partitions.iter().enumerate().find_map(|(partition, p)| {
        let stream_leader = p.stream.leader.as_ref()?;
        (p.consumer.leader.as_ref() != Some(stream_leader)
            && p.consumer.current.contains(stream_leader))
        .then(|| Move::Consumer {
            partition,
            to: stream_leader.clone(),
        })
    })
}

/// Of `groups` (one per partition), the partition whose leader to move and the server to
/// lead it, when one server leads at least two more of them than another: the busiest
/// server's first group with a current replica on a server leading fewest.
fn spread<'a>(groups: impl Iterator<Item = &'a Group> + Clone) -> Option<(usize, String)> {
    // Groups led per server, over every server holding a replica.
    let mut led: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for group in groups.clone() {
        for name in &group.current {
            led.entry(name).or_default();
        }
        if let Some(leader) = &group.leader {
            *led.entry(leader).or_default() += 1;
        }
    }
    let most = led.values().copied().max().unwrap_or(0);
    let fewest = led.values().copied().min().unwrap_or(0);
    if most < fewest + 2 {
        return None;
    }
    let busiest = led.iter().find(|(_, n)| **n == most).map(|(s, _)| *s);
    let idle: Vec<&str> = led
        .iter()
        .filter(|(_, n)| **n == fewest)
        .map(|(s, _)| *s)
        .collect();
    groups
        .enumerate()
        .filter(|(_, group)| group.leader.as_deref() == busiest)
        .find_map(|(partition, group)| {
            let to = idle
                .iter()
                .find(|s| group.current.iter().any(|c| c == *s))?;
            Some((partition, (*to).to_owned()))
        })
}

/// Asks the leader of `stream` (with `durable`: of that consumer of it) to step down in
/// favour of the server `to`, waiting at most `bound` for each answer. A server that
/// refuses the placement as a bad request (nats-server before 2.11) is asked again to
/// step down for a replica of its choosing. Answers who chose.
pub async fn step_down(
    js: &Context,
    stream: &str,
    durable: Option<&str>,
    to: &str,
    bound: Duration,
) -> Result<Chosen, String> {
    let subject = match durable {
        None => format!("STREAM.LEADER.STEPDOWN.{stream}"),
        Some(durable) => format!("CONSUMER.LEADER.STEPDOWN.{stream}.{durable}"),
    };
    let preferred = serde_json::json!({ "placement": { "preferred": to } });
    match request(js, &subject, &preferred, bound).await {
        Ok(()) => Ok(Chosen::Named),
        Err(Refused::BadRequest) => request(js, &subject, &serde_json::json!({}), bound)
            .await
            .map(|()| Chosen::ByServer),
        Err(other) => Err(other),
    }
    .map_err(|refused| match refused {
        Refused::BadRequest => "bad request".to_owned(),
        Refused::Other(error) => error,
    })
}

/// Who chose a step-down's new leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    /// The replica the request named.
    Named,
    /// The server (it does not take a named replica).
    ByServer,
}

/// Why a step-down was not done.
enum Refused {
    /// The server did not understand the request (JetStream error code 10003).
    BadRequest,
    /// Anything else, as text.
    Other(String),
}

async fn request(
    js: &Context,
    subject: &str,
    body: &serde_json::Value,
    bound: Duration,
) -> Result<(), Refused> {
    /// JetStream's error code for a request it cannot parse.
    const BAD_REQUEST: u64 = 10_003;
    let answer = js.request::<_, _, serde_json::Value>(subject.to_owned(), body);
    match tokio::time::timeout(bound, answer).await {
        Ok(Ok(answer)) => match answer.get("error") {
            None => Ok(()),
            Some(error) if error["err_code"].as_u64() == Some(BAD_REQUEST) => {
                Err(Refused::BadRequest)
            }
            Some(error) => Err(Refused::Other(error.to_string())),
        },
        Ok(Err(error)) => Err(Refused::Other(error.to_string())),
        Err(_) => Err(Refused::Other(format!(
            "no answer within {} ms",
            bound.as_millis()
        ))),
    }
}

#[cfg(test)]
mod gate_tests {
    use super::*;
    use std::time::Instant;

    fn settled(leaders: &[&str]) -> Vec<Partition> {
        leaders
            .iter()
            .map(|leader| {
                let group = Group {
                    leader: Some((*leader).to_owned()),
                    current: vec!["x".into(), "y".into()],
                    lagging: false,
                };
                Partition {
                    stream: group.clone(),
                    consumer: group,
                }
            })
            .collect()
    }

    const S: Duration = Duration::from_secs(2);

    #[test]
    fn a_move_waits_until_the_same_leaders_have_been_settled_for_the_settle_time() {
        let t0 = Instant::now();
        let mut gate = Gate::new(t0, S);
        let view = settled(&["a", "a", "b"]);
        assert!(!gate.observe(t0, &view));
        assert!(!gate.observe(t0 + Duration::from_secs(1), &view));
        assert!(gate.observe(t0 + S, &view));
    }

    #[test]
    fn a_changed_leader_or_an_election_restarts_the_wait() {
        let t0 = Instant::now();
        let mut gate = Gate::new(t0, S);
        assert!(gate.observe(t0 + S, &settled(&["a", "a", "b"])));
        // Another replica moved a leader: the wait starts again from this look.
        let t1 = t0 + S + Duration::from_millis(500);
        assert!(!gate.observe(t1, &settled(&["a", "c", "b"])));
        assert!(!gate.observe(t1 + Duration::from_secs(1), &settled(&["a", "c", "b"])));
        assert!(gate.observe(t1 + S, &settled(&["a", "c", "b"])));
        // An election seen by a look.
        let t2 = t1 + S + Duration::from_millis(500);
        gate.unsettled(t2);
        assert!(!gate.observe(t2 + Duration::from_secs(1), &settled(&["a", "c", "b"])));
        // A group with a replica behind.
        let mut lagging = settled(&["a", "c", "b"]);
        lagging[1].consumer.lagging = true;
        let t3 = t2 + S;
        assert!(!gate.observe(t3, &lagging));
        assert!(!gate.observe(t3 + Duration::from_secs(1), &settled(&["a", "c", "b"])));
    }

    #[test]
    fn nothing_is_decided_while_a_move_is_unanswered() {
        let t0 = Instant::now();
        let mut gate = Gate::new(t0, S);
        let view = settled(&["a", "a", "b"]);
        assert!(gate.observe(t0 + S, &view));
        gate.moving();
        assert!(!gate.observe(t0 + 10 * S, &view));
        gate.moved(t0 + 10 * S);
        assert!(!gate.observe(t0 + 10 * S + Duration::from_secs(1), &view));
        assert!(gate.observe(t0 + 11 * S, &view));
    }

    #[test]
    fn failed_moves_back_off_doubling_up_to_a_minute() {
        let t0 = Instant::now();
        let mut gate = Gate::new(t0, Duration::ZERO);
        let view = settled(&["a", "a", "b"]);
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..9 {
            assert!(gate.observe(now, &view));
            gate.moving();
            gate.failed(now);
            let mut wait = Duration::ZERO;
            while !gate.observe(now + wait, &view) {
                wait += Duration::from_millis(250);
            }
            waits.push(wait.as_secs());
            now += wait;
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        gate.moving();
        gate.moved(now);
        gate.moving();
        gate.failed(now);
        assert!(
            gate.observe(now + Duration::from_secs(1), &view),
            "a success resets the back-off"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(leader: &str, others: &[&str]) -> Group {
        Group {
            leader: Some(leader.into()),
            current: others.iter().map(|s| (*s).into()).collect(),
            lagging: false,
        }
    }

    /// A partition on servers a, b and c, its stream led by `stream`, its consumer by
    /// `consumer`.
    fn partition(stream: &str, consumer: &str) -> Partition {
        let others = |leader: &str| -> Vec<&str> {
            ["a", "b", "c"]
                .into_iter()
                .filter(|s| *s != leader)
                .collect()
        };
        Partition {
            stream: group(stream, &others(stream)),
            consumer: group(consumer, &others(consumer)),
        }
    }

    #[test]
    fn every_partition_led_by_one_node_moves_a_stream_to_an_idle_node() {
        let all_on_a = [
            partition("a", "a"),
            partition("a", "a"),
            partition("a", "a"),
        ];
        assert_eq!(
            next_move(&all_on_a, true),
            Some(Move::Stream {
                partition: 0,
                to: "b".into()
            })
        );
        let two_on_a = [
            partition("b", "a"),
            partition("a", "a"),
            partition("a", "a"),
        ];
        assert_eq!(
            next_move(&two_on_a, true),
            Some(Move::Stream {
                partition: 1,
                to: "c".into()
            })
        );
    }

    #[test]
    fn balanced_streams_bring_each_consumer_beside_its_stream() {
        let spread = [
            partition("a", "a"),
            partition("b", "a"),
            partition("c", "c"),
        ];
        assert_eq!(
            next_move(&spread, true),
            Some(Move::Consumer {
                partition: 1,
                to: "b".into()
            })
        );
        let done = [
            partition("a", "a"),
            partition("b", "b"),
            partition("c", "c"),
        ];
        assert_eq!(next_move(&done, true), None);
    }

    #[test]
    fn a_server_that_picks_the_replica_itself_gets_consumers_spread_not_paired() {
        let unpaired = [
            partition("a", "b"),
            partition("b", "c"),
            partition("c", "a"),
        ];
        assert_eq!(
            next_move(&unpaired, false),
            None,
            "consumers spread already"
        );
        let consumers_on_a = [
            partition("a", "a"),
            partition("b", "a"),
            partition("c", "a"),
        ];
        assert_eq!(
            next_move(&consumers_on_a, false),
            Some(Move::Consumer {
                partition: 0,
                to: "b".into()
            })
        );
        let all_on_a = [
            partition("a", "a"),
            partition("a", "a"),
            partition("a", "a"),
        ];
        assert!(matches!(
            next_move(&all_on_a, false),
            Some(Move::Stream { partition: 0, .. })
        ));
    }

    #[test]
    fn one_more_partition_than_nodes_is_balanced_enough() {
        let four = [
            partition("a", "a"),
            partition("b", "b"),
            partition("c", "c"),
            partition("a", "a"),
        ];
        assert_eq!(next_move(&four, true), None);
    }

    #[test]
    fn nothing_moves_during_an_election_or_a_catch_up() {
        let mut electing = [
            partition("a", "a"),
            partition("a", "a"),
            partition("a", "a"),
        ];
        electing[2].consumer.leader = None;
        assert_eq!(next_move(&electing, true), None);
        let mut catching_up = [
            partition("a", "a"),
            partition("a", "a"),
            partition("a", "a"),
        ];
        catching_up[0].stream.lagging = true;
        assert_eq!(next_move(&catching_up, true), None);
    }

    #[test]
    fn a_leader_moves_only_to_a_current_replica() {
        // Server c holds none of these replicas (an R2 stream on a and b, say): it is not
        // a candidate, and a and b lead two against one... balanced enough.
        let r2 = |leader: &str, other: &str| Partition {
            stream: group(leader, &[other]),
            consumer: group(leader, &[other]),
        };
        assert_eq!(
            next_move(&[r2("a", "b"), r2("a", "b"), r2("b", "a")], true),
            None
        );
        // Three on a, whose only current replica is b.
        let moved = next_move(&[r2("a", "b"), r2("a", "b"), r2("a", "b")], true);
        assert_eq!(
            moved,
            Some(Move::Stream {
                partition: 0,
                to: "b".into()
            })
        );
    }

    #[test]
    fn a_single_server_is_never_balanced() {
        let single = [Partition::default(), Partition::default()];
        assert_eq!(next_move(&single, true), None);
    }
}
