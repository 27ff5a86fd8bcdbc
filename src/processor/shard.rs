//! A shard of one group member's partitions: their tasks (each a RocksDB store and the
//! graphs the open transaction changed) and the per-record work on them. A member's shards
//! run in parallel on its worker threads (`processing.workers`), all inside the member's one
//! transaction: a shard touches only its own partitions, and shares with the others only
//! what is safe to share between threads ([`Shared`]: the engine, the producer, the
//! decoder and encoders, the metrics).
//!
//! What a shard does for the transaction happens in three steps, which [`super::core::Core`]
//! runs for all shards at once: [`Shard::process`] for each record (decode, apply, change
//! records; and the changelog record and view of each finished order whose last event is
//! [`Settings::write_out_after`] events of its partition back), [`Shard::prepare`] at commit
//! (changelog records and views of the orders not written out yet, retention tombstones),
//! then [`Shard::committed`] (the store writes) or [`Shard::aborted`].

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use compact_str::CompactString;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord};
use rustc_hash::FxHashMap;
use tracing::{debug, warn};

use crate::api::LocalOrders;
use crate::emit::txn::{send, send_to, Outbox, Topic};
use crate::emit::RecordEncoder;
use crate::engine::{codec, Engine, OrderEvent, OrderGraph};
use crate::ingest::{EventDecoder, InputRecord};
use crate::metrics::{LocalCounters, Metrics};
use crate::state::{PartitionStore, RocksStore, StoreBatch};

use super::core::Deliveries;
use super::ProcessorError;

/// Where a partition's stream time is kept, in its store and its changelog: not valid
/// UTF-8, so never an order id.
pub(crate) const STREAM_TIME_KEY: &[u8] = b"\xffstream-time";

/// How many stored orders the retention sweep looks at per partition per transaction: a
/// full pass over a store of N orders takes N / this many transactions, at a cost of about
/// a millisecond per transaction.
const SWEEP_PER_TXN: usize = 200;

/// The dead-letter class of an event for an order retention removed.
pub(crate) const EXPIRED_ORDER: &str = "expired_order";

/// While a shard processes records, at most this many change records and views wait in its
/// outboxes: they are sent when this many wait, after each run of batches
/// (`core::process_lanes`) and at the end of the commit's write-outs, whatever their size.
const OUTBOX_RECORDS: usize = 2048;

/// A shard's change records and order views made since they were last sent, produced
/// together per topic ([`Outbox`]). Changelog records, which go to the partition of their
/// input's, are produced at once ([`send_to`]; see [`Outbox`] for why).
#[derive(Default)]
struct Outboxes {
    changes: Outbox,
    status: Outbox,
}

impl Outboxes {
    fn len(&self) -> usize {
        self.changes.len() + self.status.len()
    }

    /// Produces what waits, in the open transaction.
    fn send(&mut self, shared: &Shared) -> Result<(), ProcessorError> {
        let Shared {
            producer, topics, ..
        } = shared;
        for (outbox, topic) in [
            (&mut self.changes, &topics.changes),
            (&mut self.status, &topics.status),
        ] {
            outbox.send(producer, topic)?;
        }
        Ok(())
    }

    fn clear(&mut self) {
        self.changes.clear();
        self.status.clear();
    }
}

/// Topic names the processor writes to.
pub(crate) struct Outputs {
    pub changes: String,
    pub status: String,
    pub changelog: String,
    pub dead_letters: String,
}

/// Processing settings, from the configuration.
pub(crate) struct Settings {
    /// The input topics; the first is the lead, whose partitions the group assigns
    /// (`processor::core::Inputs`).
    pub inputs: Vec<String>,
    pub commit_interval: Duration,
    /// How long a finished order stays in state after its last event, in stream time (ms).
    pub finished_retention_ms: i64,
    /// How many events of a partition after a finished order's last one (its status final:
    /// delivered, cancelled) the order is written out (its state encoded, its changelog
    /// record and view produced, its graph dropped) rather than at the commit; 0 for at the
    /// commit only. A transaction's graphs, megabytes under a backlog, are out of the
    /// processor's cache by the time the commit would read them again, and a finished order
    /// rarely gets another event; if it does, it is read back from its written state and
    /// written out again. Orders under way are written at the commit: their events may lie
    /// far apart, and written out after each they would cost a changelog record and a view
    /// per event instead of per transaction.
    pub write_out_after: usize,
}

