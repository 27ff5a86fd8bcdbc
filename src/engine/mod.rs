//! The milestone engine: pure, with no I/O and no clock, so that it is tested alone and the
//! same code serves the stream processor and `milestones simulate`.
//!
//! An order's state is an [`OrderGraph`]. [`Engine::apply`] adds one event to it and returns
//! the milestone changes the event causes; [`Engine::view`] gives the order view;
//! [`Engine::reevaluate`] applies new rules to a stored order without replaying its events.
//!
//! The reached milestones are a function of the set of distinct events (see
//! [`evaluate`](self::evaluate)); the graph remembers which milestones were already reported,
//! so each change is reported once, in sequence, and never goes back.

pub mod codec;
mod evaluate;
pub mod event;
pub mod graph;
pub mod rules;
mod text;
pub mod view;

use std::cell::RefCell;
use std::sync::Arc;

use compact_str::CompactString;

pub use event::{EventError, Item, OrderEvent};
use graph::{Evidence, Standing};
pub use graph::{MilestoneNode, OrderGraph};
use rules::{MilestoneId, MilestoneSet};
pub use rules::{Rules, RulesError};
pub use view::{ItemView, MilestoneChange, MilestoneView, OrderView};

use evaluate::{evaluate, Evaluation};
use view::item_facts;

/// Applies rules to orders. Cheap to clone: the rules are shared.
#[derive(Debug, Clone)]
pub struct Engine {
    rules: Arc<Rules>,
}

/// What applying one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The milestone change records, in rank order, with their sequences.
    pub changes: Vec<MilestoneChange>,
    /// The event id was already in the order: nothing changed but the duplicate count.
    pub duplicate: bool,
    /// An event of the order that occurred later had already arrived.
    pub out_of_order: bool,
    /// Bit `i` is set when `changes[i]` confirms a placeholder reported earlier, rather than
    /// reaching its milestone for the first time.
    confirmations: u64,
}

impl Applied {
    /// Whether `changes[index]` confirms a placeholder reported earlier.
    pub fn is_confirmation(&self, index: usize) -> bool {
        index < 64 && self.confirmations & (1 << index) != 0
    }
}

/// What one settling of an order changed.
struct Settled {
    changes: Vec<MilestoneChange>,
    confirmations: u64,
}

/// How a milestone changed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    Reached { inferred: bool },
    Confirmed,
}

thread_local! {
    /// The buffers of one evaluation, reused by every order evaluated on the thread: an order
    /// is evaluated at each of its events, so allocating them each time would cost more than
    /// the evaluation itself.
    static SCRATCH: RefCell<Evaluation> = RefCell::new(Evaluation::default());
}

/// The milestones a settling changed, `(milestone id, change)` in rank order: kept on the
/// stack up to eight, as an event changes one or two (a new vector for each event cost an
/// allocation and its growth, more than the rest of the event's settling: callgrind).
type Changed = smallvec::SmallVec<[(MilestoneId, Change); 8]>;

/// Makes a node's evidence `now`, keeping its allocation.
fn refresh(evidence: &mut Evidence, now: &[u32]) {
    if evidence.as_slice() != now {
        evidence.clear();
        evidence.extend_from_slice(now);
    }
}

