//! Configuration of `milestones run` and the other Kafka commands, layered: built-in defaults
//! (the topics from `topology/topics.toml`), then the file given with `--config`, then the
//! environment (`MILESTONES__SECTION__KEY`, e.g. `MILESTONES__KAFKA__BOOTSTRAP_SERVERS`).
//!
//! [`Config::load`] refuses, with one line naming the fields, a configuration that cannot work.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format as _, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use crate::api::AuthConfig;
pub use crate::ingest::{Format, RegistryConfig};
pub use crate::state::StateConfig;

/// The local stack's schema registry (Apicurio's Confluent-compatible API).
const DEFAULT_REGISTRY_URL: &str = "http://127.0.0.1:8081/apis/ccompat/v7";

/// The topic topology shipped with the service; the defaults of `[topics]`.
pub const BUILTIN_TOPICS: &str = include_str!("../topology/topics.toml");

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub application: ApplicationConfig,
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// The schema registry, needed when a topic's format is Avro. Default: the local
    /// stack's, `http://127.0.0.1:8081/apis/ccompat/v7`.
    #[serde(default = "default_registry")]
    pub schema_registry: RegistryConfig,
    #[serde(default)]
    pub topics: TopicsConfig,
    #[serde(default)]
    pub rules: RulesConfig,
    /// Where and how the RocksDB stores live, and how long finished orders stay.
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub processing: ProcessingConfig,
    #[serde(default)]
    pub http: HttpConfig,
    /// Bearer tokens of the order API.
    #[serde(default)]
    pub auth: AuthConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplicationConfig {
    /// The consumer group id, and the prefix of the changelog and dead-letter topics and of
    /// the transactional ids. A new id over the same inputs is a new application that starts
    /// from the beginning. Default `order-milestones`.
    #[serde(default = "default_application_id")]
    pub id: String,
    /// This instance's name, unique within the group and stable across its restarts (it is
    /// part of the transactional id, so a restarted instance fences its own unfinished
    /// transaction at once). Default: the host name.
    #[serde(default = "default_instance_id")]
    pub instance_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Default `127.0.0.1:9092`.
    #[serde(default = "default_bootstrap_servers")]
    pub bootstrap_servers: String,
    /// librdkafka properties passed unchanged to every client: SASL, SSL, timeouts...
    /// (`"security.protocol" = "SASL_SSL"`). From the environment, write dots as
    /// underscores: `MILESTONES__KAFKA__PROPERTIES__SECURITY_PROTOCOL=SASL_SSL`.
    #[serde(default, deserialize_with = "property_values")]
    pub properties: BTreeMap<String, String>,
    /// Properties for the consumers only, over `properties`.
    #[serde(default, deserialize_with = "property_values")]
    pub consumer: BTreeMap<String, String>,
    /// Properties for the producer only, over `properties`.
    #[serde(default, deserialize_with = "property_values")]
    pub producer: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// The normalized event topics, keyed by order id, co-partitioned.
    pub inputs: Vec<String>,
    pub input_format: Format,
    /// Milestone change records.
    pub changes: String,
    /// The order views, compacted.
    pub status: String,
    pub output_format: Format,
    /// Partitions of the topics `milestones topics apply` creates.
    pub partitions: i32,
    pub replication_factor: i32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// A rules file (see the README's "Rules file format"); default: the built-in
    /// `topology/milestones.toml`.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingConfig {
    /// How often the open transaction commits: the bound on output latency. Default 100.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// The producer's `transaction.timeout.ms`: a transaction open longer is aborted by the
    /// broker. Must exceed the commit interval by far. Default 60000.
    #[serde(default = "default_transaction_timeout_ms")]
    pub transaction_timeout_ms: u64,
    /// After SIGTERM or SIGINT, how long the service may take to commit and close before it
    /// exits anyway. Default 30000.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// Processing threads of this instance, each a member of the consumer group with its own
    /// partitions, transactions and transactional id (`<application.id>-<instance_id>`, then
    /// `...-1`, `...-2`): partitions are processed in parallel. Keep it the same across
    /// restarts, so that a restarted thread fences its predecessor. Default 1: `workers`
    /// gives the parallelism at less cost.
    #[serde(default = "default_threads")]
    pub threads: u16,
    /// Worker threads of each member: its partitions are spread over this many shards,
    /// processed in parallel inside the member's one transaction, with one consumer and one
    /// producer. 0, the default, is one per CPU core the process may use.
    #[serde(default)]
    pub workers: u16,
    /// How many events of a partition after a finished order's last event (its status
    /// final: delivered, cancelled) its state and view are written out (changelog and
    /// status records produced, the graph dropped) instead of at the commit, while the
    /// graph is still in the processor's cache. An order that gets another event later in
    /// the transaction is written out again. Orders under way are written at the commit,
    /// once per transaction however many events they get. 0: only at the commit.
    /// Default 256.
    #[serde(default = "default_write_out_after_events")]
    pub write_out_after_events: u32,
    /// How many orders under way each partition keeps in memory between transactions, the
    /// most recently changed: their next event needs no store read, no decoding and no
    /// evaluation of the order's past events. About 3.5 KiB each. Finished orders are not
    /// kept. 0: none. Default 4096.
    #[serde(default = "default_kept_orders")]
    pub kept_orders: u32,
}

