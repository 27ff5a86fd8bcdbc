//! The consumer's rebalance callbacks. librdkafka calls them on the processing thread, from
//! inside `poll`, so they find the core between two batches, its worker threads idle.
//!
//! - A revoke blocks until drained: the open transaction commits (its offsets included)
//!   and the revoked partitions' stores close before the partitions are given up, so the
//!   next owner starts exactly where this instance stopped.
//! - An assign first gives each new partition an absolute offset to start from, read in
//!   the callback (`start_offsets`): librdkafka's own lookup, in flight while a partition
//!   was paused or resumed, was answered late and started the partition over.
//! - An assign holds the new partitions' records in their own queues
//!   ([`crate::ingest::hold`]), out of the consumer's: librdkafka fetches them while the
//!   loop restores the partitions' stores from the changelog, and none is processed before
//!   its partition is restored and its queue followed. (Paused partitions instead waited
//!   about a second after a restore that outlasted librdkafka's lookup of their start: a
//!   resumed partition is fetched once the broker thread wakes up by itself. Measured at
//!   start, BENCHMARKS.md, session 25.) Only the first `state.restore_prefetch_partitions`
//!   partitions waiting for a restore are fetched; the others are paused when assigned
//!   (before their fetch starts) and resumed as their restore comes near, so that a member
//!   given many partitions holds the prefetched records of a few. A paused partition that
//!   is revoked first is resumed then: librdkafka keeps an application's pause across
//!   assignments.
//! - The consumer joins the group before the core exists (while the producer initialises
//!   its transactions and the schemas are registered), and is polled meanwhile; an
//!   assignment is noted here, not in the core ([`RebalanceContext::core`]), so it never
//!   depends on which came first.
//! - With more than one input topic the group assigns the first topic's partitions only;
//!   the follower consumer gets the same-numbered partitions of the others once restored
//!   (see `restore_pending`), and gives them up here, with the revoked ones.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use tracing::{error, info, warn};

use super::core::{lock, Core, Inputs};
use crate::api::Health;
use crate::ingest::hold;
use crate::metrics::Metrics;

pub(crate) struct RebalanceContext {
    /// Set once built, before the consumer is first polled. A `std::sync::Mutex`: only the
    /// processing thread ever takes it, in the loop or in these callbacks, never across an
    /// await; the lock is what hands the core between them.
    pub core: OnceLock<Arc<Mutex<Core>>>,
    /// Partitions assigned, their records held, until the loop restores their stores.
    pub pending: Mutex<Vec<(String, i32)>>,
    /// Those of them paused, beyond the first `prefetch` (`state.restore_prefetch_partitions`).
    pub paused: Mutex<HashSet<(String, i32)>>,
    pub prefetch: usize,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// The follower consumer, with more than one input topic.
    pub follower: Option<Arc<BaseConsumer>>,
}

impl ClientContext for RebalanceContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): the consumer lag per
    /// partition, computed by librdkafka from its own positions and watermarks.
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (&partition, p) in &t.partitions {
                if partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics.consumer_lag(topic, partition, p.consumer_lag);
                }
            }
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ConsumerContext for RebalanceContext {
    /// rdkafka's own sequence (`pre_rebalance`, the (incremental) assign or unassign,
    /// `post_rebalance`), with each newly assigned partition given where it starts first
    /// ([`start_offsets`]).
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let assign = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
        if assign {
            start_offsets(consumer, tpl);
        }
        let rebalance = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(tpl),
            _ => {
                let error = KafkaError::Rebalance(err.into());
                error!(%error, "rebalance failed");
                Rebalance::Error(error)
            }
        };
        self.pre_rebalance(consumer, &rebalance);
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let done = match (assign, cooperative) {
            (true, true) => consumer.incremental_assign(tpl),
            (true, false) => consumer.assign(tpl),
            (false, true) => consumer.incremental_unassign(tpl),
            (false, false) => consumer.unassign(),
        };
        if let Err(error) = done {
            error!(%error, assign, "applying the group's assignment failed");
        }
        self.post_rebalance(consumer, &rebalance);
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let tpl = match rebalance {
            Rebalance::Revoke(tpl) => tpl,
            Rebalance::Assign(tpl) => {
                // Before the assignment, which starts the fetchers.
                for (topic, partition) in partitions(tpl) {
                    if let Err(error) = hold(consumer, &topic, partition) {
                        // Its records would come to the consumer's queue, where the loop
                        // stops at the first rather than process it unrestored.
                        error!(
                            %error,
                            topic,
                            partition,
                            "holding a newly assigned partition's records failed"
                        );
                    }
                }
                return;
            }
            Rebalance::Error(_) => return,
        };
        let revoked = partitions(tpl);
        lock(&self.pending).retain(|p| !revoked.contains(p));
        let unpause = self.take_paused(|p| revoked.contains(p));
        if unpause.count() > 0 {
            if let Err(error) = consumer.resume(&unpause) {
                warn!(%error, "resuming revoked partitions that waited for their restore");
            }
        }
        match self.core.get() {
            Some(core) => self.finish(consumer, core, &revoked),
            // No core yet: no task, no transaction, nothing more to give up.
            None => {
                for (_, partition) in &revoked {
                    self.health.partition_revoked(*partition);
                }
            }
        }
        if let Some(follower) = &self.follower {
            unfollow(follower, &revoked);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        if tpl.count() == 0 {
            return;
        }
        let assigned = partitions(tpl);
        info!(
            ?assigned,
            "partitions assigned; restoring their state first"
        );
        for (_, partition) in &assigned {
            self.health.partition_assigned(*partition);
        }
        let mut pending = lock(&self.pending);
        // Beyond the first `prefetch` waiting for a restore: paused now, before they are
        // fetched (which waits for the lookup of where they start).
        let mut wait = TopicPartitionList::new();
        for (topic, partition) in assigned
            .iter()
            .skip(self.prefetch.saturating_sub(pending.len()))
        {
            wait.add_partition(topic, *partition);
        }
        pending.extend(assigned);
        drop(pending);
        if wait.count() == 0 {
            return;
        }
        match consumer.pause(&wait) {
            Ok(()) => {
                lock(&self.paused).extend(partitions(&wait));
                self.metrics.restore_waits(wait.count());
            }
            // They are fetched meanwhile, as the others are.
            Err(error) => warn!(%error, "pausing partitions that wait for their restore"),
        }
    }
}

