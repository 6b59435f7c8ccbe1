//! Node agents, the stage beside the checker: the gRPC `AgentService` they connect to
//! ([`server`], authenticated by [`auth`], over [`tls`]), and the hub the scheduler
//! runs checks on them through ([`AgentHub`]: the sessions, here; [`placement`] of a
//! check on nodes; [`dispatch`] of a task to one node; [`route`]: one check over one
//! node per group, combined into the kubelet's view; [`groups`]: node groups from the
//! cluster's Nodes).
//!
//! One bidirectional stream per agent (proto/pullwatch/v1): the agent registers (node
//! name, runtime, images it holds), the hub answers `Registered` (heartbeat interval,
//! per-node concurrency), then sends `CheckTask`s and receives `CheckResult`s on the
//! same stream; both sides send heartbeats. An agent that closes its stream, breaks
//! it, or stays silent for three heartbeat intervals is gone: its unanswered tasks are
//! re-placed on another connected agent (same node group first, nodes holding the
//! image first), so a dispatch returns a result as long as any suitable agent is left.
//!
//! Each node has `max_concurrent_checks` slots: a dispatch waits for one before its
//! task is sent, so per-node concurrency is bounded here and not only by the agent.
//! [`route`] places one distinct check on one node per node group and combines the
//! answers into the kubelet's view.
//!
//! Pull secrets (`CheckTask.credentials`) are only ever sent over TLS, and on
//! re-placement only to nodes the caller listed as running the workload (or dropped,
//! with [`DispatchOptions::move_without_credentials`]).

pub mod auth;
pub mod cli;
pub mod dispatch;
pub mod groups;
pub mod placement;
pub mod quota;
pub mod route;
pub mod server;
pub mod tls;

pub use dispatch::{DispatchOptions, Dispatched};
use dispatch::{Pending, fail_pending};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use pullwatch::proto::{AggregatorMessage, CheckResult};
use pullwatch::support::lock;
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{debug, info, warn};

/// Counters of agent sessions refused and taken over (`/metrics` once
/// [`AgentHub::register_metrics`] ran).
#[derive(Clone, Debug)]
pub struct AgentSecurityMetrics {
    /// `pullwatch_agent_sessions_refused_total{reason}`.
    refused: Option<IntCounterVec>,
    /// `pullwatch_agent_session_takeovers_total`.
    takeovers: Option<IntCounter>,
}

impl AgentSecurityMetrics {
    fn new() -> AgentSecurityMetrics {
        // Constant, valid definitions: these constructors do not fail in practice.
        let refused = IntCounterVec::new(
            Opts::new(
                "pullwatch_agent_sessions_refused_total",
                "Agent sessions refused, by reason (wrong_service_account, wrong_node, no_pod, pod_mismatch, plaintext, takeover_refused, ...)",
            ),
            &["reason"],
        );
        let takeovers = IntCounter::new(
            "pullwatch_agent_session_takeovers_total",
            "Agent sessions that replaced an open session of the same node and identity",
        );
        AgentSecurityMetrics {
            refused: refused.ok(),
            takeovers: takeovers.ok(),
        }
    }

    /// Counts one refused session.
    pub fn refused(&self, reason: &str) {
        if let Some(refused) = &self.refused {
            refused.with_label_values(&[reason]).inc();
        }
    }

    /// Sessions refused for `reason` so far.
    pub fn refused_count(&self, reason: &str) -> u64 {
        self.refused
            .as_ref()
            .map_or(0, |r| r.with_label_values(&[reason]).get())
    }

    fn took_over(&self) {
        if let Some(takeovers) = &self.takeovers {
            takeovers.inc();
        }
    }

    /// Takeovers so far.
    pub fn takeovers(&self) -> u64 {
        self.takeovers.as_ref().map_or(0, IntCounter::get)
    }
}

