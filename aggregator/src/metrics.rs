//! Metrics: the last stage. The canonical k8s-image-availability-exporter series, name
//! for name and label for label, plus pullwatch's own `pullwatch_*` series.
//!
//! Canonical contract (README, "Metrics"): for every container reference that has been
//! checked, each of the eight gauges `k8s_image_availability_exporter_<status>`
//! exists and exactly one is 1. Nothing is exported before the first check, and a
//! reference's series go when the reference goes.
//!
//! Canonical series are rendered straight from the result store, family by family,
//! rather than kept as prometheus-crate gauge children: at 10,000 references that
//! crate holds eight labelled children per reference and copies all of them again on
//! every scrape, which cost about 20 KiB per reference in the benchmark. Rendering
//! from the store keeps one copy (the store's) and lets the server stream the text.
//!
//! The other series live in one registry, filled once by [`Metrics::new`] from the
//! structs the stages own (the checker's, the inventory watches', the agent hub's).

use std::fmt::Write as _;

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use pullwatch::{CheckOutcome, CheckStatus};

use crate::agents::HubMetrics;
use crate::answers::ImageNodes;
use crate::checker::CheckerMetrics;
use crate::index::ContainerRef;
use crate::inventory::cluster::InventoryMetrics;
use crate::inventory::{RunningDigests, WorkloadKind};
use crate::store::{ResultStore, tag_moved};

/// Nodes per status for each image (with agents).
const IMAGE_NODES: &str = "pullwatch_image_nodes";
/// Nodes holding each image (with agents).
const IMAGE_CACHED_NODES: &str = "pullwatch_image_cached_nodes";
/// Whether running pods run what the tag resolves to now.
const IMAGE_TAG_MOVED: &str = "pullwatch_image_tag_moved";

const PREFIX: &str = "k8s_image_availability_exporter";

/// Why metrics could not be set up or rendered.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A stage's series could not be created or registered (a clash of names or
    /// labels: a bug, reported at start rather than leaving the series out).
    #[error("metrics: cannot register the {stage} series: {source}")]
    Register {
        stage: &'static str,
        #[source]
        source: prometheus::Error,
    },
    /// The registry's series could not be encoded.
    #[error("metrics: {0}")]
    Render(#[from] prometheus::Error),
}

/// `map_err` for the registration of `stage`'s series.
fn registering(stage: &'static str) -> impl FnOnce(prometheus::Error) -> MetricsError {
    move |source| MetricsError::Register { stage, source }
}

/// All of the aggregator's metrics, registered once, here: each stage owns the struct
/// of its series (the checker's, the inventory watches', the agent hub's), this group
/// registers it.
pub struct Metrics {
    registry: Registry,
    families: Vec<Family>,
    completed_rechecks: IntCounter,
    pub checker: CheckerMetrics,
    /// The inventory watches' series (cluster mode; without watches none is set).
    pub(crate) inventory: InventoryMetrics,
    /// The agent hub's series: served only when agents may connect
    /// ([`Metrics::with_agents`]), so that without agents `/metrics` shows none of them.
    pub(crate) agents: HubMetrics,
    /// Distinct checks made, by where: `agents` (node answers) or `central`.
    pub(crate) checks: IntCounterVec,
    /// Node agents connected now.
    pub(crate) agents_connected: IntGauge,
}

/// The aggregator's own series: completed passes, checks by where, agents connected.
fn own_series(
    registry: &Registry,
) -> Result<(IntCounter, IntCounterVec, IntGauge), prometheus::Error> {
    let completed_rechecks = IntCounter::new(
        format!("{PREFIX}_completed_rechecks_total"),
        "Number of completed checks of all images.",
    )?;
    registry.register(Box::new(completed_rechecks.clone()))?;
    let checks = IntCounterVec::new(
        Opts::new(
            "pullwatch_checks_total",
            "Distinct checks made, by where the answer came from: agents (the nodes) or central (the aggregator itself).",
        ),
        &["via"],
    )?;
    let agents_connected = IntGauge::new(
        "pullwatch_agents_connected",
        "Node agents connected to the aggregator.",
    )?;
    registry.register(Box::new(checks.clone()))?;
    registry.register(Box::new(agents_connected.clone()))?;
    Ok((completed_rechecks, checks, agents_connected))
}

