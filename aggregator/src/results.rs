//! Results with their reasons (the last stage, beside metrics), for people and
//! programs: `GET /api/v1/images` (JSON) and `GET /` (a server-rendered page, no
//! script). Read from the result store, like the metrics, but carrying what metrics
//! cannot: reasons, check times, digests, and what each node answered. Never a
//! credential: reasons name credential *sources*.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use pullwatch::{CheckOutcome, CheckStatus};
use serde::Serialize;

use crate::index::ContainerRef;
use crate::inventory::RunningDigests;
use crate::store::{ResultStore, tag_moved};

/// What to do about each status: the Statuses table of the README, word for word.
pub fn fix(status: CheckStatus) -> &'static str {
    match status {
        CheckStatus::Available => "nothing",
        CheckStatus::Absent => {
            "restore the tag, push the missing platform, or update the workload (or its nodeSelector)"
        }
        CheckStatus::BadImageFormat => "fix the image field",
        CheckStatus::RegistryUnavailable => {
            "check the registry and the network path; `--capath` for private CAs"
        }
        CheckStatus::AuthenticationFailure => {
            "check the pull secret (expired token? wrong registry key?)"
        }
        CheckStatus::AuthorizationFailure => "grant the pull secret's account read access",
        CheckStatus::RateLimited => "authenticate, use a mirror, or lower `--registry-qps`",
        CheckStatus::UnknownError => "read the aggregator's log",
    }
}

/// `?status=` and `?namespace=`: which workload rows to show.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub status: Option<CheckStatus>,
    pub namespace: Option<String>,
}

/// Why a query does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error(
        "unknown status {0:?}: expected one of available, absent, bad_image_format, registry_unavailable, authentication_failure, authorization_failure, rate_limited, unknown_error"
    )]
    Status(String),
    #[error("unknown query parameter {0:?}: expected status or namespace")]
    Parameter(String),
}

impl Filter {
    /// From a URL query string (`status=absent&namespace=shop`).
    pub fn parse(query: Option<&str>) -> Result<Filter, FilterError> {
        let mut filter = Filter::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match key.as_ref() {
                "status" => {
                    filter.status = Some(
                        value
                            .parse()
                            .map_err(|_| FilterError::Status(value.to_string()))?,
                    )
                }
                "namespace" => filter.namespace = Some(value.to_string()),
                other => return Err(FilterError::Parameter(other.to_string())),
            }
        }
        Ok(filter)
    }

    fn keeps(&self, container: &ContainerRef, outcome: &CheckOutcome) -> bool {
        self.status.is_none_or(|s| s == outcome.status)
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| ns == &*container.namespace)
    }
}

/// The whole answer of `/api/v1/images`.
#[derive(Debug, Serialize)]
pub struct ImagesResponse {
    pub summary: Summary,
    pub images: Vec<ImageView>,
}

/// Over every checked image, whatever the filter.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Distinct images (as written in the specs) with a result.
    pub images: usize,
    /// Images every workload can pull.
    pub available: usize,
    /// Images some workload cannot pull.
    pub failing: usize,
    /// When the last full pass over every reference finished (RFC 3339), if one has.
    pub last_full_pass: Option<String>,
}

