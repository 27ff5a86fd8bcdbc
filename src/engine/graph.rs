//! One order's graph: its distinct events, and its milestone nodes with evidence edges to
//! the events behind them. This is the unit of state: one RocksDB value and one changelog
//! record per order (see [`super::codec`] for its encoding).
//!
//! Item nodes are not stored: they are a function of the events' `items` (the edges from
//! events to ASINs) and are built when needed ([`super::view::item_facts`]), so a stored
//! graph never disagrees with itself.

use compact_str::CompactString;

use super::event::OrderEvent;
use super::rules::{Rules, TypeId};
use super::text::same;

/// How many events and milestones a new graph has room for: a grocery order has about ten
/// distinct events and six milestones.
const EXPECTED_EVENTS: usize = 12;
const EXPECTED_MILESTONES: usize = 8;

/// The state of one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderGraph {
    pub(crate) order_id: CompactString,
    /// Distinct events in arrival order; an event's place is its node id, which evidence
    /// edges refer to. Events are kept whole, unknown types too, so that rules added later
    /// can use them.
    pub(crate) events: Vec<OrderEvent>,
    /// Milestones reached so far, in the order they were first reached. Never removed: a
    /// milestone once reported stays reported.
    pub(crate) milestones: Vec<MilestoneNode>,
    /// The sequence of the last change record emitted for the order.
    pub(crate) sequence: u64,
    /// Deliveries of an event id already in `events`.
    pub(crate) duplicates: u64,
    /// The encoding of the events this graph was decoded with, so that encoding it again
    /// writes only the events added since. Events are append-only, so it stays a valid
    /// prefix.
    pub(crate) encoded_events: KeptEncoding,
    /// The events' type numbers under the rules last applied, so that an event's type is
    /// looked up once, not at every evaluation of its order.
    pub(crate) type_numbers: TypeNumbers,
}

/// The stored bytes of a graph's first `count` events, and the string table they define.
#[derive(Debug, Clone)]
pub(crate) struct EncodedEvents {
    pub bytes: Vec<u8>,
    pub count: usize,
    pub table: Vec<CompactString>,
}

/// A cache, not part of the graph's value: two graphs are equal whatever they keep here.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeptEncoding(Option<EncodedEvents>);

impl KeptEncoding {
    pub fn new(encoded: EncodedEvents) -> KeptEncoding {
        KeptEncoding(Some(encoded))
    }

    pub fn get(&self) -> Option<&EncodedEvents> {
        self.0.as_ref()
    }
}

impl PartialEq for KeptEncoding {
    fn eq(&self, _: &KeptEncoding) -> bool {
        true
    }
}

impl Eq for KeptEncoding {}

/// Per event of a graph, its type number under one set of rules ([`Rules::type_id`]). A
/// cache, not part of the graph's value: two graphs are equal whatever they keep here.
#[derive(Debug, Clone, Default)]
pub(crate) struct TypeNumbers {
    /// The [`Rules::id`] the numbers are of; 0, which no rules have, for none.
    rules: u64,
    numbers: Vec<Option<TypeId>>,
}

impl TypeNumbers {
    /// The type numbers of `events` (this graph's, append-only) under `rules`, looking up
    /// only the events added since the last call with the same rules.
    pub fn of(&mut self, rules: &Rules, events: &[OrderEvent]) -> &[Option<TypeId>] {
        if self.rules != rules.id() || self.numbers.len() > events.len() {
            self.rules = rules.id();
            self.numbers.clear();
        }
        let known = self.numbers.len();
        self.numbers
            .extend(events[known..].iter().map(|e| rules.type_id(&e.event_type)));
        &self.numbers
    }
}

impl PartialEq for TypeNumbers {
    fn eq(&self, _: &TypeNumbers) -> bool {
        true
    }
}

impl Eq for TypeNumbers {}

/// A reached milestone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MilestoneNode {
    /// By name and not by rank or index, so that stored state outlives rules changes.
    pub name: CompactString,
    /// Reached only because a milestone that implies it was (a placeholder).
    pub inferred: bool,
    /// Smallest `occurred_at` of the evidence; `None` while inferred.
    pub reached_at: Option<i64>,
    /// Evidence edges: indices into [`OrderGraph::events`], ascending.
    pub evidence: Vec<u32>,
}

impl OrderGraph {
    /// The state of an order the service has not heard of yet.
    pub fn new(order_id: impl Into<CompactString>) -> OrderGraph {
        OrderGraph {
            order_id: order_id.into(),
            // Room for a typical order's events and milestones: growing them one push at a
            // time (each time copying every event) cost more than this.
            events: Vec::with_capacity(EXPECTED_EVENTS),
            milestones: Vec::with_capacity(EXPECTED_MILESTONES),
            sequence: 0,
            duplicates: 0,
            encoded_events: KeptEncoding::default(),
            type_numbers: TypeNumbers::default(),
        }
    }

    pub fn order_id(&self) -> &str {
        &self.order_id
    }

    pub fn events(&self) -> &[OrderEvent] {
        &self.events
    }

    pub fn milestones(&self) -> &[MilestoneNode] {
        &self.milestones
    }

    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// When the order's latest event occurred (epoch ms); None before any event.
    pub fn last_occurred_at(&self) -> Option<i64> {
        self.events.iter().map(|e| e.occurred_at).max()
    }

    pub fn contains_event(&self, event_id: &str) -> bool {
        self.events.iter().any(|e| same(&e.event_id, event_id))
    }

    pub(crate) fn milestone_mut(&mut self, name: &str) -> Option<&mut MilestoneNode> {
        self.milestones.iter_mut().find(|m| same(&m.name, name))
    }

    /// The order's customer: from the earliest event that names one (by `occurred_at`, then
    /// `event_id`), so that it does not depend on arrival order.
    pub fn customer_id(&self) -> Option<&str> {
        self.events
            .iter()
            .filter(|e| e.customer_id.is_some())
            .min_by(|a, b| (a.occurred_at, &a.event_id).cmp(&(b.occurred_at, &b.event_id)))
            .and_then(|e| e.customer_id.as_deref())
    }
}
