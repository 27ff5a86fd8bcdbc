//! The ceiling of the pipeline benchmark: consumes the input topic as a consumer group and,
//! in transactions like the service's (one every 100 ms, offsets included), forwards each
//! record unchanged to one output topic. No decoding, no engine, no state. It consumes the
//! way the service does: records in batches from a [`FetchQueue`], the consumer polled
//! between batches for its events.
//!
//! `passthrough BOOTSTRAP INPUT OUTPUT GROUP COUNT`: exits after COUNT records are committed
//! and prints `records seconds` on standard output. Used by `deploy/local/bench-pipeline`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use order_milestones::ingest::{Batch, FetchQueue, InputRecord};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

const TIMEOUT: Duration = Duration::from_secs(30);

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

struct Forwarder<'a> {
    producer: &'a BaseProducer,
    output: &'a str,
    offsets: BTreeMap<i32, i64>,
    forwarded: u64,
    txn_started: Option<Instant>,
}

impl Forwarder<'_> {
    fn forward(&mut self, record: &impl InputRecord) -> Result<(), KafkaError> {
        if self.txn_started.is_none() {
            self.producer.begin_transaction()?;
            self.txn_started = Some(Instant::now());
        }
        let mut out: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(self.output);
        if let Some(key) = record.key() {
            out = out.key(key);
        }
        if let Some(payload) = record.payload() {
            out = out.payload(payload);
        }
        loop {
            match self.producer.send(out) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    self.producer.poll(Duration::from_millis(5));
                    out = back;
                }
                Err((error, _)) => return Err(error),
            }
        }
        self.offsets.insert(record.partition(), record.offset() + 1);
        self.forwarded += 1;
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // From the start, as the service is timed: clients, producer id and group join count.
    let started = Instant::now();
    let args: Vec<String> = std::env::args().collect();
    let [_, bootstrap, input, output, group, count] = args.as_slice() else {
        return Err("usage: passthrough BOOTSTRAP INPUT OUTPUT GROUP COUNT".into());
    };
    let count: u64 = count.parse()?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", format!("{group}-passthrough"))
        .set("enable.idempotence", "true")
        .create()?;
    let consumer: BaseConsumer<Assigned> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        // The service's consumer default (src/kafka.rs): no 1 s fetch backoff after a burst.
        .set("fetch.queue.backoff.ms", "10")
        .create_with_context(Assigned::default())?;
    // As the service starts (src/processor/mod.rs): the producer first, the group join
    // going on while `init_transactions` waits.
    consumer.subscribe(&[input.as_str()])?;
    producer.init_transactions(TIMEOUT)?;

    let fetch = FetchQueue::new(&consumer);
    let mut batch = Batch::default();
    let mut forwarder = Forwarder {
        producer: &producer,
        output,
        offsets: BTreeMap::new(),
        forwarded: 0,
        txn_started: None,
    };
    let mut committed = 0u64;
    while committed < count {
        // Events, and the records fetched before a newly assigned partition is followed.
        if let Some(message) = consumer.poll(Duration::ZERO) {
            forwarder.forward(&message?)?;
        }
        let assigned: Vec<_> = std::mem::take(
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
                forwarder.forward(&record?)?;
            }
        }
        batch.clear();
        if forwarder
            .txn_started
            .is_some_and(|t| t.elapsed() >= Duration::from_millis(100))
            || (forwarder.forwarded == count && forwarder.txn_started.is_some())
        {
            let mut tpl = TopicPartitionList::new();
            for (&partition, &next) in &forwarder.offsets {
                tpl.add_partition_offset(input, partition, Offset::Offset(next))?;
            }
            let metadata = consumer.group_metadata().ok_or("no group metadata")?;
            producer.send_offsets_to_transaction(&tpl, &metadata, TIMEOUT)?;
            // As the service does (processor::core::flush): deliver everything in 1 ms
            // polls first, or rdkafka's flush inside commit_transaction waits 100 ms.
            while producer.in_flight_count() > 0 {
                producer.poll(Duration::from_millis(1));
            }
            producer.commit_transaction(TIMEOUT)?;
            committed = forwarder.forwarded;
            forwarder.txn_started = None;
        }
    }
    println!("{committed} {:.3}", started.elapsed().as_secs_f64());
    Ok(())
}
