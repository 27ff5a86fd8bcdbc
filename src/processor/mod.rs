//! The stream processor: consumes the input topics as one member of the consumer group,
//! applies each event to its order's graph, and produces the change records, the order views
//! and the state changelog together with the consumed offsets, one transaction every commit
//! interval (exactly once).
//!
//! One thread runs [`run`]: it polls, restores newly assigned partitions, processes
//! records in batches and commits. librdkafka calls the rebalance callbacks ([`rebalance`])
//! on the same thread from inside the group consumer's `poll`, between batches, so a revoke
//! finds the core between two batches and can commit.
//!
//! The member's partitions are spread over `processing.workers` shards ([`shard`]), each
//! restored partition in the shard holding fewest, whose [`FetchQueue`] its records are
//! forwarded to. Each turn runs every shard at once, shard 0 on this thread and the others
//! on worker threads, each taking batch after batch from its own queue for a slice of 25 ms
//! (or to the end of the commit interval), so that the shards meet, and wait for each
//! other, once a slice rather than at every batch; at a commit the shards produce their
//! state and views at once too. One consumer, one producer and one transaction serve
//! them all: parallel processing at no extra cost in group members, connections or
//! transactions (`processing.threads`, several members in one process, costs all three).
//!
//! Several input topics are co-partitioned (checked at start): the group assigns the first
//! one's partitions, and a follower consumer, outside the group, is assigned the same
//! partitions of the others once their state is restored. Every event of an order, whatever
//! its topic, so reaches the one task holding the order's graph, and the offsets of all of
//! them commit in the transactions under the group. Each shard has a fetch queue of each
//! consumer ([`Lanes`]) and takes batches from both in its slices, so that a backlog on one
//! topic does not hold back the others' records.

mod core;
mod rebalance;
mod shard;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use crate::api::{Health, LocalOrders};
use crate::config::{Config, Format};
use crate::emit::txn::{self, TXN_TIMEOUT};
use crate::emit::RecordEncoder;
use crate::engine::codec::CodecError;
use crate::engine::Engine;
use crate::ingest::{
    Batch, DecodeError, EventDecoder, FetchQueue, FormatError, InputRecord, RegistryClient,
    RegistryError,
};
use crate::kafka::{client_config, Role};
use crate::metrics::Metrics;
use crate::state::changelog::{RestoreError, Restorer};
use crate::state::{OpenedStore, StateDir, StoreError};
use crate::topics::{self, TopicsError};

use self::core::{lock, Core, Deliveries, Inputs};
pub use self::rebalance::start_offsets;
use self::rebalance::RebalanceContext;
use self::shard::{OutputTopics, Outputs, Settings, Shared, Task};

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
    #[error("internal error: {0}")]
    Internal(String),
}

/// What the processor shares with the HTTP endpoints: metrics, health, and the served
/// partitions' stores and commits for the order API.
#[derive(Clone)]
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub orders: Arc<LocalOrders>,
}

impl Telemetry {
    /// Fresh metrics (a registry of their own) and health.
    ///
    /// Errors: only if a metric is registered twice, a programming error.
    pub fn new() -> Result<Telemetry, prometheus::Error> {
        Ok(Telemetry {
            metrics: Arc::new(Metrics::new()?),
            health: Arc::new(Health::default()),
            orders: Arc::new(LocalOrders::default()),
        })
    }
}

/// How long the loop waits for a record before it looks at the clock and the shutdown flag.
const POLL: Duration = Duration::from_millis(20);

/// How long the start waits for the followed topics' metadata.
const METADATA_WAIT: Duration = Duration::from_secs(10);

/// At most this many records per batch from a shard's fetch queue: about a millisecond of
/// work, the longest a turn's slice can run over its end.
const BATCH: usize = 500;

