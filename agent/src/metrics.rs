//! Stage `metrics`: the agent's own `/metrics` (per node, for debugging; the canonical
//! per-workload series live on the aggregator): this node's latest result per image, CRI calls by
//! RPC and gRPC code, which keyring sources decided checks, and the connection to the
//! aggregator, and the pull quota registries announce along this node's route (what
//! the node's own egress IP has left, reported to the aggregator with each result).
//! No label ever carries a secret: images, statuses, modes, credential *sources* (file
//! paths, plugin and secret names), RPC names and codes, registry hosts only.
//! Served over the shared [`pullwatch::serve`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, HeaderValue, VARY};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use pullwatch::locks::lock;
use pullwatch::registry::RegistryObserver;
use pullwatch::registry::quota::{Quota, QuotaGauges};
use pullwatch::serve::gzip::{accepts_gzip, gzip};
use pullwatch::serve::{self, Body};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::check::CheckReport;
use crate::cri::CallObserver;

/// The agent's metrics: one registry, filled once by [`AgentMetrics::new`] from the
/// groups below, each holding the series of one part of the agent.
pub struct AgentMetrics {
    registry: Registry,
    checks: CheckSeries,
    runtime: RuntimeSeries,
    aggregator: AggregatorSeries,
    quotas: QuotaSeries,
    credential_providers: IntGaugeVec,
    /// 1 while registered with the aggregator (the tests of `run` read it directly).
    pub aggregator_connected: IntGauge,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

/// How long an image's series outlive its last check by default.
pub(crate) const DEFAULT_SERIES_TTL: Duration = Duration::from_secs(3600);

const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// Registry hosts whose quota the agent keeps (its route's registries and mirrors are
/// far fewer): a registry cannot grow the agent's series without bound.
const MAX_QUOTA_HOSTS: usize = 64;

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// `collector`, registered in `registry`.
fn registered<C: Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> prometheus::Result<C> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

/// A labelled family made by `new` (`GaugeVec::new`, `IntCounterVec::new`...),
/// registered in `registry`.
fn family<V: Collector + Clone + 'static>(
    registry: &Registry,
    new: impl FnOnce(Opts, &[&str]) -> prometheus::Result<V>,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<V> {
    registered(registry, new(Opts::new(name, help), labels)?)
}

fn latencies(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<HistogramVec> {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    registered(registry, HistogramVec::new(opts, labels)?)
}

/// This node's checks: the latest result per image (removed when no check asked for
/// the image within the series TTL), counts, durations, deciding credential sources.
struct CheckSeries {
    status: IntGaugeVec,
    timestamp: GaugeVec,
    tag_moved: IntGaugeVec,
    total: IntCounterVec,
    duration: HistogramVec,
    credential_sources: IntCounterVec,
    /// image -> the label values of its current `status` series, and when it was last
    /// checked.
    current: Mutex<HashMap<String, ([String; 4], Instant)>>,
    /// An image not checked for this long has its series removed: the aggregator
    /// stopped asking (the workload went), and series must not only ever grow.
    series_ttl: Duration,
}

impl CheckSeries {
    fn new(registry: &Registry) -> prometheus::Result<CheckSeries> {
        Ok(CheckSeries {
            status: family(
                registry,
                IntGaugeVec::new,
                "pullwatch_agent_check_status",
                "This node's latest check of an image: 1 for the current status",
                &["image", "status", "mode", "credential_source"],
            )?,
            timestamp: family(
                registry,
                GaugeVec::new,
                "pullwatch_agent_check_timestamp_seconds",
                "When this node last checked the image",
                &["image"],
            )?,
            tag_moved: family(
                registry,
                IntGaugeVec::new,
                "pullwatch_agent_image_tag_moved",
                "1 when this node holds the tag at another digest than the registry now answers (a restart here runs different code), 0 when it matches; absent when unknown",
                &["image"],
            )?,
            total: family(
                registry,
                IntCounterVec::new,
                "pullwatch_agent_checks_total",
                "Checks made on this node",
                &["status", "mode"],
            )?,
            duration: latencies(
                registry,
                "pullwatch_agent_check_duration_seconds",
                "Duration of one check on this node",
                &["mode"],
            )?,
            credential_sources: family(
                registry,
                IntCounterVec::new,
                "pullwatch_agent_credential_source_checks_total",
                "Checks decided by each keyring source (secret, config.json, plugin, runtime)",
                &["source"],
            )?,
            current: Mutex::new(HashMap::new()),
            series_ttl: DEFAULT_SERIES_TTL,
        })
    }

    /// Records a finished check. Runtime failures count as checks but do not replace
    /// the image's last real status.
    fn record(&self, report: &CheckReport) {
        self.total
            .with_label_values(&[report.status.as_str(), report.mode.as_str()])
            .inc();
        self.duration
            .with_label_values(&[report.mode.as_str()])
            .observe(report.duration.as_secs_f64());
        if report.runtime_failure {
            return;
        }
        if !report.credential_source.is_empty() {
            self.credential_sources
                .with_label_values(&[report.credential_source.as_str()])
                .inc();
        }
        self.set_status(report);
        let image = report.image.as_str();
        self.timestamp
            .with_label_values(&[image])
            .set(now_seconds());
        match report.tag_moved {
            Some(moved) => self
                .tag_moved
                .with_label_values(&[image])
                .set(i64::from(moved)),
            None => {
                let _ = self.tag_moved.remove_label_values(&[image]);
            }
        }
    }

    /// The image's one `status` series: the report's, replacing the previous one.
    fn set_status(&self, report: &CheckReport) {
        let labels = [
            report.image.clone(),
            report.status.as_str().to_string(),
            report.mode.as_str().to_string(),
            report.credential_source.clone(),
        ];
        let mut current = lock(&self.current);
        if let Some((old, _)) =
            current.insert(report.image.clone(), (labels.clone(), Instant::now()))
            && old != labels
        {
            let old: Vec<&str> = old.iter().map(String::as_str).collect();
            let _ = self.status.remove_label_values(&old);
        }
        drop(current);
        let values: Vec<&str> = labels.iter().map(String::as_str).collect();
        self.status.with_label_values(&values).set(1);
    }

    /// Removes every series of the images not checked within the TTL.
    fn prune(&self) {
        let mut current = lock(&self.current);
        let stale: Vec<String> = current
            .iter()
            .filter(|(_, (_, checked))| checked.elapsed() > self.series_ttl)
            .map(|(image, _)| image.clone())
            .collect();
        for image in stale {
            if let Some((labels, _)) = current.remove(&image) {
                let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
                let _ = self.status.remove_label_values(&labels);
            }
            let _ = self.timestamp.remove_label_values(&[image.as_str()]);
            let _ = self.tag_moved.remove_label_values(&[image.as_str()]);
            debug!(%image, "no check for the series TTL; its series are gone");
        }
    }
}

/// The node's container runtime: what it is, and the CRI calls made to it.
struct RuntimeSeries {
    info: IntGaugeVec,
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl RuntimeSeries {
    fn new(registry: &Registry) -> prometheus::Result<RuntimeSeries> {
        Ok(RuntimeSeries {
            info: family(
                registry,
                IntGaugeVec::new,
                "pullwatch_agent_runtime_info",
                "The node's container runtime, from CRI Version",
                &["runtime_name", "runtime_version"],
            )?,
            requests: family(
                registry,
                IntCounterVec::new,
                "pullwatch_agent_cri_requests_total",
                "CRI calls to the node's runtime, by RPC and gRPC code",
                &["rpc", "code"],
            )?,
            duration: latencies(
                registry,
                "pullwatch_agent_cri_request_duration_seconds",
                "Latency of CRI calls, by RPC and gRPC code",
                &["rpc", "code"],
            )?,
        })
    }
}

/// The session with the aggregator (whether it is up: [`AgentMetrics::aggregator_connected`]).
struct AggregatorSeries {
    connection_attempts: IntCounterVec,
    last_contact: Gauge,
}

impl AggregatorSeries {
    fn new(registry: &Registry) -> prometheus::Result<AggregatorSeries> {
        Ok(AggregatorSeries {
            connection_attempts: family(
                registry,
                IntCounterVec::new,
                "pullwatch_agent_aggregator_connection_attempts_total",
                "Attempts to open a session with the aggregator, by result",
                &["result"],
            )?,
            last_contact: registered(
                registry,
                Gauge::new(
                    "pullwatch_agent_aggregator_last_contact_timestamp_seconds",
                    "When the aggregator was last heard from",
                )?,
            )?,
        })
    }
}

/// The pull quota each registry announced along this node's route, and the log the
/// session sends to the aggregator from.
struct QuotaSeries {
    gauges: QuotaGauges,
    /// Registry host -> its latest quota and the sequence number of that update.
    log: Mutex<QuotaLog>,
}

/// The latest quota per registry host, numbered so a session can send only what
/// changed since it last sent ([`AgentMetrics::quotas_after`]).
#[derive(Default)]
struct QuotaLog {
    latest: BTreeMap<String, (Quota, u64)>,
    sequence: u64,
}

impl QuotaSeries {
    fn new(registry: &Registry) -> prometheus::Result<QuotaSeries> {
        Ok(QuotaSeries {
            gauges: QuotaGauges {
                limit: family(
                    registry,
                    GaugeVec::new,
                    "pullwatch_agent_registry_ratelimit_limit",
                    "Pulls the registry allows per window, as it announced to this node (ratelimit-limit, RateLimit-Policy)",
                    &["registry"],
                )?,
                remaining: family(
                    registry,
                    GaugeVec::new,
                    "pullwatch_agent_registry_ratelimit_remaining",
                    "Pulls left in the registry's window for this node's route, from its latest manifest answer that announced a quota",
                    &["registry"],
                )?,
                window: family(
                    registry,
                    GaugeVec::new,
                    "pullwatch_agent_registry_ratelimit_window_seconds",
                    "The window the registry's pull limit applies to, in seconds",
                    &["registry"],
                )?,
            },
            log: Mutex::new(QuotaLog::default()),
        })
    }

    /// `host` announced `quota`: logged (unless too many hosts are kept) and exported.
    fn record(&self, host: &str, quota: &Quota) {
        {
            let mut log = lock(&self.log);
            if !log.latest.contains_key(host) && log.latest.len() >= MAX_QUOTA_HOSTS {
                debug!(registry = host, "quota not kept: too many registries");
                return;
            }
            log.sequence += 1;
            let sequence = log.sequence;
            log.latest
                .insert(host.to_string(), (quota.clone(), sequence));
        }
        self.gauges.set(host, quota);
    }
}

impl AgentMetrics {
    pub fn new() -> crate::Result<AgentMetrics> {
        let registry = Registry::new();
        Ok(AgentMetrics {
            checks: CheckSeries::new(&registry)?,
            runtime: RuntimeSeries::new(&registry)?,
            aggregator: AggregatorSeries::new(&registry)?,
            quotas: QuotaSeries::new(&registry)?,
            credential_providers: family(
                &registry,
                IntGaugeVec::new,
                "pullwatch_agent_credential_provider_info",
                "Configured kubelet credential-provider plugins",
                &["provider"],
            )?,
            aggregator_connected: registered(
                &registry,
                IntGauge::new(
                    "pullwatch_agent_aggregator_connected",
                    "1 while registered with the aggregator",
                )?,
            )?,
            registry,
        })
    }

    /// Records a finished check. Runtime failures count as checks but do not replace
    /// the image's last real status.
    pub(crate) fn record(&self, report: &CheckReport) {
        self.checks.record(report);
    }

    /// Series of images no check has asked about for `ttl`.
    pub fn with_series_ttl(mut self, ttl: Duration) -> AgentMetrics {
        self.checks.series_ttl = ttl;
        self
    }

    pub fn set_providers(&self, providers: &[String]) {
        for provider in providers {
            self.credential_providers
                .with_label_values(&[provider.as_str()])
                .set(1);
        }
    }

    pub(crate) fn set_runtime(&self, name: &str, version: &str) {
        self.runtime.info.reset();
        self.runtime.info.with_label_values(&[name, version]).set(1);
    }

    /// Whether the agent is registered with the aggregator now.
    pub(crate) fn set_connected(&self, connected: bool) {
        self.aggregator_connected.set(i64::from(connected));
    }

    pub(crate) fn connection_attempt(&self, result: &str) {
        self.aggregator
            .connection_attempts
            .with_label_values(&[result])
            .inc();
    }

    pub(crate) fn contact(&self) {
        self.aggregator.last_contact.set(now_seconds());
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        self.checks.prune();
        let mut out = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(error) = encoder.encode(&self.registry.gather(), &mut out) {
            warn!(%error, "encoding metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The quotas updated after sequence number `after` (0: all), with the sequence
    /// number to ask after next time.
    pub(crate) fn quotas_after(&self, after: u64) -> (Vec<(String, Quota)>, u64) {
        let log = lock(&self.quotas.log);
        let changed = log
            .latest
            .iter()
            .filter(|(_, (_, sequence))| *sequence > after)
            .map(|(host, (quota, _))| (host.clone(), quota.clone()))
            .collect();
        (changed, log.sequence)
    }
}

impl RegistryObserver for AgentMetrics {
    fn quota(&self, host: &str, quota: &Quota) {
        self.quotas.record(host, quota);
    }
}

impl CallObserver for AgentMetrics {
    fn observe(&self, rpc: &'static str, code: &'static str, elapsed: Duration) {
        self.runtime.requests.with_label_values(&[rpc, code]).inc();
        self.runtime
            .duration
            .with_label_values(&[rpc, code])
            .observe(elapsed.as_secs_f64());
    }
}

/// Binds `--metrics-address` (`:9102` means every interface, as in Go).
pub async fn bind(address: &str) -> crate::Result<TcpListener> {
    serve::bind("--metrics-address", address)
        .await
        .map_err(|error| pullwatch::Error::from(error).into())
}

/// While responses still stream a rendered exposition younger than this, new scrapes
/// share it: however many clients ask (and however slowly they read), the port holds
/// at most one exposition per second of the send timeout, not one per request.
const RENDER_REUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// One rendered exposition, and its gzip member once a scraper asked for one.
struct Exposition {
    text: String,
    gzip: std::sync::OnceLock<Vec<u8>>,
}

/// The latest exposition and when it was rendered; the `Arc` counts the responses
/// streaming it.
type Rendered = std::sync::Mutex<Option<(std::time::Instant, Arc<Exposition>)>>;

/// A response body reading an exposition's text and keeping it alive while it streams.
struct Text(Arc<Exposition>);

impl AsRef<[u8]> for Text {
    fn as_ref(&self) -> &[u8] {
        self.0.text.as_bytes()
    }
}

/// The same for its gzip member (set before the body is made).
struct Gzipped(Arc<Exposition>);

impl AsRef<[u8]> for Gzipped {
    fn as_ref(&self) -> &[u8] {
        self.0.gzip.get().map_or(&[], Vec::as_slice)
    }
}

/// Serves `/metrics` and `/healthz` within `limits` until the task is dropped.
pub async fn serve(listener: TcpListener, limits: serve::Limits, metrics: Arc<AgentMetrics>) {
    let rendered = Rendered::default();
    let handler = move |request: &Request<Incoming>| respond(request, &metrics, &rendered);
    serve::serve("metrics", listener, limits, handler, std::future::pending()).await;
}

fn respond(
    request: &Request<Incoming>,
    metrics: &AgentMetrics,
    rendered: &Rendered,
) -> Response<Body> {
    let path = request.uri().path();
    if !matches!(path, "/metrics" | "/healthz") {
        return serve::respond(StatusCode::NOT_FOUND, "text/plain", "not found\n");
    }
    // HEAD as GET (hyper sends no body for it), as the aggregator's port answers.
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return serve::only_get_and_head();
    }
    match path {
        "/metrics" => {
            let exposition = {
                let mut cached = pullwatch::locks::lock(rendered);
                match cached.as_ref() {
                    Some((at, exposition))
                        if Arc::strong_count(exposition) > 1 && at.elapsed() < RENDER_REUSE =>
                    {
                        exposition.clone()
                    }
                    _ => {
                        let exposition = Arc::new(Exposition {
                            text: metrics.render(),
                            gzip: std::sync::OnceLock::new(),
                        });
                        *cached = Some((std::time::Instant::now(), exposition.clone()));
                        exposition
                    }
                }
            };
            // Compressing into memory cannot fail; if it did, the text goes plain.
            let gzipped = accepts_gzip(request.headers())
                && !exposition
                    .gzip
                    .get_or_init(|| gzip(exposition.text.as_bytes()).unwrap_or_default())
                    .is_empty();
            let mut response = if gzipped {
                let mut response = serve::respond(
                    StatusCode::OK,
                    serve::METRICS_CONTENT_TYPE,
                    Bytes::from_owner(Gzipped(exposition)),
                );
                response
                    .headers_mut()
                    .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                response
            } else {
                serve::respond(
                    StatusCode::OK,
                    serve::METRICS_CONTENT_TYPE,
                    Bytes::from_owner(Text(exposition)),
                )
            };
            response
                .headers_mut()
                .insert(VARY, HeaderValue::from_static("Accept-Encoding"));
            response
        }
        _ => serve::respond(StatusCode::OK, "text/plain", "ok\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pullwatch::CheckStatus;

    fn report(image: &str, status: CheckStatus) -> CheckReport {
        CheckReport {
            image: image.into(),
            status,
            reason: "secret-free reason".into(),
            mode: pullwatch::CheckMode::Pull,
            credential_source: "config.json:/var/lib/kubelet/config.json".into(),
            digest: None,
            held_digest: None,
            tag_moved: None,
            image_present: true,
            duration: Duration::from_millis(5),
            runtime_failure: false,
        }
    }

    #[test]
    fn one_series_per_image_with_its_current_status() {
        let metrics = AgentMetrics::new().unwrap();
        metrics.record(&report("reg.io/app:v1", CheckStatus::Available));
        metrics.record(&report("reg.io/app:v1", CheckStatus::Absent));
        let mut down = report("reg.io/app:v1", CheckStatus::UnknownError);
        down.runtime_failure = true;
        metrics.record(&down);
        metrics.observe("PullImage", "OK", Duration::from_millis(3));
        metrics.set_providers(&["ecr".to_string()]);
        let text = metrics.render();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("pullwatch_agent_check_status{"))
            .collect();
        assert_eq!(series.len(), 1, "{text}");
        assert!(series[0].contains(r#"status="absent""#), "{text}");
        assert!(
            text.contains(r#"pullwatch_agent_cri_requests_total{code="OK",rpc="PullImage"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"pullwatch_agent_checks_total{mode="pull",status="unknown_error"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"pullwatch_agent_credential_provider_info{provider="ecr"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn tag_moved_follows_the_latest_check_and_goes_when_unknown() {
        let metrics = AgentMetrics::new().unwrap();
        let series = |metrics: &AgentMetrics| -> Vec<String> {
            metrics
                .render()
                .lines()
                .filter(|l| l.starts_with("pullwatch_agent_image_tag_moved{"))
                .map(str::to_string)
                .collect()
        };
        let mut moved = report("reg.io/app:v1", CheckStatus::Available);
        moved.tag_moved = Some(true);
        metrics.record(&moved);
        assert_eq!(
            series(&metrics),
            [r#"pullwatch_agent_image_tag_moved{image="reg.io/app:v1"} 1"#]
        );
        moved.tag_moved = Some(false);
        metrics.record(&moved);
        assert_eq!(
            series(&metrics),
            [r#"pullwatch_agent_image_tag_moved{image="reg.io/app:v1"} 0"#]
        );
        moved.tag_moved = None;
        metrics.record(&moved);
        assert!(series(&metrics).is_empty());
    }

    #[test]
    fn quotas_are_exported_and_handed_to_the_session_once_per_change() {
        let metrics = AgentMetrics::new().unwrap();
        let quota = |remaining, limit| Quota {
            limit,
            remaining,
            window: Some(Duration::from_secs(21600)),
            reset: None,
            source: Some("203.0.113.7".into()),
        };
        assert_eq!(metrics.quotas_after(0), (Vec::new(), 0));
        metrics.quota("registry-1.docker.io", &quota(76, Some(100)));
        let text = metrics.render();
        for line in [
            r#"pullwatch_agent_registry_ratelimit_limit{registry="registry-1.docker.io"} 100"#,
            r#"pullwatch_agent_registry_ratelimit_remaining{registry="registry-1.docker.io"} 76"#,
            r#"pullwatch_agent_registry_ratelimit_window_seconds{registry="registry-1.docker.io"} 21600"#,
        ] {
            assert!(text.contains(line), "{text}");
        }
        assert!(!text.contains("203.0.113.7"), "whose quota is no label");
        let (changed, sent) = metrics.quotas_after(0);
        assert_eq!(
            changed,
            [("registry-1.docker.io".to_string(), quota(76, Some(100)))]
        );
        assert_eq!(
            metrics.quotas_after(sent),
            (Vec::new(), sent),
            "nothing new"
        );
        // Only what remains: the limit series goes rather than stay stale.
        metrics.quota("registry-1.docker.io", &quota(75, None));
        assert!(
            !metrics
                .render()
                .contains("pullwatch_agent_registry_ratelimit_limit{")
        );
        let (changed, _) = metrics.quotas_after(sent);
        assert_eq!(changed[0].1.remaining, 75);
        // A registry cannot grow the series without bound.
        for i in 0..200 {
            metrics.quota(&format!("r{i}.example"), &quota(1, Some(2)));
        }
        let hosts = metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("pullwatch_agent_registry_ratelimit_remaining{"))
            .count();
        assert_eq!(hosts, MAX_QUOTA_HOSTS);
    }

    #[tokio::test]
    async fn bind_forms() {
        let error = bind("nonsense").await.unwrap_err();
        assert!(matches!(
            error,
            crate::Error::Shared(pullwatch::Error::Bind(
                pullwatch::serve::BindError::BadAddress { .. }
            ))
        ));
        assert!(error.to_string().contains("--metrics-address"), "{error}");
        let listener = bind("127.0.0.1:0").await.unwrap();
        assert!(listener.local_addr().unwrap().ip().is_loopback());
    }

    #[test]
    fn series_of_images_no_longer_checked_go_after_the_ttl() {
        let metrics = AgentMetrics::new()
            .unwrap()
            .with_series_ttl(Duration::from_millis(200));
        let mut old = report("reg.io/old:1", CheckStatus::Available);
        old.tag_moved = Some(true);
        metrics.record(&old);
        let images = |m: &AgentMetrics| -> Vec<String> {
            m.render()
                .lines()
                .filter(|l| l.starts_with("pullwatch_agent_") && l.contains("image=\""))
                .map(|l| {
                    l.split("image=\"")
                        .nth(1)
                        .unwrap_or_default()
                        .split('"')
                        .next()
                        .unwrap_or_default()
                        .to_string()
                })
                .collect()
        };
        assert_eq!(images(&metrics).len(), 3, "status, timestamp, tag moved");
        std::thread::sleep(Duration::from_millis(300));
        metrics.record(&report("reg.io/new:1", CheckStatus::Absent));
        let left = images(&metrics);
        assert!(left.iter().all(|i| i == "reg.io/new:1"), "{left:?}");
        assert_eq!(left.len(), 2);
        assert_eq!(metrics.checks.current.lock().unwrap().len(), 1);
    }
}
