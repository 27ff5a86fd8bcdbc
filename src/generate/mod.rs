//! Realistic demo orders: each goes created, processing, picks (some shorted or
//! substituted), packed, out for delivery (or shipped, for third-party sellers), delivered,
//! or is cancelled on the way; several orders are in flight at once, a share of events
//! arrive out of order and a share are delivered twice. Deterministic for a seed, so that a
//! benchmark or a test can be run again on the same stream.
//!
//! - this module: [`Generator`], the event stream, with no I/O.
//! - `produce`: [`produce()`] writes a stream to a Kafka input topic, JSON or Avro, in the
//!   stream's order.
//! - `writer`: Avro with another writer schema than ours, as a newer producer writes.

mod produce;
mod writer;

pub use produce::{produce, KafkaTarget, ProduceError, Produced};
pub use writer::WriterSchemaError;

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::engine::{Item, OrderEvent};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateConfig {
    /// How many orders.
    pub orders: u64,
    /// Share of events delivered after an event of their order that occurred later (0..1).
    pub out_of_order: f64,
    /// Share of events delivered a second time (0..1).
    pub redelivered: f64,
    /// Seed of the random stream.
    pub seed: u64,
    /// Order ids are `{prefix}{number}`; a new prefix gives new orders.
    pub order_prefix: String,
    /// How many orders are in flight at once; their events interleave.
    pub in_flight: usize,
    /// `occurred_at` of the first order, epoch milliseconds.
    pub start_ms: i64,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            orders: 1000,
            out_of_order: 0.2,
            redelivered: 0.05,
            seed: 42,
            order_prefix: "O-".into(),
            in_flight: DEFAULT_IN_FLIGHT,
            start_ms: 1_700_000_000_000,
        }
    }
}

impl GenerateConfig {
    /// How far apart in event time orders start: a minute, and closer with more than
    /// [`DEFAULT_IN_FLIGHT`] orders in flight, so that the orders under way at once span
    /// the same hour of event time however many they are (a busier shop, not a longer
    /// day). Each order's own events span hours.
    pub fn start_interval_ms(&self) -> i64 {
        MINUTE * DEFAULT_IN_FLIGHT as i64 / self.in_flight.max(DEFAULT_IN_FLIGHT) as i64
    }
}

/// How many orders are in flight by default.
pub const DEFAULT_IN_FLIGHT: usize = 64;

/// The stream of events, as an iterator; memory stays bounded by `in_flight` orders.
pub struct Generator {
    config: GenerateConfig,
    rng: StdRng,
    next_order: u64,
    in_flight: Vec<std::vec::IntoIter<OrderEvent>>,
}

impl Generator {
    pub fn new(config: GenerateConfig) -> Generator {
        Generator {
            rng: StdRng::seed_from_u64(config.seed),
            next_order: 0,
            in_flight: Vec::with_capacity(config.in_flight.max(1)),
            config,
        }
    }
}

impl Iterator for Generator {
    type Item = OrderEvent;

    fn next(&mut self) -> Option<OrderEvent> {
        loop {
            while self.in_flight.len() < self.config.in_flight.max(1)
                && self.next_order < self.config.orders
            {
                let n = self.next_order;
                self.next_order += 1;
                let id = format!("{}{n:07}", self.config.order_prefix);
                let start = self.config.start_ms + n as i64 * self.config.start_interval_ms();
                let events = order_lifecycle(&mut self.rng, &id, start);
                let deliveries = disorder(
                    &mut self.rng,
                    events,
                    self.config.out_of_order,
                    self.config.redelivered,
                );
                self.in_flight.push(deliveries.into_iter());
            }
            if self.in_flight.is_empty() {
                return None;
            }
            let pick = self.rng.random_range(0..self.in_flight.len());
            match self.in_flight[pick].next() {
                Some(event) => return Some(event),
                None => {
                    self.in_flight.swap_remove(pick);
                }
            }
        }
    }
}

const MINUTE: i64 = 60_000;

