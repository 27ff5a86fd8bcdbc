//! The processor's state between polls: the open transaction and the shards (see
//! [`super::shard`]) that hold the assigned partitions' tasks. The core begins, commits and
//! aborts the member's one transaction; what each step does to the partitions, the shards
//! do, in parallel on the member's worker threads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::bindings::rd_kafka_topic_t as RDKafkaTopic;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use tracing::{debug, info, warn};

use crate::api::Health;
use crate::emit::txn::{self, flush, retrying, TXN_TIMEOUT};
use crate::ingest::{Batch, FetchQueue, InputRecord};
use crate::metrics::CommitPhases;

use super::shard::{Shard, Shared, Task, Writes};
use super::{Lanes, ProcessorError};

/// How long a turn's shards go on processing, each from its own queue, before the member
/// looks at its group consumer (rebalances, errors) and the shutdown flag again: a quarter
/// of the default commit interval, so that the shards wait for each other four times a
/// transaction instead of at every batch (measured: a tenth off a run), and soon enough
/// for those. A turn never runs past the commit interval.
const SLICE: Duration = Duration::from_millis(25);

/// Tracks the delivery reports of the transactional producer: the last changelog offset
/// written per partition (the stores' checkpoints after a commit). A failed delivery needs
/// no tracking here: it makes the transaction's commit fail, and the commit aborts.
pub(crate) struct Deliveries {
    /// The producer's handle of the changelog topic ([`Deliveries::changelog_is`], set
    /// before anything is produced): a report's topic is told by its handle, not by
    /// reading and comparing its name, for each of the several hundred thousand reports a
    /// backlog's transactions get.
    changelog_topic: AtomicPtr<RDKafkaTopic>,
    last: Mutex<HashMap<i32, i64>>,
}

impl Deliveries {
    pub fn new() -> Deliveries {
        Deliveries {
            changelog_topic: AtomicPtr::new(std::ptr::null_mut()),
            last: Mutex::new(HashMap::new()),
        }
    }

    /// The changelog records are sent through `topic`, a handle of this context's producer
    /// (librdkafka gives each report the handle of the topic it was sent to).
    pub fn changelog_is(&self, topic: &txn::Topic) {
        self.changelog_topic
            .store(topic.as_ptr(), Ordering::Release);
    }

    fn is_changelog(&self, message: &BorrowedMessage<'_>) -> bool {
        message.topic_ptr() == self.changelog_topic.load(Ordering::Acquire)
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) if self.is_changelog(message) => {
                let mut last = lock(&self.last);
                let entry = last.entry(Message::partition(message)).or_insert(-1);
                *entry = (*entry).max(Message::offset(message));
            }
            Ok(_) | Err(_) => {}
        }
    }
}

/// A `std::sync::Mutex` guard that survives poisoning: what the processor guards (the
/// core between polls, delivered offsets) stays meaningful if a thread panicked holding it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The consumers input records come from. The group member is assigned the partitions of
/// the lead (first) input topic; with more than one input topic, the follower is assigned
/// the same-numbered partitions of the others, so that one instance holds every event of
/// an order whatever topic it came on. Offsets of both commit in the transactions, under
/// the group.
pub(crate) struct Inputs<'a, C: ConsumerContext> {
    pub group: &'a BaseConsumer<C>,
    pub follower: Option<&'a BaseConsumer>,
}

/// The open transaction.
struct Txn {
    started: Instant,
}

/// What [`Core::commit`] did with the open transaction.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TxnOutcome {
    Nothing,
    Committed,
    /// The transaction was aborted; its input is consumed again.
    Aborted,
}

pub(crate) struct Core {
    pub shared: Shared,
    /// The member's partitions, spread over shards that are processed in parallel.
    shards: Vec<Shard>,
    /// The worker threads that run shards 1.. while the processing thread runs shard 0;
    /// none with one shard.
    pool: Option<rayon::ThreadPool>,
    pub health: Arc<Health>,
    txn: Option<Txn>,
}

