//! The stream processor's promises under failure, against the real broker: exactly-once
//! output through repeated `kill -9`, state restored from the changelog when the local
//! state is gone, bad records in the dead-letter topic with the good ones around them
//! processed, an unreachable schema registry waited out with nothing lost, and replay with
//! the Kafka console tools.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::pipeline::{
    assert_same_changes, json_records, metric_sum, produce, produce_raw, read_records_until,
    read_until, simulated, test_config, write_config,
};
use order_milestones::api::PartitionState;
use order_milestones::config::Config;
use order_milestones::engine::{Engine, OrderEvent, Rules};
use order_milestones::generate::{GenerateConfig, Generator};
use order_milestones::processor::{self, ProcessorError};
use order_milestones::topics;
use serde_json::Value;

/// Fast failure detection for tests: a killed member leaves the group within seconds.
fn quick_group(config: &mut Config) {
    config
        .kafka
        .consumer
        .insert("session.timeout.ms".into(), "6000".into());
    config
        .kafka
        .consumer
        .insert("heartbeat.interval.ms".into(), "1000".into());
}

fn generated(orders: u64, prefix: &str) -> Vec<OrderEvent> {
    Generator::new(GenerateConfig {
        orders,
        order_prefix: format!("{prefix}{}-", std::process::id()),
        ..GenerateConfig::default()
    })
    .collect()
}

/// The processor on a thread of this test process; stops when the flag is set.
struct InProcess {
    shutdown: Arc<AtomicBool>,
    telemetry: processor::Telemetry,
    thread: JoinHandle<Result<(), ProcessorError>>,
}

fn start(config: &Config, runtime: &tokio::runtime::Runtime) -> InProcess {
    let shutdown = Arc::new(AtomicBool::new(false));
    let telemetry = processor::Telemetry::new().expect("metrics");
    let (config, flag, handle, t) = (
        config.clone(),
        shutdown.clone(),
        runtime.handle().clone(),
        telemetry.clone(),
    );
    let thread = std::thread::spawn(move || {
        let engine = Engine::new(Arc::new(Rules::builtin().expect("rules")));
        processor::run(&config, engine, handle, &flag, &t)
    });
    InProcess {
        shutdown,
        telemetry,
        thread,
    }
}

impl InProcess {
    /// Events this instance decoded, by its own metrics.
    fn events_in(&self) -> f64 {
        self.metric("milestones_events_in_total")
    }

    /// The sum of this instance's metric `name` over its labels.
    fn metric(&self, name: &str) -> f64 {
        self.metric_where(name, "")
    }

    /// The sum of this instance's metric `name` over the series whose labels mention
    /// `label_value` (a topic, ...).
    fn metric_where(&self, name: &str, label_value: &str) -> f64 {
        metric_sum(&self.telemetry.metrics.encode_text(), name, label_value)
    }

    fn stop(self) {
        self.shutdown.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .expect("processor thread")
            .expect("processor stopped cleanly");
    }
}

fn wait_for_views(config: &Config, expected: &std::collections::BTreeMap<String, Value>) {
    read_until(&config.topics.status, Duration::from_secs(120), |records| {
        let last: std::collections::HashMap<&str, &Value> =
            records.iter().map(|(k, v)| (k.as_str(), v)).collect();
        expected
            .iter()
            .all(|(id, view)| last.get(id.as_str()) == Some(&view))
    });
}

fn changes_equal_simulate(config: &Config, expected_records: Vec<Value>) {
    let n = expected_records.len();
    let got = read_until(&config.topics.changes, Duration::from_secs(60), |r| {
        r.len() >= n
    });
    // A little longer, so that a duplicate arriving after the expected count is seen.
    std::thread::sleep(Duration::from_secs(2));
    let got = read_until(&config.topics.changes, Duration::from_secs(60), |r| {
        r.len() >= got.len()
    });
    assert_same_changes(got.into_iter().map(|(_, v)| v).collect(), expected_records);
}

