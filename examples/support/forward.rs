//! What the pipeline benchmark's `passthrough` and `io_floor` share: a consumer-group member
//! that consumes one input topic the way the service does (records in batches from a
//! [`FetchQueue`], the consumer polled between batches for its events) and, in transactions
//! like the service's (one every 100 ms, the consumed offsets included), hands each record to
//! the caller to produce what it stands for. Its clients start in the service's order
//! (`src/processor/mod.rs`): the producer first, the group join going on while
//! `init_transactions` waits, in the service's short resumed calls.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use order_milestones::emit::txn::{self, Outbox, Topic, TXN_TIMEOUT};
use order_milestones::ingest::{Batch, FetchQueue, InputRecord};
use order_milestones::kafka::{INPUT_FETCH_WAIT_MAX_MS, RECONNECT_BACKOFF_MS};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

// The service's allocator (src/main.rs), for librdkafka's allocations as well: the
// passthrough and the floor, which include this module, get it from here.
#[global_allocator]
static ALLOCATOR: order_milestones::alloc::Allocator = order_milestones::alloc::Allocator;

/// Partitions assigned since the loop last looked: it has the fetch queue follow them.
#[derive(Default)]
struct Assigned(Mutex<Vec<(String, i32)>>);

impl ClientContext for Assigned {}

impl ConsumerContext for Assigned {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut assigned = self.0.lock().unwrap_or_else(|e| e.into_inner());
            for element in tpl.elements() {
                assigned.push((element.topic().to_string(), element.partition()));
            }
        }
    }
}

/// The transaction the loop has open, and what it consumed.
#[derive(Default)]
struct Txn {
    started: Option<Instant>,
    /// Per input partition: the offset to commit (the next to consume).
    offsets: BTreeMap<i32, i64>,
    /// Records consumed so far, in this transaction and before.
    consumed: u64,
}

impl Txn {
    fn take(
        &mut self,
        producer: &BaseProducer,
        topics: &[Topic],
        outboxes: &mut [Outbox],
        forward: &mut impl Forward,
        record: &dyn InputRecord,
    ) -> Result<(), KafkaError> {
        if self.started.is_none() {
            producer.begin_transaction()?;
            self.started = Some(Instant::now());
        }
        forward(producer, topics, outboxes, self.consumed, record)?;
        self.offsets.insert(record.partition(), record.offset() + 1);
        self.consumed += 1;
        Ok(())
    }
}

/// What produces a consumed record's outputs: `forward(producer, topics, outboxes, index,
/// record)`, `topics` the producer's handles of the outputs and `outboxes` one per output,
/// in order; `index` counts the records consumed, from 0.
pub trait Forward:
    FnMut(&BaseProducer, &[Topic], &mut [Outbox], u64, &dyn InputRecord) -> Result<(), KafkaError>
{
}

impl<F> Forward for F where
    F: FnMut(
        &BaseProducer,
        &[Topic],
        &mut [Outbox],
        u64,
        &dyn InputRecord,
    ) -> Result<(), KafkaError>
{
}

/// Produces what waits in `outboxes`, each to its topic.
fn send_outboxes(
    producer: &BaseProducer,
    topics: &[Topic],
    outboxes: &mut [Outbox],
) -> Result<(), KafkaError> {
    for (outbox, topic) in outboxes.iter_mut().zip(topics) {
        outbox.send(producer, topic)?;
    }
    Ok(())
}

