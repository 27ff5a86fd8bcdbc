//! The Avro record formats against a real schema registry and broker: events written by
//! schema_registry_converter (as a producer of the event bus would) decode to our events,
//! through schema evolution both ways; each kind of bad record gets its error class; our
//! change records and views read back with schema_registry_converter's decoder as the
//! contract's JSON.
//!
//! The tests are plain `#[test]`s with their own runtime, because the decoder blocks on its
//! runtime handle for a registry lookup, as it does on the processor's thread.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use apache_avro::types::Value;
use order_milestones::emit::RecordEncoder;
use order_milestones::engine::{
    Item, ItemView, MilestoneChange, MilestoneView, OrderEvent, OrderView,
};
use order_milestones::ingest::{
    DecodeError, EventDecoder, Format, FormatError, RegistryClient, RegistryConfig,
};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use schema_registry_converter::async_impl::easy_avro::{EasyAvroDecoder, EasyAvroEncoder};
use schema_registry_converter::async_impl::schema_registry::get_all_subjects;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use tokio::runtime::Runtime;

const ORDER_EVENT_SCHEMA: &str = include_str!("../avro/order_event.avsc");

/// A runtime and registry client, after checking the stack is there.
fn setup() -> (Runtime, RegistryClient) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    common::require_kafka();
    runtime.block_on(common::require_schema_registry());
    let registry = RegistryClient::new(&RegistryConfig::new(common::schema_registry_url()))
        .expect("a registry client");
    (runtime, registry)
}

fn decoder(runtime: &Runtime, registry: &RegistryClient) -> EventDecoder {
    EventDecoder::new(
        Format::Avro,
        Some(registry.clone()),
        runtime.handle().clone(),
    )
    .expect("an avro decoder")
}

/// Encodes `value` the way a producer using the registry does: the writer `schema` is
/// registered under `<topic>-value` and its id written in the Confluent header.
fn encode_with(runtime: &Runtime, topic: &str, schema: &str, value: Value) -> Vec<u8> {
    let encoder = EasyAvroEncoder::new(common::sr_settings());
    let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
        topic.to_owned(),
        false,
        SuppliedSchema::new(
            Some("com.grocery.orders.OrderEvent".to_owned()),
            SchemaType::Avro,
            schema.to_owned(),
        ),
    );
    runtime
        .block_on(encoder.encode_value(value, &strategy))
        .unwrap_or_else(|e| panic!("encoding through {}: {e}", common::schema_registry_url()))
}

type Record = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Produces the records to a new topic and consumes them back, in order.
fn through_broker(runtime: &Runtime, test: &str, records: Vec<Record>) -> Vec<Record> {
    runtime.block_on(async {
        let topic = common::unique_topic(test);
        common::create_topic(&topic, 1).await;
        let producer: FutureProducer = common::client_config()
            .create()
            .expect("creating the producer");
        for (key, payload) in &records {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic);
            record.key = key.as_deref();
            record.payload = payload.as_deref();
            producer
                .send(record, Duration::from_secs(30))
                .await
                .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
        }
        let consumer: StreamConsumer = common::client_config()
            .set("group.id", common::unique_group(test))
            .set("enable.auto.commit", "false")
            .create()
            .expect("creating the consumer");
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&topic, 0, Offset::Beginning)
            .expect("partition 0");
        consumer.assign(&assignment).expect("assigning partition 0");
        let mut back = Vec::new();
        while back.len() < records.len() {
            let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
                .await
                .unwrap_or_else(|_| panic!("{} of {} records back", back.len(), records.len()))
                .unwrap_or_else(|e| panic!("consuming from {topic}: {e}"));
            back.push((
                message.key().map(<[u8]>::to_vec),
                message.payload().map(<[u8]>::to_vec),
            ));
        }
        assert_eq!(back, records, "records come back unchanged");
        back
    })
}

fn string(s: &str) -> Value {
    Value::String(s.to_owned())
}

