//! What the engine tells the world: the order view (contract section 3) and the milestone
//! change records (section 4). Field names are the contract's, in JSON and in Avro.

use std::collections::BTreeMap;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use super::event::OrderEvent;
use super::rules::{ItemRole, Rules};

/// The current state of one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    pub order_id: CompactString,
    /// The reached milestone of highest rank; null only if the rules imply nothing from an
    /// event (the default model always reaches `ordered`).
    pub status: Option<CompactString>,
    /// True until the order's `OrderCreated` has arrived.
    pub placeholder: bool,
    /// Every reached milestone, in rank order.
    pub milestones: Vec<MilestoneView>,
    /// Every ASIN seen, sorted.
    pub items: Vec<ItemView>,
    /// Distinct events.
    pub events: u64,
    /// Repeated deliveries of an already-seen `event_id`.
    pub duplicates: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MilestoneView {
    pub name: CompactString,
    pub inferred: bool,
    pub reached_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemView {
    pub asin: CompactString,
    /// Null while the order is a placeholder.
    pub ordered: Option<i64>,
    pub shorted: i64,
    pub substituted: i64,
}

/// One milestone change of an order: reached (inferred or evidenced), or confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MilestoneChange {
    pub order_id: CompactString,
    /// 1, 2, 3... per order, no gaps.
    pub sequence: u64,
    pub milestone: CompactString,
    pub inferred: bool,
    pub reached_at: Option<i64>,
    /// The order's status after the event that caused this change.
    pub status: CompactString,
    /// The `event_id`s behind the milestone, sorted.
    pub evidence: Vec<CompactString>,
    pub rules_version: CompactString,
    /// The order's customer, when known.
    pub customer_id: Option<CompactString>,
}

/// Item nodes of an order, derived from its events.
pub(crate) struct ItemFacts {
    pub placeholder: bool,
    pub items: Vec<ItemFact>,
}

pub(crate) struct ItemFact {
    pub asin: CompactString,
    pub ordered: Option<i64>,
    pub picked: i64,
    pub shorted: i64,
    pub substituted: i64,
}

/// Builds the item nodes: ordered quantities from the counting ordered event (the one with
/// the smallest `occurred_at`, then `event_id`), sums of the distinct shorted, substituted
/// and picked events. Every ASIN any event names is listed.
pub(crate) fn item_facts(rules: &Rules, events: &[OrderEvent]) -> ItemFacts {
    let counting = events
        .iter()
        .filter(|e| rules.item_role(&e.event_type) == Some(ItemRole::Ordered))
        .min_by(|a, b| (a.occurred_at, &a.event_id).cmp(&(b.occurred_at, &b.event_id)));
    let placeholder = counting.is_none();
    let mut items: BTreeMap<&str, ItemFact> = BTreeMap::new();
    for event in events {
        let role = rules.item_role(&event.event_type);
        let counts = match role {
            Some(ItemRole::Ordered) => std::ptr::eq(event, counting.unwrap_or(event)),
            Some(_) => true,
            None => false,
        };
        for item in &event.items {
            let fact = items.entry(&item.asin).or_insert_with(|| ItemFact {
                asin: item.asin.clone(),
                ordered: (!placeholder).then_some(0),
                picked: 0,
                shorted: 0,
                substituted: 0,
            });
            if !counts {
                continue;
            }
            let qty = i64::from(item.qty);
            match role {
                Some(ItemRole::Ordered) => fact.ordered = Some(fact.ordered.unwrap_or(0) + qty),
                Some(ItemRole::Picked) => fact.picked += qty,
                Some(ItemRole::Shorted) => fact.shorted += qty,
                Some(ItemRole::Substituted) => fact.substituted += qty,
                None => {}
            }
        }
    }
    ItemFacts {
        placeholder,
        items: items.into_values().collect(),
    }
}
