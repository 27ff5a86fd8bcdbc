//! The engine over a realistic stream, counting the state's decode and encode for each event
//! as the service does: orders of ~10 events and ~10 items, 20% of events out of order, 5%
//! redelivered, 64 orders in flight at once.
//!
//! `cargo bench --bench engine` (see BENCHMARKS.md). Prints the encoded state sizes of the
//! finished orders before timing. Also times the apply alone (the service keeps a
//! transaction's graphs in memory) and what a commit does per changed order.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use compact_str::CompactString;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use order_milestones::engine::{codec, Engine, OrderEvent, OrderGraph, Rules};
use order_milestones::generate::{GenerateConfig, Generator};

/// The service's allocator, so the figures are the service's.
#[global_allocator]
static ALLOCATOR: order_milestones::alloc::Allocator = order_milestones::alloc::Allocator;

const ORDERS: u64 = 10_000;

fn stream() -> Vec<OrderEvent> {
    Generator::new(GenerateConfig {
        orders: ORDERS,
        ..GenerateConfig::default()
    })
    .collect()
}

/// What the service does per event: read the order's stored bytes, decode, apply, encode,
/// write back. Returns the number of change records, so the work cannot be optimized away.
fn process(
    engine: &Engine,
    events: Vec<OrderEvent>,
    store: &mut HashMap<CompactString, Vec<u8>>,
) -> usize {
    let mut records = 0;
    for event in events {
        let mut graph = match store.get(&event.order_id) {
            Some(bytes) => codec::decode(bytes).expect("own encoding decodes"),
            None => OrderGraph::new(event.order_id.clone()),
        };
        records += engine.apply(&mut graph, event).changes.len();
        let value = store.entry(graph.order_id().into()).or_default();
        value.clear();
        codec::encode(&graph, value);
    }
    records
}

fn report_sizes(engine: &Engine, events: &[OrderEvent]) {
    let mut store = HashMap::new();
    process(engine, events.to_vec(), &mut store);
    let mut sizes: Vec<usize> = store.values().map(Vec::len).collect();
    sizes.sort_unstable();
    let graphs: Vec<OrderGraph> = store.values().map(|b| codec::decode(b).unwrap()).collect();
    let mean_events =
        graphs.iter().map(|g| g.events().len()).sum::<usize>() as f64 / graphs.len() as f64;
    let p = |q: f64| sizes[((sizes.len() - 1) as f64 * q) as usize];
    eprintln!(
        "state size over {} orders ({:.1} distinct events each): mean {:.0} B, p50 {} B, p99 {} B, max {} B",
        sizes.len(),
        mean_events,
        sizes.iter().sum::<usize>() as f64 / sizes.len() as f64,
        p(0.5),
        p(0.99),
        sizes[sizes.len() - 1]
    );
}

/// Applies the stream's events to graphs in memory, the way the service builds them within a
/// transaction (no stored encoding to append to); returns the graphs and the change records'
/// count.
fn apply_all(
    engine: &Engine,
    events: Vec<OrderEvent>,
) -> (HashMap<CompactString, OrderGraph>, usize) {
    let mut graphs: HashMap<CompactString, OrderGraph> = HashMap::with_capacity(ORDERS as usize);
    let mut records = 0;
    for event in events {
        let graph = graphs
            .entry(event.order_id.clone())
            .or_insert_with(|| OrderGraph::new(event.order_id.clone()));
        records += engine.apply(graph, event).changes.len();
    }
    (graphs, records)
}

/// Encodes each graph's state and, with `engine`, builds its view, as a write-out does;
/// returns the states' bytes and the views' items, so the work cannot be optimized away.
fn write_out_all(graphs: &[OrderGraph], engine: Option<&Engine>, out: &mut Vec<u8>) -> usize {
    graphs
        .iter()
        .map(|graph| {
            out.clear();
            codec::encode(graph, out);
            out.len() + engine.map_or(0, |engine| engine.view(graph).items.len())
        })
        .sum()
}

