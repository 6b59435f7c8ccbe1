//! HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process serves),
//! `/readyz` (the first full check pass has finished; its body says why not),
//! `/api/v1/images` (results with reasons, JSON) and `/` (the same as a page). The
//! routing of requests is this module's; binding, connections and shutdown are the shared
//! [`pullwatch::serve`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, HeaderValue, VARY};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use pullwatch::serve::{self, Body, text};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::ScrapePosition;
use crate::pipeline::Pipeline;
use crate::results;
use crate::scrape::{GzipScrape, KeptParts};
use crate::store::ResultStore;
use pullwatch::locks::lock;
use pullwatch::serve::gzip::accepts_gzip;

/// What the endpoints report on.
pub(crate) struct EndpointState {
    pub(crate) pipeline: Arc<Pipeline>,
    ready: AtomicBool,
    /// Human-readable detail for `/readyz`.
    detail: Mutex<String>,
    /// The store's latest version grouped for the result views, shared by every
    /// request on it, and when it was built.
    results: Mutex<Option<(Instant, Arc<results::Snapshot>)>>,
    /// The store version the latest scrape streams from, and when it was taken.
    scrape: Mutex<Option<(Instant, Arc<ResultStore>)>>,
    /// Parts of the exposition compressed by earlier gzip scrapes.
    kept: Arc<KeptParts>,
}

/// While responses still stream from a store version younger than this, new requests
/// share it rather than pin another: each version a slow client holds is a copy of
/// the store, so how many it can pin is bounded by the send timeout over these.
const RESULTS_REUSE: Duration = Duration::from_secs(5);
const SCRAPE_REUSE: Duration = Duration::from_secs(2);

/// The cached value if a response still streams from it and it is younger than
/// `reuse` (sharing it pins no new version), or if `current` says it is current.
fn reusable<T>(
    cached: &Option<(Instant, Arc<T>)>,
    reuse: Duration,
    current: impl Fn(&T) -> bool,
) -> Option<Arc<T>> {
    let (built, value) = cached.as_ref()?;
    let in_use = Arc::strong_count(value) > 1;
    ((in_use && built.elapsed() < reuse) || current(value)).then(|| value.clone())
}

impl EndpointState {
    pub(crate) fn new(pipeline: Arc<Pipeline>) -> Self {
        EndpointState {
            pipeline,
            ready: AtomicBool::new(false),
            detail: Mutex::new("first check pass has not finished".to_string()),
            results: Mutex::new(None),
            scrape: Mutex::new(None),
            kept: Arc::default(),
        }
    }

    /// The result views' grouping of the store as it is now (or as it was moments
    /// ago, while responses stream from that version): built once per version, one
    /// build at a time, shared by every request on it.
    fn results_snapshot(&self) -> Arc<results::Snapshot> {
        let store = self.pipeline.store_snapshot();
        let last_full_pass = self.pipeline.last_full_pass();
        let mut cached = lock(&self.results);
        if let Some(snapshot) =
            reusable(&cached, RESULTS_REUSE, |s| s.is_of(&store, last_full_pass))
        {
            return snapshot;
        }
        let fresh = Arc::new(results::Snapshot::new(store, last_full_pass));
        *cached = Some((Instant::now(), fresh.clone()));
        fresh
    }

    /// The store version a scrape streams from, shared like [`Self::results_snapshot`].
    fn scrape_snapshot(&self) -> Arc<ResultStore> {
        let store = self.pipeline.store_snapshot();
        let mut cached = lock(&self.scrape);
        if let Some(shared) = reusable(&cached, SCRAPE_REUSE, |s| s.same_version(&store)) {
            return shared;
        }
        let fresh = Arc::new(store);
        *cached = Some((Instant::now(), fresh.clone()));
        fresh
    }

