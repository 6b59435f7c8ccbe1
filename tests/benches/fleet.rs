//! ```sh
//! cargo build --release -p pullwatch-aggregator && cargo bench -p pullwatch-testbench --bench fleet [-- 100 1000 5000]
//! ```
//!
//! A fleet of N node agents against the real release `pullwatch-aggregator serve`
//! binary (found by [`pullwatch_testbench::workspace_binary`], or
//! `$PULLWATCH_AGGREGATOR_BIN`): N simulated agents in this process
//! ([`pullwatch_testbench::fleet`]), one TLS connection each (throw-away CA, shared
//! token), speaking the real protocol (register with 50 held images, heartbeats, every
//! task answered at once), all on loopback. For each N (default 100, 1,000, 5,000):
//!
//! 1. connect storm: every agent connects at once to a fresh aggregator; how long
//!    until all registered, the worst `/healthz` and `/metrics` latency meanwhile
//!    (probed in turn every 50 ms from a thread of its own), and the kernel's
//!    listen-queue overflows (machine-wide);
//! 2. memory: the aggregator's RSS with the fleet connected (12 s after the storm)
//!    minus its RSS before, per agent; with it, when the binary exports them, the
//!    heap's allocated and resident bytes (`pullwatch_heap_*_bytes`, jemalloc's
//!    counters) per agent, the same way: what live allocations take per agent
//!    against what the allocator keeps resident for them;
//! 3. dispatch: 1,000 images (`FLEET_IMAGES`) appear in the manifests (one Deployment each, 50 of them
//!    held by each node): the pass that checks them all through the agents, its
//!    checks per second and the aggregator CPU per check (CPU over the pass minus the
//!    idle rate measured just before, with the fleet connected, over the pass's
//!    duration), as a ratio to the first N; with it the agents placement visited
//!    per placement (`pullwatch_agent_placement_visits_total`, when the binary has it);
//! 4. three reconnect storms: every session dropped at once (a network blip), agents
//!    reconnecting with the agent's own backoff; the time each took, the worst scrape
//!    latency, and the RSS 12 s after them against the RSS after the pass (goal: within
//!    10%);
//! 5. bounce: the aggregator killed (SIGKILL) and started again on the same ports;
//!    how long until every agent re-registered, and the scrape latency meanwhile.
//!
//! After the pass, a scrape alone (no storm): the median of five `/metrics` answers,
//! the aggregator CPU each took, and the body's size, read and on the wire. Every
//! `/metrics` probe asks for gzip and decodes the answer, as Prometheus does.
//!
//! The agents reconnect as `pullwatch-agent` does by default (full jitter below a
//! 5 s window doubling to 1 min); `FLEET_RECONNECT_BASE_MS` / `FLEET_RECONNECT_MAX_MS`
//! change that (e.g. 200 to mimic older agents' 200 ms jitter window).
//!
//! `FLEET_BASELINE_BIN=/path/to/pullwatch-aggregator` runs every N twice, that
//! binary first, then this build, and prints this build's figures as ratios to the
//! baseline's (on a shared machine, figures of one run compare; runs of different
//! hours hardly do).
//! Goals (issue 22): per check at 5,000 within 2x of 100; <= 20 KiB per agent; RSS
//! within 10% after reconnect storms; `/metrics` and `/healthz` < 250 ms throughout.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use pullwatch_testbench::fleet::{
    Fleet, FleetAggregator, FleetOptions, ProbeFigures, fleet_image, listen_overflows, probe_while,
    raise_fd_limit, sample_value,
};
use pullwatch_testbench::workspace_binary;
use tokio::sync::watch;