fn bench(c: &mut Criterion) {
    let engine = Engine::new(Arc::new(Rules::builtin().expect("built-in rules")));
    let events = stream();
    report_sizes(&engine, &events);
    let finished: Vec<OrderGraph> = apply_all(&engine, events.clone()).0.into_values().collect();
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(20);
    group.bench_function("apply_with_state_codec", |b| {
        b.iter_batched(
            || (events.clone(), HashMap::with_capacity(ORDERS as usize)),
            |(events, mut store)| black_box(process(&engine, events, &mut store)),
            BatchSize::PerIteration,
        )
    });
    // The service keeps a transaction's graphs in memory: per event, only the apply.
    group.bench_function("apply", |b| {
        b.iter_batched(
            || events.clone(),
            |events| black_box(apply_all(&engine, events).1),
            BatchSize::PerIteration,
        )
    });
    group.finish();

    // What a commit does per changed order besides producing: its state encoded, its view.
    let mut group = c.benchmark_group("commit");
    group.throughput(Throughput::Elements(finished.len() as u64));
    group.sample_size(20);
    group.bench_function("state_and_view_per_order", |b| {
        let mut out = Vec::new();
        b.iter(|| black_box(write_out_all(&finished, Some(&engine), &mut out)))
    });
    // The two apart.
    group.bench_function("state_per_order", |b| {
        let mut out = Vec::new();
        b.iter(|| black_box(write_out_all(&finished, None, &mut out)))
    });
    group.bench_function("view_per_order", |b| {
        b.iter(|| {
            let items: usize = finished.iter().map(|g| engine.view(g).items.len()).sum();
            black_box(items)
        })
    });
    // The retention sweep's check of a stored order: is it finished, and since when.
    let stored: Vec<Vec<u8>> = finished.iter().map(codec::to_bytes).collect();
    group.bench_function("retention_check_per_stored_order_decoded", |b| {
        b.iter(|| {
            let finished = stored.iter().filter_map(|bytes| {
                engine.finished_at(&codec::decode(bytes).expect("own encoding decodes"))
            });
            black_box(finished.count())
        })
    });
    group.bench_function("retention_check_per_stored_order_summary", |b| {
        b.iter(|| {
            let finished = stored.iter().filter_map(|bytes| {
                engine.finished_at_stored(&codec::summary(bytes).expect("own encoding reads"))
            });
            black_box(finished.count())
        })
    });
    // The processing loop's check of an order in memory (after each of its events, and
    // at each commit): settled graphs read where their nodes stand; decoded ones, which
    // have not been settled, look their nodes' names up.
    let decoded: Vec<OrderGraph> = stored
        .iter()
        .map(|bytes| codec::decode(bytes).expect("own encoding decodes"))
        .collect();
    for (name, graphs) in [("settled", &finished), ("decoded", &decoded)] {
        group.bench_function(format!("finished_at_per_order_{name}"), |b| {
            b.iter(|| black_box(graphs.iter().filter_map(|g| engine.finished_at(g)).count()))
        });
    }
    group.finish();
}

/// A block's allocation and free, the service's allocator (`order_milestones::alloc`) against
/// the aligned call the `mimalloc` crate makes for every allocation, at the sizes of an
/// event's items (ten, 320 B), an encoded state (about 1 KiB) and a new graph's room for
/// twelve events (about 3 KB).
fn allocator(c: &mut Criterion) {
    use std::alloc::{GlobalAlloc, Layout};
    let mut group = c.benchmark_group("allocator");
    group.throughput(Throughput::Elements(64));
    for size in [320, 1100, 12 * std::mem::size_of::<OrderEvent>()] {
        let layout = Layout::from_size_align(size, 8).expect("a valid layout");
        let mut blocks = Vec::with_capacity(64);
        group.bench_function(format!("64 blocks of {size} B, alloc::Allocator"), |b| {
            b.iter(|| {
                // SAFETY: a non-zero size; every block freed with its layout.
                unsafe {
                    blocks.extend((0..64).map(|_| ALLOCATOR.alloc(layout)));
                    blocks
                        .drain(..)
                        .for_each(|p| ALLOCATOR.dealloc(black_box(p), layout));
                }
            })
        });
        group.bench_function(format!("64 blocks of {size} B, mi_malloc_aligned"), |b| {
            b.iter(|| {
                // SAFETY: as above; mimalloc's own calls.
                unsafe {
                    blocks.extend(
                        (0..64).map(|_| libmimalloc_sys::mi_malloc_aligned(size, 8).cast::<u8>()),
                    );
                    blocks
                        .drain(..)
                        .for_each(|p| libmimalloc_sys::mi_free(black_box(p).cast()));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench, allocator);
criterion_main!(benches);