impl Engine {
    pub fn new(rules: Arc<Rules>) -> Engine {
        Engine { rules }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Adds one event to its order's graph. The caller passes the graph of
    /// `event.order_id`; a duplicate `event_id` only counts as a duplicate.
    pub fn apply(&self, graph: &mut OrderGraph, event: OrderEvent) -> Applied {
        debug_assert_eq!(
            graph.order_id, event.order_id,
            "event applied to another order's graph"
        );
        if graph.contains_event(&event.event_id) {
            graph.duplicates += 1;
            return Applied {
                changes: Vec::new(),
                duplicate: true,
                out_of_order: false,
                confirmations: 0,
            };
        }
        let out_of_order = graph
            .events
            .iter()
            .any(|e| e.occurred_at > event.occurred_at);
        // A new order stands nowhere under any rules.
        let standing = if graph.events.is_empty() && graph.milestones.is_empty() {
            Some(Standing::default())
        } else {
            graph.derived.standing(&self.rules)
        };
        graph.events.push(event);
        let settled = match standing.filter(|_| self.rules.event_local()) {
            Some(before) => self.settle_event(graph, before),
            None => self.settle(graph),
        };
        Applied {
            changes: settled.changes,
            duplicate: false,
            out_of_order,
            confirmations: settled.confirmations,
        }
    }

    /// Brings a stored order up to date with this engine's rules, for example after a rule
    /// was added, and returns the changes that causes. With the rules the order was built
    /// with, it changes nothing.
    pub fn reevaluate(&self, graph: &mut OrderGraph) -> Vec<MilestoneChange> {
        self.settle(graph).changes
    }

    /// Every change record the order's graph produced, in sequence order: its distinct
    /// events applied again, in their arrival order, to an empty graph. The engine is
    /// deterministic, so with the rules the graph was built with these are the records that
    /// were emitted, sequences included (what the order API replays to a client that
    /// missed some).
    pub fn history(&self, graph: &OrderGraph) -> Vec<MilestoneChange> {
        let mut replay = OrderGraph::new(graph.order_id.clone());
        let mut changes = Vec::new();
        for event in &graph.events {
            changes.extend(self.apply(&mut replay, event.clone()).changes);
        }
        changes
    }

    /// The order view (contract section 3).
    pub fn view(&self, graph: &OrderGraph) -> OrderView {
        let facts = item_facts(&self.rules, &graph.events);
        OrderView {
            order_id: graph.order_id.clone(),
            status: self.status(graph).cloned(),
            placeholder: facts.placeholder,
            milestones: self
                .known_nodes(graph)
                .map(|(_, node)| MilestoneView {
                    name: node.name.clone(),
                    inferred: node.inferred,
                    reached_at: node.reached_at,
                })
                .collect(),
            items: facts
                .items
                .into_iter()
                .map(|f| ItemView {
                    asin: f.asin.into(),
                    ordered: f.ordered,
                    shorted: f.shorted,
                    substituted: f.substituted,
                })
                .collect(),
            events: graph.events.len() as u64,
            duplicates: graph.duplicates,
        }
    }

    /// The reached milestone of highest rank.
    pub fn status<'g>(&self, graph: &'g OrderGraph) -> Option<&'g CompactString> {
        if let Some(standing) = graph.derived.standing(&self.rules) {
            let name = &self.rules.milestones()[standing.known.highest()?].name;
            return graph.milestone(name).map(|node| &node.name);
        }
        graph
            .milestones
            .iter()
            .filter_map(|node| self.rules.milestone_id(&node.name).map(|id| (id, node)))
            .max_by_key(|(id, _)| *id)
            .map(|(_, node)| &node.name)
    }

    /// When a finished order (one whose status is a `final` milestone, such as delivered or
    /// cancelled) had its last event (epoch ms); None while the order is not finished.
    /// What state retention measures from.
    pub fn finished_at(&self, graph: &OrderGraph) -> Option<i64> {
        // Where the nodes stand under these rules, if the graph was settled under them (it
        // was, unless it was just decoded): its known milestones, without a name looked up.
        if let Some(standing) = graph.derived.standing(&self.rules) {
            let status = standing.known.highest()?;
            return match self.rules.milestones()[status].is_final {
                true => graph.last_occurred_at(),
                false => None,
            };
        }
        let names = graph.milestones.iter().map(|node| node.name.as_str());
        self.finished_from(names, || graph.last_occurred_at())
    }

    /// [`Engine::finished_at`] of a stored order, from its [`codec::summary`]: what the
    /// retention sweep reads, without decoding the graph.
    pub fn finished_at_stored(&self, summary: &codec::Summary<'_>) -> Option<i64> {
        let names = summary.milestones.iter().copied();
        self.finished_from(names, || summary.last_occurred_at)
    }

    /// When an order with these milestones and this last event time finished, if it did:
    /// its status (the known milestone of highest rank) is final.
    fn finished_from<'n>(
        &self,
        milestones: impl Iterator<Item = &'n str>,
        last_occurred_at: impl FnOnce() -> Option<i64>,
    ) -> Option<i64> {
        let status = milestones
            .filter_map(|name| self.rules.milestone_id(name))
            .max()?;
        if self.rules.milestones()[status].is_final {
            last_occurred_at()
        } else {
            None
        }
    }

    /// The graph's milestone nodes that the rules know, in rank order.
    fn known_nodes<'g>(
        &self,
        graph: &'g OrderGraph,
    ) -> impl Iterator<Item = (MilestoneId, &'g MilestoneNode)> {
        let mut known: Vec<_> = graph
            .milestones
            .iter()
            .filter_map(|node| self.rules.milestone_id(&node.name).map(|id| (id, node)))
            .collect();
        known.sort_unstable_by_key(|(id, _)| *id);
        known.into_iter()
    }

    /// Brings the graph's milestone nodes in line with the evaluation of its events and
    /// returns one record for each milestone newly reached or confirmed.
    fn settle(&self, graph: &mut OrderGraph) -> Settled {
        SCRATCH.with_borrow_mut(|eval| self.settle_with(graph, eval))
    }

    fn settle_with(&self, graph: &mut OrderGraph, eval: &mut Evaluation) -> Settled {
        let types = graph.derived.of(&self.rules, &graph.events);
        evaluate(&self.rules, &graph.events, types, eval);
        let mut changed = Changed::new();
        for id in eval.reached.iter() {
            let evidenced = eval.evidenced.contains(id);
            let name = &self.rules.milestones()[id].name;
            let (reached_at, evidence) = if evidenced {
                (eval.reached_at(id, &graph.events), eval.evidence(id))
            } else {
                let n_events = graph.events.len();
                (None, eval.inferred_evidence(id, &self.rules, n_events))
            };
            match graph.milestone_mut(name) {
                None => {
                    graph.milestones.push(MilestoneNode {
                        name: name.clone(),
                        inferred: !evidenced,
                        reached_at,
                        evidence: Evidence::from_slice(evidence),
                    });
                    changed.push((
                        id,
                        Change::Reached {
                            inferred: !evidenced,
                        },
                    ));
                }
                Some(node) if node.inferred && evidenced => {
                    node.inferred = false;
                    node.reached_at = reached_at;
                    refresh(&mut node.evidence, evidence);
                    changed.push((id, Change::Confirmed));
                }
                // Still inferred, or confirmed with (possibly earlier) evidence: refresh the
                // edges, no record. A confirmed milestone that a rule change no longer
                // evidences keeps what it had: it is never reported as inferred again.
                Some(node) if node.inferred || evidenced => {
                    node.reached_at = reached_at;
                    refresh(&mut node.evidence, evidence);
                }
                Some(_) => {}
            }
        }
        // Every reached milestone has a node now, one each: with no more nodes than that,
        // they are all. More are from other rules, looked up by name.
        let known = if graph.milestones.len() == eval.reached.len() {
            eval.reached
        } else {
            graph
                .milestones
                .iter()
                .filter_map(|node| self.rules.milestone_id(&node.name))
                .fold(eval.reached, |mut known, id| {
                    known.insert(id);
                    known
                })
        };
        self.settled(
            graph,
            Standing {
                evidenced: eval.evidenced,
                reached: eval.reached,
                known,
            },
            &changed,
        )
    }

    /// [`Engine::settle`] for the event just added, the graph's last, when the nodes stand
    /// settled with the events before it (`before`) under event-local rules
    /// ([`Rules::event_local`]): the event adds itself to the evidence of the milestones
    /// whose rules it matches, and nothing else changes but what those imply. It leaves the
    /// graph and returns the records that `settle` would (a property test holds the two
    /// together), at the cost of the one event rather than of all the order's.
    fn settle_event(&self, graph: &mut OrderGraph, before: Standing) -> Settled {
        let rules = &*self.rules;
        let index = graph.events.len() - 1;
        let type_id = graph.derived.of(rules, &graph.events)[index];
        let event = &graph.events[index];
        let occurred_at = event.occurred_at;
        let mut matched = MilestoneSet::default();
        for &place in type_id.map_or(&[][..], |t| rules.rules_of_type(t)) {
            let (id, rule) = rules.rule_at(place);
            if !matched.contains(id) && rule.conditions_hold(event) {
                matched.insert(id);
            }
        }
        let step = Step {
            index: index as u32,
            occurred_at,
            matched,
            before,
        };
        let evidenced = before.evidenced.union(matched);
        let reached = rules.reached_by(evidenced, true);
        let mut changed = Changed::new();
        for id in reached.iter() {
            let change = if evidenced.contains(id) {
                step.add_evidence(rules, graph, id)
            } else {
                step.infer(rules, graph, id, evidenced)
            };
            changed.extend(change.map(|change| (id, change)));
        }
        let standing = Standing {
            evidenced,
            reached,
            known: before.known.union(reached),
        };
        self.settled(graph, standing, &changed)
    }

    /// Keeps where the graph's nodes now stand and makes the records of what changed.
    fn settled(
        &self,
        graph: &mut OrderGraph,
        standing: Standing,
        changed: &[(MilestoneId, Change)],
    ) -> Settled {
        graph.derived.settled(standing);
        if changed.is_empty() {
            return Settled {
                changes: Vec::new(),
                confirmations: 0,
            };
        }
        let status = standing
            .known
            .highest()
            .map(|id| self.rules.milestones()[id].name.clone())
            .unwrap_or_default();
        self.records(graph, changed, status)
    }

    fn records(
        &self,
        graph: &mut OrderGraph,
        changed: &[(MilestoneId, Change)],
        status: CompactString,
    ) -> Settled {
        let customer_id = graph.customer_id().map(CompactString::from);
        let version = CompactString::from(self.rules.version());
        let mut records = Vec::with_capacity(changed.len());
        let mut confirmations = 0u64;
        for &(id, change) in changed {
            let name = &self.rules.milestones()[id].name;
            let Some(node) = graph.milestone(name) else {
                continue;
            };
            let mut evidence: Vec<CompactString> = node
                .evidence
                .iter()
                .map(|&i| graph.events[i as usize].event_id.clone())
                .collect();
            evidence.sort_unstable();
            if change == Change::Confirmed {
                confirmations |= 1 << records.len();
            }
            records.push(MilestoneChange {
                order_id: graph.order_id.clone(),
                sequence: graph.sequence + records.len() as u64 + 1,
                milestone: name.clone(),
                inferred: change == Change::Reached { inferred: true },
                reached_at: node.reached_at,
                status: status.clone(),
                evidence,
                rules_version: version.clone(),
                customer_id: customer_id.clone(),
            });
        }
        graph.sequence += records.len() as u64;
        Settled {
            changes: records,
            confirmations,
        }
    }
}

