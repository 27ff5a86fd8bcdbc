//! Restore of a partition's store from its changelog partition.
//!
//! The changelog topic (compacted, keyed by order id, value the graph's codec bytes, a null
//! value for a deleted order) is the source of truth; the store reflects it up to its
//! checkpoint. [`restore`] reads from the checkpoint (or the beginning) to the end of the
//! partition and applies what it reads in batches, each batch with its checkpoint, so that a
//! restore interrupted anywhere (an error, a crash) resumes where it stopped.
//!
//! The changelog is written by a transactional producer, so it holds records of aborted
//! transactions and control records (commit and abort markers). Reading it `read_committed`
//! skips both; because of the markers the last offset of the partition is often not a record
//! at all, so the end is known from the end-of-partition event rather than from a record at
//! the high watermark.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::{PartitionStore, StateConfig, StoreBatch, StoreError};

/// Where a restore stands; given to the progress callback after every batch and at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreProgress {
    pub partition: i32,
    /// Records applied so far by this restore (puts and deletes).
    pub applied: u64,
    /// The next changelog offset to apply: the store's checkpoint.
    pub offset: i64,
    /// Where the restore stops: the end of the partition (as `read_committed` sees it) when
    /// the restore began.
    pub end_offset: i64,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOutcome {
    /// Records applied (puts and deletes).
    pub applied: u64,
    /// The offset the restore started from: the store's checkpoint, or the beginning of the
    /// partition.
    pub start_offset: i64,
    /// The end of the partition when the restore began.
    pub end_offset: i64,
    /// The store's checkpoint after the restore (None: the changelog was empty and nothing
    /// was ever applied).
    pub checkpoint: Option<i64>,
    /// Set when the store had to be wiped and restored from the beginning, with why: its
    /// checkpoint lay outside the partition (the topic was recreated or truncated).
    pub wiped: Option<String>,
}

/// Why a restore failed. The store keeps what was applied, with its checkpoint: restoring
/// again resumes from there.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("restoring from {topic}/{partition}: {op} failed: {source}")]
    Kafka {
        topic: String,
        partition: i32,
        op: &'static str,
        /// Boxed: a `KafkaError` is large, and errors travel through every `Result`.
        #[source]
        source: Box<KafkaError>,
    },
    #[error("restoring from {topic}/{partition}: {source}")]
    Store {
        topic: String,
        partition: i32,
        #[source]
        source: StoreError,
    },
    #[error(
        "restoring from {topic}/{partition}: the broker sent neither a record nor the end of \
         the partition for {waited:?}, at offset {offset} of {end_offset}"
    )]
    Stalled {
        topic: String,
        partition: i32,
        offset: i64,
        end_offset: i64,
        waited: Duration,
    },
    #[error(
        "restoring from {topic}/{partition}: the record at offset {offset} has no key; \
         changelog records are keyed by order id (is something else writing to this topic?)"
    )]
    KeylessRecord {
        topic: String,
        partition: i32,
        offset: i64,
    },
}

impl RestoreError {
    /// Restoring again may succeed: the broker was unreachable or slow, or the store busy.
    pub fn is_retriable(&self) -> bool {
        match self {
            RestoreError::Kafka { source, .. } => !matches!(
                **source,
                KafkaError::ClientConfig(..)
                    | KafkaError::ClientCreation(_)
                    | KafkaError::MessageConsumptionFatal(_)
            ),
            RestoreError::Stalled { .. } => true,
            RestoreError::Store { source, .. } => source.is_retriable(),
            RestoreError::KeylessRecord { .. } => false,
        }
    }

    /// The store is damaged: wipe it (`StateDir::remove_partition`) and restore from the
    /// beginning.
    pub fn is_corruption(&self) -> bool {
        matches!(self, RestoreError::Store { source, .. } if source.is_corruption())
    }
}

/// Restores `store` from `partition` of the changelog `topic`, with the default batch size
/// and stall timeout of [`StateConfig`]; see [`restore_with`].
pub fn restore<S: PartitionStore + ?Sized>(
    store: &mut S,
    consumer_config: &ClientConfig,
    topic: &str,
    partition: i32,
    progress: &mut dyn FnMut(RestoreProgress),
) -> Result<RestoreOutcome, RestoreError> {
    restore_with(
        store,
        consumer_config,
        topic,
        partition,
        &StateConfig::default(),
        progress,
    )
}

/// Restores `store` from `partition` of the changelog `topic` with a consumer of its own;
/// see [`Restorer::restore`]. A processor restoring many partitions keeps one [`Restorer`]
/// instead: creating a client costs a connection and a metadata round trip per restore.
///
/// Errors: those of [`Restorer::new`] and [`Restorer::restore`].
pub fn restore_with<S: PartitionStore + ?Sized>(
    store: &mut S,
    consumer_config: &ClientConfig,
    topic: &str,
    partition: i32,
    config: &StateConfig,
    progress: &mut dyn FnMut(RestoreProgress),
) -> Result<RestoreOutcome, RestoreError> {
    Restorer::new(consumer_config, topic, partition)?
        .restore(store, topic, partition, config, progress)
}

