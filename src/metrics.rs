//! The stream processor's metrics: every name and label in one place, registered once, and
//! the log line that pairs with a metric emitted from here and nowhere else.
//!
//! [`Metrics`] owns its own [`Registry`] (not prometheus' global one, so that each test makes
//! its own). The processor holds it in an `Arc` and calls one method per thing that happened;
//! `GET /metrics` serves [`Metrics::encode_text`].
//!
//! | method | metric |
//! |---|---|
//! | [`event_in`](Metrics::event_in) | `milestones_events_in_total{topic, event_type}` |
//! | [`duplicate_event`](Metrics::duplicate_event) | `milestones_duplicate_events_total` |
//! | [`out_of_order_event`](Metrics::out_of_order_event) | `milestones_out_of_order_events_total` |
//! | [`order_read_back`](Metrics::order_read_back) | `milestones_orders_read_back_total` |
//! | [`order_loaded`](Metrics::order_loaded) | `milestones_orders_from_memory_total`, `milestones_orders_from_store_total` |
//! | [`milestone_reached`](Metrics::milestone_reached) | `milestones_reached_total{milestone, inferred}`, `milestones_placeholders_inferred_total` |
//! | [`placeholder_confirmed`](Metrics::placeholder_confirmed) | `milestones_placeholders_confirmed_total` |
//! | [`dead_letter`](Metrics::dead_letter) | `milestones_dead_letters_total{class}` (and a `warn` log, at most [`DEAD_LETTER_LOGS_PER_WINDOW`] per class and [`DEAD_LETTER_LOG_WINDOW`]) |
//! | [`transaction_committed`](Metrics::transaction_committed) | `milestones_transaction_commit_seconds`, `milestones_transactions_total{outcome="committed"}`, `milestones_last_commit_timestamp_seconds` |
//! | [`commit_phases`](Metrics::commit_phases) | `milestones_commit_phase_seconds{phase}` |
//! | [`transaction_aborted`](Metrics::transaction_aborted) | `milestones_transactions_total{outcome="aborted"}` (and a `warn` log) |
//! | [`event_committed`](Metrics::event_committed) | `milestones_occurred_to_commit_seconds`, `milestones_record_to_commit_seconds` |
//! | [`restore_progress`](Metrics::restore_progress) | `milestones_restore_records_applied{partition}`, `milestones_restore_records_remaining{partition}` |
//! | [`restore_finished`](Metrics::restore_finished) | `milestones_restores_total{outcome}` (and an `info` or `warn` log) |
//! | [`restore_waits`](Metrics::restore_waits) | `milestones_restore_waits_total` |
//! | [`state_size`](Metrics::state_size) | `milestones_state_bytes{partition}`, `milestones_state_orders{partition}` |
//! | [`consumer_lag`](Metrics::consumer_lag) | `milestones_consumer_lag{topic, partition}` |
//! | [`partition_revoked`](Metrics::partition_revoked) | removes the partition's series of the gauges above |
//! | [`http_request`](Metrics::http_request) | `milestones_http_requests_total{route, status}`, `milestones_http_request_seconds{route}` |
//! | [`event_stream_opened`](Metrics::event_stream_opened) | `milestones_http_event_streams` (open order event streams; the guard it returns closes) |
//!
//! Plus the `process_*` metrics of the process collector (CPU, memory, open files, threads)
//! on Linux.
//!
//! The events these methods log (dead letters, aborted transactions, finished restores) must
//! not be logged again by the caller: one event, one log line, one place.

use std::collections::HashSet;
use std::fmt::Display;
use std::sync::Mutex;
use std::time::Duration;

use compact_str::CompactString;
use prometheus::core::Collector;
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use rustc_hash::FxHashMap;

use crate::state::{RestoreError, RestoreOutcome, RestoreProgress};

mod latency;
mod log_limit;

use latency::MsHistogram;
use log_limit::{LogLimit, Verdict};

// Metric names. Counters end in `_total`, durations in `_seconds` (Prometheus conventions).
pub const EVENTS_IN: &str = "milestones_events_in_total";
pub const DUPLICATE_EVENTS: &str = "milestones_duplicate_events_total";
pub const OUT_OF_ORDER_EVENTS: &str = "milestones_out_of_order_events_total";
pub const ORDERS_READ_BACK: &str = "milestones_orders_read_back_total";
pub const ORDERS_FROM_MEMORY: &str = "milestones_orders_from_memory_total";
pub const ORDERS_FROM_STORE: &str = "milestones_orders_from_store_total";
pub const PLACEHOLDERS_INFERRED: &str = "milestones_placeholders_inferred_total";
pub const PLACEHOLDERS_CONFIRMED: &str = "milestones_placeholders_confirmed_total";
pub const MILESTONES_REACHED: &str = "milestones_reached_total";
pub const DEAD_LETTERS: &str = "milestones_dead_letters_total";

