//! Evaluates the rules over an order's set of distinct events.
//!
//! The result depends only on the set of events, never on their arrival order: every
//! condition a rule can state is existential over the set (an event of a type, one with a
//! field value, at least N of them, one after another) or over the items of the counting
//! `OrderCreated`, so adding events only ever adds evidence.

use super::event::OrderEvent;
use super::rules::{EvidenceRule, MilestoneId, MilestoneSet, Rules, TypeId};
use super::view::item_facts;

/// What the rules say about one order's events.
pub(crate) struct Evaluation {
    /// Milestones some event evidences.
    pub evidenced: MilestoneSet,
    /// Evidenced and implied milestones.
    pub reached: MilestoneSet,
    /// Per milestone id: the indices of the events evidencing it, ascending.
    pub evidence: Vec<Vec<u32>>,
}

impl Evaluation {
    /// The smallest `occurred_at` of the milestone's evidence.
    pub fn reached_at(&self, id: MilestoneId, events: &[OrderEvent]) -> Option<i64> {
        self.evidence[id]
            .iter()
            .map(|&i| events[i as usize].occurred_at)
            .min()
    }

    /// The events behind an inferred milestone: the evidence of the evidenced milestones
    /// that imply it or, when only "any event" implies it, every event of the order.
    pub fn inferred_evidence(&self, id: MilestoneId, rules: &Rules, n_events: usize) -> Vec<u32> {
        let mut behind: Vec<u32> = self
            .evidenced
            .iter()
            .filter(|&by| rules.milestones()[by].implies.contains(id))
            .flat_map(|by| self.evidence[by].iter().copied())
            .collect();
        if behind.is_empty() {
            behind = (0..n_events as u32).collect();
        }
        behind.sort_unstable();
        behind.dedup();
        behind
    }
}

pub(crate) fn evaluate(rules: &Rules, events: &[OrderEvent]) -> Evaluation {
    let milestones = rules.milestones();
    let mut evidence: Vec<Vec<u32>> = vec![Vec::new(); milestones.len()];
    let mut evidenced = MilestoneSet::default();
    let mut resolved: Option<bool> = None; // computed at most once, only if a rule asks
    let types: Vec<Option<TypeId>> = events
        .iter()
        .map(|e| rules.type_id(&e.event_type))
        .collect();
    for (id, milestone) in milestones.iter().enumerate() {
        for rule in &milestone.evidence {
            let start = evidence[id].len();
            evidence[id].extend(matching(rule, events, &types));
            let enough = evidence[id].len() - start >= rule.at_least;
            let holds = enough
                && (!rule.all_items_resolved
                    || *resolved.get_or_insert_with(|| all_items_resolved(rules, events)));
            if !holds {
                evidence[id].truncate(start);
            }
        }
        if !evidence[id].is_empty() {
            if milestone.evidence.len() > 1 {
                evidence[id].sort_unstable();
                evidence[id].dedup();
            }
            evidenced.insert(id);
        }
    }
    let mut reached = evidenced;
    for id in evidenced.iter() {
        reached = reached.union(milestones[id].implies);
    }
    if let Some(id) = rules.any_event_implies() {
        if !events.is_empty() {
            reached.insert(id);
            reached = reached.union(milestones[id].implies);
        }
    }
    Evaluation {
        evidenced,
        reached,
        evidence,
    }
}

/// Indices of the events that can evidence under the rule, each on its own; `types` holds
/// the events' type numbers.
fn matching<'a>(
    rule: &'a EvidenceRule,
    events: &'a [OrderEvent],
    types: &'a [Option<TypeId>],
) -> impl Iterator<Item = u32> + 'a {
    events
        .iter()
        .zip(types)
        .enumerate()
        .filter_map(move |(i, (event, &type_id))| {
            let after_ok = match rule.after_id() {
                None => true,
                Some(before) => events
                    .iter()
                    .zip(types)
                    .any(|(b, &t)| t == Some(before) && b.occurred_at < event.occurred_at),
            };
            (after_ok && rule.matches(type_id, event)).then_some(i as u32)
        })
}

/// Every ordered item is picked, shorted or substituted in full. False for a placeholder:
/// nothing is known to be resolved before we know what was ordered.
fn all_items_resolved(rules: &Rules, events: &[OrderEvent]) -> bool {
    let facts = item_facts(rules, events);
    !facts.placeholder
        && facts.items.iter().all(|item| {
            let ordered = item.ordered.unwrap_or(0);
            item.picked + item.shorted + item.substituted >= ordered
        })
}