/// One order's events in the order they occurred.
pub fn order_lifecycle(rng: &mut impl Rng, order_id: &str, start: i64) -> Vec<OrderEvent> {
    let line_of_business = match rng.random_range(0..100) {
        0..90 => "grocery",
        90..95 => "fresh",
        _ => "3p",
    };
    let customer = format!("C-{}", rng.random_range(1..=5000));
    let items: Vec<Item> = (0..rng.random_range(8..=12))
        .map(|_| Item {
            asin: format!("B0{:08X}", rng.random_range(0..0x0FFF_FFFFu32)).into(),
            qty: rng.random_range(1..=3),
        })
        .collect();

    let mut t = start;
    let mut events = Vec::with_capacity(12);
    let mut push = |kind: &str,
                    source: &str,
                    suffix: &str,
                    at: i64,
                    items: Vec<Item>,
                    attributes: &[(&str, String)]| {
        events.push(OrderEvent {
            event_id: format!("{source}:{order_id}:{suffix}").into(),
            order_id: order_id.into(),
            event_type: kind.into(),
            source: source.into(),
            occurred_at: at,
            line_of_business: line_of_business.into(),
            marketplace: "US".into(),
            customer_id: Some(customer.as_str().into()),
            items,
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).into(), v.as_str().into()))
                .collect::<BTreeMap<_, _>>(),
        });
    };
    push("OrderCreated", "ordering", "created", t, items.clone(), &[]);
    t += rng.random_range(5..60) * MINUTE;
    push("OrderProcessing", "fulfillment", "started", t, vec![], &[]);
    if rng.random_bool(0.05) {
        t += rng.random_range(1..30) * MINUTE;
        push(
            "OrderCancelled",
            "customer-service",
            "cancelled",
            t,
            vec![],
            &[("reason", "customer request".into())],
        );
        return events;
    }
    // Picks of two to four lines each; a line is sometimes shorted or substituted instead.
    let mut pick = Vec::new();
    let mut picks = 0;
    for (i, item) in items.iter().enumerate() {
        t += rng.random_range(1..4) * MINUTE;
        match rng.random_range(0..100) {
            0..5 => push(
                "ItemShorted",
                "fulfillment",
                &format!("short-{i}"),
                t,
                vec![item.clone()],
                &[],
            ),
            5..10 => push(
                "ItemSubstituted",
                "fulfillment",
                &format!("sub-{i}"),
                t,
                vec![item.clone()],
                &[(
                    "substitute_asin",
                    format!("B1{:08X}", rng.random_range(0..0x0FFF_FFFFu32)),
                )],
            ),
            _ => pick.push(item.clone()),
        }
        if pick.len() >= rng.random_range(2..=4) || (i + 1 == items.len() && !pick.is_empty()) {
            picks += 1;
            push(
                "ItemPicked",
                "fulfillment",
                &format!("pick-{picks}"),
                t,
                std::mem::take(&mut pick),
                &[],
            );
        }
    }
    t += rng.random_range(5..30) * MINUTE;
    push("OrderPacked", "fulfillment", "packed", t, vec![], &[]);
    if rng.random_bool(0.5) {
        t += rng.random_range(1..20) * MINUTE;
        push(
            "DriverAssigned",
            "dispatch",
            "driver",
            t,
            vec![],
            &[("driver", format!("d-{}", rng.random_range(1..500)))],
        );
    }
    t += rng.random_range(10..60) * MINUTE;
    if line_of_business == "3p" {
        push("Shipped", "seller-central", "shipped", t, vec![], &[]);
    } else {
        push("OutForDelivery", "last-mile", "ofd", t, vec![], &[]);
    }
    t += rng.random_range(10..90) * MINUTE;
    push("Delivered", "last-mile", "delivered", t, vec![], &[]);
    events
}

/// `items` at a steady `per_second`: each item is released at its due time (item n at
/// n / per_second seconds from the first), sleeping until then. A consumer that falls
/// behind is not caught up with a burst larger than it was behind by.
pub fn paced<I: Iterator>(items: I, per_second: f64) -> impl Iterator<Item = I::Item> {
    let started = std::time::Instant::now();
    items.enumerate().map(move |(n, item)| {
        let due = started + std::time::Duration::from_secs_f64(n as f64 / per_second);
        if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(wait);
        }
        item
    })
}

