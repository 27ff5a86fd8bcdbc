//! The state layer: each input partition's order graphs, kept in a store that survives a
//! restart and can be rebuilt from the changelog topic when it does not.
//!
//! - [`PartitionStore`]: the small trait the processor uses. Values are
//!   [`engine::codec`](crate::engine::codec) bytes keyed by order id, plus the changelog
//!   position (checkpoint) they reflect, written together in one atomic [`StoreBatch`].
//! - [`MemoryStore`]: the in-memory model of the trait, for tests and as the reference the
//!   RocksDB store is checked against.
//! - [`RocksStore`]: one RocksDB per partition, in its own directory, so that partitions move
//!   between instances independently.
//! - [`StateDir`]: `<state.dir>/<application.id>/`, locked by one instance, with one
//!   `partition-<n>` directory per partition; opens a partition's store, and wipes one that is
//!   damaged so that it is restored from the start.
//! - [`changelog`]: restore of a store from its changelog partition, from the store's
//!   checkpoint to the end.
//!
//! The changelog topic is the source of truth; a store is a cache of it that saves a full
//! restore on restart. That is why the RocksDB store writes without a WAL (see
//! [`rocks`](self::rocks)).

pub mod changelog;
mod dir;
mod memory;
mod rocks;
#[cfg(test)]
mod suite;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use changelog::{
    restore, restore_with, RestoreError, RestoreOutcome, RestoreProgress, Restorer,
};
pub use dir::{Opened, OpenedStore, StateDir};
pub use memory::MemoryStore;
pub use rocks::{RocksOptions, RocksStore, StoreReader};

/// One input partition's order graphs (values are `engine::codec` bytes, keys are order ids),
/// plus the changelog position they reflect.
pub trait PartitionStore: Send {
    /// The value stored under `key`, if any.
    ///
    /// Errors: [`StoreError`] when the store cannot be read (I/O, corruption).
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Applies every put/delete of the batch and its checkpoint atomically: after a crash the
    /// store holds either all of it or none of it. Within a batch a later put of the same key
    /// wins. A batch without a checkpoint leaves the checkpoint as it was.
    ///
    /// Errors: [`StoreError`] when the write fails; nothing of the batch is applied then.
    fn write(&mut self, batch: StoreBatch) -> Result<(), StoreError>;

    /// The offset of the next changelog record to apply (Kafka's committed-offset convention:
    /// last applied offset + 1); None when nothing was ever applied.
    ///
    /// Errors: [`StoreError`] when it cannot be read, or is not a valid checkpoint
    /// ([`StoreError::is_corruption`]).
    fn checkpoint(&self) -> Result<Option<i64>, StoreError>;

    /// Visits every (key, value) whose key is at least `from`, in key order, until the
    /// visitor returns false (retention sweeps, tests). `&[]` visits everything.
    ///
    /// Errors: [`StoreError`] when reading fails part way; the visitor may have seen some
    /// entries by then.
    fn scan(
        &self,
        from: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError>;

    /// Removes every entry and the checkpoint, atomically: the store is as if new. Used when
    /// the changelog no longer matches the store (restore from the beginning).
    ///
    /// Errors: [`StoreError`] when the write fails; the store is unchanged then.
    fn clear(&mut self) -> Result<(), StoreError>;

    /// Approximate size on disk or in memory, for the state-size metric.
    fn approximate_bytes(&self) -> u64;
}

/// Changes to a store, applied together with the changelog position they bring it to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreBatch {
    /// `(key, Some(value))` puts and `(key, None)` deletes. The entries of one key apply in
    /// the order given; different keys in any order.
    pub puts: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// The new checkpoint (next changelog offset to apply); None leaves it unchanged.
    pub checkpoint: Option<i64>,
}

impl StoreBatch {
    pub fn new() -> StoreBatch {
        StoreBatch::default()
    }

    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut StoreBatch {
        self.puts.push((key.into(), Some(value.into())));
        self
    }

    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut StoreBatch {
        self.puts.push((key.into(), None));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.checkpoint.is_none()
    }
}

/// Why a store operation failed.
///
/// Classified like rdkafka's errors: [`is_corruption`](StoreError::is_corruption) tells the
/// caller to wipe the store and restore it from the changelog;
/// [`is_retriable`](StoreError::is_retriable) that the same call may succeed later.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB refused an operation on the store at `path`.
    #[error("RocksDB {op} failed for {path}: {source}")]
    Rocks {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    /// A file system operation on the state directory failed.
    #[error("state directory {path}: {op} failed: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another instance (or another `StateDir` in this process) holds the directory's lock.
    #[error(
        "state directory {path} is in use by another instance (its lock file is held); \
         give each instance its own state.dir or application.id"
    )]
    Locked { path: PathBuf },
    /// The store opened but holds something this code did not write (a bad checkpoint, an
    /// unknown layout).
    #[error("store {path} is damaged: {what}")]
    Damaged { path: PathBuf, what: String },
}

