//! Engine output to record values: milestone change records and order views, as JSON or as
//! Avro in the Confluent wire format under `avro/milestone_change.avsc` and
//! `avro/order_view.avsc`. Keys are the order id as plain UTF-8 in both formats.
//!
//! - `encode`: [`RecordEncoder`], one per topic, registering its schema at startup (also
//!   used by `milestones generate` for input events).
//! - `avro`: the Avro binary of the records, written by hand into the output buffer.
//! - [`txn`]: the transactional producer's calls (send, flush, abort, retry) as librdkafka
//!   documents them for a producer whose delivery reports the caller serves.

mod avro;
mod encode;
pub mod txn;

pub(crate) use avro::write_event;
pub use avro::{MILESTONE_CHANGE_SCHEMA, ORDER_VIEW_SCHEMA};
pub use encode::RecordEncoder;
