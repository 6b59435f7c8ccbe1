//! Metrics: the last stage. The canonical k8s-image-availability-exporter series, name
//! for name and label for label, plus pullwatch's own `pullwatch_*` series.
//!
//! Canonical contract (see DESIGN.md): for every container reference that has been
//! checked, each of the eight gauges `k8s_image_availability_exporter_<status>`
//! exists and exactly one is 1. Nothing is exported before the first check, and a
//! reference's series go when the reference goes.

use std::collections::{BTreeMap, BTreeSet};

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use pullwatch::{CheckOutcome, CheckStatus};

use crate::index::ContainerRef;
use crate::inventory::WorkloadKind;

const PREFIX: &str = "k8s_image_availability_exporter";
const LABELS: [&str; 5] = ["namespace", "container", "image", "kind", "name"];

/// Why metrics could not be set up or rendered.
#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

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
    fn new(registry: &Registry) -> Result<Self, MetricsError> {
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

/// All of the aggregator's metrics, in one registry.
pub struct Metrics {
    registry: Registry,
    canonical: Vec<(CheckStatus, GaugeVec)>,
    /// `k8s_image_availability_exporter_<kind>_<status>{namespace,<kind>,container,image}`.
    legacy: Option<BTreeMap<(WorkloadKind, CheckStatus), GaugeVec>>,
    completed_rechecks: IntCounter,
    exported: BTreeSet<ContainerRef>,
    pub checker: CheckerMetrics,
}

impl Metrics {
    pub fn new(legacy_metric_names: bool) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let mut canonical = Vec::new();
        for status in CheckStatus::ALL {
            let gauge = GaugeVec::new(
                Opts::new(format!("{PREFIX}_{status}"), help(status, "container")),
                &LABELS,
            )?;
            registry.register(Box::new(gauge.clone()))?;
            canonical.push((status, gauge));
        }
        let legacy = if legacy_metric_names {
            let mut gauges = BTreeMap::new();
            for kind in WorkloadKind::ALL {
                for status in CheckStatus::ALL {
                    let gauge = GaugeVec::new(
                        Opts::new(
                            format!("{PREFIX}_{kind}_{status}"),
                            help(status, kind.as_str()),
                        ),
                        &["namespace", kind.as_str(), "container", "image"],
                    )?;
                    registry.register(Box::new(gauge.clone()))?;
                    gauges.insert((kind, status), gauge);
                }
            }
            Some(gauges)
        } else {
            None
        };
        let completed_rechecks = IntCounter::new(
            format!("{PREFIX}_completed_rechecks_total"),
            "Number of completed checks of all images.",
        )?;
        registry.register(Box::new(completed_rechecks.clone()))?;
        let checker = CheckerMetrics::new(&registry)?;
        Ok(Metrics {
            registry,
            canonical,
            legacy,
            completed_rechecks,
            exported: BTreeSet::new(),
            checker,
        })
    }

    /// Sets the series of one container reference: its status gauge to 1, the others to 0.
    pub fn set(&mut self, container: &ContainerRef, outcome: &CheckOutcome) {
        let labels = canonical_labels(container);
        for (status, gauge) in &self.canonical {
            gauge
                .with_label_values(&labels)
                .set(f64::from(u8::from(*status == outcome.status)));
        }
        if let Some(legacy) = &self.legacy {
            let labels = legacy_labels(container);
            for status in CheckStatus::ALL {
                if let Some(gauge) = legacy.get(&(container.kind, status)) {
                    gauge
                        .with_label_values(&labels)
                        .set(f64::from(u8::from(status == outcome.status)));
                }
            }
        }
        self.exported.insert(container.clone());
    }

    /// Removes the series of every exported reference not in `current`.
    pub fn retain(&mut self, current: &BTreeSet<ContainerRef>) {
        let gone: Vec<ContainerRef> = self.exported.difference(current).cloned().collect();
        for container in gone {
            self.remove(&container);
        }
    }

    fn remove(&mut self, container: &ContainerRef) {
        let labels = canonical_labels(container);
        for (_, gauge) in &self.canonical {
            // Err only means the series did not exist, which is the state we want.
            let _ = gauge.remove_label_values(&labels);
        }
        if let Some(legacy) = &self.legacy {
            let labels = legacy_labels(container);
            for status in CheckStatus::ALL {
                if let Some(gauge) = legacy.get(&(container.kind, status)) {
                    let _ = gauge.remove_label_values(&labels);
                }
            }
        }
        self.exported.remove(container);
    }

    /// One full pass over every reference finished.
    pub fn recheck_completed(&self) {
        self.completed_rechecks.inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }
}