/// Reorders one order's events for delivery: each event is, with the chance needed for a
/// share `out_of_order` of late arrivals, swapped with the next one; each is, with chance
/// `redelivered`, delivered again a little later.
pub fn disorder(
    rng: &mut impl Rng,
    events: Vec<OrderEvent>,
    out_of_order: f64,
    redelivered: f64,
) -> Vec<OrderEvent> {
    // A swap makes one late arrival out of two events: swapping with chance q gives a
    // share q / (1 + q) of late arrivals.
    let swap = (out_of_order / (1.0 - out_of_order).max(f64::EPSILON)).clamp(0.0, 1.0);
    let mut events = events;
    let mut i = 0;
    while i + 1 < events.len() {
        if rng.random_bool(swap) {
            events.swap(i, i + 1);
            i += 2;
        } else {
            i += 1;
        }
    }
    let mut deliveries = Vec::with_capacity(events.len() + 2);
    let mut again: Vec<(usize, OrderEvent)> = Vec::new();
    for (i, event) in events.into_iter().enumerate() {
        if rng.random_bool(redelivered.clamp(0.0, 1.0)) {
            again.push((i + rng.random_range(1..=3), event.clone()));
        }
        deliveries.push(event);
        while let Some(pos) = again.iter().position(|(at, _)| *at <= i) {
            deliveries.push(again.swap_remove(pos).1);
        }
    }
    deliveries.extend(again.into_iter().map(|(_, e)| e));
    deliveries
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn orders_under_way_at_once_span_the_same_hour_however_many() {
        let interval = |in_flight| {
            GenerateConfig {
                in_flight,
                ..GenerateConfig::default()
            }
            .start_interval_ms()
        };
        assert_eq!(interval(DEFAULT_IN_FLIGHT), MINUTE);
        assert_eq!(interval(1), MINUTE, "fewer: still a minute apart");
        assert_eq!(interval(640), MINUTE / 10);
        assert_eq!(interval(20_000), 192);
        // The generated orders follow: 640 of them, all in flight at once, start within
        // the hour that 64 do by default.
        let last_start = |in_flight: usize| {
            let config = GenerateConfig {
                orders: in_flight as u64,
                in_flight,
                ..GenerateConfig::default()
            };
            let first = config.start_ms;
            let last = Generator::new(config)
                .filter(|e| e.event_type == "OrderCreated")
                .map(|e| e.occurred_at)
                .max()
                .expect("orders");
            last - first
        };
        assert_eq!(last_start(64), 63 * MINUTE);
        assert_eq!(last_start(640), 639 * MINUTE / 10);
    }

    #[test]
    fn paced_items_come_no_faster_than_the_rate() {
        let started = std::time::Instant::now();
        let items: Vec<u32> = super::paced(0..21, 1000.0).collect();
        assert_eq!(items, (0..21).collect::<Vec<_>>());
        // The 21st item is due 20 ms after the first.
        assert!(started.elapsed() >= std::time::Duration::from_millis(20));
    }

    #[test]
    fn the_stream_has_the_shares_it_was_asked_for() {
        let config = GenerateConfig {
            orders: 2000,
            ..GenerateConfig::default()
        };
        let events: Vec<OrderEvent> = Generator::new(config.clone()).collect();
        let mut seen = HashSet::new();
        let mut latest: BTreeMap<String, i64> = BTreeMap::new();
        let (mut redelivered, mut late) = (0, 0);
        for e in &events {
            if !seen.insert(e.event_id.clone()) {
                redelivered += 1;
                continue;
            }
            let max = latest.entry(e.order_id.to_string()).or_insert(i64::MIN);
            if e.occurred_at < *max {
                late += 1;
            }
            *max = (*max).max(e.occurred_at);
        }
        let distinct = seen.len() as f64;
        let per_order = distinct / 2000.0;
        assert!(
            (9.0..=13.0).contains(&per_order),
            "{per_order} events per order"
        );
        let late_share = late as f64 / distinct;
        let redelivered_share = redelivered as f64 / distinct;
        assert!(
            (0.15..=0.25).contains(&late_share),
            "late share {late_share}"
        );
        assert!(
            (0.03..=0.07).contains(&redelivered_share),
            "redelivered share {redelivered_share}"
        );
        assert!(events.iter().all(|e| e.validate().is_ok()));
    }

    #[test]
    fn the_same_seed_gives_the_same_stream() {
        let config = GenerateConfig {
            orders: 50,
            ..GenerateConfig::default()
        };
        let a: Vec<OrderEvent> = Generator::new(config.clone()).collect();
        let b: Vec<OrderEvent> = Generator::new(config).collect();
        assert_eq!(a, b);
    }
}