impl Core {
    /// A core with `workers` shards (at least one), and `workers - 1` threads to run them
    /// beside the caller's.
    ///
    /// Errors: the worker threads cannot be started.
    pub fn new(
        shared: Shared,
        workers: usize,
        health: Arc<Health>,
    ) -> Result<Core, ProcessorError> {
        let workers = workers.max(1);
        let pool = if workers > 1 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(workers - 1)
                .thread_name(|k| format!("worker-{}", k + 1))
                .build()
                .map_err(|e| ProcessorError::Internal(format!("starting worker threads: {e}")))?;
            Some(pool)
        } else {
            None
        };
        Ok(Core {
            shared,
            shards: (0..workers).map(|_| Shard::default()).collect(),
            pool,
            health,
            txn: None,
        })
    }

    /// How many shards (and fetch queues) the core has.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The partitions whose tasks the core holds.
    pub fn partitions(&self) -> Vec<i32> {
        self.shards
            .iter()
            .flat_map(|shard| shard.tasks.keys().copied())
            .collect()
    }

    /// The shard holding `partition`'s task, if any: a look at a few maps, done per polled
    /// record and per revoke only.
    fn shard_of(&self, partition: i32) -> Option<usize> {
        self.shards
            .iter()
            .position(|shard| shard.tasks.contains_key(&partition))
    }

    /// Takes a restored partition's task into the shard holding fewest; returns that shard,
    /// whose fetch queue the partition's records must go to.
    pub fn add_task(&mut self, partition: i32, task: Task) -> usize {
        let shard = (0..self.shards.len())
            .min_by_key(|&k| (self.shards[k].tasks.len(), k))
            .unwrap_or(0);
        self.shards[shard].tasks.insert(partition, task);
        shard
    }

    /// Whether the open transaction has run its commit interval; also the loop's heartbeat.
    pub fn commit_due(&self) -> bool {
        self.health.heartbeat(); // reads the clock as well
        self.txn
            .as_ref()
            .is_some_and(|t| t.started.elapsed() >= self.shared.settings.commit_interval)
    }

    /// Processes one input record inside the open transaction (opening one if needed), on
    /// this thread: a record polled alone, not in a batch. True when the schema registry
    /// could not be reached: see [`Core::process_batches`].
    ///
    /// Errors: as [`Core::process_batches`].
    pub fn process<C: ConsumerContext, R: InputRecord>(
        &mut self,
        inputs: &Inputs<'_, C>,
        message: &R,
    ) -> Result<bool, ProcessorError> {
        // A partition held by none goes to shard 0, which says what to do with it.
        let shard = self.shard_of(message.partition()).unwrap_or(0);
        self.begin()?;
        let shard = &mut self.shards[shard];
        let result = shard
            .process(&self.shared, message)
            .and_then(|()| shard.send_records(&self.shared));
        self.registry_down(inputs, result)
    }

    /// Processes each shard's batches, all shards at once, inside the open transaction
    /// (opening one if any batch has a record), then goes on with what comes to the shard's
    /// fetch queues until the turn's slice ([`SLICE`], or what is left of the commit
    /// interval) is over; empties the batches. Shard `k`'s queues and batches are its
    /// `lanes` in `fetches` and `batches` (see [`Lanes`]). Each shard runs on its own thread
    /// for the whole slice, so neither waits for the other at every batch. True when the
    /// schema registry could not be reached: the transaction was aborted then (its records
    /// are consumed again) and the caller should wait.
    ///
    /// Errors: as [`Shard::process`], but for the registry's; fatal errors of the abort.
    pub fn process_batches<'c, C: ConsumerContext>(
        &mut self,
        inputs: &Inputs<'_, C>,
        fetches: &[FetchQueue<'c>],
        batches: &mut [Batch<'c>],
        lanes: Lanes,
    ) -> Result<bool, ProcessorError> {
        if batches.iter().all(Batch::is_empty) {
            return Ok(false);
        }
        self.begin()?;
        let until = self.txn.as_ref().map_or_else(Instant::now, |txn| {
            (txn.started + self.shared.settings.commit_interval).min(Instant::now() + SLICE)
        });
        let mut queues: Vec<(&[FetchQueue<'c>], &mut [Batch<'c>])> = fetches
            .chunks(lanes.count())
            .zip(batches.chunks_mut(lanes.count()))
            .collect();
        let results = fork(
            self.pool.as_ref(),
            &self.shared,
            &mut self.shards,
            &mut queues,
            |shard, (_, batches)| batches.iter().any(|b| !b.is_empty()) || !shard.tasks.is_empty(),
            |shard, (fetches, batches), shared| loop {
                process_lanes(shard, shared, batches)?;
                let now = Instant::now();
                if now >= until {
                    return Ok(());
                }
                super::fill(fetches, batches, until - now);
            },
        );
        let mut registry = Ok(());
        for result in results.into_iter().flatten() {
            match result {
                Ok(()) => {}
                Err(ProcessorError::Registry(error)) => {
                    registry = Err(ProcessorError::Registry(error))
                }
                Err(error) => return Err(error),
            }
        }
        self.registry_down(inputs, registry)
    }

    /// What processing that ended in `result` means for the loop: true when the schema
    /// registry could not be reached, after aborting the open transaction (its records are
    /// consumed again: no reason to dead-letter them); other errors pass on.
    fn registry_down<C: ConsumerContext>(
        &mut self,
        inputs: &Inputs<'_, C>,
        result: Result<(), ProcessorError>,
    ) -> Result<bool, ProcessorError> {
        match result {
            Ok(()) => Ok(false),
            Err(ProcessorError::Registry(error)) => {
                warn!(%error, "schema registry unavailable; aborting and retrying in 1 s");
                self.abort_open(inputs)?;
                Ok(true)
            }
            Err(error) => Err(error),
        }
    }

    fn begin(&mut self) -> Result<(), ProcessorError> {
        if self.txn.is_none() {
            self.shared.producer.begin_transaction()?;
            self.txn = Some(Txn {
                started: Instant::now(),
            });
        }
        Ok(())
    }

    /// Writes the state and views of the orders the transaction changed, commits the
    /// transaction with the consumed offsets, then writes the state to the stores.
    ///
    /// Errors: fatal Kafka errors (the producer was fenced, the transaction state is lost):
    /// the instance must stop. Errors that require an abort abort, rewind the consumer and
    /// return [`TxnOutcome::Aborted`].
    pub fn commit<C: ConsumerContext>(
        &mut self,
        inputs: &Inputs<'_, C>,
    ) -> Result<TxnOutcome, ProcessorError> {
        let Some(txn) = self.txn.take() else {
            return Ok(TxnOutcome::Nothing);
        };
        match self.try_commit(inputs.group, txn.started) {
            Ok(()) => Ok(TxnOutcome::Committed),
            Err(ProcessorError::Kafka(KafkaError::Transaction(e))) if e.txn_requires_abort() => {
                self.shared.metrics.transaction_aborted(&e);
                self.abort(inputs)?;
                Ok(TxnOutcome::Aborted)
            }
            Err(error) => Err(error),
        }
    }

    /// Commits the transaction begun at `started`.
    fn try_commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        started: Instant,
    ) -> Result<(), ProcessorError> {
        let mut offsets = TopicPartitionList::new();
        let mut records = 0;
        for shard in &self.shards {
            for (&(input, partition), &(first, next)) in &shard.consumed {
                records += next - first;
                let topic = &self.shared.settings.inputs[input];
                offsets.add_partition_offset(topic, partition, Offset::Offset(next))?;
            }
        }
        let metadata = match offsets.count() {
            0 => None,
            _ => Some(consumer.group_metadata().ok_or_else(|| {
                ProcessorError::Internal("the consumer has no group metadata".into())
            })?),
        };
        // The offsets go to the transaction (two round trips to the coordinators) while
        // the shards produce their state and views: both only add to the open transaction.
        let preparing = Instant::now();
        let (prepared, sent) = std::thread::scope(|scope| {
            let sending = metadata.as_ref().map(|metadata| {
                let (producer, offsets) = (&self.shared.producer, &offsets);
                std::thread::Builder::new()
                    .name("offsets".into())
                    .spawn_scoped(scope, move || {
                        retrying(TXN_TIMEOUT, || {
                            producer.send_offsets_to_transaction(offsets, metadata, TXN_TIMEOUT)
                        })
                    })
            });
            let mut none: Vec<()> = vec![(); self.shards.len()];
            let prepared = fork(
                self.pool.as_ref(),
                &self.shared,
                &mut self.shards,
                &mut none,
                |shard, _| !shard.tasks.is_empty(),
                |shard, _, shared| shard.prepare(shared),
            );
            let sent = match sending {
                None => Ok(()),
                Some(Err(error)) => Err(ProcessorError::Internal(format!(
                    "starting the thread that sends the offsets: {error}"
                ))),
                Some(Ok(thread)) => super::joined(thread).map_err(ProcessorError::from),
            };
            (prepared, sent)
        });
        let mut writes: Vec<Option<Writes>> = Vec::with_capacity(prepared.len());
        for result in prepared {
            writes.push(result.transpose()?);
        }
        sent?;
        let producer = &self.shared.producer;
        let flushing = Instant::now();
        flush(producer, TXN_TIMEOUT);
        let flushed = Instant::now();
        retrying(TXN_TIMEOUT, || producer.commit_transaction(TXN_TIMEOUT))?;
        let storing = Instant::now();
        // The commit as the transaction metric counts it: the flush and the commit call.
        let commit_time = storing - flushing;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.shared.metrics.transaction_committed(commit_time, now);
        let delivered = lock(&producer.context().last).clone();
        let results = fork(
            self.pool.as_ref(),
            &self.shared,
            &mut self.shards,
            &mut writes,
            |shard, _| !shard.tasks.is_empty() || !shard.consumed.is_empty(),
            |shard, writes, shared| {
                shard.committed(shared, writes.take().unwrap_or_default(), &delivered, now)
            },
        );
        let phases = CommitPhases {
            prepare: flushing - preparing,
            flush: flushed - flushing,
            commit: storing - flushed,
            store: storing.elapsed(),
        };
        debug!(
            records,
            open_ms = (preparing - started).as_millis() as u64,
            prepare_ms = phases.prepare.as_millis() as u64,
            flush_ms = phases.flush.as_millis() as u64,
            commit_ms = phases.commit.as_millis() as u64,
            store_ms = phases.store.as_millis() as u64,
            "transaction committed"
        );
        self.shared.metrics.commit_phases(&phases);
        results.into_iter().flatten().collect()
    }

    /// Aborts the transaction: its outputs are never seen by `read_committed` readers, the
    /// graphs it changed are dropped (the stores never saw them) and the consumer goes back
    /// to the first record it consumed in each partition.
    fn abort<C: ConsumerContext>(&mut self, inputs: &Inputs<'_, C>) -> Result<(), ProcessorError> {
        txn::abort(&self.shared.producer, TXN_TIMEOUT)?;
        let (mut lead, mut followed) = (TopicPartitionList::new(), TopicPartitionList::new());
        let mut partitions = 0;
        for shard in &mut self.shards {
            for ((input, partition), (first, _)) in shard.aborted(&self.shared) {
                let rewind = if input == 0 { &mut lead } else { &mut followed };
                let topic = &self.shared.settings.inputs[input];
                rewind.add_partition_offset(topic, partition, Offset::Offset(first))?;
                partitions += 1;
            }
        }
        if lead.count() > 0 {
            inputs.group.seek_partitions(lead, TXN_TIMEOUT)?;
        }
        if let (true, Some(follower)) = (followed.count() > 0, inputs.follower) {
            follower.seek_partitions(followed, TXN_TIMEOUT)?;
        }
        info!(
            partitions,
            "consumer rewound to the aborted transaction's first records"
        );
        Ok(())
    }

    /// Aborts the open transaction, if any (registry down, shutdown after an error).
    pub fn abort_open<C: ConsumerContext>(
        &mut self,
        inputs: &Inputs<'_, C>,
    ) -> Result<(), ProcessorError> {
        match self.txn.take() {
            Some(_) => self.abort(inputs),
            None => Ok(()),
        }
    }

    /// Closes the store of a partition this instance no longer owns.
    pub fn close_task(&mut self, partition: i32) {
        self.shared.metrics.partition_revoked(partition);
        self.shared.orders.stop_serving(partition);
        self.health.partition_revoked(partition);
        let Some(shard) = self.shard_of(partition) else {
            return;
        };
        if let Some(task) = self.shards[shard].tasks.remove(&partition) {
            if let Err(error) = task.store.close() {
                warn!(partition, %error, "closing a revoked partition's store failed");
            }
        }
    }
}

