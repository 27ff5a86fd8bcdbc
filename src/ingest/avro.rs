//! Avro input: the Confluent wire format and the order event in Avro binary.
//!
//! Two ways to read an event's datum, chosen once per writer schema id:
//! - the writer schema is ours (same Parsing Canonical Form as `avro/order_event.avsc`, so
//!   the same bytes): [`read_event`] reads the bytes straight into an [`OrderEvent`], with
//!   no intermediate `Value` and no allocation for short strings;
//! - any other writer schema: `apache_avro` decodes with the writer's schema and resolves to
//!   ours (extra fields dropped, missing ones given their defaults), and [`event_from_value`]
//!   converts the resolved `Value`.

use std::collections::BTreeMap;

use apache_avro::types::Value;
use compact_str::CompactString;

use crate::engine::codec::{self, VarintError};
use crate::engine::{Item, OrderEvent};

/// Our reader schema for input events.
pub const ORDER_EVENT_SCHEMA: &str = include_str!("../../avro/order_event.avsc");

/// The first byte of every record value in the Confluent wire format.
pub const MAGIC_BYTE: u8 = 0;
/// Magic byte and 4-byte big-endian schema id.
pub const HEADER_LEN: usize = 5;

/// Splits a Confluent-framed value into its schema id and Avro datum.
pub fn split_header(payload: &[u8]) -> Result<(u32, &[u8]), String> {
    match payload {
        [MAGIC_BYTE, a, b, c, d, datum @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), datum)),
        [] => Err("empty value: not in the Confluent Avro wire format".to_owned()),
        [MAGIC_BYTE, ..] => Err(format!(
            "value of {} bytes is shorter than the 5-byte Confluent header",
            payload.len()
        )),
        [first, ..] => Err(format!(
            "first byte is {first:#04x}, not the Confluent magic byte 0x00: not Avro in the \
             Confluent wire format"
        )),
    }
}

/// Reads the Avro binary of exactly `avro/order_event.avsc`, then checks nothing is left.
///
/// Errors: a message naming the field where the bytes stop making sense.
pub fn read_event(datum: &[u8]) -> Result<OrderEvent, String> {
    let mut r = Reader::new(datum);
    let event = OrderEvent {
        event_id: r.string("event_id")?,
        order_id: r.string("order_id")?,
        event_type: r.string("event_type")?,
        source: r.string("source")?,
        occurred_at: r.long("occurred_at")?,
        line_of_business: r.string("line_of_business")?,
        marketplace: r.string("marketplace")?,
        customer_id: match r.long("customer_id")? {
            0 => None,
            1 => Some(r.string("customer_id")?),
            branch => return Err(format!("customer_id: union branch {branch} of 2")),
        },
        items: {
            let mut items = Vec::new();
            while let Some(count) = r.block("items")? {
                items.reserve(count.min(r.bytes.len()));
                for _ in 0..count {
                    items.push(Item {
                        asin: r.string("items[].asin")?,
                        qty: r.int("items[].qty")?,
                    });
                }
            }
            items
        },
        attributes: {
            let mut attributes = BTreeMap::new();
            while let Some(count) = r.block("attributes")? {
                for _ in 0..count {
                    let key = r.string("attributes key")?;
                    let value = r.string("attributes value")?;
                    attributes.insert(key, value);
                }
            }
            attributes
        },
    };
    if !r.bytes.is_empty() {
        return Err(format!(
            "{} bytes left after the event: not written with this schema",
            r.bytes.len()
        ));
    }
    Ok(event)
}

/// A cursor over Avro binary.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
}

/// Where and why bytes stop making sense as Avro: boxed, so that a read's result is at most
/// two words and comes back in registers (with a `String` error a string read took about
/// 120 instructions, a fifth of them moving results through memory: callgrind). Records
/// that fail are rare; the message naming the field is written only for them.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ReadError(Box<(&'static str, Problem)>);

