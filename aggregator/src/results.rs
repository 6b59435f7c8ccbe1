//! Results with their reasons (the last stage, beside metrics), for people and
//! programs: `GET /api/v1/images` (JSON) and `GET /` (a server-rendered page, no
//! script). Read from the result store, like the metrics, but carrying what metrics
//! cannot: reasons, check times, digests, and what each node answered. Never a
//! credential: reasons name credential *sources*.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::SystemTime;

use pullwatch::{CheckOutcome, CheckStatus};
use serde::Serialize;

use crate::index::ContainerRef;
use crate::inventory::RunningDigests;
use crate::scheduler::ImageNodes;
use crate::store::{ResultStore, tag_moved};

/// What to do about each status: the Statuses table of the README, word for word.
pub fn fix(status: CheckStatus) -> &'static str {
    match status {
        CheckStatus::Available => "nothing",
        CheckStatus::Absent => {
            "restore the tag or the deleted manifest or blob (re-push the image), push the missing platform, or update the workload (or its nodeSelector)"
        }
        CheckStatus::BadImageFormat => "fix the image field",
        CheckStatus::RegistryUnavailable => {
            "check the registry, its storage and the network path; `--capath` for private CAs"
        }
        CheckStatus::AuthenticationFailure => {
            "check the pull secret (expired token? wrong registry key?)"
        }
        CheckStatus::AuthorizationFailure => "grant the pull secret's account read access",
        CheckStatus::RateLimited => "authenticate, use a mirror, or lower `--registry-qps`",
        CheckStatus::UnknownError => {
            "fix the pushed content (or reference an image, not an artifact); else read the aggregator's log"
        }
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

/// The view of `store` (and of what pods run, in cluster mode) that `filter` keeps.
pub fn images(
    store: &ResultStore,
    running: Option<&RunningDigests>,
    last_full_pass: Option<SystemTime>,
    filter: &Filter,
) -> ImagesResponse {
    let mut by_image: BTreeMap<&str, Vec<(&ContainerRef, &CheckOutcome)>> = BTreeMap::new();
    for (container, outcome) in store.iter() {
        by_image
            .entry(&*container.image)
            .or_default()
            .push((container, outcome));
    }
    let worst = |rows: &[(&ContainerRef, &CheckOutcome)]| {
        rows.iter()
            .map(|(_, o)| *o)
            .filter(|o| !o.is_available())
            .max_by_key(|o| o.status.informativeness())
            .or_else(|| rows.first().map(|(_, o)| *o))
            .cloned()
    };
    let summary = Summary {
        images: by_image.len(),
        available: by_image
            .values()
            .filter(|rows| rows.iter().all(|(_, o)| o.is_available()))
            .count(),
        failing: by_image
            .values()
            .filter(|rows| rows.iter().any(|(_, o)| !o.is_available()))
            .count(),
        last_full_pass: rfc3339(last_full_pass),
    };
    let nodes_of: BTreeMap<&str, &ImageNodes> = store
        .image_nodes()
        .map(|(image, nodes)| (image.as_str(), nodes))
        .collect();
    let mut images = Vec::new();
    for (image, rows) in by_image {
        let kept: Vec<(&ContainerRef, &CheckOutcome)> = rows
            .into_iter()
            .filter(|(c, o)| filter.keeps(c, o))
            .collect();
        let Some(top) = worst(&kept) else {
            continue;
        };
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
        images.push(ImageView {
            image: image.to_string(),
            status: top.status,
            reason: top.reason.clone(),
            checked_at: rfc3339(kept.iter().filter_map(|(_, o)| o.checked_at).max()),
            digest: kept.iter().find_map(|(_, o)| o.digest.clone()),
            tag_moved: (!moved.is_empty()).then(|| moved.iter().any(|m| *m)),
            workloads,
            nodes: nodes_of
                .get(image)
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
        });
    }
    ImagesResponse { summary, images }
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

/// One row of the page: an image and one of its workloads.
type PageRow<'a> = (&'a ImageView, &'a WorkloadView);

/// The page at `/`: a summary line, then what is not available, grouped by cause, each
/// row with workload, image, reason, the fix, and node disagreement.
pub fn page(view: &ImagesResponse) -> String {
    let mut out = String::new();
    let summary = &view.summary;
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>pullwatch</title>\n\
         <style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}\
         table{{border-collapse:collapse;width:100%;margin-bottom:1em}}\
         th,td{{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top}}\
         th{{background:#f3f3f3}}h2{{margin-top:1.5em}}.fix{{color:#555}}\
         code{{font-size:90%}}</style></head>\n<body>\n<h1>pullwatch</h1>\n"
    );
    let _ = writeln!(
        out,
        "<p id=\"summary\">{} images: {} available, {} failing; last full pass: {}</p>",
        summary.images,
        summary.available,
        summary.failing,
        escape(summary.last_full_pass.as_deref().unwrap_or("not yet"))
    );
    // By informativeness: a registry that is down before a typo in a tag.
    let mut by_cause: BTreeMap<u8, (CheckStatus, Vec<PageRow>)> = BTreeMap::new();
    let mut moved: Vec<PageRow> = Vec::new();
    for image in &view.images {
        for workload in &image.workloads {
            if workload.status != CheckStatus::Available {
                by_cause
                    .entry(workload.status.informativeness())
                    .or_insert_with(|| (workload.status, Vec::new()))
                    .1
                    .push((image, workload));
            } else if workload.tag_moved == Some(true) {
                moved.push((image, workload));
            }
        }
    }
    if by_cause.is_empty() {
        out.push_str("<p id=\"all-available\">Every checked image can be pulled.</p>\n");
    }
    for (status, rows) in by_cause.values() {
        let _ = writeln!(
            out,
            "<section class=\"cause\" id=\"cause-{status}\">\n<h2>{status} ({})</h2>\n<p class=\"fix\">Fix: {}</p>\n\
             <table><thead><tr><th>Workload</th><th>Image</th><th>Reason</th><th>Nodes disagree</th></tr></thead><tbody>",
            rows.len(),
            escape(fix(*status))
        );
        for (image, workload) in rows {
            let _ = writeln!(
                out,
                "<tr class=\"row\" data-status=\"{status}\"><td>{}/{}/{} <code>{}</code></td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                escape(&workload.namespace),
                escape(&workload.kind),
                escape(&workload.name),
                escape(&workload.container),
                escape(&image.image),
                escape(&workload.reason),
                escape(&disagreement(&image.nodes)),
            );
        }
        out.push_str("</tbody></table>\n</section>\n");
    }
    if !moved.is_empty() {
        let _ = writeln!(
            out,
            "<section id=\"tag-moved\">\n<h2>tags moved under running pods ({})</h2>\n\
             <p class=\"fix\">A restart or a new node would run different code than the running pods: roll the workload if the new digest is intended, else restore the tag; pin images by digest.</p>\n\
             <table><thead><tr><th>Workload</th><th>Image</th><th>Digest now</th></tr></thead><tbody>",
            moved.len()
        );
        for (image, workload) in moved {
            let _ = writeln!(
                out,
                "<tr class=\"moved\"><td>{}/{}/{} <code>{}</code></td><td><code>{}</code></td><td><code>{}</code></td></tr>",
                escape(&workload.namespace),
                escape(&workload.kind),
                escape(&workload.name),
                escape(&workload.container),
                escape(&image.image),
                escape(image.digest.as_deref().unwrap_or("")),
            );
        }
        out.push_str("</tbody></table>\n</section>\n");
    }
    out.push_str(
        "<p><a href=\"/api/v1/images\">JSON</a> · <a href=\"/metrics\">metrics</a></p>\n</body></html>\n",
    );
    out
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

        let html = page(&view);
        assert!(html.contains("id=\"cause-authentication_failure\""));
        assert!(html.contains("reg/&lt;b&gt;:1"), "escaped");
        assert!(!html.contains("reg/<b>:1"));
        assert!(html.contains(&escape(fix(CheckStatus::Absent))));
    }
}
