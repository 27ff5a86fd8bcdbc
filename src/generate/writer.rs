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

use crate::emit::{write_event, RecordEncoder};
use crate::engine::OrderEvent;
use crate::ingest::avro::ORDER_EVENT_SCHEMA;
use crate::ingest::{Format, FormatError, RegistryClient};

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

/// A writer schema, checked and registered for a topic: [`WriterSchema::encoder`] writes
/// events with it.
pub struct WriterSchema {
    ours: Schema,
    writer: Schema,
    /// Frames a datum under the writer schema's id.
    framing: RecordEncoder,
}

impl WriterSchema {
    /// Checks that events can be written with `schema` and registers it under
    /// `<topic>-value`. Blocks on the registry through `runtime`: call from a plain thread.
    ///
    /// Errors: see [`WriterSchemaError`].
    pub fn register(
        schema: &str,
        topic: &str,
        registry: &RegistryClient,
        runtime: &tokio::runtime::Handle,
    ) -> Result<WriterSchema, WriterSchemaError> {
        let parse =
            |text| Schema::parse_str(text).map_err(|e| WriterSchemaError::Parse(e.to_string()));
        let ours = parse(ORDER_EVENT_SCHEMA)?;
        let writer = parse(schema)?;
        let Schema::Record(record) = &writer else {
            return Err(WriterSchemaError::NotARecord);
        };
        SchemaCompatibility::can_read(&ours, &writer)
            .map_err(|e| WriterSchemaError::Incompatible(e.to_string()))?;
        let full_name = record.name.fullname(None);
        let framing = RecordEncoder::registering(
            Format::Avro,
            topic,
            Some(registry),
            runtime,
            (&full_name, schema),
        )?;
        Ok(WriterSchema {
            ours,
            writer,
            framing,
        })
    }

    /// An encoder of events under this schema; its resolution is set up once, here.
    ///
    /// Errors: `apache_avro` cannot set up the resolution (not expected for a schema
    /// [`WriterSchema::register`] accepted).
    pub fn encoder(&self) -> Result<EvolvedEncoder<'_>, WriterSchemaError> {
        Ok(EvolvedEncoder {
            resolve: GenericDatumReader::builder(&self.ours)
                .reader_schema(&self.writer)
                .build()
                .map_err(incompatible)?,
            write: GenericDatumWriter::builder(&self.writer)
                .build()
                .map_err(incompatible)?,
            framing: &self.framing,
            datum: Vec::new(),
        })
    }
}

fn incompatible(error: apache_avro::Error) -> WriterSchemaError {
    WriterSchemaError::Incompatible(error.to_string())
}

/// Writes events with a [`WriterSchema`].
pub struct EvolvedEncoder<'s> {
    /// Reads a datum of ours as a value of the writer schema.
    resolve: GenericDatumReader<'s>,
    write: GenericDatumWriter<'s>,
    framing: &'s RecordEncoder,
    datum: Vec<u8>,
}

impl EvolvedEncoder<'_> {
    /// Appends `event`'s record value, in the Confluent wire format under the writer
    /// schema, to `out`.
    ///
    /// Errors: resolution or writing fails (checked compatible when registered, so not
    /// expected).
    pub fn encode(
        &mut self,
        event: &OrderEvent,
        out: &mut Vec<u8>,
    ) -> Result<(), WriterSchemaError> {
        self.datum.clear();
        write_event(event, &mut self.datum);
        let value = self
            .resolve
            .read_value(&mut self.datum.as_slice())
            .map_err(incompatible)?;
        let datum = self.write.write_value_to_vec(value).map_err(incompatible)?;
        self.framing.frame_datum(&datum, out);
        Ok(())
    }
}