/// Runs the processor until `shutdown` is set, then commits, closes the stores and leaves
/// the group: `processing.threads` threads, each a member of the group (see [`member`]),
/// sharing the state directory, metrics and health. `runtime` serves the schema registry's
/// rare round trips; this function must run on a thread of its own, not on the runtime.
///
/// Errors: topics missing or not co-partitioned, a registry or broker that does not answer
/// at start, a fatal transaction error (this instance was fenced by another with the same
/// transactional id), a damaged store that cannot be restored. The first error of any
/// thread stops the others too.
pub fn run(
    config: &Config,
    engine: Engine,
    runtime: tokio::runtime::Handle,
    shutdown: &AtomicBool,
    telemetry: &Telemetry,
) -> Result<(), ProcessorError> {
    // The registry client is built beside the topics check and the group join: its HTTP
    // client's TLS set-up (the system's root certificates, whether or not the URL is https;
    // made once per process, `tls::client_builder`, and started by the binary before
    // anything else, `tls::prepare`) takes 45 to 70 ms of CPU, the check and the join
    // mostly wait for the broker.
    let t = &config.topics;
    let avro = t.input_format == Format::Avro || t.output_format == Format::Avro;
    let registry_config = config.schema_registry.clone();
    let registry = std::thread::Builder::new()
        .name("registry-client".into())
        .spawn(move || {
            avro.then(|| RegistryClient::new(&registry_config))
                .transpose()
        })
        .map_err(|e| ProcessorError::Internal(format!("starting a thread: {e}")))?;
    let state_dir = StateDir::open(&config.state, &config.application.id)?;
    let registry = move || {
        registry
            .join()
            .map_err(|_| ProcessorError::Internal("building the registry client panicked".into()))?
            .map_err(ProcessorError::from)
    };
    let threads = config.processing.threads.max(1);
    if threads == 1 {
        let stopped = || shutdown.load(Ordering::Relaxed);
        // The member joins the group before it needs the registry client.
        return member(
            config, registry, engine, runtime, &stopped, telemetry, &state_dir,
        );
    }
    let registry = registry()?;
    // Each member has an instance id of its own: its transactional id and client id.
    let members: Vec<Config> = (0..threads)
        .map(|k| {
            let mut member = config.clone();
            if k > 0 {
                member.application.instance_id = format!("{}-{k}", config.application.instance_id);
            }
            member
        })
        .collect();
    // One member's failure stops the others; the first error is the answer.
    let stop = AtomicBool::new(false);
    let stopped = || shutdown.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed);
    std::thread::scope(|scope| {
        let handles: Vec<_> = members
            .iter()
            .enumerate()
            .map(|(k, member_config)| {
                let (registry, engine, runtime, state_dir, stop, stopped) = (
                    registry.clone(),
                    engine.clone(),
                    runtime.clone(),
                    &state_dir,
                    &stop,
                    &stopped,
                );
                std::thread::Builder::new()
                    .name(format!("processor-{k}"))
                    .spawn_scoped(scope, move || {
                        let result = member(
                            member_config,
                            move || Ok(registry),
                            engine,
                            runtime,
                            stopped,
                            telemetry,
                            state_dir,
                        );
                        if result.is_err() {
                            stop.store(true, Ordering::Relaxed);
                        }
                        result
                    })
            })
            .collect();
        let mut first = Ok(());
        for handle in handles {
            let result = match handle {
                Ok(handle) => handle.join().unwrap_or_else(|_| {
                    stop.store(true, Ordering::Relaxed);
                    Err(ProcessorError::Internal(
                        "a processing thread panicked".into(),
                    ))
                }),
                Err(error) => {
                    stop.store(true, Ordering::Relaxed);
                    Err(ProcessorError::Internal(format!(
                        "starting a processing thread: {error}"
                    )))
                }
            };
            if first.is_ok() {
                first = result;
            }
        }
        first
    })
}

