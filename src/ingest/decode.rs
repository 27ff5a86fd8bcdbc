//! Record value to [`OrderEvent`]: JSON, or Avro in the Confluent wire format with the
//! writer's schema looked up in the registry once per schema id.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use schema_registry_converter::schema_registry_common::SchemaType;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::avro::{event_from_value, read_event, split_header, ORDER_EVENT_SCHEMA};
use super::plan::ReadPlan;
use super::registry::{RegistryClient, RegistryError};
use crate::engine::{EventError, OrderEvent};

/// How record values are written, on the input and output topics alike. Keys are always the
/// order id as plain UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro binary.
    Avro,
    /// One JSON object per record, the contract's field names.
    Json,
}

/// Why a decoder or encoder cannot be built, or a record cannot be encoded.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("the avro format needs a schema registry, and none is configured")]
    NoRegistry,
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// One of our own schema files does not parse: a bug, caught by the unit tests.
    #[error("schema {file} does not parse: {message}")]
    Schema { file: &'static str, message: String },
    /// A registry round trip was asked for from inside the tokio runtime, where it would
    /// block a worker thread; build decoders and encoders on a plain thread.
    #[error("schema registry call from inside the async runtime: call from a plain thread")]
    AsyncContext,
    #[error("{field} is {value}, beyond the range of an Avro long")]
    OutOfRange { field: &'static str, value: u64 },
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Why a record is not an event. Every variant but [`DecodeError::Registry`] is bad input
/// for the dead-letter topic; `Registry` is the registry failing and must be retried, not
/// dead-lettered. The messages are for a person reading a dead-letter header.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, not Avro in the Confluent wire format, or truncated.
    #[error("undecodable {format}: {reason}")]
    Undecodable {
        format: &'static str,
        reason: String,
    },
    #[error("schema id {id} is unknown to the schema registry at {url}")]
    UnknownSchema { id: u32, url: String },
    /// The writer's schema cannot be resolved to `avro/order_event.avsc`.
    #[error("writer schema id {id} cannot be read as an OrderEvent: {reason}")]
    IncompatibleSchema { id: u32, reason: String },
    #[error("invalid event ({}): {}", .0.class(), .0)]
    InvalidEvent(#[from] EventError),
    #[error("the record has no value (a tombstone); an event is expected")]
    MissingValue,
    /// The record key is not the event's `order_id`: the order's events would not all reach
    /// the same partition, and so the same task.
    #[error("record key {key} differs from the event's order_id `{order_id}`")]
    KeyMismatch { key: String, order_id: String },
    /// The registry could not be asked about schema id `id`. Not the record's fault.
    #[error("cannot look up schema id {id}: {reason}")]
    Registry { id: u32, reason: String },
}

impl DecodeError {
    /// A short, stable name for metrics labels and the dead-letter header.
    pub fn class(&self) -> &'static str {
        match self {
            DecodeError::Undecodable { .. } => "undecodable",
            DecodeError::UnknownSchema { .. } => "unknown_schema",
            DecodeError::IncompatibleSchema { .. } => "incompatible_schema",
            DecodeError::InvalidEvent(_) => "invalid_event",
            DecodeError::MissingValue => "missing_value",
            DecodeError::KeyMismatch { .. } => "key_mismatch",
            DecodeError::Registry { .. } => "registry_unavailable",
        }
    }

    /// True when the record is fine and decoding it again later may succeed: do not
    /// dead-letter it.
    pub fn is_retriable(&self) -> bool {
        matches!(self, DecodeError::Registry { .. })
    }
}

/// How long a schema id the registry does not know stays known as unknown before it is asked
/// again: bounded, in case the id was registered a moment after the record was written and
/// a replica lags; long enough that a run of bad records does not become a run of HTTP calls.
const UNKNOWN_ID_RECHECK: Duration = Duration::from_secs(60);

/// What the decoder knows about a writer schema id.
enum Writer {
    /// Same Parsing Canonical Form as our schema: same bytes, read directly.
    Ours,
    /// Another schema that resolves to ours, read by a plan compiled for it.
    Planned(Box<ReadPlan>),
    /// Another schema that resolves to ours in a way the plan does not cover: resolved
    /// through `apache_avro`, record by record.
    Resolving(Box<Schema>),
    Incompatible(String),
    Unknown {
        since: Instant,
        url: String,
    },
}

/// Decodes input record values into events. One per processor; `decode` takes `&self` and
/// is safe to share between threads.
pub struct EventDecoder {
    format: Format,
    registry: Option<RegistryClient>,
    runtime: tokio::runtime::Handle,
    reader: Schema,
    reader_canonical: String,
    /// Writer schemas by id. A `RwLock` and not a `Mutex`: after warm-up every access is a
    /// read. A std lock, not tokio's: it is never held across an await, and a registry call
    /// happens with no lock held.
    writers: RwLock<HashMap<u32, Arc<Writer>>>,
    /// The first [`SETTLED_SLOTS`] schema ids whose route is settled (every route but
    /// unknown, which is asked again later), filled in order under the `writers` lock: their
    /// records are read with no lock taken. Several threads decode at once, and even a read
    /// lock writes to the lock's memory, which the cores then pass back and forth at every
    /// record.
    settled: [OnceLock<(u32, Arc<Writer>)>; SETTLED_SLOTS],
}

/// How many writer schema ids [`EventDecoder`] reads without a lock. A topic's producers
/// use a few schema versions at a time; ids beyond these are read under the read lock.
const SETTLED_SLOTS: usize = 8;

impl Writer {
    /// How its records are read (see [`EventDecoder::schema_route`]).
    fn route(&self) -> &'static str {
        match self {
            Writer::Ours => "direct",
            Writer::Planned(_) => "planned",
            Writer::Resolving(_) => "resolved",
            Writer::Incompatible(_) => "incompatible",
            Writer::Unknown { .. } => "unknown",
        }
    }
}