    pub(crate) fn set_ready(&self, ready: bool, detail: impl Into<String>) {
        *lock(&self.detail) = detail.into();
        self.ready.store(ready, Ordering::Release);
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

use pullwatch::serve::BindError;

/// Binds `--bind-address` (`:8080` means every interface, as in Go).
pub(crate) async fn bind(address: &str) -> Result<TcpListener, BindError> {
    serve::bind("--bind-address", address).await
}

/// The HTTP server running on a runtime thread of its own (see [`spawn`]).
#[derive(Debug)]
pub struct HttpServer {
    task: tokio::task::JoinHandle<()>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// Serves as [`serve`], on a runtime thread of its own ("pullwatch-http"): the
/// scheduler's batches and index builds on the main runtime then never queue in front
/// of `/healthz` and `/metrics`, whose scrape would otherwise wait behind them once per
/// chunk; the OS shares the CPUs.
pub fn spawn(
    listener: TcpListener,
    limits: serve::Limits,
    state: Arc<EndpointState>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<HttpServer> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("pullwatch-http")
        .enable_all()
        .build()?;
    // A listener belongs to the runtime it was registered with: moved over as is.
    let listener = listener.into_std()?;
    let task = runtime.spawn(async move {
        match TcpListener::from_std(listener) {
            Ok(listener) => serve(listener, limits, state, shutdown).await,
            Err(error) => tracing::error!(%error, "cannot serve HTTP on its own runtime"),
        }
    });
    Ok(HttpServer {
        task,
        runtime: Some(runtime),
    })
}

impl HttpServer {
    /// Waits until the server stopped (its shutdown signal), then ends its runtime.
    pub async fn wait(mut self) -> Result<(), tokio::task::JoinError> {
        (&mut self.task).await
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(runtime) = self.runtime.take() {
            // Allowed within async code, unlike dropping a runtime.
            runtime.shutdown_background();
        }
    }
}

/// Serves within `limits` until `shutdown` turns true (or its sender goes).
pub(crate) async fn serve(
    listener: TcpListener,
    limits: serve::Limits,
    state: Arc<EndpointState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    serve::serve(
        "http",
        listener,
        limits,
        move |request| respond(&state, request),
        stop,
    )
    .await;
}

fn respond(state: &EndpointState, request: &Request<Incoming>) -> Response<Body> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return pullwatch::serve::only_get_and_head();
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = if accepts_gzip(request.headers()) {
                gzip_metrics_response(state)
            } else {
                metrics_response(state.pipeline.clone(), state.scrape_snapshot())
            };
            // The encoding follows the request's Accept-Encoding: caches must tell.
            response
                .headers_mut()
                .insert(VARY, HeaderValue::from_static("Accept-Encoding"));
            response
        }
        "/api/v1/images" => match results::Filter::parse(request.uri().query()) {
            Ok(filter) => images_response(state, filter),
            Err(error) => text(StatusCode::BAD_REQUEST, format!("{error}\n")),
        },
        "/" => page_response(state),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let detail = lock(&state.detail).clone();
            if state.is_ready() {
                text(StatusCode::OK, format!("ready: {detail}\n"))
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {detail}\n"),
                )
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /, /api/v1/images, /metrics, /healthz or /readyz\n",
        ),
    }
}

/// `/api/v1/images`, streamed a chunk of images at a time from the shared snapshot.
fn images_response(state: &EndpointState, filter: results::Filter) -> Response<Body> {
    let snapshot = state.results_snapshot();
    let pipeline = state.pipeline.clone();
    // The quotas are a few rows per registry, rendered when the request comes.
    let quotas = serde_json::to_string(&pipeline.registry_quotas()).unwrap_or_else(|_| "[]".into());
    let start = results::JsonPosition::with_members(vec![format!("\"registries\":{quotas}")]);
    let chunks = futures::stream::unfold(start, move |mut at| {
        let chunk =
            pipeline.with_running(|running| snapshot.next_json_chunk(&mut at, running, &filter));
        async move { chunk.map(|chunk| (Ok(Bytes::from(chunk)), at)) }
    });
    serve::streamed("application/json; charset=utf-8", chunks)
}

/// The page at `/`, streamed a section piece at a time from the shared snapshot.
fn page_response(state: &EndpointState) -> Response<Body> {
    let snapshot = state.results_snapshot();
    let pipeline = state.pipeline.clone();
    let start =
        results::PagePosition::with_tail(results::quota_section(&pipeline.registry_quotas()));
    let chunks = futures::stream::unfold(start, move |mut at| {
        let chunk = if results::Snapshot::page_reads_running(&at) {
            pipeline.with_running(|running| snapshot.next_page_chunk(&mut at, running))
        } else {
            snapshot.next_page_chunk(&mut at, None)
        };
        async move { chunk.map(|chunk| (Ok(Bytes::from(chunk)), at)) }
    });
    serve::streamed("text/html; charset=utf-8", chunks)
}