/// One member of the consumer group: polls, restores, processes and commits until
/// `shutdown` is set.
fn member(
    config: &Config,
    registry: impl FnOnce() -> Result<Option<RegistryClient>, ProcessorError> + Send,
    engine: Engine,
    runtime: tokio::runtime::Handle,
    stopped: &(dyn Fn() -> bool + Sync),
    telemetry: &Telemetry,
    state_dir: &StateDir,
) -> Result<(), ProcessorError> {
    let t = &config.topics;
    let outputs = Outputs {
        changes: t.changes.clone(),
        status: t.status.clone(),
        changelog: config.changelog_topic(),
        dead_letters: config.dead_letter_topic(),
    };
    let producer: BaseProducer<Deliveries> =
        client_config(config, Role::TransactionalProducer).create_with_context(Deliveries::new())?;
    // The group assigns the first input topic's partitions; the follower consumes the same
    // partitions of the others (see `processor::core::Inputs`).
    let follower: Option<Arc<BaseConsumer>> = if t.inputs.len() > 1 {
        let follower: BaseConsumer = client_config(config, Role::FollowerConsumer).create()?;
        // The followed topics' leaders, known before their partitions are assigned: else
        // the fetcher learns them from librdkafka's next periodic metadata refresh, and
        // the partitions wait for it (measured: half a second after the assignment).
        for topic in &t.inputs[1..] {
            if let Err(error) = follower.fetch_metadata(Some(topic), METADATA_WAIT) {
                warn!(topic, %error, "reading a followed topic's metadata failed; its partitions start once librdkafka refreshes it");
            }
        }
        Some(Arc::new(follower))
    } else {
        None
    };
    let consumer: BaseConsumer<RebalanceContext> = client_config(config, Role::GroupConsumer)
        .create_with_context(RebalanceContext {
            core: OnceLock::new(),
            pending: Mutex::new(Vec::new()),
            paused: Mutex::new(HashSet::new()),
            prefetch: usize::from(config.state.restore_prefetch_partitions.max(1)),
            health: telemetry.health.clone(),
            metrics: telemetry.metrics.clone(),
            follower: follower.clone(),
        })?;
    // The topics are checked before the member joins, on its own connection.
    let partitions = topics::check(
        config,
        &topics::partitions_of(&consumer, &topics::checked(config))?,
    )?;
    telemetry.orders.set_partition_count(partitions);
    // The group join, the fencing, the registry client's TLS set-up, the schemas'
    // registration, the input's writer schema and the first assignment's stores go on at
    // once, each mostly a wait (measured: the join 20 to 45 ms, the fencing 15 to 30 ms,
    // the registry client ready 25 to 40 ms after the topics check, the registrations 15
    // to 30 ms, the input's schema 14 ms, six new stores 31 ms; the member used to
    // subscribe once the schemas were registered and fence after that, and to learn the
    // input's schema after the registrations and open the stores after both).
    consumer.subscribe(&[t.inputs[0].as_str()])?;
    let (fenced, prepared, served, opened) = std::thread::scope(|scope| {
        // Fences any earlier incarnation of this instance and aborts its open transaction.
        let fencing = scope.spawn(|| txn::init_transactions(&producer, TXN_TIMEOUT));
        let preparing = scope.spawn(|| {
            let registry = registry()?;
            let decoder = EventDecoder::new(t.input_format, registry.clone(), runtime.clone())?;
            let encoders = std::thread::scope(|inner| {
                let learning = inner.spawn(|| decoder.learn_latest(&t.inputs));
                let encoders = encoders(t, registry.as_ref(), &runtime);
                joined(learning);
                encoders
            });
            let (changes, views) = encoders?;
            Ok::<_, ProcessorError>((changes, views, decoder))
        });
        // Meanwhile this thread serves the group's events: the assignment, and with it
        // librdkafka's lookup of where each partition starts (100 ms at least for a new
        // group) and its first fetch, begins as the join completes instead of once both of
        // the above are done. The records wait in their partitions' queues until restored;
        // their stores are opened as soon as they are assigned. Not with several members in
        // the process: a partition revoked from one before its restore may go to another at
        // once, whose store would still be open (locked) in the first.
        let open_ahead = config.processing.threads <= 1;
        let mut opening = None;
        let served = serve_group_until(
            &consumer,
            || fencing.is_finished() && preparing.is_finished(),
            || {
                if !open_ahead || opening.is_some() {
                    return;
                }
                let assigned: Vec<i32> = lock(&consumer.context().pending)
                    .iter()
                    .map(|(_, partition)| *partition)
                    .collect();
                if !assigned.is_empty() {
                    opening = Some(scope.spawn(move || {
                        let stores = state_dir.open_partitions(&assigned);
                        assigned.into_iter().zip(stores).collect::<OpenedStores>()
                    }));
                }
            },
        );
        let opened = opening.map(joined).unwrap_or_default();
        (joined(fencing), joined(preparing), served, opened)
    });
    fenced?;
    let (changes, views, decoder) = prepared?;
    served?;

    let settings = Settings {
        inputs: t.inputs.clone(),
        commit_interval: Duration::from_millis(config.processing.commit_interval_ms),
        finished_retention_ms: i64::try_from(config.state.finished_retention_ms)
            .unwrap_or(i64::MAX),
        write_out_after: config.processing.write_out_after_events as usize,
    };
    // SAFETY: `Shared` declares `topics` before `producer`, so drops them first.
    let topics = unsafe { OutputTopics::new(&producer, &outputs)? };
    producer.context().changelog_is(&topics.changelog);
    let shared = Shared {
        engine,
        topics,
        producer,
        decoder,
        changes,
        views,
        outputs,
        settings,
        metrics: telemetry.metrics.clone(),
        orders: telemetry.orders.clone(),
    };
    let workers = config.processing.workers();
    let core = Arc::new(Mutex::new(Core::new(
        shared,
        workers,
        telemetry.health.clone(),
    )?));
    if consumer.context().core.set(core.clone()).is_err() {
        return Err(ProcessorError::Internal("the core was set twice".into()));
    }
    let changelog = config.changelog_topic();
    let restorer = Restorer::new(
        &client_config(config, Role::AssignedConsumer),
        &changelog,
        -1,
    )?;
    info!(inputs = ?t.inputs, group = %config.application.id, transactional_id = %config.transactional_id(), workers, "processing");

    let inputs = Inputs {
        group: &consumer,
        follower: follower.as_deref(),
    };
    let stores = Stores {
        dir: state_dir,
        ahead: opened,
    };
    let result = process_until(&inputs, &core, stores, &restorer, config, stopped);
    {
        let mut core = lock(&core);
        let finished = match &result {
            Ok(()) => core.commit(&inputs).map(|_| ()),
            Err(_) => core.abort_open(&inputs),
        };
        if let Err(error) = finished {
            warn!(%error, "finishing the last transaction failed");
        }
        for partition in core.partitions() {
            core.close_task(partition);
        }
    }
    consumer.unsubscribe();
    info!(ok = result.is_ok(), "processor stopped");
    result
}