impl StoreError {
    /// The store's files are damaged or not ours: wipe it and restore from the changelog.
    pub fn is_corruption(&self) -> bool {
        match self {
            StoreError::Rocks { source, .. } => {
                matches!(source.kind(), rocksdb::ErrorKind::Corruption)
            }
            StoreError::Damaged { .. } => true,
            StoreError::Io { .. } | StoreError::Locked { .. } => false,
        }
    }

    /// A transient condition: the same call may succeed if tried again later (another
    /// instance still releasing the directory, RocksDB busy).
    pub fn is_retriable(&self) -> bool {
        match self {
            StoreError::Rocks { source, .. } => matches!(
                source.kind(),
                rocksdb::ErrorKind::Busy
                    | rocksdb::ErrorKind::TryAgain
                    | rocksdb::ErrorKind::TimedOut
                    | rocksdb::ErrorKind::Incomplete
            ),
            StoreError::Locked { .. } => true,
            StoreError::Io { .. } | StoreError::Damaged { .. } => false,
        }
    }
}

/// Where state lives and how much memory RocksDB may use. Part of the service's config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// The state directory; each application id gets a subdirectory of it. Default `state`.
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// The RocksDB block cache shared by every partition of this instance, in bytes, so that
    /// memory does not grow with the number of partitions. Default 64 MiB.
    #[serde(default = "default_block_cache_bytes")]
    pub block_cache_bytes: usize,
    /// The most one partition's memtable holds before RocksDB flushes it, in bytes. Each
    /// flush writes a file that compactions then rewrite, so fewer, larger flushes cost less
    /// CPU; unflushed data costs a longer restore after a crash (the WAL is off: it is
    /// replayed from the changelog, about 30,000 records per 32 MiB). Default 32 MiB.
    #[serde(default = "default_write_buffer_bytes")]
    pub write_buffer_bytes: usize,
    /// The most all of this instance's memtables hold together, in bytes, however many
    /// partitions it has: past it, the largest memtable of the store being written is
    /// flushed early. Default 256 MiB.
    #[serde(default = "default_write_buffer_total_bytes")]
    pub write_buffer_total_bytes: usize,
    /// How many changelog records a restore applies per store write. Default 1000.
    #[serde(default = "default_restore_batch_records")]
    pub restore_batch_records: usize,
    /// A restore fails when the broker sends neither a record nor the end of the partition
    /// for this long, in milliseconds. Default 30000.
    #[serde(default = "default_restore_stall_timeout_ms")]
    pub restore_stall_timeout_ms: u64,
    /// How many of a member's newly assigned partitions have their input fetched while
    /// they wait for their restore (held in each partition's own queue, up to librdkafka's
    /// `queued.min.messages` or `queued.max.messages.kbytes` each). The member restores its
    /// new partitions one after the other; the rest wait paused until their restore is
    /// this near, so that a member given many partitions prefetches for a few at a time.
    /// At least 1. Default 4.
    #[serde(default = "default_restore_prefetch_partitions")]
    pub restore_prefetch_partitions: u16,
    /// A finished order (its status is a `final` milestone: delivered, cancelled) leaves
    /// state, with a tombstone in the changelog, once its partition's stream time (latest
    /// `occurred_at` processed) is this far past the order's last event. Default 7 days.
    #[serde(default = "default_finished_retention_ms")]
    pub finished_retention_ms: u64,
}

fn default_dir() -> PathBuf {
    PathBuf::from("state")
}
fn default_block_cache_bytes() -> usize {
    64 << 20
}
fn default_write_buffer_bytes() -> usize {
    32 << 20
}
fn default_write_buffer_total_bytes() -> usize {
    256 << 20
}
fn default_restore_batch_records() -> usize {
    1000
}
fn default_restore_stall_timeout_ms() -> u64 {
    30_000
}
fn default_restore_prefetch_partitions() -> u16 {
    4
}
fn default_finished_retention_ms() -> u64 {
    7 * 24 * 3600 * 1000
}

impl Default for StateConfig {
    fn default() -> StateConfig {
        StateConfig {
            dir: default_dir(),
            block_cache_bytes: default_block_cache_bytes(),
            write_buffer_bytes: default_write_buffer_bytes(),
            write_buffer_total_bytes: default_write_buffer_total_bytes(),
            restore_batch_records: default_restore_batch_records(),
            restore_stall_timeout_ms: default_restore_stall_timeout_ms(),
            restore_prefetch_partitions: default_restore_prefetch_partitions(),
            finished_retention_ms: default_finished_retention_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_fill_missing_fields_and_unknown_fields_are_refused() {
        let config: StateConfig = toml::from_str("dir = '/var/lib/milestones'").unwrap();
        assert_eq!(config.dir, PathBuf::from("/var/lib/milestones"));
        assert_eq!(config.block_cache_bytes, 64 << 20);
        assert_eq!(config.restore_batch_records, 1000);

        let refused = toml::from_str::<StateConfig>("block_cache = 1").unwrap_err();
        assert!(refused.to_string().contains("unknown field"), "{refused}");
    }
}
