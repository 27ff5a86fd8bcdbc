//! Transactions on the real broker: one transaction aborted, one committed. A
//! `read_committed` consumer sees only the committed records; a `read_uncommitted` one
//! sees both, which proves the aborted records were really written and then aborted.

mod common;

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const TXN_TIMEOUT: Duration = Duration::from_secs(30);

async fn send_all(producer: &FutureProducer, topic: &str, values: &[&str]) {
    for value in values {
        producer
            .send(
                FutureRecord::to(topic).key("order-1").payload(*value),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("producing {value} to {topic}: {e}"));
    }
}

/// Reads partition 0 of `topic` from the beginning to its end (as this isolation level
/// sees it) and returns the payloads in order.
async fn read_all(topic: &str, isolation_level: &str) -> Vec<String> {
    let consumer: StreamConsumer = common::client_config()
        .set("group.id", common::unique_group("kafka_transactions"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation_level)
        .create()
        .expect("creating the consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer
        .assign(&assignment)
        .expect("assigning the partition");

    let mut payloads = Vec::new();
    let read = async {
        loop {
            match consumer.recv().await {
                Ok(m) => payloads.push(
                    String::from_utf8(m.payload().unwrap_or_default().to_vec())
                        .expect("utf-8 payload"),
                ),
                Err(KafkaError::PartitionEOF(_)) => break,
                Err(e) => panic!("consuming {topic} ({isolation_level}): {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .unwrap_or_else(|_| panic!("{topic} ({isolation_level}): no end of partition within 30s"));
    payloads
}

#[tokio::test]
async fn read_committed_sees_only_committed_transactions() {
    common::require_kafka();

    let topic = common::unique_topic("kafka_transactions");
    common::create_topic(&topic, 1).await;

    let producer: FutureProducer = common::client_config()
        .set(
            "transactional.id",
            common::unique_transactional_id("kafka_transactions"),
        )
        .set("enable.idempotence", "true")
        .create()
        .expect("creating the transactional producer");
    producer
        .init_transactions(TXN_TIMEOUT)
        .expect("init_transactions");

    // Aborted: written to the log, then aborted.
    producer.begin_transaction().expect("begin (to abort)");
    send_all(&producer, &topic, &["aborted-0", "aborted-1", "aborted-2"]).await;
    producer.flush(TXN_TIMEOUT).expect("flush before abort");
    producer.abort_transaction(TXN_TIMEOUT).expect("abort");

    // Committed.
    producer.begin_transaction().expect("begin (to commit)");
    send_all(&producer, &topic, &["committed-0", "committed-1"]).await;
    producer.commit_transaction(TXN_TIMEOUT).expect("commit");

    let committed = read_all(&topic, "read_committed").await;
    assert_eq!(
        committed,
        ["committed-0", "committed-1"],
        "read_committed must see only the committed transaction"
    );

    let uncommitted = read_all(&topic, "read_uncommitted").await;
    assert_eq!(
        uncommitted,
        [
            "aborted-0",
            "aborted-1",
            "aborted-2",
            "committed-0",
            "committed-1"
        ],
        "read_uncommitted must also see the aborted records (proves the abort happened)"
    );
}
