//! # order-milestones
//!
//! Tells a customer where their order is. A Kafka stream processor that forms one live view
//! of each grocery order from the events of the 20+ systems it passes through.
//!
//! # Layout
//!
//! Follow the data:
//!
//! - `engine`: the pure heart, free of I/O and clocks. An order's event graph, the
//!   declarative milestone rules (`topology/*.toml`), inference of placeholders, the order
//!   view and the milestone change records.
//! - `state`: each input partition's order graphs in a RocksDB store of its own (behind the
//!   small `PartitionStore` trait), checkpointed against the changelog topic and restored
//!   from it when a store is new, damaged or behind.
//! - `simulate`: the engine over a file of JSON events, without Kafka.
//! - `generate`: realistic demo orders (out of order, redelivered) for the demo and benchmarks.

pub mod engine;
pub mod generate;
pub mod simulate;
pub mod state;
