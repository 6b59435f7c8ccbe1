//! ```sh
//! cargo build --release -p pullwatch-agent && cargo bench -p pullwatch-testbench --bench agent
//! ```
//!
//! The bench runs the release `pullwatch-agent` binary (found by
//! [`pullwatch_testbench::workspace_binary`], or `$PULLWATCH_AGENT_BIN`): build it first.
//! It lives in the test bench because it also starts the aggregator's agent hub, and the
//! agent crate does not depend on the aggregator.
//!
//! In one run, against one real `docker-registry` and one real containerd (the test
//! bench, temp dirs, loopback only), with `bench/app:v1` pushed and pulled once so the
//! node holds it:
//!
//! 1. baseline: a direct `HEAD /v2/bench/app/manifests/v1` from a plain hyper client
//!    (keep-alive), sequential; also the same on a fresh connection per request, for
//!    context (containerd's CRI builds a new transport for every PullImage);
//! 2. the agent's check through CRI in `pull` mode (ImageStatus, keyring, PullImage,
//!    which for a present image is one manifest `HEAD`), sequential, in-process, as
//!    a ratio to the baseline's median and p90. The rounds of (1) and (2) are
//!    interleaved so drift on a shared machine hits both alike. Context printed with
//!    it: where the time goes (mean ImageStatus and PullImage from the agent's CRI
//!    metrics, containerd's CPU per check, the disk's fdatasync latency) and how many
//!    checks per second this node sustains at concurrency 4 and 16;
//!    2b: the agent's default mode as `pullwatch-agent run` configures it: the runtime's
//!    confirmation (a `PullImage` by digest, which commits containerd's metadata store)
//!    stands for `--blob-check-interval` (12 h), so in steady state a check of a held
//!    image is its walk of the pull path along the node's route (one manifest `HEAD`,
//!    the documents kept) with no runtime write: latency as a ratio to the same
//!    baseline, interleaved with it, and the runtime's `PullImage` calls and the
//!    registry requests per check counted;
//! 3. the real `pullwatch-agent run` binary in session with the aggregator's agent hub
//!    (TLS, shared token, as the Helm chart runs it): VmRSS idle, then while the hub
//!    dispatches checks for 10 s at half the node's measured capacity (no backlog) and
//!    at 100/s (the brief's rate; on a node that cannot keep up the backlog queues at
//!    the hub, which bounds each node's concurrency), the ratios load/idle and the
//!    achieved rates; then the end-to-end dispatch latency (hub -> agent -> CRI ->
//!    registry -> hub) against the same baseline.
//!
//! Needs the Debian packages `containerd runc docker-registry skopeo openssl` and root
//! (containerd). Every wait is bounded; the whole run is capped at [`BENCH_TIMEOUT`].

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pullwatch::CheckMode;
use pullwatch::proto::{CheckTask, Status};
use pullwatch_agent::check::{CheckOptions, Checker};
use pullwatch_agent::metrics::AgentMetrics;
use pullwatch_aggregator::agents::server::{self as agent_server, AgentServerConfig};
use pullwatch_aggregator::agents::{AgentHub, HubConfig};
use pullwatch_testbench::{
    Containerd, ContainerdOptions, ImageFormat, LOOPBACK_SANS, MANIFEST_ACCEPT, Registry,
    RegistryOptions, TestCa, free_port, process_status_kib, push_image,
};
use tokio::task::JoinSet;

#[path = "../../agent/tests/common/mod.rs"]
mod common;
use common::NodeSetup;

/// Sequential samples per latency series.
const N: usize = 200;
/// Unmeasured requests/checks before the first round of each series.
const WARMUP: usize = 20;
/// The series are interleaved in this many rounds of `N / ROUNDS`.
const ROUNDS: usize = 4;
/// The hub's dispatch rate and how long it is held.
const LOAD_RATE: u32 = 100;
const LOAD_DURATION: Duration = Duration::from_secs(10);
/// How long the agent sits registered and idle before its idle RSS is taken.
const IDLE_SETTLE: Duration = Duration::from_secs(5);
/// RSS sampling period.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Upper bound for checks still running when the load window closes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// fdatasync timings, spread over the rounds.
const FSYNC_SAMPLES: usize = 48;
/// Concurrency levels of the in-process capacity probe (4 is the agent's default).
const CAPACITY_CONCURRENCY: [usize; 2] = [4, 16];
/// Checks per capacity level.
const CAPACITY_CHECKS: usize = 200;
/// Upper bound for the whole bench.
const BENCH_TIMEOUT: Duration = Duration::from_secs(300);