/// One image as written in the specs, with every workload container using it.
#[derive(Debug, Serialize)]
pub struct ImageView {
    pub image: String,
    /// The least available of its workloads' statuses.
    pub status: CheckStatus,
    /// That workload's reason.
    pub reason: String,
    /// The latest check (RFC 3339).
    pub checked_at: Option<String>,
    /// What the reference resolves to now, when an answer carried it.
    pub digest: Option<String>,
    /// Running pods of some workload run another digest (true), all run it (false),
    /// or unknown (null).
    pub tag_moved: Option<bool>,
    pub workloads: Vec<WorkloadView>,
    /// What each node with an agent answered (empty without agents).
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Serialize)]
pub struct WorkloadView {
    pub namespace: String,
    pub kind: String,
    pub name: String,
    pub container: String,
    pub status: CheckStatus,
    pub reason: String,
    pub checked_at: Option<String>,
    pub tag_moved: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct NodeView {
    pub node: String,
    pub status: CheckStatus,
    pub reason: String,
}

fn rfc3339(time: Option<SystemTime>) -> Option<String> {
    time.map(|t| humantime::format_rfc3339_seconds(t).to_string())
}

/// One version of the store grouped by image, built once and shared by every
/// `/api/v1/images` and `/` request on that version: each request streams its answer
/// from it a few hundred images at a time, so what one request holds is a reference
/// count and one chunk, whatever the inventory's size or the client's pace.
#[derive(Debug)]
pub struct Snapshot {
    store: ResultStore,
    /// Image as written -> its container references, ordered by image.
    images: Vec<(Arc<str>, Vec<(ContainerRef, Arc<CheckOutcome>)>)>,
    last_full_pass: Option<SystemTime>,
    summary_json: String,
    summary: (usize, usize, usize),
    /// Per cause (by informativeness) of what is not available: workload rows.
    causes: Vec<(CheckStatus, usize)>,
}

/// Images per streamed chunk.
const IMAGES_PER_CHUNK: usize = 128;

impl Snapshot {
    /// Groups `store` (a snapshot) by image.
    pub fn new(store: ResultStore, last_full_pass: Option<SystemTime>) -> Snapshot {
        let mut by_image: BTreeMap<Arc<str>, Vec<(ContainerRef, Arc<CheckOutcome>)>> =
            BTreeMap::new();
        for (container, outcome) in store.iter_shared() {
            by_image
                .entry(container.image.clone())
                .or_default()
                .push((container.clone(), outcome.clone()));
        }
        let images: Vec<_> = by_image.into_iter().collect();
        let available = images
            .iter()
            .filter(|(_, rows)| rows.iter().all(|(_, o)| o.is_available()))
            .count();
        let failing = images
            .iter()
            .filter(|(_, rows)| rows.iter().any(|(_, o)| !o.is_available()))
            .count();
        let summary = Summary {
            images: images.len(),
            available,
            failing,
            last_full_pass: rfc3339(last_full_pass),
        };
        let mut causes: BTreeMap<u8, (CheckStatus, usize)> = BTreeMap::new();
        for (_, outcome) in images.iter().flat_map(|(_, rows)| rows) {
            if !outcome.is_available() {
                causes
                    .entry(outcome.status.informativeness())
                    .or_insert((outcome.status, 0))
                    .1 += 1;
            }
        }
        Snapshot {
            summary_json: serde_json::to_string(&summary).unwrap_or_default(),
            summary: (summary.images, summary.available, summary.failing),
            store,
            images,
            last_full_pass,
            causes: causes.into_values().collect(),
        }
    }

    /// Whether this was built from `store`'s version and `last_full_pass`.
    pub fn is_of(&self, store: &ResultStore, last_full_pass: Option<SystemTime>) -> bool {
        self.store.same_version(store) && self.last_full_pass == last_full_pass
    }