/// One event added to an order whose nodes stood settled before it: what
/// [`Engine::settle_event`] settles each reached milestone with.
struct Step {
    /// The event's index in the order's events: the largest.
    index: u32,
    occurred_at: i64,
    /// The milestones the event evidences.
    matched: MilestoneSet,
    /// Where the order stood before the event.
    before: Standing,
}

impl Step {
    /// Settles milestone `id`, evidenced: the event joins its evidence if it evidences it.
    fn add_evidence(
        &self,
        rules: &Rules,
        graph: &mut OrderGraph,
        id: MilestoneId,
    ) -> Option<Change> {
        if !self.matched.contains(id) {
            return None; // evidenced before, by what evidences it still
        }
        let name = &rules.milestones()[id].name;
        let (index, occurred_at) = (self.index, self.occurred_at);
        let Some(node) = graph.milestone_mut(name) else {
            graph.milestones.push(MilestoneNode {
                name: name.clone(),
                inferred: false,
                reached_at: Some(occurred_at),
                evidence: Evidence::from_slice(&[index]),
            });
            return Some(Change::Reached { inferred: false });
        };
        if self.before.evidenced.contains(id) {
            // The largest index yet: the evidence stays ascending.
            node.evidence.push(index);
            node.reached_at = Some(
                node.reached_at
                    .map_or(occurred_at, |at| at.min(occurred_at)),
            );
            return None;
        }
        // Its first evidence: a placeholder confirmed, or a milestone reached under other
        // rules before (no record: it was reported).
        let confirmed = node.inferred.then_some(Change::Confirmed);
        node.inferred = false;
        node.reached_at = Some(occurred_at);
        refresh(&mut node.evidence, &[index]);
        confirmed
    }

