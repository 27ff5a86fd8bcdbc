//! [`RocksStore`]: one partition's order graphs in a RocksDB of its own.
//!
//! # Layout
//!
//! One column family holds everything, under a one-byte prefix:
//!
//! ```text
//! 0x00 "checkpoint"  -> next changelog offset, i64 big-endian
//! 0x00 "format"      -> layout version (1)
//! 0x01 <order id>    -> engine::codec bytes
//! ```
//!
//! The prefix keeps an order id from ever colliding with the checkpoint, whatever its bytes.
//!
//! # Why the WAL is off, and why that is safe
//!
//! The changelog topic is the source of truth and the checkpoint says how much of it the
//! store reflects, so the store only has to be *consistent* after a crash, not up to date:
//! the rest is restored from the changelog. Without the WAL, writes live in the memtable
//! until RocksDB flushes it, and a crash loses the unflushed tail. What a flush persists is a
//! prefix of the writes in sequence order, and one `WriteBatch` never straddles two
//! memtables; so with data and checkpoint in ONE column family and each [`StoreBatch`] in ONE
//! `WriteBatch`, whatever RocksDB recovers is the state after some whole batch, with the
//! checkpoint of that batch. (Two column families would need `atomic_flush` to say the same.)
//! Skipping the WAL halves the bytes written per update. [`RocksStore::close`] flushes, so a
//! clean shutdown leaves nothing to restore.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, DBCompressionType, Options, ReadOptions, WriteBatch,
    WriteBufferManager, WriteOptions, DB,
};

use super::dir::DirLock;
use super::{PartitionStore, StateConfig, StoreBatch, StoreError};

const META: u8 = 0x00;
const DATA: u8 = 0x01;
const CHECKPOINT_KEY: &[u8] = b"\x00checkpoint";
const FORMAT_KEY: &[u8] = b"\x00format";
/// The layout above. A store of another layout is refused as damaged, so it gets rebuilt.
const FORMAT: u8 = 1;
const _: () = assert!(CHECKPOINT_KEY[0] == META && FORMAT_KEY[0] == META && META != DATA);

/// RocksDB settings shared by every partition store of one instance. Cheap to clone: the
/// block cache and the memtables' budget are shared, so memory does not grow with the
/// number of partitions.
#[derive(Clone)]
pub struct RocksOptions {
    cache: Cache,
    write_buffers: WriteBufferManager,
    write_buffer_bytes: usize,
}

impl RocksOptions {
    /// Creates the shared block cache of `config.block_cache_bytes` and the shared memtable
    /// budget of `config.write_buffer_total_bytes`.
    pub fn new(config: &StateConfig) -> RocksOptions {
        RocksOptions {
            cache: Cache::new_lru_cache(config.block_cache_bytes),
            // Past the budget RocksDB flushes the largest memtable of the store being
            // written; writers never stall for it (a commit must not wait on a flush).
            write_buffers: WriteBufferManager::new_write_buffer_manager(
                config.write_buffer_total_bytes,
                false,
            ),
            write_buffer_bytes: config.write_buffer_bytes,
        }
    }

    fn db_options(&self) -> Options {
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&self.cache);
        // Index and filter blocks count against the shared cache too, so the cache size is
        // the bound on read memory however many partitions and files there are.
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        // Point lookups by order id are the hot path; a bloom filter spares most misses a read.
        table.set_bloom_filter(10.0, false);

        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_block_based_table_factory(&table);
        // lz4 is the only codec compiled in (Cargo.toml); cheap and good on codec bytes. Not
        // for L0 and the level L0 compacts into (RocksDB's base level; every level, while a
        // store is small): every flush and most compactions write there, and what they
        // write is soon rewritten. Measured: the RocksDB threads' CPU over a 1 M-event
        // backlog went from 0.40-0.56 s to 0.24-0.26 s. The deeper levels, which hold most
        // of a large store, stay compressed.
        options.set_compression_per_level(&[
            DBCompressionType::None,
            DBCompressionType::None,
            DBCompressionType::Lz4,
        ]);
        options.set_write_buffer_size(self.write_buffer_bytes);
        options.set_max_write_buffer_number(2);
        options.set_write_buffer_manager(&self.write_buffers);
        // Most lookups under a backlog are of orders not stored yet: a bloom filter over the
        // memtable's keys answers those without a search of it.
        options.set_memtable_whole_key_filtering(true);
        options.set_memtable_prefix_bloom_ratio(0.02);
        // RocksDB's own info log: keep it from piling up in every partition directory.
        options.set_keep_log_file_num(2);
        options.set_max_log_file_size(1 << 20);
        options
    }
}

