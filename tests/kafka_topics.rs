//! `milestones topics apply` against the real broker: it creates the topology, leaves what
//! exists alone, and refuses inputs that are not co-partitioned; the start's own check
//! reads the same partition counts.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use order_milestones::config::Config;
use order_milestones::topics::{self, Applied, TopicRole};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::BaseConsumer;

fn config_for(test: &str, inputs: &[String]) -> Config {
    let mut config = Config::default();
    config.kafka.bootstrap_servers = common::bootstrap();
    config.application.id = common::unique_topic(test);
    config.topics.inputs = inputs.to_vec();
    config.topics.changes = common::unique_topic(&format!("{test}_changes"));
    config.topics.status = common::unique_topic(&format!("{test}_status"));
    config.topics.partitions = 3;
    config.check().expect("test config is valid");
    config
}

async fn cleanup_policy(topic: &str) -> String {
    let admin: AdminClient<DefaultClientContext> =
        common::client_config().create().expect("admin client");
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(20)));
    let results = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &options)
        .await
        .expect("describe configs");
    let resource = results
        .into_iter()
        .next()
        .expect("one result")
        .expect("topic described");
    resource
        .get("cleanup.policy")
        .and_then(|entry| entry.value.clone())
        .expect("cleanup.policy is set")
}

#[tokio::test]
async fn apply_creates_the_topology_once() {
    common::require_kafka();
    let inputs = vec![
        common::unique_topic("apply_a"),
        common::unique_topic("apply_b"),
    ];
    let config = config_for("apply", &inputs);

    let first = topics::apply(&config).await.expect("first apply");
    assert!(
        first.iter().all(|a| matches!(a, Applied::Created(_))),
        "{first:?}"
    );
    let existing = topics::existing_partitions(&config).expect("metadata");
    for spec in topics::plan(&config, Some(3)) {
        // The dead letters and the instances directory are single-partition topics.
        let expected = match spec.role {
            TopicRole::DeadLetter | TopicRole::Instances => 1,
            _ => 3,
        };
        assert_eq!(existing.get(&spec.name), Some(&expected), "{}", spec.name);
    }
    assert_eq!(
        topics::check(&config, &existing).expect("co-partitioned"),
        3
    );
    assert_eq!(cleanup_policy(&config.changelog_topic()).await, "compact");
    assert_eq!(cleanup_policy(&config.topics.status).await, "compact");
    assert_eq!(cleanup_policy(&config.topics.changes).await, "delete");
    assert_eq!(cleanup_policy(&config.instances_topic()).await, "compact");

    let second = topics::apply(&config).await.expect("second apply");
    assert!(
        second.iter().all(|a| matches!(a, Applied::Existed { .. })),
        "{second:?}"
    );
}

#[tokio::test]
async fn inputs_that_are_not_co_partitioned_are_refused() {
    common::require_kafka();
    let a = common::unique_topic("copart_a");
    let b = common::unique_topic("copart_b");
    common::create_topic(&a, 3).await;
    common::create_topic(&b, 2).await;
    let config = config_for("copart", &[a.clone(), b.clone()]);
    let error = topics::apply(&config)
        .await
        .expect_err("refused")
        .to_string();
    assert!(error.contains(&format!("{a} has 3, {b} has 2")), "{error}");
}

/// The start checks its topics on the group member's own consumer, asking for each by name:
/// the counts it finds are the ones the whole cluster's metadata gives, a topic missing
/// from the cluster is missing from them, and inputs that are not co-partitioned are
/// refused through them as through `topics apply`.
#[tokio::test]
async fn the_starts_check_reads_the_same_counts_by_name() {
    common::require_kafka();
    let a = common::unique_topic("bynames_a");
    let b = common::unique_topic("bynames_b");
    common::create_topic(&a, 3).await;
    common::create_topic(&b, 2).await;
    let config = config_for("bynames", &[a.clone(), b.clone()]);
    let consumer: BaseConsumer = common::client_config()
        .set("group.id", common::unique_group("bynames"))
        .create()
        .expect("a consumer");
    let names = topics::checked(&config);
    assert!(names.contains(&config.changelog_topic()), "{names:?}");
    let by_name = topics::partitions_of(&consumer, &names).expect("metadata by name");
    assert_eq!(
        by_name,
        HashMap::from([(a.clone(), 3), (b.clone(), 2)]),
        "the changelog was never created, so it is not there"
    );
    let everything = topics::existing_partitions(&config).expect("all metadata");
    for (topic, count) in &by_name {
        assert_eq!(everything.get(topic), Some(count), "{topic}");
    }
    let error = topics::check(&config, &by_name)
        .expect_err("refused")
        .to_string();
    assert!(error.contains(&format!("{a} has 3, {b} has 2")), "{error}");
}

#[test]
fn the_cli_applies_and_refuses_a_bad_config_in_one_line() {
    common::require_kafka();
    let dir = tempfile::tempdir().expect("tempdir");
    let input = common::unique_topic("cli_in");
    let app = common::unique_topic("cli_app");
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "[application]\nid = \"{app}\"\n[kafka]\nbootstrap_servers = \"{}\"\n[topics]\ninputs = [\"{input}\"]\nchanges = \"{app}-changes\"\nstatus = \"{app}-status\"\npartitions = 2\n",
            common::bootstrap()
        ),
    )
    .expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_milestones"))
        .args(["topics", "apply", "--config", good.to_str().unwrap()])
        .output()
        .expect("run milestones");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("created {input} (2 partitions")),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("created {app}-order-graph-changelog (2 partitions, replication 1, cleanup.policy=compact)")), "{stdout}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[kafka.properties]\n\"group.id\" = \"mine\"\n").expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_milestones"))
        .args(["topics", "apply", "--config", bad.to_str().unwrap()])
        .output()
        .expect("run milestones");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("kafka.properties.\"group.id\" is set by the service"),
        "{stderr}"
    );
}
