//! Input records to engine events: a record's value (JSON, or Avro in the Confluent wire
//! format) becomes a validated [`OrderEvent`](crate::engine::OrderEvent), or a
//! [`DecodeError`] whose class goes to the metrics and the dead-letter header.
//!
//! - `decode`: [`EventDecoder`], the one entry point, and the [`Format`] shared with `emit`.
//! - `avro`: the Confluent wire format and the event's Avro binary, read directly when the
//!   writer used our schema.
//! - `plan`: the event's Avro binary under an evolved writer schema, read by a plan compiled
//!   once per schema (`decode` falls back to `apache_avro`'s resolution for a writer schema
//!   the plan does not cover).
//! - `registry`: the schema registry client that `decode` and `emit` share.
//! - `fetch`: input records from the consumer in batches ([`FetchQueue`]), and the
//!   [`InputRecord`] the processor reads.

pub mod avro;
mod decode;
mod fetch;
mod plan;
mod registry;

pub use decode::{DecodeError, EventDecoder, Format, FormatError};
pub use fetch::{hold, Batch, FetchQueue, Fetched, InputRecord};
pub use registry::{RegistryClient, RegistryConfig, RegistryError};
