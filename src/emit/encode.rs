//! Change records and order views (and, for `milestones generate`, input events) to record
//! values, JSON or Avro in the Confluent wire format under our own schemas.

use crate::engine::{MilestoneChange, OrderEvent, OrderView};
use crate::ingest::avro::{HEADER_LEN, MAGIC_BYTE, ORDER_EVENT_SCHEMA};
use crate::ingest::{Format, FormatError, RegistryClient};

use super::avro::{
    write_change, write_event, write_view, MILESTONE_CHANGE_SCHEMA, ORDER_VIEW_SCHEMA,
};

/// Encodes the values of one topic. The Avro schema is registered once, when the
/// encoder is built; each record then costs no registry call.
#[derive(Debug, Clone)]
pub struct RecordEncoder {
    /// The 5-byte Confluent header (magic byte, schema id) for Avro, computed once; `None`
    /// for JSON.
    header: Option<[u8; HEADER_LEN]>,
}

impl RecordEncoder {
    /// An encoder for milestone change records (`avro/milestone_change.avsc`), registering
    /// the schema under `<topic>-value` for Avro.
    ///
    /// Blocks on the registry through `runtime`: call from a plain thread, at startup.
    ///
    /// Errors: [`FormatError::NoRegistry`] for Avro without a registry,
    /// [`FormatError::Registry`] when registering fails, [`FormatError::AsyncContext`] when
    /// called from inside the runtime.
    pub fn for_changes(
        format: Format,
        topic: &str,
        registry: Option<&RegistryClient>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<RecordEncoder, FormatError> {
        RecordEncoder::registering(
            format,
            topic,
            registry,
            runtime,
            (
                "com.grocery.orders.MilestoneChange",
                MILESTONE_CHANGE_SCHEMA,
            ),
        )
    }

    /// An encoder for order views (`avro/order_view.avsc`); see
    /// [`RecordEncoder::for_changes`].
    pub fn for_views(
        format: Format,
        topic: &str,
        registry: Option<&RegistryClient>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<RecordEncoder, FormatError> {
        RecordEncoder::registering(
            format,
            topic,
            registry,
            runtime,
            ("com.grocery.orders.OrderView", ORDER_VIEW_SCHEMA),
        )
    }

    /// An encoder for input events (`avro/order_event.avsc`), as `milestones generate`
    /// writes them; see [`RecordEncoder::for_changes`].
    pub fn for_events(
        format: Format,
        topic: &str,
        registry: Option<&RegistryClient>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<RecordEncoder, FormatError> {
        RecordEncoder::registering(
            format,
            topic,
            registry,
            runtime,
            ("com.grocery.orders.OrderEvent", ORDER_EVENT_SCHEMA),
        )
    }

    /// An encoder for values of `schema` (Avro, named `full_name`), registered under
    /// `<topic>-value`; for JSON, none. See [`RecordEncoder::for_changes`].
    pub(crate) fn registering(
        format: Format,
        topic: &str,
        registry: Option<&RegistryClient>,
        runtime: &tokio::runtime::Handle,
        (full_name, schema): (&str, &str),
    ) -> Result<RecordEncoder, FormatError> {
        match format {
            Format::Json => Ok(RecordEncoder { header: None }),
            Format::Avro => {
                let registry = registry.ok_or(FormatError::NoRegistry)?;
                if tokio::runtime::Handle::try_current().is_ok() {
                    return Err(FormatError::AsyncContext);
                }
                let subject = format!("{topic}-value");
                let id = runtime.block_on(registry.register_avro(&subject, full_name, schema))?;
                Ok(RecordEncoder::avro_with_schema_id(id))
            }
        }
    }

    /// An Avro encoder whose schema is already registered under `schema_id` (by a deployment
    /// step, or in a benchmark): no registry call.
    pub fn avro_with_schema_id(schema_id: u32) -> RecordEncoder {
        let mut header = [MAGIC_BYTE; HEADER_LEN];
        header[1..].copy_from_slice(&schema_id.to_be_bytes());
        RecordEncoder {
            header: Some(header),
        }
    }

    /// The schema id the values carry, for Avro.
    pub fn schema_id(&self) -> Option<u32> {
        self.header
            .map(|h| u32::from_be_bytes([h[1], h[2], h[3], h[4]]))
    }

    /// Appends the value of one change record to `out` (which the caller clears and reuses).
    ///
    /// Errors: [`FormatError::OutOfRange`] (Avro) or [`FormatError::Json`], neither of which
    /// the engine's records can produce.
    pub fn encode_change(
        &self,
        change: &MilestoneChange,
        out: &mut Vec<u8>,
    ) -> Result<(), FormatError> {
        match &self.header {
            None => Ok(serde_json::to_writer(out, change)?),
            Some(header) => {
                out.extend_from_slice(header);
                write_change(change, out)
            }
        }
    }

    /// Appends the value of one order view to `out`; see [`RecordEncoder::encode_change`].
    pub fn encode_view(&self, view: &OrderView, out: &mut Vec<u8>) -> Result<(), FormatError> {
        match &self.header {
            None => Ok(serde_json::to_writer(out, view)?),
            Some(header) => {
                out.extend_from_slice(header);
                write_view(view, out)
            }
        }
    }

    /// Appends a value whose Avro datum, under this encoder's schema, is `datum`: the
    /// Confluent header, then the datum. For Avro encoders only (a JSON one appends the
    /// datum alone).
    pub(crate) fn frame_datum(&self, datum: &[u8], out: &mut Vec<u8>) {
        if let Some(header) = &self.header {
            out.extend_from_slice(header);
        }
        out.extend_from_slice(datum);
    }

    /// Appends the value of one input event to `out`, with the contract's field names in
    /// JSON; see [`RecordEncoder::encode_change`].
    pub fn encode_event(&self, event: &OrderEvent, out: &mut Vec<u8>) -> Result<(), FormatError> {
        match &self.header {
            None => Ok(serde_json::to_writer(out, event)?),
            Some(header) => {
                out.extend_from_slice(header);
                write_event(event, out);
                Ok(())
            }
        }
    }
}
