//! The scheduler: the third stage. Decides when each distinct check runs and hands
//! each outcome to the store (which the metrics are rendered from) as it arrives.
//!
//! [`Pipeline::run_cycle`] checks a whole index once (the `check` command).
//! [`Scheduler`] keeps a changing index checked (the `serve` command): a new
//! reference within moments of appearing, every reference at least once per
//! interval, failures again sooner with capped backoff, and a vanished reference's
//! series gone at once.
//!
//! With node agents ([`Pipeline::with_agents`]) a check goes to one node per node
//! group and the nodes' answers are the canonical status (the kubelet's view); the
//! aggregator checks centrally only when no agent answers. When a node group gains its
//! first agent, what that group can answer better (checked centrally, or by no node of
//! the group) is checked again at once, once. The node view of
//! each image (nodes per status, nodes holding it) is kept beside the outcomes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use pullwatch::{CheckOutcome, CheckStatus};
use tokio::sync::watch;
use tracing::{debug, info};

use crate::agents::AgentHub;
use crate::agents::route::NodeOutcome;
use crate::checker::Checker;
use crate::index::{AgentTarget, CheckKey, ContainerRef, ImageIndex};
use crate::inventory::Inventory;
use crate::metrics::{Metrics, MetricsError};
use crate::store::{ImageNodes, ResultStore};
use pullwatch::support::lock;

/// The checker with the state its results feed.
pub struct Pipeline {
    checker: Checker,
    store: Mutex<ResultStore>,
    pub metrics: Metrics,
    /// Checks started at once; the checker's own limits still apply beneath this.
    parallelism: usize,
    /// Node agents, when the agent server runs.
    agents: Option<AgentHub>,
    /// The live inventory (cluster mode): what running pods run, for moved tags.
    inventory: Option<Arc<Mutex<Inventory>>>,
    /// When the last full pass over every reference finished.
    last_full_pass: Mutex<Option<SystemTime>>,
}

/// The outcome of one distinct check, and the node answers it was made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyCheck {
    pub outcome: CheckOutcome,
    /// Node name -> its answer; empty when the aggregator checked centrally.
    pub nodes: BTreeMap<String, NodeOutcome>,
}

/// What one pass over an index found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CycleSummary {
    pub distinct_checks: usize,
    pub containers: usize,
    pub unavailable: usize,
    pub duration: Duration,
}

impl Pipeline {
    pub fn new(checker: Checker, metrics: Metrics, parallelism: usize) -> Self {
        Pipeline {
            checker,
            store: Mutex::new(ResultStore::default()),
            metrics,
            parallelism: parallelism.max(1),
            agents: None,
            inventory: None,
            last_full_pass: Mutex::new(None),
        }
    }

    /// One full pass over every reference finished.
    pub fn pass_completed(&self) {
        self.metrics.recheck_completed();
        *lock(&self.last_full_pass) = Some(SystemTime::now());
    }

    /// Results with reasons, as `/api/v1/images` and `/` show them.
    pub fn images(&self, filter: &crate::results::Filter) -> crate::results::ImagesResponse {
        let store = lock(&self.store);
        let inventory = self.inventory.as_ref().map(|i| lock(i));
        crate::results::images(
            &store,
            inventory.as_ref().map(|i| &i.running),
            self.last_full_pass(),
            filter,
        )
    }

    /// When the last full pass finished, if one has.
    pub fn last_full_pass(&self) -> Option<SystemTime> {
        *lock(&self.last_full_pass)
    }

    /// Reads what running pods run from `inventory` (cluster mode), for the
    /// moved-tag series.
    pub fn with_inventory(mut self, inventory: Arc<Mutex<Inventory>>) -> Self {
        self.inventory = Some(inventory);
        self
    }

    /// Routes checks through `hub`'s agents whenever one is connected.
    pub fn with_agents(mut self, hub: AgentHub) -> Self {
        self.agents = Some(hub);
        self
    }