/// Each order's change records, read with `read_committed`, are exactly once and in
/// sequence (1, 2, 3... with no gap), and the last record of each milestone says what the
/// expected view says of it. For events spread over several input topics, whose records
/// depend on the order they were consumed in (the views do not): `simulate` gives the
/// views, not the records.
fn changes_in_sequence_as_the_views_say(
    config: &Config,
    expected_views: &std::collections::BTreeMap<String, Value>,
) {
    // Read until every view's milestones have their final record, then once more for as
    // many records, so that a duplicate coming after them would be seen.
    let complete = |records: &[(String, Value)]| {
        let mut last: std::collections::HashMap<(&str, &str), &Value> = Default::default();
        for (order, change) in records {
            last.insert(
                (order, change["milestone"].as_str().unwrap()),
                &change["inferred"],
            );
        }
        expected_views.iter().all(|(order, view)| {
            view["milestones"].as_array().unwrap().iter().all(|m| {
                last.get(&(order.as_str(), m["name"].as_str().unwrap())) == Some(&&m["inferred"])
            })
        })
    };
    let records = read_until(&config.topics.changes, Duration::from_secs(60), complete);
    std::thread::sleep(Duration::from_secs(2));
    let records = read_until(&config.topics.changes, Duration::from_secs(60), |r| {
        r.len() >= records.len()
    });
    let by_order = common::pipeline::by_order(records.into_iter().map(|(_, v)| v).collect());
    assert_eq!(
        by_order.len(),
        expected_views.len(),
        "orders with change records"
    );
    for (order, changes) in &by_order {
        let sequences: Vec<u64> = changes
            .iter()
            .map(|c| c["sequence"].as_u64().unwrap())
            .collect();
        let expected: Vec<u64> = (1..=changes.len() as u64).collect();
        assert_eq!(sequences, expected, "sequences of order {order}");
        // The last record of each milestone says what the view says of it.
        let view = &expected_views[order];
        for milestone in view["milestones"].as_array().unwrap() {
            let last = changes
                .iter()
                .rev()
                .find(|c| c["milestone"] == milestone["name"])
                .unwrap_or_else(|| panic!("{order}: no record of {}", milestone["name"]));
            assert_eq!(
                last["inferred"], milestone["inferred"],
                "{order}: {milestone}"
            );
        }
    }
}

