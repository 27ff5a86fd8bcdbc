//! Events written with another schema than ours, read by a plan compiled once per writer
//! schema: for each of the writer's fields, in its order, where the value goes in the
//! [`OrderEvent`] or how to skip it. No intermediate `Value`: within 1.4 times the direct
//! path's time, where resolving through `apache_avro` took 13 to 23 times the plan's
//! (BENCHMARKS.md, record formats).
//!
//! The plan reads what a producer evolving `avro/order_event.avsc` compatibly writes:
//! fields added (of any type, anywhere), optional fields left out (their defaults), fields
//! reordered, `int` for `occurred_at`, `bytes` for a string, a string made a union with
//! `null`, item records with more fields. A writer schema that asks for anything else (a
//! promotion we do not list, a union around an array) gets no plan: the decoder then
//! resolves through `apache_avro`, as before. The two agree on every schema the plan
//! reads (the tests compare them); one difference is deliberate: a field the event does
//! not have is skipped, not checked (its strings are not validated as UTF-8, its enum index
//! not bounded), where resolution decodes it whole and refuses such a record.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};

use apache_avro::schema::{
    InnerDecimalSchema, Name, NamespaceRef, RecordSchema, ResolvedSchema, UuidSchema,
};
use apache_avro::Schema;
use compact_str::CompactString;

use super::avro::Reader;
use crate::engine::{event, Item, OrderEvent};

/// A writer schema's plan: how to read its records into events.
#[derive(Debug)]
pub struct ReadPlan {
    steps: Vec<Step>,
}

/// One field of the writer's record, in the writer's order.
#[derive(Debug)]
enum Step {
    Keep(Target, Shape),
    Items(ItemPlan),
    Attributes,
    Skip(Skip),
}

/// The event's scalar fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    EventId,
    OrderId,
    EventType,
    Source,
    OccurredAt,
    LineOfBusiness,
    Marketplace,
    CustomerId,
}

/// The event's scalar fields by their names in the schema.
const TARGETS: [(&str, Target); 8] = [
    ("event_id", Target::EventId),
    ("order_id", Target::OrderId),
    ("event_type", Target::EventType),
    ("source", Target::Source),
    ("occurred_at", Target::OccurredAt),
    ("line_of_business", Target::LineOfBusiness),
    ("marketplace", Target::Marketplace),
    ("customer_id", Target::CustomerId),
];

impl Target {
    fn of(field: &str) -> Option<Target> {
        TARGETS
            .iter()
            .find(|(name, _)| *name == field)
            .map(|&(_, target)| target)
    }

    fn name(self) -> &'static str {
        TARGETS
            .iter()
            .find(|(_, target)| *target == self)
            .map_or("", |&(name, _)| name)
    }

    /// Whether a written value of this kind resolves to the field. `null` only for the
    /// optional customer; `bytes` reads as a string, except into the customer's union,
    /// which resolution does not match bytes to.
    fn accepts(self, kind: Scalar) -> bool {
        match (self, kind) {
            (Target::OccurredAt, kind) => kind == Scalar::Long,
            (Target::CustomerId, kind) => matches!(kind, Scalar::Null | Scalar::Text),
            (_, kind) => matches!(kind, Scalar::Text | Scalar::Bytes),
        }
    }
}

/// The written kinds a kept field can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scalar {
    Null,
    Text,
    Bytes,
    /// `int`, `long` or `timestamp-millis`: all a zigzag varint.
    Long,
}

impl Scalar {
    fn of(schema: &Schema) -> Option<Scalar> {
        Some(match schema {
            Schema::Null => Scalar::Null,
            Schema::String => Scalar::Text,
            Schema::Bytes => Scalar::Bytes,
            Schema::Int | Schema::Long | Schema::TimestampMillis => Scalar::Long,
            _ => return None,
        })
    }
}

/// How a kept value is written: plainly, or as a union whose branches each have a kind the
/// field accepts (`Some`) or not (`None`: a record that takes that branch is an error, as
/// it is for resolution).
#[derive(Debug)]
enum Shape {
    Plain(Scalar),
    Union(Vec<Option<Scalar>>),
}

/// The writer's item record: per field, `asin`, `qty` or skipped.
#[derive(Debug)]
struct ItemPlan {
    fields: Vec<ItemStep>,
}