/// An Avro datum under writer schema `id` that cannot be read, and why.
fn undecodable_datum(id: u32, reason: String) -> DecodeError {
    DecodeError::Undecodable {
        format: "avro",
        reason: format!("schema id {id}: {reason}"),
    }
}

impl EventDecoder {
    /// Errors: [`FormatError::NoRegistry`] for Avro without a registry. Makes no call.
    pub fn new(
        format: Format,
        registry: Option<RegistryClient>,
        runtime: tokio::runtime::Handle,
    ) -> Result<EventDecoder, FormatError> {
        if format == Format::Avro && registry.is_none() {
            return Err(FormatError::NoRegistry);
        }
        let reader = Schema::parse_str(ORDER_EVENT_SCHEMA).map_err(|e| FormatError::Schema {
            file: "avro/order_event.avsc",
            message: e.to_string(),
        })?;
        Ok(EventDecoder {
            format,
            registry,
            runtime,
            reader_canonical: reader.canonical_form(),
            reader,
            writers: RwLock::new(HashMap::new()),
            settled: Default::default(),
        })
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Teaches the decoder writer schema `id` without asking the registry: a schema known
    /// ahead (pre-warming), or a benchmark. A later record with this id uses it as if it had
    /// been fetched.
    pub fn add_writer_schema(&self, id: u32, schema: &str) {
        self.remember(id, self.plan(schema));
    }

    /// Learns the writer schema each of `topics` is most likely written with, the latest
    /// registered for its values, so that the first records need not wait for the registry
    /// (a record with another id is looked up as ever). For Avro only; nothing is learned
    /// of a topic without such a subject, or while the registry does not answer within
    /// [`LEARN_WAIT`] (the first record asks again, and says so).
    pub fn learn_latest(&self, topics: &[String]) {
        let (Format::Avro, Some(registry)) = (self.format, &self.registry) else {
            return;
        };
        for topic in topics {
            let latest = registry.latest_value_schema(topic);
            let wait = async { tokio::time::timeout(LEARN_WAIT, latest).await };
            match self.runtime.block_on(wait) {
                Ok(Ok(Some(latest)))
                    if latest.schema_type == SchemaType::Avro && latest.references.is_empty() =>
                {
                    self.remember(latest.id, self.plan(&latest.schema));
                }
                Ok(Ok(_)) => debug!(topic, "no Avro schema registered for the topic's values"),
                // The registry is down or slow: the first record asks it again.
                Ok(Err(error)) => return debug!(topic, %error, "the input's schema not learned"),
                Err(_) => return debug!(topic, ?LEARN_WAIT, "the input's schema not learned"),
            }
        }
    }

    /// Caches what writer schema `id` is, and says how its records are read when that is
    /// new (the shards may meet a new id at once, and each fetch it).
    fn remember(&self, id: u32, writer: Writer) {
        let writer = Arc::new(writer);
        let mut writers = self.writers.write().unwrap_or_else(|e| e.into_inner());
        let before = writers
            .insert(id, writer.clone())
            .map(|before| before.route());
        if before != Some(writer.route()) {
            log_route(id, &writer);
        }
        // Under the write lock, so that two threads never give one id two slots.
        if !matches!(*writer, Writer::Unknown { .. }) && self.settled_writer(id).is_none() {
            if let Some(free) = self.settled.iter().find(|slot| slot.get().is_none()) {
                let _ = free.set((id, writer));
            }
        }
    }

    /// The writer of schema id `id` if its route is settled and it has one of the slots.
    fn settled_writer(&self, id: u32) -> Option<&Writer> {
        for slot in &self.settled {
            match slot.get() {
                Some((slot_id, writer)) if *slot_id == id => return Some(writer),
                Some(_) => continue,
                None => return None, // filled in order: no later slot is set
            }
        }
        None
    }

    /// How records with writer schema `id` are read, once the id is cached: `"direct"` (the
    /// writer used our schema), `"planned"` (another schema, read by its plan),
    /// `"resolved"` (another schema, resolved to ours through `apache_avro`),
    /// `"incompatible"` or `"unknown"`. For logs and tests.
    pub fn schema_route(&self, id: u32) -> Option<&'static str> {
        let writers = self.writers.read().unwrap_or_else(|e| e.into_inner());
        writers.get(&id).map(|writer| writer.route())
    }

