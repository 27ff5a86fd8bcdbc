//! The engine's per-order work in four phases, and the Avro decoding of its input, each a
//! function of its own, for counting instructions under callgrind: on this shared machine
//! timings of the same code move by a third between runs, instruction counts do not
//! (BENCHMARKS.md, "Engine").
//!
//! ```sh
//! cargo build --release --example engine_icount
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/engine.callgrind \
//!     "$CARGO_TARGET_DIR"/release/examples/engine_icount
//! callgrind_annotate --inclusive=yes /tmp/engine.callgrind | grep '_phase \['
//! ```
//!
//! 2,000 generated orders (as `benches/engine.rs` generates them): `stored_phase` applies
//! every event to its order decoded from its stored bytes and encodes it again;
//! `apply_phase` applies every event, as the service does within a transaction;
//! `state_phase` encodes each order's state and `view_phase` builds each order's view, as
//! a write-out does. `decode_phase`, not the engine's but the record's way in, reads every
//! event from its Avro datum and validates it, as the ingest does for a record written with
//! our schema (`ingest::avro::read_event`).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use compact_str::CompactString;
use order_milestones::emit::RecordEncoder;
use order_milestones::engine::{codec, Engine, OrderEvent, OrderGraph, Rules};
use order_milestones::generate::{GenerateConfig, Generator};
use order_milestones::ingest::avro::{read_event, split_header};

#[global_allocator]
static ALLOCATOR: order_milestones::alloc::Allocator = order_milestones::alloc::Allocator;

#[inline(never)]
fn apply_phase(engine: &Engine, events: Vec<OrderEvent>) -> HashMap<CompactString, OrderGraph> {
    let mut graphs: HashMap<CompactString, OrderGraph> = HashMap::new();
    for event in events {
        let graph = graphs
            .entry(event.order_id.clone())
            .or_insert_with(|| OrderGraph::new(event.order_id.clone()));
        black_box(engine.apply(graph, event).changes.len());
    }
    graphs
}

/// Every event applied to its order's graph decoded from the stored bytes, which are then
/// encoded again: what the service does for an order it reads from its store (a decoded
/// graph is evaluated in full at its first event).
#[inline(never)]
fn stored_phase(engine: &Engine, events: &[OrderEvent]) -> usize {
    let mut stored: HashMap<CompactString, Vec<u8>> = HashMap::new();
    for event in events {
        let mut graph = match stored.get(&event.order_id) {
            Some(bytes) => codec::decode(bytes).expect("own encoding decodes"),
            None => OrderGraph::new(event.order_id.clone()),
        };
        black_box(engine.apply(&mut graph, event.clone()).changes.len());
        stored.insert(event.order_id.clone(), codec::to_bytes(&graph));
    }
    stored.len()
}

#[inline(never)]
fn state_phase(graphs: &[OrderGraph]) -> usize {
    // A fresh vector per order, as a write-out's (it becomes the store's value).
    graphs
        .iter()
        .map(|graph| codec::to_bytes(graph).len())
        .sum()
}

#[inline(never)]
fn view_phase(engine: &Engine, graphs: &[OrderGraph]) -> usize {
    graphs.iter().map(|g| engine.view(g).items.len()).sum()
}

#[inline(never)]
fn decode_phase(records: &[Vec<u8>]) -> usize {
    records
        .iter()
        .map(|record| {
            let (_, datum) = split_header(record).expect("framed by the encoder");
            let event = read_event(datum).expect("written by the encoder");
            event.validate().expect("generated events are valid");
            event.items.len()
        })
        .sum()
}

fn main() {
    let engine = Engine::new(Arc::new(Rules::builtin().expect("built-in rules")));
    let events: Vec<OrderEvent> = Generator::new(GenerateConfig {
        orders: 2_000,
        ..GenerateConfig::default()
    })
    .collect();
    let encoder = RecordEncoder::avro_with_schema_id(1);
    let records: Vec<Vec<u8>> = events
        .iter()
        .map(|event| {
            let mut record = Vec::new();
            encoder
                .encode_event(event, &mut record)
                .expect("Avro encodes any event");
            record
        })
        .collect();
    black_box(decode_phase(&records));
    black_box(stored_phase(&engine, &events));
    let graphs: Vec<OrderGraph> = apply_phase(&engine, events).into_values().collect();
    println!(
        "{} orders: {} state bytes, {} view items",
        graphs.len(),
        black_box(state_phase(&graphs)),
        black_box(view_phase(&engine, &graphs))
    );
}