#[derive(Debug)]
enum ItemStep {
    Asin(Shape),
    Qty,
    Skip(Skip),
}

/// How to step over a value the event does not have.
#[derive(Debug)]
enum Skip {
    Nothing,
    Bytes(usize),
    Varint,
    /// A length, then that many bytes.
    Sized,
    Array(Box<Skip>),
    /// Blocks of a string key and a value.
    Map(Box<Skip>),
    Record(Vec<Skip>),
    Union(Vec<Skip>),
}

/// The fields of our schema without a default: a writer must write them.
const REQUIRED: [&str; 5] = [
    "event_id",
    "order_id",
    "event_type",
    "source",
    "occurred_at",
];

/// How deep a writer's named types may refer to each other before the plan gives up: a
/// recursive type (a list of itself) has no finite skip, and resolution handles it.
const MAX_DEPTH: usize = 32;

impl ReadPlan {
    /// The plan for `writer`, or `None` when the writer schema asks for more than the plan
    /// reads (see the module's documentation). Call it for a writer schema already found
    /// compatible with ours.
    pub fn compile(writer: &Schema) -> Option<ReadPlan> {
        let Schema::Record(record) = writer else {
            return None;
        };
        let resolved = ResolvedSchema::try_from(writer).ok()?;
        let compiler = Compiler {
            names: resolved.get_names(),
        };
        let namespace = record.name.namespace();
        let mut steps = Vec::with_capacity(record.fields.len());
        let mut seen = Vec::new();
        for field in &record.fields {
            let step = match (field.name.as_str(), Target::of(&field.name)) {
                (_, Some(target)) => {
                    let shape =
                        compiler.shape(&field.schema, namespace, |kind| target.accepts(kind))?;
                    seen.push(field.name.as_str());
                    Step::Keep(target, shape)
                }
                ("items", None) => {
                    seen.push("items");
                    compiler.items(&field.schema, namespace)?
                }
                ("attributes", None) => {
                    seen.push("attributes");
                    compiler.attributes(&field.schema, namespace)?
                }
                _ => Step::Skip(compiler.skip(&field.schema, namespace, 0)?),
            };
            steps.push(step);
        }
        if REQUIRED.iter().any(|name| !seen.contains(name)) {
            return None;
        }
        Some(ReadPlan { steps })
    }

    /// Reads one record written with the plan's writer schema.
    ///
    /// Errors: a message naming the field where the bytes stop making sense.
    pub fn read(&self, datum: &[u8]) -> Result<OrderEvent, String> {
        let mut r = Reader::new(datum);
        let mut event = OrderEvent {
            event_id: CompactString::default(),
            order_id: CompactString::default(),
            event_type: CompactString::default(),
            source: CompactString::default(),
            occurred_at: 0,
            line_of_business: event::default_line_of_business(),
            marketplace: event::default_marketplace(),
            customer_id: None,
            items: Vec::new(),
            attributes: BTreeMap::new(),
        };
        for step in &self.steps {
            match step {
                Step::Keep(target, shape) => read_field(&mut r, *target, shape, &mut event)?,
                Step::Items(plan) => read_items(&mut r, plan, &mut event.items)?,
                Step::Attributes => {
                    while let Some(count) = r.block("attributes")? {
                        for _ in 0..count {
                            let key = r.string("attributes key")?;
                            let value = r.string("attributes value")?;
                            event.attributes.insert(key, value);
                        }
                    }
                }
                Step::Skip(skip) => skip_value(&mut r, skip)?,
            }
        }
        match r.left() {
            0 => Ok(event),
            left => Err(format!(
                "{left} bytes left after the event: not written with this schema"
            )),
        }
    }
}

/// Reads the branch index of a union and its kind.
fn branch(
    r: &mut Reader<'_>,
    branches: &[Option<Scalar>],
    field: &'static str,
) -> Result<Scalar, String> {
    let index = r.long(field)?;
    match usize::try_from(index).ok().and_then(|i| branches.get(i)) {
        Some(Some(kind)) => Ok(*kind),
        Some(None) => Err(format!(
            "{field}: union branch {index} does not resolve to the field's type"
        )),
        None => Err(format!(
            "{field}: union branch {index} of {}",
            branches.len()
        )),
    }
}

