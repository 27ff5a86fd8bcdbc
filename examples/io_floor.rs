//! The Kafka work of the service without its compute: what the pipeline benchmark's service
//! would take if decoding, the engine and the state cost nothing. It consumes the input
//! topic as a consumer group, exactly as `examples/passthrough.rs` does, and in the same
//! transactions (one every 100 ms, offsets included) produces, instead of the input
//! records, the records the service wrote for that input: the change records, order views
//! and changelog records of a finished benchmark round, read into memory before the clock
//! starts and spread over the input records in proportion (input record `i` of `n` carries
//! the outputs `i * m / n .. (i + 1) * m / n` of each topic of `m` records). Same keys, same
//! bytes, same partitioner, to topics configured as the service's.
//!
//! `io_floor BOOTSTRAP INPUT GROUP COUNT FROM TO`, where FROM and TO are comma-separated
//! lists of as many topics (the service's outputs of a finished round; empty topics with the
//! same configuration): exits after COUNT input records are committed and prints
//! `records seconds outputs cpu` on standard output: seconds from its start (after the
//! outputs were loaded), and the whole machine's busy CPU time over those seconds in
//! core-seconds (the broker's included). Used by `deploy/local/bench-pipeline` with
//! `FLOOR=1`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use order_milestones::ingest::{Batch, FetchQueue, InputRecord};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
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

/// One output record: key and value (a tombstone has none).
type Output = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Every committed record of `topic`, read from the beginning to the end of each partition.
fn read_topic(bootstrap: &str, topic: &str) -> Result<Vec<Output>, Box<dyn std::error::Error>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "io-floor-loader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .ok_or_else(|| format!("no topic {topic}"))?;
    let mut tpl = TopicPartitionList::new();
    for partition in 0..partitions as i32 {
        tpl.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut records = Vec::new();
    let mut at_end = 0;
    while at_end < partitions {
        match consumer.poll(TIMEOUT) {
            None => return Err(format!("{topic}: nothing for {TIMEOUT:?}").into()),
            Some(Err(KafkaError::PartitionEOF(_))) => at_end += 1,
            Some(Err(error)) => return Err(error.into()),
            Some(Ok(message)) => records.push((
                Message::key(&message).map(<[u8]>::to_vec),
                Message::payload(&message).map(<[u8]>::to_vec),
            )),
        }
    }
    Ok(records)
}

/// The whole machine's busy CPU time so far, in core-seconds: the first line of
/// `/proc/stat` (user, nice, system, irq, softirq and steal, in 1/100 s).
fn machine_busy() -> Result<f64, Box<dyn std::error::Error>> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().ok_or("/proc/stat is empty")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum::<u64>();
    Ok(busy as f64 / 100.0)
}

struct Forwarder<'a> {
    producer: &'a BaseProducer,
    /// Per output topic: its name and the records to write to it.
    outputs: Vec<(&'a str, Vec<Output>)>,
    count: u64,
    offsets: BTreeMap<i32, i64>,
    forwarded: u64,
    produced: u64,
    txn_started: Option<Instant>,
}

impl Forwarder<'_> {
    fn forward(&mut self, record: &impl InputRecord) -> Result<(), KafkaError> {
        if self.txn_started.is_none() {
            self.producer.begin_transaction()?;
            self.txn_started = Some(Instant::now());
        }
        let i = self.forwarded.min(self.count - 1);
        for (topic, records) in &self.outputs {
            let m = records.len() as u64;
            let (from, to) = (i * m / self.count, (i + 1) * m / self.count);
            for (key, payload) in &records[from as usize..to as usize] {
                let mut out: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
                if let Some(key) = key {
                    out = out.key(key.as_slice());
                }
                if let Some(payload) = payload {
                    out = out.payload(payload.as_slice());
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
                self.produced += 1;
            }
        }
        self.offsets.insert(record.partition(), record.offset() + 1);
        self.forwarded += 1;
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, bootstrap, input, group, count, from, to] = args.as_slice() else {
        return Err("usage: io_floor BOOTSTRAP INPUT GROUP COUNT FROM,... TO,...".into());
    };
    let count: u64 = count.parse()?;
    let (from, to): (Vec<&str>, Vec<&str>) = (from.split(',').collect(), to.split(',').collect());
    if from.len() != to.len() || count == 0 {
        return Err("FROM and TO must list as many topics, and COUNT must be positive".into());
    }
    let mut outputs = Vec::new();
    for (source, target) in from.iter().zip(&to) {
        outputs.push((*target, read_topic(bootstrap, source)?));
    }

    // From here as the service is timed: clients, producer id and group join count.
    let started = Instant::now();
    let busy_at_start = machine_busy()?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", format!("{group}-io-floor"))
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .create()?;
    let consumer: BaseConsumer<Assigned> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("fetch.queue.backoff.ms", "10")
        .create_with_context(Assigned::default())?;
    // The service's producer settings (src/kafka.rs).
    // As the service starts (src/processor/mod.rs): the producer first, the group join
    // going on while `init_transactions` waits.
    consumer.subscribe(&[input.as_str()])?;
    producer.init_transactions(TIMEOUT)?;

    let fetch = FetchQueue::new(&consumer);
    let mut batch = Batch::default();
    let mut forwarder = Forwarder {
        producer: &producer,
        outputs,
        count,
        offsets: BTreeMap::new(),
        forwarded: 0,
        produced: 0,
        txn_started: None,
    };
    let mut committed = 0u64;
    while committed < count {
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
            || (forwarder.forwarded >= count && forwarder.txn_started.is_some())
        {
            let mut tpl = TopicPartitionList::new();
            for (&partition, &next) in &forwarder.offsets {
                tpl.add_partition_offset(input, partition, Offset::Offset(next))?;
            }
            let metadata = consumer.group_metadata().ok_or("no group metadata")?;
            producer.send_offsets_to_transaction(&tpl, &metadata, TIMEOUT)?;
            while producer.in_flight_count() > 0 {
                producer.poll(Duration::from_millis(1));
            }
            producer.commit_transaction(TIMEOUT)?;
            committed = forwarder.forwarded;
            forwarder.txn_started = None;
        }
    }
    println!(
        "{committed} {:.3} {} {:.2}",
        started.elapsed().as_secs_f64(),
        forwarder.produced,
        machine_busy()? - busy_at_start
    );
    Ok(())
}