/// The encoders of the change records and of the order views, their schemas registered at
/// once: each is a round trip to the registry (18 to 30 ms measured against the local stack).
fn encoders(
    t: &crate::config::TopicsConfig,
    registry: Option<&RegistryClient>,
    runtime: &tokio::runtime::Handle,
) -> Result<(RecordEncoder, RecordEncoder), ProcessorError> {
    std::thread::scope(|scope| {
        let views =
            scope.spawn(|| RecordEncoder::for_views(t.output_format, &t.status, registry, runtime));
        let changes = RecordEncoder::for_changes(t.output_format, &t.changes, registry, runtime);
        Ok((changes?, joined(views)?))
    })
}

fn process_until(
    inputs: &Inputs<'_, RebalanceContext>,
    core: &Mutex<Core>,
    mut stores: Stores<'_>,
    restorer: &Restorer,
    config: &Config,
    stopped: &(dyn Fn() -> bool + Sync),
) -> Result<(), ProcessorError> {
    // The group's partitions, once restored, send their records to their shard's fetch
    // queue, and so do the follower's: each shard has a lane of each consumer, side by side
    // in `fetches` (see [`Lanes`]). The group member's own poll then serves its events
    // (rebalance callbacks run inside it, with the core unlocked) and gives a record only
    // in the moment before a partition is followed; the follower's gives none.
    let lanes = Lanes::of(inputs);
    let fetches = lanes.fetch_queues(inputs, lock(core).shard_count());
    let mut batches: Vec<Batch<'_>> = fetches.iter().map(|_| Batch::default()).collect();
    while !stopped() {
        let lead = inputs.group.poll(Duration::ZERO);
        restore_pending(inputs, core, &mut stores, restorer, config, &fetches, lanes)?;
        let mut core = lock(core);
        let mut registry_down = match lead {
            Some(message) => handle(&mut core, inputs, message)?,
            None => false,
        };
        // The follower's own queue: its errors and events. Its partitions are followed
        // before they are assigned, so their records never come this way.
        if let (false, Some(follower)) = (registry_down, inputs.follower) {
            if let Some(message) = follower.poll(Duration::ZERO) {
                registry_down = handle(&mut core, inputs, message)?;
            }
        }
        if !registry_down {
            fill(&fetches, &mut batches, POLL);
            registry_down = core.process_batches(inputs, &fetches, &mut batches, lanes)?;
        }
        if registry_down {
            drop(core);
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        if core.commit_due() {
            core.commit(inputs)?;
        }
    }
    Ok(())
}

/// How a shard's fetch queues lie in the list of all of them: `count` per shard, side by
/// side, the group's first (`fetches[k * count]`), then, with more than one input topic,
/// the follower's (`fetches[k * count + 1]`), which every followed topic's partitions of
/// the shard are sent to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lanes {
    follower: bool,
}