/// Processes the batches of a shard's lanes with it, one after the other, and empties them.
/// When the registry cannot be reached, the records of the lanes after the failing one are
/// not processed either, as in [`process_batch`].
fn process_lanes(
    shard: &mut Shard,
    shared: &Shared,
    batches: &mut [Batch<'_>],
) -> Result<(), ProcessorError> {
    for k in 0..batches.len() {
        let result = process_batch(shard, shared, &batches[k]);
        batches[k].clear();
        if let Err(error) = result {
            if matches!(error, ProcessorError::Registry(_)) {
                for rest in &mut batches[k + 1..] {
                    not_processed_from(shard, shared, rest, 0)?;
                    rest.clear();
                }
            }
            return Err(error);
        }
    }
    shard.send_records(shared)
}

/// Processes a batch's records with `shard`, up to the first error. Consumer errors in the
/// batch (a partition that cannot be fetched, ...) are logged: librdkafka retries them.
///
/// When the registry cannot be reached, the records after the failing one are not processed
/// either; each of their partitions counts as consumed from its first of them, so that the
/// abort that follows rewinds those partitions too (the consumer has fetched past them).
fn process_batch(
    shard: &mut Shard,
    shared: &Shared,
    batch: &Batch<'_>,
) -> Result<(), ProcessorError> {
    for index in 0..batch.len() {
        match batch.get(index) {
            None => break,
            Some(Err(error)) => warn!(%error, "consumer error"),
            Some(Ok(record)) => match shard.process(shared, &record) {
                Ok(()) => {}
                Err(error @ ProcessorError::Registry(_)) => {
                    not_processed_from(shard, shared, batch, index + 1)?;
                    return Err(error);
                }
                Err(error) => return Err(error),
            },
        }
    }
    Ok(())
}

/// The batch's records from `start` on are left unprocessed (see [`Shard::not_processed`]).
fn not_processed_from(
    shard: &mut Shard,
    shared: &Shared,
    batch: &Batch<'_>,
    start: usize,
) -> Result<(), ProcessorError> {
    for index in start..batch.len() {
        if let Some(Ok(record)) = batch.get(index) {
            shard.not_processed(shared, &record)?;
        }
    }
    Ok(())
}

/// Runs `work` on each shard whose `active` says so, with its own `inputs[k]`: the first
/// such shard on this thread, the others on `pool`'s threads at the same time. Returns each
/// shard's result in shard order, `None` for the inactive ones. A shard with nothing to do
/// costs no thread a wake-up.
fn fork<S: Send, C: Sync, I: Send, T: Send>(
    pool: Option<&rayon::ThreadPool>,
    shared: &C,
    shards: &mut [S],
    inputs: &mut [I],
    active: impl Fn(&S, &I) -> bool,
    work: impl Fn(&mut S, &mut I, &C) -> T + Sync,
) -> Vec<Option<T>> {
    let mut results: Vec<Option<T>> = shards.iter().map(|_| None).collect();
    let mut jobs: Vec<_> = shards
        .iter_mut()
        .zip(inputs.iter_mut())
        .zip(results.iter_mut())
        .filter(|((shard, input), _)| active(shard, input))
        .collect();
    let work = &work;
    match (pool, jobs.len()) {
        (Some(pool), 2..) => pool.in_place_scope(|scope| {
            let mut jobs = jobs.drain(..);
            let here = jobs.next();
            for ((shard, input), result) in jobs {
                scope.spawn(move |_| *result = Some(work(shard, input, shared)));
            }
            if let Some(((shard, input), result)) = here {
                *result = Some(work(shard, input, shared));
            }
        }),
        _ => {
            for ((shard, input), result) in jobs {
                *result = Some(work(shard, input, shared));
            }
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::thread::ThreadId;

    use super::*;

    #[test]
    fn fork_runs_each_active_shard_once_and_gives_the_results_in_shard_order() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("pool");
        for pool in [None, Some(&pool)] {
            let mut shards = vec![0u64, 10, 20, 30];
            // Shard 2 has nothing to do.
            let mut inputs = vec![1u64, 2, 0, 4];
            let threads: Mutex<HashSet<ThreadId>> = Mutex::new(HashSet::new());
            let results = fork(
                pool,
                &threads,
                &mut shards,
                &mut inputs,
                |_, input| *input > 0,
                |shard, input, threads| {
                    lock(threads).insert(std::thread::current().id());
                    *shard += std::mem::take(input);
                    *shard
                },
            );
            assert_eq!(results, [Some(1), Some(12), None, Some(34)]);
            assert_eq!(shards, [1, 12, 20, 34]);
            assert_eq!(inputs, [0, 0, 0, 0]);
            let threads = lock(&threads);
            assert!(
                threads.contains(&std::thread::current().id()),
                "the first here"
            );
            match pool {
                None => assert_eq!(threads.len(), 1),
                Some(_) => assert!(threads.len() > 1, "no shard ran on the pool"),
            }
        }
    }
}
