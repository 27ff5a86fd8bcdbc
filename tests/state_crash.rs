//! A hard crash of a process writing a RocksDB store leaves a store whose data and
//! checkpoint agree: the state after some whole batch. This is what makes it safe to write
//! without the WAL (see `state::rocks`): the unflushed tail is lost, and the restore redoes it
//! from the changelog, starting at the recovered checkpoint.
//!
//! The crash is real: the test runs itself again as a child process that writes batches and
//! then calls `abort()`, so no destructor, close or flush runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use order_milestones::state::{PartitionStore, RocksOptions, RocksStore, StateConfig, StoreBatch};

const DIR_ENV: &str = "STATE_CRASH_TEST_DIR";
const BATCHES_ENV: &str = "STATE_CRASH_TEST_BATCHES";

fn options() -> RocksOptions {
    // A small memtable, so that RocksDB flushes many times while the child writes and the
    // crash lands at some arbitrary point between flushes.
    RocksOptions::new(&StateConfig {
        block_cache_bytes: 4 << 20,
        write_buffer_bytes: 64 << 10,
        ..StateConfig::default()
    })
}

/// Batch `i` of the sequence: one put (overwriting an older order every 40 batches), now
/// and then a delete, and checkpoint `i + 1`, as a restore would write it.
fn batch(i: u64) -> StoreBatch {
    let mut batch = StoreBatch::new();
    let value: Vec<u8> = (0..600).map(|j| (i.wrapping_mul(31) + j) as u8).collect();
    batch.put(
        format!("o-{}", i % 40),
        [&i.to_be_bytes()[..], &value].concat(),
    );
    if i.is_multiple_of(7) {
        batch.delete(format!("o-{}", (i * 3) % 40));
    }
    batch.checkpoint = Some(i as i64 + 1);
    batch
}

/// The store's contents after the first `n` batches.
fn model(n: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut map = BTreeMap::new();
    for i in 0..n {
        for (key, value) in batch(i).puts {
            match value {
                Some(value) => map.insert(key, value),
                None => map.remove(&key),
            };
        }
    }
    map
}

fn contents(store: &RocksStore) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut map = BTreeMap::new();
    store
        .scan(&[], &mut |k, v| {
            map.insert(k.to_vec(), v.to_vec());
            true
        })
        .expect("scanning the recovered store");
    map
}

fn crash_child_writing(dir: &Path, batches: u64) {
    let status = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["crash_child", "--exact", "--ignored", "--nocapture"])
        .env(DIR_ENV, dir)
        .env(BATCHES_ENV, batches.to_string())
        .status()
        .expect("running the child");
    assert!(
        !status.success(),
        "the child was meant to abort, it exited with {status}"
    );
}

#[test]
fn a_crash_without_wal_leaves_data_and_checkpoint_of_one_whole_batch() {
    for batches in [1_500, 2_345, 3_001] {
        let dir = tempfile::tempdir().expect("temp dir");
        crash_child_writing(dir.path(), batches);

        let store = RocksStore::open(dir.path(), &options()).expect("reopening after the crash");
        let checkpoint = store.checkpoint().expect("reading the checkpoint");
        let applied = checkpoint.map_or(0, |c| c as u64);
        eprintln!("wrote {batches} batches, crash kept {applied}");
        assert!(applied <= batches);
        assert!(
            applied > 0,
            "with a 64 KiB memtable, some of {batches} batches must have been flushed"
        );
        assert!(
            contents(&store) == model(applied),
            "after the crash the data is not the state at its checkpoint {applied}"
        );
    }
}

/// The child process of the test above; does nothing useful on its own.
#[test]
#[ignore = "run as a child process by a_crash_without_wal_leaves_data_and_checkpoint_of_one_whole_batch"]
fn crash_child() {
    let dir = std::env::var(DIR_ENV).expect("STATE_CRASH_TEST_DIR, set by the parent test");
    let batches: u64 = std::env::var(BATCHES_ENV)
        .expect("STATE_CRASH_TEST_BATCHES")
        .parse()
        .expect("a number of batches");
    let mut store = RocksStore::open(Path::new(&dir), &options()).expect("opening the store");
    for i in 0..batches {
        store.write(batch(i)).expect("writing a batch");
    }
    // No close, no flush, no destructor: what a kill -9 or a power cut leaves.
    std::process::abort();
}
