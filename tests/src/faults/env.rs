//! The real parts one fault scenario runs: a docker-registry with htpasswd (optionally
//! behind the fault proxy), the test API server with workloads and their pull secret,
//! containerd nodes each with a `pullwatch-agent run` process, and the
//! `pullwatch-aggregator serve` process watching it all. Plus reading `/metrics`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::proxy::FaultProxy;
use crate::apiserver::{
    TestApiServer, deployment, namespace, secret_dockerconfigjson, with_pull_secrets,
};
use crate::ca::{LOOPBACK_SANS, TestCa};
use crate::containerd::{Containerd, ContainerdOptions};
use crate::http_client::http_request;
use crate::push::push_tags;
use crate::registry::{Registry, RegistryOptions};
use crate::util::{Daemon, free_port};
use crate::workspace_binary;

/// The namespace of every workload.
pub const NAMESPACE: &str = "shop";
/// The repository every workload's image is a tag of.
pub const REPO: &str = "faults/app";
const USER: &str = "robot";
const PASSWORD: &str = "fault-suite-pull-password";
const SHARED_TOKEN: &str = "fault-suite-agent-token";
/// `--check-interval` of every aggregator: with it below the scheduler's 10 s first
/// retry, a failed check is retried after exactly this long (the retry backoff).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How long a wait for the steady state may take.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a scenario needs.
pub struct EnvOptions {
    /// Deployments `svc-0`.. in [`NAMESPACE`], each with its own container reference.
    pub workloads: usize,
    /// Distinct tags they use (`v0`..), round robin.
    pub tags: usize,
    /// Extra tags pushed but used by no workload yet.
    pub spare_tags: &'static [&'static str],
    /// containerd nodes, each with an agent (node credentials in containerd's config).
    pub agents: usize,
    /// Images name the fault proxy instead of the registry.
    pub proxy: bool,
    /// `--check-interval` (the retry backoff when below 10 s).
    pub check_interval: Duration,
}

/// One simulated node: its containerd and the agent process on it.
pub struct Node {
    pub name: String,
    pub containerd: Containerd,
    pub agent: Process,
    pub metrics: SocketAddr,
}

/// A child process of the bench, killed on drop, its stdout and stderr appended to one
/// log file across restarts.
pub struct Process {
    program: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
    log: PathBuf,
    child: Daemon,
}

impl Process {
    fn start(program: PathBuf, args: Vec<String>, dir: &Path, name: &str) -> Result<Process> {
        let mut process = Process {
            program,
            args,
            dir: dir.to_path_buf(),
            log: dir.join(format!("{name}.log")),
            child: Daemon::default(),
        };
        process.start_again()?;
        Ok(process)
    }

    /// Starts the process again with the same arguments (after [`kill`](Self::kill)).
    pub fn start_again(&mut self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .current_dir(&self.dir)
            // No ~/.docker/config.json or kubeconfig of the machine leaks in.
            .env("HOME", &self.dir)
            .env_remove("KUBECONFIG")
            .env_remove("PULLWATCH_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", self.program.display()))?;
        self.child.start(child);
        Ok(())
    }

    /// SIGKILL, as a crash or an OOM kill would, and reaps it.
    pub fn kill(&mut self) {
        self.child.stop();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// How many times the log says a thread panicked.
    pub fn panics(&self) -> usize {
        self.log().matches("panicked").count()
    }
}

/// The whole setup of one scenario.
pub struct Env {
    _dir: TempDir,
    pub registry: Registry,
    pub proxy: Option<FaultProxy>,
    pub api: TestApiServer,
    pub nodes: Vec<Node>,
    pub aggregator: Process,
    pub metrics: SocketAddr,
    /// The host images name (the proxy's or the registry's).
    pub host: String,
    /// The canonical key of every workload's reference, see [`ref_key`].
    pub refs: Vec<String>,
    pub check_interval: Duration,
}

