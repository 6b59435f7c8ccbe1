//! The checker's own series: requests per registry and code, check durations, the
//! queue, 429s and pauses. Registered in the aggregator's registry by the metrics
//! stage; kept here because the checker writes them.

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Series the checker itself maintains.
#[derive(Clone)]
pub struct CheckerMetrics {
    /// Requests sent to registries, by registry and HTTP status (or `error`).
    pub registry_requests: IntCounterVec,
    /// Duration of one check (all attempts), by resulting status.
    pub check_duration: HistogramVec,
    /// Checks waiting for or holding a slot.
    pub queue_depth: IntGauge,
    /// Unix time until which a rate-limited registry is paused (0 when not paused).
    pub registry_paused_until: GaugeVec,
    /// 429 answers, by registry.
    pub rate_limited: IntCounterVec,
    /// Checks answered by an identical check already in flight.
    pub coalesced_checks: IntCounter,
}

impl CheckerMetrics {
    /// Creates the series and registers them in `registry` (the aggregator's).
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = CheckerMetrics {
            registry_requests: IntCounterVec::new(
                Opts::new(
                    "pullwatch_registry_requests_total",
                    "HTTP requests pullwatch sent to registries, by registry host and response code (\"error\" when no response arrived).",
                ),
                &["registry", "code"],
            )?,
            check_duration: HistogramVec::new(
                HistogramOpts::new(
                    "pullwatch_check_duration_seconds",
                    "Time to check one distinct image reference, including every credential tried, by resulting status.",
                )
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                &["status"],
            )?,
            queue_depth: IntGauge::new(
                "pullwatch_check_queue_depth",
                "Checks scheduled and not yet finished.",
            )?,
            registry_paused_until: GaugeVec::new(
                Opts::new(
                    "pullwatch_registry_paused_until_timestamp_seconds",
                    "Unix time until which checks against a registry are paused after it answered 429 (0: not paused).",
                ),
                &["registry"],
            )?,
            rate_limited: IntCounterVec::new(
                Opts::new(
                    "pullwatch_registry_rate_limited_total",
                    "429 Too Many Requests answers, by registry host.",
                ),
                &["registry"],
            )?,
            coalesced_checks: IntCounter::new(
                "pullwatch_coalesced_checks_total",
                "Checks answered by an identical check (same reference and credentials) already in flight.",
            )?,
        };
        registry.register(Box::new(metrics.registry_requests.clone()))?;
        registry.register(Box::new(metrics.check_duration.clone()))?;
        registry.register(Box::new(metrics.queue_depth.clone()))?;
        registry.register(Box::new(metrics.registry_paused_until.clone()))?;
        registry.register(Box::new(metrics.rate_limited.clone()))?;
        registry.register(Box::new(metrics.coalesced_checks.clone()))?;
        Ok(metrics)
    }
}
