//! An OrderEvent (the real `avro/order_event.avsc`) goes through the schema registry and a
//! real broker and comes back equal: registered under the topic's `-value` subject,
//! written in the Confluent wire format, produced, consumed and decoded.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use apache_avro::types::Value;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use schema_registry_converter::async_impl::easy_avro::{EasyAvroDecoder, EasyAvroEncoder};
use schema_registry_converter::async_impl::schema_registry::get_all_subjects;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

fn order_event_schema() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/avro/order_event.avsc");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// An OrderEvent with every field set, in the schema's field order.
fn order_event(order_id: &str) -> Value {
    let item = |asin: &str, qty: i32| {
        Value::Record(vec![
            ("asin".to_owned(), Value::String(asin.to_owned())),
            ("qty".to_owned(), Value::Int(qty)),
        ])
    };
    let attributes: HashMap<String, Value> = [
        ("store".to_owned(), Value::String("1042".to_owned())),
        ("slot".to_owned(), Value::String("18:00-19:00".to_owned())),
    ]
    .into_iter()
    .collect();
    Value::Record(vec![
        ("event_id".to_owned(), Value::String("evt-1".to_owned())),
        ("order_id".to_owned(), Value::String(order_id.to_owned())),
        (
            "event_type".to_owned(),
            Value::String("OrderCreated".to_owned()),
        ),
        ("source".to_owned(), Value::String("ordering".to_owned())),
        (
            "occurred_at".to_owned(),
            Value::TimestampMillis(1_767_225_600_000),
        ),
        (
            "line_of_business".to_owned(),
            Value::String("grocery".to_owned()),
        ),
        ("marketplace".to_owned(), Value::String("US".to_owned())),
        (
            "customer_id".to_owned(),
            Value::Union(1, Box::new(Value::String("cust-7".to_owned()))),
        ),
        (
            "items".to_owned(),
            Value::Array(vec![item("B000123", 2), item("B000456", 1)]),
        ),
        ("attributes".to_owned(), Value::Map(attributes)),
    ])
}

#[tokio::test]
async fn order_event_round_trips_through_registry_and_broker() {
    common::require_kafka();
    common::require_schema_registry().await;

    let topic = common::unique_topic("kafka_avro");
    common::create_topic(&topic, 1).await;
    let subject = format!("{topic}-value");

    // Encode: registers the schema under the topic's value subject.
    let encoder = EasyAvroEncoder::new(common::sr_settings());
    let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
        topic.clone(),
        false,
        SuppliedSchema::new(
            Some("com.grocery.orders.OrderEvent".to_owned()),
            SchemaType::Avro,
            order_event_schema(),
        ),
    );
    let sent = order_event("order-42");
    let payload = encoder
        .encode_value(sent.clone(), &strategy)
        .await
        .unwrap_or_else(|e| panic!("encoding through {}: {e}", common::schema_registry_url()));

    // Confluent wire format: magic byte 0, then the 4-byte big-endian schema id.
    assert!(payload.len() > 5, "payload too short: {payload:?}");
    assert_eq!(payload[0], 0, "magic byte of the Confluent wire format");
    let schema_id = u32::from_be_bytes(payload[1..5].try_into().unwrap());

    let subjects = get_all_subjects(&common::sr_settings())
        .await
        .expect("listing the registry's subjects");
    assert!(
        subjects.contains(&subject),
        "subject {subject} not registered; registry has {subjects:?}"
    );

    // Produce.
    let producer: FutureProducer = common::client_config()
        .create()
        .expect("creating the producer");
    let delivery = producer
        .send(
            FutureRecord::to(&topic).key("order-42").payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));

    // Consume it back from the start of the partition.
    let consumer: StreamConsumer = common::client_config()
        .set("group.id", common::unique_group("kafka_avro"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("creating the consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&topic, delivery.partition, Offset::Beginning)
        .unwrap();
    consumer
        .assign(&assignment)
        .expect("assigning the partition");
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .unwrap_or_else(|_| panic!("no record came back from {topic} within 30s"))
        .unwrap_or_else(|e| panic!("consuming from {topic}: {e}"));
    assert_eq!(message.offset(), delivery.offset, "the record we produced");
    assert_eq!(message.key(), Some(&b"order-42"[..]), "record key");
    assert_eq!(
        message.payload(),
        Some(&payload[..]),
        "payload bytes unchanged"
    );

    // Decode: fetches the writer schema by the id in the payload.
    let decoder = EasyAvroDecoder::new(common::sr_settings());
    let decoded = decoder
        .decode(message.payload())
        .await
        .unwrap_or_else(|e| panic!("decoding schema id {schema_id}: {e}"));
    assert_eq!(
        decoded.name.as_ref().map(|n| n.fullname(None)),
        Some("com.grocery.orders.OrderEvent".to_owned()),
        "decoded record name"
    );
    assert_eq!(decoded.value, sent, "decoded value equals what was sent");
}