    fn view(
        &self,
        at: usize,
        running: Option<&RunningDigests>,
        filter: &Filter,
    ) -> Option<ImageView> {
        let (image, rows) = self.images.get(at)?;
        let kept: Vec<(&ContainerRef, &CheckOutcome)> = rows
            .iter()
            .map(|(c, o)| (c, &**o))
            .filter(|(c, o)| filter.keeps(c, o))
            .collect();
        let top = kept
            .iter()
            .map(|(_, o)| *o)
            .filter(|o| !o.is_available())
            .max_by_key(|o| o.status.informativeness())
            .or_else(|| kept.first().map(|(_, o)| *o))?;
        let workloads: Vec<WorkloadView> = kept
            .iter()
            .map(|(c, o)| WorkloadView {
                namespace: c.namespace.to_string(),
                kind: c.kind.as_str().to_string(),
                name: c.name.to_string(),
                container: c.container.to_string(),
                status: o.status,
                reason: o.reason.clone(),
                checked_at: rfc3339(o.checked_at),
                tag_moved: running.and_then(|r| tag_moved(r, c, o)),
            })
            .collect();
        let moved: Vec<bool> = workloads.iter().filter_map(|w| w.tag_moved).collect();
        Some(ImageView {
            image: image.to_string(),
            status: top.status,
            reason: top.reason.clone(),
            checked_at: rfc3339(kept.iter().filter_map(|(_, o)| o.checked_at).max()),
            digest: kept.iter().find_map(|(_, o)| o.digest.clone()),
            tag_moved: (!moved.is_empty()).then(|| moved.iter().any(|m| *m)),
            workloads,
            nodes: self
                .store
                .image_nodes_of(image)
                .map(|nodes| {
                    nodes
                        .answers
                        .iter()
                        .map(|(node, (status, reason))| NodeView {
                            node: node.clone(),
                            status: *status,
                            reason: reason.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// The next piece of the `/api/v1/images` JSON (what `filter` keeps), moving `at`
    /// past it; None when done. `running`: what pods run (cluster mode).
    pub fn next_json_chunk(
        &self,
        at: &mut JsonPosition,
        running: Option<&RunningDigests>,
        filter: &Filter,
    ) -> Option<String> {
        let mut out = String::new();
        if !at.started {
            at.started = true;
            let _ = write!(out, "{{\"summary\":{},\"images\":[", self.summary_json);
        }
        if at.image >= self.images.len() {
            if at.done {
                return None;
            }
            at.done = true;
            out.push_str("\n]}\n");
            return Some(out);
        }
        let mut written = 0;
        while at.image < self.images.len() && written < IMAGES_PER_CHUNK {
            if let Some(view) = self.view(at.image, running, filter) {
                out.push_str(if at.any { ",\n" } else { "\n" });
                at.any = true;
                if let Ok(json) = serde_json::to_string(&view) {
                    out.push_str(&json);
                }
                written += 1;
            }
            at.image += 1;
        }
        Some(out)
    }

    /// The next piece of the page at `/`, moving `at` past it; None when done.
    pub fn next_page_chunk(
        &self,
        at: &mut PagePosition,
        running: Option<&RunningDigests>,
    ) -> Option<String> {
        let mut out = String::new();
        match at.part {
            PagePart::Head => {
                page_head(&mut out, self.summary, self.last_full_pass);
                if self.causes.is_empty() {
                    out.push_str(
                        "<p id=\"all-available\">Every checked image can be pulled.</p>\n",
                    );
                }
                at.part = PagePart::Cause;
            }
            PagePart::Cause => {
                let Some((status, count)) = self.causes.get(at.cause).copied() else {
                    at.part = PagePart::MovedCount;
                    return Some(out);
                };
                if at.image == 0 {
                    let _ = writeln!(
                        out,
                        "<section class=\"cause\" id=\"cause-{status}\">\n<h2>{status} ({count})</h2>\n<p class=\"fix\">Fix: {}</p>\n\
                         <table><thead><tr><th>Workload</th><th>Image</th><th>Reason</th><th>Nodes disagree</th></tr></thead><tbody>",
                        escape(fix(status))
                    );
                }
                let end = (at.image + IMAGES_PER_CHUNK).min(self.images.len());
                for image in at.image..end {
                    if !self.images[image].1.iter().any(|(_, o)| o.status == status) {
                        continue;
                    }
                    let Some(view) = self.view(image, None, &Filter::default()) else {
                        continue;
                    };
                    for workload in view.workloads.iter().filter(|w| w.status == status) {
                        let _ = writeln!(
                            out,
                            "<tr class=\"row\" data-status=\"{status}\"><td>{}/{}/{} <code>{}</code></td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                            escape(&workload.namespace),
                            escape(&workload.kind),
                            escape(&workload.name),
                            escape(&workload.container),
                            escape(&view.image),
                            escape(&workload.reason),
                            escape(&disagreement(&view.nodes)),
                        );
                    }
                }
                at.image = end;
                if at.image >= self.images.len() {
                    out.push_str("</tbody></table>\n</section>\n");
                    at.cause += 1;
                    at.image = 0;
                }
            }
            PagePart::MovedCount => {
                // Counted first (nothing kept), listed after: the heading says how many.
                at.moved = self
                    .images
                    .iter()
                    .flat_map(|(_, rows)| rows)
                    .filter(|(c, o)| o.is_available() && is_moved(running, c, o))
                    .count();
                at.part = if at.moved == 0 {
                    PagePart::Foot
                } else {
                    let _ = writeln!(
                        out,
                        "<section id=\"tag-moved\">\n<h2>tags moved under running pods ({})</h2>\n\
                         <p class=\"fix\">A restart or a new node would run different code than the running pods: roll the workload if the new digest is intended, else restore the tag; pin images by digest.</p>\n\
                         <table><thead><tr><th>Workload</th><th>Image</th><th>Digest now</th></tr></thead><tbody>",
                        at.moved
                    );
                    at.image = 0;
                    PagePart::Moved
                };
            }
            PagePart::Moved => {
                let end = (at.image + IMAGES_PER_CHUNK).min(self.images.len());
                for (image, rows) in &self.images[at.image..end] {
                    for (c, o) in rows {
                        if o.is_available() && is_moved(running, c, o) {
                            let _ = writeln!(
                                out,
                                "<tr class=\"moved\"><td>{}/{}/{} <code>{}</code></td><td><code>{}</code></td><td><code>{}</code></td></tr>",
                                escape(&c.namespace),
                                escape(c.kind.as_str()),
                                escape(&c.name),
                                escape(&c.container),
                                escape(image),
                                escape(o.digest.as_deref().unwrap_or("")),
                            );
                        }
                    }
                }
                at.image = end;
                if at.image >= self.images.len() {
                    out.push_str("</tbody></table>\n</section>\n");
                    at.part = PagePart::Foot;
                }
            }
            PagePart::Foot => {
                out.push_str(
                    "<p><a href=\"/api/v1/images\">JSON</a> · <a href=\"/metrics\">metrics</a></p>\n</body></html>\n",
                );
                at.part = PagePart::Done;
            }
            PagePart::Done => return None,
        }
        Some(out)
    }

    /// Whether the page's moved-tag section needs what pods run (it is the only part
    /// that does).
    pub fn page_reads_running(at: &PagePosition) -> bool {
        matches!(at.part, PagePart::MovedCount | PagePart::Moved)
    }
}

fn is_moved(
    running: Option<&RunningDigests>,
    container: &ContainerRef,
    outcome: &CheckOutcome,
) -> bool {
    running.and_then(|r| tag_moved(r, container, outcome)) == Some(true)
}

/// Where a streamed `/api/v1/images` answer is.
#[derive(Debug, Default)]
pub struct JsonPosition {
    started: bool,
    image: usize,
    any: bool,
    done: bool,
}

/// Where a streamed page is.
#[derive(Debug, Default)]
pub struct PagePosition {
    part: PagePart,
    cause: usize,
    image: usize,
    moved: usize,
}

#[derive(Debug, Default, Clone, Copy)]
enum PagePart {
    #[default]
    Head,
    Cause,
    MovedCount,
    Moved,
    Foot,
    Done,
}

/// The whole view of `store` (and of what pods run, in cluster mode) that `filter`
/// keeps, in one piece (the server streams it instead).
pub fn images(
    store: &ResultStore,
    running: Option<&RunningDigests>,
    last_full_pass: Option<SystemTime>,
    filter: &Filter,
) -> ImagesResponse {
    let snapshot = Snapshot::new(store.snapshot(), last_full_pass);
    let (images, available, failing) = snapshot.summary;
    ImagesResponse {
        summary: Summary {
            images,
            available,
            failing,
            last_full_pass: rfc3339(last_full_pass),
        },
        images: (0..snapshot.images.len())
            .filter_map(|at| snapshot.view(at, running, filter))
            .collect(),
    }
}

/// The page at `/` of `snapshot`, in one piece (the server streams it instead).
pub fn page(snapshot: &Snapshot, running: Option<&RunningDigests>) -> String {
    let mut at = PagePosition::default();
    let mut out = String::new();
    while let Some(chunk) = snapshot.next_page_chunk(&mut at, running) {
        out.push_str(&chunk);
    }
    out
}

/// Text safe inside HTML elements and quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What the nodes disagree on, for one image: empty when they agree (or none answered).
fn disagreement(nodes: &[NodeView]) -> String {
    let first = nodes.first().map(|n| n.status);
    if nodes.iter().all(|n| Some(n.status) == first) {
        return String::new();
    }
    nodes
        .iter()
        .map(|n| format!("{}: {}", n.node, n.status))
        .collect::<Vec<_>>()
        .join("; ")
}

fn page_head(
    out: &mut String,
    (images, available, failing): (usize, usize, usize),
    last_full_pass: Option<SystemTime>,
) {
    out.push_str(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>pullwatch</title>\n\
         <style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
         table{border-collapse:collapse;width:100%;margin-bottom:1em}\
         th,td{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top}\
         th{background:#f3f3f3}h2{margin-top:1.5em}.fix{color:#555}\
         code{font-size:90%}</style></head>\n<body>\n<h1>pullwatch</h1>\n",
    );
    let _ = writeln!(
        out,
        "<p id=\"summary\">{images} images: {available} available, {failing} failing; last full pass: {}</p>",
        escape(rfc3339(last_full_pass).as_deref().unwrap_or("not yet"))
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::WorkloadKind;

    fn container(ns: &str, name: &str, image: &str) -> ContainerRef {
        ContainerRef {
            namespace: ns.into(),
            kind: WorkloadKind::Deployment,
            name: name.into(),
            container: "app".into(),
            image: image.into(),
        }
    }

    #[test]
    fn every_fix_is_the_readme_statuses_table() {
        let readme = include_str!("../../README.md");
        for status in CheckStatus::ALL {
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `{status}` |")))
                .unwrap_or_else(|| panic!("no README row for {status}"));
            assert!(
                row.trim_end().ends_with(&format!("| {} |", fix(status))),
                "{status}: README says {row}"
            );
        }
    }

    #[test]
    fn queries() {
        assert_eq!(Filter::parse(None), Ok(Filter::default()));
        assert_eq!(
            Filter::parse(Some("status=absent&namespace=shop%2Dx")),
            Ok(Filter {
                status: Some(CheckStatus::Absent),
                namespace: Some("shop-x".into())
            })
        );
        assert!(matches!(
            Filter::parse(Some("status=gone")),
            Err(FilterError::Status(_))
        ));
        assert!(matches!(
            Filter::parse(Some("kind=pod")),
            Err(FilterError::Parameter(_))
        ));
    }

    #[test]
    fn images_group_workloads_and_filters_keep_rows() {
        let mut store = ResultStore::default();
        store.set(
            container("shop", "web", "reg/a:1"),
            CheckOutcome::available(),
        );
        store.set(
            container("ops", "cron", "reg/a:1"),
            CheckOutcome::new(
                CheckStatus::AuthenticationFailure,
                "401 (credentials from secret/ops/old)",
            ),
        );
        store.set(
            container("shop", "api", "reg/<b>:1"),
            CheckOutcome::new(CheckStatus::Absent, "not found"),
        );
        let view = images(&store, None, None, &Filter::default());
        assert_eq!(view.summary.images, 2);
        assert_eq!((view.summary.available, view.summary.failing), (0, 2));
        let a = view.images.iter().find(|i| i.image == "reg/a:1").unwrap();
        assert_eq!(a.status, CheckStatus::AuthenticationFailure);
        assert_eq!(a.workloads.len(), 2);

        let shop = images(
            &store,
            None,
            None,
            &Filter {
                namespace: Some("shop".into()),
                ..Default::default()
            },
        );
        let a = shop.images.iter().find(|i| i.image == "reg/a:1").unwrap();
        assert_eq!(a.status, CheckStatus::Available, "only shop's rows count");
        let absent = images(
            &store,
            None,
            None,
            &Filter {
                status: Some(CheckStatus::Absent),
                ..Default::default()
            },
        );
        assert_eq!(absent.images.len(), 1);

        let html = page(&Snapshot::new(store.snapshot(), None), None);
        assert!(html.contains("id=\"cause-authentication_failure\""));
        assert!(html.contains("reg/&lt;b&gt;:1"), "escaped");
        assert!(!html.contains("reg/<b>:1"));
        assert!(html.contains(&escape(fix(CheckStatus::Absent))));
    }
}
