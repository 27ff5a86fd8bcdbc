//! The record formats per record, with schemas cached (no registry): decoding an event of
//! ten items (Avro on the direct path, Avro from an evolved writer schema by its read plan
//! and, for a writer schema the plan does not cover, by `apache_avro`'s resolution, JSON),
//! and encoding a change record and an order view (Avro, JSON).
//!
//! `cargo bench --bench formats`. Needs no broker and no registry.

use std::hint::black_box;

use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use order_milestones::emit::RecordEncoder;
use order_milestones::engine::{ItemView, MilestoneChange, MilestoneView, OrderView};
use order_milestones::ingest::avro::ORDER_EVENT_SCHEMA;
use order_milestones::ingest::{EventDecoder, Format, RegistryClient, RegistryConfig};

/// The service's allocator, so the figures are the service's.
#[global_allocator]
static ALLOCATOR: order_milestones::alloc::Allocator = order_milestones::alloc::Allocator;

const OUR_ID: u32 = 1;
const EVOLVED_ID: u32 = 2;
const UNCOVERED_ID: u32 = 3;

fn string(s: &str) -> Value {
    Value::String(s.to_owned())
}

/// An `OrderItemPicked`-sized event: ten items, two attributes. With `channel`, the record
/// of a newer writer schema that has one more (optional) field.
fn event_value(channel: bool) -> Value {
    let mut fields = vec![
        ("event_id".to_owned(), string("fulfillment-7f3a9c21-0001")),
        ("order_id".to_owned(), string("112-4839201-7734511")),
        ("event_type".to_owned(), string("ItemPicked")),
        ("source".to_owned(), string("fulfillment")),
        (
            "occurred_at".to_owned(),
            Value::TimestampMillis(1_767_225_600_000),
        ),
        ("line_of_business".to_owned(), string("grocery")),
        ("marketplace".to_owned(), string("US")),
        (
            "customer_id".to_owned(),
            Value::Union(1, Box::new(string("A1B2C3D4E5F6G7"))),
        ),
        (
            "items".to_owned(),
            Value::Array(
                (0..10)
                    .map(|i| {
                        Value::Record(vec![
                            ("asin".to_owned(), string(&format!("B0{i:08}"))),
                            ("qty".to_owned(), Value::Int(i + 1)),
                        ])
                    })
                    .collect(),
            ),
        ),
        (
            "attributes".to_owned(),
            Value::Map(
                [
                    ("store".to_owned(), string("1042")),
                    ("picker".to_owned(), string("p-88")),
                ]
                .into(),
            ),
        ),
    ];
    if channel {
        fields.insert(
            4,
            (
                "channel".to_owned(),
                Value::Union(1, Box::new(string("app"))),
            ),
        );
    }
    Value::Record(fields)
}

fn evolved_schema() -> String {
    let mut json: serde_json::Value = serde_json::from_str(ORDER_EVENT_SCHEMA).unwrap();
    json["fields"].as_array_mut().unwrap().insert(
        4,
        serde_json::json!({"name": "channel", "type": ["null", "string"], "default": null}),
    );
    json.to_string()
}

/// The evolved schema with one more field of a recursive type, which a read plan does not
/// cover: its records are resolved through `apache_avro`.
fn uncovered_schema() -> String {
    let mut json: serde_json::Value = serde_json::from_str(&evolved_schema()).unwrap();
    json["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "name": "trail", "default": null, "type": ["null", {"type": "record", "name": "Hop",
                "fields": [{"name": "next", "type": ["null", "Hop"]}]}]
        }));
    json.to_string()
}

fn uncovered_value() -> Value {
    let Value::Record(mut fields) = event_value(true) else {
        unreachable!("an event is a record")
    };
    fields.push(("trail".to_owned(), Value::Union(0, Box::new(Value::Null))));
    Value::Record(fields)
}

fn confluent(id: u32, schema: &str, value: Value) -> Vec<u8> {
    let schema = Schema::parse_str(schema).unwrap();
    let datum = GenericDatumWriter::builder(&schema)
        .build()
        .unwrap()
        .write_value_to_vec(value)
        .unwrap();
    [&[0][..], &id.to_be_bytes(), &datum].concat()
}

fn json_event() -> Vec<u8> {
    let value = serde_json::Value::try_from(event_value(false)).unwrap();
    serde_json::to_vec(&value).unwrap()
}

