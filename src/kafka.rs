//! librdkafka client configurations, built one way for every client of the service: the
//! bootstrap servers and passthrough properties of the configuration, then what each role
//! needs and the service manages itself.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::emit::txn;

/// What a client is for; each role gets the settings it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    /// The group member that consumes the inputs.
    GroupConsumer,
    /// A consumer outside the group: changelog restore.
    AssignedConsumer,
    /// A consumer outside the group, assigned the partitions of the input topics after the
    /// first, alongside the group member's partitions of the first.
    FollowerConsumer,
    /// A consumer outside the group, reading the instances topic (the order API).
    DirectoryConsumer,
    /// The transactional producer of all outputs.
    TransactionalProducer,
    /// A plain producer (the demo generator).
    Producer,
}

/// librdkafka's `reconnect.backoff.ms` for every client of the service, unless the
/// configuration sets it. librdkafka connects to the brokers it learns of one at a time, at
/// least half of this apart ("sparse connections"): at its default, 100, a new client's
/// first request to a broker other than the bootstrap connection waited about 50 ms, and
/// the service's start met that wait several times on the way to its first record (its
/// topic check alone took 55 ms). At 20 the wait is librdkafka's floor, 11 ms. Reconnects
/// after a broker fails still back off exponentially, from 20 ms up to
/// `reconnect.backoff.max.ms` (10 s); Kafka's Java clients start theirs at 50 ms.
pub const RECONNECT_BACKOFF_MS: u32 = 20;

/// librdkafka's `fetch.wait.max.ms` for the consumers of the input topics, unless the
/// configuration sets it. A consumer has one fetch request at a time in flight to a broker,
/// for every partition it may fetch there; a partition whose prefetch queue is full is left
/// out. When the others in the request are caught up, the broker holds it for up to this
/// long (500 ms by default) waiting for data, and the left-out partition, drained by then,
/// waits behind it with its backlog. A processor slower than its fetcher met this at the end
/// of every backlog: its last 5,000 to 11,000 records came 200 to 250 ms after the rest
/// (BENCHMARKS.md, session 23). At 50 an idle consumer asks each broker 20 times a second.
pub const INPUT_FETCH_WAIT_MAX_MS: u32 = 50;

/// The librdkafka configuration of a client in `role`.
pub fn client_config(config: &Config, role: Role) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.kafka.bootstrap_servers);
    // A default: the properties below override it.
    client.set("reconnect.backoff.ms", RECONNECT_BACKOFF_MS.to_string());
    client.set(
        "client.id",
        format!(
            "{}-{}",
            config.application.id, config.application.instance_id
        ),
    );
    for (key, value) in &config.kafka.properties {
        client.set(key, value);
    }
    let consumer = |client: &mut ClientConfig| {
        // Defaults the configuration may override. librdkafka postpones the next fetch by
        // fetch.queue.backoff.ms (1 s) once its prefetch queue is over its thresholds; a
        // processor that drains the queue in one burst then stalls for most of that second
        // with nothing to do (measured: every third transaction waited ~550 ms). 10 ms keeps
        // the prefetch just behind the processor.
        client.set("fetch.queue.backoff.ms", "10");
        // The input consumers' also: see [`INPUT_FETCH_WAIT_MAX_MS`].
        if matches!(role, Role::GroupConsumer | Role::FollowerConsumer) {
            client.set("fetch.wait.max.ms", INPUT_FETCH_WAIT_MAX_MS.to_string());
        }
        // `properties` again, so that they win over the defaults above.
        for (key, value) in &config.kafka.properties {
            client.set(key, value);
        }
        for (key, value) in &config.kafka.consumer {
            client.set(key, value);
        }
        client
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest");
    };
    let producer = |client: &mut ClientConfig| {
        for (key, value) in &config.kafka.producer {
            client.set(key, value);
        }
        // Java clients' partitioner, so that our keyed outputs land where a Java producer
        // (and Kafka Streams) would put the same keys.
        client
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random");
    };
    match role {
        Role::Admin => {}
        Role::GroupConsumer => {
            consumer(&mut client);
            client
                .set("group.id", &config.application.id)
                .set("partition.assignment.strategy", "cooperative-sticky")
                // Statistics carry the consumer lag per partition for the metrics.
                .set("statistics.interval.ms", "1000");
        }
        Role::AssignedConsumer => {
            consumer(&mut client);
            // librdkafka wants a group id even for assign-only consumers; it never joins.
            client
                .set("group.id", format!("{}-assigned", config.application.id))
                .set("enable.partition.eof", "true");
        }
        Role::FollowerConsumer => {
            consumer(&mut client);
            // Never joins nor commits: offsets commit in the transactions, under the group.
            client.set("group.id", format!("{}-follower", config.application.id));
        }
        Role::DirectoryConsumer => {
            consumer(&mut client);
            // Adverts are plain produces: read them as soon as they land.
            client
                .set("group.id", format!("{}-directory", config.application.id))
                .set("isolation.level", "read_uncommitted");
        }
        Role::TransactionalProducer => {
            // A default the configuration may override (`properties` again, then the
            // producer's own, so that they win).
            client.set("linger.ms", txn::LINGER_MS.to_string());
            for (key, value) in &config.kafka.properties {
                client.set(key, value);
            }
            producer(&mut client);
            client
                .set("transactional.id", config.transactional_id())
                .set(
                    "transaction.timeout.ms",
                    config.processing.transaction_timeout_ms.to_string(),
                );
        }
        Role::Producer => producer(&mut client),
    }
    client
}