/// Why a dispatch gave no result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("no agent is connected for node {0:?}")]
    NoAgent(String),
    #[error("agent on node {node:?} went away and no other agent could take the task")]
    AgentGone { node: String },
    #[error("agent on node {node:?} did not answer within {after:?}")]
    Timeout { node: String, after: Duration },
    #[error("pull credentials are only sent to agents over TLS; the agent server runs without TLS")]
    CredentialsNeedTls,
}

/// Hub settings.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// How often agents (and the hub) send heartbeats.
    pub heartbeat_interval: Duration,
    /// Checks one agent runs at a time (sent in `Registered`).
    pub max_concurrent_checks: u32,
    /// How long one dispatched task may take on one agent.
    pub task_timeout: Duration,
    /// The node label whose value groups nodes (`--node-group-label`).
    pub node_group_label: Option<String>,
    /// Whether agents connect over TLS (credentials are only sent then).
    pub tls: bool,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            heartbeat_interval: Duration::from_secs(10),
            max_concurrent_checks: 4,
            task_timeout: Duration::from_secs(360),
            node_group_label: None,
            tls: false,
        }
    }
}

/// A connected agent, as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentInfo {
    pub node_name: String,
    pub runtime_name: String,
    pub runtime_version: String,
    pub agent_version: String,
    /// Normalized references of the images the node holds.
    pub images: BTreeSet<String>,
    pub node_labels: BTreeMap<String, String>,
    pub connected_at: SystemTime,
    /// Tasks sent and not yet answered.
    pub in_flight: usize,
}

struct AgentEntry {
    session: u64,
    /// Who authenticated this session ([`auth::AgentIdentity::principal`]).
    principal: String,
    info: AgentInfo,
    tx: mpsc::Sender<AggregatorMessage>,
    pending: HashMap<u64, Pending>,
    /// Tasks waiting for one of the node's slots.
    queued: usize,
    /// The node's check slots (`max_concurrent_checks`); closed when the agent goes.
    slots: Arc<Semaphore>,
    last_seen: Instant,
}

#[derive(Default)]
struct HubState {
    agents: HashMap<String, AgentEntry>,
    /// Node name -> value of `--node-group-label`, from the cluster's Node objects
    /// (`Some("")`: the node has no such label). Wins over what agents send.
    node_groups: HashMap<String, String>,
}

struct HubInner {
    config: HubConfig,
    state: Mutex<HubState>,
    next_task: AtomicU64,
    next_session: AtomicU64,
    /// Bumped whenever an agent comes, goes, or reports a new image list.
    changes: watch::Sender<u64>,
    security: AgentSecurityMetrics,
    quotas: quota::NodeQuotas,
}

/// The registry of connected agents. Cheap to clone.
#[derive(Clone)]
pub struct AgentHub {
    inner: Arc<HubInner>,
}

impl std::fmt::Debug for AgentHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHub")
            .field("agents", &self.nodes())
            .finish()
    }
}

/// The handle a session keeps: identifies its registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionId {
    pub node: String,
    id: u64,
}

impl AgentHub {
    pub fn new(config: HubConfig) -> AgentHub {
        AgentHub {
            inner: Arc::new(HubInner {
                config,
                state: Mutex::new(HubState::default()),
                next_task: AtomicU64::new(1),
                next_session: AtomicU64::new(1),
                changes: watch::channel(0).0,
                security: AgentSecurityMetrics::new(),
                quotas: quota::NodeQuotas::new(),
            }),
        }
    }

    /// Tells when agents come, go or report new image lists (the value counts changes).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    fn changed(&self) {
        self.inner.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether any agent is connected.
    pub fn is_empty(&self) -> bool {
        lock(&self.inner.state).agents.is_empty()
    }

    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// The pull quotas the nodes' routes see, as their agents report them.
    pub fn node_quotas(&self) -> &quota::NodeQuotas {
        &self.inner.quotas
    }

    /// The refusal and takeover counters.
    pub fn security_metrics(&self) -> &AgentSecurityMetrics {
        &self.inner.security
    }