impl Lanes {
    fn of<C: rdkafka::consumer::ConsumerContext>(inputs: &Inputs<'_, C>) -> Lanes {
        Lanes {
            follower: inputs.follower.is_some(),
        }
    }

    /// The fetch queues of `shards` shards, laid out as described above.
    fn fetch_queues<'c, C: rdkafka::consumer::ConsumerContext>(
        self,
        inputs: &Inputs<'c, C>,
        shards: usize,
    ) -> Vec<FetchQueue<'c>> {
        let mut fetches = Vec::with_capacity(shards * self.count());
        for _ in 0..shards {
            fetches.push(FetchQueue::new(inputs.group));
            if let Some(follower) = inputs.follower {
                fetches.push(FetchQueue::new(follower));
            }
        }
        fetches
    }

    /// Fetch queues per shard.
    pub fn count(self) -> usize {
        1 + usize::from(self.follower)
    }

    /// Where shard `k`'s queue of the group's partitions is.
    fn group(self, k: usize) -> usize {
        k * self.count()
    }

    /// Where shard `k`'s queue of the follower's partitions is, if there is a follower.
    fn follower(self, k: usize) -> Option<usize> {
        self.follower.then(|| k * self.count() + 1)
    }
}

/// How long [`fill`] waits on one queue at a time when none has a record: the most a record
/// arriving on another queue waits for it.
const FILL_WAIT_SLICE: Duration = Duration::from_millis(5);

/// Fills `batches[k]` with what waits in `fetches[k]`, up to [`BATCH`] records each. When
/// no queue has any, waits up to `wait` for a first record, looking at each queue in turn.
/// The loop fills every shard's lanes before a turn; a shard fills its own during the turn.
fn fill<'c>(fetches: &[FetchQueue<'c>], batches: &mut [Batch<'c>], wait: Duration) {
    let mut any = false;
    for (fetch, batch) in fetches.iter().zip(batches.iter_mut()) {
        fetch.consume(Duration::ZERO, BATCH, batch);
        any |= !batch.is_empty();
    }
    if any || wait.is_zero() {
        return;
    }
    if let [fetch] = fetches {
        fetch.consume(wait, BATCH, &mut batches[0]);
        return;
    }
    let deadline = std::time::Instant::now() + wait;
    loop {
        for (k, fetch) in fetches.iter().enumerate() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            fetch.consume(FILL_WAIT_SLICE.min(left), BATCH, &mut batches[k]);
            if !batches[k].is_empty() {
                for (fetch, batch) in fetches.iter().zip(batches.iter_mut()).skip(k + 1) {
                    fetch.consume(Duration::ZERO, BATCH, batch);
                }
                return;
            }
        }
    }
}