/// Consumes `input` as a member of `group` until `count` records are committed, calling
/// `forward` for each inside the open transaction. The producer has the transactional id
/// `transactional_id`, idempotence and `producer_settings`; it sends as the service does:
/// through topic handles, one record at a time (`txn::send_to`) or an outbox per topic,
/// whose records are produced together after each batch of input records (`txn::Outbox`).
/// Returns how many records were committed.
#[allow(clippy::too_many_arguments)]
pub fn forward_all(
    bootstrap: &str,
    input: &str,
    group: &str,
    transactional_id: &str,
    producer_settings: &[(&str, &str)],
    outputs: &[&str],
    count: u64,
    mut forward: impl Forward,
) -> Result<u64, Box<dyn std::error::Error>> {
    let mut producer_config = ClientConfig::new();
    producer_config
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", transactional_id)
        .set("enable.idempotence", "true")
        .set("linger.ms", txn::LINGER_MS.to_string())
        .set("reconnect.backoff.ms", RECONNECT_BACKOFF_MS.to_string());
    for (key, value) in producer_settings {
        producer_config.set(*key, *value);
    }
    let producer: BaseProducer = producer_config.create()?;
    // Declared after the producer, so dropped before it, as the handles require.
    let topics = outputs
        .iter()
        // SAFETY: dropped before `producer` (declared after it).
        .map(|name| unsafe { Topic::new(&producer, name) })
        .collect::<Result<Vec<Topic>, KafkaError>>()?;
    let consumer: BaseConsumer<Assigned> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        // The service's consumer defaults (src/kafka.rs): no 1 s fetch backoff after a burst,
        // and the input consumers' brief hold of an empty fetch (`INPUT_FETCH_WAIT_MAX_MS`).
        .set("fetch.queue.backoff.ms", "10")
        .set("fetch.wait.max.ms", INPUT_FETCH_WAIT_MAX_MS.to_string())
        .set("reconnect.backoff.ms", RECONNECT_BACKOFF_MS.to_string())
        .create_with_context(Assigned::default())?;
    consumer.subscribe(&[input])?;
    // As the service does: resumed in short calls, or librdkafka's producer-id timer can
    // add 500 ms here (see `txn::init_transactions`).
    txn::init_transactions(&producer, TXN_TIMEOUT)?;

    let mut outboxes: Vec<Outbox> = topics.iter().map(|_| Outbox::default()).collect();
    let fetch = FetchQueue::new(&consumer);
    let mut batch = Batch::default();
    let mut txn = Txn::default();
    let mut committed = 0u64;
    while committed < count {
        // Events, and the records fetched before a newly assigned partition is followed.
        if let Some(message) = consumer.poll(Duration::ZERO) {
            txn.take(&producer, &topics, &mut outboxes, &mut forward, &message?)?;
        }
        let assigned = std::mem::take(
            &mut *consumer
                .context()
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for (topic, partition) in assigned {
            fetch.follow(&topic, partition)?;
        }
        fetch.consume(Duration::from_millis(20), 500, &mut batch);
        for index in 0..batch.len() {
            if let Some(record) = batch.get(index) {
                txn.take(&producer, &topics, &mut outboxes, &mut forward, &record?)?;
            }
        }
        batch.clear();
        send_outboxes(&producer, &topics, &mut outboxes)?;
        let Some(started) = txn.started else {
            continue;
        };
        // On the interval only, as the service commits: it cannot know that a record is
        // the last, so its last transaction waits out the interval too. (Committing as soon
        // as `count` records were consumed gave the ceiling up to 100 ms the service never
        // has.)
        if started.elapsed() >= Duration::from_millis(100) {
            let mut tpl = TopicPartitionList::new();
            for (&partition, &next) in &txn.offsets {
                tpl.add_partition_offset(input, partition, Offset::Offset(next))?;
            }
            let metadata = consumer.group_metadata().ok_or("no group metadata")?;
            producer.send_offsets_to_transaction(&tpl, &metadata, TXN_TIMEOUT)?;
            // As the service does: the delivery reports served in 1 ms polls first, or
            // rdkafka's flush inside commit_transaction waits 100 ms.
            txn::flush(&producer, TXN_TIMEOUT);
            producer.commit_transaction(TXN_TIMEOUT)?;
            committed = txn.consumed;
            txn.started = None;
        }
    }
    Ok(committed)
}
