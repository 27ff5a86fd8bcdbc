//! Generated events to a Kafka input topic, as the event bus would write them: keyed by
//! order id, JSON or Avro in the Confluent wire format (`avro/order_event.avsc` registered
//! under `<topic>-value`).
//!
//! One idempotent producer, batching in librdkafka; records are sent in the generator's
//! order and never awaited one by one. An order's events share a key, so a partition, and
//! the idempotent producer keeps a partition's records in the order they were sent: each
//! order is delivered in exactly the order the generator made. Every delivery report is
//! counted, and the run succeeds only when every record was acknowledged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::util::Timeout;
use rdkafka::ClientContext;

use crate::config::Config;
use crate::emit::RecordEncoder;
use crate::engine::OrderEvent;
use crate::ingest::{Format, FormatError, RegistryClient};
use crate::kafka::{client_config, Role};

use super::writer::{EvolvedEncoder, WriterSchema, WriterSchemaError};

/// Throughput settings for a bulk load, used unless `kafka.properties` or `kafka.producer`
/// set them: large lz4 batches, filled for a few milliseconds, and room for a second of
/// records in the local queue, so the producing thread rarely waits.
const BULK_DEFAULTS: &[(&str, &str)] = &[
    ("linger.ms", "20"),
    ("batch.size", "1000000"),
    ("batch.num.messages", "100000"),
    ("compression.type", "lz4"),
    ("queue.buffering.max.messages", "500000"),
    ("queue.buffering.max.kbytes", "1048576"),
    // The Java client's partitioner: an order's records reach the partition a Java
    // producer of the event bus would pick, so generated and real events of one order
    // share a partition, and inputs stay co-partitioned.
    ("partitioner", "murmur2_random"),
];

/// How often (in records sent) delivery reports are served while producing. Each call
/// costs little; serving them often keeps a failure from going unnoticed for long.
const POLL_EVERY: u64 = 1024;

/// How long to wait for the topic's metadata before producing.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the events go and how their values are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaTarget {
    pub topic: String,
    pub format: Format,
    /// Avro only: write with this schema (its text) instead of ours, as a producer on a
    /// newer schema would ([`super::writer`]).
    pub writer_schema: Option<String>,
}

impl KafkaTarget {
    /// The topic and format asked for, each defaulting to the configuration's: the first
    /// input topic, and `topics.input_format`.
    pub fn resolve(config: &Config, topic: Option<String>, format: Option<Format>) -> Self {
        KafkaTarget {
            topic: topic.unwrap_or_else(|| config.topics.inputs[0].clone()),
            format: format.unwrap_or(config.topics.input_format),
            writer_schema: None,
        }
    }
}

/// What a run produced; every record counted here was acknowledged by the broker.
#[derive(Debug, Clone)]
pub struct Produced {
    pub records: u64,
    /// Partitions of the topic.
    pub partitions: usize,
    /// From the start of [`produce`] to the last acknowledgement: schema registration and
    /// the topic's metadata included.
    pub elapsed: Duration,
}

impl Produced {
    /// Records per second over [`Produced::elapsed`].
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Why producing failed.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("cannot create a Kafka producer for {bootstrap}: {error}")]
    Client {
        bootstrap: String,
        error: Box<KafkaError>,
    },
    #[error("cannot read the metadata of topic {topic} from {bootstrap}: {error}")]
    Metadata {
        topic: String,
        bootstrap: String,
        error: Box<KafkaError>,
    },
    #[error("topic {topic} does not exist: create it first (`milestones topics apply`)")]
    NoTopic { topic: String },
    #[error("topic {topic}: {error}")]
    TopicError { topic: String, error: String },
    #[error("the avro format for topic {topic} needs a schema registry: set schema_registry.url")]
    NoRegistry { topic: String },
    #[error("cannot encode for topic {topic}: {error}")]
    Format { topic: String, error: FormatError },
    #[error("--writer-schema for topic {topic}: {error}")]
    WriterSchema {
        topic: String,
        error: WriterSchemaError,
    },
    /// librdkafka refused a record outright (too large for `message.max.bytes`, or the
    /// producer is in a fatal state). Records handed over before it may or may not have
    /// been delivered.
    #[error("cannot hand a record to the producer for {topic}: {error}")]
    Send {
        topic: String,
        error: Box<KafkaError>,
    },
    /// Some records were not acknowledged. Those that were are in the topic; the run stops
    /// at the first failure it sees, so the rest were never sent.
    #[error(
        "{failed} of {sent} records sent to {topic} were not delivered ({delivered} were); \
         first failure: {first}"
    )]
    Delivery {
        topic: String,
        sent: u64,
        delivered: u64,
        failed: u64,
        first: String,
    },
    #[error("flushing the producer for {topic}: {error}")]
    Flush {
        topic: String,
        error: Box<KafkaError>,
    },
}