/// Processes one polled record. True when the schema registry could not be reached: the
/// transaction is aborted then (its records are consumed again) and the caller waits.
fn handle<R: InputRecord>(
    core: &mut Core,
    inputs: &Inputs<'_, RebalanceContext>,
    message: KafkaResult<R>,
) -> Result<bool, ProcessorError> {
    match message {
        Err(error) => {
            warn!(%error, "consumer error");
            Ok(false)
        }
        Ok(message) => core.process(inputs, &message),
    }
}

/// A scoped thread's result; its panic goes on in the caller.
pub(crate) fn joined<T>(thread: std::thread::ScopedJoinHandle<'_, T>) -> T {
    thread
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Serves the group consumer's events (rebalance callbacks, errors) until `done`, which is
/// asked every couple of milliseconds, calling `between` after each poll. No record can
/// come: a newly assigned partition's records are held until it is restored (see
/// [`rebalance`]); should one come all the same, the member stops rather than skip it.
fn serve_group_until(
    consumer: &BaseConsumer<RebalanceContext>,
    done: impl Fn() -> bool,
    mut between: impl FnMut(),
) -> Result<(), ProcessorError> {
    while !done() {
        match consumer.poll(Duration::from_millis(2)) {
            None => {}
            Some(Err(error)) => warn!(%error, "consumer error"),
            Some(Ok(record)) => return Err(shard::unrestored(record.topic(), record.partition())),
        }
        between();
    }
    Ok(())
}

/// Stores opened ahead of their partitions' restore, by partition (see [`member`]).
type OpenedStores = HashMap<i32, OpenedStore>;

/// The state directory, and the stores of the first assignment opened while the member
/// waited for its registry client and its fencing (see [`member`]).
struct Stores<'d> {
    dir: &'d StateDir,
    ahead: OpenedStores,
}

impl Stores<'_> {
    /// The stores of `partitions`, in their order: those opened ahead, and the others
    /// opened now, several at once ([`StateDir::open_partitions`]). Those opened ahead for
    /// partitions not asked for (revoked meanwhile) are closed.
    fn open(&mut self, partitions: &[i32]) -> Vec<OpenedStore> {
        let mut opened = std::mem::take(&mut self.ahead);
        let missing: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|partition| !opened.contains_key(partition))
            .collect();
        opened.extend(
            missing
                .iter()
                .copied()
                .zip(self.dir.open_partitions(&missing)),
        );
        partitions
            .iter()
            .map(|&partition| {
                // None only for a partition pending twice: opened again, which fails as
                // it always did (the store is open already).
                opened
                    .remove(&partition)
                    .unwrap_or_else(|| self.dir.open_partition(partition))
            })
            .collect()
    }
}

/// How long a partition's restore is tried again after retriable errors (a changelog created
/// a moment ago whose leader the broker does not know yet, a broker restarting) before the
/// instance gives up and stops.
const RESTORE_RETRY_FOR: Duration = Duration::from_secs(60);

/// The most the watermarks of a rebalance's partitions are waited for at once.
const WATERMARKS_WAIT: Duration = Duration::from_secs(5);

/// The wait after a first retriable restore error; it doubles, up to 5 s.
const RESTORE_RETRY_FIRST_WAIT: Duration = Duration::from_millis(200);