/// One canonical metric family: a status, for every kind or (legacy names) one kind.
struct Family {
    name: String,
    help: String,
    status: CheckStatus,
    kind: Option<WorkloadKind>,
}

impl Metrics {
    /// The metrics of a run without agents; with `legacy_metric_names` the older
    /// per-kind canonical families too.
    pub fn new(legacy_metric_names: bool) -> Result<Self, MetricsError> {
        Metrics::build(legacy_metric_names, false)
    }

    /// The metrics of a run agents may connect to: [`Metrics::new`]'s and the agent
    /// hub's series.
    pub(crate) fn with_agents(legacy_metric_names: bool) -> Result<Self, MetricsError> {
        Metrics::build(legacy_metric_names, true)
    }

    fn build(legacy_metric_names: bool, agents: bool) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let mut families: Vec<Family> = CheckStatus::ALL
            .into_iter()
            .map(|status| Family {
                name: format!("{PREFIX}_{status}"),
                help: help(status, "container"),
                status,
                kind: None,
            })
            .collect();
        if legacy_metric_names {
            for kind in WorkloadKind::ALL {
                for status in CheckStatus::ALL {
                    families.push(Family {
                        name: format!("{PREFIX}_{kind}_{status}"),
                        help: help(status, kind.as_str()),
                        status,
                        kind: Some(kind),
                    });
                }
            }
        }
        let (completed_rechecks, checks, agents_connected) =
            own_series(&registry).map_err(registering("aggregator"))?;
        let checker = CheckerMetrics::new(&registry).map_err(registering("checker"))?;
        let inventory = InventoryMetrics::new(&registry).map_err(registering("inventory"))?;
        crate::heap::register(&registry).map_err(registering("heap"))?;
        let agents = if agents {
            HubMetrics::new(&registry).map_err(registering("agent hub"))?
        } else {
            HubMetrics::unserved()
        };
        Ok(Metrics {
            registry,
            families,
            completed_rechecks,
            checker,
            inventory,
            agents,
            checks,
            agents_connected,
        })
    }

    /// The registry of every `pullwatch_*` series.
    #[cfg(test)]
    fn registry(&self) -> &Registry {
        &self.registry
    }

    /// One full pass over every reference finished.
    pub(crate) fn recheck_completed(&self) {
        self.completed_rechecks.inc();
    }

    /// How many parts an exposition has (see [`Metrics::render_chunk`]).
    pub(crate) fn part_count(&self) -> usize {
        1 + self.families.len() + 3
    }

    /// What part `part` of the exposition shows, as a version of `store`: equal
    /// versions render the same text. None for the parts read from elsewhere
    /// (pullwatch's own metrics, and the moved-tag family, which reads what pods run).
    pub(crate) fn part_version(&self, part: usize, store: &ResultStore) -> Option<u64> {
        match part.checked_sub(1)? {
            family if family < self.families.len() => Some(store.statuses_version()),
            after => match after - self.families.len() {
                0 | 1 => Some(store.nodes_version()),
                _ => None,
            },
        }
    }

    /// Appends the next chunk of the exposition to `out` and moves `at` past it; the
    /// exposition is done when `at.part` reaches [`Metrics::part_count`]. Part 0 is
    /// pullwatch's own metrics, each further part one canonical family, rendered
    /// [`SERIES_PER_CHUNK`] containers at a time (a family is a series per container:
    /// whole, it was a multi-MiB buffer per scrape at 20k workloads), then the node
    /// view of images (agents only, two parts, chunked alike) and the moved-tag family
    /// (from `running`, what the cluster's pods run; None outside cluster mode). A
    /// family with no series is left out entirely (nothing is exported before a
    /// reference's first check).
    pub(crate) fn render_chunk(
        &self,
        at: &mut ScrapePosition,
        store: &ResultStore,
        running: Option<&RunningDigests>,
        out: &mut String,
    ) -> Result<(), MetricsError> {
        let part = at.part;
        let Some(family) = part.checked_sub(1).and_then(|f| self.families.get(f)) else {
            // Not a family: part 0 (before the families), or one of the parts after.
            match part.checked_sub(1 + self.families.len()) {
                None => {
                    let mut buffer = Vec::new();
                    TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
                    out.push_str(&String::from_utf8_lossy(&buffer));
                }
                Some(0) => {
                    if !render_images(at, store, IMAGES_PER_CHUNK, out, image_nodes_series) {
                        return Ok(());
                    }
                }
                Some(1) => {
                    if !render_images(at, store, SERIES_PER_CHUNK, out, cached_nodes_series) {
                        return Ok(());
                    }
                }
                Some(2) => {
                    if let Some(running) = running
                        && !render_tag_moved(at, store, running, out)
                    {
                        return Ok(());
                    }
                }
                Some(_) => {}
            }
            at.next_part();
            return Ok(());
        };
        let done = render_containers(at, store, out, |container, outcome, header_written, out| {
            if family.kind.is_some_and(|kind| kind != container.kind) {
                return;
            }
            header(out, header_written, &family.name, &family.help);
            out.push_str(&family.name);
            // Label names in lexical order, as the prometheus crate writes them.
            match family.kind {
                None => write_container_labels(out, container),
                Some(kind) => write_labels(
                    out,
                    &[
                        ("container", &container.container),
                        (kind.as_str(), &container.name),
                        ("image", &container.image),
                        ("namespace", &container.namespace),
                    ],
                ),
            }
            out.push_str(if outcome.status == family.status {
                " 1\n"
            } else {
                " 0\n"
            });
        });
        if done {
            at.next_part();
        }
        Ok(())
    }

    /// The whole exposition at once, without what pods run.
    pub fn render(&self, store: &ResultStore) -> Result<String, MetricsError> {
        self.render_with(store, None)
    }

    /// The whole exposition at once.
    pub(crate) fn render_with(
        &self,
        store: &ResultStore,
        running: Option<&RunningDigests>,
    ) -> Result<String, MetricsError> {
        let mut out = String::new();
        let mut at = ScrapePosition::default();
        while !at.is_done(self) {
            self.render_chunk(&mut at, store, running, &mut out)?;
        }
        Ok(out)
    }
}

