//! The instruments: counters, gauges and histograms an engine keeps while it runs, and the
//! snapshot `metrics()` renders. Every label is a provider, a status or an outcome, never an id
//! of a tenant or user: the number of series is bounded by the configured providers.

use dashmap::DashMap;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the token and identity requests' latency buckets: from a fast
/// provider on the same continent to the HTTP timeout's range.
pub const REQUEST_BOUNDS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Upper bounds (seconds) of the change feed's lag buckets: LISTEN/NOTIFY and SQLite's polling
/// deliver in milliseconds; seconds mean the feed fell behind.
pub const FEED_LAG_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A histogram: counts per bucket (not cumulative; the last is above every bound) and the sum.
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    fn observe(&mut self, seconds: f64) {
        let bucket = self.bounds.partition_point(|bound| *bound < seconds);
        self.counts[bucket] += 1;
        self.sum += seconds;
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let cumulative = self
            .counts
            .iter()
            .take(self.bounds.len())
            .scan(0, |total, count| {
                *total += count;
                Some(*total)
            })
            .collect();
        HistogramSnapshot {
            bounds: self.bounds,
            cumulative,
            count: self.counts.iter().sum(),
            sum: self.sum,
        }
    }
}

/// A histogram as read: cumulative counts per bound, as Prometheus exposes them.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [f64],
    /// Observations at or below each bound (same length as `bounds`).
    pub cumulative: Vec<u64>,
    /// All observations (the `+Inf` bucket).
    pub count: u64,
    pub sum: f64,
}

/// Requests of one kind (refreshes, probes) by provider and outcome: their count is the
/// histogram's, so the counter and the latencies cannot disagree.
#[derive(Default)]
pub struct Requests(Mutex<BTreeMap<(String, &'static str), Histogram>>);

impl Requests {
    pub fn observe(&self, provider: &str, outcome: &'static str, seconds: f64) {
        self.0
            .lock()
            .entry((provider.to_owned(), outcome))
            .or_insert_with(|| Histogram::new(REQUEST_BOUNDS))
            .observe(seconds);
    }

    pub fn snapshot(&self) -> Vec<((String, &'static str), HistogramSnapshot)> {
        let requests = self.0.lock();
        requests
            .iter()
            .map(|(labels, h)| (labels.clone(), h.snapshot()))
            .collect()
    }
}

/// A monotonic counter per provider, of `N` outcomes each. The credential path counts here: a
/// count is a shard read lock and an atomic add, with no allocation once the provider is known.
pub struct PerProvider<const N: usize>(DashMap<String, [AtomicU64; N]>);

impl<const N: usize> Default for PerProvider<N> {
    fn default() -> Self {
        Self(DashMap::new())
    }
}

impl<const N: usize> PerProvider<N> {
    /// Counts one of outcome `index` for `provider`.
    pub fn add(&self, provider: &str, index: usize) {
        if let Some(counts) = self.0.get(provider) {
            counts[index].fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.0
            .entry(provider.to_owned())
            .or_insert_with(|| std::array::from_fn(|_| AtomicU64::new(0)))[index]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Every provider's counts, in provider order.
    pub fn snapshot(&self) -> Vec<(String, [u64; N])> {
        let mut all: Vec<_> = self
            .0
            .iter()
            .map(|e| {
                let counts = std::array::from_fn(|i| e.value()[i].load(Ordering::Relaxed));
                (e.key().clone(), counts)
            })
            .collect();
        all.sort();
        all
    }
}

/// How `getCredential` was served in Rust, in [`Metrics::credential_requests`]' order.
pub const SERVED: [&str; 2] = ["native_hit", "store_read"];
pub const NATIVE_HIT: usize = 0;
pub const STORE_READ: usize = 1;

/// What one engine has measured since it opened.
pub struct Metrics {
    pub refreshes: Requests,
    pub probes: Requests,
    /// Token and identity requests sent and not yet answered, by provider.
    in_flight: Mutex<BTreeMap<String, u64>>,
    pub concurrency_waits: PerProvider<1>,
    /// `getCredential` served by provider and how ([`SERVED`]).
    pub credential_requests: PerProvider<2>,
    pub lease_takeovers: AtomicU64,
    feed_lag: Mutex<Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            refreshes: Requests::default(),
            probes: Requests::default(),
            in_flight: Mutex::default(),
            concurrency_waits: PerProvider::default(),
            credential_requests: PerProvider::default(),
            lease_takeovers: AtomicU64::new(0),
            feed_lag: Mutex::new(Histogram::new(FEED_LAG_BOUNDS)),
        }
    }
}

/// A request to a provider counted in flight until dropped (answered, failed, or cancelled).
pub struct InFlight<'a> {
    metrics: &'a Metrics,
    provider: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(count) = self.metrics.in_flight.lock().get_mut(&self.provider) {
            *count = count.saturating_sub(1);
        }
    }
}

impl Metrics {
    /// Counts a request to `provider` in flight while the returned guard lives.
    pub fn in_flight(&self, provider: &str) -> InFlight<'_> {
        *self
            .in_flight
            .lock()
            .entry(provider.to_owned())
            .or_default() += 1;
        InFlight {
            metrics: self,
            provider: provider.to_owned(),
        }
    }

    pub fn in_flight_snapshot(&self) -> Vec<(String, u64)> {
        let in_flight = self.in_flight.lock();
        in_flight.iter().map(|(p, n)| (p.clone(), *n)).collect()
    }

    pub fn observe_feed_lag(&self, lag_ms: u64) {
        self.feed_lag.lock().observe(lag_ms as f64 / 1000.0);
    }

    pub fn feed_lag(&self) -> HistogramSnapshot {
        self.feed_lag.lock().snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_each_observation_in_the_first_bucket_that_holds_it() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        for seconds in [0.05, 0.1, 0.5, 2.0] {
            h.observe(seconds);
        }
        let s = h.snapshot();
        // Prometheus buckets are "less than or equal": 0.1 belongs to le="0.1".
        assert_eq!(s.cumulative, vec![2, 3]);
        assert_eq!(s.count, 4);
        assert!((s.sum - 2.65).abs() < 1e-9);
    }

    #[test]
    fn requests_count_through_their_histogram() {
        let requests = Requests::default();
        requests.observe("attio", "ok", 0.2);
        requests.observe("attio", "ok", 0.3);
        requests.observe("attio", "revoked", 0.1);
        let snapshot = requests.snapshot();
        assert_eq!(snapshot.len(), 2);
        assert_eq!(snapshot[0].0, ("attio".to_owned(), "ok"));
        assert_eq!(snapshot[0].1.count, 2);
        assert_eq!(snapshot[1].1.count, 1);
    }

    #[test]
    fn in_flight_requests_are_counted_until_their_guard_drops() {
        let metrics = Metrics::default();
        let first = metrics.in_flight("hubspot");
        let second = metrics.in_flight("hubspot");
        assert_eq!(metrics.in_flight_snapshot(), vec![("hubspot".into(), 2)]);
        drop(first);
        drop(second);
        assert_eq!(metrics.in_flight_snapshot(), vec![("hubspot".into(), 0)]);
    }

    #[test]
    fn counters_are_monotonic_per_provider_and_outcome() {
        let counters = PerProvider::<2>::default();
        counters.add("attio", NATIVE_HIT);
        counters.add("attio", NATIVE_HIT);
        counters.add("attio", STORE_READ);
        counters.add("hubspot", STORE_READ);
        assert_eq!(
            counters.snapshot(),
            vec![("attio".into(), [2, 1]), ("hubspot".into(), [0, 1])]
        );
    }
}
