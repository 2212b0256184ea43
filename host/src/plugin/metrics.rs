//! Per-plugin metrics: calls, errors by kind and latency, by plugin name,
//! version (short content hash) and capability.
//!
//! [`PluginMetrics`] feeds the Prometheus registry served at `/metrics`;
//! [`PluginStats`] keeps plain counters per loaded version so the admin API
//! can list versions with their figures without parsing Prometheus output.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::{Capability, PluginError};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    plugin: String,
    version: String,
    capability: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    plugin: String,
    version: String,
    capability: String,
    kind: String,
}

/// Latency buckets in seconds: plugin calls take microseconds, and anything
/// near the deadline (milliseconds) must still be visible.
const LATENCY_BUCKETS: [f64; 12] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.1,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Prometheus families for plugin calls. Clones share the same series.
#[derive(Clone)]
pub struct PluginMetrics {
    calls: Family<CallLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    latency: Family<CallLabels, Histogram, fn() -> Histogram>,
}

impl Default for PluginMetrics {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        }
    }
}

impl PluginMetrics {
    /// Registers the families under the `tollgate_plugin_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "tollgate_plugin_calls",
            "Plugin capability calls",
            self.calls.clone(),
        );
        registry.register(
            "tollgate_plugin_errors",
            "Plugin calls that failed, by error kind",
            self.errors.clone(),
        );
        registry.register(
            "tollgate_plugin_call_duration_seconds",
            "Wall time of plugin capability calls",
            self.latency.clone(),
        );
    }

    pub(super) fn record_error_only(
        &self,
        plugin: &str,
        version: &str,
        capability: Capability,
        error: &PluginError,
    ) {
        self.errors
            .get_or_create(&ErrorLabels {
                plugin: plugin.to_owned(),
                version: version.to_owned(),
                capability: capability.as_str().to_owned(),
                kind: error.kind().to_owned(),
            })
            .inc();
    }
}

/// The series of one plugin version, resolved once at load so recording a
/// call is a few atomic increments, not label formatting and map lookups.
pub(super) struct PluginSeries {
    calls: [Counter; 5],
    latency: [Histogram; 5],
    metrics: PluginMetrics,
    plugin: String,
    version: String,
}

fn index(capability: Capability) -> usize {
    match capability {
        Capability::Describe => 0,
        Capability::ValidateConfig => 1,
        Capability::Route => 2,
        Capability::Meter => 3,
        Capability::Price => 4,
    }
}

const CAPABILITIES: [Capability; 5] = [
    Capability::Describe,
    Capability::ValidateConfig,
    Capability::Route,
    Capability::Meter,
    Capability::Price,
];

impl PluginSeries {
    pub(super) fn new(metrics: &PluginMetrics, plugin: &str, version: &str) -> Self {
        let labels = |c: Capability| CallLabels {
            plugin: plugin.to_owned(),
            version: version.to_owned(),
            capability: c.as_str().to_owned(),
        };
        Self {
            calls: CAPABILITIES.map(|c| metrics.calls.get_or_create(&labels(c)).clone()),
            latency: CAPABILITIES.map(|c| metrics.latency.get_or_create(&labels(c)).clone()),
            metrics: metrics.clone(),
            plugin: plugin.to_owned(),
            version: version.to_owned(),
        }
    }

    pub(super) fn record(
        &self,
        capability: Capability,
        elapsed: Duration,
        error: Option<&PluginError>,
    ) {
        let i = index(capability);
        self.calls[i].inc();
        // Prometheus histograms observe seconds as floating point: a duration, not an amount.
        self.latency[i].observe(elapsed.as_secs_f64());
        if let Some(error) = error {
            self.record_error(capability, error);
        }
    }

    pub(super) fn record_error(&self, capability: Capability, error: &PluginError) {
        self.metrics
            .record_error_only(&self.plugin, &self.version, capability, error);
    }
}

/// Plain counters for one loaded plugin version.
#[derive(Debug, Default)]
pub struct PluginStats {
    calls: AtomicU64,
    errors: AtomicU64,
    total_micros: AtomicU64,
    max_micros: AtomicU64,
}

impl PluginStats {
    pub(super) fn record(&self, elapsed: Duration, failed: bool) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.total_micros.fetch_add(micros, Ordering::Relaxed);
        self.max_micros.fetch_max(micros, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn record_error_only(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Calls so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Failed calls so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Mean call latency in microseconds (0 before the first call).
    pub fn mean_micros(&self) -> u64 {
        self.total_micros
            .load(Ordering::Relaxed)
            .checked_div(self.calls())
            .unwrap_or(0)
    }

    /// Slowest call so far in microseconds.
    pub fn max_micros(&self) -> u64 {
        self.max_micros.load(Ordering::Relaxed)
    }
}