    /// The agent hub, when agents are enabled.
    pub fn agents(&self) -> Option<&AgentHub> {
        self.agents.as_ref()
    }

    /// Checks everything in `index`, then drops results of references no longer in it.
    pub async fn run_cycle(&self, index: &ImageIndex) -> CycleSummary {
        let started = Instant::now();
        for (container, outcome) in &index.settled {
            self.record(index, std::slice::from_ref(container), outcome);
        }
        let checks = futures::stream::iter(index.checks.iter())
            .map(|(key, containers)| async move {
                let mut outcome = self.checker.check(key).await;
                outcome.checked_at = Some(SystemTime::now());
                self.record(index, containers, &outcome);
            })
            .buffer_unordered(self.parallelism);
        checks.collect::<()>().await;

        let current = index.containers();
        let unavailable = {
            let mut store = lock(&self.store);
            store.retain(&current);
            store
                .iter()
                .filter(|(_, outcome)| !outcome.is_available())
                .count()
        };
        self.pass_completed();
        CycleSummary {
            distinct_checks: index.checks.len(),
            containers: current.len(),
            unavailable,
            duration: started.elapsed(),
        }
    }

    /// Checks one distinct reference centrally.
    pub async fn check(&self, key: &CheckKey) -> CheckOutcome {
        self.checker.check(key).await
    }

    /// Checks one distinct reference through the agents (one node per node group)
    /// when any is connected and answers; centrally otherwise.
    pub async fn check_routed(&self, key: &CheckKey, target: Option<&AgentTarget>) -> KeyCheck {
        if let (Some(hub), Some(target)) = (&self.agents, target)
            && !hub.is_empty()
        {
            // Which nodes run the image now, from the live placements.
            let target = match &self.inventory {
                Some(inventory) => target.with_nodes(&lock(inventory).placements),
                None => target.clone(),
            };
            let answers = hub.check_target(&target).await;
            if let Some(outcome) = answers.outcome() {
                self.metrics.checks.with_label_values(&["agents"]).inc();
                return KeyCheck {
                    outcome,
                    nodes: answers.nodes,
                };
            }
            debug!(image = %target.image, "no agent answered; checking centrally");
        }
        self.metrics.checks.with_label_values(&["central"]).inc();
        KeyCheck {
            outcome: self.checker.check(key).await,
            nodes: BTreeMap::new(),
        }
    }

    /// Sets (or, with None, removes) the node view of every image in `views`.
    fn set_image_nodes(&self, views: Vec<(String, ImageNodes)>) {
        let mut store = lock(&self.store);
        for (image, nodes) in views {
            store.set_image_nodes(&image, nodes);
        }
    }

    /// Records `outcome` for `containers` of `index`, each as it stands for its
    /// workload's platforms.
    pub fn record(&self, index: &ImageIndex, containers: &[ContainerRef], outcome: &CheckOutcome) {
        let mut store = lock(&self.store);
        for container in containers {
            store.set(container.clone(), index.outcome_for(container, outcome));
        }
    }

    /// Forgets every reference not in `current`: its series disappear.
    pub fn retain(&self, current: &BTreeSet<ContainerRef>) {
        lock(&self.store).retain(current);
    }

    /// How many container references are exported, and how many are not available.
    pub fn counts(&self) -> (usize, usize) {
        let store = lock(&self.store);
        let unavailable = store.iter().filter(|(_, o)| !o.is_available()).count();
        (store.len(), unavailable)
    }

    /// Every container reference with its latest outcome.
    pub fn results(&self) -> Vec<(ContainerRef, CheckOutcome)> {
        lock(&self.store)
            .iter()
            .map(|(c, o)| (c.clone(), o.clone()))
            .collect()
    }

    /// The whole Prometheus text exposition.
    pub fn render_metrics(&self) -> Result<String, MetricsError> {
        let store = lock(&self.store);
        match &self.inventory {
            Some(inventory) => self
                .metrics
                .render_with(&store, Some(&lock(inventory).running)),
            None => self.metrics.render(&store),
        }
    }

