//! The operator's view across the boundary: metric families (rendered for Prometheus and
//! OpenTelemetry by `lib/telemetry/`) and log records (handed to the app's logger).

use crate::authpipe::NativeAuthpipe;
use crate::forward::{Forwarder, Listener};
use authpipe_core::{Family, Record, Series};
use napi_derive::napi;

#[napi(object)]
pub struct MetricLabelOutput {
    pub name: String,
    pub value: String,
}

#[napi(object)]
pub struct MetricSeriesOutput {
    /// Only provider, status or outcome: never a tenant, a user or a secret.
    pub labels: Vec<MetricLabelOutput>,
    /// A counter's or gauge's value; a histogram's count.
    pub value: f64,
    /// A histogram's bucket upper bounds (seconds), ascending, without +Inf.
    pub bounds: Option<Vec<f64>>,
    /// A histogram's observations at or below each bound.
    pub cumulative: Option<Vec<f64>>,
    /// A histogram's sum of observations.
    pub sum: Option<f64>,
}

#[napi(object)]
pub struct MetricFamilyOutput {
    /// The Prometheus name (`authpipe_refreshes_total`).
    pub name: String,
    pub help: String,
    /// `counter`, `gauge` or `histogram`.
    pub kind: String,
    /// `seconds`, or empty for a count.
    pub unit: String,
    pub series: Vec<MetricSeriesOutput>,
}

#[napi(object)]
pub struct MetricsOutput {
    pub families: Vec<MetricFamilyOutput>,
}

#[napi(object)]
#[derive(Clone)]
pub struct TelemetryRecordOutput {
    /// `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// The stable event name (`refresh.succeeded`, ...).
    pub event: String,
    pub message: String,
    /// Engine clock, ms since the epoch.
    pub at: f64,
    /// The record's fields as a JSON object: ids, codes, numbers; never a secret.
    pub fields_json: String,
}

impl From<Record> for TelemetryRecordOutput {
    fn from(r: Record) -> Self {
        Self {
            level: r.level.as_str().to_owned(),
            event: r.event.to_owned(),
            message: r.message,
            at: r.at as f64,
            fields_json: serde_json::Value::Object(r.fields).to_string(),
        }
    }
}

impl From<Series> for MetricSeriesOutput {
    fn from(s: Series) -> Self {
        let labels = s
            .labels
            .into_iter()
            .map(|(name, value)| MetricLabelOutput {
                name: name.to_owned(),
                value,
            })
            .collect();
        let histogram = s.histogram;
        Self {
            labels,
            value: s.value,
            bounds: histogram.as_ref().map(|h| h.bounds.to_vec()),
            cumulative: histogram
                .as_ref()
                .map(|h| h.cumulative.iter().map(|&c| c as f64).collect()),
            sum: histogram.map(|h| h.sum),
        }
    }
}

impl From<Family> for MetricFamilyOutput {
    fn from(f: Family) -> Self {
        Self {
            name: f.name.to_owned(),
            help: f.help.to_owned(),
            kind: f.kind.as_str().to_owned(),
            unit: f.unit.to_owned(),
            series: f.series.into_iter().map(Into::into).collect(),
        }
    }
}

#[napi]
impl NativeAuthpipe {
    /// Every metric family of the engine, read now (no I/O).
    #[napi(catch_unwind)]
    pub fn metrics(&self) -> napi::Result<MetricsOutput> {
        let families = self.client()?.engine().metrics();
        Ok(MetricsOutput {
            families: families.into_iter().map(Into::into).collect(),
        })
    }

    /// Delivers the engine's log records to `listener` until `close()`. Until this is called the
    /// engine builds none.
    #[napi(
        catch_unwind,
        ts_args_type = "listener: (record: TelemetryRecordOutput) => void"
    )]
    pub fn subscribe_telemetry(
        &self,
        listener: Listener<TelemetryRecordOutput>,
    ) -> napi::Result<()> {
        let receiver = self.client()?.engine().telemetry().subscribe();
        let forwarder = Forwarder::start(receiver, listener);
        if let Some(old) = self.telemetry_records.lock().replace(forwarder) {
            old.abort();
        }
        Ok(())
    }
}