    /// Settles milestone `id`, reached but not evidenced (`evidenced` are): behind it, what
    /// evidences the milestones implying it or, when none does, every event. That changes
    /// only when one of those gained this event as evidence, or when it stands on every
    /// event, which now include this one.
    fn infer(
        &self,
        rules: &Rules,
        graph: &mut OrderGraph,
        id: MilestoneId,
        evidenced: MilestoneSet,
    ) -> Option<Change> {
        let mut implying = MilestoneSet::default();
        for by in evidenced.iter() {
            if rules.milestones()[by].implies.contains(id) {
                implying.insert(by);
            }
        }
        let name = &rules.milestones()[id].name;
        let Some(inferred) = graph.milestone(name).map(|node| node.inferred) else {
            let evidence = self.inferred_evidence(rules, graph, implying);
            graph.milestones.push(MilestoneNode {
                name: name.clone(),
                inferred: true,
                reached_at: None,
                evidence,
            });
            return Some(Change::Reached { inferred: true });
        };
        let stale = !self.before.reached.contains(id)
            || implying.is_empty()
            || !implying.intersection(self.matched).is_empty();
        // A node confirmed before keeps what it has.
        if inferred && stale {
            let evidence = self.inferred_evidence(rules, graph, implying);
            if let Some(node) = graph.milestone_mut(name) {
                node.reached_at = None;
                node.evidence = evidence;
            }
        }
        None
    }