    /// Adds the refusal and takeover counters to `registry` (the aggregator's /metrics).
    pub fn register_metrics(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        if let Some(refused) = &self.inner.security.refused {
            registry.register(Box::new(refused.clone()))?;
        }
        if let Some(takeovers) = &self.inner.security.takeovers {
            registry.register(Box::new(takeovers.clone()))?;
        }
        self.inner.quotas.register(registry)
    }

    /// Records a newly registered agent whose outbound messages go to `tx`, with no
    /// authenticated identity (tests and in-process agents): [`Self::register_as`].
    /// A node registering again replaces its previous session.
    pub fn register(&self, info: AgentInfo, tx: mpsc::Sender<AggregatorMessage>) -> SessionId {
        let id = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
        let node = info.node_name.clone();
        // Without an identity nothing is refused: the only error is a refusal.
        let _ = self.insert_session(id, info, tx, "", true);
        SessionId { node, id }
    }

    /// Records a newly registered agent of `principal` whose outbound messages go to
    /// `tx`. A node registering again replaces its previous session (whose tasks are
    /// re-placed) only when both are the same principal: the takeover is logged and
    /// counted. A session of another principal is refused while the first is open.
    pub fn register_as(
        &self,
        info: AgentInfo,
        tx: mpsc::Sender<AggregatorMessage>,
        principal: &str,
    ) -> Result<SessionId, auth::AuthError> {
        let id = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
        let node = info.node_name.clone();
        self.insert_session(id, info, tx, principal, false)?;
        Ok(SessionId { node, id })
    }

    fn insert_session(
        &self,
        id: u64,
        mut info: AgentInfo,
        tx: mpsc::Sender<AggregatorMessage>,
        principal: &str,
        force: bool,
    ) -> Result<(), auth::AuthError> {
        let node = info.node_name.clone();
        info.in_flight = 0;
        let replaced = {
            let mut state = lock(&self.inner.state);
            if let Some(current) = state.agents.get(&node)
                && current.principal != principal
                && !force
            {
                return Err(auth::AuthError::TakeoverRefused {
                    node,
                    current: current.principal.clone(),
                    new: principal.to_string(),
                });
            }
            state.agents.insert(
                node.clone(),
                AgentEntry {
                    session: id,
                    principal: principal.to_string(),
                    info,
                    tx,
                    pending: HashMap::new(),
                    queued: 0,
                    slots: Arc::new(Semaphore::new(
                        self.inner.config.max_concurrent_checks.max(1) as usize,
                    )),
                    last_seen: Instant::now(),
                },
            )
        };
        info!(node = %node, "agent registered");
        if let Some(old) = replaced {
            warn!(node = %node, principal, pending = old.pending.len(), "a new agent session of the same identity took over the node's open session");
            self.inner.security.took_over();
            old.slots.close();
            fail_pending(&node, old.pending);
        }
        self.changed();
        Ok(())
    }

    /// Ends a session: the agent is gone, its unanswered tasks are re-placed.
    pub fn unregister(&self, session: &SessionId) {
        let removed = {
            let mut state = lock(&self.inner.state);
            match state.agents.get(&session.node) {
                Some(entry) if entry.session == session.id => state.agents.remove(&session.node),
                _ => None,
            }
        };
        if let Some(entry) = removed {
            info!(node = %session.node, pending = entry.pending.len(), "agent went away");
            self.inner.quotas.forget_node(&session.node);
            entry.slots.close();
            fail_pending(&session.node, entry.pending);
            self.changed();
        }
    }

    /// Marks the agent alive (any message counts).
    pub fn touch(&self, session: &SessionId) {
        let mut state = lock(&self.inner.state);
        if let Some(entry) = state.agents.get_mut(&session.node)
            && entry.session == session.id
        {
            entry.last_seen = Instant::now();
        }
    }

    /// How long the agent has been silent (None: not registered under this session).
    pub fn silence(&self, session: &SessionId) -> Option<Duration> {
        let state = lock(&self.inner.state);
        state
            .agents
            .get(&session.node)
            .filter(|e| e.session == session.id)
            .map(|e| e.last_seen.elapsed())
    }

