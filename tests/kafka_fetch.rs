//! The processor's batch consumption (`ingest::FetchQueue`) on the real broker: every
//! record of the followed partitions comes out once, in offset order, in batches no larger
//! than asked; a consume with nothing waiting waits for a first record and no longer; and
//! a seek (what an aborted transaction does) drops the records fetched before it, so that
//! consumption goes on from the seek's offset without stale records in between; and a
//! partition held before it is assigned (what a rebalance does until the partition's state
//! is restored) keeps what is fetched out of the consumer's queue until it is followed;
//! and a newly assigned partition is given an absolute start (`processor::start_offsets`):
//! its committed offset, else its log start.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use order_milestones::ingest::{hold, Batch, FetchQueue, InputRecord};
use order_milestones::processor::start_offsets;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const RECORDS_PER_PARTITION: i64 = 600;

/// `RECORDS_PER_PARTITION` records to each of partitions 0 and 1 of `topic`; the payload
/// names the partition and the record's number.
fn produce(topic: &str) {
    let producer: BaseProducer = common::client_config()
        .set("enable.idempotence", "true")
        .create()
        .expect("creating the producer");
    for partition in 0..2 {
        for n in 0..RECORDS_PER_PARTITION {
            let payload = format!("{partition}:{n}");
            producer
                .send(
                    BaseRecord::to(topic)
                        .partition(partition)
                        .key("k")
                        .payload(&payload),
                )
                .unwrap_or_else(|(e, _)| panic!("producing {payload}: {e}"));
            producer.poll(Duration::ZERO);
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("flushing the records");
}

/// Holds partitions 0 and 1 of `topic` and assigns them to `consumer` from the start: what
/// a rebalance does before the partitions are restored.
fn hold_and_assign_both(consumer: &BaseConsumer, topic: &str) {
    let mut both = TopicPartitionList::new();
    for partition in 0..2 {
        hold(consumer, topic, partition).expect("holding");
        both.add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&both).expect("assigning");
}

/// A consumer's partitions 0 and 1 of `topic`, held, assigned from the start and followed
/// by the returned queue: the order the processor does it in.
fn follow_both<'c>(consumer: &'c BaseConsumer, topic: &str) -> FetchQueue<'c> {
    hold_and_assign_both(consumer, topic);
    let fetch = FetchQueue::new(consumer);
    for partition in 0..2 {
        fetch.follow(topic, partition).expect("following");
    }
    fetch
}

/// Checks that `batch` holds, per partition, the records `produce` wrote from `next`'s
/// offset on, in order, and moves `next` past them.
fn check_in_order(batch: &Batch<'_>, topic: &str, next: &mut BTreeMap<i32, i64>) {
    for index in 0..batch.len() {
        let record = batch.get(index).unwrap().expect("a record, not an error");
        let expected = next.entry(record.partition()).or_insert(0);
        assert_eq!(
            record.offset(),
            *expected,
            "partition {}",
            record.partition()
        );
        assert_eq!(
            record.payload(),
            Some(format!("{}:{}", record.partition(), expected).as_bytes())
        );
        assert_eq!(record.key(), Some(&b"k"[..]));
        assert_eq!(record.topic(), topic);
        assert!(record.timestamp_ms().is_some_and(|ms| ms > 0));
        *expected += 1;
    }
}

