//! The ceiling of the pipeline benchmark: consumes the input topic as a consumer group and,
//! in transactions like the service's (one every 100 ms, offsets included), forwards each
//! record unchanged to one output topic. No decoding, no engine, no state.
//!
//! `passthrough BOOTSTRAP INPUT OUTPUT GROUP COUNT`: exits after COUNT records are committed
//! and prints `records seconds` on standard output. Used by `deploy/local/bench-pipeline`.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;

const TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // From the start, as the service is timed: clients, producer id and group join count.
    let started = Instant::now();
    let args: Vec<String> = std::env::args().collect();
    let [_, bootstrap, input, output, group, count] = args.as_slice() else {
        return Err("usage: passthrough BOOTSTRAP INPUT OUTPUT GROUP COUNT".into());
    };
    let count: u64 = count.parse()?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        // The service's consumer default (src/kafka.rs): no 1 s fetch backoff after a burst.
        .set("fetch.queue.backoff.ms", "10")
        .create()?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", format!("{group}-passthrough"))
        .set("enable.idempotence", "true")
        .create()?;
    producer.init_transactions(TIMEOUT)?;
    consumer.subscribe(&[input.as_str()])?;

    let (mut forwarded, mut committed) = (0u64, 0u64);
    let mut offsets: std::collections::BTreeMap<i32, i64> = Default::default();
    let mut txn_started: Option<Instant> = None;
    while committed < count {
        if let Some(message) = consumer.poll(Duration::from_millis(20)) {
            let message = message?;
            if txn_started.is_none() {
                producer.begin_transaction()?;
                txn_started = Some(Instant::now());
            }
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(output);
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        producer.poll(Duration::from_millis(5));
                        record = back;
                    }
                    Err((error, _)) => return Err(error.into()),
                }
            }
            offsets.insert(message.partition(), message.offset() + 1);
            forwarded += 1;
        }
        if txn_started.is_some_and(|t| t.elapsed() >= Duration::from_millis(100))
            || (forwarded == count && txn_started.is_some())
        {
            let mut tpl = TopicPartitionList::new();
            for (&partition, &next) in &offsets {
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
            committed = forwarded;
            txn_started = None;
        }
    }
    println!("{committed} {:.3}", started.elapsed().as_secs_f64());
    Ok(())
}