const REPO: &str = "bench/app";
const TAG: &str = "v1";
const TOKEN: &str = "bench-shared-token";
const BASELINE_USER_AGENT: &str = "pullwatch-bench-baseline";

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    tokio::time::timeout(BENCH_TIMEOUT, bench())
        .await
        .map_err(|_| anyhow!("the bench did not finish within {BENCH_TIMEOUT:?}"))?
}

async fn bench() -> Result<()> {
    let registry = Registry::start(RegistryOptions::default()).await?;
    let image = push_image(&registry, REPO, TAG, ImageFormat::Oci).await?;
    let node = Containerd::start(ContainerdOptions::default()).await?;
    let kubelet_dir = node.dir().join("kubelet");
    std::fs::create_dir_all(&kubelet_dir)?;

    // Pull once, so the node holds the image.
    let metrics = Arc::new(AgentMetrics::new()?);
    let puller = checker(
        &node,
        CheckOptions {
            pull_absent_images: true,
            keep_pulled_images: true,
        },
        metrics.clone(),
    );
    let first = puller.check(&image.reference, CheckMode::Pull, &[]).await;
    ensure!(
        first.is_available() && first.image_present,
        "the first pull failed: {first:?}"
    );
    ensure!(
        puller.cri().image_status(&image.reference).await?.is_some(),
        "the node does not list the pulled image"
    );
    let version = puller.cri().version().await?;

    // The checker the agent runs with by default: no pulls of absent images.
    let agent = Arc::new(checker(&node, common::DEFAULT_OPTIONS, metrics.clone()));
    let containerd_pid = node
        .pid()
        .ok_or_else(|| anyhow!("containerd is not running"))?;
    let url = format!("http://{}/v2/{REPO}/manifests/{TAG}", registry.host());
    let keep_alive = hyper_client(true);
    let fresh = hyper_client(false);

    for _ in 0..WARMUP {
        head(&keep_alive, &url).await?;
        head(&fresh, &url).await?;
        agent_check(&agent, &image.reference).await?;
    }
    let log_before = registry.log().len();
    let cri_before = metrics.render();
    let mut containerd_cpu = Duration::ZERO;
    let mut base = Vec::with_capacity(N);
    let mut base_fresh = Vec::with_capacity(N);
    let mut checks = Vec::with_capacity(N);
    let mut fsyncs = Vec::new();
    for _ in 0..ROUNDS {
        fsyncs.extend(fsync_latency(node.dir(), FSYNC_SAMPLES / ROUNDS)?);
        for _ in 0..N / ROUNDS {
            base.push(head(&keep_alive, &url).await?);
        }
        for _ in 0..N / ROUNDS {
            base_fresh.push(head(&fresh, &url).await?);
        }
        let cpu_before = cpu_time(containerd_pid)?;
        for _ in 0..N / ROUNDS {
            checks.push(agent_check(&agent, &image.reference).await?);
        }
        containerd_cpu += cpu_time(containerd_pid)?.saturating_sub(cpu_before);
    }
    let cri_after = metrics.render();
    // What containerd sent the registry for those checks (baseline requests carry
    // their own User-Agent): one manifest HEAD per check, no blob.
    let log = registry.log();
    let during = log.get(log_before..).unwrap_or_default();
    let runtime_lines = || during.lines().filter(|l| !l.contains(BASELINE_USER_AGENT));
    let runtime_heads = runtime_lines()
        .filter(|l| l.contains(&format!("\"HEAD /v2/{REPO}/manifests/{TAG}")))
        .count();
    let runtime_blobs = runtime_lines().filter(|l| l.contains("/blobs/")).count();
    let runtime_gets = runtime_lines().filter(|l| l.contains("\"GET /v2/")).count();

    let base = Stats::of(base);
    let base_fresh = Stats::of(base_fresh);
    let checks = Stats::of(checks);
    let image_status = cri_mean(&cri_before, &cri_after, "ImageStatus")?;
    let pull_image = cri_mean(&cri_before, &cri_after, "PullImage")?;
    let mut capacity = Vec::new();
    for concurrency in CAPACITY_CONCURRENCY {
        capacity.push((
            concurrency,
            check_capacity(&agent, &image.reference, concurrency).await?,
        ));
    }
    let amortized = amortized_series(
        &node,
        &registry,
        &image.reference,
        &keep_alive,
        &url,
        metrics.clone(),
    )
    .await?;
    let fsync = Stats::of(fsyncs).median;
    println!(
        "pullwatch-agent bench: {} {} over CRI, docker-registry on {}, image {} held by the node",
        version.runtime_name,
        version.runtime_version,
        registry.host(),
        image.reference
    );
    println!();
    println!(
        "1+2. latency, sequential, N={N} per series after {WARMUP} warm-up, interleaved in {ROUNDS} rounds"
    );
    println!(
        "  {:<52} {:>13} {:>13}",
        "series (ratio to baseline)", "median", "p90"
    );
    row("baseline: direct HEAD, hyper keep-alive", &base, &base);
    row(
        "  context: direct HEAD, new connection each",
        &base_fresh,
        &base,
    );
    row(
        "agent check via CRI, mode pull, present image",
        &checks,
        &base,
    );
    println!(
        "  headline: agent check / direct HEAD = {:.1}x median, {:.1}x p90",
        checks.median / base.median,
        checks.p90 / base.p90
    );
    println!(
        "  registry saw from containerd during the {} checks: {} manifest HEADs, {} GETs, {} blob requests",
        checks.n, runtime_heads, runtime_gets, runtime_blobs
    );
    println!(
        "  (absolute, for reference: baseline median {}, p90 {}; agent median {}, p90 {})",
        ms(base.median),
        ms(base.p90),
        ms(checks.median),
        ms(checks.p90)
    );
    println!(
        "  where a check's time goes (means over the {} checks, as ratios to the baseline median): CRI ImageStatus {:.1}x, CRI PullImage {:.1}x; containerd CPU per check {:.1}x",
        checks.n,
        image_status / base.median,
        pull_image / base.median,
        containerd_cpu.as_secs_f64() / checks.n as f64 / base.median
    );
    println!(
        "  context: one 4 KiB write + fdatasync on containerd's disk (median of {FSYNC_SAMPLES}, interleaved) takes {:.2}x the baseline median ({}); a present-image PullImage lasts as long as {:.1} of them (containerd commits its metadata DB several times per pull)",
        fsync / base.median,
        ms(fsync),
        pull_image / fsync
    );
    let (amortized_checks, amortized_base, pulls, agent_requests) = amortized;
    println!(
        "2b. default mode, runtime confirmation amortized over --blob-check-interval (12h), N={N} interleaved with the baseline"
    );
    row(
        "baseline: direct HEAD, hyper keep-alive",
        &amortized_base,
        &amortized_base,
    );
    row(
        "agent check, default mode, held image, steady state",
        &amortized_checks,
        &amortized_base,
    );
    println!(
        "  headline: agent check / direct HEAD = {:.1}x median, {:.1}x p90 (goal <= 2x); runtime PullImage calls during the {} checks: {pulls} (no runtime write per check); registry requests per check: {:.2}",
        amortized_checks.median / amortized_base.median,
        amortized_checks.p90 / amortized_base.p90,
        amortized_checks.n,
        agent_requests as f64 / amortized_checks.n as f64
    );
    let capacity_text: Vec<String> = capacity
        .iter()
        .map(|(c, rate)| format!("{rate:.1}/s at concurrency {c}"))
        .collect();
    println!(
        "  check capacity of this node (in-process, {CAPACITY_CHECKS} checks per level): {}",
        capacity_text.join(", ")
    );
    println!();

    let capacity = capacity.first().map_or(1.0, |(_, rate)| *rate);
    rss_under_load(
        &node,
        &kubelet_dir,
        &agent,
        &image.reference,
        &base,
        capacity,
    )
    .await
}