/// An event with every field of `avro/order_event.avsc` set, in its field order, and ten
/// items; and the event it must decode to.
fn full_event(order_id: &str) -> (Vec<(String, Value)>, OrderEvent) {
    let items: Vec<(String, i32)> = (0..10).map(|i| (format!("B0000{i:05}"), i + 1)).collect();
    let value = vec![
        ("event_id".to_owned(), string("evt-1")),
        ("order_id".to_owned(), string(order_id)),
        ("event_type".to_owned(), string("OrderCreated")),
        ("source".to_owned(), string("ordering")),
        (
            "occurred_at".to_owned(),
            Value::TimestampMillis(1_767_225_600_000),
        ),
        ("line_of_business".to_owned(), string("fresh")),
        ("marketplace".to_owned(), string("UK")),
        (
            "customer_id".to_owned(),
            Value::Union(1, Box::new(string("cust-7"))),
        ),
        (
            "items".to_owned(),
            Value::Array(
                items
                    .iter()
                    .map(|(asin, qty)| {
                        Value::Record(vec![
                            ("asin".to_owned(), string(asin)),
                            ("qty".to_owned(), Value::Int(*qty)),
                        ])
                    })
                    .collect(),
            ),
        ),
        (
            "attributes".to_owned(),
            Value::Map(HashMap::from([
                ("store".to_owned(), string("1042")),
                ("substitute_asin".to_owned(), string("B0000XYZ")),
            ])),
        ),
    ];
    let event = OrderEvent {
        event_id: "evt-1".into(),
        order_id: order_id.into(),
        event_type: "OrderCreated".into(),
        source: "ordering".into(),
        occurred_at: 1_767_225_600_000,
        line_of_business: "fresh".into(),
        marketplace: "UK".into(),
        customer_id: Some("cust-7".into()),
        items: items
            .iter()
            .map(|(asin, qty)| Item {
                asin: asin.as_str().into(),
                qty: *qty,
            })
            .collect(),
        attributes: [("store", "1042"), ("substitute_asin", "B0000XYZ")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect(),
    };
    (value, event)
}

fn set(fields: &mut [(String, Value)], name: &str, value: Value) {
    let field = fields
        .iter_mut()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no field {name}"));
    field.1 = value;
}

/// `avro/order_event.avsc` with the field named `name` taken out.
fn schema_without(schema: &str, names: &[&str]) -> String {
    let mut json: serde_json::Value = serde_json::from_str(schema).expect("schema JSON");
    let fields = json["fields"].as_array_mut().expect("fields");
    fields.retain(|f| !names.contains(&f["name"].as_str().unwrap_or_default()));
    json.to_string()
}

#[test]
fn event_round_trips_through_registry_and_broker() {
    let (runtime, registry) = setup();
    let topic = common::unique_topic("formats_event");
    let (value, expected) = full_event("order-42");
    let payload = encode_with(&runtime, &topic, ORDER_EVENT_SCHEMA, Value::Record(value));
    let (second_value, _) = full_event("order-43");
    let second = encode_with(
        &runtime,
        &topic,
        ORDER_EVENT_SCHEMA,
        Value::Record(second_value),
    );
    let records = through_broker(
        &runtime,
        "formats_event",
        vec![
            (Some(b"order-42".to_vec()), Some(payload)),
            (Some(b"order-43".to_vec()), Some(second)),
        ],
    );

    let decoder = decoder(&runtime, &registry);
    let decoded = decoder
        .decode(records[0].0.as_deref(), records[0].1.as_deref())
        .unwrap_or_else(|e| panic!("{} {e}", e.class()));
    assert_eq!(decoded, expected);
    let decoded = decoder
        .decode(records[1].0.as_deref(), records[1].1.as_deref())
        .unwrap_or_else(|e| panic!("{} {e}", e.class()));
    assert_eq!(decoded.order_id, "order-43");
    assert_eq!(
        decoder.schema_route(schema_id(&records[0].1)),
        Some("direct"),
        "our own schema, as the registry hands it back, is read without resolution"
    );
}

fn schema_id(payload: &Option<Vec<u8>>) -> u32 {
    let payload = payload.as_deref().expect("a value");
    u32::from_be_bytes(payload[1..5].try_into().expect("a Confluent header"))
}

/// A newer writer's records, with one more field (`extra`, holding `value`) after
/// `occurred_at`, through the registry and the broker: decoded as `expected`, by `route`.
fn newer_writer_is_read(name: &str, extra: serde_json::Value, value: Value, route: &str) {
    let (runtime, registry) = setup();
    let topic = common::unique_topic(name);
    let mut schema: serde_json::Value = serde_json::from_str(ORDER_EVENT_SCHEMA).unwrap();
    let fields = schema["fields"].as_array_mut().unwrap();
    let field = extra["name"].as_str().unwrap().to_owned();
    fields.insert(4, extra);
    let (mut record, expected) = full_event("order-1");
    record.insert(4, (field, value));
    let payload = encode_with(&runtime, &topic, &schema.to_string(), Value::Record(record));
    let records = through_broker(
        &runtime,
        name,
        vec![(Some(b"order-1".to_vec()), Some(payload))],
    );
    let decoder = decoder(&runtime, &registry);
    let decoded = decoder
        .decode(records[0].0.as_deref(), records[0].1.as_deref())
        .unwrap_or_else(|e| panic!("{} {e}", e.class()));
    assert_eq!(decoded, expected);
    assert_eq!(decoder.schema_route(schema_id(&records[0].1)), Some(route));
}

#[test]
fn a_writer_with_an_extra_optional_field_is_read_by_its_plan() {
    newer_writer_is_read(
        "formats_newer_writer",
        serde_json::json!({"name": "channel", "type": ["null", "string"], "default": null}),
        Value::Union(1, Box::new(string("app"))),
        "planned",
    );
}

/// A recursive type has no read plan: such a writer's records are resolved through
/// `apache_avro`, slower but the same.
#[test]
fn a_writer_the_plan_does_not_cover_is_resolved() {
    let hop = |next: Value| Value::Record(vec![("next".to_owned(), next)]);
    newer_writer_is_read(
        "formats_recursive_writer",
        serde_json::json!({"name": "trail", "default": null, "type": ["null", {
            "type": "record", "name": "Hop", "fields": [{"name": "next", "type": ["null", "Hop"]}]
        }]}),
        Value::Union(
            1,
            Box::new(hop(Value::Union(
                1,
                Box::new(hop(Value::Union(0, Box::new(Value::Null)))),
            ))),
        ),
        "resolved",
    );
}

/// One order event written with our schema to one topic, and without `marketplace` and
/// `attributes` (an older producer's schema) to another, each schema registered under its
/// topic's value subject.
struct TwoWriters {
    topic: String,
    ours: Vec<u8>,
    older_topic: String,
    older: Vec<u8>,
    /// What the event reads as with our schema.
    expected: OrderEvent,
}

fn two_writers(runtime: &Runtime, test: &str) -> TwoWriters {
    let (value, expected) = full_event("order-1");
    let topic = common::unique_topic(test);
    let ours = encode_with(
        runtime,
        &topic,
        ORDER_EVENT_SCHEMA,
        Value::Record(value.clone()),
    );
    let older_schema = schema_without(ORDER_EVENT_SCHEMA, &["marketplace", "attributes"]);
    let mut older_value = value;
    older_value.retain(|(name, _)| name != "marketplace" && name != "attributes");
    let older_topic = common::unique_topic(&format!("{test}_older"));
    let older = encode_with(
        runtime,
        &older_topic,
        &older_schema,
        Value::Record(older_value),
    );
    TwoWriters {
        topic,
        ours,
        older_topic,
        older,
        expected,
    }
}

/// Before the first record the processor has the decoder learn the writer schema each input
/// topic's values were last registered with: records of it are then read with no registry
/// lookup in their way. A topic without such a subject teaches nothing, and is no error.
#[test]
fn the_decoder_learns_each_inputs_latest_writer_schema_ahead() {
    let (runtime, registry) = setup();
    let TwoWriters {
        topic,
        ours,
        older_topic,
        older,
        expected,
    } = two_writers(&runtime, "formats_latest");
    let unregistered = common::unique_topic("formats_latest_none");
    let id = |payload: &Vec<u8>| schema_id(&Some(payload.clone()));

    let decoder = decoder(&runtime, &registry);
    assert_eq!(
        decoder.schema_route(id(&ours)),
        None,
        "known before learning"
    );
    decoder.learn_latest(&[topic, older_topic, unregistered]);
    assert_eq!(decoder.schema_route(id(&ours)), Some("direct"));
    assert_eq!(decoder.schema_route(id(&older)), Some("planned"));
    let decoded = decoder
        .decode(Some(b"order-1"), Some(&ours))
        .unwrap_or_else(|e| panic!("{} {e}", e.class()));
    assert_eq!(decoded, expected);
}

/// The decoder reads records of our own schema without a lock once it knows the id; records
/// of another writer, in between, are still read with theirs.
#[test]
fn one_decoder_reads_our_schema_and_another_writers_interleaved() {
    let (runtime, registry) = setup();
    let TwoWriters {
        ours,
        older,
        expected,
        ..
    } = two_writers(&runtime, "formats_interleaved");
    let older_expected = OrderEvent {
        marketplace: "US".into(),
        attributes: Default::default(),
        ..expected.clone()
    };
    let decoder = decoder(&runtime, &registry);
    for (payload, want) in [
        (&ours, &expected),
        (&older, &older_expected),
        (&ours, &expected),
        (&older, &older_expected),
    ] {
        let decoded = decoder
            .decode(Some(b"order-1"), Some(payload))
            .unwrap_or_else(|e| panic!("{} {e}", e.class()));
        assert_eq!(&decoded, want);
    }
    let id = |payload: &Vec<u8>| schema_id(&Some(payload.clone()));
    assert_ne!(id(&ours), id(&older));
    assert_eq!(decoder.schema_route(id(&ours)), Some("direct"));
    assert_eq!(decoder.schema_route(id(&older)), Some("planned"));
    // A truncated record of our schema is still undecodable, with the schema id named.
    let cut = &ours[..ours.len() - 3];
    let error = decoder.decode(Some(b"order-1"), Some(cut)).unwrap_err();
    assert_eq!(error.class(), "undecodable");
    assert!(
        error
            .to_string()
            .contains(&format!("schema id {}", id(&ours))),
        "{error}"
    );
}

#[test]
fn an_older_writer_without_marketplace_and_attributes_gets_the_defaults() {
    let (runtime, registry) = setup();
    let topic = common::unique_topic("formats_older_writer");
    let schema = schema_without(ORDER_EVENT_SCHEMA, &["marketplace", "attributes"]);
    let (mut value, expected) = full_event("order-1");
    value.retain(|(name, _)| name != "marketplace" && name != "attributes");
    let payload = encode_with(&runtime, &topic, &schema, Value::Record(value));
    let decoded = decoder(&runtime, &registry)
        .decode(Some(b"order-1"), Some(&payload))
        .unwrap_or_else(|e| panic!("{} {e}", e.class()));
    assert_eq!(
        decoded,
        OrderEvent {
            marketplace: "US".into(),
            attributes: Default::default(),
            ..expected
        }
    );
}

#[test]
fn each_bad_record_gets_its_class() {
    let (runtime, registry) = setup();
    let topic = common::unique_topic("formats_bad");
    let good = |order_id: &str| full_event(order_id).0;

    let mut empty_order_id = good("");
    set(&mut empty_order_id, "order_id", string(""));
    let mut zero_qty = good("order-1");
    set(
        &mut zero_qty,
        "items",
        Value::Array(vec![Value::Record(vec![
            ("asin".to_owned(), string("B1")),
            ("qty".to_owned(), Value::Int(0)),
        ])]),
    );
    let encode = |value| encode_with(&runtime, &topic, ORDER_EVENT_SCHEMA, Value::Record(value));
    let empty_order_id = encode(empty_order_id);
    let zero_qty = encode(zero_qty);
    let mismatched = encode(good("order-1"));

    // A writer without event_id, which our schema requires with no default.
    let no_event_id_topic = common::unique_topic("formats_no_event_id");
    let mut no_event_id = good("order-1");
    no_event_id.retain(|(name, _)| name != "event_id");
    let no_event_id = encode_with(
        &runtime,
        &no_event_id_topic,
        &schema_without(ORDER_EVENT_SCHEMA, &["event_id"]),
        Value::Record(no_event_id),
    );

    let mut truncated = mismatched.clone();
    truncated.truncate(truncated.len() - 3);
    let unknown_id = [&[0u8, 0x7f, 0xff, 0xff, 0xf0][..], &mismatched[5..]].concat();

    let key = |k: &str| Some(k.as_bytes().to_vec());
    let cases: Vec<(Record, &str, &str)> = vec![
        (
            (key("order-1"), Some(b"not avro at all".to_vec())),
            "undecodable",
            "magic byte",
        ),
        (
            (key("order-1"), Some(truncated)),
            "undecodable",
            "truncated",
        ),
        (
            (key("order-1"), Some(unknown_id)),
            "unknown_schema",
            "2147483632",
        ),
        (
            (key("order-1"), Some(no_event_id)),
            "incompatible_schema",
            "event_id",
        ),
        ((key(""), Some(empty_order_id)), "invalid_event", "order_id"),
        ((key("order-1"), Some(zero_qty)), "invalid_event", "qty 0"),
        ((key("order-1"), None), "missing_value", "no value"),
        (
            (key("order-2"), Some(mismatched)),
            "key_mismatch",
            "order-2",
        ),
    ];
    let records = through_broker(
        &runtime,
        "formats_bad",
        cases.iter().map(|(record, _, _)| record.clone()).collect(),
    );

    let decoder = decoder(&runtime, &registry);
    for ((key, payload), (_, class, says)) in records.iter().zip(&cases) {
        let error = decoder
            .decode(key.as_deref(), payload.as_deref())
            .expect_err(class);
        assert_eq!(error.class(), *class, "{error}");
        assert!(error.to_string().contains(says), "{class}: {error}");
        assert!(!error.is_retriable(), "{error}");
    }
    // The schema ids are cached, errors included: the second time needs no registry.
    let (key, payload) = &records[2];
    let again = decoder.decode(key.as_deref(), payload.as_deref());
    assert!(matches!(again, Err(DecodeError::UnknownSchema { .. })));
}

#[test]
fn an_unreachable_registry_is_retriable_not_bad_input() {
    let runtime = Runtime::new().expect("a tokio runtime");
    let mut config = RegistryConfig::new("http://127.0.0.1:9");
    config.timeout_ms = 2_000;
    let registry = RegistryClient::new(&config).expect("a registry client");
    let decoder = decoder(&runtime, &registry);
    let error = decoder
        .decode(Some(b"A"), Some(&[0, 0, 0, 0, 1, 2, 3]))
        .expect_err("no registry there");
    assert_eq!(error.class(), "registry_unavailable", "{error}");
    assert!(error.is_retriable());
}

/// The start must not wait on a registry that does not answer: learning the inputs' latest
/// schemas gives up after a second, and the first record asks the registry again.
#[test]
fn learning_the_inputs_schemas_of_a_silent_registry_gives_up_soon() {
    let runtime = Runtime::new().expect("a tokio runtime");
    // Takes connections (the kernel's backlog does) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
    let url = format!("http://{}", silent.local_addr().expect("its address"));
    let mut config = RegistryConfig::new(url);
    config.timeout_ms = 30_000;
    let registry = RegistryClient::new(&config).expect("a registry client");
    let decoder = decoder(&runtime, &registry);
    let started = std::time::Instant::now();
    decoder.learn_latest(&["first".to_owned(), "second".to_owned()]);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "learning waited {took:?} for a silent registry"
    );
    assert_eq!(decoder.schema_route(1), None);
}