    /// How many parts [`Pipeline::render_metrics_part`] renders.
    pub fn metrics_part_count(&self) -> usize {
        self.metrics.part_count()
    }

    /// The store as it is now, for a scrape: every part of one exposition is rendered
    /// from it, so a container is never 1 in two families or missing from one.
    pub fn store_snapshot(&self) -> ResultStore {
        lock(&self.store).snapshot()
    }

    /// One part of the exposition from `store` (a [`Pipeline::store_snapshot`]), so a
    /// scrape can be streamed without holding the store or building it in one piece.
    pub fn render_metrics_part(
        &self,
        store: &ResultStore,
        part: usize,
    ) -> Result<String, MetricsError> {
        let mut out = String::new();
        // The live inventory only for the part that reads it.
        let inventory = match &self.inventory {
            Some(inventory) if part + 1 == self.metrics.part_count() => Some(lock(inventory)),
            _ => None,
        };
        self.metrics.render_part(
            part,
            store,
            inventory.as_ref().map(|i| &i.running),
            &mut out,
        )?;
        Ok(out)
    }
}

/// Where the continuous scheduler stands, for `/readyz` and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchedulerStatus {
    /// Full passes completed (every distinct check made at least once since the last).
    pub passes: u64,
    pub distinct_checks: usize,
    pub containers: usize,
    pub unavailable: usize,
}

struct KeyState {
    next_due: Instant,
    failures: u32,
    in_flight: bool,
    outcome: Option<CheckOutcome>,
    /// The node answers of the latest check (empty: checked centrally).
    nodes: BTreeMap<String, NodeOutcome>,
}

/// How long agent changes (joins, image lists) gather before the node view of every
/// image is refreshed.
const AGENT_CHANGE_DEBOUNCE: Duration = Duration::from_secs(1);

/// First retry of a failed check; doubled per consecutive failure, capped at the interval.
const RETRY_BASE: Duration = Duration::from_secs(10);

/// Keeps the latest index checked.
pub struct Scheduler {
    pipeline: Arc<Pipeline>,
    interval: Duration,
    keys: HashMap<CheckKey, KeyState>,
    index: Arc<ImageIndex>,
    pass_remaining: HashSet<CheckKey>,
    pass_open: bool,
    status: SchedulerStatus,
    /// Image as written -> the keys whose containers use it.
    image_keys: HashMap<String, Vec<CheckKey>>,
    /// Connected agents' nodes, as last seen.
    agent_nodes: BTreeSet<String>,
    /// Connected node -> its node group.
    agent_groups: BTreeMap<String, String>,
    /// Normalized reference -> nodes whose agents hold it, as last seen.
    holders: HashMap<String, BTreeSet<String>>,
}

impl Scheduler {
    pub fn new(pipeline: Arc<Pipeline>, interval: Duration) -> Self {
        Scheduler {
            pipeline,
            interval,
            keys: HashMap::new(),
            index: Arc::new(ImageIndex::default()),
            pass_remaining: HashSet::new(),
            pass_open: false,
            status: SchedulerStatus::default(),
            image_keys: HashMap::new(),
            agent_nodes: BTreeSet::new(),
            agent_groups: BTreeMap::new(),
            holders: HashMap::new(),
        }
    }

