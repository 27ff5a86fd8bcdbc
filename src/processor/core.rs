//! The processor's state between polls: the open transaction, the tasks (one per assigned
//! input partition, each with its RocksDB store and the graphs the transaction touched) and
//! the work done for each record, at commit, and on abort.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use compact_str::CompactString;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use rustc_hash::FxHashMap;
use tracing::{debug, info, warn};

use crate::api::{Health, LocalOrders};
use crate::emit::txn::{self, flush, retrying, send, TXN_TIMEOUT};
use crate::emit::RecordEncoder;
use crate::engine::{codec, Engine, OrderEvent, OrderGraph};
use crate::ingest::{EventDecoder, InputRecord};
use crate::metrics::{LocalCounters, Metrics};
use crate::state::{PartitionStore, RocksStore, StoreBatch};

use super::ProcessorError;

/// [`Core::commit_due`] looks at the clock once per this many records.
const CLOCK_EVERY: u32 = 32;

/// Topic names the processor writes to.
pub(crate) struct Outputs {
    pub changes: String,
    pub status: String,
    pub changelog: String,
    pub dead_letters: String,
}

/// Tracks the delivery reports of the transactional producer: the last changelog offset
/// written per partition (the stores' checkpoints after a commit). A failed delivery needs
/// no tracking here: it makes the transaction's commit fail, and the commit aborts.
pub(crate) struct Deliveries {
    changelog: String,
    last: Mutex<HashMap<i32, i64>>,
}

impl Deliveries {
    pub fn new(changelog: String) -> Deliveries {
        Deliveries {
            changelog,
            last: Mutex::new(HashMap::new()),
        }
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) if Message::topic(message) == self.changelog => {
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

/// Where a partition's stream time is kept, in its store and its changelog: not valid
/// UTF-8, so never an order id.
pub(crate) const STREAM_TIME_KEY: &[u8] = b"\xffstream-time";

/// How many stored orders the retention sweep looks at per partition per transaction: a
/// full pass over a store of N orders takes N / this many transactions, at a cost of about
/// a millisecond per transaction.
const SWEEP_PER_TXN: usize = 200;

/// The consumers input records come from. The group member is assigned the partitions of
/// the lead (first) input topic; with more than one input topic, the follower is assigned
/// the same-numbered partitions of the others, so that one instance holds every event of
/// an order whatever topic it came on. Offsets of both commit in the transactions, under
/// the group.
pub(crate) struct Inputs<'a, C: ConsumerContext> {
    pub group: &'a BaseConsumer<C>,
    pub follower: Option<&'a BaseConsumer>,
}

/// One assigned input partition.
pub(crate) struct Task {
    pub store: RocksStore,
    /// The graphs the open transaction changed: read from the store once, written back
    /// only after the transaction commits, so that the store never holds what an aborted
    /// transaction did.
    pub dirty: HashMap<CompactString, OrderGraph>,
    /// The partition's stream time: the latest `occurred_at` among the events it processed
    /// (epoch ms). Retention is measured against it, not against the wall clock, so a replay
    /// of old input decides exactly as the first run did. Kept in the store and the
    /// changelog under [`STREAM_TIME_KEY`], so it survives restarts and moves.
    pub stream_time: i64,
    /// The stream time as of the last commit: where an abort rewinds it to.
    committed_stream_time: i64,
    /// Where the next retention sweep goes on from (the store wraps around to the start).
    sweep_from: Vec<u8>,
}

impl Task {
    /// A restored partition's task, with the stream time its store holds.
    pub fn new(store: RocksStore) -> Result<Task, ProcessorError> {
        let stream_time = match store.get(STREAM_TIME_KEY)? {
            Some(bytes) => decode_stream_time(&bytes).ok_or_else(|| {
                ProcessorError::Internal(format!(
                    "the stream time in store {} is not 8 bytes: {bytes:?}",
                    store.path().display()
                ))
            })?,
            None => i64::MIN,
        };
        Ok(Task {
            store,
            dirty: HashMap::new(),
            stream_time,
            committed_stream_time: stream_time,
            sweep_from: Vec::new(),
        })
    }
}

/// The dead-letter class of an event for an order retention removed.
pub(crate) const EXPIRED_ORDER: &str = "expired_order";

/// An event that occurred more than the retention before its partition's stream time, for an
/// order that is not in state or is finished since before that: retention removed the order,
/// or may have by now, so the event cannot be applied to it. It goes to the dead-letter
/// topic. Deciding by stream time alone, never by whether the sweep has got to the order
/// yet, gives the same answer in every run over the same input.
#[derive(Debug, thiserror::Error)]
#[error(
    "event {event_id} of order {order_id} occurred at {occurred_at}, more than \
     state.finished_retention_ms ({retention_ms} ms) before the partition's stream time \
     {stream_time}, and the order is finished or unknown: finished orders leave state after \
     that retention"
)]
pub(crate) struct ExpiredOrder {
    event_id: CompactString,
    order_id: CompactString,
    occurred_at: i64,
    stream_time: i64,
    retention_ms: i64,
}

