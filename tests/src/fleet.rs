//! A simulated fleet of node agents: N sessions, each over its own TLS connection,
//! speaking the real agent protocol (`pullwatch::proto`, the generated client) to an
//! aggregator's agent server: `Register` with the node's held images, heartbeats at
//! the interval `Registered` gives, every `CheckTask` answered at once. Agents
//! reconnect as the real agent does ([`pullwatch::backoff::Backoff`]), and the fleet
//! can drop every session at once (a network blip: a reconnect storm).
//!
//! Also the real `pullwatch-aggregator serve` process such a fleet talks to
//! ([`FleetAggregator`]): manifests of images, TLS from a throw-away CA, a shared
//! token, on loopback; restartable on the same ports (a bounce); its `/metrics` and
//! `/healthz` probed with their latency.
//!
//! One process hosts thousands of agents on one runtime: raise the open-files limit
//! first ([`raise_fd_limit`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use pullwatch::backoff::Backoff;
use pullwatch::proto::agent_service_client::AgentServiceClient;
use pullwatch::proto::{
    AgentMessage, CheckResult, Heartbeat, Register, Status, agent_message, aggregator_message,
};
use tempfile::TempDir;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::ca::{LOOPBACK_SANS, TestCa};
use crate::http_client::http_request;
use crate::util::{Daemon, free_port};
use crate::workspace_binary;

const TOKEN: &str = "fleet-shared-agent-token";
/// Registry host of every image: nothing listens there (nothing is pulled; without
/// agents a central check fails at once).
pub const FLEET_REGISTRY: &str = "127.0.0.1:9";

/// The `i`-th image of the fleet's catalog, normalized.
pub fn fleet_image(i: usize) -> String {
    format!("{FLEET_REGISTRY}/fleet/app-{i}:v1")
}

/// Raises this process's soft open-files limit to its hard limit (children inherit
/// it); the limit now.
pub fn raise_fd_limit() -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// How the kernel counted listen-queue overflows so far (`TcpExt: ListenOverflows`,
/// machine-wide).
pub fn listen_overflows() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/net/netstat") else {
        return 0;
    };
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        if let [names, values] = pair
            && names.starts_with("TcpExt:")
        {
            let names = names.split_whitespace();
            let values = values.split_whitespace();
            for (name, value) in names.zip(values) {
                if name == "ListenOverflows" {
                    return value.parse().unwrap_or(0);
                }
            }
        }
    }
    0
}

/// Where the fleet connects, and with what.
#[derive(Clone, Debug)]
pub struct FleetTarget {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    pub ca_pem: Vec<u8>,
    pub token: String,
}

/// The fleet's shape.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    pub agents: usize,
    /// Images each node holds, from the catalog `fleet_image(0..catalog)`.
    pub images_per_agent: usize,
    pub catalog: usize,
    /// Reconnect backoff (the agent's `--reconnect-backoff-base` / `-max`).
    pub reconnect_base: Duration,
    pub reconnect_max: Duration,
    /// Answer with a reason quoting the task's credentials (the password, and
    /// `user:password` in base64), as an older or careless agent might.
    pub echo_credentials: bool,
}

#[derive(Default)]
struct Counters {
    /// Sessions registered now.
    connected: AtomicUsize,
    /// Registrations so far.
    registrations: AtomicU64,
    /// Tasks answered so far.
    answered: AtomicU64,
    /// Session attempts that failed before registering.
    failures: AtomicU64,
}

/// N simulated agents; they stop when this is dropped.
pub struct Fleet {
    counters: Arc<Counters>,
    blip: watch::Sender<u64>,
    agents: JoinSet<()>,
}

impl Fleet {
    /// Starts every agent at once (each connects at once, as agents starting up do).
    pub fn start(target: FleetTarget, options: &FleetOptions) -> Fleet {
        pullwatch::process::install_crypto_provider();
        let counters = Arc::new(Counters::default());
        let (blip, _) = watch::channel(0);
        let mut agents = JoinSet::new();
        let target = Arc::new(target);
        for i in 0..options.agents {
            let images = (0..options.images_per_agent)
                .map(|j| fleet_image((i * 7 + j * 13) % options.catalog.max(1)))
                .collect();
            let agent = SimulatedAgent {
                node: format!("fleet-node-{i:05}"),
                images,
                target: target.clone(),
                counters: counters.clone(),
                blips: blip.subscribe(),
                echo_credentials: options.echo_credentials,
            };
            let backoff = Backoff::new(options.reconnect_base, options.reconnect_max);
            agents.spawn(agent.run(backoff));
        }
        Fleet {
            counters,
            blip,
            agents,
        }
    }