    /// Decodes and validates one record. `key` is the record key (the order id, UTF-8).
    ///
    /// Synchronous and local once a schema id is cached; the first record with a new schema
    /// id blocks on one registry lookup through the runtime handle, so this must be called
    /// from a plain thread, not from a tokio worker.
    ///
    /// Errors: see [`DecodeError`]; [`DecodeError::class`] names each case.
    pub fn decode(
        &self,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Result<OrderEvent, DecodeError> {
        let payload = payload.ok_or(DecodeError::MissingValue)?;
        let event = match self.format {
            Format::Json => decode_json(payload)?,
            Format::Avro => self.decode_avro(payload)?,
        };
        event.validate()?;
        if key != Some(event.order_id.as_bytes()) {
            return Err(DecodeError::KeyMismatch {
                key: match key {
                    Some(key) => format!("`{}`", String::from_utf8_lossy(key)),
                    None => "(none)".to_owned(),
                },
                order_id: event.order_id.to_string(),
            });
        }
        Ok(event)
    }

    fn decode_avro(&self, payload: &[u8]) -> Result<OrderEvent, DecodeError> {
        let undecodable = |reason| DecodeError::Undecodable {
            format: "avro",
            reason,
        };
        let (id, datum) = split_header(payload).map_err(undecodable)?;
        if let Some(writer) = self.settled_writer(id) {
            return self.read_with(id, writer, datum);
        }
        if let Some(result) = self.decode_known(id, datum) {
            return result;
        }
        self.remember(id, self.fetch(id)?);
        self.decode_known(id, datum)
            .unwrap_or_else(|| unreachable!("schema id {id} was just cached"))
    }

    /// Decodes with a cached writer schema; `None` when the id is not cached (or an unknown
    /// id is due for a recheck).
    fn decode_known(&self, id: u32, datum: &[u8]) -> Option<Result<OrderEvent, DecodeError>> {
        let writers = self.writers.read().unwrap_or_else(|e| e.into_inner());
        match &**writers.get(&id)? {
            Writer::Unknown { since, .. } if since.elapsed() >= UNKNOWN_ID_RECHECK => None,
            writer => Some(self.read_with(id, writer, datum)),
        }
    }

    /// Decodes with what is known of writer schema `id`.
    fn read_with(&self, id: u32, writer: &Writer, datum: &[u8]) -> Result<OrderEvent, DecodeError> {
        let undecodable = |reason| undecodable_datum(id, reason);
        match writer {
            Writer::Ours => read_event(datum).map_err(undecodable),
            Writer::Planned(plan) => plan.read(datum).map_err(undecodable),
            Writer::Resolving(writer) => resolve(writer, &self.reader, datum).map_err(undecodable),
            Writer::Incompatible(reason) => Err(DecodeError::IncompatibleSchema {
                id,
                reason: reason.clone(),
            }),
            Writer::Unknown { url, .. } => Err(DecodeError::UnknownSchema {
                id,
                url: url.clone(),
            }),
        }
    }

    /// Looks up a writer schema and decides how to read it. Blocks on the registry.
    fn fetch(&self, id: u32) -> Result<Writer, DecodeError> {
        let Some(registry) = &self.registry else {
            unreachable!("an avro decoder is built with a registry");
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(DecodeError::Registry {
                id,
                reason: FormatError::AsyncContext.to_string(),
            });
        }
        let registered = match self.runtime.block_on(registry.schema_by_id(id)) {
            Ok(registered) => registered,
            Err(RegistryError::UnknownId { url, .. }) => {
                return Ok(Writer::Unknown {
                    since: Instant::now(),
                    url,
                })
            }
            Err(e) => {
                return Err(DecodeError::Registry {
                    id,
                    reason: e.to_string(),
                })
            }
        };
        if registered.schema_type != SchemaType::Avro {
            return Ok(Writer::Incompatible(format!(
                "a {:?} schema, not Avro",
                registered.schema_type
            )));
        }
        if !registered.references.is_empty() {
            return Ok(Writer::Incompatible(
                "the schema has references, which an order event does not need".to_owned(),
            ));
        }
        Ok(self.plan(&registered.schema))
    }

    /// Decides how to read a writer schema: directly, by resolution, or not at all.
    fn plan(&self, writer: &str) -> Writer {
        let writer = match Schema::parse_str(writer) {
            Ok(schema) => schema,
            Err(e) => return Writer::Incompatible(format!("the schema does not parse: {e}")),
        };
        if writer.canonical_form() == self.reader_canonical {
            return Writer::Ours;
        }
        match SchemaCompatibility::can_read(&writer, &self.reader) {
            Ok(_) => match ReadPlan::compile(&writer) {
                Some(plan) => Writer::Planned(Box::new(plan)),
                None => Writer::Resolving(Box::new(writer)),
            },
            Err(e) => Writer::Incompatible(e.to_string()),
        }
    }
}

/// How long the start waits for the registry's latest schema of an input: a best effort,
/// which must not hold the start back when the registry is slow or down.
const LEARN_WAIT: Duration = Duration::from_secs(1);

/// Says how the records of schema id `id` are read: an operator sees a producer whose
/// schema is read the slow way, or not at all, without reading the dead letters.
fn log_route(id: u32, writer: &Writer) {
    match writer {
        Writer::Ours => info!(schema_id = id, "writer schema is ours: read directly"),
        Writer::Planned(_) => info!(
            schema_id = id,
            "writer schema differs from ours: read by a plan compiled for it"
        ),
        Writer::Resolving(_) => warn!(
            schema_id = id,
            "writer schema is resolved to ours record by record (a recursive type or a \
             promotion the read plan does not cover): over ten times slower per record"
        ),
        Writer::Incompatible(reason) => warn!(
            schema_id = id,
            reason,
            "writer schema cannot be read as an OrderEvent: its records go to the dead-letter topic"
        ),
        Writer::Unknown { url, .. } => warn!(
            schema_id = id,
            url,
            "schema id unknown to the registry: its records go to the dead-letter topic until \
             it is known (asked again after a minute)"
        ),
    }
}

/// Reads `datum`, written with `writer`, as an event by `apache_avro`'s schema resolution to
/// `reader` (ours). The way for a writer schema [`ReadPlan`] does not cover, and what the
/// plan's tests compare it with.
pub(super) fn resolve(
    writer: &Schema,
    reader: &Schema,
    datum: &[u8],
) -> Result<OrderEvent, String> {
    let mut bytes = datum;
    let value = GenericDatumReader::builder(writer)
        .reader_schema(reader)
        .build()
        .and_then(|reader| reader.read_value(&mut bytes))
        .map_err(|e| e.to_string())?;
    match bytes.len() {
        0 => event_from_value(value),
        left => Err(format!(
            "{left} bytes left after the event: not written with this schema"
        )),
    }
}

/// Parses a JSON event. Reparses only on error, to tell bytes that are not JSON at all
/// (undecodable) from JSON that is not a valid event.
fn decode_json(payload: &[u8]) -> Result<OrderEvent, DecodeError> {
    OrderEvent::from_json(payload).map_err(|error| {
        match serde_json::from_slice::<serde::de::IgnoredAny>(payload) {
            Err(not_json) if matches!(error, EventError::Malformed(_)) => {
                DecodeError::Undecodable {
                    format: "json",
                    reason: not_json.to_string(),
                }
            }
            _ => DecodeError::InvalidEvent(error),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_decoder() -> (tokio::runtime::Runtime, EventDecoder) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let decoder = EventDecoder::new(Format::Json, None, runtime.handle().clone()).unwrap();
        (runtime, decoder)
    }

    /// An Avro decoder whose registry is never called: the tests teach it their schemas.
    fn avro_decoder() -> (tokio::runtime::Runtime, EventDecoder) {
        let (runtime, _) = json_decoder();
        let client =
            RegistryClient::new(&super::super::RegistryConfig::new("http://unused")).unwrap();
        let decoder =
            EventDecoder::new(Format::Avro, Some(client), runtime.handle().clone()).unwrap();
        (runtime, decoder)
    }

    const EVENT: &str = r#"{"event_id":"e1","order_id":"A","event_type":"OrderCreated","source":"ordering","occurred_at":1700000000000}"#;

    #[test]
    fn decodes_a_json_event_keyed_by_its_order() {
        let (_runtime, decoder) = json_decoder();
        let event = decoder.decode(Some(b"A"), Some(EVENT.as_bytes())).unwrap();
        assert_eq!(event.event_id, "e1");
        assert_eq!(event.marketplace, "US");
    }

    #[test]
    fn json_errors_have_their_class() {
        let (_runtime, decoder) = json_decoder();
        type Case<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, &'a str);
        let cases: [Case; 7] = [
            (Some(b"A"), None, "missing_value"),
            (Some(b"A"), Some(b"\x00\x00\x00\x00\x01garbage"), "undecodable"),
            (Some(b"A"), Some(br#"{"event_id":"e1""#), "undecodable"),
            (Some(b"A"), Some(br#"{"order_id":"A"}"#), "invalid_event"),
            (Some(b"B"), Some(EVENT.as_bytes()), "key_mismatch"),
            (None, Some(EVENT.as_bytes()), "key_mismatch"),
            (
                Some(b"A"),
                Some(br#"{"event_id":"e1","order_id":"A","event_type":"X","source":"s","occurred_at":1,"items":[{"asin":"B","qty":0}]}"#),
                "invalid_event",
            ),
        ];
        for (key, payload, class) in cases {
            let error = decoder.decode(key, payload).unwrap_err();
            assert_eq!(error.class(), class, "{error}");
            assert!(!error.is_retriable());
        }
    }

    #[test]
    fn invalid_events_keep_the_event_error_class_in_the_message() {
        let (_runtime, decoder) = json_decoder();
        let line = EVENT.replace(r#""order_id":"A""#, r#""order_id":"""#);
        let error = decoder
            .decode(Some(b""), Some(line.as_bytes()))
            .unwrap_err();
        assert_eq!(error.class(), "invalid_event");
        assert!(error.to_string().contains("(empty_field)"), "{error}");
        assert!(error.to_string().contains("order_id"), "{error}");
    }

    #[test]
    fn avro_needs_a_registry() {
        let (runtime, _) = json_decoder();
        let error = EventDecoder::new(Format::Avro, None, runtime.handle().clone());
        assert!(matches!(error, Err(FormatError::NoRegistry)));
    }

    #[test]
    fn settled_schema_ids_take_the_lock_free_slots_in_order_and_the_rest_read_the_same() {
        let (_runtime, decoder) = avro_decoder();
        // A writer with an optional field after ours: its datum is ours and a null (0).
        let attributes =
            r#"{"name": "attributes", "type": {"type": "map", "values": "string"}, "default": {}}"#;
        assert!(
            ORDER_EVENT_SCHEMA.contains(attributes),
            "attributes is our last field"
        );
        let evolved = ORDER_EVENT_SCHEMA.replace(
            attributes,
            &format!(r#"{attributes}, {{"name": "channel", "type": ["null", "string"], "default": null}}"#),
        );
        let event = crate::engine::event::test_event("e1", "OrderCreated", 1, &[("B1", 2)]);
        decoder.remember(
            42,
            Writer::Unknown {
                since: Instant::now(),
                url: "http://unused".into(),
            },
        );
        let ids = 1..=SETTLED_SLOTS as u32 + 2;
        for id in ids.clone() {
            decoder.add_writer_schema(
                id,
                if id % 2 == 1 {
                    ORDER_EVENT_SCHEMA
                } else {
                    &evolved
                },
            );
        }
        for id in ids {
            let route = if id % 2 == 1 { "direct" } else { "planned" };
            assert_eq!(decoder.schema_route(id), Some(route), "schema id {id}");
            assert_eq!(
                decoder.settled_writer(id).is_some(),
                id as usize <= SETTLED_SLOTS,
                "schema id {id}: the first {SETTLED_SLOTS} settled ids have slots, in order"
            );
            let mut payload = Vec::new();
            crate::emit::RecordEncoder::avro_with_schema_id(id)
                .encode_event(&event, &mut payload)
                .unwrap();
            if route == "planned" {
                payload.push(0); // channel: null
            }
            assert_eq!(
                decoder.decode(Some(b"A"), Some(&payload)).unwrap(),
                event,
                "schema id {id}"
            );
        }
        assert!(
            decoder.settled_writer(42).is_none(),
            "an unknown id is asked again: no slot"
        );
        assert_eq!(decoder.schema_route(42), Some("unknown"));
    }

    #[test]
    fn our_own_schema_reads_directly_and_an_evolved_one_by_its_plan() {
        let (_runtime, decoder) = avro_decoder();
        assert!(matches!(decoder.plan(ORDER_EVENT_SCHEMA), Writer::Ours));
        let extra = ORDER_EVENT_SCHEMA.replace(
            r#"{"name": "attributes""#,
            r#"{"name": "channel", "type": ["null", "string"], "default": null},
    {"name": "attributes""#,
        );
        assert!(matches!(decoder.plan(&extra), Writer::Planned(_)));
        let no_event_id = ORDER_EVENT_SCHEMA.replace(r#""name": "event_id""#, r#""name": "id""#);
        match decoder.plan(&no_event_id) {
            Writer::Incompatible(reason) => assert!(reason.contains("event_id"), "{reason}"),
            _ => panic!("a writer without event_id must be incompatible"),
        }
    }
}
