//! `cargo bench -p pullwatch-aggregator --bench check_throughput`
//!
//! In one run, against one local docker-registry holding 2,000 tags:
//! - baseline: raw `HEAD /v2/<repo>/manifests/<tag>` throughput from a plain hyper
//!   client at concurrency C;
//! - pullwatch: checker throughput for the same 2,000 distinct references at the
//!   same concurrency, limits opened up so they do not cap it;
//!
//! and prints pullwatch / baseline (target >= 0.9), pullwatch measured in steady state
//! (every reference checked once before: the pull path walked, its documents kept).
//! Registry requests per check, counted in the registry's own access log: for those
//! 2,000 tags (one image) in the first pass and in steady state; and for 40 distinct
//! multi-arch images of 3 layers each, in the first pass, in steady state, and in a
//! pass where `--blob-check-interval` has expired, with the amortized figure at the
//! default intervals. Then the peak RSS growth per 10,000 container references taken
//! through inventory, index, store and a streamed scrape.

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pullwatch::registry::pull_path::{DEFAULT_BLOB_CHECK_INTERVAL, WalkSettings};
use pullwatch::{CheckOutcome, CheckStatus, ImageReference};
use pullwatch_aggregator::checker::limits::RegistryLimits;
use pullwatch_aggregator::checker::{CentralChecker, CheckerConfig};
use pullwatch_aggregator::index::{CheckKey, ImageIndex, IndexOptions};
use pullwatch_aggregator::inventory::{ContainerImage, Inventory, Workload, WorkloadKind};
use pullwatch_aggregator::metrics::Metrics;
use pullwatch_aggregator::pipeline::Pipeline;
use pullwatch_testbench::{Registry, RegistryOptions, push_tags, raw};

const TAGS: usize = 2_000;
const CONCURRENCY: usize = 32;
const ROUNDS: usize = 3;
const MANIFEST_ACCEPT: &str = pullwatch::registry::MANIFEST_ACCEPT;
/// Distinct images for the cost of a first pass.
const DISTINCT: usize = 40;
const LAYERS: usize = 3;
/// The default --check-interval, for the amortized figure.
const CHECK_INTERVAL: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Memory first, so the high-water mark is not already raised by the throughput rounds.
    let (rss_delta, refs) = rss_per_references(10_000).await?;

    let registry = Registry::start(RegistryOptions::default()).await?;
    let tags: Vec<String> = (0..TAGS).map(|i| format!("t{i}")).collect();
    push_tags(&registry, "bench/app", &tags).await?;
    let host = registry.host();

    // Interleave rounds so drift on a shared machine affects both sides alike.
    let mut raw_best = 0.0f64;
    let mut pullwatch_best = 0.0f64;
    let mut tag_costs = (0.0, 0.0);
    for _ in 0..ROUNDS {
        raw_best = raw_best.max(raw_head_throughput(&host, &tags).await?);
        let (throughput, first, steady) = pullwatch_throughput(&registry, &tags).await?;
        pullwatch_best = pullwatch_best.max(throughput);
        tag_costs = (first, steady);
    }
    println!("distinct references: {TAGS}, concurrency: {CONCURRENCY}, best of {ROUNDS} rounds");
    println!("baseline raw HEAD throughput:        {raw_best:.0} checks/s");
    println!(
        "pullwatch check throughput:          {pullwatch_best:.0} checks/s (steady state, --check-depth blobs)"
    );
    println!(
        "registry requests per check, {TAGS} tags of one image: first pass {:.3}, steady state {:.3}",
        tag_costs.0, tag_costs.1
    );
    let (first, steady, reverify) = distinct_image_costs(&registry).await?;
    let checks_per_interval =
        DEFAULT_BLOB_CHECK_INTERVAL.as_secs_f64() / CHECK_INTERVAL.as_secs_f64();
    let amortized = steady + (reverify - steady) / checks_per_interval;
    println!(
        "registry requests per check, {DISTINCT} distinct indexes (amd64+arm64, {LAYERS} layers), walked for linux/amd64:"
    );
    println!(
        "  first pass:                        {first:.2} (HEAD, index, child, config, one ranged GET per layer)"
    );
    println!("  steady state:                      {steady:.2}");
    println!(
        "  --blob-check-interval expired:     {reverify:.2} (HEAD, child HEAD, config and layers' first byte)"
    );
    println!(
        "  amortized at --check-interval 5m, --blob-check-interval 12h: {amortized:.3} (goal <= 1.1) {}",
        if amortized <= 1.1 { "OK" } else { "ABOVE GOAL" }
    );
    let ratio = pullwatch_best / raw_best;
    println!(
        "ratio pullwatch / raw HEAD:          {ratio:.2} (target >= 0.90) {}",
        if ratio >= 0.9 { "OK" } else { "BELOW TARGET" }
    );
    println!(
        "peak RSS growth for {refs} container references: {:.1} MiB ({:.0} bytes per reference)",
        rss_delta as f64 / (1024.0 * 1024.0),
        rss_delta as f64 / refs as f64
    );
    Ok(())
}