/// The partition Kafka's Java producer (and librdkafka's `murmur2_random` partitioner, which
/// the service and its generator use) gives a record with `key` among `partitions`: murmur2
/// of the key, sign bit cleared, modulo the partition count. The order API finds the
/// partition, and so the instance, holding an order with it; the inputs must be keyed by
/// order id with this partitioner (the Java default) for that to hold.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

/// Kafka's `Utils.murmur2` (seed 0x9747b28c), bit for bit.
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// Where each of `partitions` (topic, partition) starts (`at` = `Offset::Beginning`: the
/// log start) or ends (`Offset::End`: for a `read_committed` consumer, the last stable
/// offset), in one ListOffsets request per leader (the request's timestamps -2 and -1,
/// through `offsets_for_times`). A partition whose offset could not be read is left out.
pub fn list_offsets<'t, C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partitions: impl IntoIterator<Item = (&'t str, i32)>,
    at: Offset,
    wait: Duration,
) -> HashMap<(String, i32), i64> {
    let mut ask = TopicPartitionList::new();
    for (topic, partition) in partitions {
        // Cannot fail: the log start and end are offsets a list may hold.
        let _ = ask.add_partition_offset(topic, partition, at);
    }
    let Ok(offsets) = consumer.offsets_for_times(ask, wait) else {
        return HashMap::new();
    };
    offsets
        .elements()
        .into_iter()
        .filter(|e| e.error().is_ok())
        .filter_map(|e| match e.offset() {
            Offset::Offset(offset) => Some(((e.topic().to_owned(), e.partition()), offset)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expected values are those of Kafka's own `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (key, expected) in cases {
            assert_eq!(
                murmur2(key) as i32,
                expected,
                "{}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn input_consumers_wait_briefly_for_data_unless_configured_otherwise() {
        let mut config = Config::default();
        let wait = |config: &Config, role| {
            client_config(config, role)
                .get("fetch.wait.max.ms")
                .map(str::to_string)
        };
        let ours = Some(INPUT_FETCH_WAIT_MAX_MS.to_string());
        assert_eq!(wait(&config, Role::GroupConsumer), ours);
        assert_eq!(wait(&config, Role::FollowerConsumer), ours);
        // One partition, no backlog held behind others: librdkafka's default.
        assert_eq!(wait(&config, Role::DirectoryConsumer), None);
        config
            .kafka
            .properties
            .insert("fetch.wait.max.ms".into(), "200".into());
        assert_eq!(wait(&config, Role::GroupConsumer).as_deref(), Some("200"));
        config
            .kafka
            .consumer
            .insert("fetch.wait.max.ms".into(), "100".into());
        assert_eq!(
            wait(&config, Role::FollowerConsumer).as_deref(),
            Some("100")
        );
    }

    #[test]
    fn every_client_connects_to_new_brokers_quickly_unless_configured_otherwise() {
        let roles = [
            Role::Admin,
            Role::GroupConsumer,
            Role::AssignedConsumer,
            Role::FollowerConsumer,
            Role::DirectoryConsumer,
            Role::TransactionalProducer,
            Role::Producer,
        ];
        let mut config = Config::default();
        for role in roles {
            assert_eq!(
                client_config(&config, role).get("reconnect.backoff.ms"),
                Some(RECONNECT_BACKOFF_MS.to_string().as_str()),
                "{role:?}"
            );
        }
        config
            .kafka
            .properties
            .insert("reconnect.backoff.ms".into(), "100".into());
        for role in roles {
            assert_eq!(
                client_config(&config, role).get("reconnect.backoff.ms"),
                Some("100"),
                "{role:?}"
            );
        }
    }

    #[test]
    fn the_transactional_producer_lingers_unless_configured_otherwise() {
        let linger = |config: &Config| {
            client_config(config, Role::TransactionalProducer)
                .get("linger.ms")
                .map(str::to_string)
        };
        let mut config = Config::default();
        assert_eq!(linger(&config), Some(txn::LINGER_MS.to_string()));
        assert_eq!(
            client_config(&config, Role::Producer).get("linger.ms"),
            None
        );
        config
            .kafka
            .properties
            .insert("linger.ms".into(), "7".into());
        assert_eq!(linger(&config).as_deref(), Some("7"));
        config.kafka.producer.insert("linger.ms".into(), "3".into());
        assert_eq!(linger(&config).as_deref(), Some("3"));
    }

    #[test]
    fn partitions_are_in_range() {
        for n in 1..20 {
            for key in ["A", "order-1", "T-0000395", ""] {
                let p = partition_for_key(key.as_bytes(), n);
                assert!((0..n).contains(&p));
            }
        }
    }
}