/// The scenario's namespace, its pull secret and `opts.workloads` deployments over the
/// tags in turn: the container references they make.
fn apply_workloads(api: &TestApiServer, host: &str, opts: &EnvOptions) -> Result<Vec<String>> {
    api.apply(&namespace(NAMESPACE, &[]))?;
    api.apply(&secret_dockerconfigjson(
        NAMESPACE, "regcred", host, USER, PASSWORD,
    ))?;
    let mut refs = Vec::new();
    for i in 0..opts.workloads {
        let image = format!("{host}/{REPO}:v{}", i % opts.tags.max(1));
        let name = format!("svc-{i}");
        api.apply(&with_pull_secrets(
            deployment(NAMESPACE, &name, &[&image]),
            &["regcred"],
        ))?;
        refs.push(ref_key(NAMESPACE, "deployment", &name, "c0", &image));
    }
    Ok(refs)
}

/// The aggregator's agent listener: its flags, and the address, CA and token file the
/// agents connect with (copied into `dir`: the CA's own temp dir goes with it).
fn agent_listener(dir: &Path) -> Result<(Vec<String>, (SocketAddr, PathBuf, PathBuf))> {
    let ca = TestCa::new()?;
    let (issued_cert, issued_key) = ca.issue_server_cert(LOOPBACK_SANS)?;
    let (cert, key) = (dir.join("agent.crt"), dir.join("agent.key"));
    std::fs::copy(issued_cert, &cert)?;
    std::fs::copy(issued_key, &key)?;
    let ca_path = dir.join("agent-ca.crt");
    std::fs::copy(ca.ca_cert_path(), &ca_path)?;
    let token = dir.join("agent-token");
    std::fs::write(&token, SHARED_TOKEN)?;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let args = vec![
        format!("--agent-listen={listen}"),
        format!("--agent-tls-cert={}", cert.display()),
        format!("--agent-tls-key={}", key.display()),
        format!("--agent-shared-token-file={}", token.display()),
    ];
    Ok((args, (listen, ca_path, token)))
}

/// `count` nodes (`node-a`, `node-b`, ...): a containerd holding the registry's
/// credentials and an agent connected to `listen`.
async fn start_nodes(
    count: usize,
    host: &str,
    listen: SocketAddr,
    ca_path: &Path,
    token: &Path,
) -> Result<Vec<Node>> {
    let mut nodes = Vec::new();
    let starts = (0..count)
        .map(|_| Containerd::start(ContainerdOptions::with_credentials(host, USER, PASSWORD)));
    let started = futures::future::join_all(starts).await;
    let agent_bin = workspace_binary("pullwatch-agent")?;
    for (i, containerd) in started.into_iter().enumerate() {
        let containerd = containerd?;
        let name = format!("node-{}", (b'a' + i as u8) as char);
        let node_dir = containerd.dir().to_path_buf();
        let kubelet = node_dir.join("kubelet");
        std::fs::create_dir_all(&kubelet)?;
        let node_metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut args = containerd.agent_run_args(listen, ca_path, token, &kubelet, node_metrics);
        args.extend([
            format!("--node-name={name}"),
            format!("--containerd-config={}", containerd.config_path().display()),
            "--request-timeout=5s".to_string(),
            "--log-level=info".to_string(),
        ]);
        let agent = Process::start(agent_bin.clone(), args, &node_dir, "agent")?;
        nodes.push(Node {
            name,
            containerd,
            agent,
            metrics: node_metrics,
        });
    }
    Ok(nodes)
}

/// `namespace/kind/name/container image`: one container reference.
pub fn ref_key(namespace: &str, kind: &str, name: &str, container: &str, image: &str) -> String {
    format!("{namespace}/{kind}/{name}/{container} {image}")
}

