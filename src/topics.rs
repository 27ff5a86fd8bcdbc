//! The service's topics: what they should be ([`plan`]), creating what is missing
//! (`milestones topics apply`), checking what is there before processing
//! ([`check`]: co-partitioned inputs, a changelog to match), and a description for humans.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;

use crate::config::{Config, Format};
use crate::engine::Rules;
use crate::kafka::{self, client_config};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Why the topics are not usable.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    #[error("Kafka admin request failed: {0}")]
    Kafka(#[from] KafkaError),
    #[error("cannot create topic {topic}: {code}")]
    Create {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("input topic {0} does not exist (create the topics with `milestones topics apply`)")]
    MissingInput(String),
    #[error("the input topics are not co-partitioned: {0}; they must all have the same number of partitions")]
    NotCoPartitioned(String),
    #[error("changelog {topic} has {found} partitions but the inputs have {expected}: it must have as many")]
    ChangelogMismatch {
        topic: String,
        found: i32,
        expected: i32,
    },
}

/// What a topic is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicRole {
    Input,
    Changes,
    Status,
    Changelog,
    DeadLetter,
    /// Where each instance advertises its HTTP address and partitions (the order API).
    Instances,
}

/// A topic as the service wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub role: TopicRole,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Topic-level configs: compaction for the keyed-state topics.
    pub configs: Vec<(&'static str, &'static str)>,
}

/// The topics of the service. The changelog gets as many partitions as the inputs have
/// (`input_partitions`, when they exist already) so that input partition `p`'s state lives
/// in changelog partition `p`.
pub fn plan(config: &Config, input_partitions: Option<i32>) -> Vec<TopicSpec> {
    let t = &config.topics;
    let partitions = input_partitions.unwrap_or(t.partitions);
    let spec = |name: &str, role, partitions, configs: Vec<_>| TopicSpec {
        name: name.to_string(),
        role,
        partitions,
        replication_factor: t.replication_factor,
        configs,
    };
    let compacted = vec![("cleanup.policy", "compact")];
    let mut topics: Vec<TopicSpec> = t
        .inputs
        .iter()
        .map(|name| spec(name, TopicRole::Input, partitions, vec![]))
        .collect();
    topics.push(spec(&t.changes, TopicRole::Changes, t.partitions, vec![]));
    topics.push(spec(
        &t.status,
        TopicRole::Status,
        t.partitions,
        compacted.clone(),
    ));
    topics.push(spec(
        &config.changelog_topic(),
        TopicRole::Changelog,
        partitions,
        compacted,
    ));
    topics.push(spec(
        &config.dead_letter_topic(),
        TopicRole::DeadLetter,
        1,
        vec![],
    ));
    topics.push(spec(
        &config.instances_topic(),
        TopicRole::Instances,
        1,
        vec![("cleanup.policy", "compact")],
    ));
    topics
}

/// The number of partitions of each topic that exists, by name.
pub fn existing_partitions(config: &Config) -> Result<HashMap<String, i32>, TopicsError> {
    let consumer: BaseConsumer = client_config(config, kafka::Role::Admin).create()?;
    let metadata = consumer.fetch_metadata(None, TIMEOUT)?;
    Ok(partition_counts(&metadata).collect())
}

/// Each topic of `metadata` that exists, with its number of partitions.
fn partition_counts(metadata: &Metadata) -> impl Iterator<Item = (String, i32)> + '_ {
    metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
}

/// The number of partitions of each of `names` that exists, asked of `client` one topic at
/// a time: the service's start needs two or three of a cluster's topics, which may number
/// thousands, and asks on the group member's own connection (a client of its own would
/// set up a connection of its own first: about 15 ms on the way to the group join).
pub fn partitions_of<C: ConsumerContext>(
    client: &BaseConsumer<C>,
    names: &[String],
) -> Result<HashMap<String, i32>, TopicsError> {
    let mut found = HashMap::new();
    for name in names {
        let metadata = client.fetch_metadata(Some(name), TIMEOUT)?;
        found.extend(partition_counts(&metadata).filter(|(topic, _)| topic == name));
    }
    Ok(found)
}

/// The topics [`check`] looks at: the inputs and the changelog.
pub fn checked(config: &Config) -> Vec<String> {
    let mut names = config.topics.inputs.clone();
    names.push(config.changelog_topic());
    names
}

/// Checks the topics the service needs before it processes: every input exists, the
/// inputs are co-partitioned, and the changelog (if it exists) matches them. Returns the
/// number of input partitions.
pub fn check(config: &Config, existing: &HashMap<String, i32>) -> Result<i32, TopicsError> {
    let mut counts = Vec::new();
    for input in &config.topics.inputs {
        match existing.get(input) {
            Some(&n) => counts.push((input.as_str(), n)),
            None => return Err(TopicsError::MissingInput(input.clone())),
        }
    }
    let expected = counts[0].1;
    if counts.iter().any(|&(_, n)| n != expected) {
        let listed: Vec<String> = counts.iter().map(|(t, n)| format!("{t} has {n}")).collect();
        return Err(TopicsError::NotCoPartitioned(listed.join(", ")));
    }
    let changelog = config.changelog_topic();
    match existing.get(&changelog) {
        Some(&found) if found != expected => Err(TopicsError::ChangelogMismatch {
            topic: changelog,
            found,
            expected,
        }),
        _ => Ok(expected),
    }
}

/// What `apply` did to one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Created(TopicSpec),
    Existed { name: String, partitions: i32 },
}

