//! A Prometheus histogram of whole-millisecond latencies, observed a commit's events at a
//! time.
//!
//! The end-to-end latencies are observed for every input event, twice (from `occurred_at`
//! and from the record's timestamp), at its transaction's commit: tens of thousands per
//! commit under a backlog. `prometheus::Histogram` (even through its local, unsynchronised
//! copy) finds each value's bucket by a linear search over float bounds: about 140
//! instructions per value, 3% of the processing threads' instructions over the pipeline
//! benchmark (callgrind). The values are whole milliseconds, so here each bound is turned
//! into the largest whole millisecond it holds once, a batch is counted into plain integers
//! by a binary search, and added under a lock once per batch. Exposed as seconds, with the
//! bounds, counts and sum `prometheus::Histogram` would show for the same values.

use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto;

/// A histogram of durations given in whole milliseconds, exposed in seconds. Cheap to clone:
/// clones share their counts.
#[derive(Clone)]
pub(super) struct MsHistogram {
    inner: Arc<Inner>,
}

struct Inner {
    desc: Desc,
    /// The bounds in seconds, as exposed (`le`), ascending.
    bounds: Vec<f64>,
    /// Per bound, the largest whole millisecond count it holds (`ms / 1000 <= bound`).
    bounds_ms: Vec<u64>,
    counts: Mutex<Counts>,
}

/// Non-cumulative counts, one per bound and one past the last (`+Inf`), with their sum.
#[derive(Clone, Default)]
pub(super) struct Counts {
    buckets: Vec<u64>,
    count: u64,
    sum_ms: u64,
}

impl MsHistogram {
    /// A histogram named `name` with bucket upper bounds `bounds` (seconds, ascending).
    ///
    /// Errors: an invalid name or help (as for any Prometheus metric).
    pub(super) fn new(name: &str, help: &str, bounds: &[f64]) -> prometheus::Result<MsHistogram> {
        let desc = Desc::new(
            name.to_owned(),
            help.to_owned(),
            Vec::new(),
            Default::default(),
        )?;
        let bounds_ms = bounds
            .iter()
            .map(|&bound| largest_ms_within(bound))
            .collect();
        Ok(MsHistogram {
            inner: Arc::new(Inner {
                desc,
                bounds: bounds.to_vec(),
                bounds_ms,
                counts: Mutex::new(Counts {
                    buckets: vec![0; bounds.len() + 1],
                    ..Counts::default()
                }),
            }),
        })
    }

    /// Empty counts for [`MsHistogram::count`], to be added with [`MsHistogram::add`].
    pub(super) fn local(&self) -> Counts {
        Counts {
            buckets: vec![0; self.inner.bounds.len() + 1],
            ..Counts::default()
        }
    }

    /// Counts one latency of `ms` milliseconds into `local`.
    #[inline]
    pub(super) fn count(&self, local: &mut Counts, ms: u64) {
        let bounds = &self.inner.bounds_ms;
        // Past the last bound (`+Inf`): event times of a replay or a backlog, at once.
        let bucket = match bounds.last() {
            Some(&last) if ms > last => bounds.len(),
            _ => bounds.partition_point(|&bound| bound < ms),
        };
        local.buckets[bucket] += 1;
        local.count += 1;
        local.sum_ms = local.sum_ms.saturating_add(ms);
    }

    /// Adds what `local` counted.
    pub(super) fn add(&self, local: &Counts) {
        if local.count == 0 {
            return;
        }
        let mut counts = self
            .inner
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (total, &n) in counts.buckets.iter_mut().zip(&local.buckets) {
            *total += n;
        }
        counts.count += local.count;
        counts.sum_ms = counts.sum_ms.saturating_add(local.sum_ms);
    }
}