async fn raw_head_throughput(host: &str, tags: &[String]) -> anyhow::Result<f64> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CONCURRENCY)
        .build_http();
    let started = Instant::now();
    let ok = futures::stream::iter(tags)
        .map(|tag| {
            let client = client.clone();
            async move {
                let request =
                    http::Request::head(format!("http://{host}/v2/bench/app/manifests/{tag}"))
                        .header(http::header::ACCEPT, MANIFEST_ACCEPT)
                        .body(Empty::<Bytes>::new())
                        .ok()?;
                let response = client.request(request).await.ok()?;
                response.status().is_success().then_some(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .filter_map(|r| async move { r })
        .count()
        .await;
    anyhow::ensure!(
        ok == tags.len(),
        "raw HEAD: only {ok} of {} succeeded",
        tags.len()
    );
    Ok(tags.len() as f64 / started.elapsed().as_secs_f64())
}

/// Requests in the registry's access log since byte `start`.
fn registry_requests(registry: &Registry, start: usize) -> usize {
    registry.log()[start..]
        .lines()
        .filter(|l| l.contains(" - - [") && l.contains(" /v2/"))
        .count()
}

/// The checker settings of every pass: plain HTTP, `CONCURRENCY` checks and registry
/// connections, no request rate limit.
fn bench_checker_config() -> CheckerConfig {
    CheckerConfig {
        allow_plain_http: true,
        max_concurrent_checks: CONCURRENCY,
        registry_limits: RegistryLimits {
            max_concurrency: CONCURRENCY,
            requests_per_second: NonZeroU32::new(1_000_000).unwrap_or(NonZeroU32::MAX),
        },
        request_timeout: Duration::from_secs(10),
        ..CheckerConfig::default()
    }
}

/// Steady-state throughput over `tags`, and registry requests per check in the first
/// pass and in the timed (steady) pass.
async fn pullwatch_throughput(
    registry: &Registry,
    tags: &[String],
) -> anyhow::Result<(f64, f64, f64)> {
    let host = registry.host();
    let metrics = Metrics::new(false)?;
    let checker = Arc::new(CentralChecker::new(
        &bench_checker_config(),
        metrics.checker.clone(),
    )?);
    let keys: Vec<CheckKey> = tags
        .iter()
        .map(|tag| {
            Ok(CheckKey::new(
                ImageReference::parse(&format!("{host}/bench/app:{tag}"))?,
                Arc::from(Vec::new()),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    // How many of `keys` one concurrent pass finds available.
    let available_in_a_pass = || {
        futures::stream::iter(&keys)
            .map(|key| {
                let checker = checker.clone();
                async move { checker.check(key).await }
            })
            .buffer_unordered(CONCURRENCY)
            .filter(|o: &CheckOutcome| futures::future::ready(o.status == CheckStatus::Available))
            .count()
    };
    // A first pass, as a long-running process has made before its steady state.
    let start = registry.log().len();
    let first = available_in_a_pass().await;
    anyhow::ensure!(first == keys.len(), "first pass: only {first} available");
    let first_cost = registry_requests(registry, start) as f64 / keys.len() as f64;
    let start = registry.log().len();
    let started = Instant::now();
    let available = available_in_a_pass().await;
    anyhow::ensure!(
        available == keys.len(),
        "pullwatch: only {available} of {} available",
        keys.len()
    );
    let throughput = keys.len() as f64 / started.elapsed().as_secs_f64();
    let steady_cost = registry_requests(registry, start) as f64 / keys.len() as f64;
    Ok((throughput, first_cost, steady_cost))
}

/// Pushes `DISTINCT` multi-arch images with `LAYERS` layers per platform; registry
/// requests per check in a first pass, a steady pass, and a pass after the blob check
/// interval expired.
async fn distinct_image_costs(registry: &Registry) -> anyhow::Result<(f64, f64, f64)> {
    let host = registry.host();
    let mut keys = Vec::new();
    for i in 0..DISTINCT {
        let repo = format!("distinct/app{i}");
        let mut entries = Vec::new();
        for arch in ["amd64", "arm64"] {
            let mut layers = Vec::new();
            let mut diff_ids = Vec::new();
            for l in 0..LAYERS {
                let (bytes, diff_id) = raw::layer(&format!("{repo} {arch} layer {l}"))?;
                raw::push_blob(registry, &repo, &bytes).await?;
                layers.push(raw::descriptor(raw::OCI_LAYER, &bytes));
                diff_ids.push(diff_id);
            }
            let ids: Vec<&str> = diff_ids.iter().map(String::as_str).collect();
            let config = raw::config(arch, &ids, &repo);
            raw::push_blob(registry, &repo, &config).await?;
            let config = raw::descriptor(raw::OCI_CONFIG, &config);
            let manifest = raw::manifest(raw::OCI_MANIFEST, config, layers);
            let body = serde_json::to_vec(&manifest)?;
            let digest = pullwatch_testbench::sha256_digest(&body);
            raw::put_document(registry, &repo, &digest, &manifest).await?;
            entries.push(raw::entry(&body, Some(("linux", arch))));
        }
        raw::put_document(registry, &repo, "v1", &raw::index(entries)).await?;
        keys.push(CheckKey::new(
            ImageReference::parse(&format!("{host}/{repo}:v1"))?,
            Arc::from(Vec::new()),
        ));
    }
    // Long enough for the first and steady passes, short enough to wait for.
    let expiry = Duration::from_secs(10);
    let metrics = Metrics::new(false)?;
    let config = CheckerConfig {
        walk: WalkSettings {
            blob_check_interval: expiry,
            ..WalkSettings::default()
        },
        platforms: vec!["linux/amd64".parse()?],
        ..bench_checker_config()
    };
    let checker = CentralChecker::new(&config, metrics.checker.clone())?;
    let pass = async || -> anyhow::Result<f64> {
        let start = registry.log().len();
        for key in &keys {
            let outcome = checker.check(key).await;
            anyhow::ensure!(outcome.is_available(), "{}", outcome.reason);
        }
        Ok(registry_requests(registry, start) as f64 / keys.len() as f64)
    };
    let first = pass().await?;
    let steady = pass().await?;
    tokio::time::sleep(expiry).await;
    let reverify = pass().await?;
    Ok((first, steady, reverify))
}

/// Peak RSS (VmHWM) growth while `references` container references go through
/// inventory, index, store and metrics. Outcomes are set directly: the registry
/// conversation is measured above, this measures what pullwatch keeps per reference.
async fn rss_per_references(references: usize) -> anyhow::Result<(u64, usize)> {
    let before = peak_rss_bytes()?;
    let mut inventory = Inventory::default();
    for i in 0..references / 2 {
        let (namespace, name) = (format!("team-{}", i % 200), format!("service-{i}"));
        let (namespace, name): (Arc<str>, Arc<str>) = (namespace.into(), name.into());
        let key = (WorkloadKind::Deployment, namespace.clone(), name.clone());
        inventory.workloads.insert(
            key,
            Workload {
                namespace,
                kind: WorkloadKind::Deployment,
                name,
                containers: (0..2)
                    .map(|c| ContainerImage {
                        container: format!("container-{c}").into(),
                        image: format!(
                            "registry.example.com:5000/org/service-{}:v{}",
                            i % 2_500,
                            c
                        )
                        .into(),
                    })
                    .collect(),
                pull_secrets: Vec::new(),
                service_account: "default".into(),
                enabled: true,
                platforms: Default::default(),
            },
        );
    }
    let options = IndexOptions {
        default_registry: "docker.io".into(),
        platforms: Vec::new(),
        schema1: None,
        mirrors: Default::default(),
        filters: Default::default(),
    };
    let index = ImageIndex::build(&inventory, &options);
    let metrics = Metrics::new(false)?;
    let checker = CentralChecker::new(&CheckerConfig::default(), metrics.checker.clone())?;
    let pipeline = Pipeline::new(checker, metrics, 1);
    // Record outcomes without network: the settled path takes the same store/metrics route.
    let settled = ImageIndex {
        checks: Default::default(),
        agent_targets: Default::default(),
        warnings: Default::default(),
        platforms: Default::default(),
        own_sources: Default::default(),
        walk_platforms: Vec::new(),
        walk_schema1: Vec::new(),
        settled: index
            .checks
            .values()
            .flatten()
            .map(|c| (c.clone(), CheckOutcome::available().into()))
            .collect(),
    };
    pipeline.run_cycle(&settled).await;
    let exported: BTreeSet<_> = pipeline.results().into_iter().map(|(c, _)| c).collect();
    anyhow::ensure!(
        exported.len() == references,
        "expected {references} references, got {}",
        exported.len()
    );
    // Scrape as the server does: a chunk at a time.
    let mut rendered = 0;
    let store = pipeline.store_snapshot();
    let mut at = pullwatch_aggregator::metrics::ScrapePosition::default();
    while let Some(chunk) = pipeline.render_metrics_chunk(&store, &mut at) {
        rendered += chunk?.len();
    }
    anyhow::ensure!(
        rendered > references * 8 * 50,
        "exposition unexpectedly small"
    );
    let after = peak_rss_bytes()?;
    drop((index, inventory));
    Ok((after.saturating_sub(before), references))
}

fn peak_rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/self/status"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("malformed VmHWM line"))?
        .parse()?;
    Ok(kib * 1024)
}