impl ExpiredOrder {
    fn new(event: &OrderEvent, stream_time: i64, settings: &Settings) -> ExpiredOrder {
        ExpiredOrder {
            event_id: event.event_id.clone(),
            order_id: event.order_id.clone(),
            occurred_at: event.occurred_at,
            stream_time,
            retention_ms: settings.finished_retention_ms,
        }
    }
}

fn decode_stream_time(bytes: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(bytes.try_into().ok()?))
}

/// Processing settings of the core, from the configuration.
pub(crate) struct Settings {
    /// The input topics; the first is the lead, whose partitions the group assigns
    /// ([`Inputs`]).
    pub inputs: Vec<String>,
    pub commit_interval: Duration,
    /// How long a finished order stays in state after its last event, in stream time (ms).
    pub finished_retention_ms: i64,
}

/// The open transaction.
struct Txn {
    started: Instant,
    /// Per input topic (its index in [`Settings::inputs`]) and partition: the first offset
    /// the transaction consumed (where to seek back to on abort) and the next offset to
    /// commit.
    consumed: FxHashMap<(usize, i32), (i64, i64)>,
    /// Each processed event's `occurred_at` and its record's timestamp, for the end-to-end
    /// latency once the transaction commits.
    times: Vec<(i64, Option<i64>)>,
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
    pub engine: Engine,
    pub producer: BaseProducer<Deliveries>,
    pub decoder: EventDecoder,
    pub changes: RecordEncoder,
    pub views: RecordEncoder,
    pub outputs: Outputs,
    pub tasks: BTreeMap<i32, Task>,
    /// Partitions assigned by the last rebalance and paused until their store is restored.
    pub pending: Vec<(String, i32)>,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// The order API's view of the served partitions: told when one starts or stops being
    /// served, and which orders each commit changed.
    pub orders: Arc<LocalOrders>,
    txn: Option<Txn>,
    /// The committed transaction's `times`, emptied, for the next one.
    spare_times: Vec<(i64, Option<i64>)>,
    records_unclocked: u32,
    buffer: Vec<u8>,
    /// The per-event counters, looked up once each.
    counters: LocalCounters,
}