/// A consumer for restores, assigned one changelog partition at a time and never in a
/// group: reused for every partition an instance restores.
pub struct Restorer {
    consumer: BaseConsumer<RestoreContext>,
}

impl Restorer {
    /// The restore consumer. `consumer_config` gives the broker address and security
    /// settings; the restorer overrides what it must (`read_committed`, no auto commit,
    /// partition EOF events).
    ///
    /// Errors: [`RestoreError::Kafka`] when the client cannot be created (a bad setting);
    /// `topic` and `partition` only name the restore in that error.
    pub fn new(
        consumer_config: &ClientConfig,
        topic: &str,
        partition: i32,
    ) -> Result<Restorer, RestoreError> {
        let consumer = restore_consumer_config(consumer_config)
            .create_with_context(RestoreContext)
            .map_err(|source| RestoreError::Kafka {
                topic: topic.to_owned(),
                partition,
                op: "creating the restore consumer",
                source: Box::new(source),
            })?;
        Ok(Restorer { consumer })
    }

    /// Restores `store` from `partition` of the changelog `topic`: from the store's
    /// checkpoint (or the beginning) to the end of the partition as it was when the restore
    /// began, in batches of `config.restore_batch_records` records, each written with its
    /// checkpoint. The partition is unassigned again afterwards.
    ///
    /// The end is the last stable offset when the restore begins: records of a transaction
    /// still open, or committed but whose commit marker the coordinator has not written yet,
    /// are not restored. The caller makes sure the previous owner's transactions are finished
    /// first (a group consumer fetching its committed offsets with `require_stable`, KIP-447,
    /// waits for exactly that), or restores again.
    ///
    /// A checkpoint outside the partition's offsets (the topic was recreated or truncated,
    /// or retention removed records the store never saw) cannot be trusted: the store is
    /// cleared and restored from the beginning, and [`RestoreOutcome::wiped`] says so.
    ///
    /// Errors: [`RestoreError::Kafka`] on any broker or client error,
    /// [`RestoreError::Stalled`] when the broker sends nothing for
    /// `config.restore_stall_timeout_ms`, [`RestoreError::Store`] when the store fails,
    /// [`RestoreError::KeylessRecord`] when a record has no key. Every wait is bounded: a
    /// restore fails rather than hangs.
    pub fn restore<S: PartitionStore + ?Sized>(
        &self,
        store: &mut S,
        topic: &str,
        partition: i32,
        config: &StateConfig,
        progress: &mut dyn FnMut(RestoreProgress),
    ) -> Result<RestoreOutcome, RestoreError> {
        self.restore_within(store, topic, partition, None, config, progress)
    }

    /// [`Restorer::restore`], with the partition's watermarks (log start, last stable
    /// offset) when they were just read for many partitions at once
    /// ([`Restorer::watermarks`]); `None` reads them first.
    pub fn restore_within<S: PartitionStore + ?Sized>(
        &self,
        store: &mut S,
        topic: &str,
        partition: i32,
        watermarks: Option<Watermarks>,
        config: &StateConfig,
        progress: &mut dyn FnMut(RestoreProgress),
    ) -> Result<RestoreOutcome, RestoreError> {
        let outcome = restore_partition(
            &self.consumer,
            store,
            topic,
            partition,
            watermarks,
            config,
            progress,
        );
        // Whatever happened, the next restore starts from a consumer that holds nothing.
        if let Err(error) = self.consumer.unassign() {
            tracing::warn!(%error, topic, partition, "unassigning the restore consumer");
        }
        outcome
    }

    /// The watermarks of `partitions` of the changelog `topic`, as a restore reads them
    /// (`read_committed`: the log start and the last stable offset), in two requests to
    /// each partition's leader, where a restore reads its own in two requests per
    /// partition, one partition after the other. A partition whose watermarks could not be
    /// read is left out: its restore reads them itself, and reports the error if there is
    /// one.
    pub fn watermarks(
        &self,
        topic: &str,
        partitions: &[i32],
        wait: Duration,
    ) -> HashMap<i32, Watermarks> {
        let ask = |at| {
            crate::kafka::list_offsets(
                &self.consumer,
                partitions.iter().map(|&partition| (topic, partition)),
                at,
                wait,
            )
            .into_iter()
            .map(|((_, partition), offset)| (partition, offset))
            .collect::<HashMap<i32, i64>>()
        };
        let low = ask(Offset::Beginning);
        if low.is_empty() {
            return HashMap::new();
        }
        let high = ask(Offset::End);
        low.into_iter()
            .filter_map(|(partition, low)| Some((partition, (low, *high.get(&partition)?))))
            .collect()
    }
}

/// A changelog partition's watermarks under `read_committed`: the log start offset and the
/// last stable offset.
pub type Watermarks = (i64, i64);

