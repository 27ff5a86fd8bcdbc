//! What the engine tells the world: the order view (contract section 3) and the milestone
//! change records (section 4). Field names are the contract's, in JSON and in Avro.

use compact_str::CompactString;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::event::OrderEvent;
use super::rules::{ItemRole, Rules};
use super::text::{order, same};

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

/// Item nodes of an order, derived from its events (whose ASINs they borrow).
pub(crate) struct ItemFacts<'e> {
    pub placeholder: bool,
    pub items: Vec<ItemFact<'e>>,
}

pub(crate) struct ItemFact<'e> {
    pub asin: &'e str,
    pub ordered: Option<i64>,
    pub picked: i64,
    pub shorted: i64,
    pub substituted: i64,
}

/// Up to this many ASINs, [`item_facts`] finds an ASIN's fact by a scan.
const SCAN_ITEMS: usize = 32;

/// Builds the item nodes: ordered quantities from the counting ordered event (the one with
/// the smallest `occurred_at`, then `event_id`), sums of the distinct shorted, substituted
/// and picked events. Every ASIN any event names is listed, sorted.
pub(crate) fn item_facts<'e>(rules: &Rules, events: &'e [OrderEvent]) -> ItemFacts<'e> {
    let roles: Vec<Option<ItemRole>> = events
        .iter()
        .map(|e| rules.item_role(&e.event_type))
        .collect();
    let counting = events
        .iter()
        .zip(&roles)
        .filter(|(_, &role)| role == Some(ItemRole::Ordered))
        .map(|(e, _)| e)
        .min_by(|a, b| (a.occurred_at, &a.event_id).cmp(&(b.occurred_at, &b.event_id)));
    let placeholder = counting.is_none();
    let mut items: Vec<ItemFact<'e>> = Vec::with_capacity(16);
    // Where each ASIN is in `items`, once there are too many for a scan.
    let mut index: FxHashMap<&'e str, usize> = FxHashMap::default();
    // Where the next line's ASIN most likely is: right after the last line's. Events list
    // an order's items in one order (the ordered event all of them, each pick a run of
    // them), so this finds most without a scan.
    let mut next = 0;
    for (event, &role) in events.iter().zip(&roles) {
        let counts = match role {
            Some(ItemRole::Ordered) => std::ptr::eq(event, counting.unwrap_or(event)),
            Some(_) => true,
            None => false,
        };
        for item in &event.items {
            // An order names tens of ASINs: a scan beats a map, up to a point.
            let asin = item.asin.as_str();
            let found = if items.get(next).is_some_and(|fact| same(fact.asin, asin)) {
                Some(next)
            } else if items.len() <= SCAN_ITEMS {
                items.iter().position(|fact| same(fact.asin, asin))
            } else {
                if index.is_empty() {
                    index.extend(items.iter().enumerate().map(|(at, f)| (f.asin, at)));
                }
                index.get(asin).copied()
            };
            let at = match found {
                Some(at) => at,
                None => {
                    if !index.is_empty() {
                        index.insert(asin, items.len());
                    }
                    items.push(ItemFact {
                        asin,
                        ordered: (!placeholder).then_some(0),
                        picked: 0,
                        shorted: 0,
                        substituted: 0,
                    });
                    items.len() - 1
                }
            };
            next = at + 1;
            if !counts {
                continue;
            }
            let fact = &mut items[at];
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
    items.sort_unstable_by(|a, b| order(a.asin, b.asin));
    ItemFacts { placeholder, items }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::event::test_event as event;
    use super::*;

    /// The item facts by a plain map over every line, the definition `item_facts` must
    /// agree with: (ordered, picked, shorted, substituted) per ASIN.
    fn by_map(events: &[OrderEvent]) -> BTreeMap<String, (Option<i64>, i64, i64, i64)> {
        let counting = events
            .iter()
            .filter(|e| e.event_type == "OrderCreated")
            .min_by_key(|e| (e.occurred_at, e.event_id.clone()));
        let mut facts = BTreeMap::new();
        for e in events {
            for item in &e.items {
                let fact =
                    facts
                        .entry(item.asin.to_string())
                        .or_insert((counting.map(|_| 0), 0, 0, 0));
                let qty = i64::from(item.qty);
                match e.event_type.as_str() {
                    "OrderCreated" if std::ptr::eq(e, counting.unwrap()) => {
                        fact.0 = Some(fact.0.unwrap() + qty)
                    }
                    "ItemPicked" => fact.1 += qty,
                    "ItemShorted" => fact.2 += qty,
                    "ItemSubstituted" => fact.3 += qty,
                    _ => {}
                }
            }
        }
        facts
    }

    #[test]
    fn item_facts_sum_each_asin_whether_few_or_many() {
        let rules = Rules::builtin().unwrap();
        for n in [3, 32, 33, 120] {
            let asins: Vec<String> = (0..n).map(|k| format!("B{:03}", (k * 37) % 1000)).collect();
            let lines = |step: usize, qty: i32| -> Vec<(&str, i32)> {
                asins
                    .iter()
                    .step_by(step)
                    .map(|a| (a.as_str(), qty))
                    .collect()
            };
            let mut events = vec![
                event("pick", "ItemPicked", 20, &lines(2, 1)),
                event("short", "ItemShorted", 21, &lines(3, 1)),
                event("sub", "ItemSubstituted", 22, &lines(5, 2)),
                event("late", "OrderCreated", 30, &lines(1, 9)), // not the counting one
                event("c", "OrderCreated", 10, &lines(1, 2)),
                event("odd", "Delivered", 40, &[("X-only-named", 4)]),
            ];
            let facts = item_facts(&rules, &events);
            let got: BTreeMap<String, (Option<i64>, i64, i64, i64)> = facts
                .items
                .iter()
                .map(|f| {
                    let sums = (f.ordered, f.picked, f.shorted, f.substituted);
                    (f.asin.to_string(), sums)
                })
                .collect();
            assert_eq!(got, by_map(&events), "{n} ASINs");
            let listed: Vec<&str> = facts.items.iter().map(|f| f.asin).collect();
            assert!(listed.windows(2).all(|w| w[0] < w[1]), "sorted, once each");
            assert!(!facts.placeholder);

            events.retain(|e| e.event_type != "OrderCreated");
            let placeholder = item_facts(&rules, &events);
            assert!(placeholder.placeholder);
            assert!(placeholder.items.iter().all(|f| f.ordered.is_none()));
        }
    }
}
