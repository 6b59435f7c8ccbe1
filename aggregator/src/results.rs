//! Results with their reasons (the last stage, beside metrics), for people and
//! programs: `GET /api/v1/images` (JSON) and `GET /` (a server-rendered page, no
//! script). Read from the result store, like the metrics, but carrying what metrics
//! cannot: reasons, check times, digests, and what each node answered. Never a
//! credential: reasons name credential *sources*.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use pullwatch::registry::quota::Quota;
use pullwatch::{CheckOutcome, CheckStatus};
use serde::{Deserialize, Serialize};

use crate::agents::quota::NodeQuota;
use crate::index::ContainerRef;
use crate::inventory::RunningDigests;
use crate::store::{ResultStore, tag_moved};

/// What to do about each status: the Statuses table of the README, word for word.
pub(crate) fn fix(status: CheckStatus) -> &'static str {
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
pub(crate) struct Filter {
    pub(crate) status: Option<CheckStatus>,
    pub(crate) namespace: Option<String>,
}

/// Why a query does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum FilterError {
    #[error(
        "unknown status {0:?}: expected one of available, absent, bad_image_format, registry_unavailable, authentication_failure, authorization_failure, rate_limited, unknown_error"
    )]
    Status(String),
    #[error("unknown query parameter {0:?}: expected status or namespace")]
    Parameter(String),
    #[error("query parameter {0:?} given more than once: it takes one value")]
    Repeated(String),
}