/// The producer's handles of the output topics records are sent to per order.
pub(crate) struct OutputTopics {
    pub changes: Topic,
    pub status: Topic,
    pub changelog: Topic,
}

impl OutputTopics {
    /// # Safety
    /// As [`Topic::new`]: dropped before `producer`.
    pub unsafe fn new(
        producer: &BaseProducer<Deliveries>,
        outputs: &Outputs,
    ) -> Result<OutputTopics, ProcessorError> {
        // SAFETY: passed on to the caller.
        unsafe {
            Ok(OutputTopics {
                changes: Topic::new(producer, &outputs.changes)?,
                status: Topic::new(producer, &outputs.status)?,
                changelog: Topic::new(producer, &outputs.changelog)?,
            })
        }
    }
}

/// What a member's shards share, read-only (or internally synchronized): safe to use from
/// every worker thread at once.
pub(crate) struct Shared {
    pub engine: Engine,
    /// Declared before `producer`, so dropped before it, as the handles require.
    pub topics: OutputTopics,
    /// The member's transactional producer: every shard produces into its open transaction.
    pub producer: BaseProducer<Deliveries>,
    pub decoder: EventDecoder,
    pub changes: RecordEncoder,
    pub views: RecordEncoder,
    pub outputs: Outputs,
    pub settings: Settings,
    pub metrics: std::sync::Arc<Metrics>,
    /// The order API's view of the served partitions: told which orders each commit changed.
    pub orders: std::sync::Arc<LocalOrders>,
}

impl Shared {
    /// The index of an input topic in [`Settings::inputs`].
    fn input_index(&self, topic: &str) -> Result<usize, ProcessorError> {
        self.settings
            .inputs
            .iter()
            .position(|input| input == topic)
            .ok_or_else(|| ProcessorError::Internal(format!("a record from {topic}, not an input")))
    }
}

/// An order the open transaction changed.
pub(crate) enum Changed {
    /// Its graph, which may get more events; `touched` counts the partition's events up to
    /// its last one ([`Task::touches`]).
    Open { graph: OrderGraph, touched: u64 },
    /// Written out ([`Settings::write_out_after`]): its changelog record and view are produced, and
    /// this is its state, for the store once the transaction commits.
    Written(Vec<u8>),
}

/// One assigned input partition.
pub(crate) struct Task {
    pub store: RocksStore,
    /// The orders the open transaction changed: read from the store once, written back
    /// only after the transaction commits, so that the store never holds what an aborted
    /// transaction did. Keyed by order id with a fast hash: looked up at every event.
    pub dirty: FxHashMap<CompactString, Changed>,
    /// The finished orders among those of the partition's last
    /// [`Settings::write_out_after`] events, oldest first, each with the count of its event
    /// ([`Task::touches`]): one whose last event leaves this window is written out. Only
    /// finished orders: those under way are written at the commit, and looking each event's
    /// order up again as it left the window cost a lookup per event.
    finished: VecDeque<(CompactString, u64)>,
    /// The events the partition processed since it was assigned.
    touches: u64,
    /// The partition's stream time: the latest `occurred_at` among the events it processed
    /// (epoch ms). Retention is measured against it, not against the wall clock, so a replay
    /// of old input decides exactly as the first run did. Kept in the store and the
    /// changelog under [`STREAM_TIME_KEY`], so it survives restarts and moves.
    pub stream_time: i64,
    /// The stream time as of the last commit: where an abort rewinds it to.
    committed_stream_time: i64,
    /// Where the next retention sweep goes on from (the store wraps around to the start).
    sweep_from: Vec<u8>,
    /// Orders under way as the last commits left them, for their next events.
    kept: Kept,
}

/// The graphs of the orders under way that the last transactions committed, at most
/// `capacity`, the least recently committed going first: an order's next event, in a later
/// transaction, then starts from its graph as it is in memory (where its milestones stand
/// included) rather than from its stored state, read, decoded and evaluated again. An order
/// is in the cache or in the open transaction's [`Task::dirty`], never both: taken out at
/// its next event, and kept again only once that transaction commits, so an abort leaves
/// nothing here that the store does not hold. Each graph equals the state written for it.
#[derive(Default)]
struct Kept {
    graphs: FxHashMap<CompactString, (OrderGraph, u64)>,
    /// Keys in the order they were kept, each with the stamp it was kept with: an entry
    /// whose order was taken out, or kept again since, is stale and skipped.
    order: VecDeque<(CompactString, u64)>,
    next: u64,
    capacity: usize,
}

