//! The fault suite: each scenario starts the real binaries (`pullwatch-aggregator serve`
//! in cluster mode, `pullwatch-agent run` on real containerd nodes) against a real
//! docker-registry and the test API server, injects one fault, removes it, and measures:
//!
//! - **panics**: "panicked" in the children's logs (0 due);
//! - **without status**: references with no (or more than one) status on `/metrics`
//!   after recovery (0 due);
//! - **wrong**: references that showed a status the scenario does not allow during the
//!   fault and the recovery, or lost their series while they had to keep it (0 due);
//! - **seen**: whether the fault was observable at all (the test of a fault that did
//!   not happen proves nothing);
//! - **recovery**: from the end of the fault until everything is right again, as a
//!   ratio to the aggregator's retry backoff ([`CHECK_INTERVAL`], which is below the
//!   scheduler's 10 s first retry and so is the retry backoff); for the burst, the
//!   aggregator's CPU per change as a ratio to a plain kube watcher's.
//!
//! `tests/benches/faults.rs` runs every scenario at [`Scale::full`] and prints the
//! table; `tests/tests/faults.rs` runs each at [`Scale::small`] and asserts the zeros.

mod burst;
mod env;
mod proxy;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;

pub use env::{CHECK_INTERVAL, canonical};
use env::{
    Env, EnvOptions, NAMESPACE, Observed, Sampler, all_available, ref_key, sum, tail, value,
};
pub use proxy::{FaultProxy, ProxyMode};

use crate::apiserver::{deployment, secret_dockerconfigjson, with_pull_secrets};
use crate::procfs::owns_tcp_port;

/// How big a run is.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    /// Workloads (Deployments, one container reference each).
    pub workloads: usize,
    /// Distinct image tags they use.
    pub tags: usize,
    /// How long each fault lasts.
    pub fault: Duration,
    /// Workload changes in the burst (applied within one second).
    pub burst: usize,
    /// How often `/metrics` is sampled during a fault.
    pub sample: Duration,
    /// How long recovery may take before the scenario counts as not recovered.
    pub recover_within: Duration,
}

impl Scale {
    /// The tests: a few workloads, short faults.
    pub fn small() -> Scale {
        Scale {
            workloads: 4,
            tags: 2,
            fault: Duration::from_secs(5),
            burst: 300,
            sample: Duration::from_millis(100),
            recover_within: Duration::from_secs(40),
        }
    }

    /// The bench.
    pub fn full() -> Scale {
        Scale {
            workloads: 60,
            tags: 20,
            fault: Duration::from_secs(10),
            burst: 10_000,
            sample: Duration::from_millis(100),
            recover_within: Duration::from_secs(120),
        }
    }
}

/// One fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    RegistryDown,
    Registry5xx,
    ContainerdRestart,
    AgentKilledMidCheck,
    AggregatorRestart,
    ApiServerDown,
    Watch410,
    SecretsForbidden,
    Burst,
}

impl Scenario {
    pub const ALL: [Scenario; 9] = [
        Scenario::RegistryDown,
        Scenario::Registry5xx,
        Scenario::ContainerdRestart,
        Scenario::AgentKilledMidCheck,
        Scenario::AggregatorRestart,
        Scenario::ApiServerDown,
        Scenario::Watch410,
        Scenario::SecretsForbidden,
        Scenario::Burst,
    ];