/// The most processing threads (members times workers) one instance may run.
const MAX_PROCESSING_THREADS: usize = 1024;

impl ProcessingConfig {
    /// `workers`, with 0 resolved to the CPU cores available.
    pub fn workers(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => usize::from(n),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz` and the order API. Default `0.0.0.0:8080`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The base URL other instances forward order requests to, e.g.
    /// `http://milestones-0.milestones:8080`. Default: `http://<host>:<port>` with the
    /// listen address's IP, or the host name when it listens on every address.
    #[serde(default)]
    pub advertised_url: Option<String>,
    /// How many order event streams (`GET /orders/{id}/events`) may be open at once on this
    /// instance; beyond it, 503 with `Retry-After`. Each costs a connection and a few KiB,
    /// never a share of the processing. Default 10000.
    #[serde(default = "default_max_event_streams")]
    pub max_event_streams: usize,
    /// Origins whose pages may call the order API from a browser (CORS), e.g.
    /// `["https://shop.example.com"]`; `["*"]` for any. Default none: no CORS headers, so
    /// only pages served by the service itself (the tracker) and non-browser clients.
    #[serde(default)]
    pub cors_allowed_origins: Vec<String>,
}

fn default_application_id() -> String {
    "order-milestones".into()
}
fn default_instance_id() -> String {
    hostname().unwrap_or_else(|| "instance-0".into())
}

/// This machine's (or pod's) host name, if it has one.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
}
fn default_bootstrap_servers() -> String {
    "127.0.0.1:9092".into()
}
fn default_registry() -> RegistryConfig {
    RegistryConfig::new(DEFAULT_REGISTRY_URL)
}
fn default_commit_interval_ms() -> u64 {
    100
}
fn default_transaction_timeout_ms() -> u64 {
    60_000
}
fn default_shutdown_timeout_ms() -> u64 {
    30_000
}
fn default_max_event_streams() -> usize {
    10_000
}
fn default_threads() -> u16 {
    1
}
fn default_write_out_after_events() -> u32 {
    256
}
fn default_kept_orders() -> u32 {
    4096
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

impl Default for ApplicationConfig {
    fn default() -> Self {
        ApplicationConfig {
            id: default_application_id(),
            instance_id: default_instance_id(),
        }
    }
}

impl Default for TopicsConfig {
    /// The shipped topology, `topology/topics.toml`.
    fn default() -> Self {
        #[derive(Deserialize)]
        struct File {
            topics: TopicsConfig,
        }
        // The shipped file is checked by a unit test; should it ever break, the error says so.
        toml::from_str::<File>(BUILTIN_TOPICS)
            .map(|f| f.topics)
            .unwrap_or_else(|e| panic!("built-in topology/topics.toml is broken: {e}"))
    }
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        ProcessingConfig {
            commit_interval_ms: default_commit_interval_ms(),
            transaction_timeout_ms: default_transaction_timeout_ms(),
            shutdown_timeout_ms: default_shutdown_timeout_ms(),
            threads: default_threads(),
            workers: 0,
            write_out_after_events: default_write_out_after_events(),
            kept_orders: default_kept_orders(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            advertised_url: None,
            max_event_streams: default_max_event_streams(),
            cors_allowed_origins: Vec::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            application: ApplicationConfig::default(),
            kafka: KafkaConfig {
                bootstrap_servers: default_bootstrap_servers(),
                ..KafkaConfig::default()
            },
            schema_registry: default_registry(),
            topics: TopicsConfig::default(),
            rules: RulesConfig::default(),
            state: StateConfig::default(),
            processing: ProcessingConfig::default(),
            http: HttpConfig::default(),
            auth: AuthConfig::default(),
        }
    }
}

/// librdkafka properties the service sets itself; setting them would break exactly-once or
/// the group, so a config that does is refused, naming the field to use instead.
const MANAGED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "kafka.bootstrap_servers"),
    ("group.id", "application.id"),
    (
        "transactional.id",
        "application.id and application.instance_id",
    ),
    (
        "transaction.timeout.ms",
        "processing.transaction_timeout_ms",
    ),
    (
        "enable.auto.commit",
        "nothing: offsets commit inside transactions",
    ),
    (
        "enable.auto.offset.store",
        "nothing: offsets commit inside transactions",
    ),
    (
        "isolation.level",
        "nothing: the service reads read_committed",
    ),
    ("enable.idempotence", "nothing: transactions need it"),
    (
        "partition.assignment.strategy",
        "nothing: the service uses cooperative-sticky",
    ),
];

