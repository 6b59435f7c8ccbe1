//! Node agents, the stage beside the checker: the gRPC `AgentService` they connect to
//! ([`server`], authenticated by [`auth`], over [`tls`], configured by [`flags`]), and
//! the hub the scheduler runs checks on them through ([`AgentHub`]: the sessions, here;
//! [`fan_out`]: one check over one node per node group, combined into the kubelet's
//! view; [`placement`] of a check on nodes; [`dispatch`] of a task to one node;
//! [`groups`]: node groups from the inventory's Nodes; [`quota`]: the pull quotas
//! nodes report; [`metrics`]: the hub's series).
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
//!
//! Sized for a 5,000-node fleet: the hub keeps indexes from node group to its agents
//! and from image to the nodes holding it (per group), kept as agents come, go and
//! report image lists, so placing a check visits a bounded number of agents whatever
//! the fleet's size ([`placement`]). What every message of a session touches (its
//! last-seen time, its unanswered tasks, its load) lives in the session's own state,
//! so heartbeats and results take no lock shared with other sessions; the hub-wide
//! lock is only taken when agents come, go, report images, or a check is placed.
//! Image references are interned: one string per distinct image, however many nodes
//! hold it.
//!
//! Pull secrets (`CheckTask.credentials`) are only ever sent over TLS, and on
//! re-placement only to nodes the caller listed as running the workload (or dropped,
//! with [`DispatchOptions::move_without_credentials`]).

pub mod auth;
pub(crate) mod dispatch;
pub(crate) mod fan_out;
pub(crate) mod flags;
pub(crate) mod groups;
pub(crate) mod metrics;
pub mod placement;
pub(crate) mod quota;
pub mod server;
pub(crate) mod tls;

pub(crate) use dispatch::DispatchOptions;
use dispatch::{Pending, fail_pending};
pub(crate) use metrics::{AgentSecurityMetrics, HubMetrics};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use pullwatch::locks::lock;
use pullwatch::proto::{AggregatorMessage, CheckResult};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{debug, info, warn};

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

/// Where a session's outbound messages go. Boxed: tokio's channel allocates its slots
/// 32 at a time, the first block with the channel, and slots the size of a task message
/// made that block 3 KiB per connected agent (fleet bench); a box is 8 bytes a slot.
pub type Outbound = mpsc::Sender<Box<AggregatorMessage>>;

/// What one session's messages touch: its own, so a heartbeat or a result of one
/// agent never waits for another agent or for the hub.
struct Session {
    id: u64,
    tx: Outbound,
    /// Tasks sent and not yet answered. Closed (and drained) with the session, under
    /// this lock, so no task is added to a session that is gone.
    pending: Mutex<PendingTasks>,
    /// Tasks queued for a slot or sent and unanswered (placement's load).
    load: AtomicUsize,
    /// The node's check slots (`max_concurrent_checks`); closed when the agent goes.
    slots: Semaphore,
    /// Milliseconds since the hub's epoch when the agent was last heard from.
    last_seen: AtomicU64,
    /// Unregistered or replaced.
    closed: AtomicBool,
}

#[derive(Default)]
struct PendingTasks {
    closed: bool,
    tasks: HashMap<u64, Pending>,
}

impl Session {
    /// Marks the session gone and returns its unanswered tasks.
    fn close(&self) -> HashMap<u64, Pending> {
        let tasks = {
            let mut pending = lock(&self.pending);
            pending.closed = true;
            std::mem::take(&mut pending.tasks)
        };
        self.closed.store(true, Ordering::Release);
        self.slots.close();
        tasks
    }
}

/// A connected agent in the hub.
struct AgentEntry {
    session: Arc<Session>,
    /// Who authenticated this session ([`auth::AgentIdentity::principal`]).
    principal: String,
    runtime_name: String,
    runtime_version: String,
    agent_version: String,
    node_labels: BTreeMap<String, String>,
    connected_at: SystemTime,
    /// The node's group, as indexed.
    group: Arc<str>,
    /// Interned references of the images the node holds, sorted.
    images: Box<[Arc<str>]>,
}