    /// Sessions registered now.
    pub fn connected(&self) -> usize {
        self.counters.connected.load(Ordering::Relaxed)
    }

    /// Registrations so far (reconnects included).
    pub fn registrations(&self) -> u64 {
        self.counters.registrations.load(Ordering::Relaxed)
    }

    /// Tasks answered so far.
    pub fn answered(&self) -> u64 {
        self.counters.answered.load(Ordering::Relaxed)
    }

    /// Session attempts that failed before registering.
    pub fn failures(&self) -> u64 {
        self.counters.failures.load(Ordering::Relaxed)
    }

    /// Every agent ends its session now and reconnects after its backoff pause.
    pub fn drop_sessions(&self) {
        self.blip.send_modify(|n| *n += 1);
    }

    /// Waits until `registrations()` reaches `count`; how long that took.
    pub async fn wait_registrations(&self, count: u64, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        while self.registrations() < count {
            if started.elapsed() > timeout {
                bail!(
                    "{} of {count} registrations after {timeout:?} ({} connected, {} failed attempts)",
                    self.registrations(),
                    self.connected(),
                    self.failures()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(started.elapsed())
    }

    /// Stops every agent.
    pub async fn stop(mut self) {
        self.agents.abort_all();
        while self.agents.join_next().await.is_some() {}
    }
}

struct SimulatedAgent {
    node: String,
    images: Vec<String>,
    target: Arc<FleetTarget>,
    counters: Arc<Counters>,
    blips: watch::Receiver<u64>,
    echo_credentials: bool,
}

/// Counts a registered session while it lasts.
struct Connected<'a>(&'a Counters);

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SimulatedAgent {
    async fn run(mut self, mut backoff: Backoff) {
        self.blips.mark_unchanged();
        loop {
            let registered = self.session().await;
            if registered {
                backoff.reset();
            } else {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(backoff.next_pause()).await;
        }
    }

    /// One session; whether it registered.
    async fn session(&mut self) -> bool {
        let Ok(endpoint) = Endpoint::from_shared(self.target.url.clone()) else {
            return false;
        };
        let Ok(endpoint) = endpoint
            .connect_timeout(Duration::from_secs(10))
            .tls_config(
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.target.ca_pem)),
            )
        else {
            return false;
        };
        let Ok(channel) = endpoint.connect().await else {
            return false;
        };
        let mut client = AgentServiceClient::new(channel);
        let (tx, mut rx) = mpsc::channel::<AgentMessage>(16);
        let register = Register {
            node_name: self.node.clone(),
            runtime_name: "containerd".into(),
            runtime_version: "1.7.0".into(),
            agent_version: "fleet".into(),
            images: self.images.clone(),
            node_labels: Default::default(),
        };
        if tx
            .send(message(agent_message::Message::Register(register)))
            .await
            .is_err()
        {
            return false;
        }
        let mut request = tonic::Request::new(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let Ok(bearer) = format!("Bearer {}", self.target.token).parse() else {
            return false;
        };
        request.metadata_mut().insert("authorization", bearer);
        let Ok(response) = client.session(request).await else {
            return false;
        };
        let mut inbound = response.into_inner();
        let interval = match tokio::time::timeout(Duration::from_secs(30), inbound.message()).await
        {
            Ok(Ok(Some(first))) => match first.message {
                Some(aggregator_message::Message::Registered(r)) => {
                    Duration::from_secs(u64::from(r.heartbeat_interval_seconds.max(1)))
                }
                _ => return false,
            },
            _ => return false,
        };
        self.counters.connected.fetch_add(1, Ordering::Relaxed);
        self.counters.registrations.fetch_add(1, Ordering::Relaxed);
        let _connected = Connected(&self.counters);
        let mut heartbeat = tokio::time::interval(interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        loop {
            tokio::select! {
                incoming = inbound.message() => match incoming {
                    Ok(Some(msg)) => {
                        if let Some(aggregator_message::Message::Task(task)) = msg.message {
                            let held = self.images.contains(&task.image);
                            let reason = match task.credentials.first() {
                                Some(c) if self.echo_credentials => {
                                    use base64::Engine;
                                    let basic = base64::engine::general_purpose::STANDARD
                                        .encode(format!("{}:{}", c.username, c.password));
                                    format!("pulled as {}:{} (Authorization: Basic {basic})", c.username, c.password)
                                }
                                _ => "available".into(),
                            };
                            let result = CheckResult {
                                task_id: task.task_id,
                                image: task.image,
                                status: Status::Available as i32,
                                reason,
                                mode: task.mode,
                                credential_source: "runtime".into(),
                                image_present: held,
                                ..Default::default()
                            };
                            if tx.send(message(agent_message::Message::Result(result))).await.is_err() {
                                return true;
                            }
                            self.counters.answered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => return true,
                },
                _ = heartbeat.tick() => {
                    let beat = Heartbeat { unix_millis: 0 };
                    if tx.send(message(agent_message::Message::Heartbeat(beat))).await.is_err() {
                        return true;
                    }
                }
                _ = self.blips.changed() => return true,
            }
        }
    }
}

fn message(message: agent_message::Message) -> AgentMessage {
    AgentMessage {
        message: Some(message),
    }
}

/// The real `pullwatch-aggregator serve`, with agents over TLS and a manifests file.
pub struct FleetAggregator {
    /// The binary run (see [`FleetAggregator::start_binary`]).
    binary: PathBuf,
    dir: TempDir,
    _ca: TestCa,
    ca_pem: Vec<u8>,
    args: Vec<String>,
    manifests: PathBuf,
    child: Daemon,
    pub metrics: SocketAddr,
    pub agents: SocketAddr,
}

impl FleetAggregator {
    /// Starts it with `images` in its manifests (one Deployment each), re-read every
    /// `check_interval`; `extra` flags appended.
    pub async fn start(
        images: &[String],
        check_interval: Duration,
        extra: &[&str],
    ) -> Result<FleetAggregator> {
        let binary = workspace_binary("pullwatch-aggregator")?;
        Self::start_binary(binary, images, check_interval, extra).await
    }

    /// [`FleetAggregator::start`] with another `pullwatch-aggregator` binary (a
    /// baseline build, to compare with in the same run).
    pub async fn start_binary(
        binary: PathBuf,
        images: &[String],
        check_interval: Duration,
        extra: &[&str],
    ) -> Result<FleetAggregator> {
        let dir = tempfile::Builder::new()
            .prefix("pullwatch-fleet-")
            .tempdir()
            .context("creating the fleet's temp dir")?;
        let ca = TestCa::new()?;
        let (cert, key) = ca.issue_server_cert(LOOPBACK_SANS)?;
        let token = dir.path().join("agent-token");
        std::fs::write(&token, TOKEN)?;
        let manifests = dir.path().join("workloads.yaml");
        write_manifests(&manifests, images)?;
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let agents = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut args: Vec<String> = vec![
            "serve".into(),
            format!("--manifests={}", manifests.display()),
            format!("--bind-address={metrics}"),
            format!("--check-interval={}s", check_interval.as_secs_f64()),
            "--registry-timeout=1s".into(),
            "--allow-plain-http".into(),
            "--log-level=warn".into(),
            format!("--agent-listen={agents}"),
            format!("--agent-tls-cert={}", cert.display()),
            format!("--agent-tls-key={}", key.display()),
            format!("--agent-shared-token-file={}", token.display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut aggregator = FleetAggregator {
            binary,
            ca_pem: ca.ca_pem(),
            _ca: ca,
            dir,
            args,
            manifests,
            child: Daemon::default(),
            metrics,
            agents,
        };
        aggregator.restart().await?;
        Ok(aggregator)
    }

    /// Where a fleet connects.
    pub fn target(&self) -> FleetTarget {
        FleetTarget {
            url: format!("https://{}", self.agents),
            ca_pem: self.ca_pem.clone(),
            token: TOKEN.to_string(),
        }
    }

    /// Replaces the workloads (read at the next re-read).
    pub fn set_images(&self, images: &[String]) -> Result<()> {
        write_manifests(&self.manifests, images)
    }

    /// Kills it (SIGKILL, as an OOM kill or a crash) and starts it again on the same
    /// ports; waits until `/healthz` answers.
    pub async fn restart(&mut self) -> Result<()> {
        self.child.stop();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("aggregator.log"))?;
        let child = Command::new(&self.binary)
            .args(&self.args)
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG")
            .env_remove("PULLWATCH_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning pullwatch-aggregator")?;
        self.child.start(child);
        let started = Instant::now();
        loop {
            if self.probe("/healthz").await.is_ok() {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(30) || !self.child.is_running() {
                bail!("the aggregator did not come up:\n{}", tail(&self.log(), 30));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> Result<u32> {
        self.child
            .id()
            .ok_or_else(|| anyhow!("the aggregator is not running"))
    }

    /// Its resident memory, KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        crate::process_status_kib(self.pid()?, "VmRSS:")
    }

    /// Its RSS in anonymous memory and in mapped files (the binary's pages among
    /// them), KiB.
    pub fn rss_anon_file_kib(&self) -> Result<(u64, u64)> {
        let pid = self.pid()?;
        Ok((
            crate::process_status_kib(pid, "RssAnon:")?,
            crate::process_status_kib(pid, "RssFile:")?,
        ))
    }

    /// Its threads.
    pub fn threads(&self) -> Result<u64> {
        crate::process_status_kib(self.pid()?, "Threads:")
    }

    /// CPU seconds it used so far.
    pub fn cpu_seconds(&self) -> Result<f64> {
        crate::process_cpu_seconds(self.pid()?)
    }

    /// `GET path`: its body and how long the answer took.
    pub async fn probe(&self, path: &str) -> Result<(String, Duration)> {
        probe(self.metrics, path).await
    }

    /// [`probe_wire`] of this aggregator.
    pub async fn probe_wire(&self, path: &str) -> Result<(String, usize, Duration)> {
        probe_wire(self.metrics, path).await
    }

    /// The value of the sample `name` (with its labels as written) in `/metrics`.
    pub async fn metric(&self, sample: &str) -> Result<f64> {
        let (text, _) = self.probe("/metrics").await?;
        Ok(sample_value(&text, sample).unwrap_or(0.0))
    }

    pub fn log(&self) -> String {
        std::fs::read(self.dir.path().join("aggregator.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The value of the sample written `sample` (name and labels) in an exposition.
pub fn sample_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(sample)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// One Deployment per image (a Namespace alone when there is none).
fn write_manifests(path: &Path, images: &[String]) -> Result<()> {
    let mut text = String::from("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: fleet\n");
    for (i, image) in images.iter().enumerate() {
        let lines = [
            "---".to_string(),
            "apiVersion: apps/v1".into(),
            "kind: Deployment".into(),
            "metadata:".into(),
            format!("  name: app-{i}"),
            "  namespace: fleet".into(),
            "spec:".into(),
            "  selector:".into(),
            format!("    matchLabels: {{app: app-{i}}}"),
            "  template:".into(),
            "    metadata:".into(),
            format!("      labels: {{app: app-{i}}}"),
            "    spec:".into(),
            "      containers:".into(),
            "        - name: c0".into(),
            format!("          image: {image}"),
        ];
        text.push_str(&lines.join("\n"));
        text.push('\n');
    }
    // Written whole, then renamed: a re-read never sees half a file.
    let temp = path.with_extension("yaml.tmp");
    std::fs::write(&temp, text)?;
    std::fs::rename(&temp, path)?;
    Ok(())
}

/// `GET path` of `addr`: the body and how long the answer took (a new connection,
/// as a scraper's).
pub async fn probe(addr: SocketAddr, path: &str) -> Result<(String, Duration)> {
    let (text, _, took) = probe_wire(addr, path).await?;
    Ok((text, took))
}

/// Like [`probe`], with the size of the body on the wire. Asks for gzip as Prometheus
/// does, and reads a gzip answer as Prometheus would (the time includes decoding it).
pub async fn probe_wire(addr: SocketAddr, path: &str) -> Result<(String, usize, Duration)> {
    let started = Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        http_request(
            addr,
            http::Method::GET,
            path,
            &[("accept-encoding", "gzip")],
            Vec::new(),
        ),
    )
    .await
    .map_err(|_| anyhow!("GET {path} took over 10s"))??;
    if response.status != 200 {
        bail!("GET {path}: {}", response.status);
    }
    let text = response
        .decoded_text()
        .with_context(|| format!("GET {path}"))?;
    Ok((text, response.body.len(), started.elapsed()))
}

/// The worst latencies of `/healthz` and `/metrics`, probed in turn while it runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProbeFigures {
    pub healthz_worst: Duration,
    pub metrics_worst: Duration,
    pub probes: usize,
    pub failures: usize,
}

/// Probes `/healthz` and `/metrics` in turn every `every` until `stop` turns true.
pub async fn probe_while(
    addr: SocketAddr,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> ProbeFigures {
    let mut figures = ProbeFigures::default();
    loop {
        for path in ["/healthz", "/metrics"] {
            match probe(addr, path).await {
                Ok((_, took)) => {
                    let worst = match path {
                        "/healthz" => &mut figures.healthz_worst,
                        _ => &mut figures.metrics_worst,
                    };
                    *worst = (*worst).max(took);
                }
                Err(_) => figures.failures += 1,
            }
            figures.probes += 1;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return figures,
        }
    }
}