impl Core {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        engine: Engine,
        producer: BaseProducer<Deliveries>,
        decoder: EventDecoder,
        changes: RecordEncoder,
        views: RecordEncoder,
        outputs: Outputs,
        settings: Settings,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        orders: Arc<LocalOrders>,
    ) -> Core {
        Core {
            engine,
            producer,
            decoder,
            changes,
            views,
            outputs,
            settings,
            tasks: BTreeMap::new(),
            pending: Vec::new(),
            metrics,
            health,
            orders,
            txn: None,
            spare_times: Vec::new(),
            records_unclocked: 0,
            buffer: Vec::with_capacity(4096),
            counters: LocalCounters::default(),
        }
    }

    /// Whether the open transaction has run its commit interval; also the loop's heartbeat.
    /// Called after every poll; after a record it reads the clock only every
    /// [`CLOCK_EVERY`] records (on this VM a clock read costs a noticeable part of a record).
    pub fn commit_due(&mut self, after_record: bool) -> bool {
        if after_record {
            self.records_unclocked += 1;
            if self.records_unclocked < CLOCK_EVERY {
                return false;
            }
        }
        self.records_unclocked = 0;
        self.health.heartbeat(); // reads the clock as well
        self.txn
            .as_ref()
            .is_some_and(|t| t.started.elapsed() >= self.settings.commit_interval)
    }

    /// Processes one input record inside the open transaction (opening one if needed).
    ///
    /// Errors: [`ProcessorError::Registry`] when the schema registry cannot be reached (the
    /// caller aborts and retries later: that is no reason to dead-letter a record), Kafka
    /// errors of the producer, store errors.
    pub fn process<R: InputRecord>(&mut self, message: &R) -> Result<(), ProcessorError> {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        let input = self.input_index(topic)?;
        if !self.tasks.contains_key(&partition) {
            if input != 0 {
                // A followed partition is assigned after its task exists and unassigned
                // with it; a record fetched just before may still come. Its offset is not
                // committed, so the partition's owner consumes it.
                debug!(
                    topic,
                    partition, offset, "record of a partition no longer held"
                );
                return Ok(());
            }
            // Paused until restored, so this cannot happen; if it did, skipping would lose
            // the record, so stop instead.
            return Err(ProcessorError::Internal(format!(
                "record from {topic}[{partition}] before its state was restored"
            )));
        }
        self.begin()?;
        match self.decoder.decode(message.key(), message.payload()) {
            Err(error) if error.is_retriable() => {
                // Not consumed: the abort that follows must seek back to this record too.
                if let Some(txn) = &mut self.txn {
                    txn.consumed
                        .entry((input, partition))
                        .or_insert((offset, offset));
                }
                return Err(ProcessorError::Registry(error));
            }
            Err(error) => self.dead_letter(message, error.class(), &error)?,
            Ok(event) => {
                self.counters
                    .event_in(&self.metrics, input, topic, &event.event_type);
                if let Some(txn) = &mut self.txn {
                    txn.times.push((event.occurred_at, message.timestamp_ms()));
                }
                if let Some(expired) = self.apply(partition, event)? {
                    self.dead_letter(message, EXPIRED_ORDER, &expired)?;
                }
            }
        }
        if let Some(txn) = &mut self.txn {
            txn.consumed
                .entry((input, partition))
                .and_modify(|(_, next)| *next = offset + 1)
                .or_insert((offset, offset + 1));
        }
        Ok(())
    }

    /// The index of an input topic in [`Settings::inputs`].
    fn input_index(&self, topic: &str) -> Result<usize, ProcessorError> {
        self.settings
            .inputs
            .iter()
            .position(|input| input == topic)
            .ok_or_else(|| ProcessorError::Internal(format!("a record from {topic}, not an input")))
    }

    /// Applies `event` to its order's graph and produces the change records. Returns why
    /// not when the event is for an order that retention removed (or would have removed) from
    /// state: see [`ExpiredOrder`].
    fn apply(
        &mut self,
        partition: i32,
        event: OrderEvent,
    ) -> Result<Option<ExpiredOrder>, ProcessorError> {
        let Core {
            engine,
            producer,
            changes,
            outputs,
            tasks,
            buffer,
            metrics,
            settings,
            counters,
            ..
        } = self;
        let task = tasks
            .get_mut(&partition)
            .ok_or_else(|| ProcessorError::Internal(format!("task {partition} vanished")))?;
        // Older than this and finished (or absent): the order is, or may by now be, gone.
        let horizon = task
            .stream_time
            .saturating_sub(settings.finished_retention_ms);
        let late = event.occurred_at < horizon;
        let expired = |graph: Option<&OrderGraph>| {
            late && graph.is_none_or(|g| engine.finished_at(g).is_some_and(|at| at < horizon))
        };
        if !task.dirty.contains_key(&event.order_id) {
            let stored =
                match task.store.get(event.order_id.as_bytes())? {
                    Some(bytes) => Some(codec::decode(&bytes).map_err(|error| {
                        ProcessorError::CorruptState {
                            partition,
                            order_id: event.order_id.to_string(),
                            error,
                        }
                    })?),
                    None => None,
                };
            if expired(stored.as_ref()) {
                return Ok(Some(ExpiredOrder::new(&event, task.stream_time, settings)));
            }
            let graph = stored.unwrap_or_else(|| OrderGraph::new(event.order_id.clone()));
            task.dirty.insert(event.order_id.clone(), graph);
        }
        let Some(graph) = task.dirty.get_mut(&event.order_id) else {
            return Err(ProcessorError::Internal(
                "a graph just inserted is gone".into(),
            ));
        };
        if expired(Some(graph)) {
            return Ok(Some(ExpiredOrder::new(&event, task.stream_time, settings)));
        }
        task.stream_time = task.stream_time.max(event.occurred_at);
        let applied = engine.apply(graph, event);
        if applied.duplicate {
            metrics.duplicate_event();
        }
        if applied.out_of_order {
            metrics.out_of_order_event();
        }
        for (index, change) in applied.changes.iter().enumerate() {
            if applied.is_confirmation(index) {
                metrics.placeholder_confirmed();
            } else {
                counters.milestone_reached(metrics, &change.milestone, change.inferred);
            }
            buffer.clear();
            changes.encode_change(change, buffer)?;
            send(
                producer,
                BaseRecord::to(&outputs.changes)
                    .key(change.order_id.as_bytes())
                    .payload(buffer.as_slice()),
            )?;
        }
        Ok(None)
    }

    /// The record unchanged to the dead-letter topic, with why and where it came from.
    fn dead_letter<R: InputRecord>(
        &mut self,
        message: &R,
        class: &str,
        error: &dyn std::fmt::Display,
    ) -> Result<(), ProcessorError> {
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let text = error.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "error.class",
                value: Some(class),
            })
            .insert(Header {
                key: "error.message",
                value: Some(text.as_str()),
            })
            .insert(Header {
                key: "source.topic",
                value: Some(message.topic()),
            })
            .insert(Header {
                key: "source.partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "source.offset",
                value: Some(offset.as_str()),
            });
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(&self.outputs.dead_letters).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        self.metrics.dead_letter(
            message.topic(),
            message.partition(),
            message.offset(),
            class,
            error,
        );
        Ok(send(&self.producer, record)?)
    }

    fn begin(&mut self) -> Result<(), ProcessorError> {
        if self.txn.is_none() {
            self.producer.begin_transaction()?;
            self.txn = Some(Txn {
                started: Instant::now(),
                consumed: FxHashMap::default(),
                // Tens of thousands of entries under a backlog: reuse the last one's memory.
                times: std::mem::take(&mut self.spare_times),
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
        match self.try_commit(inputs.group, &txn) {
            Ok(()) => {
                self.spare_times = txn.times;
                self.spare_times.clear();
                Ok(TxnOutcome::Committed)
            }
            Err(ProcessorError::Kafka(KafkaError::Transaction(e))) if e.txn_requires_abort() => {
                self.metrics.transaction_aborted(&e);
                self.abort(inputs, txn)?;
                Ok(TxnOutcome::Aborted)
            }
            Err(error) => Err(error),
        }
    }

    fn try_commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        txn: &Txn,
    ) -> Result<(), ProcessorError> {
        let writes = self.send_state_and_views()?;
        let producer = &self.producer;
        let mut offsets = TopicPartitionList::new();
        for (&(input, partition), &(_, next)) in &txn.consumed {
            let topic = &self.settings.inputs[input];
            offsets.add_partition_offset(topic, partition, Offset::Offset(next))?;
        }
        if offsets.count() > 0 {
            let metadata = consumer.group_metadata().ok_or_else(|| {
                ProcessorError::Internal("the consumer has no group metadata".into())
            })?;
            retrying(TXN_TIMEOUT, || {
                producer.send_offsets_to_transaction(&offsets, &metadata, TXN_TIMEOUT)
            })?;
        }
        let started = Instant::now();
        flush(producer, TXN_TIMEOUT);
        retrying(TXN_TIMEOUT, || producer.commit_transaction(TXN_TIMEOUT))?;
        self.metrics.transaction_committed(started.elapsed());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.metrics.events_committed(&txn.times, now);
        let last = lock(&self.producer.context().last).clone();
        for (partition, mut batch) in writes {
            batch.checkpoint = last.get(&partition).map(|offset| offset + 1);
            if let Some(task) = self.tasks.get_mut(&partition) {
                if !batch.is_empty() {
                    task.store.write(batch)?;
                }
                // In the store now: the order API's event streams may read it.
                self.orders.committed(task.dirty.keys());
                task.dirty.clear();
                task.committed_stream_time = task.stream_time;
                self.metrics
                    .state_size(partition, task.store.approximate_bytes(), None);
            }
        }
        Ok(())
    }

    /// Produces the changelog record and the view of every order the transaction changed,
    /// the tombstones of the finished orders whose retention is over (a sweep over part of
    /// each store) and each partition's stream time; returns the store batches to write once
    /// the transaction commits.
    fn send_state_and_views(&mut self) -> Result<Vec<(i32, StoreBatch)>, ProcessorError> {
        let Core {
            engine,
            producer,
            views,
            outputs,
            tasks,
            buffer,
            settings,
            metrics,
            ..
        } = self;
        let mut writes: Vec<(i32, StoreBatch)> = Vec::with_capacity(tasks.len());
        for (&partition, task) in tasks.iter_mut() {
            let mut batch = StoreBatch {
                puts: Vec::with_capacity(task.dirty.len()),
                checkpoint: None,
            };
            for (order_id, graph) in &task.dirty {
                let state = codec::to_bytes(graph);
                send(
                    producer,
                    BaseRecord::to(&outputs.changelog)
                        .partition(partition)
                        .key(order_id.as_bytes())
                        .payload(state.as_slice()),
                )?;
                buffer.clear();
                views.encode_view(&engine.view(graph), buffer)?;
                send(
                    producer,
                    BaseRecord::to(&outputs.status)
                        .key(order_id.as_bytes())
                        .payload(buffer.as_slice()),
                )?;
                batch.put(order_id.as_bytes(), state);
            }
            let horizon = task
                .stream_time
                .saturating_sub(settings.finished_retention_ms);
            let expired = sweep(task, engine, horizon, partition)?;
            for order_id in &expired {
                // No payload: a tombstone, which compaction turns into no record at all.
                send(
                    producer,
                    BaseRecord::<[u8], [u8]>::to(&outputs.changelog)
                        .partition(partition)
                        .key(order_id.as_slice()),
                )?;
                batch.delete(order_id.as_slice());
            }
            metrics.orders_expired(expired.len());
            if task.stream_time != task.committed_stream_time {
                let time = task.stream_time.to_be_bytes();
                send(
                    producer,
                    BaseRecord::to(&outputs.changelog)
                        .partition(partition)
                        .key(STREAM_TIME_KEY)
                        .payload(&time[..]),
                )?;
                batch.put(STREAM_TIME_KEY, time);
            }
            writes.push((partition, batch));
        }
        Ok(writes)
    }

    /// Aborts the transaction: its outputs are never seen by `read_committed` readers, the
    /// graphs it changed are dropped (the stores never saw them) and the consumer goes back
    /// to the first record it consumed in each partition.
    fn abort<C: ConsumerContext>(
        &mut self,
        inputs: &Inputs<'_, C>,
        txn: Txn,
    ) -> Result<(), ProcessorError> {
        txn::abort(&self.producer, TXN_TIMEOUT)?;
        for task in self.tasks.values_mut() {
            task.dirty.clear();
            task.stream_time = task.committed_stream_time;
        }
        let (mut lead, mut followed) = (TopicPartitionList::new(), TopicPartitionList::new());
        for (&(input, partition), &(first, _)) in &txn.consumed {
            let rewind = if input == 0 { &mut lead } else { &mut followed };
            let topic = &self.settings.inputs[input];
            rewind.add_partition_offset(topic, partition, Offset::Offset(first))?;
        }
        if lead.count() > 0 {
            inputs.group.seek_partitions(lead, TXN_TIMEOUT)?;
        }
        if let (true, Some(follower)) = (followed.count() > 0, inputs.follower) {
            follower.seek_partitions(followed, TXN_TIMEOUT)?;
        }
        info!(
            partitions = txn.consumed.len(),
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
            Some(txn) => self.abort(inputs, txn),
            None => Ok(()),
        }
    }

    /// Closes the store of a partition this instance no longer owns.
    pub fn close_task(&mut self, partition: i32) {
        self.metrics.partition_revoked(partition);
        self.orders.stop_serving(partition);
        self.health.partition_revoked(partition);
        if let Some(task) = self.tasks.remove(&partition) {
            if let Err(error) = task.store.close() {
                warn!(partition, %error, "closing a revoked partition's store failed");
            }
        }
    }
}

/// Looks at the next [`SWEEP_PER_TXN`] orders of the task's store (from where the last sweep
/// stopped, wrapping around) and returns those finished before `horizon`: their retention is
/// over. Orders the open transaction changed are left for a later sweep.
fn sweep(
    task: &mut Task,
    engine: &Engine,
    horizon: i64,
    partition: i32,
) -> Result<Vec<Vec<u8>>, ProcessorError> {
    if horizon == i64::MIN {
        return Ok(Vec::new()); // no stream time yet: nothing can be old
    }
    let mut expired = Vec::new();
    let mut looked = 0;
    let mut next = None;
    let Task {
        store,
        dirty,
        sweep_from,
        ..
    } = task;
    store.scan(sweep_from, &mut |key, value| {
        if looked == SWEEP_PER_TXN {
            next = Some(key.to_vec());
            return false;
        }
        looked += 1;
        let Ok(order_id) = std::str::from_utf8(key) else {
            return true; // the stream time
        };
        if dirty.contains_key(order_id) {
            return true;
        }
        match codec::summary(value) {
            Ok(summary) => {
                if engine
                    .finished_at_stored(&summary)
                    .is_some_and(|at| at < horizon)
                {
                    expired.push(key.to_vec());
                }
            }
            // Processing reports it if the order gets another event; the sweep goes on.
            Err(error) => warn!(partition, order_id, %error, "stored state is damaged"),
        }
        true
    })?;
    *sweep_from = next.unwrap_or_default();
    Ok(expired)
}
