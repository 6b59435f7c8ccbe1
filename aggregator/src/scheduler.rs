//! The scheduler: the third stage. Decides when each distinct check runs, hands it to
//! the stages after it (the checker or the agents, then the store) through
//! [`Downstream`], and keeps the node view of each image from the agents' answers.
//!
//! [`Scheduler`] keeps a changing index checked (the `serve` command): a new
//! reference within moments of appearing, every reference at least once per
//! interval, failures again sooner with capped backoff, and a vanished reference's
//! series gone at once.
//!
//! With node agents a check goes to one node per node group and the nodes' answers are
//! the canonical status (the kubelet's view); the aggregator checks centrally only
//! when no agent answers. When a node group gains its first agent, what that group can
//! answer better (checked centrally, or by no node of the group) is checked again at
//! once, once. The node view of each image (nodes per status, nodes holding it) is
//! kept beside the outcomes.
//!
//! The later stages are reached only through [`Downstream`] and [`Agents`], which
//! [`crate::pipeline`] implements: nothing here imports a later stage.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use pullwatch::{CheckOutcome, CheckStatus};
use tokio::sync::watch;
use tracing::info;

use crate::index::{AgentTarget, CheckKey, ContainerRef, ImageIndex};

/// The outcome of one distinct check, and the node answers it was made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyCheck {
    pub outcome: CheckOutcome,
    /// Node name -> its answer; empty when the aggregator checked centrally.
    pub nodes: BTreeMap<String, NodeOutcome>,
}

/// One node's answer for one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeOutcome {
    pub status: CheckStatus,
    pub reason: String,
    /// Where the deciding credential came from on the node (`secret/<ns>/<name>`,
    /// `config.json:<path>`, `plugin:<name>`, `runtime`).
    pub credential_source: String,
    /// Whether the node holds the image after the check.
    pub image_present: bool,
    /// What the reference resolves to now along the node's route, when known.
    pub digest: Option<String>,
    /// What the node holds under the tag, when it holds it.
    pub held_digest: Option<String>,
    /// The node holds the tag at another digest than the registry now answers.
    pub tag_moved: Option<bool>,
    /// The node checked without the workload's credentials (it does not run the
    /// workload): a failure then is not what its kubelet would see.
    pub without_workload_credentials: bool,
}

impl NodeOutcome {
    /// Whether this answer is the kubelet's view on that node.
    pub fn is_conclusive(&self) -> bool {
        self.status == CheckStatus::Available || !self.without_workload_credentials
    }
}

/// What the nodes say about one image (as written in the spec), with agents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageNodes {
    /// Nodes per status, from the latest node checks of the image (empty: no node
    /// has checked it).
    pub statuses: BTreeMap<CheckStatus, usize>,
    /// Nodes holding the image.
    pub cached: usize,
    /// Node -> its latest conclusive answer (the least available across the image's
    /// checks) and the reason it gave.
    pub answers: BTreeMap<String, (CheckStatus, String)>,
}

/// The stages after the scheduler, as it sees them: where a check is made and where
/// its outcome goes.
pub trait Downstream: Send + Sync + 'static {
    /// Checks started at once.
    fn parallelism(&self) -> usize;
    /// Checks one distinct reference: through the agents when any answers, else
    /// centrally.
    fn check(
        &self,
        key: &CheckKey,
        target: Option<&AgentTarget>,
    ) -> impl Future<Output = KeyCheck> + Send;
    /// Records `outcome` for `containers` of `index`.
    fn record(&self, index: &ImageIndex, containers: &[ContainerRef], outcome: &Arc<CheckOutcome>);
    /// Forgets every reference not in `current`: its series disappear.
    fn retain(&self, current: &HashSet<&ContainerRef>);
    /// Forgets what is kept per registry for registries not in `registries`.
    fn retain_registries(&self, registries: &BTreeSet<&str>);
    /// The platforms workloads can land on: an index's pull path is walked for each.
    fn walk_platforms(&self, _platforms: &[pullwatch::Platform]) {}
    /// How many container references are exported, and how many are not available.
    fn counts(&self) -> (usize, usize);
    /// One full pass over every reference finished.
    fn pass_completed(&self);
    /// The node agents, when they are enabled.
    fn agents(&self) -> Option<&dyn Agents>;
    /// How many agents are connected now.
    fn agents_connected(&self, count: usize);
    /// Sets the node view of every image in `views`.
    fn set_image_nodes(&self, views: Vec<(String, ImageNodes)>);
    /// Drops the node view of images `keep` says no.
    fn retain_image_nodes(&self, keep: &dyn Fn(&str) -> bool);
}