/// Renders the next `per_chunk` images of a node-view family (`series` writes one
/// image's) from `at`; whether the family is done (else `at` says where it stopped).
fn render_images(
    at: &mut ScrapePosition,
    store: &ResultStore,
    per_chunk: usize,
    out: &mut String,
    series: fn(&str, &ImageNodes, &mut bool, &mut String),
) -> bool {
    let after = at.after_image.take();
    let mut last = None;
    for (seen, (image, nodes)) in store.image_nodes_after(after.as_deref()).enumerate() {
        if seen == per_chunk {
            // More follow: the next chunk starts after the last one seen.
            at.after_image = last;
            return false;
        }
        series(image, nodes, &mut at.header_written, out);
        last = Some(image.clone());
    }
    true
}

/// `pullwatch_image_nodes{image,status}`: for every image some node has checked, all
/// eight statuses, each the number of nodes whose latest check says it.
fn image_nodes_series(
    image: &str,
    nodes: &ImageNodes,
    header_written: &mut bool,
    out: &mut String,
) {
    if nodes.statuses.is_empty() {
        return;
    }
    header(
        out,
        header_written,
        IMAGE_NODES,
        "Nodes whose latest check of the image (as written in the spec) says this status.",
    );
    for status in CheckStatus::ALL {
        out.push_str(IMAGE_NODES);
        write_labels(out, &[("image", image), ("status", status.as_str())]);
        let count = nodes.statuses.get(&status).copied().unwrap_or(0);
        let _ = writeln!(out, " {count}");
    }
}