impl AgentEntry {
    fn holds(&self, image: &str) -> bool {
        self.images
            .binary_search_by(|held| held.as_ref().cmp(image))
            .is_ok()
    }
}

#[derive(Default)]
struct HubState {
    agents: HashMap<Arc<str>, AgentEntry>,
    /// Node name -> value of `--node-group-label`, from the cluster's Node objects
    /// (`Some("")`: the node has no such label). Wins over what agents send.
    node_groups: HashMap<String, String>,
    /// Node group -> its connected agents, by name.
    members: NodesByGroup,
    /// Image -> node group -> the connected agents holding it, by name. Its keys are
    /// the interned image references.
    holders: HashMap<Arc<str>, NodesByGroup>,
}

/// Node group -> nodes, by name.
type NodesByGroup = BTreeMap<Arc<str>, BTreeSet<Arc<str>>>;

impl HubState {
    /// The interned form of `image` (the holders index's key when some node holds it).
    fn intern(&self, image: String) -> Arc<str> {
        match self.holders.get_key_value(image.as_str()) {
            Some((interned, _)) => interned.clone(),
            None => Arc::from(image),
        }
    }

    /// The interned, sorted, deduplicated form of an image list.
    fn intern_all(&self, images: impl IntoIterator<Item = String>) -> Box<[Arc<str>]> {
        let mut interned: Vec<Arc<str>> = images.into_iter().map(|i| self.intern(i)).collect();
        interned.sort_unstable();
        interned.dedup();
        interned.into_boxed_slice()
    }

    /// Adds `node` (in `group`, holding `images`) to the indexes.
    fn index(&mut self, node: &Arc<str>, group: &Arc<str>, images: &[Arc<str>]) {
        let group = match self.members.get_key_value(group) {
            Some((interned, _)) => interned.clone(),
            None => group.clone(),
        };
        self.members
            .entry(group.clone())
            .or_default()
            .insert(node.clone());
        for image in images {
            self.holders
                .entry(image.clone())
                .or_default()
                .entry(group.clone())
                .or_default()
                .insert(node.clone());
        }
    }

    /// Removes `node` (in `group`, holding `images`) from the indexes.
    fn unindex(&mut self, node: &str, group: &str, images: &[Arc<str>]) {
        if let Some(members) = self.members.get_mut(group) {
            members.remove(node);
            if members.is_empty() {
                self.members.remove(group);
            }
        }
        for image in images {
            if let Some(groups) = self.holders.get_mut(image.as_ref()) {
                if let Some(nodes) = groups.get_mut(group) {
                    nodes.remove(node);
                    if nodes.is_empty() {
                        groups.remove(group);
                    }
                }
                if groups.is_empty() {
                    self.holders.remove(image.as_ref());
                }
            }
        }
    }

    /// The group `node` belongs in: its Node object's label when known, else the
    /// label its agent sent; one group ("") without `--node-group-label`.
    fn group_for(
        &self,
        label: Option<&str>,
        node: &str,
        node_labels: &BTreeMap<String, String>,
    ) -> Arc<str> {
        let Some(label) = label else {
            return Arc::from("");
        };
        let group = match self.node_groups.get(node) {
            Some(group) => group.as_str(),
            None => node_labels.get(label).map_or("", String::as_str),
        };
        match self.members.get_key_value(group) {
            Some((interned, _)) => interned.clone(),
            None => Arc::from(group),
        }
    }

