//! The checker's own series: requests per registry and code, check durations, the
//! queue, 429s and pauses, and the pull quota registries announce. Registered in the
//! aggregator's registry by the metrics stage; kept here because the checker writes
//! them, and drops a registry's series (the label sets it set) when it leaves the index.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use pullwatch::locks::lock;
use pullwatch::registry::quota::{Quota, QuotaGauges};

/// Series the checker itself maintains.
#[derive(Clone)]
pub struct CheckerMetrics {
    /// Requests sent to registries, by registry and HTTP status (or `error`).
    pub(crate) registry_requests: RegistryRequests,
    /// Duration of one check (all attempts), by resulting status.
    pub(crate) check_duration: HistogramVec,
    /// Checks waiting for or holding a slot.
    pub(crate) queue_depth: IntGauge,
    /// Unix time until which a rate-limited registry is paused (0 when not paused).
    pub(crate) registry_paused_until: GaugeVec,
    /// 429 answers, by registry.
    pub(crate) rate_limited: IntCounterVec,
    /// Checks answered by an identical check already in flight.
    pub(crate) coalesced_checks: IntCounter,
    /// The latest pull quota each registry announced to the aggregator.
    pub(crate) quotas: RegistryQuotas,
}

/// `pullwatch_registry_requests_total{registry,code}`, and the codes counted for each
/// registry: the series to drop when the registry goes ([`RegistryRequests::forget`]).
#[derive(Clone)]
pub(crate) struct RegistryRequests {
    counter: IntCounterVec,
    codes: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>,
}

impl RegistryRequests {
    /// Counts one request to `host` answered with `code`.
    pub(crate) fn inc(&self, host: &str, code: &str) {
        // Under the lock, so a registry forgotten meanwhile leaves no series untracked.
        let mut codes = lock(&self.codes);
        self.counter.with_label_values(&[host, code]).inc();
        match codes.get_mut(host) {
            Some(known) if known.contains(code) => {}
            Some(known) => {
                known.insert(code.to_string());
            }
            None => {
                codes.insert(host.to_string(), BTreeSet::from([code.to_string()]));
            }
        }
    }

    /// `host` is no longer asked: every series counted for it goes.
    pub(crate) fn forget(&self, host: &str) {
        let mut codes = lock(&self.codes);
        for code in codes.remove(host).unwrap_or_default() {
            let _ = self.counter.remove_label_values(&[host, code.as_str()]);
        }
    }
}

/// The pull quota each registry announced on the aggregator's latest manifest answer
/// that carried one: `pullwatch_registry_ratelimit_{limit,remaining,window_seconds}`
/// and, for `/api/v1/images` and the page, the quota itself. A registry's entry goes
/// with the registry ([`RegistryQuotas::forget`]).
#[derive(Clone)]
pub(crate) struct RegistryQuotas {
    latest: Arc<Mutex<BTreeMap<String, (Quota, SystemTime)>>>,
    gauges: QuotaGauges,
}

impl RegistryQuotas {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let gauge = |name: &str, help: &str| {
            GaugeVec::new(Opts::new(name, help), &["registry"]).and_then(|g| {
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            })
        };
        Ok(RegistryQuotas {
            latest: Arc::default(),
            gauges: QuotaGauges {
                limit: gauge(
                    "pullwatch_registry_ratelimit_limit",
                    "Pulls the registry allows per window, from its latest manifest answer that announced a quota (ratelimit-limit, RateLimit-Policy).",
                )?,
                remaining: gauge(
                    "pullwatch_registry_ratelimit_remaining",
                    "Pulls left in the registry's current window, from its latest manifest answer that announced a quota (ratelimit-remaining, RateLimit).",
                )?,
                window: gauge(
                    "pullwatch_registry_ratelimit_window_seconds",
                    "The window the registry's pull limit applies to, in seconds (w=).",
                )?,
            },
        })
    }

    /// `host` announced `quota` now.
    pub(crate) fn record(&self, host: &str, quota: &Quota) {
        lock(&self.latest).insert(host.to_string(), (quota.clone(), SystemTime::now()));
        self.gauges.set(host, quota);
    }

    /// `host` is no longer asked: its quota and series go.
    pub(crate) fn forget(&self, host: &str) {
        lock(&self.latest).remove(host);
        self.gauges.remove(host);
    }

    /// Every registry's latest quota and when it was announced, by host.
    pub(crate) fn snapshot(&self) -> BTreeMap<String, (Quota, SystemTime)> {
        lock(&self.latest).clone()
    }
}

impl CheckerMetrics {
    /// Creates the series and registers them in `registry` (the aggregator's).
    pub(crate) fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = CheckerMetrics {
            registry_requests: RegistryRequests {
                counter: IntCounterVec::new(
                    Opts::new(
                        "pullwatch_registry_requests_total",
                        "HTTP requests pullwatch sent to registries, by registry host and response code (\"error\" when no response arrived).",
                    ),
                    &["registry", "code"],
                )?,
                codes: Arc::default(),
            },
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
            quotas: RegistryQuotas::new(registry)?,
        };
        registry.register(Box::new(metrics.registry_requests.counter.clone()))?;
        registry.register(Box::new(metrics.check_duration.clone()))?;
        registry.register(Box::new(metrics.queue_depth.clone()))?;
        registry.register(Box::new(metrics.registry_paused_until.clone()))?;
        registry.register(Box::new(metrics.rate_limited.clone()))?;
        registry.register(Box::new(metrics.coalesced_checks.clone()))?;
        Ok(metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (registry, code, count) of every request series `registry` serves.
    fn request_series(registry: &Registry) -> Vec<(String, String, f64)> {
        let families = registry.gather();
        let family = families
            .iter()
            .find(|f| f.name() == "pullwatch_registry_requests_total");
        let label = |metric: &prometheus::proto::Metric, name: &str| {
            let found = metric.get_label().iter().find(|l| l.name() == name);
            found.map(|l| l.value().to_string()).unwrap_or_default()
        };
        family
            .map(|f| f.get_metric())
            .unwrap_or_default()
            .iter()
            .map(|m| {
                (
                    label(m, "registry"),
                    label(m, "code"),
                    m.get_counter().get_value(),
                )
            })
            .collect()
    }

    #[test]
    fn a_forgotten_registry_takes_every_request_series_it_had() {
        let registry = Registry::new();
        let metrics = CheckerMetrics::new(&registry).unwrap();
        let requests = &metrics.registry_requests;
        for (host, code) in [
            ("a.io", "200"),
            ("a.io", "401"),
            ("a.io", "200"),
            ("b.io", "error"),
        ] {
            requests.inc(host, code);
        }
        assert_eq!(request_series(&registry).len(), 3);
        requests.forget("a.io");
        assert_eq!(
            request_series(&registry),
            [("b.io".to_string(), "error".to_string(), 1.0)]
        );
        requests.forget("a.io");
        requests.inc("a.io", "200");
        assert_eq!(request_series(&registry).len(), 2, "counted afresh");
    }
}