/// The exposition, streamed a chunk at a time (at most a few thousand series), all
/// from one store snapshot. Chunks are rendered where the connection runs, on the
/// HTTP server's own runtime ([`spawn`]): a chunk is a few milliseconds of CPU, and a
/// hand-off to another thread per chunk cost more than it saved on a loaded machine
/// (each is a wait for the scheduler).
fn metrics_response(pipeline: Arc<Pipeline>, store: Arc<ResultStore>) -> Response<Body> {
    // One version of the store for the whole scrape.
    let chunks = futures::stream::unfold(ScrapePosition::default(), move |mut at| {
        let chunk = pipeline
            .render_metrics_chunk(&store, &mut at)
            .map(|chunk| chunk.map(Bytes::from).map_err(std::io::Error::other));
        async move { chunk.map(|chunk| (chunk, at)) }
    });
    serve::streamed(serve::METRICS_CONTENT_TYPE, chunks)
}

/// The exposition gzip-encoded (see [`crate::scrape`]), from one store snapshot.
fn gzip_metrics_response(state: &EndpointState) -> Response<Body> {
    let scrape = GzipScrape::new(
        state.pipeline.clone(),
        state.scrape_snapshot(),
        state.kept.clone(),
    );
    let chunks = futures::stream::unfold(scrape, |mut scrape| async move {
        scrape.next_chunk().map(|chunk| (chunk, scrape))
    });
    let mut response = serve::streamed(serve::METRICS_CONTENT_TYPE, chunks);
    response
        .headers_mut()
        .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::{CentralChecker, CheckerConfig};
    use crate::index::{ContainerRef, ImageIndex};
    use crate::metrics::Metrics;
    use pullwatch::{CheckOutcome, CheckStatus};

    /// The endpoints run on a runtime of their own: with the only worker of the
    /// runtime that started them held (as the scheduler's batches hold the main
    /// runtime's), `/healthz` answers and a scrape is rendered and streamed whole.
    #[test]
    fn endpoints_answer_while_the_starting_runtime_is_held() {
        let main = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let metrics = Metrics::new(false).unwrap();
        let checker =
            CentralChecker::new(&CheckerConfig::default(), metrics.checker.clone()).unwrap();
        let pipeline = Arc::new(Pipeline::new(checker, metrics, 1));
        let index = ImageIndex::default();
        for i in 0..3 {
            let container = ContainerRef::deployment("ns", &format!("w{i}"), "c", "reg.io/app:1");
            let outcome = Arc::new(CheckOutcome::new(CheckStatus::Absent, ""));
            pipeline.record(&index, std::slice::from_ref(&container), &outcome);
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let (server, addr) = main.block_on(async {
            let listener = bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let state = Arc::new(EndpointState::new(pipeline));
            let limits = serve::LimitArgs::default().for_listener(1);
            (spawn(listener, limits, state, stop_rx).unwrap(), addr)
        });
        // Hold the starting runtime's only worker until the answers are in.
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        main.spawn(async move {
            let _ = held_tx.send(());
            let _ = release_rx.recv();
        });
        held_rx.recv().unwrap();
        let client = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let answers: Vec<_> = client.block_on(async {
            let mut answers = Vec::new();
            for path in ["/healthz", "/metrics"] {
                let request =
                    pullwatch_testbench::http_request(addr, Method::GET, path, &[], Vec::new());
                answers.push(tokio::time::timeout(Duration::from_secs(10), request).await);
            }
            answers
        });
        release_tx.send(()).unwrap();
        let [healthz, metrics] = <[_; 2]>::try_from(answers).unwrap();
        let healthz = healthz.expect("/healthz answers").unwrap();
        assert_eq!((healthz.status, healthz.text()), (200, "ok\n".to_string()));
        let metrics = metrics.expect("/metrics answers").unwrap();
        assert_eq!(metrics.status, 200);
        let text = metrics.text();
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("k8s_image_availability_exporter_absent{")
                    && l.ends_with(" 1"))
                .count(),
            3,
            "{text}"
        );
        pullwatch_testbench::promtool_check_metrics(&text).unwrap();
        let _ = stop_tx.send(true);
        main.block_on(server.wait()).unwrap();
    }

    /// `/metrics` in text, plain or asking for gzip (and decoded, as Prometheus reads it),
    /// with the body's size on the wire.
    async fn scrape_metrics(addr: std::net::SocketAddr, gzip: bool) -> (String, usize) {
        let headers: &[(&str, &str)] = if gzip {
            &[("accept-encoding", "gzip")]
        } else {
            &[]
        };
        let response =
            pullwatch_testbench::http_request(addr, Method::GET, "/metrics", headers, Vec::new())
                .await
                .unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("vary"), Some("Accept-Encoding"));
        if !gzip {
            assert_eq!(response.header("content-encoding"), None);
            return (response.text(), response.body.len());
        }
        assert_eq!(response.header("content-encoding"), Some("gzip"));
        (response.decoded_text().unwrap(), response.body.len())
    }

    /// While checks keep recording, every scrape shows each container at exactly one
    /// status, in the canonical and in the legacy families alike, plain or gzip.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_scrape_is_one_version_of_the_store() {
        let metrics = Metrics::new(true).unwrap();
        let checker =
            CentralChecker::new(&CheckerConfig::default(), metrics.checker.clone()).unwrap();
        let pipeline = Arc::new(Pipeline::new(checker, metrics, 1));
        let containers: Vec<ContainerRef> = (0..300)
            .map(|i| ContainerRef::deployment("ns", &format!("w{i:03}"), "c", "reg.io/app:1"))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        // Rounds the writer finished, so the scrapes go on until it has rewritten the
        // store a few times whatever the two threads' relative speed.
        let written = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let writer = std::thread::spawn({
            let (pipeline, stop, containers) = (pipeline.clone(), stop.clone(), containers.clone());
            let written = written.clone();
            move || {
                let index = ImageIndex::default();
                let mut rounds = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let status = [CheckStatus::Absent, CheckStatus::Available][rounds as usize % 2];
                    for container in &containers {
                        pipeline.record(
                            &index,
                            std::slice::from_ref(container),
                            &Arc::new(CheckOutcome::new(status, "")),
                        );
                    }
                    rounds += 1;
                    written.store(rounds, Ordering::Relaxed);
                }
                rounds
            }
        });
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let server = tokio::spawn(serve(
            listener,
            serve::LimitArgs::default().for_listener(1),
            Arc::new(EndpointState::new(pipeline.clone())),
            stop_rx,
        ));
        let mut scrapes = 0;
        let mut gzip_with_series = 0;
        // At least 40 scrapes, and on until the writer finished 4 rounds (bounded).
        while scrapes < 40 || (written.load(Ordering::Relaxed) < 4 && scrapes < 4_000) {
            scrapes += 1;
            // Every other scrape gzip-encoded, as Prometheus asks (kept parts and all).
            let gzip = scrapes % 2 == 0;
            let (text, _) = scrape_metrics(addr, gzip).await;
            // container name -> (canonical families at 1, legacy families at 1)
            let mut ones: std::collections::BTreeMap<String, (u32, u32)> = Default::default();
            for line in text.lines().filter(|l| l.ends_with(" 1")) {
                let Some(name) = line
                    .split("name=\"")
                    .nth(1)
                    .or_else(|| line.split("deployment=\"").nth(1))
                else {
                    continue;
                };
                let name = name.split('"').next().unwrap_or_default().to_string();
                let entry = ones.entry(name).or_default();
                if line.starts_with("k8s_image_availability_exporter_deployment_") {
                    entry.1 += 1;
                } else if line.starts_with("k8s_image_availability_exporter_") {
                    entry.0 += 1;
                }
            }
            for (name, counts) in &ones {
                assert_eq!(*counts, (1, 1), "{name} in one scrape");
            }
            if gzip && !ones.is_empty() {
                gzip_with_series += 1;
            }
        }
        assert!(gzip_with_series > 0, "some gzip scrape showed the series");
        stop.store(true, Ordering::Relaxed);
        let rounds = writer.join().unwrap();
        assert!(rounds >= 2, "the writer ran alongside the scrapes");
        let _ = stop_tx.send(true);
        let _ = server.await;
    }

    /// A gzip scrape reads as the plain one. The first at a version compresses and
    /// keeps the parts; later ones send the kept parts, until a status changes (a
    /// recheck to the same status keeps them).
    #[tokio::test]
    async fn a_gzip_scrape_reads_as_the_plain_one_and_keeps_settled_parts() {
        let metrics = Metrics::new(false).unwrap();
        let checker =
            CentralChecker::new(&CheckerConfig::default(), metrics.checker.clone()).unwrap();
        let pipeline = Arc::new(Pipeline::new(checker, metrics, 1));
        let index = ImageIndex::default();
        // More than a chunk per family, so a member spans chunks.
        let containers: Vec<ContainerRef> = (0..crate::metrics::SERIES_PER_CHUNK + 500)
            .map(|i| {
                ContainerRef::deployment(
                    "ns",
                    &format!("w{i:05}"),
                    "c",
                    &format!("reg.io/app-{i}:1"),
                )
            })
            .collect();
        let record = |container: &ContainerRef, status, reason: &str| {
            let outcome = Arc::new(CheckOutcome::new(status, reason));
            pipeline.record(&index, std::slice::from_ref(container), &outcome);
        };
        for container in &containers {
            record(container, CheckStatus::Available, "");
        }
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let state = Arc::new(EndpointState::new(pipeline.clone()));
        let server = tokio::spawn(serve(
            listener,
            serve::LimitArgs::default().for_listener(1),
            state.clone(),
            stop_rx,
        ));
        let families = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.contains("k8s_image_availability_exporter_"))
                .filter(|l| !l.contains("completed_rechecks"))
                .map(str::to_string)
                .collect()
        };
        let scrape = |gzip: bool| scrape_metrics(addr, gzip);
        // Where each kept member lives: a member compressed again moves.
        let kept = || -> std::collections::BTreeMap<usize, usize> {
            lock(&state.kept.parts)
                .iter()
                .map(|(part, (_, member))| (*part, member.as_ptr() as usize))
                .collect()
        };
        let (plain, plain_len) = scrape(false).await;
        let eight_families = 8;
        assert_eq!(
            families(&plain).len(),
            eight_families * (containers.len() + 2)
        );
        assert!(kept().is_empty());

        let (first, first_len) = scrape(true).await;
        assert_eq!(families(&first), families(&plain));
        assert!(
            first_len < plain_len / 10,
            "compressed: {first_len} of {plain_len}"
        );
        // Every part but pullwatch's own metrics and the moved-tag family (read from
        // elsewhere): the families and the two node-view parts.
        let first_kept = kept();
        assert_eq!(first_kept.len(), pipeline.metrics.part_count() - 2);
        assert_eq!(first_kept.len(), eight_families + 2);

        let (second, _) = scrape(true).await;
        assert_eq!(families(&second), families(&plain));
        assert_eq!(kept(), first_kept, "sent as kept, not compressed again");

        // A recheck to the same status: the kept parts still serve.
        record(&containers[7], CheckStatus::Available, "rechecked");
        let (third, _) = scrape(true).await;
        assert_eq!(families(&third), families(&plain));
        assert_eq!(kept(), first_kept, "sent as kept, not compressed again");

        // A status changes: every family shows it, compressed anew.
        record(&containers[7], CheckStatus::Absent, "gone");
        let (changed, changed_len) = scrape(true).await;
        assert!(
            changed_len < plain_len / 10,
            "compressed: {changed_len} of {plain_len}"
        );
        assert_eq!(families(&changed), families(&scrape(false).await.0));
        assert_ne!(families(&changed), families(&plain));
        let absent = r#"k8s_image_availability_exporter_absent{container="c",image="reg.io/app-7:1",kind="deployment",name="w00007",namespace="ns"} 1"#;
        assert!(changed.lines().any(|l| l == absent), "{absent}");
        pullwatch_testbench::promtool_check_metrics(&changed).unwrap();
        let changed_kept = kept();
        for part in 1..=eight_families {
            assert_ne!(
                changed_kept[&part], first_kept[&part],
                "family part {part} anew"
            );
        }
        // The node view did not change: its parts stay as kept.
        for part in eight_families + 1..=eight_families + 2 {
            assert_eq!(
                changed_kept[&part], first_kept[&part],
                "node-view part {part}"
            );
        }

        let _ = stop_tx.send(true);
        let _ = server.await;
    }
}