/// Dead letters are logged one by one up to this many per error class and
/// [`DEAD_LETTER_LOG_WINDOW`]; past it, one line says so, and the next logged one gives the
/// count of those not logged.
pub const DEAD_LETTER_LOGS_PER_WINDOW: u32 = 10;
pub const DEAD_LETTER_LOG_WINDOW: Duration = Duration::from_secs(10);
pub const ORDERS_EXPIRED: &str = "milestones_orders_expired_total";
pub const TRANSACTION_COMMIT_SECONDS: &str = "milestones_transaction_commit_seconds";
pub const COMMIT_PHASE_SECONDS: &str = "milestones_commit_phase_seconds";
pub const LAST_COMMIT_TIMESTAMP_SECONDS: &str = "milestones_last_commit_timestamp_seconds";
pub const TRANSACTIONS: &str = "milestones_transactions_total";
pub const OCCURRED_TO_COMMIT_SECONDS: &str = "milestones_occurred_to_commit_seconds";
pub const RECORD_TO_COMMIT_SECONDS: &str = "milestones_record_to_commit_seconds";
pub const RESTORE_RECORDS_APPLIED: &str = "milestones_restore_records_applied";
pub const RESTORE_RECORDS_REMAINING: &str = "milestones_restore_records_remaining";
pub const RESTORES: &str = "milestones_restores_total";
pub const RESTORE_WAITS: &str = "milestones_restore_waits_total";
pub const STATE_BYTES: &str = "milestones_state_bytes";
pub const STATE_ORDERS: &str = "milestones_state_orders";
pub const CONSUMER_LAG: &str = "milestones_consumer_lag";
pub const HTTP_REQUESTS: &str = "milestones_http_requests_total";
pub const HTTP_REQUEST_SECONDS: &str = "milestones_http_request_seconds";
pub const HTTP_EVENT_STREAMS: &str = "milestones_http_event_streams";

// Label names.
pub const LABEL_TOPIC: &str = "topic";
pub const LABEL_PARTITION: &str = "partition";
pub const LABEL_EVENT_TYPE: &str = "event_type";
pub const LABEL_MILESTONE: &str = "milestone";
pub const LABEL_INFERRED: &str = "inferred";
pub const LABEL_CLASS: &str = "class";
pub const LABEL_OUTCOME: &str = "outcome";
pub const LABEL_ROUTE: &str = "route";
pub const LABEL_STATUS: &str = "status";
pub const LABEL_PHASE: &str = "phase";

// Label values that are not data.
pub const OUTCOME_COMMITTED: &str = "committed";
pub const OUTCOME_ABORTED: &str = "aborted";
pub const OUTCOME_COMPLETED: &str = "completed";
pub const OUTCOME_FAILED: &str = "failed";
/// The steps of a commit, in order (see [`CommitPhases`]).
pub const PHASE_PREPARE: &str = "prepare";
pub const PHASE_FLUSH: &str = "flush";
pub const PHASE_COMMIT: &str = "commit";
pub const PHASE_STORE: &str = "store";
/// The `event_type` under which event types beyond the cardinality guard are counted.
pub const OTHER_EVENT_TYPE: &str = "other";

/// How many distinct `event_type` label values are kept. Event types come from 20+ source
/// systems and unknown ones are kept, not refused: without a bound, one system sending ids
/// as types would create a time series per event.
pub const MAX_EVENT_TYPES: usize = 200;
/// An event type longer than this is counted as [`OTHER_EVENT_TYPE`]: no real type is.
pub const MAX_EVENT_TYPE_LEN: usize = 100;

/// Transaction commits take milliseconds; a slow broker, seconds.
const COMMIT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// End-to-end latency: milliseconds when the service keeps up, up to an hour when it
/// catches up after an outage or a source sends late.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// HTTP answers: well under a millisecond from the local store, a few with a forward.
const HTTP_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The steps of one commit, each while the shards wait for it: what the processing of
/// the next records waits for besides the records themselves.
#[derive(Debug, Default, Clone, Copy)]
pub struct CommitPhases {
    /// Producing the changelog records, order views and tombstones of the orders the
    /// transaction changed, and (at the same time) adding the consumed offsets to it.
    pub prepare: Duration,
    /// Waiting for the delivery reports of everything the transaction produced.
    pub flush: Duration,
    /// The commit call itself (the transaction's markers written).
    pub commit: Duration,
    /// Writing the transaction's state to the stores, after the commit.
    pub store: Duration,
}

/// The service's metrics. Cheap to call from the processing loop: counters are atomics;
/// labelled ones cost a hash lookup.
pub struct Metrics {
    registry: Registry,
    events_in: IntCounterVec,
    /// The `event_type` label values in use, for the cardinality guard. A `std::sync::Mutex`
    /// and not a Tokio one: nothing awaits while holding it, and it is held for one set
    /// lookup (uncontended: one processing loop records events).
    event_types: Mutex<EventTypes>,
    duplicate_events: IntCounter,
    out_of_order_events: IntCounter,
    orders_read_back: IntCounter,
    orders_from_memory: IntCounter,
    orders_from_store: IntCounter,
    placeholders_inferred: IntCounter,
    placeholders_confirmed: IntCounter,
    milestones_reached: IntCounterVec,
    dead_letters: IntCounterVec,
    dead_letter_logs: LogLimit,
    orders_expired: IntCounter,
    transaction_commit_seconds: Histogram,
    /// Per phase, in [`CommitPhases`]' order.
    commit_phase_seconds: [Histogram; 4],
    last_commit_timestamp_seconds: Gauge,
    transactions: IntCounterVec,
    occurred_to_commit_seconds: MsHistogram,
    record_to_commit_seconds: MsHistogram,
    restore_records_applied: IntGaugeVec,
    restore_records_remaining: IntGaugeVec,
    restores: IntCounterVec,
    restore_waits: IntCounter,
    state_bytes: IntGaugeVec,
    state_orders: IntGaugeVec,
    consumer_lag: IntGaugeVec,
    http_requests: IntCounterVec,
    http_request_seconds: HistogramVec,
    http_event_streams: IntGauge,
}

#[derive(Default)]
struct EventTypes {
    seen: HashSet<String>,
    /// Set once the guard first sent a type to `other`, so that is logged once.
    overflowed: bool,
}

