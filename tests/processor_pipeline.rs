//! The stream processor against the real broker: the contract's worked scenarios and a
//! generated stream of thousands of orders give, on the output topics, exactly what
//! `milestones simulate` gives on the same events: the same change records (same
//! sequences) and the same final order views.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use order_milestones::config::{Config, Format};
use order_milestones::engine::{Engine, OrderEvent, Rules};
use order_milestones::generate::{GenerateConfig, Generator};
use order_milestones::{processor, simulate, topics};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

fn test_config(test: &str, state_dir: &Path) -> Config {
    let mut config = Config::default();
    config.kafka.bootstrap_servers = common::bootstrap();
    config.schema_registry.url = common::schema_registry_url();
    config.application.id = common::unique_topic(test);
    config.application.instance_id = "i0".into();
    config.topics.inputs = vec![common::unique_topic(&format!("{test}_in"))];
    config.topics.changes = common::unique_topic(&format!("{test}_changes"));
    config.topics.status = common::unique_topic(&format!("{test}_status"));
    config.topics.input_format = Format::Json;
    config.topics.output_format = Format::Json;
    config.topics.partitions = 3;
    config.state.dir = state_dir.to_path_buf();
    config.check().expect("valid test config");
    config
}

fn produce(config: &Config, events: &[OrderEvent]) {
    let producer: BaseProducer = common::client_config()
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for event in events {
        let payload = serde_json::to_vec(event).expect("event as JSON");
        let mut record = BaseRecord::to(&config.topics.inputs[0])
            .key(event.order_id.as_bytes())
            .payload(&payload);
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
        .expect("all events delivered");
}

/// What simulate says: every change record in order, and the final views by order id.
fn simulated(events: &[OrderEvent]) -> (Vec<Value>, BTreeMap<String, Value>) {
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

/// Reads a topic `read_committed` until `done` says the records so far are enough.
fn read_until(
    topic: &str,
    deadline: Duration,
    mut done: impl FnMut(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    let consumer: BaseConsumer = common::client_config()
        .set("group.id", common::unique_group("reader"))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut records = Vec::new();
    let until = Instant::now() + deadline;
    while !done(&records) {
        assert!(
            Instant::now() < until,
            "{topic}: gave up after {deadline:?} with {} records",
            records.len()
        );
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.expect("read");
            let key = String::from_utf8(message.key().expect("keyed").to_vec()).unwrap();
            let value: Value =
                serde_json::from_slice(message.payload().expect("value")).expect("JSON");
            records.push((key, value));
        }
    }
    records
}

/// Runs the processor over `events` and compares its outputs with simulate's.
fn processes_like_simulate(test: &str, events: Vec<OrderEvent>) {
    common::require_kafka();
    let state = tempfile::tempdir().expect("state dir");
    let config = test_config(test, state.path());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(topics::apply(&config)).expect("topics");
    produce(&config, &events);
    let (expected_records, expected_views) = simulated(&events);

    let shutdown = Arc::new(AtomicBool::new(false));
    let processor = {
        let (config, shutdown, handle) =
            (config.clone(), shutdown.clone(), runtime.handle().clone());
        std::thread::spawn(move || {
            let engine = Engine::new(Arc::new(Rules::builtin().expect("rules")));
            processor::run(&config, engine, handle, &shutdown)
        })
    };

    let views = read_until(&config.topics.status, Duration::from_secs(120), |records| {
        let last: HashMap<&str, &Value> = records.iter().map(|(k, v)| (k.as_str(), v)).collect();
        last.len() == expected_views.len()
            && expected_views
                .iter()
                .all(|(id, view)| last.get(id.as_str()) == Some(&view))
    });
    let changes = read_until(&config.topics.changes, Duration::from_secs(60), |records| {
        records.len() >= expected_records.len()
    });
    shutdown.store(true, Ordering::Relaxed);
    processor
        .join()
        .expect("processor thread")
        .expect("processor stopped cleanly");

    assert!(!views.is_empty());
    // Per order, the change records are simulate's, in sequence.
    let by_order = |records: Vec<Value>| {
        let mut map: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for r in records {
            map.entry(r["order_id"].as_str().unwrap().to_string())
                .or_default()
                .push(r);
        }
        map
    };
    let got = by_order(changes.into_iter().map(|(_, v)| v).collect());
    let want = by_order(expected_records);
    assert_eq!(got.len(), want.len(), "orders with change records");
    for (order, records) in &want {
        assert_eq!(
            got.get(order),
            Some(records),
            "change records of order {order}"
        );
    }
}

#[test]
fn worked_scenarios_through_kafka_equal_simulate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/scenarios");
    let mut events = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "the contract's scenarios are missing at {}: {e}",
                dir.display()
            )
        })
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".events.jsonl"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "scenarios in {}", dir.display());
    for file in files {
        // Scenarios reuse order ids; each gets its own by a prefix.
        let scenario = file
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".events.jsonl", "");
        for line in std::fs::read_to_string(&file)
            .expect("scenario")
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            let mut event = OrderEvent::from_json(line.as_bytes()).expect("scenario event");
            event.order_id = format!("{scenario}/{}", event.order_id).into();
            events.push(event);
        }
    }
    processes_like_simulate("scenarios", events);
}

#[test]
fn thousands_of_generated_orders_through_kafka_equal_simulate() {
    let events: Vec<OrderEvent> = Generator::new(GenerateConfig {
        orders: 2000,
        order_prefix: format!("P{}-", std::process::id()),
        ..GenerateConfig::default()
    })
    .collect();
    assert!(events.len() > 15_000);
    processes_like_simulate("generated", events);
}
