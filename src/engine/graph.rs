//! One order's graph: its distinct events, and its milestone nodes with evidence edges to
//! the events behind them. This is the unit of state: one RocksDB value and one changelog
//! record per order (see [`super::codec`] for its encoding).
//!
//! Item nodes are not stored: they are a function of the events' `items` (the edges from
//! events to ASINs) and are built when needed ([`super::view::item_facts`]), so a stored
//! graph never disagrees with itself.

use compact_str::CompactString;

use super::event::OrderEvent;
use super::rules::{MilestoneSet, Rules, TypeId};
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
    /// What the engine derived from the events under the rules last applied (the events'
    /// type numbers, where the milestones stand), so that each event is looked at once.
    pub(crate) derived: Derived,
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

/// What the engine derived from a graph's events under one set of rules, kept so that an
/// event costs the engine only what it adds. A cache, not part of the graph's value: two
/// graphs are equal whatever they keep here, and a decoded graph keeps nothing.
#[derive(Debug, Clone, Default)]
pub(crate) struct Derived {
    /// The [`Rules::id`] all of this is under; 0, which no rules have, for none.
    rules: u64,
    /// Per event, its type number ([`Rules::type_id`]).
    numbers: Vec<Option<TypeId>>,
    /// Where the milestone nodes stand, once they were settled with an evaluation of all the
    /// events under these rules.
    standing: Option<Standing>,
}

/// Where an order's milestones stand after its nodes were settled with the evaluation of all
/// its events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Standing {
    /// Milestones some event evidences.
    pub evidenced: MilestoneSet,
    /// Evidenced and implied milestones.
    pub reached: MilestoneSet,
    /// The milestones the graph has a node of: the reached ones, and any reached under
    /// other rules before.
    pub known: MilestoneSet,
}

impl Derived {
    /// The type numbers of `events` (this graph's, append-only) under `rules`, looking up
    /// only the events added since the last call with the same rules. Forgets the standing
    /// kept under other rules.
    pub fn of(&mut self, rules: &Rules, events: &[OrderEvent]) -> &[Option<TypeId>] {
        if self.rules != rules.id() || self.numbers.len() > events.len() {
            self.rules = rules.id();
            self.numbers.clear();
            self.standing = None;
        }
        let known = self.numbers.len();
        self.numbers
            .extend(events[known..].iter().map(|e| rules.type_id(&e.event_type)));
        &self.numbers
    }

    /// Where the nodes stand, if they were last settled under `rules`.
    pub fn standing(&self, rules: &Rules) -> Option<Standing> {
        self.standing.filter(|_| self.rules == rules.id())
    }

    /// The nodes were just settled with the evaluation of every event under the rules of
    /// the last [`Derived::of`] call.
    pub fn settled(&mut self, standing: Standing) {
        self.standing = Some(standing);
    }
}

impl PartialEq for Derived {
    fn eq(&self, _: &Derived) -> bool {
        true
    }
}

impl Eq for Derived {}

/// A milestone node's evidence edges. Most nodes have one to four, kept in the node: a
/// vector of its own for each node cost an allocation and a growth per event (callgrind);
/// the same size as a `Vec`.
pub type Evidence = smallvec::SmallVec<[u32; 4]>;

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
    pub evidence: Evidence,
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
            derived: Derived::default(),
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

    pub(crate) fn milestone(&self, name: &str) -> Option<&MilestoneNode> {
        self.milestones.iter().find(|m| same(&m.name, name))
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