fn change() -> MilestoneChange {
    MilestoneChange {
        order_id: "order-42".into(),
        sequence: 3,
        milestone: "preparing".into(),
        inferred: false,
        reached_at: Some(1_767_225_600_000),
        status: "ready".into(),
        evidence: vec!["evt-2".into(), "evt-3".into()],
        rules_version: "default@1".into(),
        customer_id: Some("cust-7".into()),
    }
}

fn view() -> OrderView {
    OrderView {
        order_id: "order-42".into(),
        status: Some("out_for_delivery".into()),
        placeholder: false,
        milestones: vec![
            MilestoneView {
                name: "ordered".into(),
                inferred: false,
                reached_at: Some(1_767_225_600_000),
            },
            MilestoneView {
                name: "ready".into(),
                inferred: true,
                reached_at: None,
            },
        ],
        items: vec![ItemView {
            asin: "B06WW2YGSJ".into(),
            ordered: Some(2),
            shorted: 0,
            substituted: 1,
        }],
        events: 4,
        duplicates: 1,
    }
}

/// Reads a value with schema_registry_converter's decoder (the writer schema fetched by the
/// id in the header) and returns its JSON.
fn read_with_registry(runtime: &Runtime, payload: &[u8]) -> serde_json::Value {
    let decoded = runtime
        .block_on(EasyAvroDecoder::new(common::sr_settings()).decode(Some(payload)))
        .unwrap_or_else(|e| panic!("decoding our own record: {e}"));
    serde_json::Value::try_from(decoded.value).expect("JSON of the decoded value")
}