impl Filter {
    /// From a URL query string (`status=absent&namespace=shop`).
    pub(crate) fn parse(query: Option<&str>) -> Result<Filter, FilterError> {
        let mut filter = Filter::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let repeated = match key.as_ref() {
                "status" => filter.status.is_some(),
                "namespace" => filter.namespace.is_some(),
                _ => false,
            };
            if repeated {
                return Err(FilterError::Repeated(key.to_string()));
            }
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

/// The whole answer of `/api/v1/images`, as the tests parse it back: the server
/// streams it in parts ([`Snapshot::next_json_chunk`]) and never builds it whole.
#[cfg(test)]
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ImagesResponse {
    pub(crate) summary: Summary,
    pub(crate) images: Vec<ImageView>,
    /// The pull quota of each registry that announced one ([`registry_quotas`]); the
    /// server streams it as a member after the summary, and it is not parsed back.
    #[serde(default, skip_deserializing)]
    pub(crate) registries: Vec<RegistryQuotaView>,
}

/// One registry's pull quota, as the aggregator's own checks and each node's route
/// last saw it (anonymous quotas are per egress IP: each vantage point has its own).
#[derive(Debug, Serialize)]
pub(crate) struct RegistryQuotaView {
    pub(crate) registry: String,
    /// The aggregator's own view (central checks); null when only nodes saw it.
    pub(crate) central: Option<QuotaView>,
    /// Each node whose agent reported it.
    pub(crate) nodes: Vec<NodeQuotaView>,
}

#[derive(Debug, Serialize)]
pub(crate) struct QuotaView {
    pub(crate) remaining: u64,
    pub(crate) limit: Option<u64>,
    pub(crate) window_seconds: Option<u64>,
    /// When the answer that announced it came (RFC 3339).
    pub(crate) seen_at: Option<String>,
    /// Whose quota (Docker's `docker-ratelimit-source`: the egress IP, or the account),
    /// when the registry said; the aggregator's own view only.
    pub(crate) source: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct NodeQuotaView {
    pub(crate) node: String,
    #[serde(flatten)]
    pub(crate) quota: QuotaView,
}

/// The quota views of every registry, from the aggregator's latest quotas (host ->
/// quota, when) and the nodes' (host -> node -> quota).
pub(crate) fn registry_quotas(
    central: BTreeMap<String, (Quota, SystemTime)>,
    nodes: BTreeMap<String, BTreeMap<String, NodeQuota>>,
) -> Vec<RegistryQuotaView> {
    let mut views: BTreeMap<String, RegistryQuotaView> = BTreeMap::new();
    let view = |registry: &str| RegistryQuotaView {
        registry: registry.to_string(),
        central: None,
        nodes: Vec::new(),
    };
    for (registry, (quota, seen)) in central {
        views
            .entry(registry.clone())
            .or_insert_with(|| view(&registry))
            .central = Some(QuotaView {
            remaining: quota.remaining,
            limit: quota.limit,
            window_seconds: quota.window.map(|w| w.as_secs()),
            seen_at: rfc3339(Some(seen)),
            source: quota.source,
        });
    }
    for (registry, by_node) in nodes {
        let entry = views
            .entry(registry.clone())
            .or_insert_with(|| view(&registry));
        entry.nodes = by_node
            .into_iter()
            .map(|(node, q)| NodeQuotaView {
                node,
                quota: QuotaView {
                    remaining: q.remaining,
                    limit: q.limit,
                    window_seconds: q.window_seconds,
                    seen_at: rfc3339(Some(q.reported_at)),
                    source: None,
                },
            })
            .collect();
    }
    views.into_values().collect()
}

/// Over every checked image, whatever the filter.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Summary {
    /// Distinct images (as written in the specs) with a result.
    pub(crate) images: usize,
    /// Images every workload can pull.
    pub(crate) available: usize,
    /// Images some workload cannot pull.
    pub(crate) failing: usize,
    /// When the last full pass over every reference finished (RFC 3339), if one has.
    pub(crate) last_full_pass: Option<String>,
}

/// One image as written in the specs, with every workload container using it (as
/// the tests parse it back).
#[cfg(test)]
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ImageView {
    pub(crate) image: String,
    /// The least available of its workloads' statuses.
    pub(crate) status: CheckStatus,
    /// That workload's reason.
    pub(crate) reason: String,
    /// The latest check (RFC 3339).
    pub(crate) checked_at: Option<String>,
    /// What the reference resolves to now, when an answer carried it.
    pub(crate) digest: Option<String>,
    /// Running pods of some workload run another digest (true), all run it (false),
    /// or unknown (null).
    pub(crate) tag_moved: Option<bool>,
    pub(crate) workloads: Vec<WorkloadView>,
    /// What each node with an agent answered (empty without agents).
    pub(crate) nodes: Vec<NodeView>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WorkloadView {
    pub(crate) namespace: String,
    pub(crate) kind: String,
    pub(crate) name: String,
    pub(crate) container: String,
    pub(crate) status: CheckStatus,
    pub(crate) reason: String,
    pub(crate) checked_at: Option<String>,
    pub(crate) tag_moved: Option<bool>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct NodeView {
    pub(crate) node: String,
    pub(crate) status: CheckStatus,
    pub(crate) reason: String,
}

fn rfc3339(time: Option<SystemTime>) -> Option<String> {
    time.map(|t| humantime::format_rfc3339_seconds(t).to_string())
}

/// One version of the store grouped by image, built once and shared by every
/// `/api/v1/images` and `/` request on that version: each request streams its answer
/// from it about [`CHUNK_BYTES`] at a time (one workload row at a time inside an
/// image), so what one request holds is a reference count and one chunk, whatever the
/// inventory's size or the client's pace.
#[derive(Debug)]
pub(crate) struct Snapshot {
    store: ResultStore,
    /// Image as written -> its container references, ordered by image.
    images: Vec<(Arc<str>, Vec<Row>)>,
    last_full_pass: Option<SystemTime>,
    summary_json: String,
    summary: (usize, usize, usize),
    /// Per cause (by informativeness) of what is not available: workload rows.
    causes: Vec<(CheckStatus, usize)>,
}

/// One container reference and its outcome, as the store shares it.
type Row = (ContainerRef, Arc<CheckOutcome>);

/// A streamed chunk ends once it is this long.
pub(crate) const CHUNK_BYTES: usize = 16 * 1024;

/// An image's fields but its workloads (streamed after them, one by one).
#[derive(Serialize)]
struct ImageHead<'a> {
    image: &'a str,
    status: CheckStatus,
    reason: &'a str,
    checked_at: Option<String>,
    digest: Option<&'a str>,
    tag_moved: Option<bool>,
    nodes: Vec<NodeView>,
}

impl Snapshot {
    /// Groups `store` (a snapshot) by image.
    pub(crate) fn new(store: ResultStore, last_full_pass: Option<SystemTime>) -> Snapshot {
        let mut by_image: BTreeMap<Arc<str>, Vec<Row>> = BTreeMap::new();
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
        let failing = images.len() - available;
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
    pub(crate) fn is_of(&self, store: &ResultStore, last_full_pass: Option<SystemTime>) -> bool {
        self.store.same_version(store) && self.last_full_pass == last_full_pass
    }

    fn nodes(&self, image: &str) -> Vec<NodeView> {
        self.store
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
            .unwrap_or_default()
    }

    /// Image `at`'s fields over the rows `filter` keeps; None when it keeps none.
    fn head(
        &self,
        at: usize,
        running: Option<&RunningDigests>,
        filter: &Filter,
    ) -> Option<ImageHead<'_>> {
        let (image, rows) = self.images.get(at)?;
        let kept = || {
            rows.iter()
                .map(|(c, o)| (c, &**o))
                .filter(|(c, o)| filter.keeps(c, o))
        };
        let top = kept()
            .map(|(_, o)| o)
            .filter(|o| !o.is_available())
            .max_by_key(|o| o.status.informativeness())
            .or_else(|| kept().next().map(|(_, o)| o))?;
        let mut tag_moved = None;
        for (c, o) in kept() {
            if let Some(moved) = running.and_then(|r| crate::store::tag_moved(r, c, o)) {
                tag_moved = Some(tag_moved.unwrap_or(false) || moved);
            }
        }
        Some(ImageHead {
            image,
            status: top.status,
            reason: &top.reason,
            checked_at: rfc3339(kept().filter_map(|(_, o)| o.checked_at).max()),
            digest: kept().find_map(|(_, o)| o.digest.as_deref()),
            tag_moved,
            nodes: self.nodes(image),
        })
    }

    /// The next piece of the `/api/v1/images` JSON (what `filter` keeps), moving `at`
    /// past it; None when done. `running`: what pods run (cluster mode).
    pub(crate) fn next_json_chunk(
        &self,
        at: &mut JsonPosition,
        running: Option<&RunningDigests>,
        filter: &Filter,
    ) -> Option<String> {
        if at.done {
            return None;
        }
        let mut out = String::new();
        if !at.started {
            at.started = true;
            let _ = write!(out, "{{\"summary\":{},", self.summary_json);
            for member in std::mem::take(&mut at.members) {
                let _ = write!(out, "{member},");
            }
            out.push_str("\"images\":[");
        }
        while out.len() < CHUNK_BYTES {
            let Some((_, rows)) = self.images.get(at.image) else {
                out.push_str("\n]}\n");
                at.done = true;
                break;
            };
            match at.row {
                None => {
                    let Some(head) = self.head(at.image, running, filter) else {
                        at.image += 1;
                        continue;
                    };
                    let json = serde_json::to_string(&head).unwrap_or_else(|_| "{}".into());
                    out.push_str(if at.any_image { ",\n" } else { "\n" });
                    at.any_image = true;
                    out.push_str(json.strip_suffix('}').unwrap_or(&json));
                    out.push_str(",\"workloads\":[");
                    at.row = Some(0);
                    at.any_row = false;
                }
                Some(row) => {
                    let Some((c, o)) = rows.get(row) else {
                        out.push_str("]}");
                        at.row = None;
                        at.image += 1;
                        continue;
                    };
                    at.row = Some(row + 1);
                    if filter.keeps(c, o) {
                        if at.any_row {
                            out.push(',');
                        }
                        at.any_row = true;
                        if let Ok(json) = serde_json::to_string(&workload_view(c, o, running)) {
                            out.push_str(&json);
                        }
                    }
                }
            }
        }
        Some(out)
    }

    /// The next piece of the page at `/`, moving `at` past it; None when done.
    pub(crate) fn next_page_chunk(
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
                if !at.opened {
                    at.opened = true;
                    let _ = writeln!(
                        out,
                        "<section class=\"cause\" id=\"cause-{status}\">\n<h2>{status} ({count})</h2>\n<p class=\"fix\">Fix: {}</p>\n\
                         <table><thead><tr><th>Workload</th><th>Image</th><th>Reason</th><th>Nodes disagree</th></tr></thead><tbody>",
                        code_spans(&escape(fix(status)))
                    );
                }
                self.rows_chunk(at, &mut out, |_, o| o.status == status, |out, image, c, o| {
                    let _ = writeln!(
                        out,
                        "<tr class=\"row\" data-status=\"{status}\"><td>{}/{}/{} <code>{}</code></td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                        escape(&c.namespace),
                        escape(c.kind.as_str()),
                        escape(&c.name),
                        escape(&c.container),
                        escape(image),
                        escape(&o.reason),
                        escape(&disagreement(&self.nodes(image))),
                    );
                });
                if at.image >= self.images.len() {
                    out.push_str("</tbody></table>\n</section>\n");
                    at.cause += 1;
                    at.image = 0;
                    at.row = 0;
                    at.opened = false;
                }
            }
            PagePart::MovedCount => {
                // Counted first (nothing kept), listed after: the heading says how many.
                let moved = self
                    .images
                    .iter()
                    .flat_map(|(_, rows)| rows)
                    .filter(|(c, o)| o.is_available() && is_moved(running, c, o))
                    .count();
                at.image = 0;
                at.row = 0;
                at.part = if moved == 0 {
                    PagePart::Foot
                } else {
                    let _ = writeln!(
                        out,
                        "<section id=\"tag-moved\">\n<h2>tags moved under running pods ({moved})</h2>\n\
                         <p class=\"fix\">A restart or a new node would run different code than the running pods: roll the workload if the new digest is intended, else restore the tag; pin images by digest.</p>\n\
                         <table><thead><tr><th>Workload</th><th>Image</th><th>Digest now</th></tr></thead><tbody>"
                    );
                    PagePart::Moved
                };
            }
            PagePart::Moved => {
                self.rows_chunk(
                    at,
                    &mut out,
                    |c, o| o.is_available() && is_moved(running, c, o),
                    |out, image, c, o| {
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
                    },
                );
                if at.image >= self.images.len() {
                    out.push_str("</tbody></table>\n</section>\n");
                    at.part = PagePart::Foot;
                }
            }
            PagePart::Foot => {
                out.push_str(&std::mem::take(&mut at.tail));
                out.push_str(
                    "<p><a href=\"/api/v1/images\">JSON</a> · <a href=\"/metrics\">metrics</a></p>\n</body></html>\n",
                );
                at.part = PagePart::Done;
            }
            PagePart::Done => return None,
        }
        Some(out)
    }

    /// Writes the rows `wanted` picks from `at` on, until the chunk is full or the
    /// images end (then `at.image` is past the last).
    fn rows_chunk(
        &self,
        at: &mut PagePosition,
        out: &mut String,
        wanted: impl Fn(&ContainerRef, &CheckOutcome) -> bool,
        write: impl Fn(&mut String, &str, &ContainerRef, &CheckOutcome),
    ) {
        while out.len() < CHUNK_BYTES {
            let Some((image, rows)) = self.images.get(at.image) else {
                return;
            };
            if at.row == 0 && !rows.iter().any(|(c, o)| wanted(c, o)) {
                at.image += 1;
                continue;
            }
            while out.len() < CHUNK_BYTES && at.row < rows.len() {
                let (c, o) = &rows[at.row];
                if wanted(c, o) {
                    write(out, image, c, o);
                }
                at.row += 1;
            }
            if at.row >= rows.len() {
                at.image += 1;
                at.row = 0;
            }
        }
    }

    /// Whether the page's next piece needs what pods run (only the moved-tag
    /// section does).
    pub(crate) fn page_reads_running(at: &PagePosition) -> bool {
        matches!(at.part, PagePart::MovedCount | PagePart::Moved)
    }
}

fn workload_view(
    c: &ContainerRef,
    o: &CheckOutcome,
    running: Option<&RunningDigests>,
) -> WorkloadView {
    WorkloadView {
        namespace: c.namespace.to_string(),
        kind: c.kind.as_str().to_string(),
        name: c.name.to_string(),
        container: c.container.to_string(),
        status: o.status,
        reason: o.reason.clone(),
        checked_at: rfc3339(o.checked_at),
        tag_moved: running.and_then(|r| tag_moved(r, c, o)),
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
pub(crate) struct JsonPosition {
    /// Further members of the answer object (`"name":value`, small, computed when the
    /// request came), written after the summary.
    members: Vec<String>,
    started: bool,
    image: usize,
    /// The next workload row of the current image; None: its head is not written.
    row: Option<usize>,
    any_image: bool,
    any_row: bool,
    done: bool,
}

impl JsonPosition {
    /// The start of an answer with `members` (`"name":value` each) after the summary.
    pub(crate) fn with_members(members: Vec<String>) -> JsonPosition {
        JsonPosition {
            members,
            ..JsonPosition::default()
        }
    }
}

/// Where a streamed page is.
#[derive(Debug, Default)]
pub(crate) struct PagePosition {
    /// Sections (small, rendered when the request came) put before the footer.
    tail: String,
    part: PagePart,
    cause: usize,
    opened: bool,
    image: usize,
    row: usize,
}

impl PagePosition {
    /// The start of a page with `tail` (HTML sections) before its footer.
    pub(crate) fn with_tail(tail: String) -> PagePosition {
        PagePosition {
            tail,
            ..PagePosition::default()
        }
    }
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

#[cfg(test)]
/// The whole view of `store` (and of what pods run, in cluster mode) that `filter`
/// keeps, in one piece, parsed back from the streamed form (for the tests).
pub(crate) fn images(
    store: &ResultStore,
    running: Option<&RunningDigests>,
    last_full_pass: Option<SystemTime>,
    filter: &Filter,
) -> ImagesResponse {
    let snapshot = Snapshot::new(store.snapshot(), last_full_pass);
    let mut at = JsonPosition::default();
    let mut json = String::new();
    while let Some(chunk) = snapshot.next_json_chunk(&mut at, running, filter) {
        json.push_str(&chunk);
    }
    serde_json::from_str(&json).unwrap_or_else(|_| {
        let (images, available, failing) = snapshot.summary;
        ImagesResponse {
            summary: Summary {
                images,
                available,
                failing,
                last_full_pass: rfc3339(last_full_pass),
            },
            images: Vec::new(),
            registries: Vec::new(),
        }
    })
}

#[cfg(test)]
/// The page at `/` of `snapshot`, in one piece (the server streams it instead).
pub(crate) fn page(snapshot: &Snapshot, running: Option<&RunningDigests>) -> String {
    let mut at = PagePosition::default();
    let mut out = String::new();
    while let Some(chunk) = snapshot.next_page_chunk(&mut at, running) {
        out.push_str(&chunk);
    }
    out
}

/// README's `code` spans of escaped text as `<code>` elements.
fn code_spans(escaped: &str) -> String {
    escaped
        .split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                format!("<code>{part}</code>")
            } else {
                part.to_string()
            }
        })
        .collect()
}

/// Text safe inside HTML elements and quoted attributes.
pub(crate) fn escape(text: &str) -> String {
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

/// Below this share of its limit left, a quota is shown as low (the alert's threshold).
const LOW_QUOTA: f64 = 0.1;

/// The pull quotas, one row per registry and vantage point (the aggregator, a node):
/// a section the page puts before its footer (empty when no registry announced one).
pub(crate) fn quota_section(registries: &[RegistryQuotaView]) -> String {
    let mut out = String::new();
    if registries.is_empty() {
        return out;
    }
    out.push_str(
        "<section id=\"quotas\">\n<h2>registry pull quotas</h2>\n\
         <p class=\"fix\">What each registry announced on its latest manifest answer; anonymous quotas are per egress IP, so each node has its own. When one runs low: authenticate, use a mirror, or pull less often.</p>\n\
         <table><thead><tr><th>Registry</th><th>Seen from</th><th>Remaining</th><th>Limit</th><th>Window</th><th>Seen at</th></tr></thead><tbody>\n",
    );
    for registry in registries {
        let rows = registry
            .central
            .iter()
            .map(|q| ("aggregator".to_string(), q))
            .chain(
                registry
                    .nodes
                    .iter()
                    .map(|n| (format!("node {}", n.node), &n.quota)),
            );
        for (vantage, quota) in rows {
            let low = quota
                .limit
                .filter(|l| *l > 0)
                .is_some_and(|l| (quota.remaining as f64) < LOW_QUOTA * l as f64);
            let optional = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
            let _ = writeln!(
                out,
                "<tr class=\"quota{}\"><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                if low { " low" } else { "" },
                escape(&registry.registry),
                escape(&vantage),
                quota.remaining,
                optional(quota.limit),
                quota
                    .window_seconds
                    .map(
                        |w| humantime::format_duration(std::time::Duration::from_secs(w))
                            .to_string()
                    )
                    .unwrap_or_default(),
                escape(quota.seen_at.as_deref().unwrap_or("")),
            );
        }
    }
    out.push_str("</tbody></table>\n</section>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(ns: &str, name: &str, image: &str) -> ContainerRef {
        ContainerRef::deployment(ns, name, "app", image)
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
    fn quotas_per_registry_and_vantage_point_on_the_page() {
        let seen = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let central = BTreeMap::from([(
            "registry-1.docker.io".to_string(),
            (
                Quota {
                    limit: Some(100),
                    remaining: 76,
                    window: Some(std::time::Duration::from_secs(21600)),
                    reset: None,
                    source: Some("203.0.113.7".into()),
                },
                seen,
            ),
        )]);
        let node = |remaining| NodeQuota {
            remaining,
            limit: Some(100),
            window_seconds: Some(21600),
            reported_at: seen,
        };
        let nodes = BTreeMap::from([
            (
                "registry-1.docker.io".to_string(),
                BTreeMap::from([("node-a".to_string(), node(4))]),
            ),
            (
                "<mirror>".to_string(),
                BTreeMap::from([("node-b".to_string(), node(50))]),
            ),
        ]);
        let registries = registry_quotas(central, nodes);
        assert_eq!(registries.len(), 2);
        let hub = &registries[1];
        assert_eq!(hub.registry, "registry-1.docker.io");
        assert_eq!(hub.central.as_ref().unwrap().remaining, 76);
        assert_eq!(hub.nodes[0].node, "node-a");
        assert_eq!(hub.nodes[0].quota.remaining, 4);
        assert!(
            registries[0].central.is_none(),
            "only a node saw the mirror"
        );
        let json = serde_json::to_value(&registries).unwrap();
        assert_eq!(json[1]["central"]["window_seconds"], 21600);
        assert_eq!(json[1]["central"]["seen_at"], "2027-01-15T08:00:00Z");
        assert_eq!(json[1]["nodes"][0]["node"], "node-a");
        assert_eq!(json[1]["nodes"][0]["remaining"], 4);
        assert_eq!(json[1]["central"]["source"], "203.0.113.7");

        assert!(quota_section(&[]).is_empty(), "nothing announced");
        let html = quota_section(&registries);
        assert!(html.contains("id=\"quotas\""));
        assert!(html.contains("&lt;mirror&gt;"), "escaped");
        // node-a has 4 of 100 left: under the alert's 10 %.
        let low: Vec<&str> = html
            .lines()
            .filter(|l| l.starts_with("<tr class=\"quota low\""))
            .collect();
        assert_eq!(low.len(), 1, "{html}");
        assert!(low[0].contains("node node-a") && low[0].contains("<td>4</td>"));
        assert!(html.contains("<td>aggregator</td><td>76</td><td>100</td><td>6h</td>"));
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
        // One value each: a second one was silently taken instead of the first.
        for twice in ["status=absent&status=available", "namespace=a&namespace=b"] {
            assert!(
                matches!(Filter::parse(Some(twice)), Err(FilterError::Repeated(_))),
                "{twice}"
            );
        }
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

    /// The fixes are README's words, whose `code` spans the page shows as code, not
    /// as backticks.
    #[test]
    fn the_page_shows_the_fixes_code_spans_as_code() {
        let mut store = ResultStore::default();
        store.set(
            container("shop", "web", "reg/a:1"),
            CheckOutcome::new(CheckStatus::RegistryUnavailable, "refused"),
        );
        store.set(
            container("shop", "api", "reg/b:1"),
            CheckOutcome::new(CheckStatus::RateLimited, "429"),
        );
        let html = page(&Snapshot::new(store.snapshot(), None), None);
        assert!(
            html.contains("network path; <code>--capath</code> for private CAs"),
            "{html}"
        );
        assert!(html.contains("lower <code>--registry-qps</code>"), "{html}");
        assert!(!html.contains('`'), "{html}");
    }

    /// One image used by 5,000 workloads: the JSON and the page stream in chunks of
    /// about [`CHUNK_BYTES`] (a row at most over), and parse whole.
    #[test]
    fn results_stream_in_bounded_chunks() {
        let mut store = ResultStore::default();
        for i in 0..5_000 {
            store.set(
                container(&format!("ns{}", i % 7), &format!("w{i:05}"), "reg/big:1"),
                CheckOutcome::new(CheckStatus::Absent, "manifest unknown (HTTP 404)"),
            );
        }
        store.set(container("ns0", "ok", "reg/a:1"), CheckOutcome::available());
        let snapshot = Snapshot::new(store.snapshot(), None);
        let mut at = JsonPosition::default();
        let mut json = String::new();
        let mut chunks = 0;
        while let Some(chunk) = snapshot.next_json_chunk(&mut at, None, &Filter::default()) {
            assert!(chunk.len() < CHUNK_BYTES + 1024, "{}", chunk.len());
            json.push_str(&chunk);
            chunks += 1;
        }
        assert!(chunks > 20, "{chunks} chunks");
        let view: ImagesResponse = serde_json::from_str(&json).unwrap();
        assert_eq!(view.images.len(), 2);
        let big = view.images.iter().find(|i| i.image == "reg/big:1").unwrap();
        assert_eq!(big.workloads.len(), 5_000);
        assert_eq!(big.status, CheckStatus::Absent);
        let filtered = images(
            &store,
            None,
            None,
            &Filter {
                namespace: Some("ns3".into()),
                ..Default::default()
            },
        );
        assert_eq!(filtered.images[0].workloads.len(), 714);

        let mut at = PagePosition::default();
        let mut html = String::new();
        while let Some(chunk) = snapshot.next_page_chunk(&mut at, None) {
            assert!(chunk.len() < CHUNK_BYTES + 2048, "{}", chunk.len());
            html.push_str(&chunk);
        }
        assert_eq!(html.matches("<tr class=\"row\"").count(), 5_000);
        assert!(
            html.contains("<h2>absent (5000)</h2>"),
            "counted in the heading"
        );

        // Small parts computed per request go in whole: JSON members, page sections.
        let mut at = JsonPosition::with_members(vec!["\"extra\":[1,2]".into()]);
        let mut json = String::new();
        while let Some(chunk) = snapshot.next_json_chunk(&mut at, None, &Filter::default()) {
            json.push_str(&chunk);
        }
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["extra"], serde_json::json!([1, 2]));
        let mut at = PagePosition::with_tail("<section id=\"extra\"></section>\n".into());
        let mut page = String::new();
        while let Some(chunk) = snapshot.next_page_chunk(&mut at, None) {
            page.push_str(&chunk);
        }
        assert!(
            page.contains("<section id=\"extra\"></section>\n<p><a href"),
            "before the footer"
        );
        assert!(html.ends_with("</html>\n"));
    }
}
