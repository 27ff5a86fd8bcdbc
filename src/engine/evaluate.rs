//! Evaluates the rules over an order's set of distinct events.
//!
//! The result depends only on the set of events, never on their arrival order: every
//! condition a rule can state is existential over the set (an event of a type, one with a
//! field value, at least N of them, one after another) or over the items of the counting
//! `OrderCreated`, so adding events only ever adds evidence.

use super::event::OrderEvent;
use super::rules::{EvidenceRule, MilestoneId, MilestoneSet, Rules, TypeId};
use super::view::item_facts;

/// What the rules say about one order's events. Filled in place by [`evaluate`], so that
/// one evaluation's buffers serve the next (an order is evaluated at every event it gets).
#[derive(Default)]
pub(crate) struct Evaluation {
    /// Milestones some event evidences.
    pub evidenced: MilestoneSet,
    /// Evidenced and implied milestones.
    pub reached: MilestoneSet,
    /// Per milestone id: where its evidence is in `indices`.
    spans: Vec<(u32, u32)>,
    /// The indices of the events evidencing each milestone, ascending within a milestone.
    indices: Vec<u32>,
    /// Per evidence rule (see [`Rules::rules_of_type`]): the events, ascending, of a type
    /// it names; only these can evidence under it.
    candidates: Vec<Vec<u32>>,
    /// The evidence of an inferred milestone, built by [`Evaluation::inferred_evidence`].
    behind: Vec<u32>,
}

impl Evaluation {
    /// The indices of the events evidencing the milestone, ascending.
    pub fn evidence(&self, id: MilestoneId) -> &[u32] {
        let (start, end) = self.spans[id];
        &self.indices[start as usize..end as usize]
    }

    /// The smallest `occurred_at` of the milestone's evidence.
    pub fn reached_at(&self, id: MilestoneId, events: &[OrderEvent]) -> Option<i64> {
        self.evidence(id)
            .iter()
            .map(|&i| events[i as usize].occurred_at)
            .min()
    }

    /// The events behind an inferred milestone: the evidence of the evidenced milestones
    /// that imply it or, when only "any event" implies it, every event of the order.
    pub fn inferred_evidence(&mut self, id: MilestoneId, rules: &Rules, n_events: usize) -> &[u32] {
        let mut behind = std::mem::take(&mut self.behind);
        behind.clear();
        for by in self.evidenced.iter() {
            if rules.milestones()[by].implies.contains(id) {
                behind.extend_from_slice(self.evidence(by));
            }
        }
        if behind.is_empty() {
            behind.extend(0..n_events as u32);
        }
        behind.sort_unstable();
        behind.dedup();
        self.behind = behind;
        &self.behind
    }
}

/// Evaluates the rules over `events`, whose type numbers are `types`, into `eval`,
/// overwriting what it held.
pub(crate) fn evaluate(
    rules: &Rules,
    events: &[OrderEvent],
    types: &[Option<TypeId>],
    eval: &mut Evaluation,
) {
    let milestones = rules.milestones();
    let Evaluation {
        evidenced,
        reached,
        spans,
        indices,
        candidates,
        ..
    } = eval;
    *evidenced = MilestoneSet::default();
    spans.clear();
    indices.clear();
    // One pass over the events puts each with the rules its type can evidence under, so
    // that a rule looks only at those, not at every event.
    let rule_count = milestones.iter().map(|m| m.evidence.len()).sum();
    candidates.resize_with(rule_count, Vec::new);
    candidates.iter_mut().for_each(Vec::clear);
    for (i, type_id) in types.iter().enumerate() {
        for &place in type_id.map_or(&[][..], |t| rules.rules_of_type(t)) {
            candidates[place as usize].push(i as u32);
        }
    }
    let mut resolved: Option<bool> = None; // computed at most once, only if a rule asks
    let mut place = 0;
    for (id, milestone) in milestones.iter().enumerate() {
        let first = indices.len();
        for rule in &milestone.evidence {
            let start = indices.len();
            indices.extend(matching(rule, &candidates[place], events, types));
            place += 1;
            let enough = indices.len() - start >= rule.at_least;
            let holds = enough
                && (!rule.all_items_resolved
                    || *resolved.get_or_insert_with(|| all_items_resolved(rules, events)));
            if !holds {
                indices.truncate(start);
            }
        }
        if indices.len() > first {
            if milestone.evidence.len() > 1 {
                let mine = &mut indices[first..];
                mine.sort_unstable();
                let kept = dedup_sorted(mine);
                indices.truncate(first + kept);
            }
            evidenced.insert(id);
        }
        spans.push((first as u32, indices.len() as u32));
    }
    *reached = rules.reached_by(*evidenced, !events.is_empty());
}

/// Moves the distinct values of a sorted slice to its front; returns how many there are.
fn dedup_sorted(values: &mut [u32]) -> usize {
    let mut kept = 0;
    for i in 0..values.len() {
        if i == 0 || values[i] != values[kept - 1] {
            values[kept] = values[i];
            kept += 1;
        }
    }
    kept
}

/// Indices of the events that can evidence under the rule, each on its own, among
/// `candidates` (the events of a type the rule names); `types` holds the events' type
/// numbers.
fn matching<'a>(
    rule: &'a EvidenceRule,
    candidates: &'a [u32],
    events: &'a [OrderEvent],
    types: &'a [Option<TypeId>],
) -> impl Iterator<Item = u32> + 'a {
    candidates.iter().copied().filter(move |&i| {
        let event = &events[i as usize];
        let after_ok = match rule.after_id() {
            None => true,
            Some(before) => events
                .iter()
                .zip(types)
                .any(|(b, &t)| t == Some(before) && b.occurred_at < event.occurred_at),
        };
        after_ok && rule.conditions_hold(event)
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