#[derive(Debug, PartialEq, Eq)]
enum Problem {
    Truncated,
    VarintTooLong,
    SkipPastEnd { n: usize, left: usize },
    StringPastEnd { len: i64, left: usize },
    NotUtf8(std::str::Utf8Error),
    NotAnInt(i64),
    BlockPastEnd { count: u64, left: usize },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (field, problem) = &*self.0;
        match problem {
            Problem::Truncated => write!(f, "{field}: truncated"),
            Problem::VarintTooLong => write!(f, "{field}: varint longer than 10 bytes"),
            Problem::SkipPastEnd { n, left } => {
                write!(f, "{field}: truncated, {n} bytes to skip with {left} left")
            }
            Problem::StringPastEnd { len, left } => write!(
                f,
                "{field}: truncated, a string of length {len} with {left} bytes left"
            ),
            Problem::NotUtf8(error) => write!(f, "{field}: not UTF-8: {error}"),
            Problem::NotAnInt(value) => write!(f, "{field}: {value} does not fit an Avro int"),
            Problem::BlockPastEnd { count, left } => write!(
                f,
                "{field}: truncated, a block of {count} items with {left} bytes left"
            ),
        }
    }
}

impl From<ReadError> for String {
    fn from(error: ReadError) -> String {
        error.to_string()
    }
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    /// How many bytes are left.
    pub(super) fn left(&self) -> usize {
        self.bytes.len()
    }

    #[cold]
    fn error(field: &'static str, problem: Problem) -> ReadError {
        ReadError(Box::new((field, problem)))
    }

    /// Steps over `n` bytes.
    pub(super) fn skip_bytes(&mut self, n: usize, field: &'static str) -> Result<(), ReadError> {
        match self.bytes.get(n..) {
            Some(rest) => {
                self.bytes = rest;
                Ok(())
            }
            None => Err(Reader::error(
                field,
                Problem::SkipPastEnd {
                    n,
                    left: self.bytes.len(),
                },
            )),
        }
    }

    /// A zigzag varint `long`.
    #[inline(always)]
    pub(super) fn long(&mut self, field: &'static str) -> Result<i64, ReadError> {
        // Most are one byte: string lengths, quantities, counts, union branches.
        if let [byte @ 0..0x80, rest @ ..] = self.bytes {
            self.bytes = rest;
            return Ok(codec::unzigzag(u64::from(*byte)));
        }
        self.long_varint(field)
    }

    /// [`Reader::long`] of more than one byte.
    #[inline(never)]
    fn long_varint(&mut self, field: &'static str) -> Result<i64, ReadError> {
        match codec::read_varint(self.bytes) {
            Ok((raw, n)) => {
                self.bytes = &self.bytes[n..];
                Ok(codec::unzigzag(raw))
            }
            Err(VarintError::Truncated) => Err(Reader::error(field, Problem::Truncated)),
            Err(VarintError::TooLong) => Err(Reader::error(field, Problem::VarintTooLong)),
        }
    }

    pub(super) fn int(&mut self, field: &'static str) -> Result<i32, ReadError> {
        let value = self.long(field)?;
        i32::try_from(value).map_err(|_| Reader::error(field, Problem::NotAnInt(value)))
    }

    #[inline(always)]
    pub(super) fn string(&mut self, field: &'static str) -> Result<CompactString, ReadError> {
        let len = self.long(field)?;
        match usize::try_from(len) {
            Ok(n) if n <= self.bytes.len() => {
                let (text, rest) = self.bytes.split_at(n);
                self.bytes = rest;
                match codec::utf8(text) {
                    Ok(text) => Ok(CompactString::new(text)),
                    Err(error) => Err(Reader::error(field, Problem::NotUtf8(error))),
                }
            }
            _ => Err(Reader::error(
                field,
                Problem::StringPastEnd {
                    len,
                    left: self.bytes.len(),
                },
            )),
        }
    }

