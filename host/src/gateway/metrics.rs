//! Gateway metrics for `/metrics` (Prometheus text format): requests by
//! endpoint and status, latency, upstream attempts, money recorded, and the
//! plugin runtime's own families.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use tollgate_ledger::RecordFlags;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    provider: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlagLabels {
    flag: String,
}

/// The gateway's metric families. Clones share series.
#[derive(Clone)]
pub struct GatewayMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
    upstream: Family<UpstreamLabels, Counter>,
    records: Counter,
    record_failures: Counter,
    flagged: Family<FlagLabels, Counter>,
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0,
    ])
}

impl GatewayMetrics {
    /// New families registered in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            in_flight: Gauge::default(),
            upstream: Family::default(),
            records: Counter::default(),
            record_failures: Counter::default(),
            flagged: Family::default(),
        };
        registry.register(
            "tollgate_requests",
            "Data-path requests by endpoint and status",
            metrics.requests.clone(),
        );
        registry.register(
            "tollgate_request_duration_seconds",
            "Wall time of data-path requests until the response starts",
            metrics.duration.clone(),
        );
        registry.register(
            "tollgate_requests_in_flight",
            "Requests being served",
            metrics.in_flight.clone(),
        );
        registry.register(
            "tollgate_upstream_attempts",
            "Calls to upstream providers by result",
            metrics.upstream.clone(),
        );
        registry.register(
            "tollgate_usage_records",
            "Usage records written",
            metrics.records.clone(),
        );
        registry.register(
            "tollgate_usage_record_failures",
            "Usage records that could not be written (logged for replay)",
            metrics.record_failures.clone(),
        );
        registry.register(
            "tollgate_usage_records_flagged",
            "Usage records by flag",
            metrics.flagged.clone(),
        );
        metrics
    }

    /// Counts a finished request.
    pub fn request(&self, endpoint: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_owned(),
                status,
            })
            .inc();
        // Prometheus histograms observe seconds as floating point: a duration, not an amount.
        self.duration
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.to_owned(),
            })
            .observe(seconds);
    }

    /// Marks a request in flight until the guard drops.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    pub(super) fn upstream_attempt(&self, provider: &str, result: &str) {
        self.upstream
            .get_or_create(&UpstreamLabels {
                provider: provider.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    pub(super) fn recorded(&self, flags: &RecordFlags) {
        self.records.inc();
        for (flag, set) in [
            ("partial", flags.partial),
            ("estimated", flags.estimated),
            ("fail_open", flags.fail_open),
            ("failed", flags.failed),
        ] {
            if set {
                self.flagged
                    .get_or_create(&FlagLabels { flag: flag.into() })
                    .inc();
            }
        }
    }

    pub(super) fn record_failed(&self) {
        self.record_failures.inc();
    }
}

/// Decrements the in-flight gauge on drop.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
