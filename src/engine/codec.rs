//! The compact binary encoding of an [`OrderGraph`]: the value stored in RocksDB and in the
//! changelog topic.
//!
//! Layout (format 1), integers as LEB128 varints, `i64`s zigzag-encoded, strings as a
//! varint length and UTF-8 bytes:
//!
//! ```text
//! format:u8=1  order_id  sequence  duplicates
//! n_events  { event_id  type:ref  source:ref  occurred_at  lob:ref  marketplace:ref
//!             has_customer:u8 [customer:ref]  n_items {asin qty}  n_attrs {key value} }
//! n_milestones { name:ref  flags:u8 (1 = inferred, 2 = has reached_at)  [reached_at]
//!                n_evidence {event index delta} }
//! ```
//!
//! Event types, sources, lines of business, marketplaces and customer ids repeat across an
//! order's events, so each is written once: a `ref` is `0` followed by the string, which
//! joins the order's string table, or `k` for the table's `k`-th string. The table is defined
//! as the events are read, so the events section only ever grows at its end: a graph that
//! was decoded keeps its events' bytes, and encoding it again copies them and writes only
//! the events added since (milestone names refer to the table but never add to it).
//!
//! The first byte is the format version: a reader refuses a format it does not know rather
//! than misread it, and a later format can be added beside this one.

use std::collections::BTreeMap;

use compact_str::CompactString;

use super::event::{Item, OrderEvent};
use super::graph::{Derived, EncodedEvents, Evidence, KeptEncoding, MilestoneNode, OrderGraph};
use super::text::same;

/// The format this code writes.
pub const FORMAT: u8 = 1;

/// Why stored bytes are not a graph.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("empty state value")]
    Empty,
    #[error("unknown state format {0} (this build reads format {FORMAT})")]
    UnknownFormat(u8),
    #[error("state value truncated at byte {0}")]
    Truncated(usize),
    #[error("state value malformed at byte {at}: {what}")]
    Malformed { at: usize, what: &'static str },
}

/// A [`Reader`]'s error: boxed, so that a read's result is at most two words and comes back
/// in registers (the unboxed error made every varint and string read return through memory);
/// values that fail are rare.
type Fail = Box<CodecError>;

impl From<Fail> for CodecError {
    fn from(error: Fail) -> CodecError {
        *error
    }
}

/// Appends the encoding of `graph` to `out`.
pub fn encode(graph: &OrderGraph, out: &mut Vec<u8>) {
    out.reserve(64 * graph.events.len() + 16 * graph.milestones.len() + 32);
    out.push(FORMAT);
    put_str(out, &graph.order_id);
    put_u64(out, graph.sequence);
    put_u64(out, graph.duplicates);
    put_u64(out, graph.events.len() as u64);
    let mut table = StringTable {
        strings: Vec::with_capacity(16),
    };
    let mut done = 0;
    if let Some(kept) = graph.encoded_events.get() {
        debug_assert!(kept.count <= graph.events.len(), "events are append-only");
        out.extend_from_slice(&kept.bytes);
        table
            .strings
            .extend(kept.table.iter().map(CompactString::as_str));
        done = kept.count;
    }
    let Hints([kind, source, line, marketplace, customer]) = &mut Hints::default();
    for event in &graph.events[done..] {
        put_str(out, &event.event_id);
        table.put(out, &event.event_type, kind);
        table.put(out, &event.source, source);
        put_i64(out, event.occurred_at);
        table.put(out, &event.line_of_business, line);
        table.put(out, &event.marketplace, marketplace);
        match &event.customer_id {
            None => out.push(0),
            Some(id) => {
                out.push(1);
                table.put(out, id, customer);
            }
        }
        put_u64(out, event.items.len() as u64);
        for item in &event.items {
            put_str(out, &item.asin);
            put_i64(out, i64::from(item.qty));
        }
        put_u64(out, event.attributes.len() as u64);
        for (key, value) in &event.attributes {
            put_str(out, key);
            put_str(out, value);
        }
    }
    put_u64(out, graph.milestones.len() as u64);
    for node in &graph.milestones {
        table.put_without_adding(out, &node.name);
        let flags = u8::from(node.inferred) | (u8::from(node.reached_at.is_some()) << 1);
        out.push(flags);
        if let Some(at) = node.reached_at {
            put_i64(out, at);
        }
        put_u64(out, node.evidence.len() as u64);
        let mut previous = 0;
        for &index in &node.evidence {
            put_u64(out, u64::from(index - previous));
            previous = index;
        }
    }
}

