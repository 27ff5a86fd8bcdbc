//! The stream processor: consumes the input topics as one member of the consumer group,
//! applies each event to its order's graph, and produces the change records, the order views
//! and the state changelog together with the consumed offsets, one transaction every commit
//! interval (exactly once).
//!
//! One thread runs [`run`]: it polls, restores newly assigned partitions, processes
//! records and commits. librdkafka calls the rebalance callbacks ([`rebalance`]) on the same
//! thread from inside `poll`, so a revoke finds the core between two records and can commit.

mod core;
mod rebalance;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::topic_partition_list::TopicPartitionList;
use tracing::{debug, info, warn};

use crate::api::Health;
use crate::config::{Config, Format};
use crate::emit::RecordEncoder;
use crate::engine::codec::CodecError;
use crate::engine::Engine;
use crate::ingest::{DecodeError, EventDecoder, FormatError, RegistryClient, RegistryError};
use crate::kafka::{client_config, Role};
use crate::metrics::Metrics;
use crate::state::changelog::{restore_with, RestoreError};
use crate::state::{StateDir, StoreError};
use crate::topics::{self, TopicsError};

use self::core::{lock, Core, Deliveries, Outputs, Settings, Task, TXN_TIMEOUT};
use self::rebalance::RebalanceContext;