/// One partition's store: a RocksDB in its own directory. See the module docs for the
/// layout and why writes skip the WAL. Call [`close`](RocksStore::close) to flush; a drop
/// without it still flushes, but cannot report an error.
pub struct RocksStore {
    /// Shared with the [`StoreReader`]s of the order API, which read committed state while
    /// this store is written.
    db: Arc<DB>,
    path: PathBuf,
    write_options: WriteOptions,
    /// Keeps the state directory locked while this store is open, even if the `StateDir`
    /// that opened it is dropped first. Declared after `db` so it is released after it.
    _dir_lock: Option<Arc<DirLock>>,
}

impl RocksStore {
    /// Opens (or creates) the store in directory `path`.
    ///
    /// Errors: [`StoreError::Rocks`] when RocksDB cannot open it (corruption among them:
    /// [`StoreError::is_corruption`]); [`StoreError::Damaged`] when it opens but was not
    /// written by this layout.
    pub fn open(path: &Path, options: &RocksOptions) -> Result<RocksStore, StoreError> {
        RocksStore::open_locked(path, options, None)
    }

    pub(super) fn open_locked(
        path: &Path,
        options: &RocksOptions,
        dir_lock: Option<Arc<DirLock>>,
    ) -> Result<RocksStore, StoreError> {
        let db = DB::open(&options.db_options(), path).map_err(|source| StoreError::Rocks {
            op: "open",
            path: path.to_owned(),
            source,
        })?;
        let mut write_options = WriteOptions::default();
        write_options.disable_wal(true);
        let store = RocksStore {
            db: Arc::new(db),
            path: path.to_owned(),
            write_options,
            _dir_lock: dir_lock,
        };
        store.check_format()?;
        Ok(store)
    }

    /// Refuses a store of another layout; stamps a new one with ours.
    fn check_format(&self) -> Result<(), StoreError> {
        match self.db.get(FORMAT_KEY).map_err(|e| self.rocks("read", e))? {
            Some(format) if format == [FORMAT] => Ok(()),
            Some(format) => Err(self.damaged(format!(
                "layout format {format:?}, this build reads [{FORMAT}]"
            ))),
            None => {
                if self.checkpoint()?.is_some() || !self.is_empty()? {
                    return Err(self.damaged("data without a layout format".to_owned()));
                }
                let mut batch = WriteBatch::default();
                batch.put(FORMAT_KEY, [FORMAT]);
                self.db
                    .write_opt(batch, &self.write_options)
                    .map_err(|e| self.rocks("write", e))
            }
        }
    }

    fn is_empty(&self) -> Result<bool, StoreError> {
        let mut empty = true;
        self.scan(&[], &mut |_, _| {
            empty = false;
            false
        })?;
        Ok(empty)
    }

    /// A handle that reads this store from other threads (the order API), while the owner
    /// goes on writing. The database closes when the store and every reader are gone; the
    /// processor stops handing the reader out before it closes the store
    /// ([`crate::api::LocalOrders::stop_serving`]).
    pub fn reader(&self) -> StoreReader {
        StoreReader {
            db: self.db.clone(),
            path: Arc::new(self.path.clone()),
        }
    }

    /// The directory of this store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Persists the memtable, so that a crash after it loses nothing written so far.
    ///
    /// Errors: [`StoreError::Rocks`] when the flush fails.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| self.rocks("flush", e))
    }

    /// Flushes and closes the store, so that the next open needs no restore.
    ///
    /// Errors: [`StoreError::Rocks`] when the flush fails; the store is closed anyway, and
    /// its checkpoint still matches its data (the next restore redoes the lost tail).
    pub fn close(self) -> Result<(), StoreError> {
        let flushed = self.flush();
        // A reader in the middle of a read still holds the database (and its lock file); a
        // read takes microseconds. Waiting for it lets the partition be opened again at once.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while Arc::strong_count(&self.db) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        flushed
    }

    fn rocks(&self, op: &'static str, source: rocksdb::Error) -> StoreError {
        StoreError::Rocks {
            op,
            path: self.path.clone(),
            source,
        }
    }

    fn damaged(&self, what: String) -> StoreError {
        StoreError::Damaged {
            path: self.path.clone(),
            what,
        }
    }
}

