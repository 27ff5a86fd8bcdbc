//! The stream processor against the real broker: the contract's worked scenarios and a
//! generated stream of thousands of orders give, on the output topics, exactly what
//! `milestones simulate` gives on the same events: the same change records (same
//! sequences) and the same final order views.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::pipeline::{
    assert_same_changes, metric_sum, produce, read_until, simulated, test_config,
};
use order_milestones::config::Config;
use order_milestones::engine::{Engine, OrderEvent, Rules};
use order_milestones::generate::{GenerateConfig, Generator};
use order_milestones::{processor, topics};
use serde_json::Value;

/// What a run of the processor left to look at.
struct Run {
    /// How many order views it wrote to the status topic.
    views: usize,
    /// Its metrics, in Prometheus' text format.
    metrics: String,
}

impl Run {
    /// The sum of the series of the metrics whose lines start with `name`.
    fn metric(&self, name: &str) -> f64 {
        metric_sum(&self.metrics, name, "")
    }
}

/// Runs the processor, configured by `configure`, over `events` and compares its outputs
/// with simulate's.
fn processes_like_simulate(
    test: &str,
    events: Vec<OrderEvent>,
    configure: impl FnOnce(&mut Config),
) -> Run {
    common::require_kafka();
    let state = tempfile::tempdir().expect("state dir");
    let mut config = test_config(test, state.path());
    configure(&mut config);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(topics::apply(&config)).expect("topics");
    produce(&config, &events);
    let (expected_records, expected_views) = simulated(&events);

    let epoch_seconds = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs_f64()
    };
    let started = epoch_seconds();
    let shutdown = Arc::new(AtomicBool::new(false));
    let telemetry = processor::Telemetry::new().expect("metrics");
    let processor = {
        let telemetry = telemetry.clone();
        let (config, shutdown, handle) =
            (config.clone(), shutdown.clone(), runtime.handle().clone());
        std::thread::spawn(move || {
            let engine = Engine::new(Arc::new(Rules::builtin().expect("rules")));
            processor::run(&config, engine, handle, &shutdown, &telemetry)
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
    let run = Run {
        views: views.len(),
        metrics: telemetry.metrics.encode_text(),
    };
    // What the metrics counted is what happened.
    let metric = |name: &str| run.metric(name);
    // An event is its event id within its order.
    let distinct: std::collections::HashSet<(&str, &str)> = events
        .iter()
        .map(|e| (e.order_id.as_str(), e.event_id.as_str()))
        .collect();
    assert_eq!(metric("milestones_events_in_total"), events.len() as f64);
    assert_eq!(
        metric("milestones_duplicate_events_total"),
        (events.len() - distinct.len()) as f64
    );
    assert_eq!(
        metric("milestones_reached_total") + metric("milestones_placeholders_confirmed_total"),
        expected_records.len() as f64
    );
    let committed = metric("milestones_transactions_total{outcome=\"committed\"}");
    assert!(committed >= 1.0);
    // Every commit timed its steps; each step of the run took some time.
    for phase in ["prepare", "flush", "commit", "store"] {
        let series = format!("milestones_commit_phase_seconds_count{{phase=\"{phase}\"}}");
        assert_eq!(metric(&series), committed, "{series}");
        let took = metric(&format!(
            "milestones_commit_phase_seconds_sum{{phase=\"{phase}\"}}"
        ));
        assert!(took > 0.0, "{phase} took no time over {committed} commits");
    }
    // The last commit happened during this run (the gauge has millisecond precision).
    let last_commit = metric("milestones_last_commit_timestamp_seconds");
    assert!(
        (started - 0.001..=epoch_seconds()).contains(&last_commit),
        "last commit at {last_commit}, run from {started}"
    );
    assert!(telemetry.health.is_ready(), "every partition restored");
    // Per order, the change records are simulate's, in sequence.
    assert_same_changes(
        changes.into_iter().map(|(_, v)| v).collect(),
        expected_records,
    );
    run
}

/// `processing.threads` and `processing.workers`.
fn parallelism(threads: u16, workers: u16) -> impl FnOnce(&mut Config) {
    move |config| {
        config.processing.threads = threads;
        config.processing.workers = workers;
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
    // One shard: the processing thread alone, no worker thread.
    processes_like_simulate("scenarios", events, parallelism(1, 1));
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
    // Four shards over the topic's three partitions (one shard holds none), on more worker
    // threads than this machine may have cores: the same answer whatever the split.
    processes_like_simulate("generated", events, parallelism(1, 4));
}

/// Two processing threads, each a member of the group with its own partitions and
/// transactions (and two shards each), sharing one state directory: the same answer.
#[test]
fn two_processing_threads_equal_simulate() {
    let events: Vec<OrderEvent> = Generator::new(GenerateConfig {
        orders: 1000,
        order_prefix: format!("Q{}-", std::process::id()),
        ..GenerateConfig::default()
    })
    .collect();
    processes_like_simulate("threads", events, parallelism(2, 2));
}

/// Finished orders written out three events of their partition after their last one, and
/// read back from their written state when a late event of theirs comes (out of order or
/// redelivered), in transactions of seconds: the same answer as when written out at the
/// commit. Orders under way (200 in flight over three partitions) are written at the
/// commit only.
#[test]
fn finished_orders_written_out_and_read_back_within_a_transaction_equal_simulate() {
    let orders = 1000;
    let events: Vec<OrderEvent> = Generator::new(GenerateConfig {
        orders,
        in_flight: 200,
        order_prefix: format!("W{}-", std::process::id()),
        ..GenerateConfig::default()
    })
    .collect();
    let run = processes_like_simulate("written-out", events, |config| {
        config.processing.workers = 2;
        config.processing.write_out_after_events = 3;
        config.processing.commit_interval_ms = 3_000;
    });
    // Late events of finished orders: about three per ten orders. Were orders under way
    // written out too, nearly every event would be read back (about ten per order).
    let read_back = run.metric("milestones_orders_read_back_total");
    assert!(
        (30.0..=orders as f64).contains(&read_back),
        "{read_back} orders read back for {orders} orders"
    );
    assert!(
        run.views >= orders as usize,
        "{} views for {orders} orders",
        run.views
    );
}

/// Orders whose events lie transactions apart (all 2,000 in flight at once, transactions of
/// 5 ms): each transaction starts from the graphs the ones before committed, kept in
/// memory, or, with `processing.kept_orders = 0`, from their stored state. The same answer
/// either way.
#[test]
fn orders_spread_over_transactions_equal_simulate_from_memory_or_from_the_store() {
    let orders = 2000;
    for kept in [4096, 0] {
        let events: Vec<OrderEvent> = Generator::new(GenerateConfig {
            orders,
            in_flight: orders as usize,
            order_prefix: format!("K{kept}-{}-", std::process::id()),
            ..GenerateConfig::default()
        })
        .collect();
        let run = processes_like_simulate(&format!("kept-{kept}"), events, |config| {
            config.processing.workers = 2;
            config.processing.commit_interval_ms = 5;
            config.processing.kept_orders = kept;
        });
        let memory = run.metric("milestones_orders_from_memory_total");
        let store = run.metric("milestones_orders_from_store_total");
        eprintln!("kept {kept}: {memory} orders from memory, {store} from the store");
        if kept > 0 {
            // Only late events of finished orders (not kept) read the store.
            assert!(
                memory >= orders as f64 && memory > 4.0 * store,
                "kept {kept}: {memory} orders from memory, {store} from the store"
            );
        } else {
            assert!(
                memory == 0.0 && store >= orders as f64,
                "kept {kept}: {memory} orders from memory, {store} from the store"
            );
        }
    }
}
