//! The JSON record formats with the tools a person uses: an event typed into Kafka's console
//! producer (key and value on one line) decodes to our event, and the change records and
//! views we encode are read by the console consumer as the contract's JSON.
//!
//! The console tools come from the local stack (`deploy/local/kafka-console-*`, Java).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use order_milestones::emit::RecordEncoder;
use order_milestones::engine::{ItemView, MilestoneChange, MilestoneView, OrderView};
use order_milestones::ingest::{EventDecoder, Format};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    common::require_kafka();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Runs one of the stack's console tools against the test broker, feeding `stdin`, and
/// returns its standard output; panics with its standard error if it fails.
fn console(tool: &str, args: &[&str], stdin: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/local/");
    let mut child = Command::new(format!("{path}{tool}"))
        .arg("--bootstrap-server")
        .arg(common::bootstrap())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {path}{tool}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("writing to the console tool");
    let output = child
        .wait_with_output()
        .expect("waiting for the console tool");
    assert!(
        output.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

#[test]
fn an_event_typed_into_the_console_producer_decodes() {
    let runtime = runtime();
    let topic = common::unique_topic("formats_json_in");
    runtime.block_on(common::create_topic(&topic, 1));
    let event = r#"{"event_id":"e1","order_id":"order-7","event_type":"OrderCreated","source":"ordering","occurred_at":1700000000000,"items":[{"asin":"B1","qty":2}]}"#;
    console(
        "kafka-console-producer",
        &[
            "--topic",
            &topic,
            "--reader-property",
            "parse.key=true",
            "--reader-property",
            "key.separator=|",
        ],
        &format!("order-7|{event}\n"),
    );

    let (key, payload) = runtime.block_on(async {
        let consumer: StreamConsumer = common::client_config()
            .set("group.id", common::unique_group("formats_json_in"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("creating the consumer");
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&topic, 0, Offset::Beginning)
            .expect("partition 0");
        consumer.assign(&assignment).expect("assigning partition 0");
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("no record on {topic} within 30s"))
            .unwrap_or_else(|e| panic!("consuming from {topic}: {e}"));
        (
            message.key().map(<[u8]>::to_vec),
            message.payload().map(<[u8]>::to_vec),
        )
    });
    let decoder =
        EventDecoder::new(Format::Json, None, runtime.handle().clone()).expect("a JSON decoder");
    let decoded = decoder
        .decode(key.as_deref(), payload.as_deref())
        .unwrap_or_else(|e| panic!("{} {e}", e.class()));
    assert_eq!(decoded.order_id, "order-7");
    assert_eq!(decoded.items[0].qty, 2);
    assert_eq!(decoded.line_of_business, "grocery");
}

#[test]
fn the_console_consumer_reads_our_json_outputs_as_the_contract() {
    let runtime = runtime();
    let topic = common::unique_topic("formats_json_out");
    runtime.block_on(common::create_topic(&topic, 1));
    let changes = RecordEncoder::for_changes(Format::Json, &topic, None, runtime.handle())
        .expect("a JSON encoder");
    let views = RecordEncoder::for_views(Format::Json, &topic, None, runtime.handle())
        .expect("a JSON encoder");
    let change = MilestoneChange {
        order_id: "order-7".into(),
        sequence: 1,
        milestone: "ordered".into(),
        inferred: false,
        reached_at: Some(1_700_000_000_000),
        status: "ordered".into(),
        evidence: vec!["e1".into()],
        rules_version: "default@1".into(),
        customer_id: None,
    };
    let view = OrderView {
        order_id: "order-7".into(),
        status: Some("ordered".into()),
        placeholder: false,
        milestones: vec![MilestoneView {
            name: "ordered".into(),
            inferred: false,
            reached_at: Some(1_700_000_000_000),
        }],
        items: vec![ItemView {
            asin: "B1".into(),
            ordered: Some(2),
            shorted: 0,
            substituted: 0,
        }],
        events: 1,
        duplicates: 0,
    };
    let mut change_value = Vec::new();
    changes.encode_change(&change, &mut change_value).unwrap();
    let mut view_value = Vec::new();
    views.encode_view(&view, &mut view_value).unwrap();
    runtime.block_on(async {
        let producer: FutureProducer = common::client_config()
            .create()
            .expect("creating the producer");
        for value in [&change_value, &view_value] {
            producer
                .send(
                    FutureRecord::to(&topic).key("order-7").payload(value),
                    Duration::from_secs(30),
                )
                .await
                .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
        }
    });

    let output = console(
        "kafka-console-consumer",
        &[
            "--topic",
            &topic,
            "--from-beginning",
            "--max-messages",
            "2",
            "--timeout-ms",
            "30000",
            "--formatter-property",
            "print.key=true",
        ],
        "",
    );
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), 2, "{output}");
    let expected = [
        serde_json::to_value(&change).unwrap(),
        serde_json::to_value(&view).unwrap(),
    ];
    for (line, expected) in lines.iter().zip(expected) {
        let (key, value) = line.split_once('\t').unwrap_or_else(|| panic!("{line}"));
        assert_eq!(key, "order-7");
        let value: serde_json::Value =
            serde_json::from_str(value).unwrap_or_else(|e| panic!("{value}: {e}"));
        assert_eq!(value, expected);
    }
    // The contract's field names, as a person reads them.
    assert!(lines[1].contains(r#""status":"ordered""#), "{}", lines[1]);
}