    /// The row's name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::RegistryDown => "registry down, then up",
            Scenario::Registry5xx => "registry answers 503, then healthy",
            Scenario::ContainerdRestart => "containerd restart under an agent",
            Scenario::AgentKilledMidCheck => "agent killed (SIGKILL) mid-check",
            Scenario::AggregatorRestart => "aggregator killed and restarted",
            Scenario::ApiServerDown => "API server down, then up",
            Scenario::Watch410 => "watch 410 Gone (compaction)",
            Scenario::SecretsForbidden => "secrets forbidden mid-run",
            Scenario::Burst => "burst of workload changes in 1 s",
        }
    }

    /// What bounds the recovery (the README explains each).
    pub fn bounded_by(self) -> &'static str {
        match self {
            Scenario::RegistryDown | Scenario::Registry5xx | Scenario::ContainerdRestart => {
                "retry backoff"
            }
            Scenario::AgentKilledMidCheck => "re-placement, agent start",
            Scenario::AggregatorRestart => "agents' reconnect backoff (random below 5 s, doubling)",
            Scenario::ApiServerDown => "kube watcher backoff (0.8 s doubling)",
            Scenario::Watch410 => "relist",
            Scenario::SecretsForbidden => "kube watcher backoff (0.8 s doubling)",
            Scenario::Burst => "",
        }
    }

    /// Which statuses a reference may show during the fault and the recovery.
    fn allowed(self) -> fn(&str, &str) -> bool {
        match self {
            Scenario::RegistryDown | Scenario::Registry5xx => registry_fault_allowed,
            _ => only_available,
        }
    }

    /// Runs the scenario at `scale` in fresh parts.
    pub async fn run(self, scale: Scale) -> Result<Row> {
        let row = match self {
            Scenario::RegistryDown | Scenario::Registry5xx => registry_fault(self, scale).await,
            Scenario::ContainerdRestart => containerd_restart(self, scale).await,
            Scenario::AgentKilledMidCheck => agent_killed(self, scale).await,
            Scenario::AggregatorRestart => aggregator_restart(self, scale).await,
            Scenario::ApiServerDown => api_server_down(self, scale).await,
            Scenario::Watch410 => watch_410(self, scale).await,
            Scenario::SecretsForbidden => secrets_forbidden(self, scale).await,
            Scenario::Burst => burst::run(scale).await,
        };
        row.with_context(|| format!("fault scenario {:?}", self.name()))
    }
}

/// The scenario's main figure.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Figure {
    /// Time to recover / the aggregator's retry backoff.
    Recovered(f64),
    /// Not recovered within [`Scale::recover_within`].
    NotRecovered,
    /// The aggregator's CPU-seconds per change / a plain kube watcher's.
    CpuPerChange(f64),
}

/// One scenario's figures.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: Scenario,
    pub panics: usize,
    pub without_status: usize,
    pub wrong: usize,
    pub seen: bool,
    pub figure: Figure,
    /// What went wrong, for a failing test: wrong references, logs.
    pub detail: String,
}

impl Row {
    /// Panics (with the detail) unless every zero that is due is a zero, the fault was
    /// seen and the scenario recovered.
    #[track_caller]
    pub fn assert_healthy(&self) {
        let healthy = self.panics == 0
            && self.without_status == 0
            && self.wrong == 0
            && self.seen
            && !matches!(self.figure, Figure::NotRecovered);
        assert!(
            healthy,
            "{}: panics {}, without status {}, wrong {}, fault seen {}, {:?}\n{}",
            self.scenario.name(),
            self.panics,
            self.without_status,
            self.wrong,
            self.seen,
            self.figure,
            self.detail
        );
    }
}

/// The table the bench prints.
pub fn table(rows: &[Row]) -> String {
    let backoff = CHECK_INTERVAL.as_secs_f64();
    let mut out = format!(
        "{:<36} {:>6} {:>10} {:>6} {:>5}  {:<28} {}\n",
        "fault",
        "panics",
        "no status",
        "wrong",
        "seen",
        format!("recovery / retry ({backoff} s)"),
        "recovery bounded by"
    );
    for row in rows {
        let figure = match row.figure {
            Figure::Recovered(ratio) => format!("{ratio:.2}"),
            Figure::NotRecovered => "NOT RECOVERED".to_string(),
            Figure::CpuPerChange(ratio) => {
                format!("CPU/change {ratio:.2}x a kube watcher")
            }
        };
        out.push_str(&format!(
            "{:<36} {:>6} {:>10} {:>6} {:>5}  {:<28} {}\n",
            row.scenario.name(),
            row.panics,
            row.without_status,
            row.wrong,
            if row.seen { "yes" } else { "NO" },
            figure,
            row.scenario.bounded_by()
        ));
    }
    out
}

fn options(scale: Scale, agents: usize, proxy: bool) -> EnvOptions {
    EnvOptions {
        workloads: scale.workloads,
        tags: scale.tags,
        spare_tags: &["late"],
        agents,
        proxy,
        check_interval: CHECK_INTERVAL,
    }
}