/// `raw` as text, when it is UTF-8. Ids, types and ASINs are ASCII: checking that is much
/// cheaper than a full UTF-8 validation of many short strings, and ASCII is valid UTF-8.
#[inline]
pub(crate) fn utf8(raw: &[u8]) -> Result<&str, std::str::Utf8Error> {
    if raw.is_ascii() {
        // SAFETY: every byte is ASCII, so `raw` is valid UTF-8.
        Ok(unsafe { std::str::from_utf8_unchecked(raw) })
    } else {
        std::str::from_utf8(raw)
    }
}

/// The encoding of `graph` as a new buffer, allocated once for most orders: with 256 + 64
/// bytes per event, half of the benchmark's orders (929 bytes for 9.7 events on average)
/// grew it once more, and estimating from the events cost more than that growth.
pub fn to_bytes(graph: &OrderGraph) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + 112 * graph.events.len());
    encode(graph, &mut out);
    out
}

/// Reads a graph back. Errors when the bytes are not a graph of a known format; never
/// panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<OrderGraph, CodecError> {
    let mut r = Reader::open(bytes)?;
    let order_id = r.string()?;
    let sequence = r.u64()?;
    let duplicates = r.u64()?;
    let n_events = r.len()?;
    let events_start = r.at;
    let mut table: Vec<&str> = Vec::with_capacity(8);
    let mut events = Vec::with_capacity(n_events);
    for _ in 0..n_events {
        let event_id = r.string()?;
        let event_type = CompactString::new(r.str_ref(&mut table)?);
        let source = CompactString::new(r.str_ref(&mut table)?);
        let occurred_at = r.i64()?;
        let line_of_business = CompactString::new(r.str_ref(&mut table)?);
        let marketplace = CompactString::new(r.str_ref(&mut table)?);
        let customer_id = match r.u8()? {
            0 => None,
            1 => Some(CompactString::new(r.str_ref(&mut table)?)),
            _ => return Err(r.malformed("customer flag is neither 0 nor 1").into()),
        };
        let n_items = r.len()?;
        let mut items = Vec::with_capacity(n_items);
        for _ in 0..n_items {
            let asin = r.string()?;
            let qty = i32::try_from(r.i64()?).map_err(|_| r.malformed("qty out of range"))?;
            items.push(Item { asin, qty });
        }
        let n_attributes = r.len()?;
        let mut attributes = BTreeMap::new();
        for _ in 0..n_attributes {
            let key = r.string()?;
            attributes.insert(key, r.string()?);
        }
        events.push(OrderEvent {
            event_id,
            order_id: order_id.clone(),
            event_type,
            source,
            occurred_at,
            line_of_business,
            marketplace,
            customer_id,
            items,
            attributes,
        });
    }

    let encoded_events = EncodedEvents {
        bytes: bytes[events_start..r.at].to_vec(),
        count: events.len(),
        table: table.iter().map(|&s| CompactString::new(s)).collect(),
    };

    let n_milestones = r.len()?;
    let mut milestones = Vec::with_capacity(n_milestones);
    for _ in 0..n_milestones {
        let name = CompactString::new(r.name(&table)?);
        let flags = r.u8()?;
        let reached_at = if flags & 2 != 0 { Some(r.i64()?) } else { None };
        let n_evidence = r.len()?;
        let mut evidence = Evidence::with_capacity(n_evidence);
        let mut index: u64 = 0;
        for _ in 0..n_evidence {
            index += r.u64()?;
            if index >= n_events as u64 {
                return Err(r.malformed("evidence edge to a missing event").into());
            }
            evidence.push(index as u32);
        }
        milestones.push(MilestoneNode {
            name,
            inferred: flags & 1 != 0,
            reached_at,
            evidence,
        });
    }
    if r.at != bytes.len() {
        return Err(r.malformed("trailing bytes").into());
    }
    Ok(OrderGraph {
        order_id,
        events,
        milestones,
        sequence,
        duplicates,
        encoded_events: KeptEncoding::new(encoded_events),
        derived: Derived::default(),
    })
}

/// What retention needs of a stored graph, read without building the graph: the latest
/// `occurred_at` among its events and its milestones' names. The sweep over a store reads
/// hundreds of orders per transaction and keeps almost all of them.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary<'a> {
    pub last_occurred_at: Option<i64>,
    pub milestones: Vec<&'a str>,
}