fn read_field(
    r: &mut Reader<'_>,
    target: Target,
    shape: &Shape,
    event: &mut OrderEvent,
) -> Result<(), String> {
    let field = target.name();
    let kind = match shape {
        Shape::Plain(kind) => *kind,
        Shape::Union(branches) => branch(r, branches, field)?,
    };
    // A plan is compiled only with kinds its fields accept (`Target::accepts`): the last
    // arm is for completeness, not reached.
    let cannot = || format!("{field}: a {kind:?} value, which the field cannot take");
    match (target, kind) {
        (Target::OccurredAt, Scalar::Long) => event.occurred_at = r.long(field)?,
        (Target::CustomerId, Scalar::Null) => event.customer_id = None,
        (Target::CustomerId, Scalar::Text) => event.customer_id = Some(r.string(field)?),
        (_, Scalar::Text | Scalar::Bytes) => match text_field(event, target) {
            Some(slot) => *slot = r.string(field)?,
            None => return Err(cannot()),
        },
        _ => return Err(cannot()),
    }
    Ok(())
}

/// The event's required or defaulted string field `target` is.
fn text_field(event: &mut OrderEvent, target: Target) -> Option<&mut CompactString> {
    Some(match target {
        Target::EventId => &mut event.event_id,
        Target::OrderId => &mut event.order_id,
        Target::EventType => &mut event.event_type,
        Target::Source => &mut event.source,
        Target::LineOfBusiness => &mut event.line_of_business,
        Target::Marketplace => &mut event.marketplace,
        Target::OccurredAt | Target::CustomerId => return None,
    })
}

fn read_items(r: &mut Reader<'_>, plan: &ItemPlan, items: &mut Vec<Item>) -> Result<(), String> {
    while let Some(count) = r.block("items")? {
        items.reserve(count);
        for _ in 0..count {
            let mut asin = CompactString::default();
            let mut qty = 0;
            for step in &plan.fields {
                match step {
                    ItemStep::Asin(shape) => {
                        if let Shape::Union(branches) = shape {
                            branch(r, branches, "items[].asin")?;
                        }
                        asin = r.string("items[].asin")?;
                    }
                    ItemStep::Qty => qty = r.int("items[].qty")?,
                    ItemStep::Skip(skip) => skip_value(r, skip)?,
                }
            }
            items.push(Item { asin, qty });
        }
    }
    Ok(())
}

fn skip_value(r: &mut Reader<'_>, skip: &Skip) -> Result<(), String> {
    const FIELD: &str = "a field the event does not have";
    match skip {
        Skip::Nothing => Ok(()),
        Skip::Bytes(n) => Ok(r.skip_bytes(*n, FIELD)?),
        Skip::Varint => Ok(r.long(FIELD).map(drop)?),
        Skip::Sized => {
            let len = r.long(FIELD)?;
            let len = usize::try_from(len).map_err(|_| format!("{FIELD}: length {len}"))?;
            Ok(r.skip_bytes(len, FIELD)?)
        }
        Skip::Array(item) => {
            while let Some(count) = r.block(FIELD)? {
                for _ in 0..count {
                    skip_value(r, item)?;
                }
            }
            Ok(())
        }
        Skip::Map(value) => {
            while let Some(count) = r.block(FIELD)? {
                for _ in 0..count {
                    skip_value(r, &Skip::Sized)?;
                    skip_value(r, value)?;
                }
            }
            Ok(())
        }
        Skip::Record(fields) => fields.iter().try_for_each(|field| skip_value(r, field)),
        Skip::Union(branches) => {
            let index = r.long(FIELD)?;
            match usize::try_from(index).ok().and_then(|i| branches.get(i)) {
                Some(branch) => skip_value(r, branch),
                None => Err(format!(
                    "{FIELD}: union branch {index} of {}",
                    branches.len()
                )),
            }
        }
    }
}

/// Compiles against one writer schema's named types.
struct Compiler<'s, 'n> {
    names: &'n HashMap<Name, &'s Schema>,
}

