//! The consumer's rebalance callbacks. librdkafka calls them on the processing thread, from
//! inside `poll`, so they find the core between two batches, its worker threads idle.
//!
//! - A revoke blocks until drained: the open transaction commits (its offsets included)
//!   and the revoked partitions' stores close before the partitions are given up, so the
//!   next owner starts exactly where this instance stopped.
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

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
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