/// `pullwatch_image_cached_nodes{image}`: nodes holding each image.
fn cached_nodes_series(
    image: &str,
    nodes: &ImageNodes,
    header_written: &mut bool,
    out: &mut String,
) {
    header(
        out,
        header_written,
        IMAGE_CACHED_NODES,
        "Nodes with a connected agent that hold the image (as written in the spec).",
    );
    out.push_str(IMAGE_CACHED_NODES);
    write_labels(out, &[("image", image)]);
    let _ = writeln!(out, " {}", nodes.cached);
}

/// `pullwatch_image_tag_moved{namespace,kind,name,container,image}`: 1 when some
/// running pod of the workload runs another digest than the tag resolves to now, 0
/// when all run it. Absent when unknown: not checked yet, no digest answered, no
/// running pod reported one, or a digest reference (which cannot move). Renders
/// [`SERIES_PER_CHUNK`] containers from `at`; whether the family is done.
fn render_tag_moved(
    at: &mut ScrapePosition,
    store: &ResultStore,
    running: &RunningDigests,
    out: &mut String,
) -> bool {
    render_containers(at, store, out, |container, outcome, header_written, out| {
        let Some(moved) = tag_moved(running, container, outcome) else {
            return;
        };
        header(
            out,
            header_written,
            IMAGE_TAG_MOVED,
            "1 when some running pod of the workload runs another digest than the tag resolves to now (a restart or a new node would run different code); 0 when all run it.",
        );
        out.push_str(IMAGE_TAG_MOVED);
        write_container_labels(out, container);
        out.push_str(if moved { " 1\n" } else { " 0\n" });
    })
}

/// Renders the next [`SERIES_PER_CHUNK`] containers of a per-container family from
/// `at` (`series` writes one container's, its header first if not yet out); whether
/// the family is done (else `at` says where it stopped).
fn render_containers(
    at: &mut ScrapePosition,
    store: &ResultStore,
    out: &mut String,
    mut series: impl FnMut(&ContainerRef, &CheckOutcome, &mut bool, &mut String),
) -> bool {
    let after = at.after.take();
    let mut last: Option<&ContainerRef> = None;
    for (seen, (container, outcome)) in store.iter_after(after.as_ref()).enumerate() {
        if seen == SERIES_PER_CHUNK {
            // More follow: the next chunk starts after the last one seen.
            at.after = last.cloned();
            return false;
        }
        last = Some(container);
        series(container, outcome, &mut at.header_written, out);
    }
    true
}

/// Containers looked at per chunk of a canonical family: about 600 KiB of text.
pub(crate) const SERIES_PER_CHUNK: usize = 4096;

/// Images looked at per chunk of `pullwatch_image_nodes` (eight series each).
const IMAGES_PER_CHUNK: usize = SERIES_PER_CHUNK / 8;

/// Where a streamed exposition stands: the part, and within a family the last
/// container (or image) rendered and whether the family's header is out.
#[derive(Clone, Debug, Default)]
pub struct ScrapePosition {
    pub(crate) part: usize,
    after: Option<ContainerRef>,
    after_image: Option<String>,
    header_written: bool,
}

impl ScrapePosition {
    /// Whether every part of `metrics`' exposition is out.
    pub(crate) fn is_done(&self, metrics: &Metrics) -> bool {
        self.part >= metrics.part_count()
    }

    /// Moves to the start of the next part (the current one was sent another way).
    pub(crate) fn next_part(&mut self) {
        *self = ScrapePosition {
            part: self.part + 1,
            ..Default::default()
        };
    }
}

/// The `# HELP` and `# TYPE` lines of a gauge family, once, before its first series.
fn header(out: &mut String, written: &mut bool, name: &str, help: &str) {
    if !*written {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        *written = true;
    }
}

/// A container reference's canonical label set, names in lexical order as the
/// prometheus crate writes them.
fn write_container_labels(out: &mut String, container: &ContainerRef) {
    write_labels(
        out,
        &[
            ("container", &container.container),
            ("image", &container.image),
            ("kind", container.kind.as_str()),
            ("name", &container.name),
            ("namespace", &container.namespace),
        ],
    );
}

fn write_labels(out: &mut String, labels: &[(&str, &str)]) {
    out.push('{');
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        write_escaped(out, value);
        out.push('"');
    }
    out.push('}');
}

