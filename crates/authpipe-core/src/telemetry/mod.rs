//! What an operator sees of an engine: its instruments ([`metrics`]) and its log records
//! ([`records`]). The engine reports each happening once, here; `metrics()` reads the
//! instruments as [`Family`]s (the binding renders them for Prometheus and OpenTelemetry), and
//! records go to subscribers only, so an app without a logger pays for no record at all.

pub mod metrics;
pub mod records;

use crate::string_enum::string_enum;
use metrics::{HistogramSnapshot, Metrics};
pub use records::{Level, Record};
use std::collections::BTreeMap;
use tokio::sync::broadcast;

/// Records buffered per subscriber before a slow one starts missing them.
const RECORD_BUFFER: usize = 1024;

/// One engine's instruments and its record stream.
pub struct Telemetry {
    pub metrics: Metrics,
    records: broadcast::Sender<Record>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            metrics: Metrics::default(),
            records: broadcast::channel(RECORD_BUFFER).0,
        }
    }
}

impl Telemetry {
    /// Sends the record `build` makes (if it makes one), if anyone listens; otherwise does not
    /// build it.
    pub fn record<R: Into<Option<Record>>>(&self, build: impl FnOnce() -> R) {
        if self.records.receiver_count() > 0 {
            if let Some(record) = build().into() {
                let _ = self.records.send(record);
            }
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Record> {
        self.records.subscribe()
    }
}

string_enum! {
    /// A metric family's type, as the Prometheus exposition format names it.
    pub enum MetricKind {
        Counter = "counter",
        Gauge = "gauge",
        Histogram = "histogram",
    }
}

/// A metric family: its stable name and every series it has.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricKind,
    /// `seconds`, or empty for a count.
    pub unit: &'static str,
    pub series: Vec<Series>,
}

/// One series: its labels (provider, status, outcome only) and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: Vec<(&'static str, String)>,
    /// A counter's or gauge's value; a histogram's count.
    pub value: f64,
    pub histogram: Option<HistogramSnapshot>,
}

