//! The hostile-client attacks of `tests/tests/hostile_clients.rs` with figures: per
//! attack, the aggregator's RSS growth, how long the server took to close the
//! attacking connections, and `/metrics` latency during the attack as a ratio to its
//! latency at rest, measured in the same run.
//!
//! Needs release binaries: `cargo build --release -p pullwatch-aggregator`, then
//! `cargo bench -p pullwatch-testbench --bench hostile_clients`.

#[path = "../hostile/clients.rs"]
mod clients;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clients::{
    Process, big_inventory, closed_within, serve_manifests, slow_connection, timed_get, unread_get,
    wait_ready, zero_window_h2,
};

const SEND_TIMEOUT: Duration = Duration::from_secs(3);
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);

fn limit_flags() -> Vec<String> {
    vec![
        format!("--header-read-timeout={}s", HEADER_TIMEOUT.as_secs()),
        format!("--send-timeout={}s", SEND_TIMEOUT.as_secs()),
        "--idle-timeout=5s".to_string(),
        "--http2-max-streams=16".to_string(),
    ]
}

/// Peak RSS and worst `/metrics` latency while an attack runs.
struct Sampler {
    base_kib: u64,
    peak_kib: u64,
    latencies: Vec<Duration>,
}

impl Sampler {
    fn new(process: &Process) -> Sampler {
        let base = process.rss_kib();
        Sampler {
            base_kib: base,
            peak_kib: base,
            latencies: Vec::new(),
        }
    }

    async fn sample(&mut self, process: &mut Process, metrics: SocketAddr) {
        assert!(process.alive(), "the aggregator died:\n{}", process.log());
        self.peak_kib = self.peak_kib.max(process.rss_kib());
        let (status, took) = timed_get(metrics, "/metrics").await;
        self.latencies.push(if status == Some(200) {
            took
        } else {
            Duration::from_secs(5)
        });
    }

    fn report(&self, attack: &str, closed: Duration, at_rest: Duration) {
        let worst = self.latencies.iter().max().copied().unwrap_or_default();
        let median = median(&self.latencies);
        println!(
            "{attack:<58} RSS +{:>6} KiB   closed after {:>6.2} s   /metrics median {:>5.2}x, worst {:>5.2}x at rest",
            self.peak_kib.saturating_sub(self.base_kib),
            closed.as_secs_f64(),
            median.as_secs_f64() / at_rest.as_secs_f64(),
            worst.as_secs_f64() / at_rest.as_secs_f64(),
        );
    }
}

fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

async fn at_rest(addr: SocketAddr) -> Duration {
    let mut latencies = Vec::new();
    for _ in 0..7 {
        latencies.push(timed_get(addr, "/metrics").await.1);
    }
    median(&latencies)
}

fn start(dir: &std::path::Path, deployments: usize, nofile: u64) -> (Process, SocketAddr) {
    let inventory = big_inventory(dir, deployments);
    let mut flags = vec![
        "--check-interval=1h".to_string(),
        "--registry-timeout=2s".to_string(),
    ];
    flags.extend(limit_flags());
    serve_manifests(dir, &inventory, &flags, Some(nofile), Some(1 << 30))
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let (mut aggregator, addr) = start(dir.path(), 2_000, 1024);
    wait_ready(addr, &mut aggregator).await;
    for path in ["/api/v1/images", "/", "/metrics"] {
        let _ = timed_get(addr, path).await;
    }
    let rest = at_rest(addr).await;
    println!(
        "20,000 containers, {} binary; /metrics at rest {:.1} ms (the baseline of the ratios)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        rest.as_secs_f64() * 1e3
    );

    // h2c, zero window: 8 connections x the stream cap, of /api/v1/images and /.
    let mut sampler = Sampler::new(&aggregator);
    let mut drivers = Vec::new();
    for i in 0..8 {
        let path = if i % 2 == 0 { "/api/v1/images" } else { "/" };
        let (_, driver, responses) = zero_window_h2(addr, path, 200).await;
        drivers.push((Instant::now(), driver, responses));
        sampler.sample(&mut aggregator, addr).await;
    }
    let mut closed = Duration::ZERO;
    for (opened, driver, _responses) in &mut drivers {
        while !driver.is_finished() {
            sampler.sample(&mut aggregator, addr).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ended = driver.await.unwrap();
        closed = closed.max(ended.duration_since(*opened));
    }
    sampler.report("h2c zero window, 8 x 16 streams", closed, rest);
    drop(drivers);

    // HTTP/1.1: 100 connections that never read their /api/v1/images or /.
    let mut sampler = Sampler::new(&aggregator);
    let started = Instant::now();
    let mut stalled = Vec::new();
    for i in 0..100 {
        stalled.push(unread_get(addr, i).await.unwrap());
        if i % 20 == 0 {
            sampler.sample(&mut aggregator, addr).await;
        }
    }
    while started.elapsed() < SEND_TIMEOUT + Duration::from_millis(1500) {
        sampler.sample(&mut aggregator, addr).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let checked = started.elapsed();
    let mut all_closed = true;
    for stream in &mut stalled {
        all_closed &= closed_within(stream, Duration::from_secs(4))
            .await
            .is_some();
    }
    sampler.report(
        if all_closed {
            "HTTP/1.1, 100 unread responses (all closed when checked)"
        } else {
            "HTTP/1.1, 100 unread responses (NOT ALL CLOSED when checked)"
        },
        checked,
        rest,
    );
    drop(stalled);
    drop(aggregator);

    // Slow and idle connections under a 256-fd limit.
    let dir = tempfile::tempdir().unwrap();
    let (mut aggregator, addr) = start(dir.path(), 20, 256);
    wait_ready(addr, &mut aggregator).await;
    let rest = at_rest(addr).await;
    let mut sampler = Sampler::new(&aggregator);
    let mut watchers = Vec::new();
    for i in 0..300 {
        let partial = (i % 2 == 0).then_some(&b"GET /metrics HTTP/1.1\r\nHost"[..]);
        let Some(watcher) = slow_connection(addr, partial).await else {
            continue;
        };
        watchers.push(watcher);
        if i % 30 == 0 {
            sampler.sample(&mut aggregator, addr).await;
        }
    }
    let mut closed = Duration::ZERO;
    for watcher in watchers {
        closed = closed.max(watcher.await.unwrap().unwrap_or(Duration::from_secs(30)));
    }
    sampler.sample(&mut aggregator, addr).await;
    sampler.report("300 slow/idle connections, 256 fds (small)", closed, rest);
}

fn main() {
    // `cargo bench` passes --bench; nothing else is taken.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}
