//! The behaviour of [`PartitionStore`], checked on every implementation, and a model test:
//! random batches and reopenings applied to a [`RocksStore`] and to the [`MemoryStore`]
//! model must always leave both with the same contents.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tempfile::TempDir;

use super::rocks::RocksOptions;
use super::{MemoryStore, PartitionStore, RocksStore, StateConfig, StoreBatch};

fn memory() -> (MemoryStore, ()) {
    (MemoryStore::new(), ())
}

/// A RocksDB store with a tiny memtable, so that tests also cross flushes.
fn rocks_options() -> RocksOptions {
    RocksOptions::new(&StateConfig {
        block_cache_bytes: 1 << 20,
        write_buffer_bytes: 64 << 10,
        ..StateConfig::default()
    })
}

fn rocks() -> (RocksStore, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = RocksStore::open(dir.path(), &rocks_options()).unwrap();
    (store, dir)
}

fn contents(store: &dyn PartitionStore) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut entries = BTreeMap::new();
    store
        .scan(&mut |k, v| {
            entries.insert(k.to_vec(), v.to_vec());
            true
        })
        .unwrap();
    entries
}

fn batch(puts: &[(&str, Option<&str>)], checkpoint: Option<i64>) -> StoreBatch {
    StoreBatch {
        puts: puts
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
            .collect(),
        checkpoint,
    }
}

fn a_new_store_is_empty_without_checkpoint(store: &mut dyn PartitionStore) {
    assert_eq!(store.get(b"o-1").unwrap(), None);
    assert_eq!(store.checkpoint().unwrap(), None);
    assert!(contents(store).is_empty());
}

fn puts_deletes_and_the_checkpoint_apply_together(store: &mut dyn PartitionStore) {
    store
        .write(batch(&[("o-1", Some("a")), ("o-2", Some("b"))], Some(2)))
        .unwrap();
    store
        .write(batch(&[("o-1", None), ("o-3", Some("c"))], Some(4)))
        .unwrap();
    assert_eq!(store.get(b"o-1").unwrap(), None);
    assert_eq!(store.get(b"o-2").unwrap().as_deref(), Some(&b"b"[..]));
    assert_eq!(store.get(b"o-3").unwrap().as_deref(), Some(&b"c"[..]));
    assert_eq!(store.checkpoint().unwrap(), Some(4));
}

fn a_later_put_of_the_same_key_in_a_batch_wins(store: &mut dyn PartitionStore) {
    store
        .write(batch(
            &[
                ("o-1", Some("first")),
                ("o-1", Some("second")),
                ("o-2", Some("x")),
                ("o-2", None),
                ("o-3", None),
                ("o-3", Some("back")),
            ],
            None,
        ))
        .unwrap();
    assert_eq!(store.get(b"o-1").unwrap().as_deref(), Some(&b"second"[..]));
    assert_eq!(store.get(b"o-2").unwrap(), None);
    assert_eq!(store.get(b"o-3").unwrap().as_deref(), Some(&b"back"[..]));
}

fn a_batch_without_checkpoint_keeps_the_checkpoint(store: &mut dyn PartitionStore) {
    store.write(batch(&[("o-1", Some("a"))], Some(10))).unwrap();
    store.write(batch(&[("o-2", Some("b"))], None)).unwrap();
    store.write(StoreBatch::new()).unwrap();
    assert_eq!(store.checkpoint().unwrap(), Some(10));
    store.write(batch(&[], Some(12))).unwrap();
    assert_eq!(store.checkpoint().unwrap(), Some(12));
}

fn scan_visits_in_key_order_and_stops_when_told(store: &mut dyn PartitionStore) {
    // Keys that sort around the internal prefixes of the RocksDB layout, and an empty key.
    let keys: [&[u8]; 6] = [b"b", b"", b"\x00checkpoint", b"\x01", b"\xff\xff", b"a"];
    let mut write = StoreBatch::new();
    for key in keys {
        write.put(key, [b"v:", key].concat());
    }
    write.checkpoint = Some(1);
    store.write(write).unwrap();

    let mut seen = Vec::new();
    store
        .scan(&mut |k, v| {
            assert_eq!(v, [b"v:", k].concat());
            seen.push(k.to_vec());
            true
        })
        .unwrap();
    let mut expected: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
    expected.sort();
    assert_eq!(seen, expected);
    assert_eq!(store.checkpoint().unwrap(), Some(1));

    let mut first_two = Vec::new();
    store
        .scan(&mut |k, _| {
            first_two.push(k.to_vec());
            first_two.len() < 2
        })
        .unwrap();
    assert_eq!(first_two, expected[..2]);
}