    /// Runs until `stop` turns true or the index sender goes away, publishing its
    /// status on `status` after every pass and index change.
    pub async fn run(
        mut self,
        mut indexes: watch::Receiver<Option<Arc<ImageIndex>>>,
        status: watch::Sender<SchedulerStatus>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut in_flight = FuturesUnordered::new();
        let parallelism = self.pipeline.parallelism;
        let mut agent_changes = self.pipeline.agents().map(AgentHub::subscribe);
        // Agents that registered before the scheduler started count as a change.
        let mut agents_changed_at: Option<Instant> = agent_changes.as_ref().map(|_| Instant::now());
        if let Some(index) = indexes.borrow_and_update().clone() {
            self.apply_index(index);
            status.send_replace(self.status.clone());
        }
        loop {
            // Start what is due, most overdue first, as far as parallelism allows.
            let now = Instant::now();
            if in_flight.len() < parallelism {
                let mut due: Vec<(Instant, &CheckKey)> = self
                    .keys
                    .iter()
                    .filter(|(_, s)| !s.in_flight && s.next_due <= now)
                    .map(|(k, s)| (s.next_due, k))
                    .collect();
                due.sort_unstable_by_key(|(when, _)| *when);
                let starting: Vec<CheckKey> = due
                    .into_iter()
                    .take(parallelism - in_flight.len())
                    .map(|(_, k)| k.clone())
                    .collect();
                for key in starting {
                    if let Some(state) = self.keys.get_mut(&key) {
                        state.in_flight = true;
                    }
                    let pipeline = self.pipeline.clone();
                    let target = self.index.agent_targets.get(&key).cloned();
                    in_flight.push(async move {
                        let checked = pipeline.check_routed(&key, target.as_ref()).await;
                        (key, checked)
                    });
                }
            }
            if self.complete_pass_if_done() {
                status.send_replace(self.status.clone());
            }
            let next_due = self
                .keys
                .values()
                .filter(|s| !s.in_flight)
                .map(|s| s.next_due)
                .min();
            tokio::select! {
                changed = indexes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    if let Some(index) = indexes.borrow_and_update().clone() {
                        self.apply_index(index);
                        status.send_replace(self.status.clone());
                    }
                }
                Some((key, checked)) = in_flight.next(), if !in_flight.is_empty() => {
                    self.finish(key, checked);
                }
                changed = changed_or_pending(agent_changes.as_mut()) => {
                    if changed.is_err() {
                        agent_changes = None;
                    } else if agents_changed_at.is_none() {
                        agents_changed_at = Some(Instant::now() + AGENT_CHANGE_DEBOUNCE);
                    }
                }
                _ = sleep_until(agents_changed_at), if agents_changed_at.is_some() => {
                    agents_changed_at = None;
                    self.agents_changed();
                }
                _ = sleep_until(next_due), if in_flight.len() < parallelism => {}
                _ = stop.wait_for(|stop| *stop) => break,
            }
        }
    }

    /// Adopts a new index: series of vanished references go now, new references are
    /// due now, known ones keep their schedule and get their last outcome at once.
    fn apply_index(&mut self, index: Arc<ImageIndex>) {
        index.log_new_warnings(Some(&self.index));
        self.pipeline.retain(&index.containers());
        let registries: BTreeSet<&str> = index
            .checks
            .keys()
            .map(|k| k.reference.api_host())
            .collect();
        self.pipeline.checker.retain_registries(&registries);
        for (container, outcome) in &index.settled {
            self.pipeline
                .record(&index, std::slice::from_ref(container), outcome);
        }
        let now = Instant::now();
        for (key, containers) in &index.checks {
            match self.keys.get(key) {
                Some(state) => {
                    if let Some(outcome) = &state.outcome {
                        self.pipeline.record(&index, containers, outcome);
                    }
                }
                None => {
                    self.keys.insert(
                        key.clone(),
                        KeyState {
                            next_due: now,
                            failures: 0,
                            in_flight: false,
                            outcome: None,
                            nodes: BTreeMap::new(),
                        },
                    );
                    self.pass_remaining.insert(key.clone());
                }
            }
        }
        self.keys.retain(|key, _| index.checks.contains_key(key));
        self.pass_remaining
            .retain(|key| index.checks.contains_key(key));
        self.pass_open = true;
        self.image_keys.clear();
        for (key, containers) in &index.checks {
            let images: BTreeSet<&str> = containers.iter().map(|c| c.image.as_str()).collect();
            for image in images {
                self.image_keys
                    .entry(image.to_string())
                    .or_default()
                    .push(key.clone());
            }
        }
        self.index = index;
        if self.pipeline.agents().is_some() {
            lock(&self.pipeline.store)
                .retain_image_nodes(|image| self.image_keys.contains_key(image));
            let all: Vec<String> = self.image_keys.keys().cloned().collect();
            self.refresh_image_nodes(all);
        }
        self.refresh_status();
    }

    /// Agents came, went or reported new image lists: refresh who holds what. When a
    /// node group gains its first agent, check again at once what that group can
    /// answer better: what was checked centrally, or by no node of that group. Further
    /// agents of a covered group add no vantage point (one node per group checks), so
    /// a rollout of N agents costs at most one extra check per key and new group.
    fn agents_changed(&mut self) {
        let Some(hub) = self.pipeline.agents().cloned() else {
            return;
        };
        let groups: BTreeMap<String, String> = hub
            .agents()
            .iter()
            .map(|agent| (agent.node_name.clone(), hub.group_of(agent)))
            .collect();
        self.pipeline
            .metrics
            .agents_connected
            .set(groups.len() as i64);
        let covered_before: BTreeSet<&String> = self.agent_groups.values().collect();
        let new_groups: BTreeSet<String> = groups
            .values()
            .filter(|group| !covered_before.contains(group))
            .cloned()
            .collect();
        if !new_groups.is_empty() {
            let now = Instant::now();
            let mut moved = 0;
            for state in self.keys.values_mut() {
                let answered_by_new_group = state
                    .nodes
                    .keys()
                    .any(|node| groups.get(node).is_some_and(|g| new_groups.contains(g)));
                if !state.in_flight && state.outcome.is_some() && !answered_by_new_group {
                    state.next_due = now;
                    moved += 1;
                }
            }
            if moved > 0 {
                info!(
                    groups = ?new_groups,
                    checks = moved,
                    "node groups gained their first agent: checking again through them"
                );
            }
        }
        self.agent_nodes = groups.keys().cloned().collect();
        self.agent_groups = groups;
        let wanted: HashSet<String> = self
            .index
            .agent_targets
            .values()
            .map(|t| t.image.to_string())
            .collect();
        self.holders = hub.holders_of(&wanted);
        let all: Vec<String> = self.image_keys.keys().cloned().collect();
        self.refresh_image_nodes(all);
    }

    /// Recomputes the node view of `images` (as written) from the latest node answers
    /// of their keys and the agents' image lists.
    fn refresh_image_nodes(&self, images: Vec<String>) {
        if self.pipeline.agents().is_none() {
            return;
        }
        let mut views = Vec::with_capacity(images.len());
        for image in images {
            let Some(keys) = self.image_keys.get(&image) else {
                continue;
            };
            // Per node its least available answer across the image's keys.
            let mut per_node: BTreeMap<&str, (CheckStatus, &str)> = BTreeMap::new();
            let mut cached: BTreeSet<&str> = BTreeSet::new();
            for key in keys {
                if let Some(state) = self.keys.get(key) {
                    for (node, answer) in &state.nodes {
                        if answer.image_present && self.agent_nodes.contains(node) {
                            cached.insert(node);
                        }
                        if !answer.is_conclusive() {
                            continue;
                        }
                        let entry = per_node
                            .entry(node)
                            .or_insert((answer.status, answer.reason.as_str()));
                        if worse(answer.status, entry.0) {
                            *entry = (answer.status, answer.reason.as_str());
                        }
                    }
                }
                if let Some(target) = self.index.agent_targets.get(key)
                    && let Some(holders) = self.holders.get(&target.image.to_string())
                {
                    cached.extend(holders.iter().map(String::as_str));
                }
            }
            let mut statuses = BTreeMap::new();
            for (status, _) in per_node.values() {
                *statuses.entry(*status).or_default() += 1;
            }
            let answers = per_node
                .iter()
                .map(|(node, (status, reason))| (node.to_string(), (*status, reason.to_string())))
                .collect();
            views.push((
                image,
                ImageNodes {
                    statuses,
                    cached: cached.len(),
                    answers,
                },
            ));
        }
        self.pipeline.set_image_nodes(views);
    }

    fn finish(&mut self, key: CheckKey, checked: KeyCheck) {
        let KeyCheck { mut outcome, nodes } = checked;
        outcome.checked_at = Some(SystemTime::now());
        let Some(state) = self.keys.get_mut(&key) else {
            return; // The reference went away while it was being checked.
        };
        let had_nodes = !(state.nodes.is_empty() && nodes.is_empty());
        state.nodes = nodes;
        state.in_flight = false;
        if outcome.is_available() {
            state.failures = 0;
            state.next_due = Instant::now() + self.interval;
        } else {
            state.failures = state.failures.saturating_add(1);
            let backoff = RETRY_BASE.saturating_mul(1 << state.failures.saturating_sub(1).min(16));
            state.next_due = Instant::now() + backoff.min(self.interval);
        }
        state.outcome = Some(outcome.clone());
        if let Some(containers) = self.index.checks.get(&key) {
            self.pipeline.record(&self.index, containers, &outcome);
            if had_nodes {
                let images: BTreeSet<String> = containers.iter().map(|c| c.image.clone()).collect();
                self.refresh_image_nodes(images.into_iter().collect());
            }
        }
        self.pass_remaining.remove(&key);
    }

    /// Closes the pass when every check of it has been made; true if it did.
    fn complete_pass_if_done(&mut self) -> bool {
        if !self.pass_open || !self.pass_remaining.is_empty() {
            return false;
        }
        self.pipeline.pass_completed();
        self.status.passes += 1;
        self.pass_remaining = self.keys.keys().cloned().collect();
        // With nothing to check, the next pass opens when the index changes.
        self.pass_open = !self.pass_remaining.is_empty();
        self.refresh_status();
        true
    }

    fn refresh_status(&mut self) {
        let (containers, unavailable) = self.pipeline.counts();
        self.status.distinct_checks = self.keys.len();
        self.status.containers = containers;
        self.status.unavailable = unavailable;
    }
}

