//! The Kafka work of the service without its compute: what the pipeline benchmark's service
//! would take if decoding, the engine and the state cost nothing. It consumes the input
//! topic as a consumer group, exactly as `examples/passthrough.rs` does (see
//! `support/forward.rs`), and in the same
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

#[path = "support/forward.rs"]
mod forward;

use std::time::{Duration, Instant};

use order_milestones::emit::txn;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As the service does, so that the floor allocates as it does.
    order_milestones::alloc::keep_memory();
    let args: Vec<String> = std::env::args().collect();
    let [_, bootstrap, input, group, count, from, to] = args.as_slice() else {
        return Err("usage: io_floor BOOTSTRAP INPUT GROUP COUNT FROM,... TO,...".into());
    };
    let count: u64 = count.parse()?;
    let (from, to): (Vec<&str>, Vec<&str>) = (from.split(',').collect(), to.split(',').collect());
    if from.len() != to.len() || count == 0 {
        return Err("FROM and TO must list as many topics, and COUNT must be positive".into());
    }
    // Per output topic (`to`, in order), the records to write again.
    let mut outputs = Vec::new();
    for source in &from {
        outputs.push(read_topic(bootstrap, source)?);
    }

    // The changelog's records the service produces one at a time (`txn::Outbox` says why).
    let singles: Vec<bool> = to
        .iter()
        .map(|topic| topic.ends_with("-order-graph-changelog"))
        .collect();

    // From here as the service is timed: clients, producer id and group join count.
    let started = Instant::now();
    let busy_at_start = machine_busy()?;
    let mut produced = 0u64;
    let committed = forward::forward_all(
        bootstrap,
        input,
        group,
        &format!("{group}-io-floor"),
        // The service's partitioner (src/kafka.rs).
        &[("partitioner", "murmur2_random")],
        &to,
        count,
        |producer, topics, outboxes, index, _| {
            let i = index.min(count - 1);
            for (((topic, outbox), records), single) in
                topics.iter().zip(outboxes).zip(&outputs).zip(&singles)
            {
                let m = records.len() as u64;
                let (first, end) = (i * m / count, (i + 1) * m / count);
                for (key, payload) in &records[first as usize..end as usize] {
                    // The service's outputs are keyed by order id.
                    let key = key.as_deref().unwrap_or_default();
                    match payload {
                        // As the service: its change records and views produced together.
                        Some(payload) if !single => outbox.push_copy(key, payload),
                        _ => txn::send_to(producer, topic, None, key, payload.as_deref())?,
                    }
                    produced += 1;
                }
            }
            Ok(())
        },
    )?;
    println!(
        "{committed} {:.3} {produced} {:.2}",
        started.elapsed().as_secs_f64(),
        machine_busy()? - busy_at_start
    );
    Ok(())
}