fn canonical_labels(c: &ContainerRef) -> [&str; 5] {
    [
        &c.namespace,
        &c.container,
        &c.image,
        c.kind.as_str(),
        &c.name,
    ]
}

fn legacy_labels(c: &ContainerRef) -> [&str; 4] {
    [&c.namespace, &c.name, &c.container, &c.image]
}

fn help(status: CheckStatus, subject: &str) -> String {
    let meaning = match status {
        CheckStatus::Available => "the image can be pulled",
        CheckStatus::Absent => "the registry has no such manifest (tag or digest)",
        CheckStatus::BadImageFormat => "the image field is not a valid reference",
        CheckStatus::RegistryUnavailable => {
            "the registry could not be reached (network, DNS, TLS, timeout, 5xx)"
        }
        CheckStatus::AuthenticationFailure => {
            "the registry rejected the credentials (401): check imagePullSecrets"
        }
        CheckStatus::AuthorizationFailure => {
            "the credentials may not pull this image (403): check imagePullSecrets"
        }
        CheckStatus::RateLimited => "the registry answered 429 Too Many Requests",
        CheckStatus::UnknownError => {
            "the check failed for an unclassified reason: see pullwatch's logs"
        }
    };
    format!("1 when the last check of this {subject}'s image says: {meaning}; else 0.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str) -> ContainerRef {
        ContainerRef {
            namespace: "ns".into(),
            kind: WorkloadKind::Deployment,
            name: name.into(),
            container: "app".into(),
            image: "nginx:1".into(),
        }
    }

    fn series(text: &str, metric: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{metric}{{")))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn one_gauge_is_one_and_gone_refs_disappear() {
        let mut m = Metrics::new(true).unwrap();
        let text = m.render().unwrap();
        assert!(series(&text, "k8s_image_availability_exporter_available").is_empty());

        m.set(
            &container("web"),
            &CheckOutcome::new(CheckStatus::Absent, "gone"),
        );
        let text = m.render().unwrap();
        assert_eq!(
            series(&text, "k8s_image_availability_exporter_absent"),
            [
                r#"k8s_image_availability_exporter_absent{container="app",image="nginx:1",kind="deployment",name="web",namespace="ns"} 1"#
            ]
        );
        for status in CheckStatus::ALL
            .iter()
            .filter(|s| **s != CheckStatus::Absent)
        {
            let lines = series(&text, &format!("{PREFIX}_{status}"));
            assert_eq!(lines.len(), 1, "{status}");
            assert!(lines[0].ends_with(" 0"), "{}", lines[0]);
        }
        assert_eq!(
            series(&text, "k8s_image_availability_exporter_deployment_absent"),
            [
                r#"k8s_image_availability_exporter_deployment_absent{container="app",deployment="web",image="nginx:1",namespace="ns"} 1"#
            ]
        );

        m.set(&container("web"), &CheckOutcome::available());
        m.set(&container("api"), &CheckOutcome::available());
        m.retain(&[container("api")].into());
        let text = m.render().unwrap();
        let available = series(&text, "k8s_image_availability_exporter_available");
        assert_eq!(available.len(), 1);
        assert!(available[0].contains("name=\"api\""));
        assert!(!text.contains("name=\"web\""));
        assert!(!text.contains("deployment=\"web\""));
    }

    #[test]
    fn legacy_names_only_on_request() {
        let mut m = Metrics::new(false).unwrap();
        m.set(&container("web"), &CheckOutcome::available());
        assert!(
            !m.render()
                .unwrap()
                .contains("exporter_deployment_available")
        );
        m.recheck_completed();
        assert!(
            m.render()
                .unwrap()
                .contains("k8s_image_availability_exporter_completed_rechecks_total 1")
        );
    }
}