/// The largest whole number of milliseconds `ms` with `ms / 1000 <= bound` in floating
/// point, the comparison `prometheus::Histogram` makes with the value in seconds.
fn largest_ms_within(bound: f64) -> u64 {
    if bound < 0.0 {
        return 0; // no latency is negative: observed as 0, which such a bound does not hold
    }
    let within = |ms: u64| ms as f64 / 1000.0 <= bound;
    let mut ms = (bound * 1000.0).floor().min(u64::MAX as f64 / 2.0) as u64;
    while !within(ms) && ms > 0 {
        ms -= 1;
    }
    while within(ms + 1) {
        ms += 1;
    }
    ms
}

impl Collector for MsHistogram {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.inner.desc]
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let counts = self
            .inner
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let mut histogram = proto::Histogram::default();
        histogram.set_sample_count(counts.count);
        histogram.set_sample_sum(counts.sum_ms as f64 / 1000.0);
        let mut cumulative = 0;
        let buckets = self
            .inner
            .bounds
            .iter()
            .zip(&counts.buckets)
            .map(|(&bound, &n)| {
                cumulative += n;
                let mut bucket = proto::Bucket::default();
                bucket.set_cumulative_count(cumulative);
                bucket.set_upper_bound(bound);
                bucket
            })
            .collect();
        histogram.set_bucket(buckets);
        let mut metric = proto::Metric::default();
        metric.set_histogram(histogram);
        let mut family = proto::MetricFamily::default();
        family.set_name(self.inner.desc.fq_name.clone());
        family.set_help(self.inner.desc.help.clone());
        family.set_field_type(proto::MetricType::HISTOGRAM);
        family.set_metric(vec![metric]);
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Histogram, HistogramOpts, Registry, TextEncoder};

    use super::*;

    const BOUNDS: &[f64] = &[
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        120.0, 300.0, 600.0, 1800.0, 3600.0,
    ];

    fn exposition(collector: Box<dyn Collector>) -> String {
        let registry = Registry::new();
        registry.register(collector).expect("register");
        TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("encode")
    }

    #[test]
    fn bounds_in_whole_milliseconds_hold_what_the_bounds_in_seconds_hold() {
        assert_eq!(largest_ms_within(0.001), 1);
        assert_eq!(largest_ms_within(0.0025), 2);
        assert_eq!(largest_ms_within(0.1), 100);
        assert_eq!(largest_ms_within(3600.0), 3_600_000);
        assert_eq!(largest_ms_within(0.0), 0);
        for &bound in BOUNDS {
            let ms = largest_ms_within(bound);
            assert!(ms as f64 / 1000.0 <= bound && (ms + 1) as f64 / 1000.0 > bound);
        }
    }

    #[test]
    fn exposes_what_a_prometheus_histogram_of_the_same_values_in_seconds_shows() {
        let ours = MsHistogram::new("latency_seconds", "help", BOUNDS).expect("histogram");
        let theirs = Histogram::with_opts(
            HistogramOpts::new("latency_seconds", "help").buckets(BOUNDS.to_vec()),
        )
        .expect("histogram");
        // Values on and around every bound, zero, and past the last.
        let mut values: Vec<u64> = vec![0, 3_600_001, 10_000_000];
        for &bound in BOUNDS {
            let ms = largest_ms_within(bound);
            values.extend([ms.saturating_sub(1), ms, ms + 1]);
        }
        // Two batches, as two commits would add them.
        for batch in values.chunks(values.len() / 2 + 1) {
            let mut local = ours.local();
            for &ms in batch {
                ours.count(&mut local, ms);
                theirs.observe(ms as f64 / 1000.0);
            }
            ours.add(&local);
        }
        let ours = exposition(Box::new(ours));
        let theirs = exposition(Box::new(theirs));
        // The sums agree to the float rounding of a sum of seconds against a sum of ms.
        let sum = |text: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix("latency_seconds_sum "))
                .and_then(|v| v.parse().ok())
                .expect("a sum")
        };
        assert!((sum(&ours) - sum(&theirs)).abs() < 1e-6, "{ours}\n{theirs}");
        let without_sum = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| !l.starts_with("latency_seconds_sum "))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(without_sum(&ours), without_sum(&theirs));
        assert!(ours.contains("latency_seconds_count 63"), "{ours}");
    }
}