impl Series {
    fn of(labels: Vec<(&'static str, String)>, value: f64) -> Self {
        Self {
            labels,
            value,
            histogram: None,
        }
    }

    fn histogram(labels: Vec<(&'static str, String)>, h: HistogramSnapshot) -> Self {
        Self {
            labels,
            value: h.count as f64,
            histogram: Some(h),
        }
    }
}

/// What the engine reads elsewhere for a snapshot: its cache, its change feed and its store.
pub struct Readings {
    /// Connections by (provider, status).
    pub connections: BTreeMap<(String, &'static str), u64>,
    /// The latest `last_refresh_at` of each provider's connections (ms): a refresh by any
    /// process on the store, as the cache follows them.
    pub last_refresh_at: BTreeMap<String, i64>,
    pub resyncs: u64,
    pub store_errors: u64,
    pub store_reconnects: u64,
    pub store_up: bool,
    pub now_ms: i64,
}

fn family(
    name: &'static str,
    kind: MetricKind,
    unit: &'static str,
    help: &'static str,
    series: Vec<Series>,
) -> Family {
    Family {
        name,
        help,
        kind,
        unit,
        series,
    }
}

fn provider(p: &str) -> Vec<(&'static str, String)> {
    vec![("provider", p.to_owned())]
}

fn provider_outcome(p: &str, outcome: &str) -> Vec<(&'static str, String)> {
    vec![("provider", p.to_owned()), ("outcome", outcome.to_owned())]
}

impl Telemetry {
    /// Every family, always in this order and always present (with no series before the first
    /// observation), so dashboards and alerts can rely on the names.
    pub fn families(&self, readings: Readings) -> Vec<Family> {
        use MetricKind::{Counter, Gauge, Histogram};
        let m = &self.metrics;
        let requests = |r: &metrics::Requests, counts: bool| -> Vec<Series> {
            r.snapshot()
                .into_iter()
                .map(|((p, outcome), h)| {
                    let labels = provider_outcome(&p, outcome);
                    if counts {
                        Series::of(labels, h.count as f64)
                    } else {
                        Series::histogram(labels, h)
                    }
                })
                .collect()
        };
        let connections = readings
            .connections
            .iter()
            .map(|((p, status), n)| {
                let labels = vec![("provider", p.clone()), ("status", (*status).to_owned())];
                Series::of(labels, *n as f64)
            })
            .collect();
        let single = |value: f64| vec![Series::of(Vec::new(), value)];
        vec![
            family("authpipe_connections", Gauge, "",
                "Connections in this process's cache, by provider and status.", connections),
            family("authpipe_refreshes_total", Counter, "",
                "Refresh requests answered (or failed) by the provider, by outcome: ok, transient, revoked, ambiguous, config.",
                requests(&m.refreshes, true)),
            family("authpipe_refresh_duration_seconds", Histogram, "seconds",
                "Round trip of refresh requests to the provider's token endpoint.",
                requests(&m.refreshes, false)),
            family("authpipe_probes_total", Counter, "",
                "Health probes by outcome: ok, transient, revoked, insufficient_scope.",
                requests(&m.probes, true)),
            family("authpipe_probe_duration_seconds", Histogram, "seconds",
                "Round trip of health probes to the provider's identity endpoint.",
                requests(&m.probes, false)),
            family("authpipe_token_requests_in_flight", Gauge, "",
                "Refresh and probe requests sent to the provider and not yet answered.",
                m.in_flight_snapshot().into_iter().map(|(p, n)| Series::of(provider(&p), n as f64)).collect()),
            family("authpipe_provider_concurrency_waits_total", Counter, "",
                "Requests that waited for a free slot under providerConcurrency.",
                m.concurrency_waits.snapshot().into_iter().map(|(p, [n])| Series::of(provider(&p), n as f64)).collect()),
            family("authpipe_credential_requests_total", Counter, "",
                "getCredential calls by how they were served: memo_hit (JS, no native call), native_hit (Rust cache), store_read (after I/O: a store read or a refresh).",
                m.credential_requests.snapshot().into_iter().flat_map(|(p, counts)| {
                    metrics::SERVED.iter().zip(counts).map(move |(how, n)| Series::of(provider_outcome(&p, how), n as f64))
                }).collect()),
            family("authpipe_lease_takeovers_total", Counter, "",
                "Refresh and probe leases taken over from another process after they ran out (it died or stalled).",
                single(m.lease_takeovers.load(std::sync::atomic::Ordering::Relaxed) as f64)),
            family("authpipe_change_feed_lag_seconds", Histogram, "seconds",
                "From another process's write to this process's cache.",
                vec![Series::histogram(Vec::new(), m.feed_lag())]),
            family("authpipe_change_feed_resyncs_total", Counter, "",
                "Full reloads of the cache after the change feed may have missed changes.",
                single(readings.resyncs as f64)),
            family("authpipe_store_errors_total", Counter, "",
                "Store operations that failed.", single(readings.store_errors as f64)),
            family("authpipe_store_reconnects_total", Counter, "",
                "Times the store answered again after failing.", single(readings.store_reconnects as f64)),
            family("authpipe_store_up", Gauge, "",
                "1 while the store answers; 0 from a failed operation until one succeeds.",
                single(if readings.store_up { 1.0 } else { 0.0 })),
            family("authpipe_seconds_since_last_successful_refresh", Gauge, "seconds",
                "Time since a token of the provider was last refreshed, by any process on the store.",
                readings.last_refresh_at.iter().map(|(p, at)| {
                    Series::of(provider(p), (readings.now_ms - at).max(0) as f64 / 1000.0)
                }).collect()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings() -> Readings {
        Readings {
            connections: BTreeMap::from([(("attio".to_owned(), "active"), 3)]),
            last_refresh_at: BTreeMap::from([("attio".to_owned(), 4_000)]),
            resyncs: 0,
            store_errors: 2,
            store_reconnects: 1,
            store_up: true,
            now_ms: 10_000,
        }
    }

    #[test]
    fn every_family_is_present_and_named_under_authpipe() {
        let families = Telemetry::default().families(readings());
        assert_eq!(families.len(), 15);
        for f in &families {
            assert!(f.name.starts_with("authpipe_"), "{}", f.name);
            assert_eq!(
                f.kind == MetricKind::Counter,
                f.name.ends_with("_total"),
                "{}",
                f.name
            );
            assert!(!f.help.contains('\n'));
        }
    }

    #[test]
    fn refresh_counts_and_latencies_come_from_one_observation() {
        let telemetry = Telemetry::default();
        telemetry.metrics.refreshes.observe("attio", "ok", 0.3);
        let families = telemetry.families(readings());
        let find = |name: &str| families.iter().find(|f| f.name == name).unwrap();
        let total = &find("authpipe_refreshes_total").series[0];
        assert_eq!(total.value, 1.0);
        assert_eq!(total.labels, provider_outcome("attio", "ok"));
        let latency = find("authpipe_refresh_duration_seconds").series[0]
            .histogram
            .clone();
        assert_eq!(latency.unwrap().count, 1);
        let since = &find("authpipe_seconds_since_last_successful_refresh").series[0];
        assert_eq!(since.value, 6.0);
    }

    #[test]
    fn no_record_is_built_without_a_subscriber() {
        let telemetry = Telemetry::default();
        telemetry.record(|| -> Record { unreachable!("nobody listens") });
        let mut listener = telemetry.subscribe();
        telemetry.record(|| Record::new(Level::Info, "lease.taken_over", 1, "taken"));
        assert_eq!(listener.try_recv().unwrap().event, "lease.taken_over");
    }
}