    /// The evidence of an inferred milestone that the milestones `implying` imply: their
    /// evidence together, ascending; every event of the order when none does. What
    /// [`Evaluation::inferred_evidence`] gives, read from the nodes of `implying` whether or
    /// not this step has added to them yet.
    fn inferred_evidence(
        &self,
        rules: &Rules,
        graph: &OrderGraph,
        implying: MilestoneSet,
    ) -> Evidence {
        if implying.is_empty() {
            return (0..=self.index).collect();
        }
        let mut behind = Evidence::new();
        for by in implying.iter() {
            if self.matched.contains(by) {
                behind.push(self.index);
            }
            if !self.before.evidenced.contains(by) {
                continue; // evidenced by this event alone
            }
            if let Some(node) = graph.milestone(&rules.milestones()[by].name) {
                behind.extend(node.evidence.iter().copied().filter(|&i| i != self.index));
            }
        }
        behind.sort_unstable();
        behind.dedup();
        behind
    }
}

#[cfg(test)]
mod tests {
    use super::event::test_event as event;
    use super::rules::BUILTIN_RULES;
    use super::*;

    /// A model using every condition a rule can state.
    const CONDITIONS: &str = r#"
version = "conditions-1"
[order]
any_event_implies = "ordered"
[items]
ordered = "OrderCreated"
picked = ["ItemPicked"]
shorted = ["ItemShorted"]
[[milestone]]
name = "ordered"
rank = 10
evidence = [{ event_types = ["OrderCreated"] }]
[[milestone]]
name = "all_picked"
rank = 20
implies = ["ordered"]
evidence = [{ event_types = ["ItemPicked", "ItemShorted"], all_items_resolved = true }]
[[milestone]]
name = "double_checked"
rank = 30
implies = ["ordered"]
evidence = [{ event_types = ["QualityCheck"], at_least = 2 }]
[[milestone]]
name = "driver_after_packing"
rank = 40
implies = ["ordered"]
evidence = [{ event_types = ["DriverAssigned"], after = "OrderPacked" }]
[[milestone]]
name = "uk_express"
rank = 50
implies = ["ordered"]
evidence = [{ event_types = ["Express"], where = { marketplace = "UK", "attributes.speed" = "fast" } }]
"#;

