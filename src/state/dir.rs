//! [`StateDir`]: the state directory of one instance, `<state.dir>/<application.id>/`, with
//! one `partition-<n>` RocksDB per input partition.
//!
//! ```text
//! <state.dir>/<application.id>/
//!     .lock           held (flock) by the instance using the directory
//!     partition-0/    a RocksStore
//!     partition-3/
//! ```

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::rocks::{RocksOptions, RocksStore};
use super::{PartitionStore, StateConfig, StoreError};

const LOCK_FILE: &str = ".lock";
const PARTITION_PREFIX: &str = "partition-";

/// The exclusive lock on a state directory; released when the last holder drops it.
pub(super) struct DirLock {
    /// `File::try_lock` (flock on Unix): the kernel releases it when the file is closed, also
    /// when the process dies, so a crashed instance never leaves the directory locked.
    _file: File,
}

/// A partition's store as [`StateDir::open_partition`] opened it, and how.
pub type OpenedStore = Result<(RocksStore, Opened), StoreError>;

/// What [`StateDir::open_partition`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The store was there; restore from its checkpoint (None: it was never written to).
    Existing { checkpoint: Option<i64> },
    /// There was no store: restore from the beginning.
    Fresh,
    /// The store was damaged (it failed to open, or held something this code did not write)
    /// and was deleted: it is empty now, restore from the beginning.
    Wiped { reason: String },
}

/// The state directory of this instance, locked for as long as it or any store it opened
/// lives, so that two instances never share one.
pub struct StateDir {
    path: PathBuf,
    options: RocksOptions,
    lock: Arc<DirLock>,
}