/// The default mode as `run` configures it (runtime confirmation once per 12 h):
/// latency series of steady-state checks and of the baseline, interleaved; the
/// `PullImage` calls and registry requests (all of them, containerd's and the agent's)
/// during the checks.
async fn amortized_series(
    node: &Containerd,
    registry: &Registry,
    image: &str,
    client: &Client<HttpConnector, Empty<Bytes>>,
    url: &str,
    metrics: Arc<AgentMetrics>,
) -> Result<(Stats, Stats, u64, usize)> {
    let agent = checker(node, common::DEFAULT_OPTIONS, metrics.clone())
        .with_runtime_confirmation(pullwatch::registry::pull_path::DEFAULT_BLOB_CHECK_INTERVAL);
    // The first check confirms through the runtime; the following ones are steady state.
    let first = agent.check(image, CheckMode::Auto, &[]).await;
    ensure!(
        first.is_available() && first.mode == CheckMode::Pull,
        "{first:?}"
    );
    for _ in 0..WARMUP {
        ensure!(
            agent
                .check(image, CheckMode::Auto, &[])
                .await
                .is_available()
        );
    }
    let pulls = |text: &str| -> u64 {
        let prefix =
            "pullwatch_agent_cri_request_duration_seconds_count{code=\"OK\",rpc=\"PullImage\"} ";
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    let pulls_before = pulls(&metrics.render());
    let mut checks = Vec::with_capacity(N);
    let mut base = Vec::with_capacity(N);
    let mut agent_requests = 0;
    for _ in 0..ROUNDS {
        for _ in 0..N / ROUNDS {
            base.push(head(client, url).await?);
        }
        let start = registry.log().len();
        for _ in 0..N / ROUNDS {
            let started = Instant::now();
            let report = agent.check(image, CheckMode::Auto, &[]).await;
            checks.push(started.elapsed());
            ensure!(report.is_available(), "{report:?}");
        }
        agent_requests += registry.log()[start..]
            .lines()
            .filter(|l| l.contains(" - - [") && l.contains(" /v2/"))
            .count();
    }
    let pulls = pulls(&metrics.render()) - pulls_before;
    Ok((Stats::of(checks), Stats::of(base), pulls, agent_requests))
}

/// A checker wired to `node` as the agent's tests wire it (the agent's own harness,
/// agent/tests/common): a hermetic docker config search path (the kubelet root dir
/// only), `metrics` observing every CRI call.
fn checker(node: &Containerd, options: CheckOptions, metrics: Arc<AgentMetrics>) -> Checker {
    common::checker(
        node,
        NodeSetup {
            options: Some(options),
            observer: Some(metrics),
            ..Default::default()
        },
    )
}

fn hyper_client(keep_alive: bool) -> Client<HttpConnector, Empty<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let mut builder = Client::builder(TokioExecutor::new());
    if !keep_alive {
        builder.pool_max_idle_per_host(0);
    }
    builder.build(connector)
}