    fn reached(engine: &Engine, events: Vec<OrderEvent>) -> Vec<(String, bool)> {
        let mut graph = OrderGraph::new("A");
        for e in events {
            engine.apply(&mut graph, e);
        }
        let view = engine.view(&graph);
        view.milestones
            .iter()
            .map(|m| (m.name.to_string(), m.inferred))
            .collect()
    }

    fn has(reached: &[(String, bool)], name: &str) -> bool {
        reached.iter().any(|(n, inferred)| n == name && !inferred)
    }

    #[test]
    fn every_condition_a_rule_can_state_holds_only_when_it_should() {
        let engine = Engine::new(Arc::new(Rules::parse(CONDITIONS, "c.toml").unwrap()));
        // Evaluated in full at every event: these rules look beyond the event.
        assert!(!engine.rules().event_local());
        let created = || event("c", "OrderCreated", 1, &[("B1", 2), ("B2", 1)]);

        // Every ordered item resolved: B1 needs 2, picked 1 + shorted 1; B2 picked.
        let partly = reached(
            &engine,
            vec![created(), event("p1", "ItemPicked", 2, &[("B1", 1)])],
        );
        assert!(!has(&partly, "all_picked"), "{partly:?}");
        let all = reached(
            &engine,
            vec![
                created(),
                event("p1", "ItemPicked", 2, &[("B1", 1), ("B2", 1)]),
                event("s1", "ItemShorted", 3, &[("B1", 1)]),
            ],
        );
        assert!(has(&all, "all_picked"), "{all:?}");
        // Nothing is resolved before we know what was ordered.
        let no_order = reached(&engine, vec![event("p1", "ItemPicked", 2, &[("B1", 5)])]);
        assert!(!has(&no_order, "all_picked"), "{no_order:?}");

        // At least two distinct checks; a redelivery is not a second one.
        let check = || event("q1", "QualityCheck", 5, &[]);
        assert!(!has(
            &reached(&engine, vec![check(), check()]),
            "double_checked"
        ));
        assert!(has(
            &reached(&engine, vec![check(), event("q2", "QualityCheck", 6, &[])]),
            "double_checked"
        ));

        // A driver assigned after packing, whatever the arrival order.
        let packed = || event("pk", "OrderPacked", 10, &[]);
        let early = event("d1", "DriverAssigned", 9, &[]);
        let late = || event("d2", "DriverAssigned", 11, &[]);
        assert!(!has(
            &reached(&engine, vec![packed(), early]),
            "driver_after_packing"
        ));
        assert!(has(
            &reached(&engine, vec![late(), packed()]),
            "driver_after_packing"
        ));

        // Field and attribute values.
        let mut express = event("x", "Express", 1, &[]);
        express.marketplace = "UK".into();
        assert!(!has(&reached(&engine, vec![express.clone()]), "uk_express"));
        express.attributes.insert("speed".into(), "fast".into());
        assert!(has(&reached(&engine, vec![express]), "uk_express"));
    }