    /// Re-files `node` under the group it belongs in now; whether that changed.
    fn regroup(&mut self, label: Option<&str>, node: &str) -> bool {
        let Some(entry) = self.agents.get(node) else {
            return false;
        };
        let group = self.group_for(label, node, &entry.node_labels);
        if group == entry.group {
            return false;
        }
        let (old, images) = (entry.group.clone(), entry.images.clone());
        let Some((name, _)) = self.agents.get_key_value(node) else {
            return false;
        };
        let name = name.clone();
        self.unindex(&name, &old, &images);
        self.index(&name, &group, &images);
        if let Some(entry) = self.agents.get_mut(node) {
            entry.group = group;
        }
        true
    }
}

struct HubInner {
    config: HubConfig,
    state: Mutex<HubState>,
    /// Connected agents (read without the lock, e.g. on every check).
    connected: AtomicUsize,
    next_task: AtomicU64,
    next_session: AtomicU64,
    /// What sessions' last-seen times count from.
    epoch: Instant,
    /// Bumped whenever an agent comes, goes, or reports a new image list.
    changes: watch::Sender<u64>,
    metrics: HubMetrics,
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

/// The handle a session keeps: identifies its registration and reaches its own state
/// without the hub's lock.
#[derive(Clone)]
pub struct SessionId {
    pub(crate) node: String,
    id: u64,
    session: Arc<Session>,
}

impl PartialEq for SessionId {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.node == other.node
    }
}

impl Eq for SessionId {}

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionId")
            .field("node", &self.node)
            .field("id", &self.id)
            .finish()
    }
}

impl AgentHub {
    /// A hub whose series no `/metrics` serves (tests, benches): the aggregator's
    /// binary uses [`AgentHub::with_metrics`].
    pub fn new(config: HubConfig) -> AgentHub {
        AgentHub::with_metrics(config, HubMetrics::unserved())
    }

    /// A hub writing `metrics` (the aggregator's, registered by
    /// [`crate::metrics::Metrics::new`]).
    pub(crate) fn with_metrics(config: HubConfig, metrics: HubMetrics) -> AgentHub {
        AgentHub {
            inner: Arc::new(HubInner {
                config,
                state: Mutex::new(HubState::default()),
                connected: AtomicUsize::new(0),
                next_task: AtomicU64::new(1),
                next_session: AtomicU64::new(1),
                epoch: Instant::now(),
                changes: watch::channel(0).0,
                metrics,
            }),
        }
    }

    /// Tells when agents come, go or report new image lists (the value counts changes).
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    fn changed(&self) {
        self.inner.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether any agent is connected.
    pub fn is_empty(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed) == 0
    }

    /// How many agents are connected.
    pub fn len(&self) -> usize {
        self.inner.connected.load(Ordering::Relaxed)
    }

    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// The pull quotas the nodes' routes see, as their agents report them.
    pub fn node_quotas(&self) -> &quota::NodeQuotas {
        &self.inner.metrics.quotas
    }

    /// The refusal and takeover counters.
    pub fn security_metrics(&self) -> &AgentSecurityMetrics {
        &self.inner.metrics.security
    }

    /// `(placements, agents visited)` so far: the work placement does.
    pub fn placement_work(&self) -> (u64, u64) {
        (
            self.inner.metrics.placements.get(),
            self.inner.metrics.placement_visits.get(),
        )
    }

    fn now_millis(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64
    }

    /// Records a newly registered agent whose outbound messages go to `tx`, with no
    /// authenticated identity (tests and in-process agents): [`Self::register_as`].
    /// A node registering again replaces its previous session.
    pub fn register(&self, info: AgentInfo, tx: Outbound) -> SessionId {
        // Without an identity nothing is refused: the only error is a refusal.
        match self.insert_session(info, tx, "", true) {
            Ok(session) => session,
            Err((session, _)) => session,
        }
    }

    /// Records a newly registered agent of `principal` whose outbound messages go to
    /// `tx`. A node registering again replaces its previous session (whose tasks are
    /// re-placed) only when both are the same principal: the takeover is logged and
    /// counted. A session of another principal is refused while the first is open.
    pub(crate) fn register_as(
        &self,
        info: AgentInfo,
        tx: Outbound,
        principal: &str,
    ) -> Result<SessionId, auth::AuthError> {
        self.insert_session(info, tx, principal, false)
            .map_err(|(_, error)| error)
    }