fn change() -> MilestoneChange {
    MilestoneChange {
        order_id: "112-4839201-7734511".into(),
        sequence: 3,
        milestone: "preparing".into(),
        inferred: false,
        reached_at: Some(1_767_225_600_000),
        status: "preparing".into(),
        evidence: vec![
            "fulfillment-7f3a9c21-0001".into(),
            "fulfillment-7f3a9c21-0002".into(),
        ],
        rules_version: "default@1".into(),
        customer_id: Some("A1B2C3D4E5F6G7".into()),
    }
}

fn view() -> OrderView {
    let milestone = |name: &str, inferred: bool| MilestoneView {
        name: name.into(),
        inferred,
        reached_at: (!inferred).then_some(1_767_225_600_000),
    };
    OrderView {
        order_id: "112-4839201-7734511".into(),
        status: Some("out_for_delivery".into()),
        placeholder: false,
        milestones: vec![
            milestone("ordered", false),
            milestone("preparing", false),
            milestone("ready", true),
            milestone("out_for_delivery", false),
        ],
        items: (0..10)
            .map(|i| ItemView {
                asin: format!("B0{i:08}").into(),
                ordered: Some(i + 1),
                shorted: i % 3,
                substituted: i % 2,
            })
            .collect(),
        events: 9,
        duplicates: 1,
    }
}

fn decode(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // Never called: both schema ids are taught to the decoder up front.
    let registry = RegistryClient::new(&RegistryConfig::new("http://127.0.0.1:9")).unwrap();
    let avro = EventDecoder::new(Format::Avro, Some(registry), runtime.handle().clone()).unwrap();
    avro.add_writer_schema(OUR_ID, ORDER_EVENT_SCHEMA);
    avro.add_writer_schema(EVOLVED_ID, &evolved_schema());
    avro.add_writer_schema(UNCOVERED_ID, &uncovered_schema());
    let json = EventDecoder::new(Format::Json, None, runtime.handle().clone()).unwrap();

    let direct = confluent(OUR_ID, ORDER_EVENT_SCHEMA, event_value(false));
    let planned = confluent(EVOLVED_ID, &evolved_schema(), event_value(true));
    let resolved = confluent(UNCOVERED_ID, &uncovered_schema(), uncovered_value());
    let json_payload = json_event();
    let key = Some(&b"112-4839201-7734511"[..]);
    assert_eq!(avro.schema_route(OUR_ID), Some("direct"));
    assert_eq!(avro.schema_route(EVOLVED_ID), Some("planned"));
    assert_eq!(avro.schema_route(UNCOVERED_ID), Some("resolved"));
    let expected = avro.decode(key, Some(&direct)).unwrap();
    assert_eq!(avro.decode(key, Some(&planned)).unwrap(), expected);
    assert_eq!(avro.decode(key, Some(&resolved)).unwrap(), expected);
    assert_eq!(json.decode(key, Some(&json_payload)).unwrap(), expected);

    let mut group = c.benchmark_group("decode event (10 items)");
    group.throughput(Throughput::Elements(1));
    group.bench_function("avro, our schema (direct)", |b| {
        b.iter(|| avro.decode(key, Some(black_box(&direct))).unwrap())
    });
    group.bench_function("avro, evolved writer (planned)", |b| {
        b.iter(|| avro.decode(key, Some(black_box(&planned))).unwrap())
    });
    group.bench_function(
        "avro, evolved writer the plan does not cover (resolved)",
        |b| b.iter(|| avro.decode(key, Some(black_box(&resolved))).unwrap()),
    );
    group.bench_function("json", |b| {
        b.iter(|| json.decode(key, Some(black_box(&json_payload))).unwrap())
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let avro = RecordEncoder::avro_with_schema_id(OUR_ID);
    let json = RecordEncoder::for_changes(Format::Json, "t", None, runtime.handle()).unwrap();
    let (change, view) = (change(), view());
    let mut out = Vec::with_capacity(1024);

    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    for (name, encoder) in [("avro", &avro), ("json", &json)] {
        group.bench_function(format!("change, {name}"), |b| {
            b.iter(|| {
                out.clear();
                encoder.encode_change(black_box(&change), &mut out).unwrap();
                out.len()
            })
        });
        group.bench_function(format!("view (10 items), {name}"), |b| {
            b.iter(|| {
                out.clear();
                encoder.encode_view(black_box(&view), &mut out).unwrap();
                out.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