    #[test]
    fn an_order_is_finished_from_its_last_event_once_its_status_is_final() {
        let engine = Engine::new(Arc::new(Rules::builtin().unwrap()));
        let mut graph = OrderGraph::new("A");
        assert_eq!(engine.finished_at(&graph), None);
        engine.apply(&mut graph, event("c", "OrderCreated", 100, &[("x", 1)]));
        engine.apply(&mut graph, event("o", "OutForDelivery", 300, &[]));
        assert_eq!(engine.finished_at(&graph), None, "not final yet");
        engine.apply(&mut graph, event("d", "Delivered", 400, &[]));
        assert_eq!(engine.finished_at(&graph), Some(400));
        // A late event that occurred later still moves the finish time.
        engine.apply(&mut graph, event("p", "OrderPacked", 450, &[]));
        assert_eq!(engine.finished_at(&graph), Some(450));

        let mut cancelled = OrderGraph::new("B");
        engine.apply(&mut cancelled, event("x", "OrderCancelled", 50, &[]));
        assert_eq!(engine.finished_at(&cancelled), Some(50));

        // Finality is the rules' word: the same events under rules without `final` never
        // finish.
        let rules = BUILTIN_RULES.replace("final = true", "");
        let engine = Engine::new(Arc::new(Rules::parse(&rules, "no-final").unwrap()));
        assert_eq!(engine.finished_at(&graph), None);
    }

    #[test]
    fn status_and_finish_read_from_where_the_nodes_stand_equal_those_read_from_the_nodes() {
        use crate::generate::{GenerateConfig, Generator};
        let engine = Engine::new(Arc::new(Rules::builtin().unwrap()));
        let stream = Generator::new(GenerateConfig {
            orders: 300,
            ..GenerateConfig::default()
        });
        let mut graphs: std::collections::HashMap<CompactString, OrderGraph> = Default::default();
        let (mut finished, mut compared) = (0, 0);
        for event in stream {
            let graph = graphs
                .entry(event.order_id.clone())
                .or_insert_with(|| OrderGraph::new(event.order_id.clone()));
            engine.apply(graph, event);
            assert!(graph.derived.standing(engine.rules()).is_some());
            // Decoded, the graph has no standing: both are read from its nodes by name.
            let bare = codec::decode(&codec::to_bytes(graph)).unwrap();
            assert!(bare.derived.standing(engine.rules()).is_none());
            assert_eq!(engine.status(graph), engine.status(&bare));
            assert_eq!(engine.finished_at(graph), engine.finished_at(&bare));
            finished += usize::from(engine.finished_at(graph).is_some());
            compared += 1;
        }
        assert!(
            finished > 300 && compared > 2_000,
            "{finished} of {compared}"
        );
    }

    #[test]
    fn history_replays_exactly_the_records_the_arrivals_produced() {
        let engine = Engine::new(Arc::new(Rules::builtin().unwrap()));
        let mut graph = OrderGraph::new("A");
        let mut emitted = Vec::new();
        // Out of order, with a duplicate: placeholders first, confirmed later.
        for e in [
            event("d", "Delivered", 400, &[]),
            event("c", "OrderCreated", 100, &[("x", 1)]),
            event("d", "Delivered", 400, &[]),
            event("o", "OutForDelivery", 300, &[]),
        ] {
            emitted.extend(engine.apply(&mut graph, e).changes);
        }
        let history = engine.history(&graph);
        assert_eq!(history, emitted);
        let sequences: Vec<u64> = history.iter().map(|c| c.sequence).collect();
        assert_eq!(sequences, (1..=graph.sequence()).collect::<Vec<_>>());
    }