/// Polls `probe` until it is true; how long that took, or None after `timeout`.
async fn wait_until<F, Fut>(timeout: Duration, mut probe: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if probe().await {
            return Some(started.elapsed());
        }
        if started.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Builds the row: panics, references without a status, wrong ones (as the scenario's
/// [`allowed`](Scenario::allowed) judges the observations), recovery as a ratio to the retry backoff.
async fn finish(
    scenario: Scenario,
    env: &Env,
    expected: &[String],
    observed: Observed,
    seen: bool,
    recovered: Option<Duration>,
) -> Row {
    let wrong = observed.wrong(scenario.allowed());
    let without_status = env.without_status(expected).await;
    let mut detail = String::new();
    if !wrong.is_empty() {
        detail.push_str("wrong:\n");
        for r in &wrong {
            detail.push_str(&format!(
                "  {r}: showed {:?}, missing in {} of {} scrapes\n",
                observed.statuses.get(r),
                observed.missing.get(r).copied().unwrap_or(0),
                observed.scrapes
            ));
        }
    }
    if without_status > 0 || !wrong.is_empty() || !seen || recovered.is_none() {
        detail.push_str(&format!(
            "--- aggregator log (tail):\n{}\n",
            tail(&env.aggregator.log(), 60)
        ));
        for node in &env.nodes {
            detail.push_str(&format!(
                "--- {} agent log (tail):\n{}\n",
                node.name,
                tail(&node.agent.log(), 30)
            ));
        }
    }
    Row {
        scenario,
        panics: env.panics(),
        without_status,
        wrong: wrong.len(),
        seen,
        figure: match recovered {
            Some(took) => Figure::Recovered(took.as_secs_f64() / env.check_interval.as_secs_f64()),
            None => Figure::NotRecovered,
        },
        detail,
    }
}

/// Waits, from now, until every reference of `refs` is `available` again.
async fn recover_all(env: &Env, refs: &[String], within: Duration) -> Option<Duration> {
    env.wait_for("recovery", within, |m| all_available(m, refs))
        .await
        .ok()
}

/// A registry fault seen through the agents: during it, a reference is `available`
/// (not rechecked yet) or `registry_unavailable`; never `absent` (the tag is there) nor
/// `authentication_failure` (the credentials are good).
fn registry_fault_allowed(_: &str, status: &str) -> bool {
    status == "available" || status == "registry_unavailable"
}

fn only_available(_: &str, status: &str) -> bool {
    status == "available"
}

/// The registry goes down (its process killed, then restarted on its port and data)
/// or answers 503 (through the proxy) for the fault; the agents check.
async fn registry_fault(scenario: Scenario, scale: Scale) -> Result<Row> {
    let down = scenario == Scenario::RegistryDown;
    let mut env = Env::start(options(scale, 2, !down)).await?;
    let sampler = Sampler::start(env.metrics, scale.sample, env.refs.clone());
    match env.proxy.as_ref() {
        Some(proxy) => proxy.set(ProxyMode::Status(503)),
        None => env.registry.stop(),
    }
    tokio::time::sleep(scale.fault).await;
    match env.proxy.as_ref() {
        Some(proxy) => proxy.set(ProxyMode::Pass),
        None => env.registry.start_again().await?,
    }
    let recovered = recover_all(&env, &env.refs, scale.recover_within).await;
    let observed = sampler.finish().await;
    let seen = observed.all_showed(&env.refs, "registry_unavailable");
    Ok(finish(scenario, &env, &env.refs, observed, seen, recovered).await)
}

/// CRI calls of one agent that answered OK, and those that did not.
async fn cri_calls(node: &env::Node) -> (f64, f64) {
    let metrics = env::scrape(node.metrics).await;
    let all = sum(&metrics, "pullwatch_agent_cri_requests_total", &[]);
    let ok = sum(
        &metrics,
        "pullwatch_agent_cri_requests_total",
        &["code=\"OK\""],
    );
    (ok, all - ok)
}

/// containerd of node-a is killed under its agent and started again. A runtime that
/// does not answer says nothing about an image: the check goes to another node (or
/// the aggregator), and every reference stays `available`. Recovered when node-a's
/// agent checks through its runtime again and everything is `available`.
async fn containerd_restart(scenario: Scenario, scale: Scale) -> Result<Row> {
    let mut env = Env::start(options(scale, 2, false)).await?;
    let sampler = Sampler::start(env.metrics, scale.sample, env.refs.clone());
    let (_, failed_before) = cri_calls(&env.nodes[0]).await;
    env.nodes[0].containerd.stop();
    tokio::time::sleep(scale.fault).await;
    let (_, failed_during) = cri_calls(&env.nodes[0]).await;
    env.nodes[0].containerd.restart().await?;
    let (ok_at_restart, _) = cri_calls(&env.nodes[0]).await;
    let refs = env.refs.clone();
    let (env_ref, node) = (&env, &env.nodes[0]);
    let recovered = wait_until(scale.recover_within, || {
        let refs = &refs;
        async move {
            cri_calls(node).await.0 > ok_at_restart && all_available(&env_ref.scrape().await, refs)
        }
    })
    .await;
    let observed = sampler.finish().await;
    let seen = failed_during > failed_before;
    Ok(finish(scenario, &env, &env.refs, observed, seen, recovered).await)
}

/// A new workload's check is caught in flight on an agent (the proxy holds its
/// request), that agent is SIGKILLed and started again (as its DaemonSet would). The
/// check must move on and every reference be `available`, the new one included; no
/// other status is right (the registry and the image are fine).
async fn agent_killed(scenario: Scenario, scale: Scale) -> Result<Row> {
    let mut env = Env::start(options(scale, 2, true)).await?;
    let late = env.image("late");
    let late_ref = ref_key(NAMESPACE, "deployment", "late", "c0", &late);
    let mut expected = env.refs.clone();
    expected.push(late_ref);
    let sampler = Sampler::start(env.metrics, scale.sample, env.refs.clone());
    let proxy = env.proxy.as_ref().context("the scenario has a proxy")?;
    proxy.set(ProxyMode::Hold);
    env.api.apply(&with_pull_secrets(
        deployment(NAMESPACE, "late", &[&late]),
        &["regcred"],
    ))?;
    // The agent whose connection the proxy holds is mid-check.
    let pids: Vec<Option<u32>> = env.nodes.iter().map(|n| n.agent.pid()).collect();
    let mut victim = None;
    wait_until(Duration::from_secs(20), || {
        victim = proxy.held_peers().iter().find_map(|peer| {
            pids.iter()
                .position(|pid| pid.is_some_and(|pid| owns_tcp_port(pid, peer.port())))
        });
        std::future::ready(victim.is_some())
    })
    .await;
    let seen = victim.is_some();
    let index = victim.unwrap_or(0);
    let started = Instant::now();
    env.nodes[index].agent.kill();
    proxy.set(ProxyMode::Pass);
    env.nodes[index].agent.start_again()?;
    // The new agent process itself says it is connected (the aggregator may count the
    // dead session a moment longer).
    let (env_ref, node, expected_ref) = (&env, &env.nodes[index], &expected);
    let recovered = wait_until(scale.recover_within, || async move {
        value(
            &env::scrape(node.metrics).await,
            "pullwatch_agent_aggregator_connected",
        ) == Some(1.0)
            && all_available(&env_ref.scrape().await, expected_ref)
    })
    .await
    .map(|_| started.elapsed());
    let observed = sampler.finish().await;
    Ok(finish(scenario, &env, &expected, observed, seen, recovered).await)
}

/// The aggregator is SIGKILLed, stays down for the fault, and starts again on the same
/// ports. While it is down nothing is served; once up, a reference has no series until
/// checked, then `available` (nothing else is right). Recovered when every series is
/// back and every agent has reconnected.
async fn aggregator_restart(scenario: Scenario, scale: Scale) -> Result<Row> {
    let mut env = Env::start(options(scale, 2, false)).await?;
    let attempts = |metrics: &str| {
        sum(
            metrics,
            "pullwatch_agent_aggregator_connection_attempts_total",
            &[],
        )
    };
    let mut before = 0.0;
    for node in &env.nodes {
        before += attempts(&env::scrape(node.metrics).await);
    }
    let sampler = Sampler::start(env.metrics, scale.sample, Vec::new());
    env.aggregator.kill();
    tokio::time::sleep(scale.fault).await;
    env.aggregator.start_again()?;
    let agents = env.nodes.len() as f64;
    let refs = env.refs.clone();
    let recovered = env
        .wait_for("recovery", scale.recover_within, |m| {
            all_available(m, &refs)
                && value(m, "pullwatch_agents_connected").unwrap_or(0.0) >= agents
        })
        .await
        .ok();
    let mut after = 0.0;
    for node in &env.nodes {
        after += attempts(&env::scrape(node.metrics).await);
    }
    let observed = sampler.finish().await;
    let seen = after > before;
    Ok(finish(scenario, &env, &env.refs, observed, seen, recovered).await)
}

/// While the Kubernetes side is out of reach, `svc-0` is deleted and `added` created.
/// Returns the references expected after recovery (every other one must keep its
/// series meanwhile).
fn change_workloads(env: &Env) -> Result<Vec<String>> {
    let image = env.image("v0");
    env.api.apply(&with_pull_secrets(
        deployment(NAMESPACE, "added", &[&image]),
        &["regcred"],
    ))?;
    if !env.api.delete::<Deployment>(NAMESPACE, "svc-0") {
        bail!("svc-0 was not there to delete");
    }
    let mut expected: Vec<String> = env.refs[1..].to_vec();
    expected.push(ref_key(NAMESPACE, "deployment", "added", "c0", &image));
    Ok(expected)
}

/// Waits until the changes of [`change_workloads`] show: `added` `available`, `svc-0`
/// gone, the rest `available`.
async fn recover_changes(env: &Env, expected: &[String], within: Duration) -> Option<Duration> {
    env.wait_for("the changes made during the fault", within, |m| {
        all_available(m, expected) && !m.contains("name=\"svc-0\"")
    })
    .await
    .ok()
}

/// The API server stops (connections cut, port refusing) for the fault. The last known
/// state is kept: no series dropped, every status stays `available` (checks go on).
/// Recovered when what changed meanwhile shows.
async fn api_server_down(scenario: Scenario, scale: Scale) -> Result<Row> {
    let env = Env::start(options(scale, 0, false)).await?;
    let errors = |m: &str| sum(m, "pullwatch_inventory_watch_errors_total", &[]);
    let errors_before = errors(&env.scrape().await);
    let sampler = Sampler::start(env.metrics, scale.sample, env.refs[1..].to_vec());
    env.api.stop().await;
    let expected = change_workloads(&env)?;
    tokio::time::sleep(scale.fault).await;
    let seen = errors(&env.scrape().await) > errors_before;
    env.api.start_again().await?;
    let recovered = recover_changes(&env, &expected, scale.recover_within).await;
    let observed = sampler.finish().await;
    Ok(finish(scenario, &env, &expected, observed, seen, recovered).await)
}

/// The history is compacted and every watch cut: the re-watches from the last seen
/// resourceVersion get 410 Gone and relist. No series of a workload that still exists
/// may drop or change meanwhile; recovered when the changes made meanwhile show.
async fn watch_410(scenario: Scenario, scale: Scale) -> Result<Row> {
    let env = Env::start(options(scale, 0, false)).await?;
    let lists_before = env.api.list_requests("deployments").len();
    let sampler = Sampler::start(env.metrics, scale.sample, env.refs[1..].to_vec());
    env.api.compact();
    env.api.drop_watches();
    let expected = change_workloads(&env)?;
    let recovered = recover_changes(&env, &expected, scale.recover_within).await;
    let seen = env.api.list_requests("deployments").len() > lists_before;
    let observed = sampler.finish().await;
    Ok(finish(scenario, &env, &expected, observed, seen, recovered).await)
}

/// RBAC stops allowing secrets mid-run (the watches are cut, as an API server restart
/// does, so the refusal is met). The secrets already known are kept: the kubelet still
/// holds them and the pods still pull, so `authentication_failure` would be a false
/// alarm: every status stays `available`. Recovered when listing is allowed again and
/// a secret created meanwhile is in the inventory.
async fn secrets_forbidden(scenario: Scenario, scale: Scale) -> Result<Row> {
    let env = Env::start(options(scale, 0, false)).await?;
    const FORBIDDEN: &str = "pullwatch_inventory_forbidden{resource=\"secrets/dockerconfigjson\"}";
    const OBJECTS: &str = "pullwatch_inventory_objects{resource=\"secrets/dockerconfigjson\"}";
    let objects_before = value(&env.scrape().await, OBJECTS).unwrap_or(0.0);
    let sampler = Sampler::start(env.metrics, scale.sample, env.refs.clone());
    let started = Instant::now();
    env.api.forbid("secrets");
    env.api.drop_watches();
    env.api.apply(&secret_dockerconfigjson(
        NAMESPACE,
        "created-meanwhile",
        "other.registry.example",
        "someone",
        "something",
    ))?;
    let seen = env
        .wait_for("the refusal", scale.fault, |m| {
            value(m, FORBIDDEN) == Some(1.0)
        })
        .await
        .is_ok();
    tokio::time::sleep(scale.fault.saturating_sub(started.elapsed())).await;
    env.api.allow("secrets");
    let refs = env.refs.clone();
    let recovered = env
        .wait_for("secrets again", scale.recover_within, |m| {
            value(m, FORBIDDEN) == Some(0.0)
                && value(m, OBJECTS).unwrap_or(0.0) > objects_before
                && all_available(m, &refs)
        })
        .await
        .ok();
    let observed = sampler.finish().await;
    Ok(finish(scenario, &env, &env.refs, observed, seen, recovered).await)
}
