//! `milestones generate` as a user runs it: JSON lines on standard output without a Kafka
//! target; with `--config` (and `--topic`, `--format`) the same events on a real broker,
//! with a one-line summary on standard error; a refused argument is one line and exit 1.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use order_milestones::engine::OrderEvent;
use order_milestones::generate::{GenerateConfig, Generator};
use order_milestones::ingest::{EventDecoder, Format, RegistryClient, RegistryConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 2;

fn milestones(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_milestones"))
        .args(args)
        .output()
        .expect("running milestones")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A config file for the test stack whose only input topic is `input`, in JSON.
fn config_file(dir: &Path, input: &str, registry_url: &str) -> String {
    let path = dir.join("milestones.toml");
    std::fs::write(
        &path,
        format!(
            r#"
            [kafka]
            bootstrap_servers = "{}"
            [kafka.producer]
            "message.timeout.ms" = "30000"
            [schema_registry]
            url = "{registry_url}"
            [topics]
            inputs = ["{input}"]
            input_format = "json"
            output_format = "json"
            "#,
            common::bootstrap()
        ),
    )
    .expect("writing the config file");
    path.to_str().expect("a UTF-8 path").to_owned()
}

/// The events `milestones generate --orders N --order-prefix P` makes (other options at
/// their command-line defaults, which are the library's).
fn generated(orders: u64, prefix: &str) -> Vec<OrderEvent> {
    Generator::new(GenerateConfig {
        orders,
        order_prefix: prefix.to_owned(),
        ..GenerateConfig::default()
    })
    .collect()
}

/// Every record of `topic` decoded by the service's decoder, partition by partition;
/// checks each key is the order id and that exactly `expected` records are there.
fn decoded(topic: &str, format: Format, expected: usize) -> Vec<OrderEvent> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let registry = RegistryClient::new(&RegistryConfig::new(common::schema_registry_url()))
        .expect("a registry client");
    let decoder =
        EventDecoder::new(format, Some(registry), runtime.handle().clone()).expect("a decoder");
    let consumer: BaseConsumer = common::client_config()
        .set("group.id", common::unique_group("generate_cli"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("creating the consumer");
    let mut assignment = TopicPartitionList::new();
    let mut in_topic = 0;
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
    let mut events = Vec::with_capacity(expected);
    while events.len() < expected {
        assert!(Instant::now() < deadline, "records back from {topic}");
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => panic!("consuming from {topic}: {e}"),
            Some(Ok(message)) => {
                let event = decoder
                    .decode(message.key(), message.payload())
                    .unwrap_or_else(|e| panic!("decoding a record of {topic}: {e}"));
                assert_eq!(message.key(), Some(event.order_id.as_bytes()), "key");
                events.push(event);
            }
        }
    }
    events
}

/// Events as sorted JSON lines: a multiset that can be compared.
fn multiset(events: &[OrderEvent]) -> Vec<String> {
    let mut lines: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(e).expect("JSON"))
        .collect();
    lines.sort_unstable();
    lines
}

#[test]
fn without_a_kafka_target_the_events_are_json_lines_on_stdout() {
    let output = milestones(&["generate", "--orders", "5", "--order-prefix", "S-"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let lines: Vec<OrderEvent> = String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .map(|line| OrderEvent::from_json(line.as_bytes()).expect("an event"))
        .collect();
    assert_eq!(lines, generated(5, "S-"));
}

#[test]
fn in_flight_sets_how_many_orders_interleave() {
    let order_runs = |in_flight: &str| {
        let output = milestones(&["generate", "--orders", "30", "--in-flight", in_flight]);
        assert!(output.status.success(), "{}", stderr(&output));
        let orders: Vec<String> = String::from_utf8(output.stdout)
            .expect("UTF-8")
            .lines()
            .map(|line| {
                OrderEvent::from_json(line.as_bytes())
                    .expect("an event")
                    .order_id
                    .to_string()
            })
            .collect();
        let mut runs = orders.clone();
        runs.dedup();
        let mut distinct = orders;
        distinct.sort_unstable();
        distinct.dedup();
        (runs.len(), distinct.len())
    };
    // One at a time: each order's events in one run.
    assert_eq!(order_runs("1"), (30, 30));
    // Thirty at once: their events interleave.
    let (runs, orders) = order_runs("30");
    assert_eq!(orders, 30);
    assert!(runs > 60, "{runs} runs of one order's events");
}

#[test]
fn with_a_config_the_events_go_to_its_first_input_topic_in_its_format() {
    common::require_kafka();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let topic = common::unique_topic("generate_cli_json");
    runtime.block_on(common::create_topic(&topic, PARTITIONS));
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = config_file(dir.path(), &topic, &common::schema_registry_url());

    let output = milestones(&[
        "generate",
        "--orders",
        "40",
        "--order-prefix",
        "CJ-",
        "--config",
        &config,
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let expected = generated(40, "CJ-");
    let summary = stderr(&output);
    assert_eq!(summary.lines().count(), 1, "one summary line: {summary}");
    for part in [
        format!("{} records", expected.len()),
        "40 orders".to_owned(),
        format!("to {topic} ({PARTITIONS} partitions)"),
        "as json".to_owned(),
        "records/s".to_owned(),
    ] {
        assert!(summary.contains(&part), "{part:?} not in {summary:?}");
    }
    assert!(output.stdout.is_empty(), "nothing on stdout");
    let back = decoded(&topic, Format::Json, expected.len());
    assert_eq!(multiset(&back), multiset(&expected));
}

#[test]
fn topic_and_format_on_the_command_line_override_the_config() {
    common::require_kafka();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(common::require_schema_registry());
    let topic = common::unique_topic("generate_cli_avro");
    runtime.block_on(common::create_topic(&topic, PARTITIONS));
    let dir = tempfile::tempdir().expect("a temporary directory");
    // The config's input topic does not exist: the one given with --topic is used.
    let config = config_file(dir.path(), "not-this-one", &common::schema_registry_url());

    let output = milestones(&[
        "generate",
        "--orders",
        "40",
        "--order-prefix",
        "CA-",
        "--config",
        &config,
        "--topic",
        &topic,
        "--format",
        "avro",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("as avro"), "{}", stderr(&output));
    let expected = generated(40, "CA-");
    let back = decoded(&topic, Format::Avro, expected.len());
    assert_eq!(multiset(&back), multiset(&expected));
}

/// Each refusal: exit status 1 and exactly one line on standard error, containing `says`.
fn assert_refused(args: &[&str], says: &str) {
    let output = milestones(args);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{args:?}: {message}");
    assert_eq!(
        message.lines().count(),
        1,
        "{args:?}: not one line: {message}"
    );
    assert!(message.contains(says), "{args:?}: {message}");
}

#[test]
fn bad_arguments_are_one_line_and_exit_1() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    // No registry at all: the config's own formats are JSON, so only --format avro needs one.
    let no_registry = config_file(dir.path(), "events", "");
    assert_refused(
        &["generate", "--out-of-order", "1"],
        "--out-of-order is 1: give a share from 0 to below 1",
    );
    assert_refused(
        &["generate", "--redelivered", "-0.1", "--topic", "t"],
        "--redelivered is -0.1",
    );
    assert_refused(
        &["generate", "--topic", "t", "--format", "xml"],
        "--format is xml: give avro or json",
    );
    for flag in [
        ["--format", "json"],
        ["--rate", "100"],
        ["--writer-schema", "w.avsc"],
    ] {
        assert_refused(
            &["generate", flag[0], flag[1]],
            "--format, --rate and --writer-schema are for Kafka: give --topic or --config",
        );
    }
    assert_refused(
        &["generate", "--in-flight", "0"],
        "--in-flight is 0: give at least 1",
    );
    assert_refused(
        &["generate", "--topic", "t", "--rate", "0"],
        "--rate is 0: give events per second above 0",
    );
    assert_refused(
        &["generate", "--config", &no_registry, "--format", "avro"],
        "needs a schema registry: set schema_registry.url",
    );
    assert_refused(
        &[
            "generate",
            "--config",
            &no_registry,
            "--writer-schema",
            "w.avsc",
        ],
        "--writer-schema is for the avro format; topic events is written as json",
    );
    assert_refused(
        &[
            "generate",
            "--config",
            &no_registry,
            "--format",
            "avro",
            "--writer-schema",
            "/nonexistent/w.avsc",
        ],
        "--writer-schema /nonexistent/w.avsc",
    );
    assert_refused(
        &["generate", "--config", "/nonexistent/milestones.toml"],
        "does not exist",
    );
}

#[test]
fn a_topic_that_does_not_exist_is_one_line_and_exit_1() {
    common::require_kafka();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let topic = common::unique_topic("generate_cli_missing");
    let config = config_file(dir.path(), &topic, &common::schema_registry_url());
    assert_refused(
        &["generate", "--orders", "2", "--config", &config],
        &format!("topic {topic} does not exist"),
    );
}
