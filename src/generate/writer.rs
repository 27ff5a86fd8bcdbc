//! Input events written as a producer on another schema than ours would write them
//! (`milestones generate --writer-schema FILE`): to see how the service reads a newer
//! producer's records (`ingest::plan`), in a test or through the pipeline benchmark.
//!
//! Each event is written with our schema, resolved by `apache_avro` to the writer schema
//! (its added fields take their defaults) and written again with it: about as slow as
//! resolution, which is fine for a generator.

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;

use crate::emit::RecordEncoder;
use crate::engine::OrderEvent;
use crate::ingest::avro::{HEADER_LEN, MAGIC_BYTE, ORDER_EVENT_SCHEMA};
use crate::ingest::{FormatError, RegistryClient};

/// Why a writer schema cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WriterSchemaError {
    #[error("the writer schema does not parse: {0}")]
    Parse(String),
    #[error("the writer schema is not a record")]
    NotARecord,
    /// Our schema's events cannot be written with it: a field it adds has no default, or a
    /// field it keeps changed type.
    #[error("an OrderEvent cannot be written with the writer schema: {0}")]
    Incompatible(String),
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// Writes events with a writer schema registered for their topic.
pub struct EvolvedWriter {
    ours: Schema,
    writer: Schema,
    /// Our schema's encoder, for the datum to resolve; its header is dropped.
    our_encoder: RecordEncoder,
    /// The writer schema's id in the registry.
    id: u32,
    datum: Vec<u8>,
}

impl EvolvedWriter {
    /// Checks that events can be written with `schema` and registers it under
    /// `<topic>-value`. Blocks on the registry through `runtime`: call from a plain thread.
    ///
    /// Errors: see [`WriterSchemaError`].
    pub fn new(
        schema: &str,
        topic: &str,
        registry: &RegistryClient,
        runtime: &tokio::runtime::Handle,
    ) -> Result<EvolvedWriter, WriterSchemaError> {
        let parse =
            |text| Schema::parse_str(text).map_err(|e| WriterSchemaError::Parse(e.to_string()));
        let ours = parse(ORDER_EVENT_SCHEMA)?;
        let writer = parse(schema)?;
        let Schema::Record(record) = &writer else {
            return Err(WriterSchemaError::NotARecord);
        };
        SchemaCompatibility::can_read(&ours, &writer)
            .map_err(|e| WriterSchemaError::Incompatible(e.to_string()))?;
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(FormatError::AsyncContext.into());
        }
        let full_name = record.name.fullname(None);
        let id = runtime
            .block_on(registry.register_avro(&format!("{topic}-value"), &full_name, schema))
            .map_err(FormatError::from)?;
        Ok(EvolvedWriter {
            ours,
            writer,
            our_encoder: RecordEncoder::avro_with_schema_id(0),
            id,
            datum: Vec::new(),
        })
    }

    /// Appends `event`'s record value, in the Confluent wire format under the writer
    /// schema, to `out`.
    ///
    /// Errors: resolution or writing fails (checked compatible when built, so not expected).
    pub fn encode(
        &mut self,
        event: &OrderEvent,
        out: &mut Vec<u8>,
    ) -> Result<(), WriterSchemaError> {
        let failed = |e: apache_avro::Error| WriterSchemaError::Incompatible(e.to_string());
        self.datum.clear();
        self.our_encoder.encode_event(event, &mut self.datum)?;
        let value = GenericDatumReader::builder(&self.ours)
            .reader_schema(&self.writer)
            .build()
            .and_then(|reader| reader.read_value(&mut &self.datum[HEADER_LEN..]))
            .map_err(failed)?;
        let bytes = GenericDatumWriter::builder(&self.writer)
            .build()
            .and_then(|writer| writer.write_value_to_vec(value))
            .map_err(failed)?;
        out.push(MAGIC_BYTE);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&bytes);
        Ok(())
    }
}