/// Reads the [`Summary`] of a stored graph. Errors when the bytes are not a graph of a known
/// format (it checks the layout, not every value: an item quantity out of range, invalid
/// UTF-8 in a string it skips or an evidence edge to a missing event pass here and fail
/// [`decode`]); never panics, whatever the bytes.
pub fn summary(bytes: &[u8]) -> Result<Summary<'_>, CodecError> {
    let mut r = Reader::open(bytes)?;
    r.skip_string()?; // order id
    r.u64()?; // sequence
    r.u64()?; // duplicates
    let n_events = r.len()?;
    let mut table: Vec<&str> = Vec::with_capacity(8);
    let mut last_occurred_at = None;
    for _ in 0..n_events {
        r.skip_string()?; // event id
        r.str_ref(&mut table)?; // type
        r.str_ref(&mut table)?; // source
        last_occurred_at = last_occurred_at.max(Some(r.i64()?));
        r.str_ref(&mut table)?; // line of business
        r.str_ref(&mut table)?; // marketplace
        match r.u8()? {
            0 => {}
            1 => {
                r.str_ref(&mut table)?; // customer
            }
            _ => return Err(r.malformed("customer flag is neither 0 nor 1").into()),
        }
        for _ in 0..r.len()? {
            r.skip_string()?; // ASIN
            r.u64()?; // quantity
        }
        for _ in 0..r.len()? {
            r.skip_string()?; // attribute key
            r.skip_string()?; // and value
        }
    }
    let n_milestones = r.len()?;
    let mut milestones = Vec::with_capacity(n_milestones);
    for _ in 0..n_milestones {
        milestones.push(r.name(&table)?);
        if r.u8()? & 2 != 0 {
            r.i64()?; // reached_at
        }
        for _ in 0..r.len()? {
            r.u64()?; // evidence edge
        }
    }
    if r.at != bytes.len() {
        return Err(r.malformed("trailing bytes").into());
    }
    Ok(Summary {
        last_occurred_at,
        milestones,
    })
}

/// The string table as encoding goes: distinct strings in first-seen order; a handful per
/// order, so a linear search beats a map.
struct StringTable<'a> {
    strings: Vec<&'a str>,
}

/// Per field of an event (type, source, line of business, marketplace, customer): the table
/// index of the string the field had in the last event written. A field mostly repeats it
/// (an order has one line of business, one marketplace, one customer, and runs of one event
/// type), so [`StringTable::put`] looks there before it searches the table.
#[derive(Default)]
struct Hints([usize; 5]);

impl<'a> StringTable<'a> {
    /// Writes a reference to `s`, defining it first if it is new; `hint` is the field's
    /// entry in [`Hints`].
    #[inline(always)]
    fn put(&mut self, out: &mut Vec<u8>, s: &'a str, hint: &mut usize) {
        let found = match self.strings.get(*hint) {
            Some(t) if same(t, s) => Some(*hint),
            _ => self.strings.iter().position(|t| same(t, s)),
        };
        match found {
            Some(index) => {
                *hint = index;
                put_u64(out, index as u64 + 1);
            }
            None => {
                *hint = self.strings.len();
                out.push(0);
                put_str(out, s);
                self.strings.push(s);
            }
        }
    }

    /// Writes a reference to `s`, or `s` itself without adding it to the table.
    fn put_without_adding(&self, out: &mut Vec<u8>, s: &str) {
        match self.strings.iter().position(|t| same(t, s)) {
            Some(index) => put_u64(out, index as u64 + 1),
            None => {
                out.push(0);
                put_str(out, s);
            }
        }
    }
}

#[inline(always)]
fn put_u64(out: &mut Vec<u8>, v: u64) {
    // Most values (counts, indices, lengths) fit one byte.
    if v < 0x80 {
        out.push(v as u8);
        return;
    }
    put_u64_long(out, v);
}

/// [`put_u64`] of a value of more than one byte: timestamps, mostly.
#[inline(never)]
fn put_u64_long(out: &mut Vec<u8>, mut v: u64) {
    // Written into the vector's spare room byte by byte: a copy from a stack buffer was a
    // `memcpy` call per value.
    out.reserve(10);
    let spare = &mut out.spare_capacity_mut()[..10];
    let mut n = 0;
    while v >= 0x80 {
        spare[n].write((v as u8) | 0x80);
        v >>= 7;
        n += 1;
    }
    spare[n].write(v as u8);
    // SAFETY: the `n + 1` bytes after the length were written just above, within the
    // room reserved.
    unsafe { out.set_len(out.len() + n + 1) };
}