fn restore_partition<S: PartitionStore + ?Sized>(
    consumer: &BaseConsumer<RestoreContext>,
    store: &mut S,
    topic: &str,
    partition: i32,
    watermarks: Option<Watermarks>,
    config: &StateConfig,
    progress: &mut dyn FnMut(RestoreProgress),
) -> Result<RestoreOutcome, RestoreError> {
    let kafka = |op, source| RestoreError::Kafka {
        topic: topic.to_owned(),
        partition,
        op,
        source: Box::new(source),
    };
    let store_error = |source| RestoreError::Store {
        topic: topic.to_owned(),
        partition,
        source,
    };
    let wait = Duration::from_millis(config.restore_stall_timeout_ms);

    // Under read_committed these are the log start and the last stable offset.
    let (low, high) = match watermarks {
        Some(known) => known,
        None => consumer
            .fetch_watermarks(topic, partition, wait)
            .map_err(|e| kafka("reading the watermarks", e))?,
    };

    let mut wiped = None;
    let mut checkpoint = store.checkpoint().map_err(store_error)?;
    if let Some(c) = checkpoint {
        if c > high || c < low {
            let reason = format!(
                "the store's checkpoint {c} is outside the changelog's offsets {low}..{high} \
                 (topic recreated or truncated): restoring from the beginning"
            );
            tracing::warn!(topic, partition, checkpoint = c, low, high, "{reason}");
            store.clear().map_err(store_error)?;
            checkpoint = None;
            wiped = Some(reason);
        }
    }
    let start = checkpoint.unwrap_or(low);
    let mut outcome = RestoreOutcome {
        applied: 0,
        start_offset: start,
        end_offset: high,
        checkpoint,
        wiped,
    };
    if start >= high {
        progress(RestoreProgress {
            partition,
            applied: 0,
            offset: start,
            end_offset: high,
        });
        return Ok(outcome);
    }

    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(start))
        .map_err(|e| kafka("assigning the partition", e))?;
    consumer
        .assign(&assignment)
        .map_err(|e| kafka("assigning the partition", e))?;

    let batch_records = config.restore_batch_records.max(1);
    let mut batch = StoreBatch::new();
    let mut next = start;
    let mut flush = |batch: &mut StoreBatch, next: i64, outcome: &mut RestoreOutcome| {
        let applied = batch.puts.len() as u64;
        batch.checkpoint = Some(next);
        store.write(std::mem::take(batch)).map_err(store_error)?;
        outcome.applied += applied;
        outcome.checkpoint = Some(next);
        progress(RestoreProgress {
            partition,
            applied: outcome.applied,
            offset: next,
            end_offset: high,
        });
        Ok::<_, RestoreError>(())
    };
    loop {
        match consumer.poll(wait) {
            None => {
                return Err(RestoreError::Stalled {
                    topic: topic.to_owned(),
                    partition,
                    offset: next,
                    end_offset: high,
                    waited: wait,
                })
            }
            Some(Ok(record)) => {
                let offset = record.offset();
                let key = record.key().ok_or_else(|| RestoreError::KeylessRecord {
                    topic: topic.to_owned(),
                    partition,
                    offset,
                })?;
                batch
                    .puts
                    .push((key.to_vec(), record.payload().map(<[u8]>::to_vec)));
                next = offset + 1;
                if next >= high {
                    break;
                }
                if batch.puts.len() >= batch_records {
                    flush(&mut batch, next, &mut outcome)?;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {
                // Past the last record there may be only markers and aborted records, which
                // read_committed skips: the consumer's position is then beyond `next`, and
                // everything before it is applied.
                if let Some(position) = position(consumer, topic, partition) {
                    next = next.max(position);
                }
                break;
            }
            Some(Err(e)) => return Err(kafka("consuming", e)),
        }
    }
    flush(&mut batch, next, &mut outcome)?;
    Ok(outcome)
}

/// The caller's settings (broker, security), with what a restore needs on top.
fn restore_consumer_config(consumer_config: &ClientConfig) -> ClientConfig {
    let mut config = consumer_config.clone();
    // librdkafka's assign needs a group id, but assigning never joins the group and this
    // consumer never commits, so the caller's group (if any) is untouched.
    if config.get("group.id").is_none() {
        config.set("group.id", "order-milestones-restore");
    }
    config
        .remove("group.instance.id")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        // The end of a restore is an empty fetch at the end of the partition, which the
        // broker holds for fetch.wait.max.ms (500 ms by default) first: a store checkpointed
        // just before its last transaction's commit marker (the usual case after a
        // rebalance) took that long to restore nothing, once per partition. A fetch with
        // records in reach is answered at once whatever this is.
        .set("fetch.wait.max.ms", "10")
        // The start offset was checked against the watermarks; should the log still move
        // under us, fail (and restore again) rather than silently skip records.
        .set("auto.offset.reset", "error");
    config
}

/// The restore consumer's context: the end of the partition is how a restore knows it is
/// done, not an error worth a log line (librdkafka reports it as one).
struct RestoreContext;

impl ClientContext for RestoreContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::error!(%error, reason, "restore consumer error");
        }
    }
}

impl ConsumerContext for RestoreContext {}

fn position(consumer: &BaseConsumer<RestoreContext>, topic: &str, partition: i32) -> Option<i64> {
    let positions = consumer.position().ok()?;
    match positions.find_partition(topic, partition)?.offset() {
        Offset::Offset(offset) => Some(offset),
        _ => None,
    }
}