/// Produces `events` to `target`, in their order, keyed by order id, and waits until every
/// record is acknowledged.
///
/// For Avro, registers `avro/order_event.avsc` under `<topic>-value` through `runtime`
/// first: call from a plain thread, not from inside the runtime.
///
/// Errors: [`ProduceError::NoTopic`] when the topic does not exist,
/// [`ProduceError::NoRegistry`] for Avro without a registry URL, [`ProduceError::Format`] when
/// the registry is unreachable or refuses the schema,
/// [`ProduceError::Delivery`] when any record was not acknowledged (the run stops at the
/// first failure it sees), and the client errors.
pub fn produce(
    config: &Config,
    target: &KafkaTarget,
    events: impl IntoIterator<Item = OrderEvent>,
    runtime: &tokio::runtime::Handle,
) -> Result<Produced, ProduceError> {
    let topic = target.topic.as_str();
    let started = Instant::now();
    let registry = match target.format {
        Format::Avro if config.schema_registry.url.trim().is_empty() => {
            return Err(ProduceError::NoRegistry {
                topic: topic.to_owned(),
            })
        }
        Format::Avro => Some(RegistryClient::new(&config.schema_registry).map_err(|e| {
            ProduceError::Format {
                topic: topic.to_owned(),
                error: e.into(),
            }
        })?),
        Format::Json => None,
    };
    let writer_schema = |error| ProduceError::WriterSchema {
        topic: topic.to_owned(),
        error,
    };
    let evolved = match (&target.writer_schema, &registry) {
        (Some(schema), Some(registry)) => {
            Some(WriterSchema::register(schema, topic, registry, runtime).map_err(writer_schema)?)
        }
        (Some(_), None) => {
            return Err(writer_schema(WriterSchemaError::Format(
                FormatError::NoRegistry,
            )))
        }
        (None, _) => None,
    };
    let mut encoder = match &evolved {
        Some(schema) => Encoder::Evolved(Box::new(schema.encoder().map_err(writer_schema)?)),
        None => Encoder::Ours(
            RecordEncoder::for_events(target.format, topic, registry.as_ref(), runtime).map_err(
                |error| ProduceError::Format {
                    topic: topic.to_owned(),
                    error,
                },
            )?,
        ),
    };

    let mut client = client_config(config, Role::Producer);
    for (key, value) in BULK_DEFAULTS {
        if client.get(key).is_none() {
            client.set(*key, *value);
        }
    }
    let producer: BaseProducer<Deliveries> = client
        .create_with_context(Deliveries::default())
        .map_err(|error| ProduceError::Client {
            bootstrap: config.kafka.bootstrap_servers.clone(),
            error: Box::new(error),
        })?;
    let partitions = partition_count(&producer, config, topic)?;

    let deliveries = producer.context();
    let mut sent: u64 = 0;
    let mut value = Vec::with_capacity(1024);
    for event in events {
        value.clear();
        match &mut encoder {
            Encoder::Ours(encoder) => {
                encoder
                    .encode_event(&event, &mut value)
                    .map_err(|error| ProduceError::Format {
                        topic: topic.to_owned(),
                        error,
                    })?
            }
            Encoder::Evolved(writer) => writer.encode(&event, &mut value).map_err(writer_schema)?,
        }
        let mut record = BaseRecord::to(topic)
            .key(event.order_id.as_bytes())
            .payload(value.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                // The local queue is full: serve delivery reports until there is room.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(5));
                }
                Err((error, _)) => {
                    return Err(ProduceError::Send {
                        topic: topic.to_owned(),
                        error: Box::new(error),
                    })
                }
            }
        }
        sent += 1;
        if sent.is_multiple_of(POLL_EVERY) {
            producer.poll(Duration::ZERO);
            // A failed record leaves a gap in its order's events: stop sending more.
            if deliveries.failed() > 0 {
                break;
            }
        }
    }
    // Every record gets a delivery report within `message.timeout.ms`, success or failure,
    // so this wait ends.
    producer
        .flush(Timeout::Never)
        .map_err(|error| ProduceError::Flush {
            topic: topic.to_owned(),
            error: Box::new(error),
        })?;
    let elapsed = started.elapsed();
    let (delivered, failed) = (deliveries.delivered(), deliveries.failed());
    if failed > 0 || delivered != sent {
        return Err(ProduceError::Delivery {
            topic: topic.to_owned(),
            sent,
            delivered,
            failed: sent - delivered,
            first: deliveries
                .first_failure()
                .unwrap_or_else(|| "no delivery report".to_owned()),
        });
    }
    Ok(Produced {
        records: delivered,
        partitions,
        elapsed,
    })
}