impl<'s> Compiler<'s, '_> {
    /// `schema` with a reference to a named type replaced by its definition, and the
    /// namespace its own references are relative to.
    fn deref<'a>(
        &self,
        schema: &'a Schema,
        namespace: NamespaceRef<'a>,
        depth: usize,
    ) -> Option<(&'a Schema, NamespaceRef<'a>)>
    where
        's: 'a,
    {
        match schema {
            Schema::Ref { name } => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                let full = name.fully_qualified_name(namespace);
                let named: &'s Schema = self.names.get(full.borrow() as &Name)?;
                self.deref(named, named.namespace(), depth + 1)
            }
            Schema::Record(_) | Schema::Enum(_) | Schema::Fixed(_) => {
                Some((schema, schema.namespace().or(namespace)))
            }
            _ => Some((schema, namespace)),
        }
    }

    /// How a kept field is written, when every plain kind it can take is one `accepts`.
    fn shape(
        &self,
        schema: &Schema,
        namespace: NamespaceRef<'_>,
        accepts: impl Fn(Scalar) -> bool,
    ) -> Option<Shape> {
        match self.deref(schema, namespace, 0)?.0 {
            Schema::Union(union) => Some(Shape::Union(
                union
                    .variants()
                    .iter()
                    .map(|variant| {
                        self.deref(variant, namespace, 0)
                            .and_then(|(v, _)| Scalar::of(v))
                            .filter(|&kind| accepts(kind))
                    })
                    .collect(),
            )),
            plain => Scalar::of(plain)
                .filter(|&kind| accepts(kind))
                .map(Shape::Plain),
        }
    }

    fn items(&self, schema: &Schema, namespace: NamespaceRef<'_>) -> Option<Step> {
        let (Schema::Array(array), namespace) = self.deref(schema, namespace, 0)? else {
            return None;
        };
        let (Schema::Record(RecordSchema { name, fields, .. }), _) =
            self.deref(&array.items, namespace, 0)?
        else {
            return None;
        };
        let namespace = name.namespace().or(namespace);
        let mut steps = Vec::with_capacity(fields.len());
        let (mut asin, mut qty) = (false, false);
        for field in fields {
            steps.push(match field.name.as_str() {
                "asin" => {
                    asin = true;
                    // As a string field of the event: text or bytes, in a union or not;
                    // never null.
                    let shape = self.shape(&field.schema, namespace, |kind| {
                        matches!(kind, Scalar::Text | Scalar::Bytes)
                    })?;
                    ItemStep::Asin(shape)
                }
                "qty" => {
                    qty = true;
                    match self.deref(&field.schema, namespace, 0)?.0 {
                        Schema::Int => ItemStep::Qty,
                        _ => return None,
                    }
                }
                _ => ItemStep::Skip(self.skip(&field.schema, namespace, 0)?),
            });
        }
        (asin && qty).then_some(Step::Items(ItemPlan { fields: steps }))
    }

    /// The attributes: a map of strings (or bytes).
    fn attributes(&self, schema: &Schema, namespace: NamespaceRef<'_>) -> Option<Step> {
        let (Schema::Map(map), namespace) = self.deref(schema, namespace, 0)? else {
            return None;
        };
        match self.deref(&map.types, namespace, 0)?.0 {
            Schema::String | Schema::Bytes => Some(Step::Attributes),
            _ => None,
        }
    }

    /// How to step over a value of `schema`; `None` for a recursive type.
    fn skip(&self, schema: &Schema, namespace: NamespaceRef<'_>, depth: usize) -> Option<Skip> {
        if depth >= MAX_DEPTH {
            return None;
        }
        let (schema, namespace) = self.deref(schema, namespace, depth)?;
        let inner = |s: &Schema| self.skip(s, namespace, depth + 1);
        Some(match schema {
            Schema::Null => Skip::Nothing,
            Schema::Boolean => Skip::Bytes(1),
            Schema::Float => Skip::Bytes(4),
            Schema::Double => Skip::Bytes(8),
            Schema::Int
            | Schema::Long
            | Schema::Enum(_)
            | Schema::Date
            | Schema::TimeMillis
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Skip::Varint,
            Schema::Bytes | Schema::String | Schema::BigDecimal => Skip::Sized,
            Schema::Fixed(fixed) | Schema::Duration(fixed) => Skip::Bytes(fixed.size),
            Schema::Decimal(decimal) => match &decimal.inner {
                InnerDecimalSchema::Bytes => Skip::Sized,
                InnerDecimalSchema::Fixed(fixed) => Skip::Bytes(fixed.size),
            },
            Schema::Uuid(uuid) => match uuid {
                UuidSchema::Bytes | UuidSchema::String => Skip::Sized,
                UuidSchema::Fixed(fixed) => Skip::Bytes(fixed.size),
            },
            Schema::Array(array) => Skip::Array(Box::new(inner(&array.items)?)),
            Schema::Map(map) => Skip::Map(Box::new(inner(&map.types)?)),
            Schema::Record(record) => Skip::Record(
                record
                    .fields
                    .iter()
                    .map(|f| inner(&f.schema))
                    .collect::<Option<_>>()?,
            ),
            Schema::Union(union) => {
                Skip::Union(union.variants().iter().map(inner).collect::<Option<_>>()?)
            }
            Schema::Ref { .. } => return None, // deref resolved it
        })
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::schema_compatibility::SchemaCompatibility;
    use apache_avro::types::Value;
    use apache_avro::writer::datum::GenericDatumWriter;
    use apache_avro::Uuid;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::super::avro::ORDER_EVENT_SCHEMA;
    use super::super::decode::resolve;
    use super::*;

    /// Our schema with its `fields` replaced.
    fn writer(fields: &str) -> Schema {
        let json = format!(
            r#"{{"type": "record", "name": "OrderEvent", "namespace": "com.grocery.orders", "fields": [{fields}]}}"#
        );
        Schema::parse_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
    }

    const EVENT_ID: &str = r#"{"name": "event_id", "type": "string"}"#;
    const ORDER_ID: &str = r#"{"name": "order_id", "type": "string"}"#;
    const EVENT_TYPE: &str = r#"{"name": "event_type", "type": "string"}"#;
    const SOURCE: &str = r#"{"name": "source", "type": "string"}"#;
    const OCCURRED_AT: &str =
        r#"{"name": "occurred_at", "type": {"type": "long", "logicalType": "timestamp-millis"}}"#;
    const LOB: &str = r#"{"name": "line_of_business", "type": "string"}"#;
    const MARKETPLACE: &str = r#"{"name": "marketplace", "type": "string"}"#;
    const CUSTOMER: &str = r#"{"name": "customer_id", "type": ["null", "string"]}"#;
    const ITEMS: &str = r#"{"name": "items", "type": {"type": "array", "items": {"type": "record", "name": "OrderItem", "fields": [{"name": "asin", "type": "string"}, {"name": "qty", "type": "int"}]}}}"#;
    const ATTRIBUTES: &str =
        r#"{"name": "attributes", "type": {"type": "map", "values": "string"}}"#;
    /// A field of every kind of Avro type: what a newer producer may add.
    const EXTRAS: &str = r#"
        {"name": "x_null", "type": "null"},
        {"name": "x_boolean", "type": "boolean"},
        {"name": "x_int", "type": "int"},
        {"name": "x_long", "type": "long"},
        {"name": "x_float", "type": "float"},
        {"name": "x_double", "type": "double"},
        {"name": "x_bytes", "type": "bytes"},
        {"name": "x_string", "type": "string"},
        {"name": "x_array", "type": {"type": "array", "items": "string"}},
        {"name": "x_map", "type": {"type": "map", "values": "long"}},
        {"name": "x_record", "type": {"type": "record", "name": "Extra", "fields": [
            {"name": "a", "type": "int"}, {"name": "b", "type": ["null", "string"]}]}},
        {"name": "x_again", "type": "Extra"},
        {"name": "x_enum", "type": {"type": "enum", "name": "Channel", "symbols": ["APP", "WEB", "STORE"]}},
        {"name": "x_fixed", "type": {"type": "fixed", "name": "Three", "size": 3}},
        {"name": "x_union", "type": ["null", "string", "long", "Extra"]},
        {"name": "x_date", "type": {"type": "int", "logicalType": "date"}},
        {"name": "x_micros", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "x_uuid", "type": {"type": "string", "logicalType": "uuid"}}"#;

    /// Writer schemas a compatible producer may use, each with what it tries.
    fn evolved() -> Vec<(&'static str, Schema)> {
        let ours = [
            EVENT_ID,
            ORDER_ID,
            EVENT_TYPE,
            SOURCE,
            OCCURRED_AT,
            LOB,
            MARKETPLACE,
            CUSTOMER,
            ITEMS,
            ATTRIBUTES,
        ]
        .join(",");
        let item_with = |fields: &str| {
            format!(
                r#"{{"name": "items", "type": {{"type": "array", "items": {{"type": "record", "name": "OrderItem", "fields": [{fields}]}}}}}}"#
            )
        };
        vec![
            ("extra fields first", writer(&format!("{EXTRAS}, {ours}"))),
            ("extra fields last", writer(&format!("{ours}, {EXTRAS}"))),
            (
                "extra fields between",
                writer(&format!(
                    "{EVENT_ID}, {ORDER_ID}, {EXTRAS}, {EVENT_TYPE}, {SOURCE}, {OCCURRED_AT}, \
                     {LOB}, {MARKETPLACE}, {CUSTOMER}, {ITEMS}, {ATTRIBUTES}"
                )),
            ),
            (
                "reordered",
                writer(&format!(
                    "{ATTRIBUTES}, {ITEMS}, {CUSTOMER}, {OCCURRED_AT}, {SOURCE}, {MARKETPLACE}, \
                     {EVENT_TYPE}, {LOB}, {ORDER_ID}, {EVENT_ID}"
                )),
            ),
            (
                "optional fields left out",
                writer(&format!(
                    "{EVENT_ID}, {ORDER_ID}, {EVENT_TYPE}, {SOURCE}, {OCCURRED_AT}"
                )),
            ),
            (
                "occurred_at as int, strings as bytes, customer as a plain string",
                writer(&format!(
                    r#"{{"name": "event_id", "type": "bytes"}}, {ORDER_ID},
                       {{"name": "event_type", "type": "bytes"}}, {SOURCE},
                       {{"name": "occurred_at", "type": "int"}}, {LOB}, {MARKETPLACE},
                       {{"name": "customer_id", "type": "string"}}, {ITEMS},
                       {{"name": "attributes", "type": {{"type": "map", "values": "bytes"}}}}"#
                )),
            ),
            (
                "strings in unions, occurred_at as a plain long",
                writer(&format!(
                    r#"{{"name": "event_id", "type": ["string", "null"]}}, {ORDER_ID},
                       {{"name": "event_type", "type": ["null", "bytes", "string"]}}, {SOURCE},
                       {{"name": "occurred_at", "type": "long"}}, {LOB},
                       {{"name": "marketplace", "type": ["null", "string"]}},
                       {{"name": "customer_id", "type": ["string", "null"]}}, {ITEMS}, {ATTRIBUTES}"#
                )),
            ),
            (
                "items with more fields, the ASIN in a union",
                writer(&format!(
                    "{EVENT_ID}, {ORDER_ID}, {EVENT_TYPE}, {SOURCE}, {OCCURRED_AT}, {}",
                    item_with(
                        r#"{"name": "name", "type": "string"},
                           {"name": "qty", "type": "int"},
                           {"name": "price", "type": ["null", "double"]},
                           {"name": "asin", "type": ["null", "string"]},
                           {"name": "tags", "type": {"type": "array", "items": "string"}}"#
                    )
                )),
            ),
        ]
    }

    fn text(rng: &mut StdRng) -> String {
        let len = rng.random_range(0..30);
        (0..len)
            .map(|_| match rng.random_range(0..10) {
                0 => 'é',
                1 => '中',
                _ => rng.random_range('a'..='z'),
            })
            .collect()
    }

    /// A random value of `schema`; `field` names the event's field it is, for the values the
    /// event's fields need (strings as UTF-8 even in `bytes`, timestamps in range).
    fn value(schema: &Schema, names: &HashMap<Name, &Schema>, rng: &mut StdRng) -> Value {
        match schema {
            Schema::Null => Value::Null,
            Schema::Boolean => Value::Boolean(rng.random()),
            Schema::Int => Value::Int(rng.random_range(-1_000_000..1_000_000)),
            Schema::Long => Value::Long(rng.random()),
            Schema::Float => Value::Float(rng.random()),
            Schema::Double => Value::Double(rng.random()),
            Schema::Bytes => Value::Bytes(text(rng).into_bytes()),
            Schema::String => Value::String(text(rng)),
            Schema::Date => Value::Date(rng.random_range(0..30_000)),
            Schema::TimestampMillis => {
                Value::TimestampMillis(rng.random_range(0..2_000_000_000_000))
            }
            Schema::TimestampMicros => Value::TimestampMicros(rng.random()),
            Schema::Uuid(_) => Value::Uuid(Uuid::from_u128(rng.random())),
            Schema::Array(array) => Value::Array(
                (0..rng.random_range(0..4))
                    .map(|_| value(&array.items, names, rng))
                    .collect(),
            ),
            Schema::Map(map) => Value::Map(
                (0..rng.random_range(0..4))
                    .map(|_| (text(rng), value(&map.types, names, rng)))
                    .collect(),
            ),
            Schema::Record(record) => Value::Record(
                record
                    .fields
                    .iter()
                    .map(|f| (f.name.clone(), value(&f.schema, names, rng)))
                    .collect(),
            ),
            Schema::Enum(e) => {
                let index = rng.random_range(0..e.symbols.len());
                Value::Enum(index as u32, e.symbols[index].clone())
            }
            Schema::Fixed(fixed) => {
                Value::Fixed(fixed.size, (0..fixed.size).map(|_| rng.random()).collect())
            }
            Schema::Union(union) => {
                let index = rng.random_range(0..union.variants().len());
                let inner = value(&union.variants()[index], names, rng);
                Value::Union(index as u32, Box::new(inner))
            }
            Schema::Ref { name } => value(names[name], names, rng),
            other => unimplemented!("no test values for {other:?}"),
        }
    }

    fn write(schema: &Schema, value: Value) -> Vec<u8> {
        GenericDatumWriter::builder(schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap()
    }

    #[test]
    fn reads_every_compatible_evolution_as_resolution_does() {
        let reader = Schema::parse_str(ORDER_EVENT_SCHEMA).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        for (what, writer) in evolved() {
            SchemaCompatibility::can_read(&writer, &reader)
                .unwrap_or_else(|e| panic!("{what}: not compatible with ours: {e}"));
            let plan = ReadPlan::compile(&writer).unwrap_or_else(|| panic!("{what}: no plan"));
            let resolved = ResolvedSchema::try_from(&writer).unwrap();
            let (mut read, mut refused) = (0, 0);
            for _ in 0..300 {
                let datum = write(&writer, value(&writer, resolved.get_names(), &mut rng));
                let by_plan = plan.read(&datum);
                let by_resolution = resolve(&writer, &reader, &datum);
                match (&by_plan, &by_resolution) {
                    (Ok(planned), Ok(resolved)) => assert_eq!(planned, resolved, "{what}"),
                    (Err(_), Err(_)) => refused += 1,
                    _ => panic!("{what}: plan {by_plan:?}, resolution {by_resolution:?}"),
                }
                read += usize::from(by_plan.is_ok());
                // Cut short anywhere, a record is an error, never a panic or an event.
                for len in 0..datum.len() {
                    assert!(
                        plan.read(&datum[..len]).is_err(),
                        "{what}: {len} bytes read"
                    );
                }
            }
            // Refused only for a union branch that cannot be the field's (a null event_id):
            // the schemas without such unions have every record read.
            assert!(read >= 30, "{what}: {read} read, {refused} refused");
            assert!(
                refused == 0 || what.contains("union"),
                "{what}: {refused} refused"
            );
        }
    }

    #[test]
    fn the_required_fields_are_those_of_our_schema_without_a_default() {
        let Schema::Record(ours) = Schema::parse_str(ORDER_EVENT_SCHEMA).unwrap() else {
            panic!("our schema is a record");
        };
        let without_default: Vec<&str> = ours
            .fields
            .iter()
            .filter(|f| f.default.is_none())
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(without_default, REQUIRED);
    }

    #[test]
    fn our_own_schema_plans_to_what_the_direct_path_reads() {
        let ours = Schema::parse_str(ORDER_EVENT_SCHEMA).unwrap();
        let plan = ReadPlan::compile(&ours).expect("a plan for our own schema");
        let resolved = ResolvedSchema::try_from(&ours).unwrap();
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..300 {
            let datum = write(&ours, value(&ours, resolved.get_names(), &mut rng));
            assert_eq!(plan.read(&datum), super::super::avro::read_event(&datum));
        }
    }

    #[test]
    fn blocks_with_byte_sizes_are_read_and_skipped() {
        // A writer with an extra array first: written as one block of -2 items (a negative
        // count is followed by the block's size in bytes), then the end marker.
        let writer = writer(&format!(
            r#"{{"name": "x", "type": {{"type": "array", "items": "long"}}}}, {EVENT_ID}, {ORDER_ID}, {EVENT_TYPE}, {SOURCE}, {OCCURRED_AT}"#
        ));
        let reader = Schema::parse_str(ORDER_EVENT_SCHEMA).unwrap();
        let empty = write(
            &writer,
            Value::Record(vec![
                ("x".into(), Value::Array(vec![])),
                ("event_id".into(), Value::String("e".into())),
                ("order_id".into(), Value::String("o".into())),
                ("event_type".into(), Value::String("t".into())),
                ("source".into(), Value::String("s".into())),
                ("occurred_at".into(), Value::TimestampMillis(5)),
            ]),
        );
        assert_eq!(empty[0], 0, "the empty array's end marker");
        let mut datum = vec![3, 2, 2, 4, 0];
        datum.extend_from_slice(&empty[1..]);
        let planned = ReadPlan::compile(&writer).unwrap().read(&datum).unwrap();
        assert_eq!(Ok(&planned), resolve(&writer, &reader, &datum).as_ref());
        assert_eq!((planned.event_id.as_str(), planned.occurred_at), ("e", 5));
    }

    /// Records damaged in a few bytes: whatever resolution reads, the plan reads the same;
    /// for a writer without fields the event lacks (nothing skipped unchecked), what the
    /// plan reads resolution reads too. Never a panic.
    #[test]
    fn damaged_records_are_read_as_resolution_reads_them() {
        let reader = Schema::parse_str(ORDER_EVENT_SCHEMA).unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        let (mut both, mut neither) = (0, 0);
        for (what, writer) in evolved() {
            let plan = ReadPlan::compile(&writer).unwrap();
            let resolved = ResolvedSchema::try_from(&writer).unwrap();
            let skips = plan.steps.iter().any(|step| match step {
                Step::Skip(_) => true,
                Step::Items(items) => items.fields.iter().any(|f| matches!(f, ItemStep::Skip(_))),
                _ => false,
            });
            for _ in 0..300 {
                let mut datum = write(&writer, value(&writer, resolved.get_names(), &mut rng));
                for _ in 0..rng.random_range(1..=3) {
                    let at = rng.random_range(0..datum.len());
                    datum[at] ^= 1 << rng.random_range(0..7);
                }
                let by_plan = plan.read(&datum);
                match resolve(&writer, &reader, &datum) {
                    Ok(event) => {
                        assert_eq!(by_plan.as_ref(), Ok(&event), "{what}: {datum:?}");
                        both += 1;
                    }
                    Err(error) if !skips => {
                        assert!(
                            by_plan.is_err(),
                            "{what}: resolution: {error}; plan read it"
                        );
                        neither += 1;
                    }
                    Err(_) => {}
                }
            }
        }
        // Enough of both outcomes for the comparison to mean something.
        assert!(
            both > 300 && neither > 300,
            "{both} read by both, {neither} by neither"
        );
    }

    #[test]
    fn a_writer_the_plan_does_not_cover_gets_none() {
        let required = format!("{EVENT_ID}, {ORDER_ID}, {EVENT_TYPE}, {SOURCE}");
        for (what, fields) in [
            (
                "a recursive extra field",
                format!(
                    r#"{required}, {OCCURRED_AT}, {{"name": "x", "type": {{"type": "record", "name": "Node", "fields": [{{"name": "next", "type": ["null", "Node"]}}]}}}}"#
                ),
            ),
            (
                "occurred_at in microseconds",
                format!(
                    r#"{required}, {{"name": "occurred_at", "type": {{"type": "long", "logicalType": "timestamp-micros"}}}}"#
                ),
            ),
            (
                "qty as a long",
                format!(
                    r#"{required}, {OCCURRED_AT}, {{"name": "items", "type": {{"type": "array", "items": {{"type": "record", "name": "I", "fields": [{{"name": "asin", "type": "string"}}, {{"name": "qty", "type": "long"}}]}}}}}}"#
                ),
            ),
            (
                "items in a union",
                format!(
                    r#"{required}, {OCCURRED_AT}, {{"name": "items", "type": ["null", {{"type": "array", "items": "string"}}]}}"#
                ),
            ),
            ("no occurred_at", required.clone()),
        ] {
            assert!(ReadPlan::compile(&writer(&fields)).is_none(), "{what}");
        }
    }
}