fn spawn_service(config_file: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_milestones"))
        .args(["run", "--config", config_file.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start milestones run")
}

/// Crashes at random points of a stream, restarting each time: the `read_committed` output
/// holds every expected change record exactly once, in sequence, and a SIGTERM at the end
/// stops the service cleanly.
#[test]
fn exactly_once_through_repeated_kill_9() {
    common::require_kafka();
    let dir = tempfile::tempdir().expect("dir");
    let mut config = test_config("crash", &dir.path().join("state"));
    quick_group(&mut config);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(topics::apply(&config)).expect("topics");
    let events = generated(6000, "K");
    produce(&config, &events);
    let (expected_records, expected_views) = simulated(&events);
    let file = dir.path().join("milestones.toml");
    write_config(&config, &file);

    for round in 0..4u64 {
        let mut child = spawn_service(&file);
        // Late enough to be in the middle of processing (start-up, rebalance, restore).
        std::thread::sleep(Duration::from_millis(1500 + 700 * round));
        child.kill().expect("kill -9");
        child.wait().expect("reaped");
    }
    let mut child = spawn_service(&file);
    wait_for_views(&config, &expected_views);
    let stop = Instant::now();
    common::service::stop_cleanly(&mut child);
    assert!(
        stop.elapsed() < Duration::from_secs(30),
        "stopping took {:?}",
        stop.elapsed()
    );
    changes_equal_simulate(&config, expected_records);
}

/// Without its local state, the processor restores every order from the changelog: events
/// that arrive afterwards continue each order where it was.
#[test]
fn state_restored_from_the_changelog_when_the_state_directory_is_gone() {
    common::require_kafka();
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("state");
    let config = test_config("restore", &state);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(topics::apply(&config)).expect("topics");
    let events = generated(1500, "R");
    // Each order's first half, then the rest.
    let (mut first, mut second) = (Vec::new(), Vec::new());
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for e in &events {
        let n = seen.entry(e.order_id.to_string()).or_default();
        *n += 1;
        if *n <= 5 {
            first.push(e.clone())
        } else {
            second.push(e.clone())
        }
    }
    produce(&config, &first);
    let processor = start(&config, &runtime);
    wait_for_views(&config, &simulated(&first).1);
    processor.stop();

    // With its state directory, a restart restores from the stores' checkpoints: the
    // changelog offsets the commits' delivery reports gave, so nothing is applied again.
    let processor = start(&config, &runtime);
    let applied = applied_by_restores(&processor, config.topics.partitions);
    processor.stop();
    assert_eq!(
        applied, 0.0,
        "a restore from the checkpoints applied records again"
    );

    std::fs::remove_dir_all(&state).expect("delete the state directory");
    produce(&config, &second);
    let all: Vec<OrderEvent> = first.iter().chain(&second).cloned().collect();
    let (expected_records, expected_views) = simulated(&all);
    // One partition's input fetched at a time: the others wait paused for their restore.
    let mut config = config;
    config.state.restore_prefetch_partitions = 1;
    let processor = start(&config, &runtime);
    let applied = applied_by_restores(&processor, config.topics.partitions);
    assert!(
        applied >= 1500.0,
        "without the state directory every order is restored from the changelog: {applied}"
    );
    let waited = processor.metric("milestones_restore_waits_total");
    assert!(
        waited >= 1.0,
        "the partitions behind the first restore waited paused: {waited}"
    );
    wait_for_views(&config, &expected_views);
    processor.stop();
    changes_equal_simulate(&config, expected_records);
}

/// The changelog records the instance's restores applied, once all `partitions` are
/// restored.
fn applied_by_restores(processor: &InProcess, partitions: i32) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let states = processor.telemetry.health.partitions();
        let ready = states
            .iter()
            .filter(|(_, state)| *state == PartitionState::Ready)
            .count();
        if ready == partitions as usize {
            return processor.metric("milestones_restore_records_applied");
        }
        assert!(
            Instant::now() < deadline,
            "partitions not restored: {states:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A bad record: the error class it must get, its key and its value.
type BadRecord = (&'static str, Option<Vec<u8>>, Option<Vec<u8>>);

/// Records that are not valid events go to the dead-letter topic unchanged, with the
/// reason and their origin in headers; the good records around them are processed.
#[test]
fn poison_records_go_to_the_dead_letter_topic_and_the_rest_is_processed() {
    common::require_kafka();
    let dir = tempfile::tempdir().expect("dir");
    let config = test_config("poison", &dir.path().join("state"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(topics::apply(&config)).expect("topics");
    let good = generated(50, "G");
    // The error class each must get, its key and its value.
    let bad: Vec<BadRecord> = vec![
        ("undecodable", Some(b"O-x".to_vec()), Some(b"\x00\x01 not an event".to_vec())),
        ("invalid_event", Some(b"O-x".to_vec()), Some(br#"{"event_id":"","order_id":"O-x","event_type":"X","source":"s","occurred_at":1}"#.to_vec())),
        ("invalid_event", Some(b"O-x".to_vec()), Some(br#"{"event_id":"e","order_id":"O-x","event_type":"X","source":"s","occurred_at":1,"items":[{"asin":"B","qty":0}]}"#.to_vec())),
        ("invalid_event", Some(b"O-x".to_vec()), Some(br#"{"order_id":"O-x","event_type":"X","source":"s","occurred_at":1}"#.to_vec())),
        ("missing_value", Some(b"O-x".to_vec()), None),
        ("key_mismatch", Some(b"O-y".to_vec()), Some(br#"{"event_id":"e","order_id":"O-x","event_type":"X","source":"s","occurred_at":1}"#.to_vec())),
    ];
    // Bad records between the good ones.
    let mut records = Vec::new();
    for (i, e) in good.iter().enumerate() {
        records.push((
            Some(e.order_id.as_bytes().to_vec()),
            Some(serde_json::to_vec(e).unwrap()),
        ));
        if i % 50 == 7 || i % 97 == 3 {
            for (_, key, value) in &bad {
                records.push((key.clone(), value.clone()));
            }
        }
    }
    let bad_count = records.len() - good.len();
    produce_raw(&config.topics.inputs[0], &records);
    let processor = start(&config, &runtime);
    wait_for_views(&config, &simulated(&good).1);
    processor.stop();

    let dead = read_records_until(&config.dead_letter_topic(), Duration::from_secs(30), |r| {
        r.len() >= bad_count
    });
    assert_eq!(dead.len(), bad_count);
    let mut classes: Vec<&str> = dead
        .iter()
        .map(|r| r.headers["error.class"].as_str())
        .collect();
    classes.sort();
    let mut expected: Vec<&str> = bad
        .iter()
        .map(|(c, _, _)| *c)
        .cycle()
        .take(bad_count)
        .collect();
    expected.sort();
    assert_eq!(classes, expected);
    for record in &dead {
        assert_eq!(record.headers["source.topic"], config.topics.inputs[0]);
        assert!(record.headers["source.offset"].parse::<i64>().is_ok());
        assert!(record.headers["source.partition"].parse::<i32>().is_ok());
        assert!(!record.headers["error.message"].is_empty());
        let original = bad.iter().find(|(c, k, v)| {
            *c == record.headers["error.class"]
                && k.as_deref()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    == record.key
                && *v == record.raw
        });
        assert!(
            original.is_some(),
            "dead letter is not an unchanged bad record: {:?} {:?}",
            record.key,
            record.value
        );
    }
}

/// Replay with the console tools: resetting the group to the earliest offsets produces no
/// new change record; a new application id over the same input produces the same records.
#[test]
fn replay_with_the_console_tools() {
    common::require_kafka();
    let dir = tempfile::tempdir().expect("dir");
    let config = test_config("replay", &dir.path().join("state"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(topics::apply(&config)).expect("topics");
    let events = generated(300, "P");
    produce(&config, &events);
    let (expected_records, expected_views) = simulated(&events);
    let processor = start(&config, &runtime);
    wait_for_views(&config, &expected_views);
    processor.stop();
    changes_equal_simulate(&config, expected_records.clone());

    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local/kafka-consumer-groups");
    let reset = Command::new(&tools)
        .args([
            "--bootstrap-server",
            &common::bootstrap(),
            "--group",
            &config.application.id,
        ])
        .args([
            "--topic",
            &config.topics.inputs[0],
            "--reset-offsets",
            "--to-earliest",
            "--execute",
        ])
        .output()
        .expect("kafka-consumer-groups");
    assert!(
        reset.status.success(),
        "reset failed: {}",
        String::from_utf8_lossy(&reset.stderr)
    );
    // Replayed: every event is now a duplicate; the views say so, the change records do not move.
    let duplicated: std::collections::BTreeMap<String, Value> = expected_views
        .iter()
        .map(|(id, view)| {
            let mut view = view.clone();
            view["duplicates"] = Value::from(
                view["duplicates"].as_u64().unwrap()
                    + view["events"].as_u64().unwrap()
                    + view["duplicates"].as_u64().unwrap(),
            );
            (id.clone(), view)
        })
        .collect();
    let processor = start(&config, &runtime);
    wait_for_views(&config, &duplicated);
    processor.stop();
    changes_equal_simulate(&config, expected_records.clone());

    let mut again = config.clone();
    again.application.id = common::unique_topic("replay_new_app");
    again.topics.changes = common::unique_topic("replay_new_changes");
    again.topics.status = common::unique_topic("replay_new_status");
    again.state.dir = dir.path().join("state2");
    runtime.block_on(topics::apply(&again)).expect("topics");
    let processor = start(&again, &runtime);
    wait_for_views(&again, &expected_views);
    processor.stop();
    changes_equal_simulate(&again, expected_records);
}

/// Two instances of one group: the second joins in the middle of the stream and leaves
/// before its end, so partitions move to it and back (each time committed on revoke and
/// restored from the changelog on assign). The output is still exactly simulate's: no
/// partition was processed by both at once, nothing was lost or doubled.
#[test]
fn a_second_instance_joining_and_leaving_mid_stream() {
    common::require_kafka();
    let dir = tempfile::tempdir().expect("dir");
    let mut first = test_config("two", &dir.path().join("state-a"));
    first.topics.partitions = 6;
    quick_group(&mut first);
    // Partitions paused and resumed around their restores in every rebalance.
    first.state.restore_prefetch_partitions = 1;
    let mut second = first.clone();
    second.application.instance_id = "i1".into();
    second.state.dir = dir.path().join("state-b");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(topics::apply(&first)).expect("topics");
    let events = generated(4000, "T");
    let (early, late) = events.split_at(events.len() / 2);

    produce(&first, early);
    let a = start(&first, &runtime);
    std::thread::sleep(Duration::from_secs(1));
    let b = start(&second, &runtime);
    // The late half goes out once the second instance holds a restored partition, so that
    // part of it is the second instance's to process.
    let until = Instant::now() + Duration::from_secs(60);
    while !b
        .telemetry
        .health
        .partitions()
        .iter()
        .any(|(_, state)| *state == PartitionState::Ready)
    {
        assert!(
            Instant::now() < until,
            "the second instance never got a partition"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    produce(&first, late);
    std::thread::sleep(Duration::from_secs(3));
    let b_events = b.events_in();
    b.stop();
    // Partitions really moved: the second instance processed part of the stream.
    assert!(b_events > 0.0, "the second instance got no partition");
    let (expected_records, expected_views) = simulated(&events);
    wait_for_views(&first, &expected_views);
    let a_waited = a.metric("milestones_restore_waits_total");
    a.stop();
    changes_equal_simulate(&first, expected_records);
    assert!(a_waited >= 1.0, "no partition waited paused: {a_waited}");
}

/// An event of order `order`, `minutes` after an hour-aligned start.
fn timed_event(id: &str, order: &str, kind: &str, minutes: i64) -> OrderEvent {
    let items = if kind == "OrderCreated" {
        serde_json::json!([{"asin": "B1", "qty": 1}])
    } else {
        serde_json::json!([])
    };
    serde_json::from_value(serde_json::json!({
        "event_id": id, "order_id": order, "event_type": kind, "source": "test",
        "occurred_at": 1_800_000_000_000i64 + minutes * 60_000, "items": items,
    }))
    .expect("event")
}

/// Finished orders leave state once the partition's stream time is more than the retention
/// past their last event, with a tombstone in the changelog; late events for such orders
/// (or for unknown orders that old) go to the dead-letter topic, decided by stream time
/// alone; unfinished orders stay however old; the stream time survives the loss of the
/// local state.
#[test]
fn finished_orders_leave_state_after_their_retention() {
    common::require_kafka();
    let dir = tempfile::tempdir().expect("dir");
    let mut config = test_config("retention", &dir.path().join("state"));
    config.topics.partitions = 1; // one stream time for every order of the test
    config.state.finished_retention_ms = 3_600_000; // an hour of stream time
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(topics::apply(&config)).expect("topics");
    let (a, b, d, u) = ("RA", "RB", "RD", "RU");
    produce(
        &config,
        &[
            timed_event("a1", a, "OrderCreated", 0),
            timed_event("a2", a, "Delivered", 10), // A finished at 0:10
            timed_event("b1", b, "OrderCreated", 5), // B never finishes
            timed_event("d1", d, "OrderCreated", 180), // stream time 3:00: horizon 2:00
            timed_event("a3", a, "ItemPicked", 20), // late, A finished before the horizon
            timed_event("b2", b, "OrderPacked", 30), // late, but B is live: applied
            timed_event("u1", u, "OrderCreated", 60), // late, and U is unknown
        ],
    );
    let processor = start(&config, &runtime);
    let dead_letters = |n: usize| {
        read_records_until(&config.dead_letter_topic(), Duration::from_secs(60), |r| {
            r.len() >= n
        })
    };
    let dead = dead_letters(2);
    let mut dead_ids: Vec<&str> = dead
        .iter()
        .map(|r| r.value["event_id"].as_str().unwrap())
        .collect();
    dead_ids.sort();
    assert_eq!(dead_ids, ["a3", "u1"]);
    for record in &dead {
        assert_eq!(record.headers["error.class"], "expired_order");
        assert!(record.headers["error.message"].contains("state.finished_retention_ms"));
    }
    let ready_of_b = |records: &[(String, Value)]| {
        records
            .iter()
            .any(|(k, v)| k == b && v["milestone"] == "ready" && v["inferred"] == false)
    };
    read_until(&config.topics.changes, Duration::from_secs(60), ready_of_b);

    // A was changed in the transaction that saw the horizon pass it, so a later one sweeps
    // it: another event opens one.
    produce(&config, &[timed_event("d2", d, "OrderProcessing", 181)]);
    let changelog = config.changelog_topic();
    read_records_until(&changelog, Duration::from_secs(60), |records| {
        records
            .iter()
            .any(|r| r.key.as_deref() == Some(a) && r.raw.is_none())
    });
    let expired = processor
        .telemetry
        .metrics
        .encode_text()
        .lines()
        .find(|l| l.starts_with("milestones_orders_expired_total "))
        .map(str::to_owned);
    assert_eq!(
        expired.as_deref(),
        Some("milestones_orders_expired_total 1")
    );
    processor.stop();
    // Nothing but A was removed: no tombstone for B or D. (Read up to A's tombstone, at a
    // moment the reader is caught up: the processor is stopped, nothing comes after.)
    let records = read_records_until(&changelog, Duration::from_secs(30), |records| {
        records
            .iter()
            .any(|r| r.key.as_deref() == Some(a) && r.raw.is_none())
    });
    let tombstones: Vec<_> = records
        .iter()
        .filter(|r| r.raw.is_none())
        .map(|r| r.key.clone())
        .collect();
    assert_eq!(tombstones, [Some(a.to_string())]);

    // Local state gone: restored from the changelog, stream time included, so another late
    // event of A is refused again and one of B is applied.
    std::fs::remove_dir_all(dir.path().join("state")).expect("delete state");
    produce(
        &config,
        &[
            timed_event("a4", a, "OrderPacked", 25),
            timed_event("b3", b, "OutForDelivery", 40),
        ],
    );
    let processor = start(&config, &runtime);
    let dead = dead_letters(3);
    assert_eq!(dead[2].value["event_id"], "a4");
    let out_for_delivery_of_b = |records: &[(String, Value)]| {
        records
            .iter()
            .any(|(k, v)| k == b && v["milestone"] == "out_for_delivery")
    };
    read_until(
        &config.topics.changes,
        Duration::from_secs(60),
        out_for_delivery_of_b,
    );
    processor.stop();
    let changes = read_until(
        &config.topics.changes,
        Duration::from_secs(30),
        out_for_delivery_of_b,
    );
    assert!(
        changes.iter().all(|(k, _)| k != u),
        "the unknown late order U got change records"
    );
}

/// Two co-partitioned input topics, an order's events spread over both, and a second
/// instance joining then leaving mid-stream: every order ends as `simulate` says, and each
/// order's change records are exactly once, in sequence (1, 2, 3... with no gap), whatever
/// topic their events came on and whichever instance held the partition.
#[test]
fn two_input_topics_with_a_second_instance_joining_and_leaving() {
    common::require_kafka();
    let dir = tempfile::tempdir().expect("dir");
    let mut first = test_config("inputs2", &dir.path().join("state-a"));
    first.topics.partitions = 4;
    first
        .topics
        .inputs
        .push(common::unique_topic("inputs2_in_b"));
    quick_group(&mut first);
    let mut second = first.clone();
    second.application.instance_id = "i1".into();
    second.state.dir = dir.path().join("state-b");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(topics::apply(&first)).expect("topics");
    let events = generated(2000, "M");
    // Every other event goes to the second topic.
    let to_topic = |events: &[OrderEvent]| {
        let (even, odd): (Vec<_>, Vec<_>) =
            events.iter().enumerate().partition(|(i, _)| i % 2 == 0);
        produce_raw(
            &first.topics.inputs[0],
            &json_records(even.into_iter().map(|(_, e)| e)),
        );
        produce_raw(
            &first.topics.inputs[1],
            &json_records(odd.into_iter().map(|(_, e)| e)),
        );
    };
    let (early, late) = events.split_at(events.len() / 2);
    to_topic(early);
    let a = start(&first, &runtime);
    std::thread::sleep(Duration::from_secs(1));
    let b = start(&second, &runtime);
    let until = Instant::now() + Duration::from_secs(60);
    while !b
        .telemetry
        .health
        .partitions()
        .iter()
        .any(|(_, state)| *state == PartitionState::Ready)
    {
        assert!(
            Instant::now() < until,
            "the second instance never got a partition"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    to_topic(late);
    std::thread::sleep(Duration::from_secs(3));
    let b_events = b.events_in();
    b.stop();
    assert!(b_events > 0.0, "the second instance got no partition");
    let (_, expected_views) = simulated(&events);
    wait_for_views(&first, &expected_views);
    a.stop();

    changes_in_sequence_as_the_views_say(&first, &expected_views);
}

/// A TCP proxy in front of the real schema registry that can be taken down (every
/// connection, open or new, closed at once) and brought back: the registry becoming
/// unreachable while the processor runs, without stopping the shared test stack's.
struct RegistryProxy {
    port: u16,
    up: Arc<AtomicBool>,
}

impl RegistryProxy {
    fn start(target: std::net::SocketAddr) -> RegistryProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        let up = Arc::new(AtomicBool::new(true));
        let flag = up.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !flag.load(Ordering::SeqCst) {
                    continue; // dropped: closed before any answer
                }
                let Ok(server) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                for (from, to) in [
                    (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    ),
                    (server, client),
                ] {
                    let flag = flag.clone();
                    std::thread::spawn(move || pipe(from, to, &flag));
                }
            }
        });
        RegistryProxy { port, up }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}

/// With two input topics and a backlog on the first, the second topic's records are
/// processed beside the first's, not after them: a second topic's events (a delivery
/// system's, say) must not wait for a first topic's backlog to drain before customers see
/// them. Each turn takes batches of both topics' records.
#[test]
fn a_second_input_topic_is_not_kept_waiting_behind_a_backlog_of_the_first() {
    common::require_kafka();
    let dir = tempfile::tempdir().expect("dir");
    let mut config = test_config("backlog", &dir.path().join("state"));
    config
        .topics
        .inputs
        .push(common::unique_topic("backlog_in_b"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(topics::apply(&config)).expect("topics");
    let (first, second) = (generated(10_000, "BA"), generated(100, "BB"));
    produce_raw(&config.topics.inputs[0], &json_records(&first));
    produce_raw(&config.topics.inputs[1], &json_records(&second));
    let (a, b) = (&config.topics.inputs[0], &config.topics.inputs[1]);
    let service = start(&config, &runtime);
    // Events in (committed) per topic, read the moment the second topic's are all in.
    let topic_in = |topic: &str| service.metric_where("milestones_events_in_total", topic);
    let until = Instant::now() + Duration::from_secs(120);
    while topic_in(b) < second.len() as f64 {
        assert!(
            Instant::now() < until,
            "the second topic's records were not all processed: {} of {}",
            topic_in(b),
            second.len()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let first_in = topic_in(a);
    eprintln!(
        "the second topic's {} records were all in once {first_in} of the first topic's {} were",
        second.len(),
        first.len()
    );
    while topic_in(a) < first.len() as f64 {
        assert!(
            Instant::now() < until,
            "the first topic's records were not all processed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    service.stop();
    assert!(
        first_in < first.len() as f64 / 2.0,
        "the second topic's {} records were all in only once {first_in} of the first topic's {} \
         were: they waited behind its backlog",
        second.len(),
        first.len()
    );
}

/// Copies `from` to `to` until either closes or the proxy goes down, then closes both.
fn pipe(mut from: std::net::TcpStream, mut to: std::net::TcpStream, up: &AtomicBool) {
    use std::io::{Read, Write};
    from.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("read timeout");
    let mut buffer = [0u8; 16 * 1024];
    while up.load(Ordering::SeqCst) {
        match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// `event` in the Avro binary of `schema`: `avro/order_event.avsc` with an optional `channel`
/// field added at the end, as a newer producer would write it.
fn newer_writer_datum(schema: &apache_avro::Schema, event: &OrderEvent) -> Vec<u8> {
    use apache_avro::types::Value;
    let string = |s: &str| Value::String(s.to_owned());
    let items = event
        .items
        .iter()
        .map(|item| {
            Value::Record(vec![
                ("asin".into(), string(&item.asin)),
                ("qty".into(), Value::Int(item.qty)),
            ])
        })
        .collect();
    let attributes = event
        .attributes
        .iter()
        .map(|(k, v)| (k.to_string(), string(v)))
        .collect();
    let customer = match &event.customer_id {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(c) => Value::Union(1, Box::new(string(c))),
    };
    let value = Value::Record(vec![
        ("event_id".into(), string(&event.event_id)),
        ("order_id".into(), string(&event.order_id)),
        ("event_type".into(), string(&event.event_type)),
        ("source".into(), string(&event.source)),
        (
            "occurred_at".into(),
            Value::TimestampMillis(event.occurred_at),
        ),
        ("line_of_business".into(), string(&event.line_of_business)),
        ("marketplace".into(), string(&event.marketplace)),
        ("customer_id".into(), customer),
        ("items".into(), Value::Array(items)),
        ("attributes".into(), Value::Map(attributes)),
        ("channel".into(), Value::Union(1, Box::new(string("app")))),
    ]);
    apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()
        .expect("a datum writer")
        .write_value_to_vec(value)
        .expect("an event in the newer schema")
}

/// The schema registry unreachable while records of a writer schema the processor has not
/// seen yet arrive: they are not dead-lettered (nothing is wrong with them), the open
/// transactions abort and the processor waits and tries again, without stopping; once the
/// registry is back every record is processed, exactly once.
#[test]
fn an_unreachable_registry_holds_processing_back_and_loses_nothing() {
    registry_outage(1);
}

/// As above with two input topics, an order's events spread over both: the records of the
/// second topic (the follower's, processed in the same turns as the first topic's) are held
/// back and consumed again as well.
#[test]
fn an_unreachable_registry_holds_both_input_topics_back_and_loses_nothing() {
    registry_outage(2);
}

/// The registry outage, the events spread over `inputs` input topics, every other one
/// to the second when there are two.
fn registry_outage(inputs: usize) {
    common::require_kafka();
    let dir = tempfile::tempdir().expect("dir");
    let registry_url = common::schema_registry_url();
    let after_scheme = registry_url.trim_start_matches("http://");
    let (authority, path) =
        after_scheme.split_at(after_scheme.find('/').unwrap_or(after_scheme.len()));
    let target: std::net::SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .expect("registry address")
        .next()
        .expect("registry address");
    let proxy = RegistryProxy::start(target);
    let mut config = test_config("registry_outage", &dir.path().join("state"));
    config.topics.input_format = order_milestones::config::Format::Avro;
    config.schema_registry.url = format!("http://127.0.0.1:{}{path}", proxy.port);
    if inputs == 2 {
        config
            .topics
            .inputs
            .push(common::unique_topic("registry_outage_in_b"));
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(common::require_schema_registry());
    runtime.block_on(topics::apply(&config)).expect("topics");

    // A newer writer's schema, registered directly (not through the proxy).
    let mut schema: Value =
        serde_json::from_str(order_milestones::ingest::avro::ORDER_EVENT_SCHEMA).expect("schema");
    schema["fields"]
        .as_array_mut()
        .expect("fields")
        .push(serde_json::json!({"name": "channel", "type": ["null", "string"], "default": null}));
    let schema = schema.to_string();
    let registry = order_milestones::ingest::RegistryClient::new(
        &order_milestones::ingest::RegistryConfig::new(registry_url.clone()),
    )
    .expect("registry client");
    let subject = format!("{}-value", config.topics.inputs[0]);
    let id = runtime
        .block_on(registry.register_avro(&subject, "com.grocery.orders.OrderEvent", &schema))
        .expect("newer schema registered");
    let parsed = apache_avro::Schema::parse_str(&schema).expect("newer schema");
    let events = generated(30, "R");
    let records: Vec<_> = events
        .iter()
        .map(|e| {
            let mut payload = vec![0u8];
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend(newer_writer_datum(&parsed, e));
            (Some(e.order_id.as_bytes().to_vec()), Some(payload))
        })
        .collect();

    proxy.set_up(false);
    let processor = start(&config, &runtime);
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for (i, record) in records.into_iter().enumerate() {
        match (inputs, i % 2) {
            (2, 1) => second.push(record),
            _ => first.push(record),
        }
    }
    produce_raw(&config.topics.inputs[0], &first);
    if inputs == 2 {
        produce_raw(&config.topics.inputs[1], &second);
    }
    // Long enough for the processor to meet the records, abort and try again a few times.
    std::thread::sleep(Duration::from_secs(5));
    assert!(!processor.thread.is_finished(), "the processor stopped");
    assert_eq!(
        processor.events_in(),
        0.0,
        "events decoded without the registry"
    );
    assert_eq!(processor.metric("milestones_dead_letters_total"), 0.0);

    proxy.set_up(true);
    let (expected_records, expected_views) = simulated(&events);
    wait_for_views(&config, &expected_views);
    match inputs {
        1 => changes_equal_simulate(&config, expected_records),
        _ => changes_in_sequence_as_the_views_say(&config, &expected_views),
    }
    assert_eq!(
        processor.metric("milestones_dead_letters_total"),
        0.0,
        "dead letters"
    );
    processor.stop();
}