/// The node agents, as the scheduler sees them.
pub trait Agents: Send + Sync {
    /// Ticks whenever agents come, go or report new image lists.
    fn subscribe(&self) -> watch::Receiver<u64>;
    /// Connected node -> its node group.
    fn groups(&self) -> BTreeMap<String, String>;
    /// Normalized reference -> the nodes whose agents hold it, for `images`.
    fn holders_of(&self, images: &HashSet<String>) -> HashMap<String, BTreeSet<String>>;
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
    outcome: Option<Arc<CheckOutcome>>,
    /// The node answers of the latest check (empty: checked centrally).
    nodes: BTreeMap<String, NodeOutcome>,
}

/// How long agent changes (joins, image lists) gather before the node view of every
/// image is refreshed.
pub(crate) const AGENT_CHANGE_DEBOUNCE: Duration = Duration::from_secs(1);

/// First retry of a failed check; doubled per consecutive failure, capped at the interval.
const RETRY_BASE: Duration = Duration::from_secs(10);

/// Keeps the latest index checked.
pub struct Scheduler<D> {
    pipeline: Arc<D>,
    interval: Duration,
    keys: HashMap<CheckKey, KeyState>,
    index: Arc<ImageIndex>,
    pass_remaining: HashSet<CheckKey>,
    pass_open: bool,
    status: SchedulerStatus,
    /// Image as written -> the keys whose containers use it.
    image_keys: HashMap<Arc<str>, Vec<CheckKey>>,
    /// Connected agents' nodes, as last seen.
    agent_nodes: BTreeSet<String>,
    /// Connected node -> its node group.
    agent_groups: BTreeMap<String, String>,
    /// Normalized reference -> nodes whose agents hold it, as last seen.
    holders: HashMap<String, BTreeSet<String>>,
}

impl<D: Downstream> Scheduler<D> {
    pub fn new(pipeline: Arc<D>, interval: Duration) -> Self {
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
        let parallelism = self.pipeline.parallelism();
        let mut agent_changes = self.pipeline.agents().map(|agents| agents.subscribe());
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
                        let checked = pipeline.check(&key, target.as_ref()).await;
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
        self.pipeline.retain_registries(&registries);
        self.pipeline.walk_platforms(&index.walk_platforms);
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
            let images: BTreeSet<&Arc<str>> = containers.iter().map(|c| &c.image).collect();
            for image in images {
                self.image_keys
                    .entry(image.clone())
                    .or_default()
                    .push(key.clone());
            }
        }
        self.index = index;
        if self.pipeline.agents().is_some() {
            self.pipeline
                .retain_image_nodes(&|image| self.image_keys.contains_key(image));
            let all: Vec<Arc<str>> = self.image_keys.keys().cloned().collect();
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
        let pipeline = self.pipeline.clone();
        let Some(agents) = pipeline.agents() else {
            return;
        };
        let groups = agents.groups();
        pipeline.agents_connected(groups.len());
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
        self.holders = agents.holders_of(&wanted);
        let all: Vec<Arc<str>> = self.image_keys.keys().cloned().collect();
        self.refresh_image_nodes(all);
    }

    /// Recomputes the node view of `images` (as written) from the latest node answers
    /// of their keys and the agents' image lists.
    fn refresh_image_nodes(&self, images: Vec<Arc<str>>) {
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
                image.to_string(),
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
        // One copy, shared by this state and every container's entry in the store.
        let outcome = Arc::new(outcome);
        state.outcome = Some(outcome.clone());
        if let Some(containers) = self.index.checks.get(&key) {
            self.pipeline.record(&self.index, containers, &outcome);
            if had_nodes {
                let images: BTreeSet<Arc<str>> =
                    containers.iter().map(|c| c.image.clone()).collect();
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