    /// Replaces the image list of the agent (an `ImageInventory`).
    pub fn update_images(&self, session: &SessionId, images: BTreeSet<String>) {
        let changed = {
            let mut state = lock(&self.inner.state);
            match state.agents.get_mut(&session.node) {
                Some(entry) if entry.session == session.id && entry.info.images != images => {
                    entry.info.images = images;
                    true
                }
                _ => false,
            }
        };
        if changed {
            self.changed();
        }
    }

    /// Delivers a result to the dispatch waiting for it.
    pub fn complete(&self, session: &SessionId, result: CheckResult) {
        let pending = {
            let mut state = lock(&self.inner.state);
            state
                .agents
                .get_mut(&session.node)
                .filter(|e| e.session == session.id)
                .and_then(|e| e.pending.remove(&result.task_id))
        };
        match pending {
            Some(pending) => {
                let _ = pending.reply.send(Ok(result));
            }
            None => {
                debug!(node = %session.node, task = result.task_id, "result for an unknown or abandoned task")
            }
        }
    }

    /// Connected agents, by node name.
    pub fn agents(&self) -> Vec<AgentInfo> {
        let state = lock(&self.inner.state);
        let mut agents: Vec<AgentInfo> = state
            .agents
            .values()
            .map(|e| AgentInfo {
                in_flight: e.pending.len() + e.queued,
                ..e.info.clone()
            })
            .collect();
        agents.sort_by(|a, b| a.node_name.cmp(&b.node_name));
        agents
    }

    /// Names of the connected nodes, sorted.
    pub fn nodes(&self) -> Vec<String> {
        self.agents().into_iter().map(|a| a.node_name).collect()
    }

    /// The group of a node (value of `--node-group-label`; one group when unset): the
    /// label of its Node object when known, else the label its agent sent.
    pub fn group_of(&self, info: &AgentInfo) -> String {
        match &self.inner.config.node_group_label {
            None => String::new(),
            Some(label) => {
                if let Some(group) = lock(&self.inner.state).node_groups.get(&info.node_name) {
                    return group.clone();
                }
                info.node_labels.get(label).cloned().unwrap_or_default()
            }
        }
    }

    /// Forgets the Node groups of nodes not in `seen` (a relist of Nodes).
    pub fn retain_node_groups(&self, seen: &HashSet<String>) {
        let changed = {
            let mut state = lock(&self.inner.state);
            let before = state.node_groups.len();
            state.node_groups.retain(|node, _| seen.contains(node));
            state.node_groups.len() != before
        };
        if changed {
            self.changed();
        }
    }