impl Kept {
    fn new(capacity: usize) -> Kept {
        Kept {
            capacity,
            ..Kept::default()
        }
    }

    /// The order's graph, out of the cache, if it is there.
    fn take(&mut self, order_id: &str) -> Option<OrderGraph> {
        self.graphs.remove(order_id).map(|(graph, _)| graph)
    }

    /// Keeps `graph`, the committed state of `order_id`, dropping the least recently kept
    /// graphs beyond the capacity.
    fn keep(&mut self, order_id: CompactString, graph: OrderGraph) {
        if self.capacity == 0 {
            return;
        }
        let stamp = self.next;
        self.next += 1;
        self.order.push_back((order_id.clone(), stamp));
        self.graphs.insert(order_id, (graph, stamp));
        while self.graphs.len() > self.capacity {
            let Some((order_id, stamp)) = self.order.pop_front() else {
                break;
            };
            if self.graphs.get(&order_id).is_some_and(|(_, s)| *s == stamp) {
                self.graphs.remove(&order_id);
            }
        }
        // Stale entries of orders taken out and not kept again: dropped once they are most.
        if self.order.len() > 2 * self.graphs.len() + 1024 {
            let graphs = &self.graphs;
            self.order
                .retain(|(order_id, stamp)| graphs.get(order_id).is_some_and(|(_, s)| s == stamp));
        }
    }

    fn forget(&mut self, order_id: &[u8]) {
        if let Ok(order_id) = std::str::from_utf8(order_id) {
            self.graphs.remove(order_id);
        }
    }
}

impl Task {
    /// A restored partition's task, with the stream time its store holds, keeping up to
    /// `kept_orders` orders under way in memory between transactions.
    pub fn new(store: RocksStore, kept_orders: usize) -> Result<Task, ProcessorError> {
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
            dirty: FxHashMap::default(),
            finished: VecDeque::new(),
            touches: 0,
            stream_time,
            committed_stream_time: stream_time,
            sweep_from: Vec::new(),
            kept: Kept::new(kept_orders),
        })
    }

    /// Notes an event of the open order `order_id` (whose `touched` is [`Task::touches`]),
    /// `finished` when the order is finished with it, then writes out the finished orders
    /// whose last event left the window of the partition's last
    /// [`Settings::write_out_after`] events. Called only with the window on (not 0).
    fn touched(
        &mut self,
        shared: &Shared,
        partition: i32,
        order_id: CompactString,
        finished: bool,
        outbox: &mut Outboxes,
    ) -> Result<(), ProcessorError> {
        let window = shared.settings.write_out_after as u64;
        debug_assert!(window > 0, "touched with the write-out window off");
        if finished {
            self.finished.push_back((order_id, self.touches));
        }
        self.touches += 1;
        while self
            .finished
            .front()
            .is_some_and(|&(_, touch)| self.touches - touch > window)
        {
            let Some((order_id, touch)) = self.finished.pop_front() else {
                break;
            };
            let Some(changed) = self.dirty.get_mut(&order_id) else {
                continue;
            };
            match changed {
                // Queued finished, and no event since: finished still.
                Changed::Open { graph, touched } if *touched == touch => {
                    let state = write_out(shared, partition, &order_id, graph, outbox)?;
                    *changed = Changed::Written(state); // the graph is dropped while in cache
                }
                _ => {} // written out already, or it had an event since
            }
        }
        Ok(())
    }

    /// Keeps the graphs of the orders under way that the transaction just committed changed,
    /// for their next events ([`Kept`]).
    fn keep_committed(&mut self, engine: &Engine) {
        for (order_id, changed) in self.dirty.drain() {
            if let Changed::Open { graph, .. } = changed {
                if engine.finished_at(&graph).is_none() {
                    self.kept.keep(order_id, graph);
                }
            }
        }
    }

    /// Forgets what the open transaction changed, once it committed or aborted.
    fn clear_changes(&mut self) {
        self.dirty.clear();
        self.finished.clear();
    }
}

