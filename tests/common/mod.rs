//! Shared helpers for the tests that need a real Kafka broker and schema registry.
//!
//! The broker and registry come from the local stack (`deploy/local/stack up`, or all in
//! one with `deploy/local/test`). When they are not there the tests fail loudly, naming the
//! address they tried; they never skip.
#![allow(dead_code)]

pub mod pipeline;
pub mod service;

use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use schema_registry_converter::async_impl::schema_registry::{get_all_subjects, SrSettings};

/// How long the reachability checks wait before failing the test.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// `KAFKA_BOOTSTRAP`, by default the local stack's `127.0.0.1:9092`.
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// `SCHEMA_REGISTRY_URL` (a Confluent-compatible API), by default the local stack's
/// Apicurio Registry at `http://127.0.0.1:8081/apis/ccompat/v7`.
pub fn schema_registry_url() -> String {
    std::env::var("SCHEMA_REGISTRY_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:8081/apis/ccompat/v7".to_owned())
}

fn random_suffix() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 10)
}

/// A topic name no other test (or earlier run) uses: `__{test}_{random}`.
pub fn unique_topic(test: &str) -> String {
    format!("__{}_{}", test, random_suffix())
}

/// A consumer group id of its own for one consumer in one test.
pub fn unique_group(test: &str) -> String {
    format!("__{}_group_{}", test, random_suffix())
}

/// A transactional id of its own for one producer in one test.
pub fn unique_transactional_id(test: &str) -> String {
    format!("__{}_txn_{}", test, random_suffix())
}

/// A client config pointing at the test broker, with bounded timeouts.
pub fn client_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap())
        .set("socket.timeout.ms", "10000")
        .set("message.timeout.ms", "30000");
    config
}

/// Panics, naming the address and how to start the stack, unless the broker answers a
/// metadata request within [`CHECK_TIMEOUT`].
pub fn require_kafka() {
    let addr = bootstrap();
    let consumer: BaseConsumer = client_config()
        .create()
        .unwrap_or_else(|e| panic!("cannot create a Kafka client for {addr}: {e}"));
    if let Err(e) = consumer.fetch_metadata(None, CHECK_TIMEOUT) {
        panic!(
            "no Kafka broker answered at {addr} (KAFKA_BOOTSTRAP) within {}s: {e}. \
             Start the local stack with `deploy/local/stack up`, or run the tests with \
             `deploy/local/test`.",
            CHECK_TIMEOUT.as_secs()
        );
    }
}

/// Settings for the test schema registry, with a bounded HTTP timeout.
pub fn sr_settings() -> SrSettings {
    SrSettings::new_builder(schema_registry_url())
        .set_timeout(Duration::from_secs(10))
        .build()
        .expect("schema registry client settings")
}

/// Panics, naming the URL and how to start the stack, unless the schema registry lists
/// its subjects within [`CHECK_TIMEOUT`].
pub async fn require_schema_registry() {
    let url = schema_registry_url();
    let settings = SrSettings::new_builder(url.clone())
        .set_timeout(CHECK_TIMEOUT)
        .build()
        .expect("schema registry client settings");
    match tokio::time::timeout(CHECK_TIMEOUT, get_all_subjects(&settings)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!(
            "no schema registry answered at {url} (SCHEMA_REGISTRY_URL): {e}. Start the \
             local stack with `deploy/local/stack up`, or run the tests with `deploy/local/test`."
        ),
        Err(_) => panic!(
            "no schema registry answered at {url} (SCHEMA_REGISTRY_URL) within {}s. Start \
             the local stack with `deploy/local/stack up`, or run the tests with \
             `deploy/local/test`.",
            CHECK_TIMEOUT.as_secs()
        ),
    }
}

/// Creates topics with replication factor 1 (the local broker is one node) and waits
/// for the broker to confirm; panics on any failure.
pub async fn create_topics(names: &[&str], partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = client_config().create().unwrap_or_else(|e| {
        panic!(
            "cannot create a Kafka admin client for {}: {e}",
            bootstrap()
        )
    });
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(20)))
        .request_timeout(Some(Duration::from_secs(20)));
    let results = tokio::time::timeout(
        Duration::from_secs(30),
        admin.create_topics(&topics, &options),
    )
    .await
    .unwrap_or_else(|_| panic!("creating topics {names:?} at {} timed out", bootstrap()))
    .unwrap_or_else(|e| panic!("creating topics {names:?} at {} failed: {e}", bootstrap()));
    for result in results {
        if let Err((topic, code)) = result {
            panic!("creating topic {topic} at {} failed: {code}", bootstrap());
        }
    }
}

/// Creates one topic; see [`create_topics`].
pub async fn create_topic(name: &str, partitions: i32) {
    create_topics(&[name], partitions).await;
}