impl Metrics {
    /// Creates and registers every metric in a new registry.
    ///
    /// Errors: a [`prometheus::Error`] only for a programming error here (a name registered
    /// twice, an invalid name); the unit tests create one.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let r = &registry;
        let metrics = Metrics {
            events_in: register(
                r,
                IntCounterVec::new(
                    Opts::new(EVENTS_IN, "Input events, by input topic and event type."),
                    &[LABEL_TOPIC, LABEL_EVENT_TYPE],
                )?,
            )?,
            event_types: Mutex::new(EventTypes::default()),
            duplicate_events: register(
                r,
                IntCounter::new(
                    DUPLICATE_EVENTS,
                    "Redelivered events: an event_id the order already had.",
                )?,
            )?,
            out_of_order_events: register(
                r,
                IntCounter::new(
                    OUT_OF_ORDER_EVENTS,
                    "Events that arrived after an event of the same order that occurred later.",
                )?,
            )?,
            orders_read_back: register(
                r,
                IntCounter::new(
                    ORDERS_READ_BACK,
                    "Finished orders that got another event after they were written out in \
                     the same transaction (processing.write_out_after_events): read back from \
                     their state and written out again.",
                )?,
            )?,
            orders_from_memory: register(
                r,
                IntCounter::new(
                    ORDERS_FROM_MEMORY,
                    "Orders that a transaction changed and found in memory as an earlier \
                     transaction committed them (processing.kept_orders).",
                )?,
            )?,
            orders_from_store: register(
                r,
                IntCounter::new(
                    ORDERS_FROM_STORE,
                    "Orders that a transaction changed and read from the state store \
                     (not kept in memory, or not any more).",
                )?,
            )?,
            placeholders_inferred: register(
                r,
                IntCounter::new(
                    PLACEHOLDERS_INFERRED,
                    "Milestones reached by inference only (inferred: true).",
                )?,
            )?,
            placeholders_confirmed: register(
                r,
                IntCounter::new(
                    PLACEHOLDERS_CONFIRMED,
                    "Inferred milestones later confirmed by an event that evidences them.",
                )?,
            )?,
            milestones_reached: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        MILESTONES_REACHED,
                        "Milestones newly reached by an order, by milestone and whether inferred.",
                    ),
                    &[LABEL_MILESTONE, LABEL_INFERRED],
                )?,
            )?,
            dead_letters: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        DEAD_LETTERS,
                        "Input records sent to the dead-letter topic, by error class.",
                    ),
                    &[LABEL_CLASS],
                )?,
            )?,
            dead_letter_logs: LogLimit::new(DEAD_LETTER_LOG_WINDOW, DEAD_LETTER_LOGS_PER_WINDOW),
            orders_expired: register(
                r,
                IntCounter::new(
                    ORDERS_EXPIRED,
                    "Finished orders removed from state after their retention (a changelog \
                     tombstone each).",
                )?,
            )?,
            transaction_commit_seconds: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        TRANSACTION_COMMIT_SECONDS,
                        "Time to commit a transaction (offsets and outputs), in seconds.",
                    )
                    .buckets(COMMIT_BUCKETS.to_vec()),
                )?,
            )?,
            commit_phase_seconds: {
                let phases = register(
                    r,
                    HistogramVec::new(
                        HistogramOpts::new(
                            COMMIT_PHASE_SECONDS,
                            "Time spent in each step of a transaction's commit, in seconds: \
                             prepare (changelog records, order views and offsets sent), \
                             flush (delivery reports awaited), commit (the commit call), \
                             store (state written to the stores).",
                        )
                        .buckets(COMMIT_BUCKETS.to_vec()),
                        &[LABEL_PHASE],
                    )?,
                )?;
                [PHASE_PREPARE, PHASE_FLUSH, PHASE_COMMIT, PHASE_STORE]
                    .map(|phase| phases.with_label_values(&[phase]))
            },
            last_commit_timestamp_seconds: register(
                r,
                Gauge::new(
                    LAST_COMMIT_TIMESTAMP_SECONDS,
                    "When the last transaction committed, in seconds since the Unix epoch \
                     (millisecond precision); 0 before the first.",
                )?,
            )?,
            transactions: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        TRANSACTIONS,
                        "Transactions, by outcome: committed or aborted.",
                    ),
                    &[LABEL_OUTCOME],
                )?,
            )?,
            occurred_to_commit_seconds: register(
                r,
                MsHistogram::new(
                    OCCURRED_TO_COMMIT_SECONDS,
                    "From an event's occurred_at to the commit of its outputs, in seconds.",
                    LATENCY_BUCKETS,
                )?,
            )?,
            record_to_commit_seconds: register(
                r,
                MsHistogram::new(
                    RECORD_TO_COMMIT_SECONDS,
                    "From an input record's timestamp to the commit of its outputs, in seconds.",
                    LATENCY_BUCKETS,
                )?,
            )?,
            restore_records_applied: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        RESTORE_RECORDS_APPLIED,
                        "Changelog records applied by the partition's current or last restore.",
                    ),
                    &[LABEL_PARTITION],
                )?,
            )?,
            restore_records_remaining: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        RESTORE_RECORDS_REMAINING,
                        "Changelog records the partition's restore has still to apply.",
                    ),
                    &[LABEL_PARTITION],
                )?,
            )?,
            restores: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        RESTORES,
                        "Partition restores, by outcome: completed or failed.",
                    ),
                    &[LABEL_OUTCOME],
                )?,
            )?,
            restore_waits: register(
                r,
                IntCounter::new(
                    RESTORE_WAITS,
                    "Newly assigned partitions paused, not prefetched, while the restores of \
                     the ones ahead of them ran (state.restore_prefetch_partitions).",
                )?,
            )?,
            state_bytes: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        STATE_BYTES,
                        "Approximate size of the partition's state store.",
                    ),
                    &[LABEL_PARTITION],
                )?,
            )?,
            state_orders: register(
                r,
                IntGaugeVec::new(
                    Opts::new(STATE_ORDERS, "Orders held in the partition's state store."),
                    &[LABEL_PARTITION],
                )?,
            )?,
            consumer_lag: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        CONSUMER_LAG,
                        "Records of the input partition not yet consumed (high watermark minus \
                         position).",
                    ),
                    &[LABEL_TOPIC, LABEL_PARTITION],
                )?,
            )?,
            http_requests: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        HTTP_REQUESTS,
                        "HTTP requests answered, by route (its pattern, or `unmatched`) and \
                         status code.",
                    ),
                    &[LABEL_ROUTE, LABEL_STATUS],
                )?,
            )?,
            http_request_seconds: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        HTTP_REQUEST_SECONDS,
                        "Time to answer an HTTP request (to the start of the body for event \
                         streams), in seconds.",
                    )
                    .buckets(HTTP_BUCKETS.to_vec()),
                    &[LABEL_ROUTE],
                )?,
            )?,
            http_event_streams: register(
                r,
                IntGauge::new(
                    HTTP_EVENT_STREAMS,
                    "Order event streams (Server-Sent Events) open on this instance.",
                )?,
            )?,
            registry,
        };
        // Outcomes are known in advance: export them at 0 so `rate()` works from the start.
        for outcome in [OUTCOME_COMMITTED, OUTCOME_ABORTED] {
            metrics.transactions.with_label_values(&[outcome]);
        }
        for outcome in [OUTCOME_COMPLETED, OUTCOME_FAILED] {
            metrics.restores.with_label_values(&[outcome]);
        }
        #[cfg(target_os = "linux")]
        metrics.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(metrics)
    }

    /// The registry, to register more collectors or gather the families yourself.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every metric in the Prometheus text exposition format (`text/plain; version=0.0.4`).
    pub fn encode_text(&self) -> String {
        let mut text = String::new();
        // Encoding fails only for a family without a name or without samples, and a registry
        // gathers neither; should it happen, the text holds the families encoded before it.
        if let Err(error) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut text) {
            tracing::error!(%error, "encoding the metrics failed");
        }
        text
    }

    /// One input event decoded from `topic`. Unknown event types are counted under their own
    /// name, up to [`MAX_EVENT_TYPES`] distinct types; further new types, and types longer
    /// than [`MAX_EVENT_TYPE_LEN`], count as [`OTHER_EVENT_TYPE`].
    pub fn event_in(&self, topic: &str, event_type: &str) {
        self.event_in_counter(topic, event_type).inc();
    }

    /// The counter [`Metrics::event_in`] increments.
    fn event_in_counter(&self, topic: &str, event_type: &str) -> IntCounter {
        let label = self.event_type_label(event_type);
        self.events_in.with_label_values(&[topic, label])
    }

    /// The label value for `event_type`: itself while the guard allows, else `other`.
    fn event_type_label<'a>(&self, event_type: &'a str) -> &'a str {
        if event_type.len() > MAX_EVENT_TYPE_LEN {
            return OTHER_EVENT_TYPE;
        }
        // A poisoned lock only means another thread panicked mid-insert; the set is still
        // a valid set.
        let mut types = self
            .event_types
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if types.seen.contains(event_type) {
            return event_type;
        }
        if types.seen.len() < MAX_EVENT_TYPES {
            types.seen.insert(event_type.to_owned());
            return event_type;
        }
        if !types.overflowed {
            types.overflowed = true;
            tracing::warn!(
                limit = MAX_EVENT_TYPES,
                event_type,
                "too many distinct event types: new ones are counted as `other` in {EVENTS_IN}"
            );
        }
        OTHER_EVENT_TYPE
    }

    /// An event whose `event_id` the order already had (a redelivery).
    pub fn duplicate_event(&self) {
        self.duplicate_events.inc();
    }

    /// An event that arrived after an event of the same order that occurred later.
    pub fn out_of_order_event(&self) {
        self.out_of_order_events.inc();
    }

    /// A finished order that got another event after it was written out in the same
    /// transaction: read back from its state, to be written out again.
    pub fn order_read_back(&self) {
        self.orders_read_back.inc();
    }

    /// An order that the open transaction changed for the first time, found `in_memory`
    /// as an earlier transaction committed it, or else read from the store.
    pub fn order_loaded(&self, in_memory: bool) {
        if in_memory {
            self.orders_from_memory.inc();
        } else {
            self.orders_from_store.inc();
        }
    }

    /// A milestone newly reached by an order: a change record that is not a confirmation.
    /// `inferred` milestones (placeholders) also count in `milestones_placeholders_inferred_total`.
    pub fn milestone_reached(&self, milestone: &str, inferred: bool) {
        self.milestone_reached_counter(milestone, inferred).inc();
        if inferred {
            self.placeholders_inferred.inc();
        }
    }

    /// The per-milestone counter [`Metrics::milestone_reached`] increments.
    fn milestone_reached_counter(&self, milestone: &str, inferred: bool) -> IntCounter {
        let inferred_label = if inferred { "true" } else { "false" };
        self.milestones_reached
            .with_label_values(&[milestone, inferred_label])
    }

    /// An inferred milestone confirmed by an event that evidences it (the change record with
    /// `inferred: false` of a milestone reported inferred before).
    pub fn placeholder_confirmed(&self) {
        self.placeholders_confirmed.inc();
    }

    /// The input record at `topic`/`partition`/`offset` was sent to the dead-letter topic
    /// because of `error`; counted by `class` (a [`DecodeError::class`], or `expired_order`),
    /// and logged.
    pub fn dead_letter(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        class: &str,
        error: &dyn Display,
    ) {
        self.dead_letters.with_label_values(&[class]).inc();
        match self
            .dead_letter_logs
            .admit(class, std::time::Instant::now())
        {
            Verdict::Log { suppressed } => {
                if suppressed > 0 {
                    tracing::warn!(
                        class,
                        suppressed,
                        "records of this class dead-lettered without a log line before this one"
                    );
                }
                tracing::warn!(%error, class, topic, partition, offset, "record dead-lettered");
            }
            Verdict::StartSuppressing => tracing::warn!(
                class,
                per_window = DEAD_LETTER_LOGS_PER_WINDOW,
                window_s = self.dead_letter_logs.window().as_secs(),
                "more records of this class are dead-lettered than are logged one by one; \
                 every one is counted in milestones_dead_letters_total and kept in the \
                 dead-letter topic with the reason in its headers"
            ),
            Verdict::Suppress => {}
        }
    }

    /// `count` finished orders left state (retention).
    pub fn orders_expired(&self, count: usize) {
        self.orders_expired.inc_by(count as u64);
    }

    /// `count` newly assigned partitions wait paused for the restores ahead of them.
    pub fn restore_waits(&self, count: usize) {
        self.restore_waits.inc_by(count as u64);
    }

    /// A transaction committed at `committed_at_ms` (epoch milliseconds); `commit_time` is
    /// how long the commit call took.
    pub fn transaction_committed(&self, commit_time: Duration, committed_at_ms: i64) {
        self.transaction_commit_seconds
            .observe(commit_time.as_secs_f64());
        self.last_commit_timestamp_seconds
            .set(committed_at_ms as f64 / 1000.0);
        self.transactions
            .with_label_values(&[OUTCOME_COMMITTED])
            .inc();
    }

    /// How long the steps of a committed transaction's commit took.
    pub fn commit_phases(&self, phases: &CommitPhases) {
        let took = [phases.prepare, phases.flush, phases.commit, phases.store];
        for (histogram, took) in self.commit_phase_seconds.iter().zip(took) {
            histogram.observe(took.as_secs_f64());
        }
    }

    /// A transaction was aborted because of `error` (its inputs will be processed again);
    /// counted and logged.
    pub fn transaction_aborted(&self, error: &dyn Display) {
        self.transactions
            .with_label_values(&[OUTCOME_ABORTED])
            .inc();
        tracing::warn!(%error, "transaction aborted");
    }

    /// The outputs of these input events, each `(occurred_at_ms, record_timestamp_ms)`, were
    /// committed at `committed_at_ms` (epoch milliseconds): observes the latency from each
    /// event's `occurred_at_ms` and, when the record had one, from the input record's
    /// timestamp. A source clock ahead of ours gives a negative latency, observed as 0.
    /// Observed locally first, then added to the histograms at once.
    pub fn events_committed(&self, events: &[(i64, Option<i64>)], committed_at_ms: i64) {
        let latency = |from_ms: i64| committed_at_ms.saturating_sub(from_ms).max(0) as u64;
        let (occurred, recorded) = (
            &self.occurred_to_commit_seconds,
            &self.record_to_commit_seconds,
        );
        let (mut from_occurred, mut from_record) = (occurred.local(), recorded.local());
        for &(occurred_at_ms, record_timestamp_ms) in events {
            occurred.count(&mut from_occurred, latency(occurred_at_ms));
            if let Some(timestamp) = record_timestamp_ms {
                recorded.count(&mut from_record, latency(timestamp));
            }
        }
        occurred.add(&from_occurred);
        recorded.add(&from_record);
    }

    /// Where a partition's restore stands; pass it the progress of
    /// [`state::restore`](crate::state::restore)'s callback.
    pub fn restore_progress(&self, progress: &RestoreProgress) {
        let partition = progress.partition.to_string();
        self.restore_records_applied
            .with_label_values(&[&partition])
            .set(saturating_i64(progress.applied));
        self.restore_records_remaining
            .with_label_values(&[&partition])
            .set((progress.end_offset - progress.offset).max(0));
    }

    /// A partition's restore ended; counted by outcome and logged (`info` when it completed,
    /// `warn` with the error when it failed).
    pub fn restore_finished(&self, partition: i32, result: Result<&RestoreOutcome, &RestoreError>) {
        match result {
            Ok(outcome) => {
                self.restores.with_label_values(&[OUTCOME_COMPLETED]).inc();
                let label = partition.to_string();
                self.restore_records_applied
                    .with_label_values(&[&label])
                    .set(saturating_i64(outcome.applied));
                self.restore_records_remaining
                    .with_label_values(&[&label])
                    .set(0);
                tracing::info!(
                    partition,
                    applied = outcome.applied,
                    start_offset = outcome.start_offset,
                    end_offset = outcome.end_offset,
                    wiped = outcome.wiped.is_some(),
                    "restore completed"
                );
            }
            Err(error) => {
                self.restores.with_label_values(&[OUTCOME_FAILED]).inc();
                tracing::warn!(
                    %error,
                    partition,
                    retriable = error.is_retriable(),
                    "restore failed"
                );
            }
        }
    }

    /// The partition's state store: its approximate size in bytes
    /// ([`PartitionStore::approximate_bytes`](crate::state::PartitionStore::approximate_bytes))
    /// and, when known, how many orders it holds.
    pub fn state_size(&self, partition: i32, bytes: u64, orders: Option<u64>) {
        let partition = partition.to_string();
        self.state_bytes
            .with_label_values(&[&partition])
            .set(saturating_i64(bytes));
        if let Some(orders) = orders {
            self.state_orders
                .with_label_values(&[&partition])
                .set(saturating_i64(orders));
        }
    }

    /// An HTTP request to `route` (the matched route pattern, so one series per route and
    /// not per order) was answered with `status` after `elapsed`.
    pub fn http_request(&self, route: &str, status: u16, elapsed: Duration) {
        self.http_requests
            .with_label_values(&[route, &status.to_string()])
            .inc();
        self.http_request_seconds
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
    }

    /// An order event stream opened; it counts as open until the returned guard drops.
    pub fn event_stream_opened(&self) -> EventStreamGuard {
        self.http_event_streams.inc();
        EventStreamGuard(self.http_event_streams.clone())
    }

    /// How many order event streams are open.
    pub fn event_streams_open(&self) -> i64 {
        self.http_event_streams.get()
    }

    /// Records of the input `topic`/`partition` not yet consumed.
    pub fn consumer_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag
            .with_label_values(&[topic, &partition.to_string()])
            .set(lag.max(0));
    }

    /// The partition left this instance: removes its series from the per-partition gauges
    /// (restore, state size, lag of every topic), so that a revoked partition's last values
    /// are not reported as current.
    pub fn partition_revoked(&self, partition: i32) {
        let label = partition.to_string();
        for gauge in [
            &self.restore_records_applied,
            &self.restore_records_remaining,
            &self.state_bytes,
            &self.state_orders,
        ] {
            // Err only means the partition had no series in this gauge.
            let _ = gauge.remove_label_values(&[&label]);
        }
        let topics: Vec<String> = self
            .consumer_lag
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .filter(|metric| {
                metric
                    .get_label()
                    .iter()
                    .any(|l| l.name() == LABEL_PARTITION && l.value() == label)
            })
            .filter_map(|metric| {
                metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == LABEL_TOPIC)
                    .map(|l| l.value().to_owned())
            })
            .collect();
        for topic in topics {
            let _ = self
                .consumer_lag
                .remove_label_values(&[topic.as_str(), &label]);
        }
    }
}