/// One `HEAD` of the manifest; its latency.
async fn head(client: &Client<HttpConnector, Empty<Bytes>>, url: &str) -> Result<Duration> {
    let request = http::Request::head(url)
        .header(http::header::ACCEPT, MANIFEST_ACCEPT)
        .header(http::header::USER_AGENT, BASELINE_USER_AGENT)
        .body(Empty::<Bytes>::new())?;
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .map_err(|_| anyhow!("HEAD {url} timed out"))??;
    let elapsed = started.elapsed();
    ensure!(
        response.status().is_success(),
        "HEAD {url}: {}",
        response.status()
    );
    Ok(elapsed)
}

/// One agent check in `pull` mode; its latency.
async fn agent_check(checker: &Checker, image: &str) -> Result<Duration> {
    let started = Instant::now();
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        checker.check(image, CheckMode::Pull, &[]),
    )
    .await
    .map_err(|_| anyhow!("check of {image} timed out"))?;
    let elapsed = started.elapsed();
    ensure!(
        report.is_available() && report.mode == CheckMode::Pull,
        "check of {image}: {report:?}"
    );
    Ok(elapsed)
}

/// Checks per second that `concurrency` parallel in-process checks sustain.
async fn check_capacity(checker: &Arc<Checker>, image: &str, concurrency: usize) -> Result<f64> {
    let started = Instant::now();
    let mut running: JoinSet<Result<Duration>> = JoinSet::new();
    let mut issued = 0;
    let mut done = 0;
    while done < CAPACITY_CHECKS {
        while issued < CAPACITY_CHECKS && running.len() < concurrency {
            let checker = checker.clone();
            let image = image.to_string();
            running.spawn(async move { agent_check(&checker, &image).await });
            issued += 1;
        }
        match running.join_next().await {
            Some(joined) => {
                joined??;
                done += 1;
            }
            None => break,
        }
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// `n` timings of a 4 KiB write plus `fdatasync` in `dir` (what a bolt commit pays).
fn fsync_latency(dir: &Path, n: usize) -> Result<Vec<Duration>> {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let block = [0u8; 4096];
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        samples.push(started.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(samples)
}

/// The mean latency (seconds) of successful CRI calls to `rpc` between two renders of
/// the agent's metrics.
fn cri_mean(before: &str, after: &str, rpc: &str) -> Result<f64> {
    let value = |text: &str, suffix: &str| -> f64 {
        let prefix = format!(
            "pullwatch_agent_cri_request_duration_seconds_{suffix}{{code=\"OK\",rpc=\"{rpc}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let count = value(after, "count") - value(before, "count");
    ensure!(count > 0.0, "no successful {rpc} calls were recorded");
    Ok((value(after, "sum") - value(before, "sum")) / count)
}

/// User plus system CPU time of a process so far.
fn cpu_time(pid: u32) -> Result<Duration> {
    Ok(Duration::from_secs_f64(
        pullwatch_testbench::process_cpu_seconds(pid)?,
    ))
}

/// Median and p90 (nearest rank) of a series.
struct Stats {
    n: usize,
    median: f64,
    p90: f64,
}

impl Stats {
    fn of(samples: Vec<Duration>) -> Stats {
        let mut secs: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
        secs.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let i = ((q * secs.len() as f64).ceil() as usize).clamp(1, secs.len()) - 1;
            secs[i]
        };
        Stats {
            n: secs.len(),
            median: rank(0.5),
            p90: rank(0.9),
        }
    }
}

fn row(name: &str, stats: &Stats, base: &Stats) {
    println!(
        "  {name:<52} {:>12.2}x {:>12.2}x",
        stats.median / base.median,
        stats.p90 / base.p90
    );
}

fn ms(secs: f64) -> String {
    format!("{:.3} ms", secs * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn rss_kib(pid: u32) -> Result<u64> {
    process_status_kib(pid, "VmRSS:")
}

/// Samples VmRSS every [`SAMPLE_EVERY`] for `window`.
async fn sample_rss(pid: u32, window: Duration) -> Result<Vec<u64>> {
    let until = Instant::now() + window;
    let mut samples = Vec::new();
    while Instant::now() < until {
        tokio::time::sleep(SAMPLE_EVERY).await;
        samples.push(rss_kib(pid)?);
    }
    Ok(samples)
}

fn median_kib(samples: &[u64]) -> u64 {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// The agent process; killed on drop.
struct AgentProcess {
    child: tokio::process::Child,
    pid: u32,
    stderr_path: PathBuf,
}

impl AgentProcess {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    async fn terminate(mut self) -> Result<()> {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()?;
        ensure!(status.success(), "kill -TERM {} failed", self.pid);
        let exited = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .map_err(|_| anyhow!("the agent did not stop on SIGTERM"))??;
        ensure!(
            exited.success(),
            "the agent exited with {exited}:\n{}",
            self.stderr()
        );
        Ok(())
    }
}

async fn rss_under_load(
    node: &Containerd,
    kubelet_dir: &Path,
    checker: &Checker,
    image: &str,
    base: &Stats,
    capacity: f64,
) -> Result<()> {
    // The aggregator side, as the chart runs it: TLS and a shared token.
    let dir = tempfile::Builder::new()
        .prefix("pullwatch-agent-bench-")
        .tempdir()?;
    let ca = TestCa::new()?;
    let (cert, key) = ca.issue_server_cert(LOOPBACK_SANS)?;
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n"))?;
    let hub = AgentHub::new(HubConfig {
        tls: true,
        task_timeout: DRAIN_TIMEOUT,
        ..HubConfig::default()
    });
    let max_concurrent = hub.config().max_concurrent_checks;
    let server = agent_server::start(
        hub.clone(),
        AgentServerConfig {
            listen: "127.0.0.1:0".parse()?,
            tls: Some((cert, key)),
            shared_token_file: Some(token.clone()),
            insecure_plaintext_tokens: false,
        },
    )
    .await?;

    let stderr_path = dir.path().join("agent.log");
    let metrics_port = free_port();
    let binary = pullwatch_testbench::workspace_binary("pullwatch-agent")?;
    let child = tokio::process::Command::new(&binary)
        .args(node.agent_run_args(
            server.local_addr(),
            ca.ca_cert_path(),
            &token,
            kubelet_dir,
            ([127, 0, 0, 1], metrics_port).into(),
        ))
        .args([
            "--node-name=bench-node".to_string(),
            "--mode=auto".to_string(),
            format!("--containerd-config={}", node.config_path().display()),
            "--log-level=info".to_string(),
        ])
        .env_clear()
        .env("HOME", dir.path())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path)?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child.id().ok_or_else(|| anyhow!("the agent has no pid"))?;
    let agent = AgentProcess {
        child,
        pid,
        stderr_path,
    };

    let deadline = Instant::now() + Duration::from_secs(15);
    while hub.nodes() != ["bench-node"] {
        if Instant::now() >= deadline {
            bail!("the agent did not register:\n{}", agent.stderr());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let registered = hub
        .agents()
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no agent"))?;
    ensure!(
        registered.images.contains(image),
        "the agent did not report the held image: {:?}",
        registered.images
    );

    // Idle: registered, heartbeats only.
    let idle_samples = sample_rss(pid, IDLE_SETTLE).await?;
    let idle = median_kib(&idle_samples);

    let task = CheckTask {
        image: image.to_string(),
        mode: pullwatch::proto::CheckMode::Auto as i32,
        ..Default::default()
    };
    let containerd_pid = node
        .pid()
        .ok_or_else(|| anyhow!("containerd is not running"))?;
    // First a rate this node sustains (half its measured capacity), so RSS under load
    // is seen without a backlog; then the 100/s of the brief.
    let sustained_rate = ((capacity / 2.0).floor() as u32).clamp(1, LOAD_RATE);
    let sustained = load(&hub, pid, containerd_pid, &task, sustained_rate).await?;
    let full = load(&hub, pid, containerd_pid, &task, LOAD_RATE).await?;
    let hwm = process_status_kib(pid, "VmHWM:")?;

    // After the load: idle again.
    let after = median_kib(&sample_rss(pid, Duration::from_secs(3)).await?);

    // End-to-end: sequential dispatches through the hub to the process, interleaved
    // with in-process checks against the same containerd (the session's own cost).
    let mut round_trips = Vec::with_capacity(N);
    let mut in_process = Vec::with_capacity(N);
    for _ in 0..WARMUP {
        dispatch_once(&hub, &task).await?;
    }
    for _ in 0..ROUNDS {
        for _ in 0..N / ROUNDS {
            round_trips.push(dispatch_once(&hub, &task).await?);
        }
        for _ in 0..N / ROUNDS {
            in_process.push(agent_check(checker, image).await?);
        }
    }
    let round_trips = Stats::of(round_trips);
    let in_process = Stats::of(in_process);

    let agent_metrics = http_get(metrics_port, "/metrics").await?;
    let checks_total = agent_metrics
        .lines()
        .find(|l| {
            l.starts_with("pullwatch_agent_checks_total{")
                && l.contains("mode=\"pull\"")
                && l.contains("status=\"available\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    let version = env!("CARGO_PKG_VERSION");
    agent.terminate().await?;
    server.stop().await;

    println!(
        "3. pullwatch-agent {version} run (this build's binary) in session with the agent hub over TLS; concurrency {max_concurrent}, mode auto"
    );
    println!(
        "  idle RSS (median of {} samples over {:?}, registered): {}",
        idle_samples.len(),
        IDLE_SETTLE,
        mib(idle)
    );
    for run in [&sustained, &full] {
        run.print(idle, base);
    }
    println!(
        "  headline: RSS load/idle = {:.2}x at {LOAD_RATE} checks/s (peak; achieved {:.1}/s), {:.2}x at {}/s (achieved {:.1}/s)",
        full.peak as f64 / idle as f64,
        full.achieved(),
        sustained.peak as f64 / idle as f64,
        sustained.rate,
        sustained.achieved()
    );
    println!(
        "  after the load, idle again: {} ({:.2}x idle); VmHWM {} ({:.2}x idle)",
        mib(after),
        after as f64 / idle as f64,
        mib(hwm),
        hwm as f64 / idle as f64
    );
    println!(
        "  the agent's /metrics: pullwatch_agent_checks_total{{mode=\"pull\",status=\"available\"}} {checks_total}"
    );
    println!(
        "  end-to-end dispatch (hub -> agent process -> CRI -> registry -> hub), sequential N={}, interleaved with in-process checks: {:.2}x median, {:.2}x p90 of the in-process check; {:.1}x median, {:.1}x p90 of the direct HEAD ({} / {})",
        round_trips.n,
        round_trips.median / in_process.median,
        round_trips.p90 / in_process.p90,
        round_trips.median / base.median,
        round_trips.p90 / base.p90,
        ms(round_trips.median),
        ms(round_trips.p90)
    );
    for run in [&sustained, &full] {
        ensure!(
            run.failed == 0 && run.completed.len() == run.issued,
            "{} of {} checks at {}/s were not available",
            run.failed,
            run.issued,
            run.rate
        );
    }
    Ok(())
}

/// One check dispatched by the hub and answered by the agent process; its latency.
async fn dispatch_once(hub: &AgentHub, task: &CheckTask) -> Result<Duration> {
    let started = Instant::now();
    let done = hub.dispatch("bench-node", task.clone()).await?;
    let elapsed = started.elapsed();
    // As the chart runs it, the runtime confirms a held image once per
    // --blob-check-interval (mode pull); in between the walk answers (mode resolve).
    ensure!(
        done.result.status == Status::Available as i32
            && [
                pullwatch::proto::CheckMode::Pull as i32,
                pullwatch::proto::CheckMode::Resolve as i32
            ]
            .contains(&done.result.mode),
        "{:?}",
        done.result
    );
    Ok(elapsed)
}

/// One load phase: what was issued, what came back, and the agent's RSS meanwhile.
struct LoadRun {
    rate: u32,
    issued: usize,
    issued_in: Duration,
    /// Completion times, relative to the start, of the checks that were available
    /// (mode pull, or resolve between the runtime's confirmations).
    completed: Vec<Duration>,
    failed: usize,
    /// VmRSS samples (KiB) every [`SAMPLE_EVERY`] while issuing and draining.
    rss: Vec<u64>,
    peak: u64,
    /// Most tasks outstanding for the node at a sample: sent to the agent (at most its
    /// concurrency) or queued at the hub for one of the node's slots.
    backlog: usize,
    agent_cpu: Duration,
    containerd_cpu: Duration,
}

impl LoadRun {
    /// Checks completed per second, from the first dispatch to the last answer.
    fn achieved(&self) -> f64 {
        let last = self.completed.iter().max().copied().unwrap_or_default();
        self.completed.len() as f64 / last.as_secs_f64().max(f64::EPSILON)
    }

    fn print(&self, idle: u64, base: &Stats) {
        let within = self
            .completed
            .iter()
            .filter(|at| **at <= self.issued_in)
            .count();
        let last = self.completed.iter().max().copied().unwrap_or_default();
        println!(
            "  at {}/s for {:?}: RSS peak {} ({:.2}x idle), median {} ({:.2}x idle) of {} samples while issuing and draining",
            self.rate,
            LOAD_DURATION,
            mib(self.peak),
            self.peak as f64 / idle as f64,
            mib(median_kib(&self.rss)),
            median_kib(&self.rss) as f64 / idle as f64,
            self.rss.len()
        );
        println!(
            "    issued {} in {:.2} s ({:.1}/s); {} available (mode pull or resolve), {} not; {within} answered within the issue window ({:.1}/s); last answer at {:.2} s ({:.1}/s achieved)",
            self.issued,
            self.issued_in.as_secs_f64(),
            self.issued as f64 / self.issued_in.as_secs_f64(),
            self.completed.len(),
            self.failed,
            within as f64 / self.issued_in.as_secs_f64(),
            last.as_secs_f64(),
            self.achieved()
        );
        println!(
            "    up to {} tasks outstanding for the node (sent to the agent, or queued at the hub for a slot); CPU per check: agent {:.2}x, containerd {:.2}x the baseline HEAD median",
            self.backlog,
            self.agent_cpu.as_secs_f64() / self.issued as f64 / base.median,
            self.containerd_cpu.as_secs_f64() / self.issued as f64 / base.median
        );
    }
}

/// The hub dispatches `task` to the agent `rate` times a second (missed ticks caught
/// up) for [`LOAD_DURATION`], then waits (bounded) for every answer.
async fn load(
    hub: &AgentHub,
    pid: u32,
    containerd_pid: u32,
    task: &CheckTask,
    rate: u32,
) -> Result<LoadRun> {
    let mut dispatches: JoinSet<Result<(Duration, bool)>> = JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let issued = (LOAD_DURATION.as_secs_f64() * f64::from(rate)).round() as usize;
    let agent_cpu_before = cpu_time(pid)?;
    let containerd_cpu_before = cpu_time(containerd_pid)?;
    let mut rss = Vec::new();
    let mut backlog = 0usize;
    let started = Instant::now();
    let mut next_sample = started + SAMPLE_EVERY;
    for _ in 0..issued {
        ticker.tick().await;
        let dispatcher = hub.clone();
        let task = task.clone();
        dispatches.spawn(async move {
            let done = dispatcher.dispatch("bench-node", task).await?;
            let ok = done.result.status == Status::Available as i32
                && [
                    pullwatch::proto::CheckMode::Pull as i32,
                    pullwatch::proto::CheckMode::Resolve as i32,
                ]
                .contains(&done.result.mode);
            Ok((started.elapsed(), ok))
        });
        if Instant::now() >= next_sample {
            rss.push(rss_kib(pid)?);
            let in_flight = hub.agents().first().map_or(0, |a| a.in_flight);
            backlog = backlog.max(in_flight);
            next_sample += SAMPLE_EVERY;
        }
    }
    let issued_in = started.elapsed();
    let mut completed = Vec::with_capacity(issued);
    let mut failed = 0usize;
    // Drain the backlog, still sampling: the peak comes when the most tasks are queued.
    let drain = async {
        let mut sampler = tokio::time::interval(SAMPLE_EVERY);
        sampler.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                joined = dispatches.join_next() => match joined {
                    None => break,
                    Some(joined) => match joined? {
                        Ok((at, true)) => completed.push(at),
                        Ok((_, false)) => failed += 1,
                        Err(error) => return Err(error.context("dispatching a check")),
                    },
                },
                _ = sampler.tick() => rss.push(rss_kib(pid)?),
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(DRAIN_TIMEOUT, drain)
        .await
        .map_err(|_| anyhow!("checks still running {DRAIN_TIMEOUT:?} after the load window"))??;
    rss.push(rss_kib(pid)?);
    Ok(LoadRun {
        rate,
        issued,
        issued_in,
        completed,
        failed,
        peak: rss.iter().copied().max().unwrap_or_default(),
        rss,
        backlog,
        agent_cpu: cpu_time(pid)?.saturating_sub(agent_cpu_before),
        containerd_cpu: cpu_time(containerd_pid)?.saturating_sub(containerd_cpu_before),
    })
}

async fn http_get(port: u16, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut out = String::new();
        stream.read_to_string(&mut out).await?;
        anyhow::Ok(out)
    };
    tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .map_err(|_| anyhow!("GET {path} on the agent timed out"))?
}