impl Env {
    pub async fn start(opts: EnvOptions) -> Result<Env> {
        let dir = tempfile::Builder::new()
            .prefix("pullwatch-faults-")
            .tempdir()
            .context("creating the scenario's temp dir")?;
        let registry = Registry::start(RegistryOptions::htpasswd(USER, PASSWORD)).await?;
        let mut tags: Vec<String> = (0..opts.tags.max(1)).map(|i| format!("v{i}")).collect();
        tags.extend(opts.spare_tags.iter().map(|t| t.to_string()));
        push_tags(&registry, REPO, &tags).await?;
        let proxy = match opts.proxy {
            true => Some(FaultProxy::start(registry.addr()).await?),
            false => None,
        };
        let host = proxy
            .as_ref()
            .map_or_else(|| registry.host(), FaultProxy::host);

        let api = TestApiServer::start().await?;
        let refs = apply_workloads(&api, &host, &opts)?;

        let metrics_port = free_port();
        let metrics = SocketAddr::from(([127, 0, 0, 1], metrics_port));
        let kubeconfig = api.kubeconfig(dir.path())?;
        let secs = opts.check_interval.as_secs_f64();
        let mut args: Vec<String> = [
            "serve",
            "--kubeconfig",
            &kubeconfig.to_string_lossy(),
            "--bind-address",
            &metrics.to_string(),
            "--check-interval",
            &format!("{secs}s"),
            "--registry-timeout",
            "2s",
            "--allow-plain-http",
            "--log-level",
            "info",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let agent_listen = match opts.agents {
            0 => None,
            _ => {
                let (listen_args, listen) = agent_listener(dir.path())?;
                args.extend(listen_args);
                Some(listen)
            }
        };
        let aggregator = Process::start(
            workspace_binary("pullwatch-aggregator")?,
            args,
            dir.path(),
            "aggregator",
        )?;

        let nodes = match agent_listen {
            Some((listen, ca_path, token)) => {
                start_nodes(opts.agents, &host, listen, &ca_path, &token).await?
            }
            None => Vec::new(),
        };
        let env = Env {
            _dir: dir,
            registry,
            proxy,
            api,
            nodes,
            aggregator,
            metrics,
            host,
            refs,
            check_interval: opts.check_interval,
        };
        env.settle().await?;
        Ok(env)
    }

    /// Waits until every reference is `available` and every agent is connected.
    pub async fn settle(&self) -> Result<()> {
        let agents = self.nodes.len() as f64;
        let refs = self.refs.clone();
        self.wait_for("the steady state", SETTLE_TIMEOUT, move |m| {
            all_available(m, &refs)
                && value(m, "pullwatch_agents_connected").unwrap_or(0.0) >= agents
        })
        .await
        .map(|_| ())
    }

    /// The image of tag `tag`, as workloads name it.
    pub fn image(&self, tag: &str) -> String {
        format!("{}/{REPO}:{tag}", self.host)
    }

    /// The aggregator's `/metrics`, empty while it does not answer.
    pub async fn scrape(&self) -> String {
        scrape(self.metrics).await
    }

    /// Polls `/metrics` until `condition` holds; how long that took.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&str) -> bool,
    ) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let metrics = self.scrape().await;
            if !metrics.is_empty() && condition(&metrics) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!(
                    "timed out after {timeout:?} waiting for {what}\n--- /metrics:\n{}\n--- aggregator log (tail):\n{}",
                    canonical_lines(&metrics),
                    tail(&self.aggregator.log(), 40)
                );
            }
            // A large exposition costs the aggregator CPU to render: ask less often.
            let period = if self.refs.len() > 500 { 500 } else { 50 };
            tokio::time::sleep(Duration::from_millis(period)).await;
        }
    }

    /// Panics in every log of the bench's children (aggregator and agents).
    pub fn panics(&self) -> usize {
        self.aggregator.panics() + self.nodes.iter().map(|n| n.agent.panics()).sum::<usize>()
    }

    /// References of `expected` without exactly one status in `/metrics`.
    pub async fn without_status(&self, expected: &[String]) -> usize {
        let statuses = canonical(&self.scrape().await);
        expected
            .iter()
            .filter(|r| statuses.get(*r).is_none_or(|s| s.len() != 1))
            .count()
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn canonical_lines(metrics: &str) -> String {
    metrics
        .lines()
        .filter(|l| l.starts_with("k8s_image_availability_exporter_") && l.ends_with(" 1"))
        .chain(
            metrics
                .lines()
                .filter(|l| l.starts_with("pullwatch_agents_connected")),
        )
        .collect::<Vec<_>>()
        .join("\n")
}

/// `GET /metrics` of `addr`; empty when it does not answer 200.
pub async fn scrape(addr: SocketAddr) -> String {
    match http_request(addr, http::Method::GET, "/metrics", &[], Vec::new()).await {
        Ok(r) if r.status == 200 => r.text(),
        _ => String::new(),
    }
}

/// Every reference's statuses whose canonical gauge is 1 (exactly one when all is well).
pub fn canonical(metrics: &str) -> BTreeMap<String, Vec<String>> {
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in metrics.lines().filter(|l| l.ends_with(" 1")) {
        let Some(rest) = line.strip_prefix("k8s_image_availability_exporter_") else {
            continue;
        };
        let Some((status, labels)) = rest.split_once('{') else {
            continue;
        };
        let labels = parse_labels(labels.trim_end_matches(" 1").trim_end_matches('}'));
        let label = |name: &str| labels.get(name).map(String::as_str).unwrap_or_default();
        let key = ref_key(
            label("namespace"),
            label("kind"),
            label("name"),
            label("container"),
            label("image"),
        );
        found.entry(key).or_default().push(status.to_string());
    }
    found
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((name, after)) = rest.split_once("=\"") {
        let Some((value, next)) = after.split_once('"') else {
            break;
        };
        labels.insert(name.trim_start_matches(',').to_string(), value.to_string());
        rest = next;
    }
    labels
}

/// Whether every reference of `refs` is `available` (and only that).
pub fn all_available(metrics: &str, refs: &[String]) -> bool {
    let statuses = canonical(metrics);
    refs.iter()
        .all(|r| statuses.get(r).is_some_and(|s| s == &["available"]))
}

/// The value of the first series whose line starts with `prefix`.
pub fn value(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The sum of every series of `name` whose labels contain each of `with`.
pub fn sum(metrics: &str, name: &str, with: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && with.iter().all(|w| l.contains(w))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What a [`Sampler`] saw of each reference while it ran.
#[derive(Debug, Default)]
pub struct Observed {
    /// Reference -> every status it showed.
    pub statuses: BTreeMap<String, BTreeSet<String>>,
    /// Reference (of those that must stay) -> scrapes in which it had no status.
    pub missing: BTreeMap<String, usize>,
    /// Scrapes that answered.
    pub scrapes: usize,
}

impl Observed {
    /// References that showed a status `allowed` refuses, or went missing while they
    /// had to stay. Each counts once.
    pub fn wrong(&self, allowed: impl Fn(&str, &str) -> bool) -> BTreeSet<String> {
        let mut wrong: BTreeSet<String> = self
            .statuses
            .iter()
            .filter(|(r, statuses)| statuses.iter().any(|s| !allowed(r, s)))
            .map(|(r, _)| r.clone())
            .collect();
        wrong.extend(self.missing.keys().cloned());
        wrong
    }

    /// Whether every reference of `refs` showed `status` at least once.
    pub fn all_showed(&self, refs: &[String], status: &str) -> bool {
        refs.iter()
            .all(|r| self.statuses.get(r).is_some_and(|s| s.contains(status)))
    }
}

/// Scrapes `/metrics` every `period` in the background, recording what each reference
/// showed, until [`finish`](Self::finish).
pub struct Sampler {
    stop: watch::Sender<bool>,
    task: JoinHandle<Observed>,
}

impl Sampler {
    /// `must_stay`: references whose series must never be missing from an answer.
    pub fn start(addr: SocketAddr, period: Duration, must_stay: Vec<String>) -> Sampler {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut observed = Observed::default();
            loop {
                let metrics = scrape(addr).await;
                if !metrics.is_empty() {
                    observed.scrapes += 1;
                    let statuses = canonical(&metrics);
                    for r in &must_stay {
                        if !statuses.contains_key(r) {
                            *observed.missing.entry(r.clone()).or_default() += 1;
                        }
                    }
                    for (r, s) in statuses {
                        observed.statuses.entry(r).or_default().extend(s);
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = stopped.changed() => return observed,
                }
            }
        });
        Sampler { stop, task }
    }

    /// Stops sampling and returns what was seen.
    pub async fn finish(self) -> Observed {
        self.stop.send_replace(true);
        self.task.await.unwrap_or_default()
    }
}
