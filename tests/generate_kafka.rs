//! `generate::produce` against a real broker and schema registry: the generated orders,
//! produced in JSON and in Avro to topics of several partitions, come back through the
//! service's own decoder (`ingest::EventDecoder`) as exactly the generator's events, keyed
//! by order id, each order on one partition in the generator's order.
//!
//! Plain `#[test]`s with their own runtime: `produce` and the decoder block on a runtime
//! handle for the registry, from a plain thread, as the binary does.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use order_milestones::config::Config;
use order_milestones::engine::OrderEvent;
use order_milestones::generate::{produce, GenerateConfig, Generator, KafkaTarget, ProduceError};
use order_milestones::ingest::avro::ORDER_EVENT_SCHEMA;
use order_milestones::ingest::{EventDecoder, Format, RegistryClient, RegistryConfig};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use schema_registry_converter::async_impl::schema_registry::get_all_subjects;
use tokio::runtime::Runtime;

const PARTITIONS: i32 = 3;

/// The evolved writer schema the pipeline benchmark can load its input with.
const EVOLVED_SCHEMA: &str = "deploy/local/order_event_v2.avsc";

/// A runtime, after checking the stack is there.
fn setup() -> Runtime {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    common::require_kafka();
    runtime.block_on(common::require_schema_registry());
    runtime
}

/// The service's configuration pointed at the test stack; deliveries time out in 30 s, so
/// that a failure shows as an error and not as a hang.
fn config() -> Config {
    let mut config = Config::default();
    config.kafka.bootstrap_servers = common::bootstrap();
    config.schema_registry = RegistryConfig::new(common::schema_registry_url());
    config
        .kafka
        .producer
        .insert("message.timeout.ms".into(), "30000".into());
    config
}

fn orders(prefix: &str, orders: u64) -> GenerateConfig {
    GenerateConfig {
        orders,
        seed: 7,
        order_prefix: prefix.to_owned(),
        ..GenerateConfig::default()
    }
}

/// One consumed record: partition, key, value.
type Record = (i32, Option<Vec<u8>>, Option<Vec<u8>>);

/// Every record of `topic`, each partition in offset order; fails unless exactly `expected`
/// records are there (the high watermarks are checked, so extra records are caught too).
fn consume_all(topic: &str, expected: usize) -> Vec<Record> {
    let consumer: BaseConsumer = common::client_config()
        .set("group.id", common::unique_group("generate_kafka"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("creating the consumer");
    let mut in_topic = 0;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("watermarks of {topic}/{partition}: {e}"));
        in_topic += high as usize;
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("a partition");
    }
    assert_eq!(in_topic, expected, "records in {topic}");
    consumer.assign(&assignment).expect("assigning partitions");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut records = Vec::with_capacity(expected);
    while records.len() < expected {
        assert!(
            Instant::now() < deadline,
            "{} of {expected} records back from {topic} within 60 s",
            records.len()
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => panic!("consuming from {topic}: {e}"),
            Some(Ok(message)) => records.push((
                message.partition(),
                message.key().map(<[u8]>::to_vec),
                message.payload().map(<[u8]>::to_vec),
            )),
        }
    }
    records
}

/// What a round trip leaves for further checks.
struct RoundTrip {
    topic: String,
    /// The decoder that read every record back, with the schema ids it learnt.
    decoder: EventDecoder,
    /// One record value, as produced.
    a_value: Vec<u8>,
}