/// Why the processor stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error(transparent)]
    Topics(#[from] TopicsError),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("schema registry: {0}")]
    RegistryClient(#[from] RegistryError),
    #[error("record format: {0}")]
    Format(#[from] FormatError),
    /// The registry could not be reached while decoding: retried, never dead-lettered.
    #[error("schema registry unavailable while decoding: {0}")]
    Registry(DecodeError),
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    #[error("restoring state: {0}")]
    Restore(#[from] RestoreError),
    #[error("stored state of order {order_id} in partition {partition} is damaged: {error}")]
    CorruptState {
        partition: i32,
        order_id: String,
        error: CodecError,
    },
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Where the processor reports: metrics and health, shared with the HTTP endpoints.
#[derive(Clone)]
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

impl Telemetry {
    /// Fresh metrics (a registry of their own) and health.
    ///
    /// Errors: only if a metric is registered twice, a programming error.
    pub fn new() -> Result<Telemetry, prometheus::Error> {
        Ok(Telemetry {
            metrics: Arc::new(Metrics::new()?),
            health: Arc::new(Health::default()),
        })
    }
}

/// How long the loop waits for a record before it looks at the clock and the shutdown flag.
const POLL: Duration = Duration::from_millis(20);

/// Runs the processor until `shutdown` is set, then commits, closes the stores and leaves
/// the group. `runtime` serves the schema registry's rare round trips; this function must
/// run on a thread of its own, not on the runtime.
///
/// Errors: topics missing or not co-partitioned, a registry or broker that does not answer
/// at start, a fatal transaction error (this instance was fenced by another with the same
/// transactional id), a damaged store that cannot be restored.
pub fn run(
    config: &Config,
    engine: Engine,
    runtime: tokio::runtime::Handle,
    shutdown: &AtomicBool,
    telemetry: &Telemetry,
) -> Result<(), ProcessorError> {
    if config.topics.inputs.len() > 1 {
        return Err(ProcessorError::Unsupported(
            "more than one input topic: keeping co-partitioned inputs' partitions together \
             on one instance is not built yet",
        ));
    }
    let existing = topics::existing_partitions(config)?;
    topics::check(config, &existing)?;

    let t = &config.topics;
    let avro = t.input_format == Format::Avro || t.output_format == Format::Avro;
    let registry = avro
        .then(|| RegistryClient::new(&config.schema_registry))
        .transpose()?;
    let decoder = EventDecoder::new(t.input_format, registry.clone(), runtime.clone())?;
    let changes =
        RecordEncoder::for_changes(t.output_format, &t.changes, registry.as_ref(), &runtime)?;
    let views = RecordEncoder::for_views(t.output_format, &t.status, registry.as_ref(), &runtime)?;
    let state_dir = StateDir::open(&config.state, &config.application.id)?;

    let outputs = Outputs {
        changes: t.changes.clone(),
        status: t.status.clone(),
        changelog: config.changelog_topic(),
        dead_letters: config.dead_letter_topic(),
    };
    let producer: BaseProducer<Deliveries> = client_config(config, Role::TransactionalProducer)
        .create_with_context(Deliveries::new(outputs.changelog.clone()))?;
    // Fences any earlier incarnation of this instance and aborts its open transaction.
    producer.init_transactions(TXN_TIMEOUT)?;
    let settings = Settings {
        commit_interval: Duration::from_millis(config.processing.commit_interval_ms),
        finished_retention_ms: i64::try_from(config.state.finished_retention_ms)
            .unwrap_or(i64::MAX),
    };
    let core = Arc::new(Mutex::new(Core::new(
        engine,
        producer,
        decoder,
        changes,
        views,
        outputs,
        settings,
        telemetry.metrics.clone(),
        telemetry.health.clone(),
    )));
    let consumer: BaseConsumer<RebalanceContext> = client_config(config, Role::GroupConsumer)
        .create_with_context(RebalanceContext {
            core: core.clone(),
            metrics: telemetry.metrics.clone(),
        })?;
    let inputs: Vec<&str> = t.inputs.iter().map(String::as_str).collect();
    consumer.subscribe(&inputs)?;
    let restore_config = client_config(config, Role::AssignedConsumer);
    info!(inputs = ?t.inputs, group = %config.application.id, transactional_id = %config.transactional_id(), "processing");

    let result = process_until(
        &consumer,
        &core,
        &state_dir,
        &restore_config,
        config,
        shutdown,
    );
    {
        let mut core = lock(&core);
        let finished = match &result {
            Ok(()) => core.commit(&consumer).map(|_| ()),
            Err(_) => core.abort_open(&consumer),
        };
        if let Err(error) = finished {
            warn!(%error, "finishing the last transaction failed");
        }
        let partitions: Vec<i32> = core.tasks.keys().copied().collect();
        for partition in partitions {
            core.close_task(partition);
        }
    }
    consumer.unsubscribe();
    info!(ok = result.is_ok(), "processor stopped");
    result
}

fn process_until(
    consumer: &BaseConsumer<RebalanceContext>,
    core: &Mutex<Core>,
    state_dir: &StateDir,
    restore_config: &ClientConfig,
    config: &Config,
    shutdown: &AtomicBool,
) -> Result<(), ProcessorError> {
    while !shutdown.load(Ordering::Relaxed) {
        // Rebalance callbacks run inside poll, with the core unlocked.
        let message = consumer.poll(POLL);
        restore_pending(consumer, core, state_dir, restore_config, config)?;
        let mut core = lock(core);
        let after_record = message.is_some();
        match message {
            None => {}
            Some(Err(error)) => warn!(%error, "consumer error"),
            Some(Ok(message)) => match core.process(&message) {
                Ok(()) => {}
                Err(ProcessorError::Registry(error)) => {
                    warn!(%error, "schema registry unavailable; aborting and retrying in 1 s");
                    core.abort_open(consumer)?;
                    drop(core);
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
                Err(error) => return Err(error),
            },
        }
        if core.commit_due(after_record) {
            core.commit(consumer)?;
        }
    }
    Ok(())
}

/// Restores the stores of newly assigned partitions, then resumes them.
fn restore_pending(
    consumer: &BaseConsumer<RebalanceContext>,
    core: &Mutex<Core>,
    state_dir: &StateDir,
    restore_config: &ClientConfig,
    config: &Config,
) -> Result<(), ProcessorError> {
    let (pending, metrics, health) = {
        let mut core = lock(core);
        (
            std::mem::take(&mut core.pending),
            core.metrics.clone(),
            core.health.clone(),
        )
    };
    for (topic, partition) in pending {
        health.partition_restoring(partition);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&topic, partition);
        // The previous owner's last transaction must be complete before its changelog is
        // read: a read_committed consumer fetches committed offsets with require_stable
        // (KIP-447), which waits for exactly that.
        consumer.committed_offsets(tpl.clone(), TXN_TIMEOUT)?;
        let (mut store, opened) = state_dir.open_partition(partition)?;
        let changelog = config.changelog_topic();
        let outcome = restore_with(
            &mut store,
            restore_config,
            &changelog,
            partition,
            &config.state,
            &mut |progress| {
                metrics.restore_progress(&progress);
                health.heartbeat(); // a long restore is progress, not a hang
            },
        );
        metrics.restore_finished(partition, outcome.as_ref());
        let outcome = outcome?;
        debug!(
            partition,
            ?opened,
            applied = outcome.applied,
            "partition restored"
        );
        health.partition_ready(partition);
        lock(core).tasks.insert(partition, Task::new(store)?);
        consumer.resume(&tpl)?;
    }
    Ok(())
}