/// Registers a clone of `collector` (prometheus metrics are handles onto shared values) and
/// returns it for recording.
/// An open order event stream, counted in `milestones_http_event_streams` until dropped.
pub struct EventStreamGuard(IntGauge);

impl Drop for EventStreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn register<C: Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> Result<C, prometheus::Error> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The counters one shard of the processor counts per event, each labelled counter looked
/// up in [`Metrics`] once (`with_label_values` hashes the labels and takes a lock, and the
/// event type guard takes another, on every call). Counted here and added to the metrics at
/// each [`LocalCounters::flush`] (the processor flushes at every commit and abort): shards
/// count at once on several threads, and a shared atomic counter incremented per event
/// would have the cores pass its memory back and forth. Counts exactly as
/// [`Metrics::event_in`], [`Metrics::milestone_reached`], [`Metrics::duplicate_event`],
/// [`Metrics::out_of_order_event`], [`Metrics::order_read_back`], [`Metrics::order_loaded`] and
/// [`Metrics::placeholder_confirmed`] do.
#[derive(Default)]
pub struct LocalCounters {
    /// Per input topic (its index among the inputs), per event type.
    events_in: Vec<FxHashMap<CompactString, Pending>>,
    /// Per inferred (`[false, true]`), per milestone.
    reached: [FxHashMap<CompactString, Pending>; 2],
    duplicates: u64,
    out_of_order: u64,
    read_back: u64,
    from_memory: u64,
    from_store: u64,
    placeholders_inferred: u64,
    placeholders_confirmed: u64,
}