impl StateDir {
    /// Creates `<config.dir>/<application_id>/` if needed and locks it.
    ///
    /// Errors: [`StoreError::Locked`] when another instance holds it (retriable: a previous
    /// instance may still be shutting down); [`StoreError::Io`] when it cannot be created or
    /// `application_id` is not a plain directory name.
    pub fn open(config: &StateConfig, application_id: &str) -> Result<StateDir, StoreError> {
        if application_id.is_empty()
            || application_id == "."
            || application_id == ".."
            || application_id.contains(['/', '\\'])
        {
            return Err(StoreError::Io {
                op: "use application.id as a directory name",
                path: config.dir.join(application_id),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("application.id {application_id:?} is not a plain directory name"),
                ),
            });
        }
        let path = config.dir.join(application_id);
        std::fs::create_dir_all(&path).map_err(|source| StoreError::Io {
            op: "create",
            path: path.clone(),
            source,
        })?;
        let lock_path = path.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StoreError::Io {
                op: "open the lock file",
                path: lock_path.clone(),
                source,
            })?;
        // `File::try_lock` is stable since Rust 1.89 while Cargo.toml still says
        // rust-version 1.88: the crate's MSRV has to move to 1.89 (asked of the lead).
        #[allow(clippy::incompatible_msrv)]
        let locked = file.try_lock();
        match locked {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(StoreError::Locked { path }),
            Err(TryLockError::Error(source)) => {
                return Err(StoreError::Io {
                    op: "lock",
                    path: lock_path,
                    source,
                })
            }
        }
        Ok(StateDir {
            path,
            options: RocksOptions::new(config),
            lock: Arc::new(DirLock { _file: file }),
        })
    }

    /// `<state.dir>/<application.id>/`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory of one partition's store.
    pub fn partition_path(&self, partition: i32) -> PathBuf {
        self.path.join(format!("{PARTITION_PREFIX}{partition}"))
    }

    /// Opens the store of `partition`, creating it if there is none. A store that fails to
    /// open because it is damaged, or that holds what this code did not write, is deleted and
    /// created again empty ([`Opened::Wiped`]), to be restored from the start of the
    /// changelog.
    ///
    /// Errors: [`StoreError`] when the store cannot be opened for another reason (I/O errors
    /// such as a full disk or too many open files are not damage: the store is kept), or when
    /// a wiped store cannot be created again.
    pub fn open_partition(&self, partition: i32) -> OpenedStore {
        let path = self.partition_path(partition);
        let existed = match std::fs::read_dir(&path) {
            Ok(mut entries) => entries.next().is_some(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(source) => {
                return Err(StoreError::Io {
                    op: "list",
                    path,
                    source,
                })
            }
        };
        let opened = RocksStore::open_locked(&path, &self.options, Some(self.lock.clone()))
            .and_then(|store| {
                let checkpoint = store.checkpoint()?;
                Ok((store, checkpoint))
            });
        match opened {
            Ok((store, checkpoint)) if existed => Ok((store, Opened::Existing { checkpoint })),
            Ok((store, _)) => Ok((store, Opened::Fresh)),
            Err(error) if is_damage(&error) => {
                let reason = error.to_string();
                tracing::warn!(
                    partition,
                    path = %path.display(),
                    %error,
                    "state store damaged: deleting it, it will be restored from the changelog"
                );
                self.remove_partition(partition)?;
                let store = RocksStore::open_locked(&path, &self.options, Some(self.lock.clone()))?;
                Ok((store, Opened::Wiped { reason }))
            }
            Err(error) => Err(error),
        }
    }

    /// Opens the stores of `partitions` as [`open_partition`](StateDir::open_partition) does,
    /// several at once: creating or opening a RocksDB is a few milliseconds of file-system
    /// work (files written and synced), and a rebalance hands an instance many partitions
    /// at a time. The results are in the order of `partitions`.
    pub fn open_partitions(&self, partitions: &[i32]) -> Vec<OpenedStore> {
        const THREADS: usize = 4;
        if partitions.len() <= 1 {
            return partitions.iter().map(|&p| self.open_partition(p)).collect();
        }
        let next = AtomicUsize::new(0);
        let mut opened: Vec<(usize, OpenedStore)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..THREADS.min(partitions.len()))
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(&partition) = partitions.get(i) else {
                                return done;
                            };
                            done.push((i, self.open_partition(partition)));
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|worker| {
                    worker
                        .join()
                        .unwrap_or_else(|e| std::panic::resume_unwind(e))
                })
                .collect()
        });
        opened.sort_by_key(|(i, _)| *i);
        opened.into_iter().map(|(_, result)| result).collect()
    }

    /// Deletes the store of `partition` (close it first), e.g. when the partition moved to
    /// another instance for good. Nothing to delete is not an error.
    ///
    /// Errors: [`StoreError::Io`] when the directory cannot be deleted.
    pub fn remove_partition(&self, partition: i32) -> Result<(), StoreError> {
        let path = self.partition_path(partition);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io {
                op: "delete",
                path,
                source,
            }),
        }
    }

    /// The partitions that have a store directory, in order (to clean up partitions no longer
    /// assigned).
    ///
    /// Errors: [`StoreError::Io`] when the directory cannot be listed.
    pub fn partitions(&self) -> Result<Vec<i32>, StoreError> {
        let io_error = |source| StoreError::Io {
            op: "list",
            path: self.path.clone(),
            source,
        };
        let mut partitions = Vec::new();
        for entry in std::fs::read_dir(&self.path).map_err(io_error)? {
            let name = entry.map_err(io_error)?.file_name();
            if let Some(n) = name
                .to_str()
                .and_then(|name| name.strip_prefix(PARTITION_PREFIX))
                .and_then(|n| n.parse().ok())
            {
                partitions.push(n);
            }
        }
        partitions.sort_unstable();
        Ok(partitions)
    }
}