fn clear_empties_the_store_and_forgets_the_checkpoint(store: &mut dyn PartitionStore) {
    store
        .write(batch(&[("o-1", Some("a")), ("o-2", Some("b"))], Some(7)))
        .unwrap();
    store.clear().unwrap();
    assert!(contents(store).is_empty());
    assert_eq!(store.checkpoint().unwrap(), None);
    store.write(batch(&[("o-3", Some("c"))], Some(1))).unwrap();
    assert_eq!(contents(store).len(), 1);
}

fn approximate_bytes_grows_with_the_data(store: &mut dyn PartitionStore) {
    let before = store.approximate_bytes();
    // Values that do not compress, so the RocksDB store's lz4 cannot hide them.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u8
    };
    let mut write = StoreBatch::new();
    for i in 0..200u32 {
        write.put(
            format!("o-{i}"),
            (0..1024).map(|_| noise()).collect::<Vec<u8>>(),
        );
    }
    store.write(write).unwrap();
    let after = store.approximate_bytes();
    // Only "more": RocksDB counts a memtable by its arena, not by the bytes put in it.
    assert!(after > before, "{before} -> {after}");
}

/// One `#[test]` per behaviour, for one store constructor.
macro_rules! store_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            store_suite!(@tests $make;
                a_new_store_is_empty_without_checkpoint,
                puts_deletes_and_the_checkpoint_apply_together,
                a_later_put_of_the_same_key_in_a_batch_wins,
                a_batch_without_checkpoint_keeps_the_checkpoint,
                scan_visits_in_key_order_and_stops_when_told,
                clear_empties_the_store_and_forgets_the_checkpoint,
                approximate_bytes_grows_with_the_data,
            );
        }
    };
    (@tests $make:expr; $($behaviour:ident,)*) => {
        $(
            #[test]
            fn $behaviour() {
                let (mut store, _guard) = $make;
                super::$behaviour(&mut store);
            }
        )*
    };
}

store_suite!(memory_store, memory());
store_suite!(rocks_store, rocks());

// The model test.

#[derive(Debug, Clone)]
enum Step {
    Write(StoreBatch),
    /// Close (flush) and open the RocksDB store again.
    Reopen,
    Clear,
}

/// Few distinct keys, so that batches overwrite and delete what earlier ones wrote; some of
/// them look like the RocksDB layout's internal keys.
fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => (0u8..12).prop_map(|i| format!("order-{i}").into_bytes()),
        1 => Just(Vec::new()),
        1 => Just(b"\x00checkpoint".to_vec()),
        1 => Just(b"\x00format".to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 1..4),
    ]
}

/// Mostly small values, sometimes large ones, so that the 64 KiB memtable gets flushed in
/// the middle of a sequence.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..40),
        1 => (1usize..16).prop_map(|kib| vec![0xab; kib * 1024]),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let write = (
        proptest::collection::vec((key(), proptest::option::weighted(0.75, value())), 0..12),
        proptest::option::of(0i64..1_000_000),
    )
        .prop_map(|(puts, checkpoint)| Step::Write(StoreBatch { puts, checkpoint }));
    prop_oneof![8 => write, 2 => Just(Step::Reopen), 1 => Just(Step::Clear)]
}

fn assert_same(rocks: &RocksStore, model: &MemoryStore) -> Result<(), TestCaseError> {
    prop_assert_eq!(rocks.checkpoint().unwrap(), model.checkpoint().unwrap());
    prop_assert_eq!(&contents(rocks), model.entries());
    for key in model.entries().keys() {
        prop_assert_eq!(rocks.get(key).unwrap(), model.get(key).unwrap());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn rocks_store_always_equals_the_memory_model(
        steps in proptest::collection::vec(step(), 1..40)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let options = rocks_options();
        let mut rocks = RocksStore::open(dir.path(), &options).unwrap();
        let mut model = MemoryStore::new();
        for step in steps {
            match step {
                Step::Write(batch) => {
                    rocks.write(batch.clone()).unwrap();
                    model.write(batch).unwrap();
                }
                Step::Reopen => {
                    rocks.close().unwrap();
                    rocks = RocksStore::open(dir.path(), &options).unwrap();
                }
                Step::Clear => {
                    rocks.clear().unwrap();
                    model.clear().unwrap();
                }
            }
            assert_same(&rocks, &model)?;
        }
        rocks.close().unwrap();
        let rocks = RocksStore::open(dir.path(), &options).unwrap();
        assert_same(&rocks, &model)?;
    }
}