impl RebalanceContext {
    /// The paused partitions `which` selects, no longer counted as paused: to resume.
    pub fn take_paused(&self, which: impl Fn(&(String, i32)) -> bool) -> TopicPartitionList {
        let mut paused = lock(&self.paused);
        let mut list = TopicPartitionList::new();
        paused.retain(|p| {
            let take = which(p);
            if take {
                list.add_partition(&p.0, p.1);
            }
            !take
        });
        list
    }

    /// Commits the open transaction and closes the stores of the `revoked` partitions.
    fn finish(&self, consumer: &BaseConsumer<Self>, core: &Mutex<Core>, revoked: &[(String, i32)]) {
        let mut core = lock(core);
        let inputs = Inputs {
            group: consumer,
            follower: self.follower.as_deref(),
        };
        match core.commit(&inputs) {
            Ok(outcome) => info!(
                ?revoked,
                ?outcome,
                "partitions revoked; open transaction finished"
            ),
            // The records of the failed transaction are consumed again by the next owner
            // from the last committed offsets: nothing is lost, nothing doubled.
            Err(error) => error!(%error, ?revoked, "committing before a revoke failed"),
        }
        for (_, partition) in revoked {
            core.close_task(*partition);
        }
    }
}

/// How long the start of newly assigned partitions is looked up for, in the rebalance
/// callback, before librdkafka is left to look it up itself.
const START_LOOKUP_WAIT: Duration = Duration::from_secs(30);

/// Gives each newly assigned partition of `tpl` an absolute offset to start from: its
/// committed offset (read as `read_committed` reads it, waiting for a previous owner's
/// open transaction: KIP-447), else the partition's log start (`auto.offset.reset` is
/// `earliest`). Left to librdkafka, each partition's start is looked up asynchronously
/// after the assignment, and pausing or resuming a partition (see `post_rebalance`,
/// `restore_pending`) while that lookup is in flight makes librdkafka discard its answer
/// and ask again 500 ms later, from the logical start: a partition resumed and consumed
/// meanwhile was then fetched again from its first record, every event processed twice
/// (counted as duplicates; seen in the two-instance API test). A partition whose start
/// cannot be read here is left to librdkafka, as before.
pub fn start_offsets<C: ConsumerContext>(consumer: &BaseConsumer<C>, tpl: &mut TopicPartitionList) {
    let unknown: Vec<(String, i32)> = tpl
        .elements()
        .iter()
        .filter(|e| e.offset() == Offset::Invalid)
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect();
    if unknown.is_empty() {
        return;
    }
    let mut ask = TopicPartitionList::new();
    for (topic, partition) in &unknown {
        ask.add_partition(topic, *partition);
    }
    let committed = match consumer.committed_offsets(ask, START_LOOKUP_WAIT) {
        Ok(committed) => committed,
        Err(error) => {
            return warn!(%error, "reading new partitions' committed offsets failed; librdkafka looks them up")
        }
    };
    let committed_at = |topic: &str, partition: i32| {
        committed
            .find_partition(topic, partition)
            .filter(|e| e.error().is_ok())
            .and_then(|e| match e.offset() {
                Offset::Offset(at) => Some(at),
                _ => None,
            })
    };
    // One request for the log start of all those without a committed offset.
    let without: Vec<(&str, i32)> = unknown
        .iter()
        .map(|(topic, partition)| (topic.as_str(), *partition))
        .filter(|&(topic, partition)| committed_at(topic, partition).is_none())
        .collect();
    let starts = match without.is_empty() {
        true => HashMap::new(),
        false => {
            crate::kafka::list_offsets(consumer, without, Offset::Beginning, START_LOOKUP_WAIT)
        }
    };
    for (topic, partition) in &unknown {
        let start = committed_at(topic, *partition)
            .or_else(|| starts.get(&(topic.clone(), *partition)).copied());
        match start {
            Some(at) => {
                if let Err(error) = tpl.set_partition_offset(topic, *partition, Offset::Offset(at))
                {
                    warn!(%error, topic, partition, "setting a new partition's start failed");
                }
            }
            None => warn!(
                topic,
                partition, "a new partition's start could not be read; librdkafka looks it up"
            ),
        }
    }
}

/// Gives up the follower's partitions numbered as the revoked ones.
fn unfollow(follower: &BaseConsumer, revoked: &[(String, i32)]) {
    let Ok(assigned) = follower.assignment() else {
        return;
    };
    let mut drop = TopicPartitionList::new();
    for element in assigned.elements() {
        if revoked.iter().any(|(_, p)| *p == element.partition()) {
            drop.add_partition(element.topic(), element.partition());
        }
    }
    if drop.count() > 0 {
        if let Err(error) = follower.incremental_unassign(&drop) {
            error!(%error, "giving up followed partitions failed");
        }
    }
}