    /// The item count of the next block of an array or map, `None` at the end marker. A
    /// negative count is followed by the block's size in bytes, which we do not need.
    pub(super) fn block(&mut self, field: &'static str) -> Result<Option<usize>, ReadError> {
        let count = self.long(field)?;
        if count == 0 {
            return Ok(None);
        }
        if count < 0 {
            self.long(field)?;
        }
        // Every item takes at least one byte: a larger count is corrupt, and must not
        // become a large allocation.
        let count = count.unsigned_abs();
        if count > self.bytes.len() as u64 {
            return Err(Reader::error(
                field,
                Problem::BlockPastEnd {
                    count,
                    left: self.bytes.len(),
                },
            ));
        }
        Ok(Some(count as usize))
    }
}

/// Converts a value already resolved to `avro/order_event.avsc` (fields in its order).
///
/// Errors: a message naming the field, should the value not have our schema's shape.
pub fn event_from_value(value: Value) -> Result<OrderEvent, String> {
    let Value::Record(fields) = value else {
        return Err("the event is not an Avro record".to_owned());
    };
    let mut fields = fields.into_iter();
    let mut next = |name: &'static str| match fields.next() {
        Some((field, value)) if field == name => Ok(value),
        _ => Err(format!("field `{name}` missing after resolution")),
    };
    Ok(OrderEvent {
        event_id: string(next("event_id")?, "event_id")?,
        order_id: string(next("order_id")?, "order_id")?,
        event_type: string(next("event_type")?, "event_type")?,
        source: string(next("source")?, "source")?,
        occurred_at: match next("occurred_at")? {
            Value::TimestampMillis(ms) | Value::Long(ms) => ms,
            Value::Int(ms) => i64::from(ms),
            other => return Err(unexpected("occurred_at", &other)),
        },
        line_of_business: string(next("line_of_business")?, "line_of_business")?,
        marketplace: string(next("marketplace")?, "marketplace")?,
        customer_id: match unwrap_union(next("customer_id")?) {
            Value::Null => None,
            other => Some(string(other, "customer_id")?),
        },
        items: match next("items")? {
            Value::Array(items) => items
                .into_iter()
                .map(item_from_value)
                .collect::<Result<_, _>>()?,
            other => return Err(unexpected("items", &other)),
        },
        attributes: match next("attributes")? {
            Value::Map(map) => map
                .into_iter()
                .map(|(k, v)| Ok((CompactString::from(k), string(v, "attributes value")?)))
                .collect::<Result<_, String>>()?,
            other => return Err(unexpected("attributes", &other)),
        },
    })
}

fn item_from_value(value: Value) -> Result<Item, String> {
    let Value::Record(fields) = value else {
        return Err(unexpected("items[]", &value));
    };
    let mut asin = None;
    let mut qty = None;
    for (name, value) in fields {
        match (name.as_str(), value) {
            ("asin", value) => asin = Some(string(value, "items[].asin")?),
            ("qty", Value::Int(q)) => qty = Some(q),
            ("qty", other) => return Err(unexpected("items[].qty", &other)),
            _ => {}
        }
    }
    match (asin, qty) {
        (Some(asin), Some(qty)) => Ok(Item { asin, qty }),
        _ => Err("items[]: `asin` or `qty` missing after resolution".to_owned()),
    }
}

fn unwrap_union(value: Value) -> Value {
    match value {
        Value::Union(_, inner) => *inner,
        other => other,
    }
}

fn string(value: Value, field: &str) -> Result<CompactString, String> {
    match unwrap_union(value) {
        Value::String(s) => Ok(CompactString::from(s)),
        Value::Bytes(b) => {
            CompactString::from_utf8(b).map_err(|e| format!("{field}: bytes are not UTF-8: {e}"))
        }
        other => Err(unexpected(field, &other)),
    }
}