/// A counter and what is not added to it yet.
struct Pending {
    counter: IntCounter,
    count: u64,
}

impl LocalCounters {
    /// Beyond this many labels a map keeps no more (the metrics' own guard caps the series).
    const MAX_KEPT: usize = 2 * MAX_EVENT_TYPES;

    /// [`Metrics::event_in`]; `input` numbers `topic` among the input topics.
    pub fn event_in(&mut self, metrics: &Metrics, input: usize, topic: &str, event_type: &str) {
        if self.events_in.len() <= input {
            self.events_in.resize_with(input + 1, FxHashMap::default);
        }
        count_kept(&mut self.events_in[input], event_type, || {
            metrics.event_in_counter(topic, event_type)
        });
    }

    /// [`Metrics::milestone_reached`].
    pub fn milestone_reached(&mut self, metrics: &Metrics, milestone: &str, inferred: bool) {
        count_kept(&mut self.reached[usize::from(inferred)], milestone, || {
            metrics.milestone_reached_counter(milestone, inferred)
        });
        self.placeholders_inferred += u64::from(inferred);
    }

    /// [`Metrics::duplicate_event`].
    pub fn duplicate_event(&mut self) {
        self.duplicates += 1;
    }

    /// [`Metrics::out_of_order_event`].
    pub fn out_of_order_event(&mut self) {
        self.out_of_order += 1;
    }