/// An environment variable cannot hold a dot in its name, so below `kafka.properties`,
/// `kafka.consumer` and `kafka.producer` an underscore in a variable's name stands for a dot
/// of the librdkafka property: `..._PRODUCER__LINGER_MS` sets `linger.ms`. (A file writes the
/// property as librdkafka spells it, `"linger.ms" = 5`, underscores included: `log_level`.)
///
/// A dot in a figment key would nest, so here the underscores become [`ENV_DOT`], and
/// [`Config::load`] turns those into dots once the maps are extracted.
fn env_property_key(key: &str) -> String {
    for map in ["kafka.properties.", "kafka.consumer.", "kafka.producer."] {
        if let Some(property) = key.strip_prefix(map) {
            return format!("{map}{}", property.replace('_', ENV_DOT));
        }
    }
    key.to_owned()
}

/// Stands for a dot in a property name from the environment; no librdkafka property has one.
const ENV_DOT: &str = "-";

/// A librdkafka property value: written as a string, or as a number or boolean (which is
/// how an environment variable such as `..._LINGER_MS=5` arrives).
fn property_values<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Integer(i64),
        Float(f64),
        Bool(bool),
    }
    let map = BTreeMap::<String, Scalar>::deserialize(deserializer)?;
    Ok(map
        .into_iter()
        .map(|(key, value)| {
            let value = match value {
                Scalar::Text(text) => text,
                Scalar::Integer(n) => n.to_string(),
                Scalar::Float(x) => x.to_string(),
                Scalar::Bool(b) => b.to_string(),
            };
            (key, value)
        })
        .collect())
}