/// Produces the order's changelog record and adds its view to the shard's outbox (produced
/// with the outbox, in the open transaction), and returns its state for the store.
fn write_out(
    shared: &Shared,
    partition: i32,
    order_id: &str,
    graph: &OrderGraph,
    outbox: &mut Outboxes,
) -> Result<Vec<u8>, ProcessorError> {
    let Shared {
        engine,
        producer,
        views,
        topics,
        ..
    } = shared;
    let key = order_id.as_bytes();
    let state = codec::to_bytes(graph);
    send_to(
        producer,
        &topics.changelog,
        Some(partition),
        key,
        Some(&state),
    )?;
    outbox
        .status
        .push(key, |out| views.encode_view(&engine.view(graph), out))?;
    Ok(state)
}

fn decode_stream_time(bytes: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(bytes.try_into().ok()?))
}

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

/// Per input topic (its index in [`Settings::inputs`]) and partition: the first offset the
/// open transaction consumed (where to seek back to on abort) and the next offset to commit.
pub(crate) type Consumed = FxHashMap<(usize, i32), (i64, i64)>;

/// The store writes of one committed transaction, per partition.
pub(crate) type Writes = Vec<(i32, StoreBatch)>;

/// A shard: some of the member's partitions, and what the open transaction did to them.
#[derive(Default)]
pub(crate) struct Shard {
    pub tasks: BTreeMap<i32, Task>,
    /// What the open transaction consumed of this shard's partitions.
    pub consumed: Consumed,
    /// Each processed event's `occurred_at` and its record's timestamp, for the end-to-end
    /// latency once the transaction commits. Tens of thousands of entries under a backlog;
    /// cleared, not freed, after each transaction.
    times: Vec<(i64, Option<i64>)>,
    /// The records made since the last [`Shard::send_records`], produced together.
    outbox: Outboxes,
    /// The per-event counters, looked up once each.
    counters: LocalCounters,
}

