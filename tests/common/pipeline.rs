//! Helpers for the tests that run the stream processor against the broker.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use order_milestones::config::{Config, Format};
use order_milestones::engine::{Engine, OrderEvent, Rules};
use order_milestones::simulate;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

use super::{bootstrap, client_config, schema_registry_url, unique_group, unique_topic};

/// The processor's logs on the test's output (`RUST_LOG`, default `warn`), once per process.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A processor configuration of its own for `test`: fresh topics and application id, JSON
/// in and out (readable in failures), 3 partitions, state under `state_dir`.
pub fn test_config(test: &str, state_dir: &Path) -> Config {
    init_logs();
    let mut config = Config::default();
    config.kafka.bootstrap_servers = bootstrap();
    config.schema_registry.url = schema_registry_url();
    config.application.id = unique_topic(test);
    config.application.instance_id = "i0".into();
    config.topics.inputs = vec![unique_topic(&format!("{test}_in"))];
    config.topics.changes = unique_topic(&format!("{test}_changes"));
    config.topics.status = unique_topic(&format!("{test}_status"));
    config.topics.input_format = Format::Json;
    config.topics.output_format = Format::Json;
    config.topics.partitions = 3;
    // Partitions processed in parallel within the member, whatever this machine's cores.
    config.processing.workers = 2;
    config.state.dir = state_dir.to_path_buf();
    config.http.listen = "127.0.0.1:0".parse().expect("address");
    config.auth.hs256_secret = Some(super::service::TEST_SECRET.into());
    config.check().expect("valid test config");
    config
}

/// The configuration as a TOML file for `milestones run --config`.
pub fn write_config(config: &Config, path: &Path) {
    let text = toml::to_string(config).expect("config as TOML");
    std::fs::write(path, text).expect("write config");
}

/// A record to produce as it is: key and value, either possibly missing.
pub type RawRecord = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Produces events as JSON, keyed by order id, with the Java partitioner.
pub fn produce(config: &Config, events: &[OrderEvent]) {
    produce_raw(&config.topics.inputs[0], &json_records(events));
}

/// Events as the records [`produce`] writes: JSON values keyed by order id.
pub fn json_records<'e>(events: impl IntoIterator<Item = &'e OrderEvent>) -> Vec<RawRecord> {
    events
        .into_iter()
        .map(|e| {
            (
                Some(e.order_id.as_bytes().to_vec()),
                Some(serde_json::to_vec(e).expect("JSON")),
            )
        })
        .collect()
}

/// Produces records as given (a key or value may be missing), in order.
pub fn produce_raw(topic: &str, records: &[RawRecord]) {
    // Idempotent: a produce request retried after a timeout (a fresh broker under load)
    // must not write its records twice, or the topic holds redeliveries `simulate` on the
    // same events never saw, and the views' `duplicates` differ (seen once in a full run).
    let producer: BaseProducer = client_config()
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for (key, value) in records {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
        if let Some(key) = key {
            record = record.key(key.as_slice());
        }
        if let Some(value) = value {
            record = record.payload(value.as_slice());
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    producer.poll(Duration::from_millis(10));
                    record = back;
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("all records delivered");
}

/// The sum of the series of metric `name` in `text` (Prometheus' text format) whose labels
/// mention `label_value` (a topic, ...), or of all of them when it is empty.
pub fn metric_sum(text: &str, name: &str, label_value: &str) -> f64 {
    let quoted = format!("\"{label_value}\"");
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter(|l| label_value.is_empty() || l.contains(&quoted))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What simulate says: every change record in order, and the final views by order id.
pub fn simulated(events: &[OrderEvent]) -> (Vec<Value>, BTreeMap<String, Value>) {
    let engine = Engine::new(Arc::new(Rules::builtin().expect("rules")));
    let input: String = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap() + "\n")
        .collect();
    let run = |final_views| {
        let mut out = Vec::new();
        simulate::run(
            &engine,
            input.as_bytes(),
            "events",
            final_views,
            &mut out,
            std::io::sink(),
        )
        .expect("simulate");
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let views = run(true)
        .into_iter()
        .map(|v| (v["order_id"].as_str().unwrap().to_string(), v))
        .collect();
    (run(false), views)
}

/// A record read back: key, value (JSON when it parses, else the bytes as a string) and headers.
pub struct Read {
    pub key: Option<String>,
    pub value: Value,
    pub raw: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

/// Reads a topic `read_committed` from the start until `done` says the records so far are
/// enough; panics after `deadline`. Records are (key, JSON value).
pub fn read_until(
    topic: &str,
    deadline: Duration,
    done: impl FnMut(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    read(
        topic,
        deadline,
        |m| (key_of(m).unwrap_or_default(), value_of(m)),
        done,
    )
}

/// Like [`read_until`], with headers and the raw value.
pub fn read_records_until(
    topic: &str,
    deadline: Duration,
    done: impl FnMut(&[Read]) -> bool,
) -> Vec<Read> {
    read(
        topic,
        deadline,
        |m| {
            use rdkafka::message::Headers;
            Read {
                key: key_of(m),
                value: value_of(m),
                raw: m.payload().map(<[u8]>::to_vec),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    h.value
                                        .map(|v| String::from_utf8_lossy(v).into_owned())
                                        .unwrap_or_default(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        },
        done,
    )
}

fn key_of(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<String> {
    m.key().map(|k| String::from_utf8_lossy(k).into_owned())
}

/// The value as JSON, or as a JSON string of its bytes when it is not JSON; null when absent.
fn value_of(m: &rdkafka::message::BorrowedMessage<'_>) -> Value {
    m.payload()
        .map(|b| {
            serde_json::from_slice(b)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into_owned()))
        })
        .unwrap_or(Value::Null)
}

/// Reads `topic` from the start with a consumer of its own, converting each record once,
/// and asks `done` when caught up (or every thousand records), not after each record.
fn read<T>(
    topic: &str,
    deadline: Duration,
    convert: impl Fn(&rdkafka::message::BorrowedMessage<'_>) -> T,
    mut done: impl FnMut(&[T]) -> bool,
) -> Vec<T> {
    let consumer: BaseConsumer = client_config()
        .set("group.id", unique_group("reader"))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut records = Vec::new();
    let until = Instant::now() + deadline;
    loop {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            records.push(convert(&message.expect("read")));
            if records.len() % 1000 != 0 {
                continue;
            }
        }
        if done(&records) {
            return records;
        }
        assert!(
            Instant::now() < until,
            "{topic}: gave up after {deadline:?} with {} records",
            records.len()
        );
    }
}

/// Change records grouped by order, in the order read.
pub fn by_order(records: Vec<Value>) -> BTreeMap<String, Vec<Value>> {
    let mut map: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in records {
        map.entry(r["order_id"].as_str().unwrap().to_string())
            .or_default()
            .push(r);
    }
    map
}

/// Asserts that the change records read (`got`, any order across orders) are, order by
/// order, exactly `expected` (simulate's), in sequence.
pub fn assert_same_changes(got: Vec<Value>, expected: Vec<Value>) {
    let (got, want) = (by_order(got), by_order(expected));
    assert_eq!(got.len(), want.len(), "orders with change records");
    for (order, records) in &want {
        assert_eq!(
            got.get(order),
            Some(records),
            "change records of order {order}"
        );
    }
}