/// Whether an open failure means the store's files are damaged (wipe and restore) rather than
/// the machine being in trouble (keep the store, report the error).
fn is_damage(error: &StoreError) -> bool {
    match error {
        StoreError::Rocks { source, .. } => matches!(
            source.kind(),
            rocksdb::ErrorKind::Corruption
                | rocksdb::ErrorKind::InvalidArgument
                | rocksdb::ErrorKind::NotFound
                | rocksdb::ErrorKind::NotSupported
        ),
        other => other.is_corruption(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StoreBatch;

    fn config(dir: &Path) -> StateConfig {
        StateConfig {
            dir: dir.to_owned(),
            block_cache_bytes: 1 << 20,
            ..StateConfig::default()
        }
    }

    #[test]
    fn a_second_instance_cannot_take_a_locked_directory_until_the_first_is_gone() {
        let root = tempfile::tempdir().unwrap();
        let first = StateDir::open(&config(root.path()), "app").unwrap();
        let (store, _) = first.open_partition(0).unwrap();
        let error = StateDir::open(&config(root.path()), "app").err().unwrap();
        assert!(matches!(error, StoreError::Locked { .. }), "{error}");
        assert!(error.is_retriable());
        // Another application id is another directory.
        StateDir::open(&config(root.path()), "other-app").unwrap();
        // The open store keeps the lock after its StateDir is gone.
        drop(first);
        assert!(StateDir::open(&config(root.path()), "app").is_err());
        store.close().unwrap();
        StateDir::open(&config(root.path()), "app").unwrap();
    }

    #[test]
    fn partitions_open_fresh_then_existing_with_their_checkpoint() {
        let root = tempfile::tempdir().unwrap();
        let dir = StateDir::open(&config(root.path()), "app").unwrap();
        let (mut store, opened) = dir.open_partition(3).unwrap();
        assert_eq!(opened, Opened::Fresh);
        store
            .write(StoreBatch {
                puts: vec![(b"o-1".to_vec(), Some(b"v".to_vec()))],
                checkpoint: Some(42),
            })
            .unwrap();
        store.close().unwrap();
        let (store, opened) = dir.open_partition(3).unwrap();
        assert_eq!(
            opened,
            Opened::Existing {
                checkpoint: Some(42)
            }
        );
        assert_eq!(store.get(b"o-1").unwrap().as_deref(), Some(&b"v"[..]));
        store.close().unwrap();
        dir.open_partition(11).unwrap().0.close().unwrap();
        assert_eq!(dir.partitions().unwrap(), [3, 11]);
        dir.remove_partition(3).unwrap();
        dir.remove_partition(3).unwrap();
        assert_eq!(dir.partitions().unwrap(), [11]);
    }

    #[test]
    fn several_partitions_open_at_once_each_as_alone_in_the_order_asked() {
        let root = tempfile::tempdir().unwrap();
        let dir = StateDir::open(&config(root.path()), "app").unwrap();
        for partition in [2, 7] {
            let (mut store, _) = dir.open_partition(partition).unwrap();
            store
                .write(StoreBatch {
                    puts: vec![(format!("o-{partition}").into_bytes(), Some(b"v".to_vec()))],
                    checkpoint: Some(i64::from(partition) * 10),
                })
                .unwrap();
            store.close().unwrap();
        }
        let partitions = [9, 7, 0, 2, 5, 1];
        let opened = dir.open_partitions(&partitions);
        assert_eq!(opened.len(), partitions.len());
        for (partition, result) in partitions.into_iter().zip(opened) {
            let (store, opened) = result.unwrap();
            match partition {
                2 | 7 => {
                    let checkpoint = Some(i64::from(partition) * 10);
                    assert_eq!(opened, Opened::Existing { checkpoint }, "{partition}");
                    let key = format!("o-{partition}");
                    assert_eq!(
                        store.get(key.as_bytes()).unwrap().as_deref(),
                        Some(&b"v"[..])
                    );
                }
                _ => assert_eq!(opened, Opened::Fresh, "{partition}"),
            }
            store.close().unwrap();
        }
        assert_eq!(dir.partitions().unwrap(), [0, 1, 2, 5, 7, 9]);
    }

    #[test]
    fn a_store_with_garbage_in_its_files_is_wiped_and_opens_empty() {
        let root = tempfile::tempdir().unwrap();
        let dir = StateDir::open(&config(root.path()), "app").unwrap();
        let (mut store, _) = dir.open_partition(0).unwrap();
        store
            .write(StoreBatch {
                puts: vec![(b"o-1".to_vec(), Some(b"v".to_vec()))],
                checkpoint: Some(1),
            })
            .unwrap();
        store.close().unwrap();
        for entry in std::fs::read_dir(dir.partition_path(0)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() && path.file_name().unwrap() != "LOCK" {
                std::fs::write(&path, b"garbage, not a RocksDB file").unwrap();
            }
        }
        let (store, opened) = dir.open_partition(0).unwrap();
        assert!(matches!(opened, Opened::Wiped { .. }), "{opened:?}");
        assert_eq!(store.checkpoint().unwrap(), None);
        assert_eq!(store.get(b"o-1").unwrap(), None);
    }

    #[test]
    fn an_application_id_that_is_not_a_directory_name_is_refused() {
        let root = tempfile::tempdir().unwrap();
        for id in ["", ".", "..", "a/b"] {
            assert!(StateDir::open(&config(root.path()), id).is_err(), "{id:?}");
        }
    }
}