fn consumer() -> BaseConsumer {
    common::client_config()
        .set("group.id", common::unique_group("kafka_fetch"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("creating the consumer")
}

#[tokio::test]
async fn batches_hold_every_record_once_in_order_and_wait_only_for_a_first_one() {
    common::require_kafka();
    let topic = common::unique_topic("fetch_batches");
    common::create_topic(&topic, 2).await;
    produce(&topic);
    let consumer = consumer();
    let fetch = follow_both(&consumer, &topic);

    let mut batch = Batch::default();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut largest = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while next.values().sum::<i64>() < 2 * RECORDS_PER_PARTITION {
        assert!(
            Instant::now() < deadline,
            "not every record within 30 s: {next:?}"
        );
        consumer.poll(Duration::ZERO); // events, as the processor does between batches
        fetch.consume(Duration::from_millis(100), 250, &mut batch);
        largest = largest.max(batch.len());
        check_in_order(&batch, &topic, &mut next);
    }
    assert_eq!(
        next,
        BTreeMap::from([(0, RECORDS_PER_PARTITION), (1, RECORDS_PER_PARTITION)])
    );
    assert!(largest <= 250, "a batch of {largest}, more than asked");
    assert!(largest > 1, "every batch held one record: not batched");

    // Nothing waiting: it waits for the timeout, not forever, and returns nothing.
    let started = Instant::now();
    fetch.consume(Duration::from_millis(300), 250, &mut batch);
    let waited = started.elapsed();
    assert!(batch.is_empty());
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "waited {waited:?} for a timeout of 300 ms"
    );
}

#[tokio::test]
async fn a_seek_drops_the_records_fetched_before_it() {
    common::require_kafka();
    let topic = common::unique_topic("fetch_seek");
    common::create_topic(&topic, 2).await;
    produce(&topic);
    let consumer = consumer();
    let fetch = follow_both(&consumer, &topic);

    // Read partition 0 until some records are consumed and more are surely fetched.
    let mut batch = Batch::default();
    let mut seen_p0 = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen_p0 < 100 {
        assert!(Instant::now() < deadline, "no records within 30 s");
        fetch.consume(Duration::from_millis(100), 50, &mut batch);
        for index in 0..batch.len() {
            let record = batch.get(index).unwrap().unwrap();
            if record.partition() == 0 {
                seen_p0 = record.offset() + 1;
            }
        }
    }
    batch.clear();
    // Rewind partition 0 to offset 10, as an abort rewinds to a transaction's first record.
    let mut rewind = TopicPartitionList::new();
    rewind
        .add_partition_offset(&topic, 0, Offset::Offset(10))
        .unwrap();
    consumer
        .seek_partitions(rewind, Duration::from_secs(10))
        .expect("seeking");

    let mut next_p0 = 10;
    let deadline = Instant::now() + Duration::from_secs(30);
    while next_p0 < RECORDS_PER_PARTITION {
        assert!(
            Instant::now() < deadline,
            "partition 0 not read again within 30 s"
        );
        consumer.poll(Duration::ZERO);
        fetch.consume(Duration::from_millis(100), 250, &mut batch);
        for index in 0..batch.len() {
            let record = batch.get(index).unwrap().unwrap();
            if record.partition() == 0 {
                assert_eq!(
                    record.offset(),
                    next_p0,
                    "after the seek to 10, partition 0 must go on from there, nothing stale in between"
                );
                next_p0 += 1;
            }
        }
    }
}

#[tokio::test]
async fn a_held_partition_keeps_its_records_until_followed_then_hands_them_over_at_once() {
    common::require_kafka();
    let topic = common::unique_topic("fetch_held");
    common::create_topic(&topic, 2).await;
    produce(&topic);
    let consumer = consumer();
    hold_and_assign_both(&consumer, &topic);

    // Long enough for the fetcher to look up where to start and fetch: nothing may reach
    // the consumer's own queue meanwhile.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let record = message.expect("no consumer error");
            panic!(
                "record {}[{}]@{} reached the consumer's queue while held",
                record.topic(),
                record.partition(),
                record.offset()
            );
        }
    }

    // Followed: what was fetched while held comes out at once (no wait for a fetch), then
    // the rest, every record once and in order.
    let fetch = FetchQueue::new(&consumer);
    let followed = Instant::now();
    for partition in 0..2 {
        fetch.follow(&topic, partition).expect("following");
    }
    let mut batch = Batch::default();
    fetch.consume(Duration::from_secs(5), 250, &mut batch);
    let first = followed.elapsed();
    assert!(!batch.is_empty(), "nothing within 5 s of following");
    assert!(
        first < Duration::from_millis(500),
        "the first batch took {first:?}: the held records were not handed over"
    );
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        check_in_order(&batch, &topic, &mut next);
        if next.values().sum::<i64>() == 2 * RECORDS_PER_PARTITION {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every record within 30 s: {next:?}"
        );
        consumer.poll(Duration::ZERO);
        fetch.consume(Duration::from_millis(100), 250, &mut batch);
    }
}

/// A new partition starts where its group committed, else at its log start, both given as
/// absolute offsets before the assignment, so that librdkafka looks nothing up (a lookup
/// in flight while the partition was paused or resumed made it start the partition over).
#[tokio::test]
async fn new_partitions_start_at_their_committed_offset_or_their_log_start() {
    common::require_kafka();
    let topic = common::unique_topic("start_offsets");
    common::create_topic(&topic, 3).await;
    produce(&topic); // partitions 0 and 1; 2 stays empty
                     // Partition 1's first 100 records deleted: its log start is 100, not 0.
    let admin: AdminClient<DefaultClientContext> =
        common::client_config().create().expect("admin client");
    let mut cut = TopicPartitionList::new();
    cut.add_partition_offset(&topic, 1, Offset::Offset(100))
        .unwrap();
    let deleted = admin
        .delete_records(&cut, &AdminOptions::new())
        .await
        .expect("deleting records");
    assert!(deleted.elements()[0].error().is_ok(), "{deleted:?}");
    // The group committed 250 for partition 0.
    let group = common::unique_group("start_offsets");
    let consumer: BaseConsumer = common::client_config()
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let mut commit = TopicPartitionList::new();
    commit
        .add_partition_offset(&topic, 0, Offset::Offset(250))
        .unwrap();
    consumer
        .commit(&commit, CommitMode::Sync)
        .expect("committing");

    let mut assigned = TopicPartitionList::new();
    for partition in 0..3 {
        assigned.add_partition(&topic, partition);
    }
    start_offsets(&consumer, &mut assigned);
    let start = |partition| assigned.find_partition(&topic, partition).unwrap().offset();
    assert_eq!(start(0), Offset::Offset(250), "the committed offset");
    assert_eq!(start(1), Offset::Offset(100), "the log start");
    assert_eq!(
        start(2),
        Offset::Offset(0),
        "an empty partition's log start"
    );
}