/// `value` with the exposition format's escapes (backslash, double quote, line feed).
/// The runs between them are copied whole: most label values have none, and a push
/// per character was most of a large scrape's CPU.
fn write_escaped(out: &mut String, value: &str) {
    let mut rest = value;
    while let Some(at) = rest.bytes().position(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(&rest[..at]);
        out.push_str(match rest.as_bytes()[at] {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            _ => "\\n",
        });
        // The escaped byte is ASCII: `at + 1` is a character boundary.
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
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
    use crate::index::ContainerRef;
    use pullwatch::CheckOutcome;

    fn container(name: &str) -> ContainerRef {
        ContainerRef::deployment("ns", name, "app", "nginx:1")
    }

    fn series(text: &str, metric: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{metric}{{")))
            .map(str::to_string)
            .collect()
    }

    /// The group registers each stage's series once: registering a stage's struct
    /// again clashes, and the clash is a typed error naming the stage.
    #[test]
    fn stage_series_are_registered_once_by_the_group() {
        let metrics = Metrics::new(false).unwrap();
        let again = InventoryMetrics::new(metrics.registry())
            .err()
            .map(registering("inventory"));
        assert!(
            matches!(
                &again,
                Some(MetricsError::Register {
                    stage: "inventory",
                    source: prometheus::Error::AlreadyReg
                })
            ),
            "{again:?}"
        );
        assert!(
            again
                .unwrap()
                .to_string()
                .starts_with("metrics: cannot register the inventory series: ")
        );
        assert!(CheckerMetrics::new(metrics.registry()).is_err());
        assert!(
            HubMetrics::new(metrics.registry()).is_ok(),
            "no agents: not served"
        );
        let with_agents = Metrics::with_agents(false).unwrap();
        assert!(HubMetrics::new(with_agents.registry()).is_err());
    }

    #[test]
    fn one_gauge_is_one_and_gone_refs_disappear() {
        let m = Metrics::new(true).unwrap();
        let mut store = ResultStore::default();
        let text = m.render(&store).unwrap();
        assert!(!text.contains("k8s_image_availability_exporter_available"));

        store.set(
            container("web"),
            CheckOutcome::new(CheckStatus::Absent, "gone"),
        );
        let text = m.render(&store).unwrap();
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
        assert!(
            !text.contains("k8s_image_availability_exporter_statefulset_"),
            "no empty families"
        );

        store.set(container("web"), CheckOutcome::available());
        store.set(container("api"), CheckOutcome::available());
        store.retain(&[&container("api")].into());
        let text = m.render(&store).unwrap();
        let available = series(&text, "k8s_image_availability_exporter_available");
        assert_eq!(available.len(), 1);
        assert!(available[0].contains("name=\"api\""));
        assert!(!text.contains("name=\"web\""));
        assert!(!text.contains("deployment=\"web\""));
    }

    /// A whole scrape of `store`, chunk by chunk as it is streamed.
    fn scrape_chunks(m: &Metrics, store: &ResultStore) -> Vec<String> {
        let mut at = ScrapePosition::default();
        let mut chunks = Vec::new();
        while !at.is_done(m) {
            let mut out = String::new();
            m.render_chunk(&mut at, store, None, &mut out).unwrap();
            chunks.push(out);
        }
        chunks
    }

    /// A family longer than a chunk is split over chunks of bounded size, and the
    /// exposition stays whole (promtool reads it): one header per family, every
    /// container once per family, in the per-kind families too, whose containers are
    /// spread over the chunks.
    #[test]
    fn families_are_streamed_in_bounded_chunks() {
        let m = Metrics::new(true).unwrap();
        let mut store = ResultStore::default();
        let count = SERIES_PER_CHUNK * 2 + 7;
        for i in 0..count {
            let mut c = container(&format!("w{i:05}"));
            if i % 3 == 0 {
                c.kind = WorkloadKind::StatefulSet;
            }
            store.set(c, CheckOutcome::available());
        }
        let chunks = scrape_chunks(&m, &store);
        let largest = chunks.iter().map(String::len).max().unwrap();
        assert!(
            largest < SERIES_PER_CHUNK * 200,
            "a chunk of {largest} bytes"
        );
        assert!(
            chunks.len() > 3 * m.families.len(),
            "{} chunks",
            chunks.len()
        );
        let text = chunks.concat();
        pullwatch_testbench::promtool_check_metrics(&text).unwrap();
        let statefulsets = count.div_ceil(3);
        for (family, expected) in [
            (format!("{PREFIX}_available"), count),
            (format!("{PREFIX}_absent"), count),
            (format!("{PREFIX}_statefulset_available"), statefulsets),
            (
                format!("{PREFIX}_deployment_available"),
                count - statefulsets,
            ),
        ] {
            let lines = series(&text, &family);
            assert_eq!(lines.len(), expected, "{family}");
            let distinct: std::collections::BTreeSet<&String> = lines.iter().collect();
            assert_eq!(distinct.len(), expected, "{family}: a container twice");
            assert_eq!(text.matches(&format!("# TYPE {family} gauge\n")).count(), 1);
        }
    }

    /// The node-view families are chunked too (they were one part each, 40,000
    /// series at 5,000 images), and stay whole: one header each, every image once.
    #[test]
    fn image_node_families_are_streamed_in_bounded_chunks() {
        use crate::answers::ImageNodes;
        let m = Metrics::new(false).unwrap();
        let mut store = ResultStore::default();
        let count = IMAGES_PER_CHUNK * 2 + 5;
        for i in 0..count {
            let image = format!("reg.io/app-{i:05}:1");
            // Every third image not checked by a node yet: only its cached count.
            let statuses = if i % 3 == 0 {
                Default::default()
            } else {
                [(CheckStatus::Available, i % 7)].into()
            };
            let nodes = ImageNodes {
                statuses,
                cached: i,
                answers: Default::default(),
            };
            store.set_image_nodes(&image, nodes);
        }
        let chunks = scrape_chunks(&m, &store);
        let largest = chunks.iter().map(String::len).max().unwrap();
        assert!(
            largest < SERIES_PER_CHUNK * 100,
            "a chunk of {largest} bytes"
        );
        let text = chunks.concat();
        pullwatch_testbench::promtool_check_metrics(&text).unwrap();
        let checked = count - count.div_ceil(3);
        for (family, expected) in [(IMAGE_NODES, checked * 8), (IMAGE_CACHED_NODES, count)] {
            let lines = series(&text, family);
            assert_eq!(lines.len(), expected, "{family}");
            let distinct: std::collections::BTreeSet<&String> = lines.iter().collect();
            assert_eq!(distinct.len(), expected, "{family}: a series twice");
            assert_eq!(text.matches(&format!("# TYPE {family} gauge\n")).count(), 1);
        }
        assert!(text.contains(&format!(
            "pullwatch_image_cached_nodes{{image=\"reg.io/app-{:05}:1\"}} {}\n",
            count - 1,
            count - 1
        )));
        // The image-node family in three chunks, every other part in one.
        assert_eq!(chunks.len(), m.part_count() + 2);
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new(false).unwrap();
        let mut store = ResultStore::default();
        let mut odd = container("web");
        odd.image = "a\"b\\c\nd".into();
        store.set(odd, CheckOutcome::new(CheckStatus::BadImageFormat, "x"));
        let text = m.render(&store).unwrap();
        assert!(text.contains(r#"image="a\"b\\c\nd""#), "{text}");
        // At either end, repeated, among multi-byte characters.
        let mut odd = container("web");
        odd.image = "\"é\\\\ü\n\n".into();
        store.set(odd, CheckOutcome::new(CheckStatus::BadImageFormat, "x"));
        let text = m.render(&store).unwrap();
        assert!(text.contains(r#"image="\"é\\\\ü\n\n""#), "{text}");
    }

    #[test]
    fn legacy_names_only_on_request() {
        let m = Metrics::new(false).unwrap();
        let mut store = ResultStore::default();
        store.set(container("web"), CheckOutcome::available());
        assert!(
            !m.render(&store)
                .unwrap()
                .contains("exporter_deployment_available")
        );
        m.recheck_completed();
        assert!(
            m.render(&store)
                .unwrap()
                .contains("k8s_image_availability_exporter_completed_rechecks_total 1")
        );
    }

    #[test]
    fn image_node_series_follow_the_store() {
        let m = Metrics::new(false).unwrap();
        let mut store = ResultStore::default();
        assert!(!m.render(&store).unwrap().contains(IMAGE_NODES));
        store.set_image_nodes(
            "reg.io/app:1",
            ImageNodes {
                statuses: [
                    (CheckStatus::Available, 1),
                    (CheckStatus::AuthenticationFailure, 1),
                ]
                .into(),
                cached: 2,
                answers: Default::default(),
            },
        );
        // Not checked by any node yet: only the cached count.
        store.set_image_nodes("reg.io/new:1", ImageNodes::default());
        let text = m.render(&store).unwrap();
        let nodes = series(&text, IMAGE_NODES);
        assert_eq!(nodes.len(), 8, "{text}");
        assert!(
            nodes.contains(
                &r#"pullwatch_image_nodes{image="reg.io/app:1",status="authentication_failure"} 1"#
                    .to_string()
            )
        );
        assert!(nodes.contains(
            &r#"pullwatch_image_nodes{image="reg.io/app:1",status="absent"} 0"#.to_string()
        ));
        assert_eq!(
            series(&text, IMAGE_CACHED_NODES),
            [
                r#"pullwatch_image_cached_nodes{image="reg.io/app:1"} 2"#,
                r#"pullwatch_image_cached_nodes{image="reg.io/new:1"} 0"#
            ]
        );
        store.retain_image_nodes(|image| image == "reg.io/new:1");
        let text = m.render(&store).unwrap();
        assert!(!text.contains("reg.io/app:1"));
        assert!(!text.contains(&format!("# TYPE {IMAGE_NODES}")));
    }

    #[test]
    fn tag_moved_is_one_zero_or_absent() {
        use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod, PodSpec, PodStatus};
        let m = Metrics::new(false).unwrap();
        let mut store = ResultStore::default();
        let mut running = RunningDigests::default();
        let bare_pod = |image_id: &str| Pod {
            metadata: Default::default(),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("nginx:1".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                container_statuses: Some(vec![ContainerStatus {
                    name: "app".into(),
                    image_id: image_id.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        };
        let solo = ContainerRef {
            namespace: "ns".into(),
            kind: WorkloadKind::Pod,
            name: "solo".into(),
            container: "app".into(),
            image: "nginx:1".into(),
        };
        let moved = |text: &str| series(text, IMAGE_TAG_MOVED);
        // Checked, digest known, no running pod: unknown.
        store.set(
            solo.clone(),
            CheckOutcome::available_at(Some("sha256:new".into()), None),
        );
        assert!(moved(&m.render_with(&store, Some(&running)).unwrap()).is_empty());
        // The pod runs what the tag resolves to now (0), then an older digest (1).
        for (digest, value) in [("sha256:new", 0), ("sha256:old", 1)] {
            let pod = bare_pod(&format!("docker.io/library/nginx@{digest}"));
            running.apply("ns", "solo", &pod);
            assert_eq!(
                moved(&m.render_with(&store, Some(&running)).unwrap()),
                [format!(
                    r#"pullwatch_image_tag_moved{{container="app",image="nginx:1",kind="pod",name="solo",namespace="ns"}} {value}"#
                )]
            );
        }
        // No digest from the registry (a failed check): unknown again.
        store.set(solo.clone(), CheckOutcome::new(CheckStatus::Absent, "gone"));
        assert!(moved(&m.render_with(&store, Some(&running)).unwrap()).is_empty());
        // Outside cluster mode there is nothing to compare with.
        store.set(
            solo,
            CheckOutcome::available_at(Some("sha256:new".into()), None),
        );
        assert!(moved(&m.render(&store).unwrap()).is_empty());
    }
}