    #[test]
    fn a_type_named_twice_in_one_rule_counts_each_event_once() {
        let rules = r#"
version = "twice-1"
[items]
ordered = "OrderCreated"
[[milestone]]
name = "checked"
rank = 10
evidence = [{ event_types = ["QualityCheck", "QualityCheck"], at_least = 2 }]
"#;
        let engine = Engine::new(Arc::new(Rules::parse(rules, "twice.toml").unwrap()));
        let one = reached(&engine, vec![event("q1", "QualityCheck", 1, &[])]);
        assert!(!has(&one, "checked"), "{one:?}");
        let two = reached(
            &engine,
            vec![
                event("q1", "QualityCheck", 1, &[]),
                event("q2", "QualityCheck", 2, &[]),
            ],
        );
        assert!(has(&two, "checked"), "{two:?}");
    }

    #[test]
    fn records_carry_the_status_of_milestones_reached_under_other_rules_too() {
        let model = |version: &str, b_by: &str| {
            format!(
                r#"
version = "{version}"
[items]
ordered = "A"
[[milestone]]
name = "a"
rank = 10
evidence = [{{ event_types = ["A"] }}]
[[milestone]]
name = "c"
rank = 15
evidence = [{{ event_types = ["C"] }}]
[[milestone]]
name = "b"
rank = 20
evidence = [{{ event_types = ["{b_by}"] }}]
"#
            )
        };
        let old = Engine::new(Arc::new(Rules::parse(&model("old", "B"), "old").unwrap()));
        let new = Engine::new(Arc::new(
            Rules::parse(&model("new", "Bnew"), "new").unwrap(),
        ));
        let mut graph = OrderGraph::new("A");
        old.apply(&mut graph, event("a", "A", 1, &[]));
        old.apply(&mut graph, event("b", "B", 2, &[]));
        // The new rules no longer reach `b`, but it was reported: it stays the status, in
        // the records of the full evaluation and of the events settled one at a time after.
        let changes = new.apply(&mut graph, event("c", "C", 3, &[])).changes;
        let statuses: Vec<&str> = changes.iter().map(|c| c.status.as_str()).collect();
        assert_eq!(statuses, ["b"]);
        assert_eq!(new.status(&graph).map(|s| s.as_str()), Some("b"));
        let changes = new.apply(&mut graph, event("b2", "Bnew", 4, &[])).changes;
        assert_eq!(changes.len(), 0, "b was reported already: {changes:?}");
        assert_eq!(new.status(&graph).map(|s| s.as_str()), Some("b"));
    }

    #[test]
    fn a_graph_built_under_other_rules_is_evaluated_with_the_new_rules_type_numbers() {
        // Both models name the same types, numbered in opposite orders: type numbers a graph
        // kept from the first must not be read as the second's.
        let model = |first: &str, second: &str| {
            format!(
                r#"
version = "{first}-first"
[items]
ordered = "OrderCreated"
[[milestone]]
name = "{first}"
rank = 10
evidence = [{{ event_types = ["{first}"] }}]
[[milestone]]
name = "{second}"
rank = 20
evidence = [{{ event_types = ["{second}"] }}]
"#
            )
        };
        let old = Engine::new(Arc::new(
            Rules::parse(&model("Packed", "Shipped"), "old").unwrap(),
        ));
        let new = Engine::new(Arc::new(
            Rules::parse(&model("Shipped", "Packed"), "new").unwrap(),
        ));
        let mut graph = OrderGraph::new("A");
        old.apply(&mut graph, event("p", "Packed", 1, &[]));
        let changes = new.reevaluate(&mut graph);
        assert!(changes.is_empty(), "{changes:?}");
        new.apply(&mut graph, event("s", "Shipped", 2, &[]));
        let view = new.view(&graph);
        let names: Vec<&str> = view.milestones.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["Shipped", "Packed"]);
        assert!(view.milestones.iter().all(|m| !m.inferred));
        let evidence: Vec<usize> = graph
            .milestones()
            .iter()
            .map(|m| m.evidence.len())
            .collect();
        assert_eq!(evidence, [1, 1]);
    }
}