impl Shard {
    /// Processes one input record inside the member's open transaction, which the caller
    /// has begun.
    ///
    /// Errors: [`ProcessorError::Registry`] when the schema registry cannot be reached (the
    /// caller aborts and retries later: that is no reason to dead-letter a record; the record
    /// counts as consumed from, so that the abort seeks back to it), Kafka errors of the
    /// producer, store errors.
    pub fn process<R: InputRecord>(
        &mut self,
        shared: &Shared,
        message: &R,
    ) -> Result<(), ProcessorError> {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        let input = shared.input_index(topic)?;
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
            // Held until restored, so this cannot happen; if it did, skipping would lose the
            // record, so stop instead.
            return Err(unrestored(topic, partition));
        }
        match shared.decoder.decode(message.key(), message.payload()) {
            Err(error) if error.is_retriable() => {
                self.hold_back(input, partition, offset);
                return Err(ProcessorError::Registry(error));
            }
            Err(error) => self.dead_letter(shared, message, error.class(), &error)?,
            Ok(event) => {
                self.counters
                    .event_in(&shared.metrics, input, topic, &event.event_type);
                self.times.push((event.occurred_at, message.timestamp_ms()));
                if let Some(expired) = self.apply(shared, partition, event)? {
                    self.dead_letter(shared, message, EXPIRED_ORDER, &expired)?;
                }
                if self.outbox.len() >= OUTBOX_RECORDS {
                    self.send_records(shared)?;
                }
            }
        }
        self.consumed
            .entry((input, partition))
            .and_modify(|(_, next)| *next = offset + 1)
            .or_insert((offset, offset + 1));
        Ok(())
    }

    /// `message` was fetched but is left unprocessed (the registry could not be reached for
    /// a record before it, and the transaction is about to abort): its partition counts as
    /// consumed from it at the latest, so that the abort rewinds the consumer to it.
    ///
    /// Errors: the record is not from an input topic.
    pub fn not_processed<R: InputRecord>(
        &mut self,
        shared: &Shared,
        message: &R,
    ) -> Result<(), ProcessorError> {
        let input = shared.input_index(message.topic())?;
        // A partition no longer held is not this member's to rewind.
        if self.tasks.contains_key(&message.partition()) {
            self.hold_back(input, message.partition(), message.offset());
        }
        Ok(())
    }

    /// The partition counts as consumed from `offset` at the latest (nothing from there on
    /// processed), so that an abort seeks back to it.
    fn hold_back(&mut self, input: usize, partition: i32, offset: i64) {
        self.consumed
            .entry((input, partition))
            .or_insert((offset, offset));
    }

    /// Applies `event` to its order's graph and produces the change records. Returns why
    /// not when the event is for an order that retention removed (or would have removed) from
    /// state: see [`ExpiredOrder`].
    fn apply(
        &mut self,
        shared: &Shared,
        partition: i32,
        event: OrderEvent,
    ) -> Result<Option<ExpiredOrder>, ProcessorError> {
        let Shard {
            tasks,
            outbox,
            counters,
            ..
        } = self;
        let Shared {
            engine,
            changes,
            settings,
            ..
        } = shared;
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
        let corrupt = |error| ProcessorError::CorruptState {
            partition,
            order_id: event.order_id.to_string(),
            error,
        };
        // One lookup of the order per event: its entry, opened if it is not there yet.
        let changed = match task.dirty.entry(event.order_id.clone()) {
            Entry::Occupied(entry) => {
                let changed = entry.into_mut();
                if let Changed::Written(state) = changed {
                    // Another event after the order was written out: back from its state.
                    let graph = codec::decode(state).map_err(corrupt)?;
                    *changed = Changed::Open { graph, touched: 0 };
                    counters.order_read_back();
                }
                changed
            }
            Entry::Vacant(entry) => {
                let stored = match task.kept.take(&event.order_id) {
                    Some(graph) => {
                        counters.order_loaded(true);
                        Some(graph)
                    }
                    None => match task.store.get(event.order_id.as_bytes())? {
                        Some(bytes) => {
                            counters.order_loaded(false);
                            Some(codec::decode(&bytes).map_err(corrupt)?)
                        }
                        None => None,
                    },
                };
                if expired(stored.as_ref()) {
                    return Ok(Some(ExpiredOrder::new(&event, task.stream_time, settings)));
                }
                let graph = stored.unwrap_or_else(|| OrderGraph::new(event.order_id.clone()));
                entry.insert(Changed::Open { graph, touched: 0 })
            }
        };
        let Changed::Open { graph, touched } = changed else {
            return Err(ProcessorError::Internal(
                "an order just opened is not open".into(),
            ));
        };
        if expired(Some(graph)) {
            return Ok(Some(ExpiredOrder::new(&event, task.stream_time, settings)));
        }
        *touched = task.touches;
        task.stream_time = task.stream_time.max(event.occurred_at);
        let applied = engine.apply(graph, event);
        if applied.duplicate {
            counters.duplicate_event();
        }
        if applied.out_of_order {
            counters.out_of_order_event();
        }
        for (index, change) in applied.changes.iter().enumerate() {
            if applied.is_confirmation(index) {
                counters.placeholder_confirmed();
            } else {
                counters.milestone_reached(&shared.metrics, &change.milestone, change.inferred);
            }
            outbox.changes.push(change.order_id.as_bytes(), |out| {
                changes.encode_change(change, out)
            })?;
        }
        if settings.write_out_after > 0 {
            // Only finished orders are written out early (see `Task::finished`).
            let finished = engine.finished_at(graph).is_some();
            let order_id = graph.order_id.clone();
            task.touched(shared, partition, order_id, finished, outbox)?;
        }
        Ok(None)
    }

    /// The record unchanged to the dead-letter topic, with why and where it came from.
    fn dead_letter<R: InputRecord>(
        &mut self,
        shared: &Shared,
        message: &R,
        class: &str,
        error: &dyn std::fmt::Display,
    ) -> Result<(), ProcessorError> {
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let text = error.to_string();
        let headers = [
            ("error.class", class),
            ("error.message", text.as_str()),
            ("source.topic", message.topic()),
            ("source.partition", partition.as_str()),
            ("source.offset", offset.as_str()),
        ]
        .into_iter()
        .fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value),
            })
        });
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(&shared.outputs.dead_letters).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        shared.metrics.dead_letter(
            message.topic(),
            message.partition(),
            message.offset(),
            class,
            error,
        );
        Ok(send(&shared.producer, record)?)
    }

    /// Produces the records made since the last call, in the open transaction. Called
    /// after each run of batches and before the transaction's commit.
    pub fn send_records(&mut self, shared: &Shared) -> Result<(), ProcessorError> {
        self.outbox.send(shared)
    }

    /// Produces the changelog record and the view of every order the transaction changed,
    /// the tombstones of the finished orders whose retention is over (a sweep over part of
    /// each store) and each partition's stream time; returns the store batches to write once
    /// the transaction commits.
    pub fn prepare(&mut self, shared: &Shared) -> Result<Writes, ProcessorError> {
        let Shard { tasks, outbox, .. } = self;
        let Shared {
            engine,
            producer,
            topics,
            settings,
            metrics,
            ..
        } = shared;
        let mut writes: Writes = Vec::with_capacity(tasks.len());
        for (&partition, task) in tasks.iter_mut() {
            let mut batch = StoreBatch {
                puts: Vec::with_capacity(task.dirty.len()),
                checkpoint: None,
            };
            for (order_id, changed) in &mut task.dirty {
                let state = match changed {
                    Changed::Open { graph, .. } => {
                        write_out(shared, partition, order_id, graph, outbox)?
                    }
                    Changed::Written(state) => std::mem::take(state),
                };
                batch.put(order_id.as_bytes(), state);
            }
            let horizon = task
                .stream_time
                .saturating_sub(settings.finished_retention_ms);
            let expired = sweep(task, engine, horizon, partition)?;
            for order_id in &expired {
                // No payload: a tombstone, which compaction turns into no record at all.
                send_to(producer, &topics.changelog, Some(partition), order_id, None)?;
                batch.delete(order_id.as_slice());
                // Finished, so not kept; should it be, it must not outlive its state.
                task.kept.forget(order_id);
            }
            metrics.orders_expired(expired.len());
            if task.stream_time != task.committed_stream_time {
                let time = task.stream_time.to_be_bytes();
                let changelog = &topics.changelog;
                send_to(
                    producer,
                    changelog,
                    Some(partition),
                    STREAM_TIME_KEY,
                    Some(&time),
                )?;
                batch.put(STREAM_TIME_KEY, time);
            }
            writes.push((partition, batch));
        }
        outbox.send(shared)?;
        Ok(writes)
    }

    /// The transaction committed at `committed_at_ms` (epoch ms): writes `writes` (from
    /// [`Shard::prepare`]) to the stores, each checkpointed at the changelog offset after
    /// the last one delivered for its partition (`delivered`), and starts afresh.
    pub fn committed(
        &mut self,
        shared: &Shared,
        writes: Writes,
        delivered: &HashMap<i32, i64>,
        committed_at_ms: i64,
    ) -> Result<(), ProcessorError> {
        shared
            .metrics
            .events_committed(&self.times, committed_at_ms);
        self.counters.flush(&shared.metrics);
        self.times.clear();
        self.consumed.clear();
        for (partition, mut batch) in writes {
            batch.checkpoint = delivered.get(&partition).map(|offset| offset + 1);
            if let Some(task) = self.tasks.get_mut(&partition) {
                if !batch.is_empty() {
                    task.store.write(batch)?;
                }
                // In the store now: the order API's event streams may read it.
                shared.orders.committed(task.dirty.keys());
                task.keep_committed(&shared.engine);
                task.clear_changes();
                task.committed_stream_time = task.stream_time;
                shared
                    .metrics
                    .state_size(partition, task.store.approximate_bytes(), None);
            }
        }
        Ok(())
    }

    /// The transaction was aborted: the graphs it changed are dropped (the stores never saw
    /// them) and the stream times go back. Returns what it had consumed, where the consumer
    /// must seek back to.
    pub fn aborted(&mut self, shared: &Shared) -> Consumed {
        // What was counted happened: events came in, however the transaction ended.
        self.counters.flush(&shared.metrics);
        self.outbox.clear();
        for task in self.tasks.values_mut() {
            task.clear_changes();
            task.stream_time = task.committed_stream_time;
        }
        self.times.clear();
        std::mem::take(&mut self.consumed)
    }
}

/// A record of a partition whose state is not restored yet: it cannot come (the partition's
/// records are held until then), and skipping it would lose it, so the member stops.
pub(super) fn unrestored(topic: &str, partition: i32) -> ProcessorError {
    ProcessorError::Internal(format!(
        "record from {topic}[{partition}] before its state was restored"
    ))
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