    /// [`Metrics::order_read_back`].
    pub fn order_read_back(&mut self) {
        self.read_back += 1;
    }

    /// [`Metrics::order_loaded`].
    pub fn order_loaded(&mut self, in_memory: bool) {
        if in_memory {
            self.from_memory += 1;
        } else {
            self.from_store += 1;
        }
    }

    /// [`Metrics::placeholder_confirmed`].
    pub fn placeholder_confirmed(&mut self) {
        self.placeholders_confirmed += 1;
    }

    /// Adds what was counted since the last flush to the metrics.
    pub fn flush(&mut self, metrics: &Metrics) {
        for kept in self.events_in.iter_mut().chain(self.reached.iter_mut()) {
            for pending in kept.values_mut() {
                if pending.count > 0 {
                    pending.counter.inc_by(std::mem::take(&mut pending.count));
                }
            }
        }
        for (counter, count) in [
            (&metrics.duplicate_events, &mut self.duplicates),
            (&metrics.out_of_order_events, &mut self.out_of_order),
            (&metrics.orders_read_back, &mut self.read_back),
            (&metrics.orders_from_memory, &mut self.from_memory),
            (&metrics.orders_from_store, &mut self.from_store),
            (
                &metrics.placeholders_inferred,
                &mut self.placeholders_inferred,
            ),
            (
                &metrics.placeholders_confirmed,
                &mut self.placeholders_confirmed,
            ),
        ] {
            if *count > 0 {
                counter.inc_by(std::mem::take(count));
            }
        }
    }
}