/// Reads one partition's store from another thread: see [`RocksStore::reader`]. RocksDB
/// reads are thread-safe and see every write that completed before them, and the store is
/// written only after the transaction commits, so a reader sees committed state only.
#[derive(Clone)]
pub struct StoreReader {
    db: Arc<DB>,
    path: Arc<PathBuf>,
}

impl StoreReader {
    /// The value stored under `key` (an order id), if any.
    ///
    /// Errors: [`StoreError::Rocks`] when RocksDB fails to read.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let mut k = Vec::with_capacity(key.len() + 1);
        data_key(&mut k, key);
        let value = self.db.get_pinned(&k).map_err(|source| StoreError::Rocks {
            op: "get",
            path: self.path.as_ref().clone(),
            source,
        })?;
        Ok(value.map(|v| v.to_vec()))
    }
}

fn data_key(buf: &mut Vec<u8>, key: &[u8]) {
    buf.clear();
    buf.push(DATA);
    buf.extend_from_slice(key);
}

impl PartitionStore for RocksStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let mut k = Vec::with_capacity(key.len() + 1);
        data_key(&mut k, key);
        let value = self.db.get_pinned(&k).map_err(|e| self.rocks("get", e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn write(&mut self, mut batch: StoreBatch) -> Result<(), StoreError> {
        // In key order: the memtable's skiplist inserts a key next to the one before it
        // from there, not from its head. A commit's orders come in a hash map's order; new
        // orders (ids mostly increasing) sorted go in at about one comparison per level
        // instead of ~35 (callgrind, 10,000-order benchmark input: 7,500 to 4,400
        // instructions per put, the sort included). Stable: a key's entries keep their order.
        batch.puts.sort_by(|a, b| a.0.cmp(&b.0));
        // Room for every record (a tag, two length varints, the key with its prefix byte and
        // the value) and the checkpoint: a commit's batch is megabytes, and growing it from
        // empty copied it over and over.
        let bytes: usize = batch
            .puts
            .iter()
            .map(|(key, value)| 12 + key.len() + value.as_ref().map_or(0, Vec::len))
            .sum();
        let mut write = WriteBatch::with_capacity_bytes(bytes + 64);
        let mut k = Vec::new();
        for (key, value) in &batch.puts {
            data_key(&mut k, key);
            match value {
                Some(value) => write.put(&k, value),
                None => write.delete(&k),
            }
        }
        if let Some(checkpoint) = batch.checkpoint {
            write.put(CHECKPOINT_KEY, checkpoint.to_be_bytes());
        }
        self.db
            .write_opt(write, &self.write_options)
            .map_err(|e| self.rocks("write", e))
    }

    fn checkpoint(&self) -> Result<Option<i64>, StoreError> {
        let Some(bytes) = self
            .db
            .get_pinned(CHECKPOINT_KEY)
            .map_err(|e| self.rocks("get", e))?
        else {
            return Ok(None);
        };
        match <[u8; 8]>::try_from(&*bytes).map(i64::from_be_bytes) {
            Ok(offset) if offset >= 0 => Ok(Some(offset)),
            _ => Err(self.damaged(format!("checkpoint value {:?}", &*bytes))),
        }
    }

    fn scan(
        &self,
        from: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let mut read = ReadOptions::default();
        read.set_iterate_lower_bound([DATA]);
        read.set_iterate_upper_bound([DATA + 1]);
        let mut iter = self.db.raw_iterator_opt(read);
        let mut start = Vec::with_capacity(from.len() + 1);
        data_key(&mut start, from);
        iter.seek(&start);
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            if !visit(&key[1..], value) {
                return Ok(());
            }
            iter.next();
        }
        iter.status().map_err(|e| self.rocks("scan", e))
    }

    fn clear(&mut self) -> Result<(), StoreError> {
        let mut write = WriteBatch::default();
        write.delete_range([DATA], [DATA + 1]);
        write.delete(CHECKPOINT_KEY);
        self.db
            .write_opt(write, &self.write_options)
            .map_err(|e| self.rocks("write", e))
    }

    fn approximate_bytes(&self) -> u64 {
        let property = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        property("rocksdb.total-sst-files-size") + property("rocksdb.cur-size-all-mem-tables")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> RocksOptions {
        RocksOptions::new(&StateConfig {
            block_cache_bytes: 1 << 20,
            ..StateConfig::default()
        })
    }

    #[test]
    fn an_order_id_that_looks_like_the_checkpoint_key_does_not_touch_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RocksStore::open(dir.path(), &options()).unwrap();
        let mut batch = StoreBatch::new();
        batch
            .put(CHECKPOINT_KEY, "not a checkpoint")
            .put(b"checkpoint".to_vec(), "x");
        batch.checkpoint = Some(7);
        store.write(batch).unwrap();
        assert_eq!(store.checkpoint().unwrap(), Some(7));
        let mut batch = StoreBatch::new();
        batch.delete(CHECKPOINT_KEY).delete(FORMAT_KEY);
        store.write(batch).unwrap();
        assert_eq!(store.checkpoint().unwrap(), Some(7));
        store.close().unwrap();
        let store = RocksStore::open(dir.path(), &options()).unwrap();
        assert_eq!(store.checkpoint().unwrap(), Some(7));
    }

    #[test]
    fn a_batch_applies_each_keys_entries_in_their_order_whatever_the_keys_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RocksStore::open(dir.path(), &options()).unwrap();
        let mut batch = StoreBatch::new();
        batch
            .put(b"O-3".to_vec(), "3")
            .put(b"O-1".to_vec(), "first")
            .delete(b"O-3".to_vec())
            .put(b"O-2".to_vec(), "2")
            .put(b"O-1".to_vec(), "second")
            .delete(b"O-4".to_vec())
            .put(b"O-4".to_vec(), "4");
        store.write(batch).unwrap();
        let get = |key: &[u8]| PartitionStore::get(&store, key).unwrap();
        assert_eq!(get(b"O-1").as_deref(), Some(&b"second"[..]));
        assert_eq!(get(b"O-2").as_deref(), Some(&b"2"[..]));
        assert_eq!(get(b"O-3"), None);
        assert_eq!(get(b"O-4").as_deref(), Some(&b"4"[..]));
    }

    #[test]
    fn a_store_of_another_layout_is_refused_as_damaged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = DB::open_default(dir.path()).unwrap();
            db.put(FORMAT_KEY, [FORMAT + 1]).unwrap();
        }
        let error = RocksStore::open(dir.path(), &options()).err().unwrap();
        assert!(error.is_corruption(), "{error}");
    }

    #[test]
    fn a_bad_checkpoint_value_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), &options()).unwrap();
        store.db.put(CHECKPOINT_KEY, b"abc").unwrap();
        let error = store.checkpoint().unwrap_err();
        assert!(error.is_corruption(), "{error}");
    }

    #[test]
    fn close_flushes_so_the_size_is_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RocksStore::open(dir.path(), &options()).unwrap();
        let mut batch = StoreBatch::new();
        for i in 0..100u32 {
            batch.put(i.to_be_bytes(), vec![b'v'; 1000]);
        }
        store.write(batch).unwrap();
        assert!(store.approximate_bytes() > 0);
        store.close().unwrap();
        let store = RocksStore::open(dir.path(), &options()).unwrap();
        let sst = store
            .db
            .property_int_value("rocksdb.total-sst-files-size")
            .unwrap()
            .unwrap();
        assert!(sst > 0, "nothing flushed to an SST file");
    }

    #[test]
    fn the_memtables_budget_is_shared_by_the_stores_and_flushes_early() {
        // Each store's own memtable could take 64 MiB; together they may hold 1 MiB.
        let options = RocksOptions::new(&StateConfig {
            block_cache_bytes: 1 << 20,
            write_buffer_bytes: 64 << 20,
            write_buffer_total_bytes: 1 << 20,
            ..StateConfig::default()
        });
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let mut stores = dirs
            .iter()
            .map(|dir| RocksStore::open(dir.path(), &options).unwrap())
            .collect::<Vec<_>>();
        let sst = |store: &RocksStore| {
            store
                .db
                .property_int_value("rocksdb.total-sst-files-size")
                .unwrap()
                .unwrap()
        };
        for round in 0..8u32 {
            for store in &mut stores {
                let mut batch = StoreBatch::new();
                for i in 0..256u32 {
                    batch.put((round << 16 | i).to_be_bytes(), vec![b'v'; 1000]);
                }
                store.write(batch).unwrap();
            }
        }
        // 4 MiB written in all: past the shared budget, so flushed (in the background) while
        // writing, though far below either store's own memtable size.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while stores.iter().map(sst).sum::<u64>() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "nothing flushed: the shared budget was not applied"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
