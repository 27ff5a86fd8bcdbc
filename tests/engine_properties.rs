//! Properties of the engine that must hold for any events of an order, in any arrival order,
//! with any number of redeliveries. No broker needed: the engine is pure.

use std::collections::HashMap;
use std::sync::Arc;

use order_milestones::engine::codec;
use order_milestones::engine::{
    Engine, Item, MilestoneChange, OrderEvent, OrderGraph, OrderView, Rules,
};
use proptest::prelude::*;

const TYPES: &[&str] = &[
    "OrderCreated",
    "OrderProcessing",
    "ItemPicked",
    "ItemShorted",
    "ItemSubstituted",
    "OrderPacked",
    "OutForDelivery",
    "Shipped",
    "Delivered",
    "OrderCancelled",
    "DriverAssigned", // unknown to the default rules
];

/// One event of order "A". Distinct ids make distinct events; times collide on purpose.
fn event(id: usize) -> impl Strategy<Value = OrderEvent> {
    (
        0..TYPES.len(),
        prop::bool::weighted(0.2),
        0i64..12,
        prop::collection::vec((0usize..4, 1i32..4), 0..3),
        prop::option::of("[a-z]{1,3}"),
    )
        .prop_map(move |(kind, third_party, at, items, driver)| OrderEvent {
            event_id: format!("e{id}").into(),
            order_id: "A".into(),
            event_type: TYPES[kind].into(),
            source: "prop".into(),
            occurred_at: 1_700_000_000_000 + at * 60_000,
            line_of_business: if third_party { "3p" } else { "grocery" }.into(),
            marketplace: "US".into(),
            customer_id: Some("C-1".into()),
            items: items
                .into_iter()
                .map(|(asin, qty)| Item {
                    asin: format!("B{asin}").into(),
                    qty,
                })
                .collect(),
            attributes: driver
                .into_iter()
                .map(|d| ("driver".into(), d.into()))
                .collect(),
        })
}

/// The distinct events of an order, and two arrival orders of the same deliveries (each
/// distinct event once, plus redeliveries).
fn arrivals() -> impl Strategy<Value = (Vec<OrderEvent>, Vec<OrderEvent>, Vec<OrderEvent>)> {
    (1usize..12)
        .prop_flat_map(|n| {
            let events: Vec<_> = (0..n).map(event).collect();
            (events, prop::collection::vec(0..n, 0..6))
        })
        .prop_flat_map(|(events, again)| {
            let mut deliveries = events.clone();
            deliveries.extend(again.iter().map(|&i| events[i].clone()));
            (
                Just(events),
                Just(deliveries.clone()).prop_shuffle(),
                Just(deliveries).prop_shuffle(),
            )
        })
}

fn engine() -> Engine {
    Engine::new(Arc::new(Rules::builtin().expect("built-in rules")))
}

/// Applies deliveries as the service does: the state is decoded and encoded around each event.
fn run(engine: &Engine, deliveries: &[OrderEvent]) -> (OrderGraph, Vec<MilestoneChange>) {
    let mut stored = codec::to_bytes(&OrderGraph::new("A"));
    let mut records = Vec::new();
    for event in deliveries {
        let mut graph = codec::decode(&stored).expect("own encoding decodes");
        records.extend(engine.apply(&mut graph, event.clone()).changes);
        stored = codec::to_bytes(&graph);
    }
    (
        codec::decode(&stored).expect("own encoding decodes"),
        records,
    )
}