impl Config {
    /// Defaults, then `file` if given, then `MILESTONES__...` variables; then checks the
    /// result. Errors name the file or the fields that are wrong.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::Missing(file.to_path_buf()));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(
            Env::prefixed("MILESTONES__")
                .split("__")
                .map(|key| env_property_key(&key.as_str().to_ascii_lowercase()).into()),
        );
        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(one_line(&e)))?;
        for map in [
            &mut config.kafka.properties,
            &mut config.kafka.consumer,
            &mut config.kafka.producer,
        ] {
            *map = std::mem::take(map)
                .into_iter()
                .map(|(key, value)| (key.replace(ENV_DOT, "."), value))
                .collect();
        }
        config.check()?;
        Ok(config)
    }

    /// Rules that span fields, checked once when the configuration is built.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let t = &self.topics;
        if self.application.id.trim().is_empty() || self.application.instance_id.trim().is_empty() {
            return invalid("application.id and application.instance_id cannot be empty".into());
        }
        if t.inputs.is_empty() {
            return invalid("topics.inputs is empty: name at least one input topic".into());
        }
        if self.state.restore_prefetch_partitions == 0 {
            return invalid(
                "state.restore_prefetch_partitions is 0: give at least 1 (the partition being \
                 restored is always fetched)"
                    .into(),
            );
        }
        let mut names: Vec<(&str, String)> = t
            .inputs
            .iter()
            .map(|i| ("topics.inputs", i.clone()))
            .collect();
        names.push(("topics.changes", t.changes.clone()));
        names.push(("topics.status", t.status.clone()));
        names.push(("the changelog", self.changelog_topic()));
        names.push(("the dead-letter topic", self.dead_letter_topic()));
        names.push(("the instances topic", self.instances_topic()));
        for (i, (field, name)) in names.iter().enumerate() {
            if name.trim().is_empty() {
                return invalid(format!("{field} names an empty topic"));
            }
            if let Some((other, _)) = names[..i].iter().find(|(_, n)| n == name) {
                return invalid(format!("{other} and {field} are the same topic `{name}`"));
            }
        }
        if t.partitions < 1 || t.replication_factor < 1 {
            return invalid(format!(
                "topics.partitions ({}) and topics.replication_factor ({}) must be at least 1",
                t.partitions, t.replication_factor
            ));
        }
        let p = &self.processing;
        if p.threads == 0 {
            return invalid("processing.threads is 0: give at least 1".into());
        }
        if usize::from(p.threads) * p.workers() > MAX_PROCESSING_THREADS {
            return invalid(format!(
                "processing.threads ({}) times processing.workers ({}) is over {MAX_PROCESSING_THREADS} \
                 threads: the partitions of one instance are processed by at most that many",
                p.threads,
                p.workers()
            ));
        }
        if p.commit_interval_ms == 0 || p.commit_interval_ms * 10 > p.transaction_timeout_ms {
            return invalid(format!(
                "processing.commit_interval_ms ({}) must be above 0 and at most a tenth of \
                 processing.transaction_timeout_ms ({})",
                p.commit_interval_ms, p.transaction_timeout_ms
            ));
        }
        if p.shutdown_timeout_ms < p.commit_interval_ms {
            return invalid(format!(
                "processing.shutdown_timeout_ms ({}) is below processing.commit_interval_ms ({}): \
                 the last transaction could never commit",
                p.shutdown_timeout_ms, p.commit_interval_ms
            ));
        }
        let uses_avro = t.input_format == Format::Avro || t.output_format == Format::Avro;
        if uses_avro && self.schema_registry.url.trim().is_empty() {
            return invalid("topics use the avro format but schema_registry.url is empty".into());
        }
        if let Some(url) = &self.http.advertised_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return invalid(format!(
                    "http.advertised_url `{url}` must start with http:// or https://"
                ));
            }
        }
        for origin in &self.http.cors_allowed_origins {
            let scheme_host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            if origin != "*" && !scheme_host.is_some_and(|h| !h.is_empty() && !h.contains('/')) {
                return invalid(format!(
                    "http.cors_allowed_origins: `{origin}` is not an origin (scheme://host[:port], \
                     no path) nor `*`"
                ));
            }
        }
        for (section, map) in [
            ("kafka.properties", &self.kafka.properties),
            ("kafka.consumer", &self.kafka.consumer),
            ("kafka.producer", &self.kafka.producer),
        ] {
            for (key, instead) in MANAGED_PROPERTIES {
                if map.contains_key(*key) {
                    return invalid(format!(
                        "{section}.\"{key}\" is set by the service; use {instead}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// `<application.id>-order-graph-changelog`: every state change, compacted.
    pub fn changelog_topic(&self) -> String {
        format!("{}-order-graph-changelog", self.application.id)
    }

    /// `<application.id>-dlq`: bad input records, unchanged, with the reason in headers.
    pub fn dead_letter_topic(&self) -> String {
        format!("{}-dlq", self.application.id)
    }

    /// `<application.id>-instances`: each instance's HTTP address and the partitions it
    /// serves, so that any instance can forward an order request to the owner (compacted).
    pub fn instances_topic(&self) -> String {
        format!("{}-instances", self.application.id)
    }

    /// This instance's transactional id.
    pub fn transactional_id(&self) -> String {
        format!("{}-{}", self.application.id, self.application.instance_id)
    }
}

/// figment errors can span lines (one per failing field); a refusal is one line.
fn one_line(error: &figment::Error) -> String {
    error
        .clone()
        .into_iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
// `Jail::expect_with` closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    fn refusal(jail: &mut Jail, toml: &str) -> String {
        jail.create_file("bad.toml", toml).unwrap();
        match Config::load(Some(Path::new("bad.toml"))) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted: {toml}"),
        }
    }

    #[test]
    fn defaults_are_the_shipped_topology() {
        let config = Config::default();
        config.check().unwrap();
        assert_eq!(config.topics.inputs, ["order-events"]);
        assert_eq!(config.topics.changes, "order-milestones");
        assert_eq!(config.topics.status, "order-status");
        assert_eq!(
            config.changelog_topic(),
            "order-milestones-order-graph-changelog"
        );
        assert_eq!(config.dead_letter_topic(), "order-milestones-dlq");
        assert_eq!(config.processing.commit_interval_ms, 100);
    }

    #[test]
    fn file_overrides_defaults_and_environment_overrides_file() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "m.toml",
                r#"
                [application]
                id = "from-file"
                [kafka]
                bootstrap_servers = "file:9092"
                [kafka.properties]
                "security.protocol" = "SASL_SSL"
                log_level = 6
                [topics]
                inputs = ["a", "b"]
                input_format = "json"
                "#,
            )?;
            jail.set_env("MILESTONES__KAFKA__BOOTSTRAP_SERVERS", "env:9092");
            jail.set_env("MILESTONES__KAFKA__PROPERTIES__SASL_MECHANISM", "PLAIN");
            jail.set_env("MILESTONES__PROCESSING__COMMIT_INTERVAL_MS", "250");
            // A number and a boolean from the environment are property values too.
            jail.set_env("MILESTONES__KAFKA__PRODUCER__LINGER_MS", "5");
            jail.set_env("MILESTONES__KAFKA__CONSUMER__CHECK_CRCS", "true");
            let config = Config::load(Some(Path::new("m.toml"))).unwrap();
            assert_eq!(config.kafka.producer["linger.ms"], "5");
            assert_eq!(config.kafka.consumer["check.crcs"], "true");
            assert_eq!(config.application.id, "from-file");
            assert_eq!(config.kafka.bootstrap_servers, "env:9092");
            assert_eq!(config.kafka.properties["security.protocol"], "SASL_SSL");
            assert_eq!(config.kafka.properties["sasl.mechanism"], "PLAIN");
            // From a file a name is used as written: librdkafka's own `log_level` has one.
            assert_eq!(config.kafka.properties["log_level"], "6");
            assert_eq!(config.topics.inputs, ["a", "b"]);
            assert_eq!(config.topics.input_format, Format::Json);
            assert_eq!(config.topics.output_format, Format::Avro); // untouched default
            assert_eq!(config.processing.commit_interval_ms, 250);
            Ok(())
        });
    }

    #[test]
    fn configs_that_cannot_work_are_refused_with_the_fields_named() {
        Jail::expect_with(|jail| {
            let cases = [
                ("[topics]\ninputs = []", "topics.inputs is empty"),
                (
                    "[topics]\ninputs = [\"x\"]\nchanges = \"x\"",
                    "topics.inputs and topics.changes are the same topic `x`",
                ),
                (
                    "[processing]\ncommit_interval_ms = 0",
                    "processing.commit_interval_ms (0)",
                ),
                ("[processing]\nthreads = 0", "processing.threads is 0"),
                (
                    "[state]\nrestore_prefetch_partitions = 0",
                    "state.restore_prefetch_partitions is 0",
                ),
                (
                    "[processing]\nthreads = 2\nworkers = 600",
                    "processing.threads (2) times processing.workers (600) is over 1024",
                ),
                (
                    "[processing]\ncommit_interval_ms = 10000",
                    "at most a tenth of processing.transaction_timeout_ms",
                ),
                (
                    "[kafka.properties]\n\"group.id\" = \"g\"",
                    "kafka.properties.\"group.id\" is set by the service; use application.id",
                ),
                (
                    "[kafka.consumer]\n\"isolation.level\" = \"read_uncommitted\"",
                    "kafka.consumer.\"isolation.level\"",
                ),
                ("[state]\ndirr = \"x\"", "dirr"),
                ("[topics]\ninput_format = \"xml\"", "xml"),
                ("[http]\nlisten = \"nowhere\"", "listen"),
                (
                    "[http]\nadvertised_url = \"milestones-0:8080\"",
                    "http.advertised_url `milestones-0:8080` must start with http://",
                ),
                (
                    "[http]\ncors_allowed_origins = [\"https://shop.example.com/orders\"]",
                    "http.cors_allowed_origins: `https://shop.example.com/orders` is not an origin",
                ),
                (
                    "[http]\ncors_allowed_origins = [\"shop.example.com\"]",
                    "`shop.example.com` is not an origin",
                ),
            ];
            for (toml, expected) in cases {
                let message = refusal(jail, toml);
                assert!(message.contains(expected), "{toml:?} gave {message:?}");
                assert!(!message.contains('\n'), "not one line: {message:?}");
            }
            let missing = Config::load(Some(Path::new("nope.toml")))
                .unwrap_err()
                .to_string();
            assert_eq!(missing, "config file nope.toml does not exist");
            Ok(())
        });
    }
}
