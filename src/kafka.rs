//! librdkafka client configurations, built one way for every client of the service: the
//! bootstrap servers and passthrough properties of the configuration, then what each role
//! needs and the service manages itself.

use rdkafka::config::ClientConfig;

use crate::config::Config;

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
    /// The transactional producer of all outputs.
    TransactionalProducer,
    /// A plain producer (the demo generator).
    Producer,
}

/// The librdkafka configuration of a client in `role`.
pub fn client_config(config: &Config, role: Role) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.kafka.bootstrap_servers);
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
        Role::TransactionalProducer => {
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
