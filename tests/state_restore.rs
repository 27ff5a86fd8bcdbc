//! Restore of a partition's store from a transactional, compacted changelog on the real
//! broker: aborted records never reach the store, a restore from a checkpoint applies only
//! the tail, a damaged store is wiped and rebuilt identical, and a checkpoint beyond the end
//! of the changelog (topic recreated) makes the restore start over.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use order_milestones::state::{
    restore, MemoryStore, Opened, PartitionStore, RestoreProgress, Restorer, StateConfig, StateDir,
    StoreBatch,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

const TXN_TIMEOUT: Duration = Duration::from_secs(30);

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// A compacted one-partition topic, like the service's changelogs.
async fn create_changelog(name: &str) {
    let admin: AdminClient<DefaultClientContext> = common::client_config()
        .create()
        .expect("creating the admin client");
    let topic = NewTopic::new(name, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let results = tokio::time::timeout(
        Duration::from_secs(30),
        admin.create_topics([&topic], &options),
    )
    .await
    .expect("creating the changelog timed out")
    .expect("creating the changelog");
    for result in results {
        result.unwrap_or_else(|(topic, code)| panic!("creating {topic}: {code}"));
    }
}

/// Partition 0's watermarks (log start, end) as a consumer with `isolation` reads them.
fn watermarks(topic: &str, isolation: &str) -> (i64, i64) {
    let consumer: BaseConsumer = common::client_config()
        .set("isolation.level", isolation)
        .create()
        .expect("creating a watermark consumer");
    consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .expect("reading the watermarks")
}

/// What one transaction writes: `(key, Some(value))` or a tombstone `(key, None)`.
type Txn = Vec<(String, Option<String>)>;

struct Changelog {
    topic: String,
    producer: FutureProducer,
}

impl Changelog {
    async fn new(test: &str) -> Changelog {
        let topic = common::unique_topic(test);
        create_changelog(&topic).await;
        let producer: FutureProducer = common::client_config()
            .set("transactional.id", common::unique_transactional_id(test))
            .set("enable.idempotence", "true")
            .create()
            .expect("creating the transactional producer");
        producer
            .init_transactions(TXN_TIMEOUT)
            .expect("init_transactions");
        Changelog { topic, producer }
    }

    /// Writes one transaction and commits it (or aborts it after the records are written).
    async fn transaction(&self, records: &Txn, commit: bool) {
        self.producer.begin_transaction().expect("begin");
        for (key, value) in records {
            let mut record = FutureRecord::<String, String>::to(&self.topic).key(key);
            if let Some(value) = value {
                record = record.payload(value);
            }
            self.producer
                .send(record, Duration::from_secs(30))
                .await
                .unwrap_or_else(|(e, _)| panic!("producing {key} to {}: {e}", self.topic));
        }
        if commit {
            self.producer
                .commit_transaction(TXN_TIMEOUT)
                .expect("commit");
        } else {
            self.producer.flush(TXN_TIMEOUT).expect("flush");
            self.producer.abort_transaction(TXN_TIMEOUT).expect("abort");
        }
        self.wait_for_markers();
    }

    /// `commit_transaction` returns once the coordinator has decided; it writes the markers
    /// to the partition just after. Until then a `read_committed` reader (a restore) sees the
    /// partition end before the transaction: wait until the last stable offset (the end as
    /// read_committed sees it) catches up with the high watermark.
    fn wait_for_markers(&self) {
        let end = |isolation| watermarks(&self.topic, isolation).1;
        let deadline = Instant::now() + Duration::from_secs(20);
        while end("read_committed") < end("read_uncommitted") {
            assert!(
                Instant::now() < deadline,
                "{}: transaction markers not written within 20s",
                self.topic
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn put(key: &str, value: &str) -> (String, Option<String>) {
    (key.to_owned(), Some(value.to_owned()))
}

fn tombstone(key: &str) -> (String, Option<String>) {
    (key.to_owned(), None)
}

/// Applies committed transactions to a map, as a restore should.
fn expected(committed: &[&Txn]) -> Map {
    let mut map = Map::new();
    for txn in committed {
        for (key, value) in txn.iter() {
            match value {
                Some(value) => map.insert(key.clone().into_bytes(), value.clone().into_bytes()),
                None => map.remove(key.as_bytes()),
            };
        }
    }
    map
}

fn contents(store: &dyn PartitionStore) -> Map {
    let mut map = Map::new();
    store
        .scan(&[], &mut |k, v| {
            map.insert(k.to_vec(), v.to_vec());
            true
        })
        .expect("scanning the store");
    map
}

/// Runs a restore on a blocking thread (the restore consumer blocks), collecting progress.
async fn restore_into<S: PartitionStore + 'static>(
    mut store: S,
    topic: &str,
) -> (
    S,
    order_milestones::state::RestoreOutcome,
    Vec<RestoreProgress>,
) {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        let outcome = restore(&mut store, &common::client_config(), &topic, 0, &mut |p| {
            seen.push(p)
        })
        .unwrap_or_else(|e| panic!("restoring from {topic}: {e}"));
        (store, outcome, seen)
    })
    .await
    .expect("the restore thread panicked")
}

fn state_config(dir: &std::path::Path) -> StateConfig {
    StateConfig {
        dir: dir.to_owned(),
        block_cache_bytes: 8 << 20,
        ..StateConfig::default()
    }
}

#[tokio::test]
async fn restore_applies_committed_records_only_then_resumes_from_its_checkpoint() {
    common::require_kafka();
    let changelog = Changelog::new("state_restore").await;

    let first: Txn = vec![put("o-1", "a1"), put("o-2", "b1"), put("o-3", "c1")];
    let aborted: Txn = vec![
        put("o-1", "ABORTED"),
        put("o-9", "ABORTED"),
        tombstone("o-2"),
    ];
    let second: Txn = vec![put("o-1", "a2"), tombstone("o-3"), put("o-4", "d1")];
    changelog.transaction(&first, true).await;
    changelog.transaction(&aborted, false).await;
    changelog.transaction(&second, true).await;

    // A fresh RocksDB store, from the beginning.
    let root = tempfile::tempdir().expect("temp dir");
    let dir = StateDir::open(&state_config(root.path()), "restore").expect("state dir");
    let (store, opened) = dir.open_partition(0).expect("opening partition 0");
    assert_eq!(opened, Opened::Fresh);
    let (store, outcome, progress) = restore_into(store, &changelog.topic).await;
    assert_eq!(
        contents(&store),
        expected(&[&first, &second]),
        "aborted records must be absent"
    );
    assert_eq!(outcome.applied, 6, "{outcome:?}");
    assert_eq!(outcome.start_offset, 0);
    assert_eq!(outcome.wiped, None);
    // 3 records + marker, 3 aborted + marker, 3 records + marker: the end is offset 12, past
    // the last record (offset 10), reached through the end-of-partition event.
    assert_eq!(outcome.end_offset, 12, "{outcome:?}");
    assert_eq!(outcome.checkpoint, Some(12), "{outcome:?}");
    assert_eq!(store.checkpoint().unwrap(), Some(12));
    let last = progress.last().expect("progress reported");
    assert_eq!((last.applied, last.offset, last.end_offset), (6, 12, 12));

    // Nothing new: a second restore applies nothing and does not move the checkpoint.
    let (store, outcome, _) = restore_into(store, &changelog.topic).await;
    assert_eq!((outcome.applied, outcome.checkpoint), (0, Some(12)));

    // More transactions; the restore from the checkpoint applies only the tail.
    let third: Txn = vec![put("o-2", "b2"), tombstone("o-1"), put("o-5", "e1")];
    let aborted_again: Txn = vec![put("o-5", "ABORTED")];
    changelog.transaction(&third, true).await;
    changelog.transaction(&aborted_again, false).await;
    store.close().expect("closing the store");
    let (store, opened) = dir.open_partition(0).expect("reopening partition 0");
    assert_eq!(
        opened,
        Opened::Existing {
            checkpoint: Some(12)
        }
    );
    let (store, outcome, _) = restore_into(store, &changelog.topic).await;
    assert_eq!(outcome.start_offset, 12);
    assert_eq!(outcome.applied, 3, "only the tail: {outcome:?}");
    assert_eq!(outcome.checkpoint, Some(18), "{outcome:?}");
    let all = expected(&[&first, &second, &third]);
    assert_eq!(contents(&store), all);

    // The memory model restored from scratch agrees with the RocksDB store.
    let (memory, outcome, _) = restore_into(MemoryStore::new(), &changelog.topic).await;
    assert_eq!(contents(&memory), all);
    assert_eq!(outcome.checkpoint, Some(18));

    // Damage: garbage in every file of the store. The store is wiped, and a restore rebuilds
    // it identical.
    store.close().expect("closing the store");
    let path = dir.partition_path(0);
    for entry in std::fs::read_dir(&path).expect("listing the store") {
        let file = entry.expect("store entry").path();
        if file.is_file() && file.file_name().is_some_and(|n| n != "LOCK") {
            std::fs::write(&file, b"\x00garbage\xff not a RocksDB file").expect("damaging");
        }
    }
    let (store, opened) = dir
        .open_partition(0)
        .expect("opening the damaged partition");
    assert!(matches!(opened, Opened::Wiped { .. }), "{opened:?}");
    assert_eq!(store.checkpoint().unwrap(), None);
    let (store, outcome, _) = restore_into(store, &changelog.topic).await;
    assert_eq!(outcome.start_offset, 0);
    assert_eq!(contents(&store), all, "the rebuilt store must be identical");
    assert_eq!(store.checkpoint().unwrap(), Some(18));
    store.close().expect("closing the store");
}

#[tokio::test]
async fn a_checkpoint_beyond_the_changelog_end_wipes_the_store_and_restores_from_the_start() {
    common::require_kafka();
    let changelog = Changelog::new("state_restore_recreated").await;
    let only: Txn = vec![put("o-1", "a"), put("o-2", "b")];
    changelog.transaction(&only, true).await;

    // A store that reflects a longer changelog: the topic was recreated under it.
    let mut store = MemoryStore::new();
    let mut stale = StoreBatch::new();
    stale.put("o-stale", "from the old topic");
    stale.checkpoint = Some(1_000);
    store.write(stale).unwrap();

    let (store, outcome, _) = restore_into(store, &changelog.topic).await;
    assert!(outcome.wiped.is_some(), "{outcome:?}");
    assert_eq!(outcome.start_offset, 0);
    assert_eq!(contents(&store), expected(&[&only]), "{outcome:?}");
    assert_eq!(outcome.checkpoint, Some(3));
}

#[tokio::test]
async fn an_empty_changelog_restores_nothing_and_leaves_no_checkpoint() {
    common::require_kafka();
    let changelog = Changelog::new("state_restore_empty").await;
    let (store, outcome, progress) = restore_into(MemoryStore::new(), &changelog.topic).await;
    assert_eq!((outcome.applied, outcome.checkpoint), (0, None));
    assert_eq!(store.checkpoint().unwrap(), None);
    assert_eq!(progress.len(), 1);
}

#[tokio::test]
async fn a_restore_from_a_missing_topic_fails_instead_of_hanging() {
    common::require_kafka();
    let topic = common::unique_topic("state_restore_missing");
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        restore(
            &mut MemoryStore::new(),
            &common::client_config(),
            &topic,
            0,
            &mut |_| {},
        )
    })
    .await
    .expect("the restore thread panicked");
    let error = result.expect_err("a missing changelog must be an error");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    eprintln!("missing topic: {error}");
}