/// Counts one for `label` in `kept`, looking its counter up with `counter` the first time
/// (and keeping it, while there is room; past that, the counter is incremented at once).
fn count_kept(
    kept: &mut FxHashMap<CompactString, Pending>,
    label: &str,
    counter: impl FnOnce() -> IntCounter,
) {
    if let Some(pending) = kept.get_mut(label) {
        pending.count += 1;
        return;
    }
    let counter = counter();
    if kept.len() < LocalCounters::MAX_KEPT {
        kept.insert(label.into(), Pending { counter, count: 1 });
    } else {
        counter.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::DecodeError;

    /// The sample lines of `name` (no `# HELP`/`# TYPE`), as exported.
    fn samples(metrics: &Metrics, name: &str) -> Vec<String> {
        metrics
            .encode_text()
            .lines()
            .filter(|l| {
                l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{' | b' '))
            })
            .map(str::to_owned)
            .collect()
    }

    fn has(metrics: &Metrics, line: &str) -> bool {
        metrics.encode_text().lines().any(|l| l == line)
    }

    #[test]
    fn every_metric_registers_once_in_its_own_registry() {
        // Two instances side by side: nothing is registered globally.
        let a = Metrics::new().unwrap();
        let b = Metrics::new().unwrap();
        a.duplicate_event();
        assert!(has(&a, "milestones_duplicate_events_total 1"));
        assert!(has(&b, "milestones_duplicate_events_total 0"));
    }

    #[test]
    fn recorded_events_show_up_with_their_labels() {
        let m = Metrics::new().unwrap();
        m.event_in("order-events", "OrderCreated");
        m.event_in("order-events", "OrderCreated");
        m.event_in("order-events", "SomethingNew");
        m.duplicate_event();
        m.out_of_order_event();
        m.order_read_back();
        m.order_loaded(true);
        m.order_loaded(false);
        m.order_loaded(false);
        m.milestone_reached("ordered", true);
        m.milestone_reached("ready", false);
        m.placeholder_confirmed();
        let missing = DecodeError::MissingValue;
        m.dead_letter("order-events", 3, 42, missing.class(), &missing);
        m.orders_expired(2);
        m.restore_waits(3);
        m.transaction_committed(Duration::from_millis(7), 1_796_550_000_123);
        m.commit_phases(&CommitPhases {
            prepare: Duration::from_millis(30),
            flush: Duration::from_millis(6),
            commit: Duration::from_millis(1),
            store: Duration::from_millis(20),
        });
        m.transaction_aborted(&"fenced");
        m.events_committed(&[(1_000, Some(1_500))], 2_000);
        m.consumer_lag("order-events", 3, 17);
        m.state_size(3, 4096, Some(12));

        for line in [
            r#"milestones_events_in_total{event_type="OrderCreated",topic="order-events"} 2"#,
            r#"milestones_events_in_total{event_type="SomethingNew",topic="order-events"} 1"#,
            "milestones_duplicate_events_total 1",
            "milestones_out_of_order_events_total 1",
            "milestones_orders_read_back_total 1",
            "milestones_orders_from_memory_total 1",
            "milestones_orders_from_store_total 2",
            "milestones_placeholders_inferred_total 1",
            "milestones_placeholders_confirmed_total 1",
            r#"milestones_reached_total{inferred="true",milestone="ordered"} 1"#,
            r#"milestones_reached_total{inferred="false",milestone="ready"} 1"#,
            r#"milestones_dead_letters_total{class="missing_value"} 1"#,
            "milestones_orders_expired_total 2",
            "milestones_restore_waits_total 3",
            r#"milestones_transactions_total{outcome="committed"} 1"#,
            r#"milestones_transactions_total{outcome="aborted"} 1"#,
            r#"milestones_transaction_commit_seconds_bucket{le="0.005"} 0"#,
            r#"milestones_transaction_commit_seconds_bucket{le="0.01"} 1"#,
            "milestones_transaction_commit_seconds_count 1",
            r#"milestones_commit_phase_seconds_bucket{phase="prepare",le="0.025"} 0"#,
            r#"milestones_commit_phase_seconds_bucket{phase="prepare",le="0.05"} 1"#,
            r#"milestones_commit_phase_seconds_sum{phase="flush"} 0.006"#,
            r#"milestones_commit_phase_seconds_sum{phase="commit"} 0.001"#,
            r#"milestones_commit_phase_seconds_bucket{phase="store",le="0.01"} 0"#,
            r#"milestones_commit_phase_seconds_count{phase="store"} 1"#,
            "milestones_last_commit_timestamp_seconds 1796550000.123",
            "milestones_occurred_to_commit_seconds_sum 1",
            "milestones_record_to_commit_seconds_sum 0.5",
            r#"milestones_occurred_to_commit_seconds_bucket{le="3600"} 1"#,
            r#"milestones_consumer_lag{partition="3",topic="order-events"} 17"#,
            r#"milestones_state_bytes{partition="3"} 4096"#,
            r#"milestones_state_orders{partition="3"} 12"#,
        ] {
            assert!(has(&m, line), "missing {line:?} in\n{}", m.encode_text());
        }
    }

    #[test]
    fn local_counters_count_as_the_metrics_methods_do() {
        let m = Metrics::new().unwrap();
        let mut local = LocalCounters::default();
        for _ in 0..3 {
            local.event_in(&m, 0, "order-events", "OrderCreated");
        }
        local.event_in(&m, 1, "other-events", "OrderCreated");
        m.event_in("order-events", "OrderCreated");
        local.milestone_reached(&m, "ordered", true);
        local.milestone_reached(&m, "ordered", true);
        local.milestone_reached(&m, "ordered", false);
        local.duplicate_event();
        local.out_of_order_event();
        local.order_read_back();
        local.order_read_back();
        local.order_loaded(true);
        local.order_loaded(false);
        local.placeholder_confirmed();
        assert!(
            has(&m, "milestones_placeholders_inferred_total 0"),
            "counted before the flush"
        );
        local.flush(&m);
        for line in [
            r#"milestones_events_in_total{event_type="OrderCreated",topic="order-events"} 4"#,
            r#"milestones_events_in_total{event_type="OrderCreated",topic="other-events"} 1"#,
            r#"milestones_reached_total{inferred="true",milestone="ordered"} 2"#,
            r#"milestones_reached_total{inferred="false",milestone="ordered"} 1"#,
            "milestones_placeholders_inferred_total 2",
            "milestones_placeholders_confirmed_total 1",
            "milestones_duplicate_events_total 1",
            "milestones_out_of_order_events_total 1",
            "milestones_orders_read_back_total 2",
            "milestones_orders_from_memory_total 1",
            "milestones_orders_from_store_total 1",
        ] {
            assert!(has(&m, line), "missing {line:?} in\n{}", m.encode_text());
        }
        // A flush adds only what came since the last one.
        local.event_in(&m, 0, "order-events", "OrderCreated");
        local.flush(&m);
        local.flush(&m);
        assert!(has(
            &m,
            r#"milestones_events_in_total{event_type="OrderCreated",topic="order-events"} 5"#
        ));
    }

    #[test]
    fn a_clock_ahead_of_ours_is_observed_as_zero_latency() {
        let m = Metrics::new().unwrap();
        m.events_committed(&[(5_000, None)], 2_000);
        assert!(has(&m, "milestones_occurred_to_commit_seconds_sum 0"));
        assert!(has(&m, "milestones_occurred_to_commit_seconds_count 1"));
        assert!(has(&m, "milestones_record_to_commit_seconds_count 0"));
    }

    #[test]
    fn outcomes_are_exported_at_zero_before_anything_happens() {
        let m = Metrics::new().unwrap();
        for line in [
            r#"milestones_transactions_total{outcome="committed"} 0"#,
            r#"milestones_transactions_total{outcome="aborted"} 0"#,
            r#"milestones_restores_total{outcome="completed"} 0"#,
            r#"milestones_restores_total{outcome="failed"} 0"#,
        ] {
            assert!(has(&m, line), "missing {line:?}");
        }
    }

    #[test]
    fn restore_progress_and_outcome() {
        let m = Metrics::new().unwrap();
        m.restore_progress(&RestoreProgress {
            partition: 2,
            applied: 300,
            offset: 310,
            end_offset: 1_000,
        });
        assert!(has(
            &m,
            r#"milestones_restore_records_applied{partition="2"} 300"#
        ));
        assert!(has(
            &m,
            r#"milestones_restore_records_remaining{partition="2"} 690"#
        ));
        let outcome = RestoreOutcome {
            applied: 990,
            start_offset: 10,
            end_offset: 1_000,
            checkpoint: Some(1_000),
            wiped: None,
        };
        m.restore_finished(2, Ok(&outcome));
        assert!(has(
            &m,
            r#"milestones_restore_records_applied{partition="2"} 990"#
        ));
        assert!(has(
            &m,
            r#"milestones_restore_records_remaining{partition="2"} 0"#
        ));
        assert!(has(
            &m,
            r#"milestones_restores_total{outcome="completed"} 1"#
        ));
        let error = RestoreError::KeylessRecord {
            topic: "changelog".into(),
            partition: 2,
            offset: 5,
        };
        m.restore_finished(2, Err(&error));
        assert!(has(&m, r#"milestones_restores_total{outcome="failed"} 1"#));
    }

    #[test]
    fn a_revoked_partition_leaves_no_series_behind() {
        let m = Metrics::new().unwrap();
        for p in [1, 2] {
            m.state_size(p, 10, Some(1));
            m.consumer_lag("a", p, 5);
            m.consumer_lag("b", p, 5);
            m.restore_progress(&RestoreProgress {
                partition: p,
                applied: 1,
                offset: 1,
                end_offset: 2,
            });
        }
        m.partition_revoked(1);
        let text = m.encode_text();
        assert!(!text.contains(r#"partition="1""#), "{text}");
        for name in [
            STATE_BYTES,
            STATE_ORDERS,
            RESTORE_RECORDS_APPLIED,
            RESTORE_RECORDS_REMAINING,
        ] {
            assert_eq!(samples(&m, name).len(), 1, "{name}");
        }
        assert_eq!(samples(&m, CONSUMER_LAG).len(), 2);
        // Revoking a partition with no series is fine.
        m.partition_revoked(7);
    }

    /// Guards against one source sending ids as event types and creating a series per event.
    #[test]
    fn event_types_beyond_the_limit_count_as_other() {
        let m = Metrics::new().unwrap();
        for i in 0..MAX_EVENT_TYPES {
            m.event_in("t", &format!("Type{i}"));
        }
        m.event_in("t", "OneTooMany");
        m.event_in("t", "AnotherOne");
        // Types already seen keep their own series.
        m.event_in("t", "Type0");
        m.event_in("t", &"X".repeat(MAX_EVENT_TYPE_LEN + 1));

        let series = samples(&m, EVENTS_IN);
        assert_eq!(series.len(), MAX_EVENT_TYPES + 1, "{series:#?}");
        assert!(has(
            &m,
            r#"milestones_events_in_total{event_type="other",topic="t"} 3"#
        ));
        assert!(has(
            &m,
            r#"milestones_events_in_total{event_type="Type0",topic="t"} 2"#
        ));
        assert!(!m.encode_text().contains("OneTooMany"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_are_exported() {
        let m = Metrics::new().unwrap();
        let text = m.encode_text();
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
    }
}