/// Produces `generate` to a new topic in `format` (with `writer_schema`, if given) and checks
/// what comes back against the generator's output.
fn round_trip(
    runtime: &Runtime,
    test: &str,
    (format, writer_schema): (Format, Option<String>),
    generate: GenerateConfig,
) -> RoundTrip {
    let topic = common::unique_topic(test);
    runtime.block_on(common::create_topic(&topic, PARTITIONS));
    let expected: Vec<OrderEvent> = Generator::new(generate.clone()).collect();
    let target = KafkaTarget {
        topic: topic.clone(),
        format,
        writer_schema,
    };

    let produced = produce(
        &config(),
        &target,
        Generator::new(generate),
        runtime.handle(),
    )
    .unwrap_or_else(|e| panic!("producing to {topic}: {e}"));
    assert_eq!(produced.records, expected.len() as u64, "records produced");
    assert_eq!(produced.partitions, PARTITIONS as usize);

    let registry = RegistryClient::new(&config().schema_registry).expect("a registry client");
    let decoder =
        EventDecoder::new(format, Some(registry), runtime.handle().clone()).expect("a decoder");
    // Per order: the partitions it was found on, and its events in delivery order.
    let mut back: BTreeMap<String, (BTreeSet<i32>, Vec<OrderEvent>)> = BTreeMap::new();
    let records = consume_all(&topic, expected.len());
    let a_value = records[0].2.clone().expect("a value");
    for (partition, key, value) in records {
        let event = decoder
            .decode(key.as_deref(), value.as_deref())
            .unwrap_or_else(|e| panic!("decoding a record of {topic}/{partition}: {e}"));
        // The decoder refuses a key that is not the order id; say so here too.
        assert_eq!(
            key.as_deref(),
            Some(event.order_id.as_bytes()),
            "record key"
        );
        let order = back.entry(event.order_id.to_string()).or_default();
        order.0.insert(partition);
        order.1.push(event);
    }

    let mut made: BTreeMap<String, Vec<OrderEvent>> = BTreeMap::new();
    for event in expected {
        made.entry(event.order_id.to_string())
            .or_default()
            .push(event);
    }
    assert_eq!(
        back.keys().collect::<Vec<_>>(),
        made.keys().collect::<Vec<_>>(),
        "the same orders"
    );
    for (order_id, (partitions, events)) in &back {
        assert_eq!(
            partitions.len(),
            1,
            "{order_id} on partitions {partitions:?}"
        );
        // Equal sequences per order: the same multiset of events overall, and each order
        // delivered in the generator's order, redeliveries and late events included.
        assert_eq!(events, &made[order_id], "events of {order_id}, in order");
    }
    let used: BTreeSet<i32> = back.values().flat_map(|(p, _)| p.iter().copied()).collect();
    assert_eq!(
        used.len(),
        PARTITIONS as usize,
        "orders spread over partitions"
    );
    RoundTrip {
        topic,
        decoder,
        a_value,
    }
}

#[test]
fn json_events_come_back_as_generated_in_order_per_order() {
    let runtime = setup();
    let RoundTrip { a_value, .. } = round_trip(
        &runtime,
        "generate_json",
        (Format::Json, None),
        orders("GJ-", 300),
    );
    let value: serde_json::Value = serde_json::from_slice(&a_value).expect("a JSON value");
    let mut fields: Vec<&str> = value
        .as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "attributes",
            "customer_id",
            "event_id",
            "event_type",
            "items",
            "line_of_business",
            "marketplace",
            "occurred_at",
            "order_id",
            "source"
        ],
        "the contract's field names, all written"
    );
}

#[test]
fn avro_events_come_back_as_generated_under_the_registered_schema() {
    let runtime = setup();
    let RoundTrip {
        topic,
        decoder,
        a_value,
    } = round_trip(
        &runtime,
        "generate_avro",
        (Format::Avro, None),
        orders("GA-", 300),
    );

    let subjects = runtime
        .block_on(get_all_subjects(&common::sr_settings()))
        .expect("listing the registry's subjects");
    assert!(
        subjects.contains(&format!("{topic}-value")),
        "subject {topic}-value not registered; registry has {subjects:?}"
    );
    assert_eq!(a_value[0], 0, "Confluent magic byte");
    let schema_id = u32::from_be_bytes([a_value[1], a_value[2], a_value[3], a_value[4]]);
    // Our own schema file was registered, so the service reads these records directly,
    // with no schema resolution.
    assert_eq!(decoder.schema_route(schema_id), Some("direct"));
}