    /// Records the group label of a Node object (None: the Node is gone).
    pub fn set_node_group(&self, node: &str, group: Option<String>) {
        let changed = {
            let mut state = lock(&self.inner.state);
            match group {
                Some(group) => {
                    state.node_groups.insert(node.to_string(), group.clone()) != Some(group)
                }
                None => state.node_groups.remove(node).is_some(),
            }
        };
        if changed {
            self.changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pullwatch::proto::{CheckTask, PullCredential, Status, aggregator_message};

    fn info(node: &str, group: &str, images: &[&str]) -> AgentInfo {
        AgentInfo {
            node_name: node.into(),
            runtime_name: "containerd".into(),
            runtime_version: "1.6".into(),
            agent_version: "0".into(),
            images: images.iter().map(|s| s.to_string()).collect(),
            node_labels: [("zone".to_string(), group.to_string())].into(),
            connected_at: SystemTime::now(),
            in_flight: 0,
        }
    }

    fn hub() -> AgentHub {
        AgentHub::new(HubConfig {
            node_group_label: Some("zone".into()),
            task_timeout: Duration::from_secs(5),
            ..Default::default()
        })
    }

    /// A fake agent: answers every task with `available`, unless `silent`.
    fn fake_agent(hub: &AgentHub, info: AgentInfo, silent: bool) -> SessionId {
        let (tx, mut rx) = mpsc::channel(16);
        let session = hub.register(info, tx);
        let hub = hub.clone();
        let s = session.clone();
        tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                if let Some(aggregator_message::Message::Task(task)) = message.message
                    && !silent
                {
                    hub.complete(
                        &s,
                        CheckResult {
                            task_id: task.task_id,
                            image: task.image,
                            status: Status::Available as i32,
                            ..Default::default()
                        },
                    );
                }
            }
        });
        session
    }

    fn task(image: &str) -> CheckTask {
        CheckTask {
            image: image.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn only_the_same_identity_takes_over_a_node() {
        let hub = hub();
        let (tx1, _rx1) = mpsc::channel(4);
        let first = hub
            .register_as(
                info("a", "z1", &[]),
                tx1,
                "service account p:agent on node a",
            )
            .unwrap();
        let (tx2, _rx2) = mpsc::channel(4);
        let refused = hub
            .register_as(
                info("a", "z1", &[]),
                tx2,
                "service account p:other on node a",
            )
            .unwrap_err();
        assert_eq!(refused.reason(), "takeover_refused");
        assert!(hub.silence(&first).is_some(), "the first session stays");
        assert_eq!(hub.security_metrics().takeovers(), 0);
        let (tx3, _rx3) = mpsc::channel(4);
        let second = hub
            .register_as(
                info("a", "z1", &[]),
                tx3,
                "service account p:agent on node a",
            )
            .unwrap();
        assert!(hub.silence(&first).is_none(), "replaced");
        assert!(hub.silence(&second).is_some());
        assert_eq!(hub.security_metrics().takeovers(), 1);
        let registry = Registry::new();
        hub.register_metrics(&registry).unwrap();
        hub.security_metrics().refused("wrong_node");
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        assert!(names.contains(&"pullwatch_agent_sessions_refused_total".to_string()));
        assert!(names.contains(&"pullwatch_agent_session_takeovers_total".to_string()));
    }

    #[tokio::test]
    async fn dispatch_reaches_the_node_and_returns_its_result() {
        let hub = hub();
        fake_agent(&hub, info("a", "z1", &[]), false);
        let done = hub.dispatch("a", task("img")).await.unwrap();
        assert_eq!(done.node, "a");
        assert_eq!(done.result.status, Status::Available as i32);
        assert!(done.result.task_id > 0);
        assert_eq!(
            hub.dispatch("nope", task("img")).await.unwrap_err(),
            HubError::NoAgent("nope".into())
        );
    }

    #[tokio::test]
    async fn tasks_of_a_departed_agent_move_to_its_group_first() {
        let hub = hub();
        let silent = fake_agent(&hub, info("a", "z1", &[]), true);
        fake_agent(&hub, info("b", "z2", &["img"]), false);
        fake_agent(&hub, info("c", "z1", &[]), false);
        let waiting = {
            let hub = hub.clone();
            tokio::spawn(async move { hub.dispatch("a", task("img")).await })
        };
        // Wait until the task is in flight on a, then a goes away.
        for _ in 0..100 {
            if hub
                .agents()
                .iter()
                .any(|a| a.node_name == "a" && a.in_flight == 1)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        hub.unregister(&silent);
        let done = waiting.await.unwrap().unwrap();
        // c shares a's group; b holds the image but is in another group.
        assert_eq!(done.node, "c");
        assert_eq!(done.replaced_from, ["a"]);
        assert_eq!(hub.nodes(), ["b", "c"]);
    }

    #[tokio::test]
    async fn credentials_need_tls_and_stay_on_workload_nodes() {
        let hub = hub();
        fake_agent(&hub, info("a", "z1", &[]), false);
        let mut with_secret = task("img");
        with_secret.credentials.push(Default::default());
        assert_eq!(
            hub.dispatch("a", with_secret.clone()).await.unwrap_err(),
            HubError::CredentialsNeedTls
        );

        let hub = AgentHub::new(HubConfig {
            tls: true,
            ..Default::default()
        });
        let silent = fake_agent(&hub, info("a", "", &[]), true);
        fake_agent(&hub, info("b", "", &[]), false);
        let waiting = {
            let hub = hub.clone();
            let t = with_secret.clone();
            tokio::spawn(async move { hub.dispatch("a", t).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        hub.unregister(&silent);
        // b does not run the workload: the secret does not move there.
        assert_eq!(
            waiting.await.unwrap().unwrap_err(),
            HubError::AgentGone { node: "a".into() }
        );
    }

    #[tokio::test]
    async fn placement_prefers_holders_then_idle_nodes() {
        let hub = hub();
        fake_agent(&hub, info("a", "z1", &[]), true);
        fake_agent(&hub, info("b", "z1", &["img"]), true);
        fake_agent(&hub, info("c", "z2", &[]), true);
        assert_eq!(hub.place("img", None, &[], None).as_deref(), Some("b"));
        assert_eq!(
            hub.place("img", Some("z2"), &[], None).as_deref(),
            Some("c")
        );
        assert_eq!(
            hub.place("img", None, &["b".into()], None).as_deref(),
            Some("a")
        );
        assert_eq!(
            hub.place("img", None, &[], Some(&["c".to_string()]))
                .as_deref(),
            Some("c")
        );
        assert_eq!(hub.place("img", Some("z3"), &[], None), None);
    }

    #[tokio::test]
    async fn a_silent_agent_times_out() {
        let hub = AgentHub::new(HubConfig {
            task_timeout: Duration::from_millis(100),
            ..Default::default()
        });
        fake_agent(&hub, info("a", "", &[]), true);
        assert!(matches!(
            hub.dispatch("a", task("img")).await.unwrap_err(),
            HubError::Timeout { .. }
        ));
        assert_eq!(
            hub.agents()[0].in_flight,
            0,
            "the abandoned task is forgotten"
        );
    }

    #[tokio::test]
    async fn an_agent_that_stops_reading_costs_one_timeout_not_a_hung_check() {
        let hub = AgentHub::new(HubConfig {
            task_timeout: Duration::from_millis(200),
            max_concurrent_checks: 4,
            ..Default::default()
        });
        // A session whose outbound buffer is full and never drained.
        let (tx, _rx) = mpsc::channel(1);
        tx.send(AggregatorMessage { message: None }).await.unwrap();
        hub.register(info("stuck", "", &[]), tx);
        let started = std::time::Instant::now();
        let outcome =
            tokio::time::timeout(Duration::from_secs(5), hub.dispatch("stuck", task("img")))
                .await
                .expect("the send to a stuck session is bounded");
        assert!(
            matches!(outcome, Err(HubError::Timeout { .. })),
            "{outcome:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(hub.agents()[0].in_flight, 0, "the unsent task is forgotten");
    }

    /// An agent that records every task it gets and answers with `answer` (None: never).
    fn scripted_agent(
        hub: &AgentHub,
        info: AgentInfo,
        answer: impl Fn(&CheckTask) -> Option<CheckResult> + Send + 'static,
    ) -> (SessionId, Arc<Mutex<Vec<CheckTask>>>) {
        let (tx, mut rx) = mpsc::channel(16);
        let session = hub.register(info, tx);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (hub, s, record) = (hub.clone(), session.clone(), seen.clone());
        tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                if let Some(aggregator_message::Message::Task(task)) = message.message {
                    record.lock().unwrap().push(task.clone());
                    if let Some(mut result) = answer(&task) {
                        result.task_id = task.task_id;
                        hub.complete(&s, result);
                    }
                }
            }
        });
        (session, seen)
    }

    fn answer(status: Status) -> impl Fn(&CheckTask) -> Option<CheckResult> + Send + 'static {
        move |task: &CheckTask| {
            Some(CheckResult {
                image: task.image.clone(),
                status: status as i32,
                reason: format!("{status:?}"),
                credential_source: if task.credentials.is_empty() {
                    "runtime".into()
                } else {
                    task.credentials[0].source.clone()
                },
                ..Default::default()
            })
        }
    }

    #[tokio::test]
    async fn plan_takes_one_node_per_group_workload_nodes_first() {
        let hub = hub();
        fake_agent(&hub, info("a", "z1", &["img"]), true);
        fake_agent(&hub, info("b", "z1", &[]), true);
        fake_agent(&hub, info("c", "z2", &[]), true);
        fake_agent(&hub, info("d", "z2", &["img"]), true);
        assert_eq!(
            hub.plan("img", &BTreeSet::new()),
            [("z1".into(), "a".into()), ("z2".into(), "d".into())]
        );
        let runs: BTreeSet<Arc<str>> = [Arc::from("b")].into();
        assert_eq!(
            hub.plan("img", &runs),
            [("z1".into(), "b".into()), ("z2".into(), "d".into())]
        );
        assert_eq!(hub.holders("img"), BTreeSet::from(["a".into(), "d".into()]));
        // No group label: one group.
        let flat = AgentHub::new(HubConfig::default());
        fake_agent(&flat, info("x", "z1", &[]), true);
        fake_agent(&flat, info("y", "z2", &[]), true);
        assert_eq!(flat.plan("img", &BTreeSet::new()).len(), 1);
    }

    #[tokio::test]
    async fn per_node_concurrency_is_bounded_by_the_hub() {
        let hub = AgentHub::new(HubConfig {
            max_concurrent_checks: 1,
            ..Default::default()
        });
        let (session, seen) = scripted_agent(&hub, info("a", "", &[]), |_| None);
        let first = tokio::spawn({
            let hub = hub.clone();
            async move { hub.dispatch("a", task("one")).await }
        });
        let second = tokio::spawn({
            let hub = hub.clone();
            async move { hub.dispatch("a", task("two")).await }
        });
        for _ in 0..100 {
            if hub.agents()[0].in_flight == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(hub.agents()[0].in_flight, 2, "one sent, one queued");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(seen.lock().unwrap().len(), 1, "the second waits for a slot");
        // Answer the first: the second is sent.
        let sent = seen.lock().unwrap()[0].clone();
        hub.complete(
            &session,
            CheckResult {
                task_id: sent.task_id,
                status: Status::Available as i32,
                ..Default::default()
            },
        );
        for _ in 0..100 {
            if seen.lock().unwrap().len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(seen.lock().unwrap().len(), 2);
        // Whichever was first got the answer; the agent then goes: the other fails.
        hub.unregister(&session);
        let results = [first.await.unwrap(), second.await.unwrap()];
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
    }

    #[tokio::test]
    async fn credentials_are_dropped_rather_than_moved_off_workload_nodes() {
        let hub = AgentHub::new(HubConfig {
            tls: true,
            ..Default::default()
        });
        let (silent, _) = scripted_agent(&hub, info("a", "", &[]), |_| None);
        let (_, seen_b) = scripted_agent(&hub, info("b", "", &[]), answer(Status::Available));
        let mut with_secret = task("img");
        with_secret.credentials.push(PullCredential {
            source: "secret/ns/s".into(),
            password: "pw".into(),
            ..Default::default()
        });
        let waiting = {
            let hub = hub.clone();
            tokio::spawn(async move {
                hub.dispatch_with(
                    "a",
                    with_secret,
                    DispatchOptions {
                        credential_nodes: vec!["a".into()],
                        move_without_credentials: true,
                    },
                )
                .await
            })
        };
        for _ in 0..100 {
            if hub.agents()[0].in_flight == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        hub.unregister(&silent);
        let done = waiting.await.unwrap().unwrap();
        assert_eq!(done.node, "b");
        assert!(done.credentials_dropped);
        assert_eq!(done.result.credential_source, "runtime");
        assert!(seen_b.lock().unwrap()[0].credentials.is_empty());
    }

    fn target(image: &str, nodes: &[&str]) -> crate::index::AgentTarget {
        crate::index::AgentTarget {
            image: pullwatch::ImageReference::parse(image).unwrap(),
            credentials: vec![pullwatch::SourcedCredential {
                source: Arc::from("secret/ns/regcred"),
                credential: pullwatch::RegistryCredential {
                    username: "u".into(),
                    password: "pw".into(),
                    ..Default::default()
                },
            }]
            .into(),
            sources: Default::default(),
            workload_nodes: nodes.iter().map(|n| Arc::from(*n)).collect(),
        }
    }

    #[tokio::test]
    async fn a_check_asks_every_group_and_sends_secrets_only_to_workload_nodes() {
        let hub = AgentHub::new(HubConfig {
            node_group_label: Some("zone".into()),
            tls: true,
            ..Default::default()
        });
        let (_, seen_a) = scripted_agent(&hub, info("a", "z1", &[]), answer(Status::Available));
        let (_, seen_b) = scripted_agent(
            &hub,
            info("b", "z2", &["reg.io/app:v1"]),
            answer(Status::AuthenticationFailure),
        );
        // c runs the workload in z1 but its runtime is broken.
        let (_, seen_c) = scripted_agent(&hub, info("c", "z1", &[]), |task: &CheckTask| {
            Some(CheckResult {
                image: task.image.clone(),
                status: Status::UnknownError as i32,
                runtime_failure: true,
                ..Default::default()
            })
        });
        let check = hub.check_target(&target("reg.io/app:v1", &["c"])).await;
        assert_eq!(check.credentials_sent_to, ["c"]);
        assert_eq!(seen_c.lock().unwrap()[0].credentials.len(), 1);
        assert_eq!(seen_c.lock().unwrap()[0].image, "reg.io/app:v1");
        assert!(seen_a.lock().unwrap().is_empty(), "z1 is c's group");
        assert!(seen_b.lock().unwrap()[0].credentials.is_empty());
        // c's answer says nothing about the image; b checked without the workload's
        // credentials, so its failure is not its kubelet's view either.
        assert_eq!(check.nodes.keys().collect::<Vec<_>>(), ["b"]);
        assert!(check.nodes["b"].without_workload_credentials);
        assert_eq!(check.outcome(), None, "the caller checks centrally");
        // For an image without credentials b's failure is conclusive.
        let mut open = target("reg.io/app:v1", &[]);
        open.credentials = Vec::new().into();
        let check = hub.check_target(&open).await;
        assert_eq!(
            check.outcome().unwrap().status,
            pullwatch::CheckStatus::AuthenticationFailure
        );

        // Without TLS no secret leaves the aggregator.
        let plain = AgentHub::new(HubConfig::default());
        let (_, seen) = scripted_agent(&plain, info("c", "", &[]), answer(Status::Available));
        let check = plain.check_target(&target("reg.io/app:v1", &["c"])).await;
        assert!(check.credentials_sent_to.is_empty());
        assert!(seen.lock().unwrap()[0].credentials.is_empty());
        assert_eq!(check.outcome(), Some(pullwatch::CheckOutcome::available()));

        // No agents: nothing, and the caller checks centrally.
        let empty = AgentHub::new(HubConfig::default());
        assert_eq!(
            empty.check_target(&target("reg.io/app:v1", &[])).await,
            Default::default()
        );
    }

    #[tokio::test]
    async fn node_objects_group_nodes_before_agent_labels() {
        let hub = hub();
        fake_agent(&hub, info("a", "z1", &[]), true);
        fake_agent(&hub, info("b", "z1", &[]), true);
        assert_eq!(hub.plan("img", &BTreeSet::new()).len(), 1);
        let changes = hub.subscribe();
        hub.set_node_group("b", Some("z2".into()));
        assert!(changes.has_changed().unwrap());
        assert_eq!(
            hub.plan("img", &BTreeSet::new()),
            [("z1".into(), "a".into()), ("z2".into(), "b".into())]
        );
        hub.set_node_group("b", None);
        assert_eq!(hub.plan("img", &BTreeSet::new()).len(), 1);
    }
}