#[test]
fn change_records_and_views_read_back_as_the_contract_json() {
    let (runtime, registry) = setup();
    let changes_topic = common::unique_topic("formats_changes");
    let views_topic = common::unique_topic("formats_views");
    let handle = runtime.handle();
    let changes = RecordEncoder::for_changes(Format::Avro, &changes_topic, Some(&registry), handle)
        .unwrap_or_else(|e| panic!("{e}"));
    let views = RecordEncoder::for_views(Format::Avro, &views_topic, Some(&registry), handle)
        .unwrap_or_else(|e| panic!("{e}"));
    let subjects = runtime
        .block_on(get_all_subjects(&common::sr_settings()))
        .expect("listing subjects");
    for topic in [&changes_topic, &views_topic] {
        let subject = format!("{topic}-value");
        assert!(subjects.contains(&subject), "{subject} not in {subjects:?}");
    }
    // Registering again (a restart) finds the same schema id.
    let again = RecordEncoder::for_changes(Format::Avro, &changes_topic, Some(&registry), handle)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.schema_id(), changes.schema_id());

    let placeholder = OrderView {
        status: None,
        placeholder: true,
        items: vec![ItemView {
            ordered: None,
            ..view().items[0].clone()
        }],
        ..view()
    };
    let inferred = MilestoneChange {
        inferred: true,
        reached_at: None,
        customer_id: None,
        evidence: vec![],
        ..change()
    };
    let mut records = Vec::new();
    for change in [change(), inferred.clone()] {
        let mut out = Vec::new();
        changes.encode_change(&change, &mut out).unwrap();
        records.push((Some(b"order-42".to_vec()), Some(out)));
    }
    for view in [view(), placeholder.clone()] {
        let mut out = Vec::new();
        views.encode_view(&view, &mut out).unwrap();
        records.push((Some(b"order-42".to_vec()), Some(out)));
    }
    let back = through_broker(&runtime, "formats_outputs", records);
    let expected = [
        serde_json::to_value(change()).unwrap(),
        serde_json::to_value(inferred).unwrap(),
        serde_json::to_value(view()).unwrap(),
        serde_json::to_value(placeholder).unwrap(),
    ];
    for ((_, payload), expected) in back.iter().zip(expected) {
        let payload = payload.as_deref().expect("a value");
        assert_eq!(read_with_registry(&runtime, payload), expected);
    }
}

#[test]
fn avro_encoders_need_a_registry_and_a_plain_thread() {
    let (runtime, registry) = setup();
    let error = RecordEncoder::for_views(Format::Avro, "t", None, runtime.handle());
    assert!(matches!(error, Err(FormatError::NoRegistry)));
    let inside = runtime.block_on(async {
        RecordEncoder::for_views(
            Format::Avro,
            "t",
            Some(&registry),
            &tokio::runtime::Handle::current(),
        )
        .map(|_| ())
    });
    assert!(
        matches!(inside, Err(FormatError::AsyncContext)),
        "{inside:?}"
    );
}