/// A zigzag-encoded varint: Avro's `long` as well (`emit::avro` writes its longs with it).
#[inline]
pub(crate) fn put_i64(out: &mut Vec<u8>, v: i64) {
    put_u64(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// A zigzag-encoded varint's value.
#[inline(always)]
pub(crate) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Why bytes do not start with a varint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VarintError {
    /// They end within it.
    Truncated,
    /// Ten bytes and no last one.
    TooLong,
}

/// The LEB128 varint at the start of `bytes` (as the state encoding and Avro write them):
/// its value and how many bytes it takes. Read off the slice, not a checked byte at a time.
#[inline]
pub(crate) fn read_varint(bytes: &[u8]) -> Result<(u64, usize), VarintError> {
    if let Some(read) = read_varint_word(bytes) {
        return Ok(read);
    }
    let mut v: u64 = 0;
    for (i, &b) in bytes.iter().take(10).enumerate() {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    Err(match bytes.len() {
        0..10 => VarintError::Truncated,
        _ => VarintError::TooLong,
    })
}

/// [`read_varint`] of a varint of at most 8 bytes with 8 bytes to read from: one load, the
/// length from the first byte without a continuation bit, the 7-bit groups joined in three
/// steps; `None` otherwise. An event time (6 bytes in Avro's zigzag) took a byte loop of
/// about 120 instructions.
#[inline]
fn read_varint_word(bytes: &[u8]) -> Option<(u64, usize)> {
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    let word = u64::from_le_bytes(*bytes.first_chunk::<8>()?);
    // A set bit at the top of each byte that ends a varint; the first one ends this one.
    let ends = !word & HIGH_BITS;
    if ends == 0 {
        return None;
    }
    let len = ends.trailing_zeros() as usize / 8 + 1;
    // Every bit up to the first end bit: the varint's bytes, nothing after them.
    let kept = ends ^ (ends - 1);
    let groups = word & kept & !HIGH_BITS;
    // Each byte holds 7 bits: close the gaps between byte pairs, then 16-bit and 32-bit halves.
    let groups = ((groups & 0x7f00_7f00_7f00_7f00) >> 1) | (groups & 0x007f_007f_007f_007f);
    let groups = ((groups & 0x3fff_0000_3fff_0000) >> 2) | (groups & 0x0000_3fff_0000_3fff);
    let value = ((groups & 0x0fff_ffff_0000_0000) >> 4) | (groups & 0x0000_0000_0fff_ffff);
    Some((value, len))
}

#[inline]
fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader after the format byte, which must be this build's.
    fn open(bytes: &'a [u8]) -> Result<Reader<'a>, CodecError> {
        let mut r = Reader { bytes, at: 0 };
        match r.u8().map_err(|_| CodecError::Empty)? {
            FORMAT => Ok(r),
            other => Err(CodecError::UnknownFormat(other)),
        }
    }

    #[cold]
    fn malformed(&self, what: &'static str) -> Fail {
        Box::new(CodecError::Malformed { at: self.at, what })
    }

    fn u8(&mut self) -> Result<u8, Fail> {
        let Some(&b) = self.bytes.get(self.at) else {
            return Err(self.truncated());
        };
        self.at += 1;
        Ok(b)
    }

    #[inline(always)]
    fn u64(&mut self) -> Result<u64, Fail> {
        match self.bytes.get(self.at) {
            Some(&b) if b < 0x80 => {
                self.at += 1;
                Ok(u64::from(b))
            }
            _ => self.u64_long(),
        }
    }

    #[cold]
    fn truncated(&self) -> Fail {
        Box::new(CodecError::Truncated(self.at))
    }

    /// [`Reader::u64`] of more than one byte: timestamps, mostly.
    #[inline(never)]
    fn u64_long(&mut self) -> Result<u64, Fail> {
        match read_varint(self.bytes.get(self.at..).unwrap_or_default()) {
            Ok((v, n)) => {
                self.at += n;
                Ok(v)
            }
            Err(VarintError::Truncated) => {
                self.at = self.bytes.len();
                Err(self.truncated())
            }
            Err(VarintError::TooLong) => Err(self.malformed("varint longer than 10 bytes")),
        }
    }

    #[inline(always)]
    fn i64(&mut self) -> Result<i64, Fail> {
        Ok(unzigzag(self.u64()?))
    }

    /// A count of things that follow; bounded by the bytes left, so that a corrupt count
    /// cannot make us allocate gigabytes.
    #[inline(always)]
    fn len(&mut self) -> Result<usize, Fail> {
        let n = self.u64()?;
        if n > (self.bytes.len() - self.at) as u64 {
            return Err(self.malformed("count larger than the value"));
        }
        Ok(n as usize)
    }

    #[inline]
    fn string(&mut self) -> Result<CompactString, Fail> {
        Ok(CompactString::new(self.text()?))
    }

    /// A string, borrowed from the bytes.
    #[inline(always)]
    fn text(&mut self) -> Result<&'a str, Fail> {
        let n = self.len()?;
        let raw = &self.bytes[self.at..self.at + n];
        let s = utf8(raw).map_err(|_| self.malformed("invalid UTF-8"))?;
        self.at += n;
        Ok(s)
    }

    /// Steps over a string without reading it.
    #[inline(always)]
    fn skip_string(&mut self) -> Result<(), Fail> {
        let n = self.len()?;
        self.at += n;
        Ok(())
    }

    /// A string reference: `0` and a new string, which joins the table, or a table index.
    #[inline(always)]
    fn str_ref(&mut self, table: &mut Vec<&'a str>) -> Result<&'a str, Fail> {
        match self.u64()? {
            0 => {
                let s = self.text()?;
                table.push(s);
                Ok(s)
            }
            k => self.table_entry(table, k - 1),
        }
    }

    /// A milestone name: like [`Reader::str_ref`], but a new string does not join the table.
    #[inline(always)]
    fn name(&mut self, table: &[&'a str]) -> Result<&'a str, Fail> {
        match self.u64()? {
            0 => self.text(),
            k => self.table_entry(table, k - 1),
        }
    }

    fn table_entry(&self, table: &[&'a str], index: u64) -> Result<&'a str, Fail> {
        table
            .get(index as usize)
            .copied()
            .ok_or_else(|| self.malformed("string table index out of range"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::event::test_event;
    use crate::engine::graph::KeptEncoding;
    use crate::engine::{Engine, Rules};
    use std::sync::Arc;

    /// An event with a customer and an attribute, so that every field is encoded.
    fn event(id: &str, kind: &str, at: i64, items: &[(&str, i32)]) -> OrderEvent {
        let mut event = test_event(id, kind, at, items);
        event.customer_id = Some("C-1".into());
        event
            .attributes
            .insert("substitute_asin".into(), "B0X".into());
        event
    }

    fn sample() -> OrderGraph {
        let engine = Engine::new(Arc::new(Rules::builtin().unwrap()));
        let mut graph = OrderGraph::new("A");
        for e in [
            event("ofd", "OutForDelivery", 1_700_000_900_000, &[]),
            event(
                "created",
                "OrderCreated",
                1_700_000_000_000,
                &[("B1", 2), ("B2", 1)],
            ),
            event("short", "ItemShorted", -5, &[("B2", 1)]),
            event("odd", "SomethingNew", 7, &[]),
        ] {
            engine.apply(&mut graph, e);
        }
        engine.apply(&mut graph, event("odd", "SomethingNew", 7, &[]));
        graph
    }

    /// Every length of varint, 1 to 10 bytes, written after other bytes (so into a vector
    /// with and without room), reads back as written, and zigzag keeps the sign.
    #[test]
    fn varints_of_every_length_round_trip() {
        let mut values: Vec<u64> = (0..64).map(|bits| 1u64 << bits).collect();
        values.extend((1..64).map(|bits| (1u64 << bits) - 1));
        values.push(u64::MAX);
        for v in values {
            for before in [0, 3, 7, 15] {
                // Followed by nothing, by a byte, and by a word's worth of bytes, with and
                // without their continuation bits: the varint must end where it ends.
                for after in [vec![], vec![0x00], vec![0xFF; 9], vec![0x01; 9]] {
                    let mut out = vec![0xAA; before];
                    put_u64(&mut out, v);
                    let len = out.len() - before;
                    out.extend_from_slice(&after);
                    assert_eq!(
                        read_varint(&out[before..]),
                        Ok((v, len)),
                        "{v} after {before} bytes, before {after:?}"
                    );
                    assert_eq!(len, (64 - v.leading_zeros()).max(1).div_ceil(7) as usize);
                }
            }
        }
        for v in [0, 1, -1, 1_700_000_000_000, i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            put_i64(&mut out, v);
            let (raw, _) = read_varint(&out).unwrap();
            assert_eq!(unzigzag(raw), v);
        }
    }

    #[test]
    fn a_graph_round_trips() {
        let graph = sample();
        let bytes = to_bytes(&graph);
        assert_eq!(bytes[0], FORMAT);
        assert_eq!(decode(&bytes), Ok(graph));
    }

    /// Encoding a decoded graph copies its events' bytes and appends the new ones: the
    /// result must be byte for byte what encoding from scratch gives.
    #[test]
    fn appending_to_a_decoded_graph_writes_what_a_fresh_encoding_writes() {
        let engine = Engine::new(Arc::new(Rules::builtin().unwrap()));
        let mut graph = decode(&to_bytes(&sample())).unwrap();
        assert_eq!(graph.encoded_events.get().map(|e| e.count), Some(4));
        let mut late = event("late", "OrderPacked", 99, &[("B9", 1)]);
        late.customer_id = Some("C-2".into());
        late.source = "new-source".into();
        engine.apply(&mut graph, late);
        let appended = to_bytes(&graph);
        let mut fresh = graph.clone();
        fresh.encoded_events = KeptEncoding::default();
        assert_eq!(appended, to_bytes(&fresh));
        assert_eq!(decode(&appended).unwrap(), graph);
    }

    #[test]
    fn an_empty_graph_round_trips() {
        let graph = OrderGraph::new("nothing-yet");
        assert_eq!(decode(&to_bytes(&graph)), Ok(graph));
    }

    #[test]
    fn damaged_values_are_errors_not_panics() {
        let bytes = to_bytes(&sample());
        assert_eq!(decode(&[]), Err(CodecError::Empty));
        assert_eq!(decode(&[9]), Err(CodecError::UnknownFormat(9)));
        assert_eq!(summary(&[]), Err(CodecError::Empty));
        assert_eq!(summary(&[9]), Err(CodecError::UnknownFormat(9)));
        for cut in 1..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "truncated at {cut} decoded");
            assert!(summary(&bytes[..cut]).is_err(), "truncated at {cut} read");
        }
        let mut flipped = bytes.clone();
        for i in 1..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = decode(&flipped); // must not panic
            let _ = summary(&flipped);
            flipped[i] ^= 0xff;
        }
        let mut trailing = bytes;
        trailing.push(0);
        assert!(matches!(
            decode(&trailing),
            Err(CodecError::Malformed { .. })
        ));
        assert!(matches!(
            summary(&trailing),
            Err(CodecError::Malformed { .. })
        ));
    }

    #[test]
    fn a_summary_is_what_the_decoded_graph_says() {
        let engine = crate::engine::Engine::new(std::sync::Arc::new(
            crate::engine::Rules::builtin().unwrap(),
        ));
        let mut graphs: std::collections::HashMap<CompactString, OrderGraph> = Default::default();
        let generated = crate::generate::Generator::new(crate::generate::GenerateConfig {
            orders: 300,
            ..Default::default()
        });
        for event in generated {
            let graph = graphs
                .entry(event.order_id.clone())
                .or_insert_with(|| OrderGraph::new(event.order_id.clone()));
            engine.apply(graph, event);
        }
        graphs.insert("sample".into(), sample());
        graphs.insert("empty".into(), OrderGraph::new("empty"));
        for graph in graphs.values() {
            let bytes = to_bytes(graph);
            let read = summary(&bytes).unwrap();
            let names: Vec<&str> = graph.milestones.iter().map(|m| m.name.as_str()).collect();
            assert_eq!(read.milestones, names, "{}", graph.order_id);
            assert_eq!(read.last_occurred_at, graph.last_occurred_at());
            assert_eq!(engine.finished_at_stored(&read), engine.finished_at(graph));
        }
        let finished = graphs.values().filter(|g| engine.finished_at(g).is_some());
        assert!(finished.count() > 100, "the generator finishes most orders");
    }

    /// The size target of issue 3: a realistic order (~10 events, ~10 items) fits in 2 KiB.
    #[test]
    fn realistic_orders_fit_in_two_kib() {
        use crate::generate::{GenerateConfig, Generator};
        let engine = Engine::new(Arc::new(Rules::builtin().unwrap()));
        let mut graphs = std::collections::HashMap::new();
        for event in Generator::new(GenerateConfig {
            orders: 2000,
            ..GenerateConfig::default()
        }) {
            let graph = graphs
                .entry(event.order_id.clone())
                .or_insert_with(|| OrderGraph::new(event.order_id.clone()));
            engine.apply(graph, event);
        }
        let largest = graphs.values().map(|g| to_bytes(g).len()).max().unwrap();
        assert!(largest <= 2048, "largest state {largest} bytes");
    }
}