/// `--writer-schema`: the events come back the same, read through the plan the service
/// compiles for the registered writer schema, which is not ours.
#[test]
fn avro_events_written_with_a_newer_schema_come_back_as_generated_through_its_plan() {
    let runtime = setup();
    let evolved = std::fs::read_to_string(EVOLVED_SCHEMA).expect("the bench's evolved schema");
    let RoundTrip {
        decoder, a_value, ..
    } = round_trip(
        &runtime,
        "generate_evolved",
        (Format::Avro, Some(evolved)),
        orders("GE-", 300),
    );
    let schema_id = u32::from_be_bytes([a_value[1], a_value[2], a_value[3], a_value[4]]);
    assert_eq!(decoder.schema_route(schema_id), Some("planned"));
}

/// A writer schema an event cannot be written with (a field added without a default) is
/// refused before anything is sent.
#[test]
fn a_writer_schema_without_defaults_for_its_new_fields_is_refused() {
    let runtime = setup();
    let topic = common::unique_topic("generate_no_default");
    runtime.block_on(common::create_topic(&topic, PARTITIONS));
    let attributes =
        r#"{"name": "attributes", "type": {"type": "map", "values": "string"}, "default": {}}"#;
    let schema = ORDER_EVENT_SCHEMA.replace(
        attributes,
        &format!(r#"{attributes}, {{"name": "channel", "type": "string"}}"#),
    );
    let target = KafkaTarget {
        topic: topic.clone(),
        format: Format::Avro,
        writer_schema: Some(schema),
    };
    let error = produce(
        &config(),
        &target,
        Generator::new(orders("GN-", 3)),
        runtime.handle(),
    )
    .expect_err("a writer schema events cannot be written with");
    assert!(
        matches!(error, ProduceError::WriterSchema { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("channel"), "{error}");
    assert!(consume_all(&topic, 0).is_empty(), "nothing sent");
}

#[test]
fn a_missing_topic_is_an_error_before_anything_is_sent() {
    let runtime = setup();
    let target = KafkaTarget {
        topic: common::unique_topic("generate_missing"),
        format: Format::Json,
        writer_schema: None,
    };
    let error = produce(
        &config(),
        &target,
        Generator::new(orders("GM-", 3)),
        runtime.handle(),
    )
    .expect_err("a topic that does not exist");
    assert!(matches!(error, ProduceError::NoTopic { .. }), "{error}");
}

/// Guards "never report success for a record that was not acknowledged": the broker refuses
/// every batch of this topic (its `max.message.bytes` is below one record), so every
/// delivery report is a failure and the run must fail, counting them.
#[test]
fn refused_records_fail_the_run() {
    let runtime = setup();
    let topic = common::unique_topic("generate_refused");
    runtime.block_on(async {
        let admin: AdminClient<DefaultClientContext> =
            common::client_config().create().expect("an admin client");
        let new =
            NewTopic::new(&topic, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "64");
        let results = admin
            .create_topics([&new], &AdminOptions::new())
            .await
            .expect("creating the topic");
        for result in results {
            result.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
        }
    });
    let target = KafkaTarget {
        topic: topic.clone(),
        format: Format::Json,
        writer_schema: None,
    };
    let error = produce(
        &config(),
        &target,
        Generator::new(orders("GR-", 3)),
        runtime.handle(),
    )
    .expect_err("records the broker refuses");
    match &error {
        ProduceError::Delivery {
            sent,
            delivered,
            failed,
            ..
        } => {
            assert!(*sent > 0, "{error}");
            assert_eq!(*delivered, 0, "{error}");
            assert_eq!(failed, sent, "{error}");
        }
        other => panic!("not a delivery error: {other}"),
    }
    assert!(error.to_string().contains(&topic), "{error}");
}