    fn insert_session(
        &self,
        info: AgentInfo,
        tx: Outbound,
        principal: &str,
        force: bool,
    ) -> Result<SessionId, (SessionId, auth::AuthError)> {
        let id = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Session {
            id,
            tx,
            pending: Mutex::new(PendingTasks::default()),
            load: AtomicUsize::new(0),
            slots: Semaphore::new(self.inner.config.max_concurrent_checks.max(1) as usize),
            last_seen: AtomicU64::new(self.now_millis()),
            closed: AtomicBool::new(false),
        });
        let handle = SessionId {
            node: info.node_name.clone(),
            id,
            session: session.clone(),
        };
        let label = self.inner.config.node_group_label.as_deref();
        let replaced = {
            let mut state = lock(&self.inner.state);
            if let Some(current) = state.agents.get(info.node_name.as_str())
                && current.principal != principal
                && !force
            {
                let error = auth::AuthError::TakeoverRefused {
                    node: info.node_name.clone(),
                    current: current.principal.clone(),
                    new: principal.to_string(),
                };
                drop(state);
                session.close();
                return Err((handle, error));
            }
            let node: Arc<str> = Arc::from(info.node_name.as_str());
            let replaced = state.agents.remove(&node);
            if let Some(old) = &replaced {
                state.unindex(&node, &old.group, &old.images);
            }
            let group = state.group_for(label, &node, &info.node_labels);
            let images = state.intern_all(info.images);
            state.index(&node, &group, &images);
            state.agents.insert(
                node,
                AgentEntry {
                    session,
                    principal: principal.to_string(),
                    runtime_name: info.runtime_name,
                    runtime_version: info.runtime_version,
                    agent_version: info.agent_version,
                    node_labels: info.node_labels,
                    connected_at: info.connected_at,
                    group,
                    images,
                },
            );
            self.inner
                .connected
                .store(state.agents.len(), Ordering::Relaxed);
            replaced
        };
        debug!(node = %handle.node, "agent registered");
        if let Some(old) = replaced {
            let pending = old.session.close();
            warn!(node = %handle.node, principal, pending = pending.len(), "a new agent session of the same identity took over the node's open session");
            self.inner.metrics.security.took_over();
            fail_pending(&handle.node, pending);
        }
        self.changed();
        Ok(handle)
    }

    /// Ends a session: the agent is gone, its unanswered tasks are re-placed.
    pub fn unregister(&self, session: &SessionId) {
        let removed = {
            let mut state = lock(&self.inner.state);
            match state.agents.get(session.node.as_str()) {
                Some(entry) if entry.session.id == session.id => {
                    let removed = state.agents.remove(session.node.as_str());
                    if let Some(entry) = &removed {
                        state.unindex(&session.node, &entry.group, &entry.images);
                    }
                    self.inner
                        .connected
                        .store(state.agents.len(), Ordering::Relaxed);
                    removed
                }
                _ => None,
            }
        };
        if removed.is_some() {
            let pending = session.session.close();
            info!(node = %session.node, pending = pending.len(), "agent went away");
            self.inner.metrics.quotas.forget_node(&session.node);
            fail_pending(&session.node, pending);
            self.changed();
        }
    }

    /// Marks the agent alive (any message counts). Touches only the session's state.
    pub fn touch(&self, session: &SessionId) {
        session
            .session
            .last_seen
            .store(self.now_millis(), Ordering::Relaxed);
    }

    /// How long the agent has been silent (None: not registered under this session).
    /// Reads only the session's state.
    pub(crate) fn silence(&self, session: &SessionId) -> Option<Duration> {
        if session.session.closed.load(Ordering::Acquire) {
            return None;
        }
        let last = session.session.last_seen.load(Ordering::Relaxed);
        Some(Duration::from_millis(
            self.now_millis().saturating_sub(last),
        ))
    }

    /// Replaces the image list of the agent (an `ImageInventory`).
    pub fn update_images(&self, session: &SessionId, images: BTreeSet<String>) {
        let changed = {
            let mut state = lock(&self.inner.state);
            let current = match state.agents.get(session.node.as_str()) {
                Some(entry) if entry.session.id == session.id => entry,
                _ => return,
            };
            let same = current.images.len() == images.len()
                && current
                    .images
                    .iter()
                    .zip(&images)
                    .all(|(a, b)| a.as_ref() == b.as_str());
            if same {
                false
            } else {
                let (group, old) = (current.group.clone(), current.images.clone());
                let node: Arc<str> = Arc::from(session.node.as_str());
                state.unindex(&node, &group, &old);
                let images = state.intern_all(images);
                state.index(&node, &group, &images);
                if let Some(entry) = state.agents.get_mut(session.node.as_str()) {
                    entry.images = images;
                }
                true
            }
        };
        if changed {
            self.changed();
        }
    }

    /// Delivers a result to the dispatch waiting for it. Touches only the session's
    /// state.
    pub fn complete(&self, session: &SessionId, result: CheckResult) {
        let pending = lock(&session.session.pending).tasks.remove(&result.task_id);
        match pending {
            Some(pending) => {
                let _ = pending.reply.send(Ok(result));
            }
            None => {
                debug!(node = %session.node, task = result.task_id, "result for an unknown or abandoned task")
            }
        }
    }

    /// Connected agents, by node name (a copy of everything, image lists included:
    /// for tests and diagnostics, not for a path that runs per check).
    pub fn agents(&self) -> Vec<AgentInfo> {
        let state = lock(&self.inner.state);
        let mut agents: Vec<AgentInfo> = state
            .agents
            .iter()
            .map(|(node, e)| AgentInfo {
                node_name: node.to_string(),
                runtime_name: e.runtime_name.clone(),
                runtime_version: e.runtime_version.clone(),
                agent_version: e.agent_version.clone(),
                images: e.images.iter().map(|i| i.to_string()).collect(),
                node_labels: e.node_labels.clone(),
                connected_at: e.connected_at,
                in_flight: e.session.load.load(Ordering::Relaxed),
            })
            .collect();
        agents.sort_by(|a, b| a.node_name.cmp(&b.node_name));
        agents
    }

    /// Names of the connected nodes, sorted.
    pub fn nodes(&self) -> Vec<String> {
        let state = lock(&self.inner.state);
        let mut nodes: Vec<String> = state.agents.keys().map(|n| n.to_string()).collect();
        nodes.sort_unstable();
        nodes
    }

    /// Every connected node and its group.
    pub(crate) fn node_groups(&self) -> BTreeMap<String, String> {
        let state = lock(&self.inner.state);
        state
            .agents
            .iter()
            .map(|(node, e)| (node.to_string(), e.group.to_string()))
            .collect()
    }

    /// Replaces the groups of the cluster's Nodes (node name -> value of
    /// `--node-group-label`, "" for a Node without it) and re-files the connected
    /// agents whose group changed.
    pub(crate) fn set_node_groups(&self, groups: HashMap<String, String>) {
        let changed = {
            let mut state = lock(&self.inner.state);
            if state.node_groups == groups {
                false
            } else {
                let old = std::mem::replace(&mut state.node_groups, groups);
                let label = self.inner.config.node_group_label.as_deref();
                let moved: Vec<Arc<str>> = state
                    .agents
                    .keys()
                    .filter(|node| old.get(node.as_ref()) != state.node_groups.get(node.as_ref()))
                    .cloned()
                    .collect();
                for node in moved {
                    state.regroup(label, &node);
                }
                true
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
        let registry = prometheus::Registry::new();
        let hub =
            AgentHub::with_metrics(hub().config().clone(), HubMetrics::new(&registry).unwrap());
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
        tx.send(Box::new(AggregatorMessage { message: None }))
            .await
            .unwrap();
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

    /// Agents visited per placement, over `images` placements (plans and re-placement
    /// picks) on a hub of `agents` agents in 3 zones, each holding 10 of 100 images,
    /// the first 20 agents of the fleet busy.
    fn visits_per_placement(agents: usize) -> f64 {
        let hub = hub();
        let mut sessions = Vec::new();
        for i in 0..agents {
            let images: Vec<String> = (0..10)
                .map(|j| format!("img-{}", (i + j * 7) % 100))
                .collect();
            let images: Vec<&str> = images.iter().map(String::as_str).collect();
            let (tx, rx) = mpsc::channel(1);
            let session = hub.register(
                info(&format!("n{i:05}"), &format!("z{}", i % 3), &images),
                tx,
            );
            if i < 20 {
                session.session.load.store(4, Ordering::Relaxed);
            }
            sessions.push((session, rx));
        }
        let everyone = hub.agents();
        let (placements, visits) = hub.placement_work();
        for k in 0..100 {
            let image = format!("img-{k}");
            let plan = hub.plan(&image, &BTreeSet::new());
            assert_eq!(plan.len(), 3, "one node per zone");
            for (zone, node) in &plan {
                // What a look at every agent of the zone would choose.
                let best = everyone
                    .iter()
                    .filter(|a| a.node_labels["zone"] == *zone)
                    .min_by_key(|a| {
                        let holds = a.images.contains(&image);
                        (!holds, a.in_flight >= 4, a.in_flight, a.node_name.clone())
                    })
                    .unwrap();
                assert_eq!(*node, best.node_name, "{image} in {zone}");
            }
            assert!(
                hub.place(&image, Some("z1"), &[plan[1].1.clone()], None)
                    .is_some()
            );
        }
        let (p, v) = hub.placement_work();
        (v - visits) as f64 / (p - placements) as f64
    }

    #[tokio::test]
    async fn placement_visits_a_bounded_number_of_agents_whatever_the_fleet() {
        let small = visits_per_placement(60);
        let large = visits_per_placement(3000);
        // Visits are bounded by the groups and the scan limit, not by the fleet.
        assert!(large <= 3.0 * placement::SCAN_LIMIT as f64, "{large}");
        assert!(
            large <= small * 1.5,
            "{small} at 60 agents, {large} at 3,000"
        );
    }

    #[tokio::test]
    async fn heartbeats_and_results_do_not_take_the_hub_lock() {
        let hub = hub();
        let (tx, _rx) = mpsc::channel(4);
        let session = hub.register(info("a", "z1", &[]), tx);
        // Held by placement or a joining agent: a session's own traffic goes on.
        let held = hub.inner.state.lock().unwrap();
        hub.touch(&session);
        assert!(hub.silence(&session).unwrap() < Duration::from_secs(1));
        hub.complete(&session, CheckResult::default());
        drop(held);
    }

    #[tokio::test]
    async fn node_objects_group_nodes_before_agent_labels() {
        let hub = hub();
        fake_agent(&hub, info("a", "z1", &[]), true);
        fake_agent(&hub, info("b", "z1", &[]), true);
        assert_eq!(hub.plan("img", &BTreeSet::new()).len(), 1);
        let changes = hub.subscribe();
        hub.set_node_groups([("b".to_string(), "z2".to_string())].into());
        assert!(changes.has_changed().unwrap());
        assert_eq!(
            hub.plan("img", &BTreeSet::new()),
            [("z1".into(), "a".into()), ("z2".into(), "b".into())]
        );
        hub.set_node_groups(Default::default());
        assert_eq!(hub.plan("img", &BTreeSet::new()).len(), 1);
    }
}