/// Creates every topic of the plan that does not exist yet, then checks the topics as the
/// broker reports them. Existing topics are left as they are.
pub async fn apply(config: &Config) -> Result<Vec<Applied>, TopicsError> {
    let existing = existing_partitions(config)?;
    let inputs: Vec<i32> = config
        .topics
        .inputs
        .iter()
        .filter_map(|i| existing.get(i).copied())
        .collect();
    let plan = plan(config, inputs.first().copied());
    let missing: Vec<&TopicSpec> = plan
        .iter()
        .filter(|t| !existing.contains_key(&t.name))
        .collect();
    let mut created = Vec::new();
    if !missing.is_empty() {
        let admin: AdminClient<DefaultClientContext> =
            client_config(config, kafka::Role::Admin).create()?;
        let new_topics: Vec<NewTopic> = missing
            .iter()
            .map(|t| {
                t.configs.iter().fold(
                    NewTopic::new(
                        &t.name,
                        t.partitions,
                        TopicReplication::Fixed(t.replication_factor),
                    ),
                    |topic, (key, value)| topic.set(key, value),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
        for result in admin.create_topics(&new_topics, &options).await? {
            match result {
                Ok(topic) => created.push(topic),
                // Created meanwhile by someone else: checked below like any existing topic.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(TopicsError::Create { topic, code }),
            }
        }
    }
    let now = settled_partitions(config, &plan).await?;
    check(config, &now)?;
    Ok(plan
        .into_iter()
        .map(|t| match now.get(&t.name) {
            Some(_) if created.contains(&t.name) => Applied::Created(t),
            partitions => Applied::Existed {
                partitions: partitions.copied().unwrap_or_default(),
                name: t.name,
            },
        })
        .collect())
}

/// The partition counts once every planned topic shows in the metadata: a topic just
/// created can take a moment to appear there.
async fn settled_partitions(
    config: &Config,
    plan: &[TopicSpec],
) -> Result<HashMap<String, i32>, TopicsError> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let now = existing_partitions(config)?;
        if plan.iter().all(|t| now.contains_key(&t.name)) || tokio::time::Instant::now() > deadline
        {
            return Ok(now);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The topology for humans: topics with their roles, formats and partitions, and the rules.
pub fn describe(config: &Config, rules: &Rules) -> String {
    let format = |f: Format| match f {
        Format::Avro => "avro (Confluent wire format, schema registry)",
        Format::Json => "json",
    };
    let t = &config.topics;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "application {} (instance {})",
        config.application.id, config.application.instance_id
    );
    let _ = writeln!(
        out,
        "\ninputs, keyed by order id, co-partitioned, {}:",
        format(t.input_format)
    );
    for input in &t.inputs {
        let _ = writeln!(out, "  {input}");
    }
    let _ = writeln!(
        out,
        "\n  -> engine: rules {} ({} milestones)",
        rules.version(),
        rules.milestones().len()
    );
    let _ = writeln!(
        out,
        "     state: RocksDB per input partition in {}",
        config.state.dir.display()
    );
    let _ = writeln!(
        out,
        "\noutputs, one transaction every {} ms:",
        config.processing.commit_interval_ms
    );
    let _ = writeln!(
        out,
        "  {:<40} milestone change records, {}",
        t.changes,
        format(t.output_format)
    );
    let _ = writeln!(
        out,
        "  {:<40} order views, compacted, {}",
        t.status,
        format(t.output_format)
    );
    let _ = writeln!(
        out,
        "  {:<40} order graphs (state changelog), compacted, one partition per input partition",
        config.changelog_topic()
    );
    let _ = writeln!(
        out,
        "  {:<40} bad input records, unchanged, reason in headers",
        config.dead_letter_topic()
    );
    let _ = writeln!(
        out,
        "\ninstances, for the order API on {}:\n  {:<40} each instance's HTTP address and \
         partitions, compacted, one partition",
        config.http.listen,
        config.instances_topic()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(inputs: &[&str]) -> Config {
        let mut config = Config::default();
        config.topics.inputs = inputs.iter().map(|s| s.to_string()).collect();
        config
    }

    #[test]
    fn the_changelog_follows_the_inputs_partitions() {
        let plan = plan(&config(&["a", "b"]), Some(3));
        let by_role = |role| plan.iter().filter(move |t| t.role == role);
        assert_eq!(
            by_role(TopicRole::Input)
                .map(|t| t.partitions)
                .collect::<Vec<_>>(),
            [3, 3]
        );
        let changelog = by_role(TopicRole::Changelog).next().unwrap();
        assert_eq!(
            (changelog.partitions, changelog.configs.clone()),
            (3, vec![("cleanup.policy", "compact")])
        );
        let status = by_role(TopicRole::Status).next().unwrap();
        assert_eq!(status.configs, vec![("cleanup.policy", "compact")]);
        assert_eq!(by_role(TopicRole::DeadLetter).next().unwrap().partitions, 1);
    }

    #[test]
    fn inputs_must_exist_and_be_co_partitioned() {
        let config = config(&["a", "b"]);
        let existing =
            |pairs: &[(&str, i32)]| pairs.iter().map(|(t, n)| (t.to_string(), *n)).collect();
        assert_eq!(check(&config, &existing(&[("a", 4), ("b", 4)])).unwrap(), 4);
        let error = check(&config, &existing(&[("a", 4), ("b", 2)]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("a has 4, b has 2"), "{error}");
        let error = check(&config, &existing(&[("a", 4)]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("input topic b does not exist"), "{error}");
        let changelog = config.changelog_topic();
        let error = check(
            &config,
            &existing(&[("a", 4), ("b", 4), (changelog.as_str(), 2)]),
        )
        .unwrap_err();
        assert!(matches!(
            error,
            TopicsError::ChangelogMismatch {
                found: 2,
                expected: 4,
                ..
            }
        ));
    }
}