#[tokio::test]
async fn watermarks_read_for_many_partitions_at_once_are_those_a_restore_reads_alone() {
    common::require_kafka();
    let changelog = Changelog::new("state_restore_watermarks").await;
    changelog
        .transaction(&vec![put("o-1", "a"), put("o-2", "b")], true)
        .await;
    changelog.transaction(&vec![put("o-3", "c")], false).await;
    // A transaction still open: read_committed ends before it.
    changelog.producer.begin_transaction().expect("begin");
    let open = FutureRecord::<str, str>::to(&changelog.topic)
        .key("o-4")
        .payload("d");
    changelog
        .producer
        .send(open, Duration::from_secs(30))
        .await
        .unwrap_or_else(|(e, _)| panic!("producing into the open transaction: {e}"));

    let topic = changelog.topic.clone();
    let (together, alone, uncommitted) = tokio::task::spawn_blocking(move || {
        let restorer = Restorer::new(&common::client_config(), &topic, 0).expect("restorer");
        // Partition 3 does not exist: left out, for its restore to report.
        let together = restorer.watermarks(&topic, &[0, 3], Duration::from_secs(10));
        (
            together,
            watermarks(&topic, "read_committed"),
            watermarks(&topic, "read_uncommitted"),
        )
    })
    .await
    .expect("the watermarks thread panicked");
    // Two records and a marker, one aborted record and its marker: the last stable offset
    // is 5, where the open transaction's record sits.
    assert_eq!(alone, (0, 5));
    assert_eq!(uncommitted.1, 6, "the open transaction's record is written");
    assert_eq!(together, HashMap::from([(0, alone)]));
    changelog
        .producer
        .abort_transaction(TXN_TIMEOUT)
        .expect("abort");
}
