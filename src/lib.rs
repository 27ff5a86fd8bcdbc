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
//! - `ingest`: a record's value (JSON, or Avro in the Confluent wire format with the
//!   writer's schema from the registry) decoded and validated into an engine event, or a
//!   classified error for the dead-letter topic.
//! - `emit`: change records and order views encoded as record values (JSON, or Avro under
//!   our schemas registered at startup).
//! - `processor`: the stream processor: consumer group, per-partition tasks restored from
//!   the changelog and spread over shards processed in parallel (`processing.workers`), one
//!   transaction per commit interval holding outputs, state changelog and consumed offsets.
//! - `config`: layered configuration (defaults, file, `MILESTONES__` environment) and the
//!   topic topology of `topology/topics.toml`.
//! - `kafka`: librdkafka client configurations, one builder for every role.
//! - `state`: each input partition's order graphs in a RocksDB store of its own (behind the
//!   small `PartitionStore` trait), checkpointed against the changelog topic and restored
//!   from it when a store is new, damaged or behind.
//! - `topics`: the topic topology: plan, create (`topics apply`), check, describe.
//! - `metrics`: every metric of the service, named in one place, and the log lines that
//!   pair with them.
//! - `api`: the HTTP endpoints: `/metrics`, `/healthz` (the processing loop heartbeats) and
//!   `/readyz` (every assigned partition restored).
//! - `tls`: the one TLS set-up the HTTP clients (schema registry, order API forwarding) share.
//! - `simulate`: the engine over a file of JSON events, without Kafka.
//! - `generate`: realistic demo orders (out of order, redelivered) for the demo and benchmarks,
//!   as JSON lines or produced to an input topic in either format.

pub mod alloc;
pub mod api;
pub mod config;
pub mod emit;
pub mod engine;
pub mod generate;
pub mod ingest;
pub mod kafka;
pub mod metrics;
pub mod processor;
pub mod simulate;
pub mod state;
pub mod tls;
pub mod topics;
