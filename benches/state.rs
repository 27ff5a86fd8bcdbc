//! The state layer's costs: a RocksDB store's get and write of ~1 KiB values (the size of an
//! order's encoded graph), a batch of 1000 puts, and restore throughput from a changelog of
//! 100k records on the broker.
//!
//! `cargo bench --bench state`. The restore bench needs the broker at `KAFKA_BOOTSTRAP`
//! (default `127.0.0.1:9092`, `deploy/local/stack up`); without one it says so and is
//! left out, so that the store benches still run.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use order_milestones::state::{
    restore, PartitionStore, RocksOptions, RocksStore, StateConfig, StoreBatch,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

#[global_allocator]
static ALLOCATOR: order_milestones::alloc::Allocator = order_milestones::alloc::Allocator;

const ORDERS: u32 = 10_000;
const VALUE_BYTES: usize = 1024;
const RESTORE_RECORDS: u32 = 100_000;

/// A value that compresses about as well as an encoded graph would (not all zeros).
fn value(seed: u32) -> Vec<u8> {
    let mut state = u64::from(seed) | 1;
    (0..VALUE_BYTES)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Half noise, half repeated text, like ids and type names among varints.
            if i % 2 == 0 {
                state as u8
            } else {
                b"OrderCreated"[i % 12]
            }
        })
        .collect()
}

fn key(i: u32) -> Vec<u8> {
    format!("order-{i:08}").into_bytes()
}

fn open_store(dir: &std::path::Path) -> RocksStore {
    RocksStore::open(dir, &RocksOptions::new(&StateConfig::default())).expect("opening a store")
}

fn store_benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = open_store(dir.path());
    for chunk in (0..ORDERS).collect::<Vec<_>>().chunks(1000) {
        let mut batch = StoreBatch::new();
        for &i in chunk {
            batch.put(key(i), value(i));
        }
        store.write(batch).expect("loading the store");
    }
    store.flush().expect("flushing");

    let mut group = c.benchmark_group("rocks_store");
    group.throughput(Throughput::Elements(1));
    let mut i = 0u32;
    group.bench_function("get_1KiB", |b| {
        b.iter(|| {
            i = (i + 7919) % ORDERS;
            black_box(store.get(&key(i)).expect("get"))
        })
    });
    // The service's commonest read under a backlog: an order seen for the first time, looked
    // up while its partition's recent writes are still in the memtable.
    let recent_dir = tempfile::tempdir().expect("temp dir");
    let mut recent = open_store(recent_dir.path());
    for chunk in (0..20_000).collect::<Vec<_>>().chunks(1000) {
        let mut batch = StoreBatch::new();
        for &i in chunk {
            batch.put(key(i), value(i));
        }
        recent.write(batch).expect("loading the store");
    }
    let mut missing = 0u32;
    group.bench_function("get_missing_key_memtable", |b| {
        b.iter(|| {
            missing = (missing + 7919) % 1_000_000;
            black_box(recent.get(&key(1_000_000 + missing)).expect("get"))
        })
    });
    let mut offset = 0i64;
    group.bench_function("write_1_put_1KiB_with_checkpoint", |b| {
        b.iter_batched(
            || {
                i = (i + 7919) % ORDERS;
                offset += 1;
                StoreBatch {
                    puts: vec![(key(i), Some(value(i)))],
                    checkpoint: Some(offset),
                }
            },
            |batch| store.write(batch).expect("write"),
            BatchSize::SmallInput,
        )
    });
    group.throughput(Throughput::Elements(1000));
    group.bench_function("write_batch_of_1000_puts_1KiB", |b| {
        b.iter_batched(
            || {
                let mut batch = StoreBatch::new();
                for _ in 0..1000 {
                    i = (i + 7919) % ORDERS;
                    batch.put(key(i), value(i));
                }
                offset += 1000;
                batch.checkpoint = Some(offset);
                batch
            },
            |batch| store.write(batch).expect("write"),
            BatchSize::LargeInput,
        )
    });
    group.finish();
    store.close().expect("closing");
}

fn client_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set(
            "bootstrap.servers",
            std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned()),
        )
        .set("socket.timeout.ms", "10000");
    config
}

/// Creates a compacted changelog of `RESTORE_RECORDS` records of 1 KiB, one per order
/// (compaction would keep them all). None when no broker answers.
fn changelog() -> Option<String> {
    let probe: BaseConsumer = client_config().create().ok()?;
    if let Err(e) = probe.fetch_metadata(None, Duration::from_secs(5)) {
        eprintln!("state bench: restore left out, no Kafka broker answered: {e}");
        return None;
    }
    let topic = format!("__state_bench_{}", std::process::id());
    let admin: AdminClient<DefaultClientContext> = client_config().create().expect("admin");
    let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let created = runtime
        .block_on(admin.create_topics([&new], &AdminOptions::new()))
        .expect("creating the bench changelog");
    for result in created {
        result.unwrap_or_else(|(t, code)| panic!("creating {t}: {code}"));
    }
    let producer: ThreadedProducer<DefaultProducerContext> = client_config()
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for i in 0..RESTORE_RECORDS {
        let (k, v) = (key(i), value(i));
        let mut record = BaseRecord::<[u8], [u8]>::to(&topic).key(&k).payload(&v);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    // Queue full: let the delivery thread drain it.
                    std::thread::sleep(Duration::from_millis(5));
                    record = r;
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .expect("flushing the bench changelog");
    Some(topic)
}

fn restore_bench(c: &mut Criterion) {
    let Some(topic) = changelog() else { return };
    let mut group = c.benchmark_group("restore");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(30));
    group.throughput(Throughput::Elements(u64::from(RESTORE_RECORDS)));
    group.bench_function("100k_records_1KiB_into_fresh_rocks_store", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().expect("temp dir");
                let store = open_store(dir.path());
                (dir, store)
            },
            |(dir, mut store)| {
                let outcome =
                    restore(&mut store, &client_config(), &topic, 0, &mut |_| {}).expect("restore");
                assert_eq!(outcome.applied, u64::from(RESTORE_RECORDS));
                (dir, store)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, store_benches, restore_bench);
criterion_main!(benches);