/// How the events' values are written: with our schema (or JSON), or with another one.
enum Encoder<'s> {
    Ours(RecordEncoder),
    Evolved(Box<EvolvedEncoder<'s>>),
}

/// The topic's partition count; a clear error when it does not exist (the broker does not
/// create topics on first use, and librdkafka would only fail each record after a while).
fn partition_count(
    producer: &BaseProducer<Deliveries>,
    config: &Config,
    topic: &str,
) -> Result<usize, ProduceError> {
    let metadata = producer
        .client()
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|error| ProduceError::Metadata {
            topic: topic.to_owned(),
            bootstrap: config.kafka.bootstrap_servers.clone(),
            error: Box::new(error),
        })?;
    let found = metadata.topics().iter().find(|t| t.name() == topic);
    match found.map(|t| (t.error(), t.partitions().len())) {
        None | Some((Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART), _)) => {
            Err(ProduceError::NoTopic {
                topic: topic.to_owned(),
            })
        }
        Some((Some(error), _)) => Err(ProduceError::TopicError {
            topic: topic.to_owned(),
            error: RDKafkaErrorCode::from(error).to_string(),
        }),
        Some((None, 0)) => Err(ProduceError::NoTopic {
            topic: topic.to_owned(),
        }),
        Some((None, partitions)) => Ok(partitions),
    }
}

/// Counts delivery reports. Atomics and not plain counters: librdkafka's context is shared
/// (`&self`), though with a `BaseProducer` the reports arrive on the producing thread.
#[derive(Default)]
struct Deliveries {
    delivered: AtomicU64,
    failed: AtomicU64,
    /// The first failure's reason, for the error message; later ones are usually the same.
    first_failure: Mutex<Option<String>>,
}

impl Deliveries {
    fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    fn first_failure(&self) -> Option<String> {
        self.first_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_failure.lock().unwrap_or_else(|e| e.into_inner());
                first.get_or_insert_with(|| error.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_defaults_to_the_first_input_and_its_format() {
        let mut config = Config::default();
        config.topics.inputs = vec!["a".into(), "b".into()];
        config.topics.input_format = Format::Json;
        assert_eq!(
            KafkaTarget::resolve(&config, None, None),
            KafkaTarget {
                topic: "a".into(),
                format: Format::Json,
                writer_schema: None,
            }
        );
        assert_eq!(
            KafkaTarget::resolve(&config, Some("t".into()), Some(Format::Avro)),
            KafkaTarget {
                topic: "t".into(),
                format: Format::Avro,
                writer_schema: None,
            }
        );
    }

    #[test]
    fn bulk_defaults_are_librdkafka_properties_the_service_does_not_manage() {
        let mut client = client_config(&Config::default(), Role::Producer);
        for (key, value) in BULK_DEFAULTS {
            client.set(*key, *value);
        }
        assert_eq!(client.get("enable.idempotence"), Some("true"));
        // librdkafka checks property names and values when a client is created.
        let created: Result<BaseProducer, _> = client.create();
        assert!(created.is_ok(), "{:?}", created.err());
    }

    #[test]
    fn the_rate_is_records_over_elapsed_time() {
        let produced = Produced {
            records: 500,
            partitions: 2,
            elapsed: Duration::from_millis(250),
        };
        assert_eq!(produced.rate(), 2000.0);
    }
}