/// Whether `failing` says more than `current` about a node: any failure beats
/// `available`, and among failures the more informative one wins.
fn worse(candidate: CheckStatus, current: CheckStatus) -> bool {
    match (candidate, current) {
        (CheckStatus::Available, _) => false,
        (_, CheckStatus::Available) => true,
        (a, b) => a.informativeness() > b.informativeness(),
    }
}

/// The next change of the agent hub; pending forever without one.
async fn changed_or_pending(
    changes: Option<&mut watch::Receiver<u64>>,
) -> Result<(), watch::error::RecvError> {
    match changes {
        Some(changes) => changes.changed().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(when: Option<Instant>) {
    match when {
        Some(when) => tokio::time::sleep_until(when.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::{AgentInfo, HubConfig, SessionId};
    use crate::checker::CheckerConfig;
    use crate::index::{Filters, IndexOptions};
    use crate::inventory::{ContainerImage, Inventory, Workload, WorkloadKind};
    use crate::mirrors::Mirrors;
    use pullwatch::proto::{CheckResult, Status, aggregator_message};
    use tokio::sync::mpsc;

    /// A connected agent that answers every task with `status`, holding the image.
    fn agent(hub: &AgentHub, node: &str, status: Status) -> SessionId {
        agent_answering(
            hub,
            node,
            &[],
            CheckResult {
                status: status as i32,
                image_present: true,
                ..Default::default()
            },
        )
    }

    /// A connected agent with `labels` that answers every task with `answer`.
    fn agent_answering(
        hub: &AgentHub,
        node: &str,
        labels: &[(&str, &str)],
        answer: CheckResult,
    ) -> SessionId {
        let (tx, mut rx) = mpsc::channel(256);
        let session = hub.register(
            AgentInfo {
                node_name: node.into(),
                runtime_name: "containerd".into(),
                runtime_version: "1.6".into(),
                agent_version: "0".into(),
                images: Default::default(),
                node_labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                connected_at: std::time::SystemTime::now(),
                in_flight: 0,
            },
            tx,
        );
        let (hub, s) = (hub.clone(), session.clone());
        tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                if let Some(aggregator_message::Message::Task(task)) = message.message {
                    hub.complete(
                        &s,
                        CheckResult {
                            task_id: task.task_id,
                            image: task.image,
                            ..answer.clone()
                        },
                    );
                }
            }
        });
        session
    }

    async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        for _ in 0..200 {
            if condition() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// A scheduler running over Deployments `ns/<name>` with one container `app` using
    /// `image` each, its agents grouped by the `zone` label, checking centrally with a
    /// 2 s timeout and rechecking hourly.
    struct Running {
        pipeline: Arc<Pipeline>,
        hub: AgentHub,
        index_tx: watch::Sender<Option<Arc<ImageIndex>>>,
        stop_tx: watch::Sender<bool>,
        scheduler: tokio::task::JoinHandle<()>,
    }

    fn running(workloads: &[(&str, &str)]) -> Running {
        let mut inventory = Inventory::default();
        for (name, image) in workloads {
            inventory.workloads.insert(
                (WorkloadKind::Deployment, "ns".into(), name.to_string()),
                Workload {
                    namespace: "ns".into(),
                    kind: WorkloadKind::Deployment,
                    name: name.to_string(),
                    containers: vec![ContainerImage {
                        container: "app".into(),
                        image: image.to_string(),
                    }],
                    pull_secrets: vec![],
                    service_account: "default".into(),
                    enabled: true,
                    platforms: Default::default(),
                },
            );
        }
        let index = ImageIndex::build(
            &inventory,
            &IndexOptions {
                default_registry: "docker.io".into(),
                platforms: Vec::new(),
                mirrors: Mirrors::default(),
                filters: Filters::default(),
            },
        );
        let metrics = Metrics::new(false).unwrap();
        let checker = Checker::new(
            &CheckerConfig {
                allow_plain_http: true,
                request_timeout: Duration::from_secs(2),
                ..Default::default()
            },
            metrics.checker.clone(),
        )
        .unwrap();
        let hub = AgentHub::new(HubConfig {
            node_group_label: Some("zone".into()),
            ..Default::default()
        });
        let pipeline = Arc::new(Pipeline::new(checker, metrics, 4).with_agents(hub.clone()));
        let (index_tx, index_rx) = watch::channel(Some(Arc::new(index)));
        let (status_tx, _status_rx) = watch::channel(SchedulerStatus::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let scheduler = tokio::spawn(
            Scheduler::new(pipeline.clone(), Duration::from_secs(3600))
                .run(index_rx, status_tx, stop_rx),
        );
        Running {
            pipeline,
            hub,
            index_tx,
            stop_tx,
            scheduler,
        }
    }

    /// Nothing listens on port 1 of loopback: a central check is `registry_unavailable`
    /// at once, while the agents' answers say what the nodes see.
    #[tokio::test]
    async fn node_answers_supersede_the_central_check_once_an_agent_joins() {
        let image = "127.0.0.1:1/team/app:v1";
        let Running {
            pipeline,
            hub,
            index_tx,
            stop_tx,
            scheduler,
        } = running(&[("web", image)]);
        let status = |p: &Pipeline| p.results().first().map(|(_, o)| o.status);
        wait_for("the central check", || {
            status(&pipeline) == Some(CheckStatus::RegistryUnavailable)
        })
        .await;
        let text = pipeline.render_metrics().unwrap();
        assert!(
            text.contains("pullwatch_checks_total{via=\"central\"} 1"),
            "{text}"
        );
        assert!(
            !text.contains("pullwatch_image_nodes{"),
            "no node has checked"
        );
        assert!(text.contains(&format!(
            "pullwatch_image_cached_nodes{{image=\"{image}\"}} 0"
        )));

        // An agent joins: the reference is checked again through it at once (not in
        // an hour), and its answer is the status.
        let a = agent(&hub, "node-a", Status::Available);
        wait_for("the node's answer", || {
            status(&pipeline) == Some(CheckStatus::Available)
        })
        .await;
        let text = pipeline.render_metrics().unwrap();
        assert!(
            text.contains("pullwatch_checks_total{via=\"agents\"} 1"),
            "{text}"
        );
        assert!(text.contains(&format!(
            "pullwatch_image_nodes{{image=\"{image}\",status=\"available\"}} 1"
        )));
        assert!(text.contains(&format!(
            "pullwatch_image_cached_nodes{{image=\"{image}\"}} 1"
        )));
        assert!(text.contains("pullwatch_agents_connected 1"));
        // The workload goes: its image's series go with it.
        index_tx.send_replace(Some(Arc::new(ImageIndex::default())));
        wait_for("the series to go", || {
            !pipeline
                .render_metrics()
                .unwrap()
                .contains("pullwatch_image_")
        })
        .await;
        assert!(pipeline.results().is_empty());
        hub.unregister(&a);
        let _ = stop_tx.send(true);
        scheduler.await.unwrap();
    }

    /// A DaemonSet rollout: agents join one by one, each noticed on its own, and none
    /// can answer (its runtime fails), so every key stays checked centrally. Only the
    /// first agent of each node group makes the keys due again: with K keys and G
    /// groups, at most K × G extra checks, however many agents join.
    #[tokio::test]
    async fn agent_joins_recheck_once_per_new_node_group() {
        const KEYS: usize = 12;
        let workloads: Vec<(String, String)> = (0..KEYS)
            .map(|i| (format!("w{i}"), format!("127.0.0.1:1/team/app{i}:v1")))
            .collect();
        let workloads: Vec<(&str, &str)> = workloads
            .iter()
            .map(|(name, image)| (name.as_str(), image.as_str()))
            .collect();
        let Running {
            pipeline,
            hub,
            index_tx: _index_tx,
            stop_tx,
            scheduler,
        } = running(&workloads);
        let central =
            |p: &Pipeline| p.metrics.checks.with_label_values(&["central"]).get() as usize;
        wait_for("the first pass", || central(&pipeline) == KEYS).await;

        let mut sessions = Vec::new();
        let mut expected = KEYS;
        for (i, zone) in ["z1", "z1", "z1", "z1", "z2", "z2", "z1", "z2"]
            .iter()
            .enumerate()
        {
            let new_group = !sessions.iter().any(|(z, _)| z == zone);
            let session = agent_answering(
                &hub,
                &format!("node-{i}"),
                &[("zone", zone)],
                CheckResult {
                    runtime_failure: true,
                    ..Default::default()
                },
            );
            sessions.push((*zone, session));
            if new_group {
                expected += KEYS;
            }
            // Past the debounce, so this join is noticed on its own; then the checks
            // it caused have finished.
            tokio::time::sleep(AGENT_CHANGE_DEBOUNCE + Duration::from_millis(300)).await;
            wait_for("the rechecks", || central(&pipeline) >= expected).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(
                central(&pipeline),
                expected,
                "after agent {i} ({zone}): one recheck per key and new node group"
            );
        }
        // Eight agents in two groups: 2 × KEYS extra checks, not 8 × KEYS.
        assert_eq!(central(&pipeline), KEYS * 3);
        for (_, session) in &sessions {
            hub.unregister(session);
        }
        let _ = stop_tx.send(true);
        scheduler.await.unwrap();
    }
}