fn reached(view: &OrderView) -> Vec<(String, bool)> {
    view.milestones
        .iter()
        .map(|m| (m.name.to_string(), m.inferred))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arrival_order_and_redeliveries_do_not_change_the_answer((events, first, second) in arrivals()) {
        let engine = engine();
        let (a, _) = run(&engine, &first);
        let (b, _) = run(&engine, &second);
        let (once, _) = run(&engine, &events);
        let (va, vb, mut vonce) = (engine.view(&a), engine.view(&b), engine.view(&once));
        prop_assert_eq!(&va, &vb);
        prop_assert_eq!(reached(&va), reached(&vonce));
        prop_assert_eq!(va.duplicates as usize, first.len() - events.len());
        vonce.duplicates = va.duplicates;
        prop_assert_eq!(&va, &vonce);
    }

    #[test]
    fn each_change_is_reported_once_in_sequence((_, deliveries, _) in arrivals()) {
        let engine = engine();
        let (graph, records) = run(&engine, &deliveries);
        let sequences: Vec<u64> = records.iter().map(|r| r.sequence).collect();
        let expected: Vec<u64> = (1..=records.len() as u64).collect();
        prop_assert_eq!(sequences, expected);
        prop_assert_eq!(graph.sequence(), records.len() as u64);
        let mut seen: HashMap<(String, bool), u64> = HashMap::new();
        let mut confirmed: HashMap<String, u64> = HashMap::new();
        for r in &records {
            let key = (r.milestone.to_string(), r.inferred);
            prop_assert!(seen.insert(key.clone(), r.sequence).is_none(), "reported twice: {:?}", key);
            if r.inferred {
                prop_assert!(!confirmed.contains_key(r.milestone.as_str()), "inferred after confirmed: {}", r.milestone);
                prop_assert_eq!(r.reached_at, None);
            } else {
                confirmed.insert(r.milestone.to_string(), r.sequence);
                prop_assert!(r.reached_at.is_some());
            }
            prop_assert!(!r.evidence.is_empty());
            prop_assert_eq!(r.rules_version.as_str(), engine.rules().version());
        }
        // The records tell the same story as the view.
        let view = engine.view(&graph);
        for m in &view.milestones {
            let last = if m.inferred { seen.get(&(m.name.to_string(), true)) } else { confirmed.get(m.name.as_str()) };
            prop_assert!(last.is_some(), "{} in the view but never reported", m.name);
        }
        prop_assert_eq!(records.last().map(|r| r.status.clone()), view.status.clone());
    }

    #[test]
    fn an_order_kept_in_memory_is_settled_as_one_read_from_its_state((_, deliveries, _) in arrivals()) {
        // In memory, each event settles only what it adds (the rules decide on each event
        // alone); a graph decoded from its state is evaluated in full at its next event.
        // Every step gives both the same records and the same graph.
        let driver = Rules::parse(&with_driver_assigned(), "new.toml").expect("rules");
        for engine in [engine(), Engine::new(Arc::new(driver))] {
            prop_assert!(engine.rules().event_local());
            let mut kept = OrderGraph::new("A");
            for event in &deliveries {
                let mut stored = codec::decode(&codec::to_bytes(&kept)).expect("own encoding decodes");
                let read_back = engine.apply(&mut stored, event.clone());
                let in_memory = engine.apply(&mut kept, event.clone());
                prop_assert_eq!(&in_memory, &read_back);
                prop_assert_eq!(&kept, &stored);
            }
        }
    }

    #[test]
    fn reevaluating_with_the_same_rules_changes_nothing((_, deliveries, _) in arrivals()) {
        let engine = engine();
        let (graph, _) = run(&engine, &deliveries);
        let mut again = graph.clone();
        prop_assert!(engine.reevaluate(&mut again).is_empty());
        prop_assert_eq!(again, graph);
    }

    #[test]
    fn a_rule_added_later_applies_to_stored_orders((events, deliveries, _) in arrivals()) {
        let old = engine();
        let (mut graph, records) = run(&old, &deliveries);
        let new = Engine::new(Arc::new(Rules::parse(&with_driver_assigned(), "new.toml").expect("rules")));
        let changes = new.reevaluate(&mut graph);
        // The stored order now looks as if the new rules had seen every event...
        let (fresh, _) = run(&new, &events);
        let (mut now, fresh_view) = (new.view(&graph), new.view(&fresh));
        now.duplicates = fresh_view.duplicates;
        prop_assert_eq!(now, fresh_view);
        // ...and the records go on from where they stopped.
        for (k, change) in changes.iter().enumerate() {
            prop_assert_eq!(change.sequence, records.len() as u64 + k as u64 + 1);
            prop_assert_eq!(change.rules_version.as_str(), "with-driver");
        }
    }
}

/// The default model plus a milestone evidenced by an event type it did not know.
fn with_driver_assigned() -> String {
    let builtin = order_milestones::engine::rules::BUILTIN_RULES;
    let rules: Vec<&str> = builtin
        .lines()
        .map(|line| {
            if line.starts_with("version") {
                "version = \"with-driver\""
            } else {
                line
            }
        })
        .collect();
    rules.join("\n")
        + r#"
[[milestone]]
name = "driver_assigned"
rank = 35
implies = ["ready"]
evidence = [{ event_types = ["DriverAssigned"] }]
"#
}