/// Runs `restore` until it succeeds, fails for good, or retriable failures have gone on for
/// about `budget`. A restore resumes from the store's checkpoint, so a new attempt redoes at
/// most the batch that failed.
fn retry_restore<T>(
    budget: Duration,
    first_wait: Duration,
    mut restore: impl FnMut() -> Result<T, RestoreError>,
) -> Result<T, RestoreError> {
    let started = std::time::Instant::now();
    let mut wait = first_wait;
    loop {
        match restore() {
            Err(error) if error.is_retriable() && started.elapsed() + wait < budget => {
                warn!(%error, ?wait, "restore failed; trying again");
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            result => return result,
        }
    }
}

/// Restores the stores of newly assigned partitions, one after the other (resuming those
/// paused at their assignment as their restore comes within
/// `state.restore_prefetch_partitions`), then has their records (those held meanwhile too)
/// sent to their shard's fetch queue, and assigns the follower the same partitions of the
/// other input topics from the group's committed offsets, their records sent to the
/// shard's follower lane from the start.
fn restore_pending(
    inputs: &Inputs<'_, RebalanceContext>,
    core: &Mutex<Core>,
    stores: &mut Stores<'_>,
    restorer: &Restorer,
    config: &Config,
    fetches: &[FetchQueue<'_>],
    lanes: Lanes,
) -> Result<(), ProcessorError> {
    let pending = std::mem::take(&mut *lock(&inputs.group.context().pending));
    if pending.is_empty() {
        // Any store opened ahead is of a partition revoked before its restore.
        stores.ahead.clear();
        return Ok(());
    }
    let (metrics, health, orders) = {
        let core = lock(core);
        (
            core.shared.metrics.clone(),
            core.health.clone(),
            core.shared.orders.clone(),
        )
    };
    let followed_topics = match inputs.follower {
        Some(_) => &config.topics.inputs[1..],
        None => &[][..],
    };
    // The previous owners' last transactions must be complete before their changelog is
    // read: a read_committed consumer fetches committed offsets with require_stable
    // (KIP-447), which waits for exactly that. One request for every newly assigned
    // partition; the follower starts from these offsets too.
    let mut all = TopicPartitionList::new();
    for (topic, partition) in &pending {
        health.partition_restoring(*partition);
        all.add_partition(topic, *partition);
        for other in followed_topics {
            all.add_partition(other, *partition);
        }
    }
    let committed = inputs.group.committed_offsets(all, TXN_TIMEOUT)?;
    let changelog = config.changelog_topic();
    let partitions: Vec<i32> = pending.iter().map(|(_, partition)| *partition).collect();
    let stores = stores.open(&partitions);
    // Every partition's watermarks in one go; a restore that has none (the changelog's
    // leader unknown for a few seconds) or is retried reads its own, with the full budget.
    let wait = Duration::from_millis(config.state.restore_stall_timeout_ms).min(WATERMARKS_WAIT);
    let mut watermarks = restorer.watermarks(&changelog, &partitions, wait);
    // The followed topics' partitions of the restored ones, from where they start.
    let mut follow = TopicPartitionList::new();
    let prefetch = inputs.group.context().prefetch;
    for (index, ((topic, partition), store)) in pending.iter().zip(stores).enumerate() {
        // The partitions whose restore is now within reach are fetched from here on.
        let near = &pending[index..pending.len().min(index + prefetch)];
        let due = inputs.group.context().take_paused(|p| near.contains(p));
        if due.count() > 0 {
            inputs.group.resume(&due)?;
        }
        let (topic, partition) = (topic.as_str(), *partition);
        let (mut store, opened) = store?;
        let mut known = watermarks.remove(&partition);
        let outcome = retry_restore(RESTORE_RETRY_FOR, RESTORE_RETRY_FIRST_WAIT, || {
            let outcome = restorer.restore_within(
                &mut store,
                &changelog,
                partition,
                known.take(),
                &config.state,
                &mut |progress| {
                    metrics.restore_progress(&progress);
                    health.heartbeat(); // a long restore is progress, not a hang
                },
            );
            metrics.restore_finished(partition, outcome.as_ref());
            health.heartbeat();
            outcome
        })?;
        debug!(
            partition,
            ?opened,
            applied = outcome.applied,
            "partition restored"
        );
        orders.serve(partition, store.reader());
        health.partition_ready(partition);
        let task = Task::new(store, config.processing.kept_orders as usize)?;
        let shard = lock(core).add_task(partition, task);
        let lane = |at: Option<usize>| {
            at.and_then(|at| fetches.get(at)).ok_or_else(|| {
                ProcessorError::Internal(format!("shard {shard} has no such fetch queue"))
            })
        };
        // With the records fetched while it was restored.
        lane(Some(lanes.group(shard)))?.follow(topic, partition)?;
        for other in followed_topics {
            let start = match committed
                .find_partition(other, partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(next)) => Offset::Offset(next),
                // Nothing committed yet: where the group member would start.
                _ => Offset::Beginning,
            };
            follow.add_partition_offset(other, partition, start)?;
            // Before the assignment, so that no record goes to the follower's own queue
            // first: a forwarding set by the application stays when the fetcher starts.
            lane(lanes.follower(shard))?.follow(other, partition)?;
        }
    }
    // In one call, so that the fetcher starts them together, in one offset lookup and one
    // fetch, rather than adding each to the requests in flight for the ones before it.
    if let (Some(follower), true) = (inputs.follower, follow.count() > 0) {
        follower.incremental_assign(&follow)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(retriable: bool) -> RestoreError {
        if retriable {
            RestoreError::Stalled {
                topic: "c".into(),
                partition: 0,
                offset: 1,
                end_offset: 2,
                waited: Duration::from_secs(1),
            }
        } else {
            RestoreError::KeylessRecord {
                topic: "c".into(),
                partition: 0,
                offset: 1,
            }
        }
    }

    #[test]
    fn a_restore_is_tried_again_only_after_retriable_errors_and_within_its_budget() {
        let budget = Duration::from_secs(5);
        let wait = Duration::from_millis(1);
        // Retriable twice, then done.
        let mut attempts = 0;
        let done = retry_restore(budget, wait, || {
            attempts += 1;
            if attempts < 3 {
                Err(failure(true))
            } else {
                Ok(attempts)
            }
        });
        assert_eq!(done.ok(), Some(3));

        // Not retriable: the first error is the answer.
        let mut attempts = 0;
        let failed = retry_restore(budget, wait, || {
            attempts += 1;
            Err::<(), _>(failure(false))
        });
        assert!(matches!(failed, Err(RestoreError::KeylessRecord { .. })));
        assert_eq!(attempts, 1);

        // Retriable for ever: given up once the budget is spent.
        let started = std::time::Instant::now();
        let mut attempts = 0;
        let failed = retry_restore(Duration::from_millis(50), wait, || {
            attempts += 1;
            Err::<(), _>(failure(true))
        });
        assert!(matches!(failed, Err(RestoreError::Stalled { .. })));
        assert!(attempts > 1, "tried once only");
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn stores_opened_ahead_are_used_once_and_the_others_closed() {
        use crate::state::{Opened, PartitionStore, StateConfig, StoreBatch};

        let root = tempfile::tempdir().unwrap();
        let config = StateConfig {
            dir: root.path().to_owned(),
            block_cache_bytes: 1 << 20,
            ..StateConfig::default()
        };
        let dir = StateDir::open(&config, "app").unwrap();
        // Partitions 0 and 1 opened ahead; 1 is revoked before its restore, 2 was not
        // opened ahead.
        let mut ahead: OpenedStores = [0, 1]
            .into_iter()
            .zip(dir.open_partitions(&[0, 1]))
            .collect();
        let (store, _) = ahead.get_mut(&0).unwrap().as_mut().unwrap();
        store
            .write(StoreBatch {
                puts: vec![(b"o-1".to_vec(), Some(b"v".to_vec()))],
                checkpoint: Some(7),
            })
            .unwrap();
        let mut stores = Stores { dir: &dir, ahead };
        let opened = stores.open(&[2, 0]);
        let mut opened = opened.into_iter().map(Result::unwrap);
        let (two, how) = opened.next().unwrap();
        assert_eq!(how, Opened::Fresh);
        let (zero, _) = opened.next().unwrap();
        assert_eq!(
            zero.get(b"o-1").unwrap().as_deref(),
            Some(&b"v"[..]),
            "the same store"
        );
        assert!(stores.ahead.is_empty());
        // Partition 1's store was closed: it opens again, and so do 0 and 2 once closed.
        let (one, _) = dir.open_partition(1).unwrap();
        assert!(dir.open_partition(0).is_err(), "0 is still open, in use");
        for store in [zero, one, two] {
            store.close().unwrap();
        }
        assert_eq!(
            dir.open_partition(0).unwrap().1,
            Opened::Existing {
                checkpoint: Some(7)
            }
        );
    }
}