/// Images of the dispatch pass (`FLEET_IMAGES` changes it: more gives the CPU per
/// check a finer resolution than /proc's 10 ms ticks).
fn catalog() -> usize {
    std::env::var("FLEET_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}
/// Images each node holds.
const HELD: usize = 50;
/// How often the aggregator re-reads its manifests (and rechecks).
const CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// Idle window before the pass (the heartbeat cost of the fleet).
const IDLE_WINDOW: Duration = Duration::from_secs(5);
/// Reconnect storms per N.
const STORMS: usize = 3;
/// Pause after a storm before the next one.
const SETTLE: Duration = Duration::from_secs(3);
/// Pause before RSS is read: the scheduler's debounce, and the aggregator giving
/// memory back once a wave of sessions is over (5 s without one, checked every 5 s).
const STEADY: Duration = Duration::from_secs(12);
/// Bound on any one wait of the bench.
const WAIT: Duration = Duration::from_secs(300);
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// Scrapes with nothing else going on, after the pass.
const SCRAPES_ALONE: usize = 5;

struct Row {
    /// "baseline" or "this build".
    build: &'static str,
    agents: usize,
    connect: Duration,
    connect_probe: ProbeFigures,
    connect_overflows: u64,
    rss_before_kib: u64,
    rss_connected_kib: u64,
    /// The heap's `(allocated, resident)` bytes before the fleet and with it connected
    /// (None when the binary does not export them).
    heap_before: Option<(f64, f64)>,
    heap_connected: Option<(f64, f64)>,
    idle_cpu_per_s: f64,
    pass: Duration,
    cpu_per_check: Duration,
    visits_per_placement: Option<f64>,
    rss_after_pass_kib: u64,
    /// Median of five scrapes with nothing else going on, the aggregator CPU per
    /// scrape (less the idle rate), and the body's size.
    scrape_alone: Duration,
    scrape_cpu: Duration,
    scrape_kib: f64,
    /// The same on the wire (gzip, asked for as Prometheus does, when answered so).
    wire_kib: f64,
    storms: Vec<Duration>,
    storm_probe: ProbeFigures,
    rss_after_storms_kib: u64,
    /// The heap's `(allocated, resident)` bytes after the pass and after the storms:
    /// whether RSS kept after storms is live memory or the allocator's.
    heap_after_pass: Option<(f64, f64)>,
    heap_after_storms: Option<(f64, f64)>,
    /// RSS in anonymous memory and in mapped files (KiB), and threads, after the pass
    /// and after the storms.
    anon_file_threads_after_pass: (u64, u64, u64),
    anon_file_threads_after_storms: (u64, u64, u64),
    bounce: Duration,
    bounce_probe: ProbeFigures,
    bounce_overflows: u64,
}

fn env_ms(name: &str, default: u64) -> Duration {
    Duration::from_millis(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100, 1000, 5000]
    } else {
        sizes
    };
    let fds = raise_fd_limit()?;
    let reconnect_base = env_ms("FLEET_RECONNECT_BASE_MS", 5000);
    let reconnect_max = env_ms("FLEET_RECONNECT_MAX_MS", 60_000);
    eprintln!(
        "fleet bench: open files {fds}, agents reconnect below {reconnect_base:?} (cap {reconnect_max:?})"
    );
    let baseline = std::env::var_os("FLEET_BASELINE_BIN").map(PathBuf::from);
    let builds: Vec<(&'static str, PathBuf)> = baseline
        .map(|path| ("baseline", path))
        .into_iter()
        .chain([("this build", workspace_binary("pullwatch-aggregator")?)])
        .collect();
    let mut rows = Vec::new();
    for &agents in &sizes {
        for (build, binary) in &builds {
            eprintln!(
                "fleet bench: {agents} agents, {build} ({}) ...",
                binary.display()
            );
            let run = run(build, binary.clone(), agents, reconnect_base, reconnect_max);
            let row = tokio::time::timeout(WAIT * 4, run)
                .await
                .map_err(|_| anyhow!("{agents} agents: the run took too long"))??;
            print_row(&row, rows.iter().find(|r: &&Row| r.build == row.build));
            rows.push(row);
        }
    }
    println!();
    print_table(&rows, reconnect_base);
    if builds.len() > 1 {
        print_comparison(&rows);
    }
    Ok(())
}

async fn run(
    build: &'static str,
    binary: PathBuf,
    agents: usize,
    reconnect_base: Duration,
    reconnect_max: Duration,
) -> Result<Row> {
    let images: Vec<String> = (0..catalog()).map(fleet_image).collect();
    let mut aggregator = FleetAggregator::start_binary(binary, &[], CHECK_INTERVAL, &[]).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before_kib = aggregator.rss_kib()?;
    let heap_before = heap(&aggregator).await?;

    // 1. Connect storm.
    let overflows = listen_overflows();
    let (stop, probe) = start_probe(&aggregator);
    let fleet = Fleet::start(
        aggregator.target(),
        &FleetOptions {
            agents,
            images_per_agent: HELD,
            catalog: catalog(),
            reconnect_base,
            reconnect_max,
            echo_credentials: false,
        },
    );
    let connect = fleet
        .wait_registrations(agents as u64, WAIT)
        .await
        .context("connect storm")?;
    let connect_probe = stop_probe(stop, probe).await?;
    let connect_overflows = listen_overflows().saturating_sub(overflows);

    // 2. Memory with the fleet connected.
    tokio::time::sleep(STEADY).await;
    let rss_connected_kib = aggregator.rss_kib()?;
    let heap_connected = heap(&aggregator).await?;

    // 3. Idle rate, then the dispatch pass.
    let cpu = aggregator.cpu_seconds()?;
    let started = Instant::now();
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle_cpu_per_s = (aggregator.cpu_seconds()? - cpu) / started.elapsed().as_secs_f64();
    let (metrics, _) = aggregator.probe("/metrics").await?;
    let work_before = placement_work(&metrics);
    let answered = fleet.answered();
    aggregator.set_images(&images)?;
    // The pass starts at the next re-read of the manifests.
    let wait_started = Instant::now();
    while fleet.answered() == answered {
        if wait_started.elapsed() > WAIT {
            return Err(anyhow!("no task reached the agents\n{}", aggregator.log()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu = aggregator.cpu_seconds()?;
    let pass_started = Instant::now();
    while fleet.answered() < answered + catalog() as u64 {
        if pass_started.elapsed() > WAIT {
            return Err(anyhow!(
                "the pass did not finish: {} of {} answered",
                fleet.answered() - answered,
                catalog()
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pass = pass_started.elapsed();
    let pass_cpu = aggregator.cpu_seconds()? - cpu - idle_cpu_per_s * pass.as_secs_f64();
    let cpu_per_check = Duration::from_secs_f64(pass_cpu.max(0.0) / catalog() as f64);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (metrics, _) = aggregator.probe("/metrics").await?;
    let visits_per_placement = match (work_before, placement_work(&metrics)) {
        (Some((p0, v0)), Some((p1, v1))) if p1 > p0 => Some((v1 - v0) / (p1 - p0)),
        _ => None,
    };
    tokio::time::sleep(STEADY).await;
    let rss_after_pass_kib = aggregator.rss_kib()?;
    let heap_after_pass = heap(&aggregator).await?;
    let anon_file_threads_after_pass = anon_file_threads(&aggregator)?;
    let mut alone = Vec::new();
    let (mut scrape_kib, mut wire_kib) = (0.0, 0.0);
    let cpu = aggregator.cpu_seconds()?;
    let started = Instant::now();
    for _ in 0..SCRAPES_ALONE {
        let (body, wire, took) = aggregator.probe_wire("/metrics").await?;
        scrape_kib = body.len() as f64 / 1024.0;
        wire_kib = wire as f64 / 1024.0;
        alone.push(took);
    }
    let scrape_cpu =
        (aggregator.cpu_seconds()? - cpu - idle_cpu_per_s * started.elapsed().as_secs_f64())
            / SCRAPES_ALONE as f64;
    let scrape_cpu = Duration::from_secs_f64(scrape_cpu.max(0.0));
    alone.sort();
    let scrape_alone = alone[alone.len() / 2];

    // 4. Reconnect storms on the same aggregator.
    let mut storms = Vec::new();
    let (stop, probe) = start_probe(&aggregator);
    for _ in 0..STORMS {
        let registrations = fleet.registrations();
        fleet.drop_sessions();
        let took = fleet
            .wait_registrations(registrations + agents as u64, WAIT)
            .await
            .context("reconnect storm")?;
        storms.push(took);
        tokio::time::sleep(SETTLE).await;
    }
    let storm_probe = stop_probe(stop, probe).await?;
    tokio::time::sleep(STEADY).await;
    let rss_after_storms_kib = aggregator.rss_kib()?;
    let heap_after_storms = heap(&aggregator).await?;
    let anon_file_threads_after_storms = anon_file_threads(&aggregator)?;

    // 5. Bounce: killed and started again.
    let overflows = listen_overflows();
    let registrations = fleet.registrations();
    let bounced = Instant::now();
    aggregator.restart().await?;
    let (stop, probe) = start_probe(&aggregator);
    fleet
        .wait_registrations(registrations + agents as u64, WAIT)
        .await
        .context("bounce")?;
    let bounce = bounced.elapsed();
    let bounce_probe = stop_probe(stop, probe).await?;
    let bounce_overflows = listen_overflows().saturating_sub(overflows);
    fleet.stop().await;
    Ok(Row {
        build,
        agents,
        connect,
        connect_probe,
        connect_overflows,
        rss_before_kib,
        rss_connected_kib,
        heap_before,
        heap_connected,
        idle_cpu_per_s,
        pass,
        cpu_per_check,
        visits_per_placement,
        rss_after_pass_kib,
        scrape_alone,
        scrape_cpu,
        scrape_kib,
        wire_kib,
        storms,
        storm_probe,
        rss_after_storms_kib,
        heap_after_pass,
        heap_after_storms,
        anon_file_threads_after_pass,
        anon_file_threads_after_storms,
        bounce,
        bounce_probe,
        bounce_overflows,
    })
}

type Probe = std::thread::JoinHandle<Result<ProbeFigures>>;

/// Probes on a thread and runtime of its own: the thousands of simulated agents on
/// this process's runtime must not delay the probe itself (what is measured is the
/// aggregator's latency).
fn start_probe(aggregator: &FleetAggregator) -> (watch::Sender<bool>, Probe) {
    let (stop, stopping) = watch::channel(false);
    let addr = aggregator.metrics;
    let probe = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(runtime.block_on(probe_while(addr, PROBE_EVERY, stopping)))
    });
    (stop, probe)
}

async fn stop_probe(stop: watch::Sender<bool>, probe: Probe) -> Result<ProbeFigures> {
    let _ = stop.send(true);
    tokio::task::spawn_blocking(move || probe.join())
        .await?
        .map_err(|_| anyhow!("the probe thread panicked"))?
}

/// The heap's `(allocated, resident)` bytes from `/metrics`, when the binary exports
/// them.
async fn heap(aggregator: &FleetAggregator) -> Result<Option<(f64, f64)>> {
    let (metrics, _) = aggregator.probe("/metrics").await?;
    Ok(sample_value(&metrics, "pullwatch_heap_allocated_bytes")
        .zip(sample_value(&metrics, "pullwatch_heap_resident_bytes")))
}

/// The heap's allocated and resident KiB per agent with the fleet connected, as
/// "A / R" ("-" when the binary does not export them).
fn heap_per_agent(row: &Row) -> String {
    match (row.heap_before, row.heap_connected) {
        (Some((a0, r0)), Some((a1, r1))) => {
            let per_agent = |before: f64, after: f64| (after - before) / 1024.0 / row.agents as f64;
            format!("{:.1} / {:.1} KiB", per_agent(a0, a1), per_agent(r0, r1))
        }
        _ => "-".to_string(),
    }
}

fn anon_file_threads(aggregator: &FleetAggregator) -> Result<(u64, u64, u64)> {
    let (anon, file) = aggregator.rss_anon_file_kib()?;
    Ok((anon, file, aggregator.threads()?))
}

/// The heap after the storms against after the pass, as "allocated +A%, resident
/// +R%" ("-" when the binary does not export them).
fn heap_after_storms(row: &Row) -> String {
    match (row.heap_after_pass, row.heap_after_storms) {
        (Some((a0, r0)), Some((a1, r1))) => {
            let change = |before: f64, after: f64| (after / before.max(1.0) - 1.0) * 100.0;
            let ((anon0, file0, threads0), (anon1, file1, threads1)) = (
                row.anon_file_threads_after_pass,
                row.anon_file_threads_after_storms,
            );
            format!(
                "allocated {:+.1}%, resident {:+.1}%; anonymous RSS {:+.1} MiB, file RSS {:+.1} MiB, threads {threads0} -> {threads1}",
                change(a0, a1),
                change(r0, r1),
                (anon1 as f64 - anon0 as f64) / 1024.0,
                (file1 as f64 - file0 as f64) / 1024.0,
            )
        }
        _ => "-".to_string(),
    }
}

/// `(placements, agents visited)` from `/metrics`, when the binary exports them.
fn placement_work(metrics: &str) -> Option<(f64, f64)> {
    Some((
        sample_value(metrics, "pullwatch_agent_placements_total")?,
        sample_value(metrics, "pullwatch_agent_placement_visits_total")?,
    ))
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn per_agent_kib(row: &Row, rss_kib: u64) -> f64 {
    rss_kib.saturating_sub(row.rss_before_kib) as f64 / row.agents as f64
}

fn print_row(row: &Row, base: Option<&Row>) {
    let ratio = base.map_or(1.0, |b| {
        row.cpu_per_check.as_secs_f64() / b.cpu_per_check.as_secs_f64().max(1e-9)
    });
    eprintln!(
        "  {} agents, {}: connect {} (overflows {}), {:.1} KiB/agent (heap allocated / resident {}), {:.3} ms CPU/check (x{ratio:.2}), {:.0} checks/s, storms {:?} (after them: RSS {:+.1}%, heap {}), bounce {}",
        row.agents,
        row.build,
        ms(row.connect),
        row.connect_overflows,
        per_agent_kib(row, row.rss_connected_kib),
        heap_per_agent(row),
        row.cpu_per_check.as_secs_f64() * 1000.0,
        catalog() as f64 / row.pass.as_secs_f64(),
        row.storms.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        (row.rss_after_storms_kib as f64 / row.rss_after_pass_kib.max(1) as f64 - 1.0) * 100.0,
        heap_after_storms(row),
        ms(row.bounce)
    );
}

fn print_table(rows: &[Row], reconnect_base: Duration) {
    let Some(base) = rows.first() else {
        return;
    };
    println!(
        "fleet: {} images, {HELD} held per node, agents reconnect below {reconnect_base:?}",
        catalog()
    );
    println!(
        "| agents | build | RSS before | RSS connected | per agent | heap allocated / resident per agent | after pass | after {STORMS} storms | vs after pass | idle CPU | pass checks/s | CPU per check | ratio to {} | visits per placement | scrape alone | its CPU | scrape size | on the wire |",
        base.agents
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        // The ratio is to the first N of the same build.
        let base = rows.iter().find(|r| r.build == row.build).unwrap_or(base);
        println!(
            "| {} | {} | {:.1} MiB | {:.1} MiB | {:.1} KiB | {} | {:.1} MiB | {:.1} MiB | {:+.1}% | {:.1}% | {:.0} | {:.3} ms | {:.2}x | {} | {} | {:.1} ms | {:.0} KiB | {:.0} KiB |",
            row.agents,
            row.build,
            row.rss_before_kib as f64 / 1024.0,
            row.rss_connected_kib as f64 / 1024.0,
            per_agent_kib(row, row.rss_connected_kib),
            heap_per_agent(row),
            row.rss_after_pass_kib as f64 / 1024.0,
            row.rss_after_storms_kib as f64 / 1024.0,
            (row.rss_after_storms_kib as f64 / row.rss_after_pass_kib as f64 - 1.0) * 100.0,
            row.idle_cpu_per_s * 100.0,
            catalog() as f64 / row.pass.as_secs_f64(),
            row.cpu_per_check.as_secs_f64() * 1000.0,
            row.cpu_per_check.as_secs_f64() / base.cpu_per_check.as_secs_f64().max(1e-9),
            row.visits_per_placement
                .map_or("-".to_string(), |v| format!("{v:.1}")),
            ms(row.scrape_alone),
            row.scrape_cpu.as_secs_f64() * 1000.0,
            row.scrape_kib,
            row.wire_kib,
        );
    }
    println!();
    println!(
        "| agents | build | connect storm | overflows | worst /healthz | worst /metrics | reconnect storms | worst /healthz | worst /metrics | bounce | overflows | worst /healthz | worst /metrics | probes (failed) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let probes = [row.connect_probe, row.storm_probe, row.bounce_probe];
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) |",
            row.agents,
            row.build,
            ms(row.connect),
            row.connect_overflows,
            ms(row.connect_probe.healthz_worst),
            ms(row.connect_probe.metrics_worst),
            row.storms
                .iter()
                .map(|d| ms(*d))
                .collect::<Vec<_>>()
                .join(", "),
            ms(row.storm_probe.healthz_worst),
            ms(row.storm_probe.metrics_worst),
            ms(row.bounce),
            row.bounce_overflows,
            ms(row.bounce_probe.healthz_worst),
            ms(row.bounce_probe.metrics_worst),
            probes.iter().map(|p| p.probes).sum::<usize>(),
            probes.iter().map(|p| p.failures).sum::<usize>(),
        );
    }
}

/// This build's figures as ratios to the baseline's of the same N (run just before it).
fn print_comparison(rows: &[Row]) {
    println!();
    println!(
        "| agents | per agent | RSS after storms vs after pass | worst /metrics in storms | worst /healthz in storms | worst /metrics in bounce | scrape alone |"
    );
    println!("|---|---|---|---|---|---|---|");
    let ratio = |new: f64, old: f64| format!("{:.2}x", new / old.max(1e-9));
    let secs = |d: Duration| d.as_secs_f64();
    for pair in rows.chunks(2) {
        let [base, row] = pair else {
            continue;
        };
        let growth =
            |r: &Row| (r.rss_after_storms_kib as f64 / r.rss_after_pass_kib as f64 - 1.0) * 100.0;
        println!(
            "| {} | {:.1} -> {:.1} KiB ({}) | {:+.1}% -> {:+.1}% | {} -> {} ({}) | {} -> {} ({}) | {} -> {} ({}) | {} -> {} ({}) |",
            row.agents,
            per_agent_kib(base, base.rss_connected_kib),
            per_agent_kib(row, row.rss_connected_kib),
            ratio(
                per_agent_kib(row, row.rss_connected_kib),
                per_agent_kib(base, base.rss_connected_kib)
            ),
            growth(base),
            growth(row),
            ms(base.storm_probe.metrics_worst),
            ms(row.storm_probe.metrics_worst),
            ratio(
                secs(row.storm_probe.metrics_worst),
                secs(base.storm_probe.metrics_worst)
            ),
            ms(base.storm_probe.healthz_worst),
            ms(row.storm_probe.healthz_worst),
            ratio(
                secs(row.storm_probe.healthz_worst),
                secs(base.storm_probe.healthz_worst)
            ),
            ms(base.bounce_probe.metrics_worst),
            ms(row.bounce_probe.metrics_worst),
            ratio(
                secs(row.bounce_probe.metrics_worst),
                secs(base.bounce_probe.metrics_worst)
            ),
            ms(base.scrape_alone),
            ms(row.scrape_alone),
            ratio(secs(row.scrape_alone), secs(base.scrape_alone)),
        );
    }
}