fn unexpected(field: &str, value: &Value) -> String {
    format!("{field}: unexpected Avro value {value:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::writer::datum::GenericDatumWriter;
    use apache_avro::Schema;

    fn schema() -> Schema {
        Schema::parse_str(ORDER_EVENT_SCHEMA).unwrap()
    }

    fn write(value: Value) -> Vec<u8> {
        let schema = schema();
        GenericDatumWriter::builder(&schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap()
    }

    fn full_value() -> Value {
        let item = |asin: &str, qty: i32| {
            Value::Record(vec![
                ("asin".into(), Value::String(asin.into())),
                ("qty".into(), Value::Int(qty)),
            ])
        };
        Value::Record(vec![
            ("event_id".into(), Value::String("e1".into())),
            ("order_id".into(), Value::String("A".into())),
            ("event_type".into(), Value::String("OrderCreated".into())),
            ("source".into(), Value::String("ordering".into())),
            (
                "occurred_at".into(),
                Value::TimestampMillis(1_700_000_000_000),
            ),
            ("line_of_business".into(), Value::String("fresh".into())),
            ("marketplace".into(), Value::String("UK".into())),
            (
                "customer_id".into(),
                Value::Union(1, Box::new(Value::String("C-1".into()))),
            ),
            (
                "items".into(),
                Value::Array(vec![item("B1", 2), item("B2-with-a-long-asin-xx", 300)]),
            ),
            (
                "attributes".into(),
                Value::Map([("k".to_owned(), Value::String("v".into()))].into()),
            ),
        ])
    }

    fn expected() -> OrderEvent {
        OrderEvent {
            event_id: "e1".into(),
            order_id: "A".into(),
            event_type: "OrderCreated".into(),
            source: "ordering".into(),
            occurred_at: 1_700_000_000_000,
            line_of_business: "fresh".into(),
            marketplace: "UK".into(),
            customer_id: Some("C-1".into()),
            items: vec![
                Item {
                    asin: "B1".into(),
                    qty: 2,
                },
                Item {
                    asin: "B2-with-a-long-asin-xx".into(),
                    qty: 300,
                },
            ],
            attributes: [("k".into(), "v".into())].into(),
        }
    }

    #[test]
    fn reads_what_apache_avro_writes() {
        let datum = write(full_value());
        assert_eq!(read_event(&datum).unwrap(), expected());
    }

    #[test]
    fn converts_a_resolved_value() {
        assert_eq!(event_from_value(full_value()).unwrap(), expected());
    }

    #[test]
    fn truncated_data_names_the_field() {
        let datum = write(full_value());
        for len in 0..datum.len() {
            let error = read_event(&datum[..len]).unwrap_err();
            assert!(error.contains("truncated"), "{len}: {error}");
        }
        let mut longer = datum.clone();
        longer.push(0);
        assert!(read_event(&longer).unwrap_err().contains("1 bytes left"));
    }

    #[test]
    fn a_huge_block_count_is_refused_without_allocating() {
        // Four empty strings, occurred_at 0, two empty strings, null customer, then an
        // items block claiming 2^40 items.
        let mut datum = vec![0, 0, 0, 0, 0, 0, 0, 0];
        datum.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
        assert!(read_event(&datum)
            .unwrap_err()
            .contains("items: truncated, a block of"));
    }

    #[test]
    fn one_byte_varints_read_as_their_two_byte_spelling() {
        for byte in 0..0x80u8 {
            let short = Reader { bytes: &[byte] }.long("x").unwrap();
            let long = Reader {
                bytes: &[byte | 0x80, 0],
            }
            .long("x")
            .unwrap();
            assert_eq!(short, long, "{byte:#04x}");
        }
        assert_eq!(Reader { bytes: &[0x7f] }.long("x").unwrap(), -64);
        assert_eq!(Reader { bytes: &[0x7e] }.long("x").unwrap(), 63);
    }

    #[test]
    fn splits_the_confluent_header() {
        assert_eq!(
            split_header(&[0, 0, 0, 1, 2, 9]).unwrap(),
            (258, &[9u8][..])
        );
        assert!(split_header(&[]).unwrap_err().contains("empty"));
        assert!(split_header(&[0, 0, 1]).unwrap_err().contains("shorter"));
        assert!(split_header(b"{\"a\":1}").unwrap_err().contains("0x7b"));
    }
}
