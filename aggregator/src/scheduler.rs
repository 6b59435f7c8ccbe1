//! The scheduler: the third stage. Decides when each distinct check runs, hands it to
//! where checks are made ([`CheckRunner`]: centrally or through the node agents), hands
//! its outcome to where outcomes go ([`OutcomeSink`]: the store), and works out the
//! node view of each image from the agents' answers.
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
//! The later stages are reached only through the two traits and [`NodeAgents`], which
//! [`crate::pipeline`] implements: nothing here imports a later stage. Time is tokio's,
//! so the tests below run the schedule on a paused clock against small fakes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use pullwatch::{CheckOutcome, CheckStatus};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::answers::{ImageNodes, KeyCheck, NodeOutcome};
use crate::index::{AgentTarget, CheckKey, ContainerRef, ImageIndex};

/// Where checks are made, as the scheduler sees it: centrally, or on the nodes through
/// their agents.
pub(crate) trait CheckRunner: Send + Sync + 'static {
    /// Checks started at once.
    fn parallelism(&self) -> usize;
    /// Checks one distinct reference: through the agents when any answers (`target`
    /// says how they check it), else centrally.
    fn check(
        &self,
        key: &CheckKey,
        target: Option<&AgentTarget>,
    ) -> impl Future<Output = KeyCheck> + Send;
    /// Forgets what is kept per registry for registries not in `registries`.
    fn retain_registries(&self, registries: &BTreeSet<&str>);
    /// What the nodes run, as `index` found it: an index's pull path is walked for each
    /// platform workloads can land on, a schema 1 manifest as each runtime pulls it.
    fn walk_as(&self, _index: &ImageIndex) {}
    /// The node agents checks can go to, when they are enabled.
    fn node_agents(&self) -> Option<&dyn NodeAgents>;
}

/// The node agents, as the scheduler sees them.
pub(crate) trait NodeAgents: Send + Sync {
    /// Ticks whenever agents come, go or report new image lists.
    fn subscribe(&self) -> watch::Receiver<u64>;
    /// Connected node -> its node group.
    fn groups(&self) -> BTreeMap<String, String>;
    /// Normalized reference -> the nodes whose agents hold it, for `images`.
    /// (Node names shared with the agents' registry, not copied per image.)
    fn holders_of(&self, images: &HashSet<String>) -> HashMap<String, BTreeSet<Arc<str>>>;
}

/// Where outcomes go, as the scheduler sees it: the store (and the few gauges) the
/// metrics and results are rendered from.
pub(crate) trait OutcomeSink: Send + Sync + 'static {
    /// Records `outcome` for `containers` of `index`.
    fn record(&self, index: &ImageIndex, containers: &[ContainerRef], outcome: &Arc<CheckOutcome>);
    /// Forgets every reference not in `current`: its series disappear.
    fn retain(&self, current: &HashSet<&ContainerRef>);
    /// How many container references are exported, and how many are not available.
    fn counts(&self) -> (usize, usize);
    /// One full pass over every reference finished.
    fn pass_completed(&self);
    /// How many agents are connected now.
    fn agents_connected(&self, count: usize);
    /// Sets the node view of every image in `views`.
    fn set_image_nodes(&self, views: Vec<(String, ImageNodes)>);
    /// Drops the node view of images `keep` says no.
    fn retain_image_nodes(&self, keep: &dyn Fn(&str) -> bool);
}

/// Where the continuous scheduler stands, for `/readyz` and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SchedulerStatus {
    /// Full passes completed (every distinct check made at least once since the last).
    pub(crate) passes: u64,
    pub(crate) distinct_checks: usize,
    pub(crate) containers: usize,
    pub(crate) unavailable: usize,
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

/// Node views refreshed per turn of the scheduler's loop after agent changes: at
/// 5,000 images a full refresh held a runtime thread for a noticeable while.
const VIEW_REFRESH_BATCH: usize = 250;

/// First retry of a failed check; doubled per consecutive failure, capped at the interval.
const RETRY_BASE: Duration = Duration::from_secs(10);

/// Keeps the latest index checked.
pub(crate) struct Scheduler<C, S> {
    runner: Arc<C>,
    sink: Arc<S>,
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
    holders: HashMap<String, BTreeSet<Arc<str>>>,
    /// Images (as written) whose node view awaits a refresh after agent changes:
    /// refreshed [`VIEW_REFRESH_BATCH`] at a time, the runtime's other tasks (`/healthz`,
    /// scrapes) served between batches.
    stale_views: HashSet<Arc<str>>,
}

impl<C: CheckRunner, S: OutcomeSink> Scheduler<C, S> {
    /// Checks through `runner`, records into `sink`, each reference at least once per
    /// `interval`.
    pub(crate) fn new(runner: Arc<C>, sink: Arc<S>, interval: Duration) -> Self {
        Scheduler {
            runner,
            sink,
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
            stale_views: HashSet::new(),
        }
    }

    /// Runs until `stop` turns true or the index sender goes away, publishing its
    /// status on `status` after every pass and index change.
    pub(crate) async fn run(
        mut self,
        mut indexes: watch::Receiver<Option<Arc<ImageIndex>>>,
        status: watch::Sender<SchedulerStatus>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut in_flight = FuturesUnordered::new();
        let parallelism = self.runner.parallelism();
        let mut agent_changes = self.runner.node_agents().map(|agents| agents.subscribe());
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
                    let runner = self.runner.clone();
                    let target = self.index.agent_targets.get(&key).cloned();
                    in_flight.push(async move {
                        let checked = runner.check(&key, target.as_ref()).await;
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
                _ = tokio::task::yield_now(), if !self.stale_views.is_empty() => {
                    self.refresh_stale_views();
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
        self.sink.retain(&index.containers());
        let registries: BTreeSet<&str> = index
            .checks
            .keys()
            .map(|k| k.reference.api_host())
            .collect();
        self.runner.retain_registries(&registries);
        self.runner.walk_as(&index);
        for (container, outcome) in &index.settled {
            self.sink
                .record(&index, std::slice::from_ref(container), outcome);
        }
        let now = Instant::now();
        for (key, containers) in &index.checks {
            match self.keys.get(key) {
                Some(state) => {
                    if let Some(outcome) = &state.outcome {
                        self.sink.record(&index, containers, outcome);
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
        if self.runner.node_agents().is_some() {
            self.sink
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
        let runner = self.runner.clone();
        let Some(agents) = runner.node_agents() else {
            return;
        };
        let groups = agents.groups();
        self.sink.agents_connected(groups.len());
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
        let nodes: BTreeSet<String> = groups.keys().cloned().collect();
        // Nodes that came or went: their answers now count, or no longer, as cached.
        let moved_nodes: BTreeSet<String> = nodes
            .symmetric_difference(&self.agent_nodes)
            .cloned()
            .collect();
        self.agent_nodes = nodes;
        self.agent_groups = groups;
        let wanted: HashSet<String> = self
            .index
            .agent_targets
            .values()
            .map(|t| t.image.to_string())
            .collect();
        let holders = agents.holders_of(&wanted);
        let old_holders = std::mem::replace(&mut self.holders, holders);
        let moved_holders: HashSet<&str> = self
            .holders
            .iter()
            .filter(|(image, nodes)| old_holders.get(*image) != Some(*nodes))
            .map(|(image, _)| image.as_str())
            .chain(
                old_holders
                    .keys()
                    .filter(|image| !self.holders.contains_key(*image))
                    .map(String::as_str),
            )
            .collect();
        let stale = self.views_changed_by(&moved_nodes, &moved_holders);
        debug!(
            nodes = moved_nodes.len(),
            holders = moved_holders.len(),
            views = stale.len(),
            "agents changed: node views to refresh"
        );
        self.stale_views.extend(stale);
    }

    /// The images (as written) whose node view depends on `moved_nodes` (nodes whose
    /// agents came or went) or `moved_holders` (normalized references whose holders
    /// changed): every other image's view is as it was, so only these are refreshed.
    fn views_changed_by(
        &self,
        moved_nodes: &BTreeSet<String>,
        moved_holders: &HashSet<&str>,
    ) -> Vec<Arc<str>> {
        if moved_nodes.is_empty() && moved_holders.is_empty() {
            return Vec::new();
        }
        let mut target_images: HashMap<&CheckKey, String> = HashMap::new();
        if !moved_holders.is_empty() {
            for (key, target) in &self.index.agent_targets {
                target_images.insert(key, target.image.to_string());
            }
        }
        self.image_keys
            .iter()
            .filter(|(_, keys)| {
                keys.iter().any(|key| {
                    let held_moved = target_images
                        .get(key)
                        .is_some_and(|image| moved_holders.contains(image.as_str()));
                    held_moved
                        || self.keys.get(key).is_some_and(|state| {
                            state.nodes.keys().any(|node| moved_nodes.contains(node))
                        })
                })
            })
            .map(|(image, _)| image.clone())
            .collect()
    }

    /// Refreshes the next batch of stale node views.
    fn refresh_stale_views(&mut self) {
        let batch: Vec<Arc<str>> = self
            .stale_views
            .iter()
            .take(VIEW_REFRESH_BATCH)
            .cloned()
            .collect();
        for image in &batch {
            self.stale_views.remove(image);
        }
        self.refresh_image_nodes(batch);
    }

    /// Recomputes the node view of `images` (as written) from the latest node answers
    /// of their keys and the agents' image lists.
    fn refresh_image_nodes(&self, images: Vec<Arc<str>>) {
        if self.runner.node_agents().is_none() {
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
                    cached.extend(holders.iter().map(|node| node.as_ref()));
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
        self.sink.set_image_nodes(views);
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
            self.sink.record(&self.index, containers, &outcome);
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
        self.sink.pass_completed();
        self.status.passes += 1;
        self.pass_remaining = self.keys.keys().cloned().collect();
        // With nothing to check, the next pass opens when the index changes.
        self.pass_open = !self.pass_remaining.is_empty();
        self.refresh_status();
        true
    }

    fn refresh_status(&mut self) {
        let (containers, unavailable) = self.sink.counts();
        self.status.distinct_checks = self.keys.len();
        self.status.containers = containers;
        self.status.unavailable = unavailable;
    }
}

/// Whether `candidate` says more than `current` about a node: any failure beats
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
        Some(when) => tokio::time::sleep_until(when).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    //! The schedule on tokio's paused clock: time only moves when every task waits, and
    //! then straight to the next timer, so hours of schedule take milliseconds and
    //! every check happens at an exact instant.

    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const INTERVAL: Duration = Duration::from_secs(300);

    /// Where checks are made, scripted: each reference answers what `answers` holds for
    /// it (`available`, checked centrally, unless told), after `latency`. Every check is
    /// logged with the time it started.
    struct FakeRunner {
        parallelism: usize,
        latency: Duration,
        start: Instant,
        answers: Mutex<HashMap<String, KeyCheck>>,
        made: Mutex<Vec<(String, Duration)>>,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
        registries: Mutex<Vec<BTreeSet<String>>>,
        agents: Option<FakeAgents>,
    }

    impl FakeRunner {
        fn new(parallelism: usize) -> Self {
            FakeRunner {
                parallelism,
                latency: Duration::ZERO,
                start: Instant::now(),
                answers: Mutex::default(),
                made: Mutex::default(),
                in_flight: AtomicUsize::new(0),
                max_in_flight: AtomicUsize::new(0),
                registries: Mutex::default(),
                agents: None,
            }
        }

        fn with_agents(mut self) -> Self {
            self.agents = Some(FakeAgents {
                changes: watch::channel(0).0,
                groups: Mutex::default(),
                holders: Mutex::default(),
            });
            self
        }

        /// From now on `image` is checked centrally and is `status`.
        fn answer(&self, image: &str, status: CheckStatus) {
            self.answer_from_nodes(image, status, BTreeMap::new());
        }

        /// From now on `image` is `status`, made of `nodes`' answers.
        fn answer_from_nodes(
            &self,
            image: &str,
            status: CheckStatus,
            nodes: BTreeMap<String, NodeOutcome>,
        ) {
            self.answers.lock().unwrap().insert(
                image.to_string(),
                KeyCheck {
                    outcome: CheckOutcome::new(status, format!("{image} is {status:?}")),
                    nodes,
                },
            );
        }

        /// When each check of `image` started, in seconds since the start.
        fn made(&self, image: &str) -> Vec<f64> {
            self.made
                .lock()
                .unwrap()
                .iter()
                .filter(|(made, _)| made == image)
                .map(|(_, at)| at.as_secs_f64())
                .collect()
        }

        fn total(&self) -> usize {
            self.made.lock().unwrap().len()
        }

        fn fleet(&self) -> &FakeAgents {
            self.agents.as_ref().expect("agents enabled")
        }
    }

    impl CheckRunner for FakeRunner {
        fn parallelism(&self) -> usize {
            self.parallelism
        }

        async fn check(&self, key: &CheckKey, target: Option<&AgentTarget>) -> KeyCheck {
            assert!(
                target.is_some(),
                "every key of the index has its agent target"
            );
            let image = key.reference.to_string();
            self.made
                .lock()
                .unwrap()
                .push((image.clone(), self.start.elapsed()));
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.latency).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let answer = self.answers.lock().unwrap().get(&image).cloned();
            answer.unwrap_or_else(|| KeyCheck {
                outcome: CheckOutcome::new(CheckStatus::Available, ""),
                nodes: BTreeMap::new(),
            })
        }

        fn retain_registries(&self, registries: &BTreeSet<&str>) {
            let registries = registries.iter().map(|r| r.to_string()).collect();
            self.registries.lock().unwrap().push(registries);
        }

        fn node_agents(&self) -> Option<&dyn NodeAgents> {
            self.agents.as_ref().map(|a| a as &dyn NodeAgents)
        }
    }

    /// Node agents coming and going as a test says.
    struct FakeAgents {
        changes: watch::Sender<u64>,
        groups: Mutex<BTreeMap<String, String>>,
        holders: Mutex<HashMap<String, BTreeSet<String>>>,
    }

    impl FakeAgents {
        fn join(&self, node: &str, group: &str) {
            self.groups
                .lock()
                .unwrap()
                .insert(node.to_string(), group.to_string());
            self.changes.send_modify(|n| *n += 1);
        }

        fn leave(&self, node: &str) {
            self.groups.lock().unwrap().remove(node);
            self.changes.send_modify(|n| *n += 1);
        }

        fn hold(&self, image: &str, nodes: &[&str]) {
            self.holders.lock().unwrap().insert(
                image.to_string(),
                nodes.iter().map(|n| n.to_string()).collect(),
            );
            self.changes.send_modify(|n| *n += 1);
        }
    }

    impl NodeAgents for FakeAgents {
        fn subscribe(&self) -> watch::Receiver<u64> {
            self.changes.subscribe()
        }

        fn groups(&self) -> BTreeMap<String, String> {
            self.groups.lock().unwrap().clone()
        }

        fn holders_of(&self, images: &HashSet<String>) -> HashMap<String, BTreeSet<Arc<str>>> {
            let holders = self.holders.lock().unwrap();
            holders
                .iter()
                .filter(|(image, _)| images.contains(*image))
                .map(|(image, nodes)| {
                    let nodes = nodes.iter().map(|node| Arc::from(node.as_str())).collect();
                    (image.clone(), nodes)
                })
                .collect()
        }
    }

    /// Where outcomes go: the latest outcome per container, the passes, the node views.
    #[derive(Default)]
    struct FakeSink {
        outcomes: Mutex<BTreeMap<ContainerRef, Arc<CheckOutcome>>>,
        passes: AtomicUsize,
        agents_connected: Mutex<Option<usize>>,
        image_nodes: Mutex<BTreeMap<String, ImageNodes>>,
        /// Every image whose node view was set, in order.
        image_nodes_set: Mutex<Vec<String>>,
    }

    impl FakeSink {
        /// The status recorded for workload `name`'s container, if any.
        fn status(&self, name: &str) -> Option<CheckStatus> {
            let outcomes = self.outcomes.lock().unwrap();
            outcomes
                .iter()
                .find(|(c, _)| &*c.name == name)
                .map(|(_, o)| o.status)
        }

        fn passes(&self) -> usize {
            self.passes.load(Ordering::SeqCst)
        }
    }

    impl OutcomeSink for FakeSink {
        fn record(
            &self,
            _index: &ImageIndex,
            containers: &[ContainerRef],
            outcome: &Arc<CheckOutcome>,
        ) {
            let mut outcomes = self.outcomes.lock().unwrap();
            for container in containers {
                outcomes.insert(container.clone(), outcome.clone());
            }
        }

        fn retain(&self, current: &HashSet<&ContainerRef>) {
            self.outcomes
                .lock()
                .unwrap()
                .retain(|c, _| current.contains(c));
        }

        fn counts(&self) -> (usize, usize) {
            let outcomes = self.outcomes.lock().unwrap();
            let unavailable = outcomes.values().filter(|o| !o.is_available()).count();
            (outcomes.len(), unavailable)
        }

        fn pass_completed(&self) {
            self.passes.fetch_add(1, Ordering::SeqCst);
        }

        fn agents_connected(&self, count: usize) {
            *self.agents_connected.lock().unwrap() = Some(count);
        }

        fn set_image_nodes(&self, views: Vec<(String, ImageNodes)>) {
            let set = views.iter().map(|(image, _)| image.clone());
            self.image_nodes_set.lock().unwrap().extend(set);
            self.image_nodes.lock().unwrap().extend(views);
        }

        fn retain_image_nodes(&self, keep: &dyn Fn(&str) -> bool) {
            self.image_nodes
                .lock()
                .unwrap()
                .retain(|image, _| keep(image));
        }
    }

    /// The index of Deployments `ns/<name>`, each with one container `app` using `image`.
    fn index(workloads: &[(&str, &str)]) -> Arc<ImageIndex> {
        Arc::new(ImageIndex::of_deployments(workloads))
    }

    /// A scheduler running over `workloads` with `runner`, rechecking every [`INTERVAL`].
    struct Running {
        runner: Arc<FakeRunner>,
        sink: Arc<FakeSink>,
        indexes: watch::Sender<Option<Arc<ImageIndex>>>,
        status: watch::Receiver<SchedulerStatus>,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(runner: FakeRunner, workloads: &[(&str, &str)]) -> Running {
        let runner = Arc::new(runner);
        let sink = Arc::new(FakeSink::default());
        let (indexes, indexes_rx) = watch::channel(Some(index(workloads)));
        let (status_tx, status) = watch::channel(SchedulerStatus::default());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(
            Scheduler::new(runner.clone(), sink.clone(), INTERVAL)
                .run(indexes_rx, status_tx, stop_rx),
        );
        Running {
            runner,
            sink,
            indexes,
            status,
            stop,
            task,
        }
    }

    impl Running {
        /// Lets the schedule run until `secs` seconds after the start.
        async fn until(&self, secs: f64) {
            tokio::time::sleep_until(self.runner.start + Duration::from_secs_f64(secs)).await;
        }

        fn set_index(&self, workloads: &[(&str, &str)]) {
            self.indexes.send_replace(Some(index(workloads)));
        }

        fn status(&self) -> SchedulerStatus {
            self.status.borrow().clone()
        }

        /// Stops the scheduler, which must then end.
        async fn stop(self) {
            self.stop.send_replace(true);
            tokio::time::timeout(Duration::from_secs(1), self.task)
                .await
                .expect("the scheduler ends when told to stop")
                .unwrap();
        }
    }

    fn node(status: CheckStatus, present: bool) -> NodeOutcome {
        NodeOutcome {
            status,
            reason: format!("node says {status:?}"),
            credential_source: "runtime".into(),
            image_present: present,
            digest: None,
            held_digest: None,
            tag_moved: None,
            without_workload_credentials: false,
        }
    }

    /// README: every reference is re-checked at least once per `--check-interval`;
    /// failures are retried sooner, after 10 s doubling up to the interval. A success
    /// ends the backoff: the next failure is retried after 10 s again.
    #[tokio::test(start_paused = true)]
    async fn failures_back_off_from_ten_seconds_doubling_up_to_the_interval() {
        let running = start(
            FakeRunner::new(4),
            &[("ok", "reg.io/ok:1"), ("bad", "reg.io/bad:1")],
        );
        running.runner.answer("reg.io/bad:1", CheckStatus::Absent);
        running.until(700.0).await;
        // 10, 20, 40, 80, 160, then 320 capped at 300.
        assert_eq!(
            running.runner.made("reg.io/bad:1"),
            [0.0, 10.0, 30.0, 70.0, 150.0, 310.0, 610.0]
        );
        assert_eq!(running.runner.made("reg.io/ok:1"), [0.0, 300.0, 600.0]);
        assert_eq!(running.sink.status("bad"), Some(CheckStatus::Absent));
        assert_eq!(running.sink.status("ok"), Some(CheckStatus::Available));

        // The image comes back: found at the next retry, then checked once per interval.
        running
            .runner
            .answer("reg.io/bad:1", CheckStatus::Available);
        running.until(1000.0).await;
        assert_eq!(running.sink.status("bad"), Some(CheckStatus::Available));
        // It goes again: the backoff starts over at 10 s.
        running.runner.answer("reg.io/bad:1", CheckStatus::Absent);
        running.until(1250.0).await;
        assert_eq!(
            running.runner.made("reg.io/bad:1")[7..],
            [910.0, 1210.0, 1220.0, 1240.0]
        );
        assert_eq!(running.sink.status("bad"), Some(CheckStatus::Absent));
        running.stop().await;
    }

    /// A pass closes when every reference has been checked once since the last one
    /// closed (the completed-rechecks counter): retries of a failing reference do not
    /// close it early, a reference that vanishes leaves it, and a new one joins it.
    #[tokio::test(start_paused = true)]
    async fn a_pass_closes_once_every_reference_is_checked() {
        let running = start(
            FakeRunner::new(4),
            &[("ok", "reg.io/ok:1"), ("bad", "reg.io/bad:1")],
        );
        running.runner.answer("reg.io/bad:1", CheckStatus::Absent);
        running.until(1.0).await;
        assert_eq!(running.sink.passes(), 1, "both checked at once");
        assert_eq!(
            running.status(),
            SchedulerStatus {
                passes: 1,
                distinct_checks: 2,
                containers: 2,
                unavailable: 1,
            }
        );
        // `bad` is retried at 10, 30, 70, 150 s; `ok` is next due at 300 s.
        running.until(299.0).await;
        assert_eq!(running.runner.made("reg.io/bad:1").len(), 5);
        assert_eq!(running.sink.passes(), 1, "retries alone close no pass");
        running.until(301.0).await;
        assert_eq!(running.sink.passes(), 2);
        assert_eq!(running.status().passes, 2);

        // A new reference joins the open pass: it is checked at once, and the pass
        // waits for `ok` (due at 600 s) all the same.
        running.set_index(&[
            ("ok", "reg.io/ok:1"),
            ("bad", "reg.io/bad:1"),
            ("new", "reg.io/new:1"),
        ]);
        running.until(302.0).await;
        assert_eq!(running.runner.made("reg.io/new:1"), [301.0]);
        assert_eq!(running.sink.passes(), 2);
        assert_eq!(running.status().distinct_checks, 3);
        // `ok` vanishes before its recheck: what is left has been checked, so the
        // pass closes now rather than waiting for it.
        running.until(400.0).await;
        assert_eq!(running.sink.passes(), 2);
        running.set_index(&[("bad", "reg.io/bad:1"), ("new", "reg.io/new:1")]);
        running.until(401.0).await;
        assert_eq!(running.sink.passes(), 3);
        assert_eq!(running.status().passes, 3);
        assert_eq!(running.status().distinct_checks, 2);
        running.stop().await;
    }

    /// With nothing to check, one (empty) pass closes, for readiness, and no more until
    /// the index has something in it.
    #[tokio::test(start_paused = true)]
    async fn an_empty_index_closes_one_pass_and_waits() {
        let running = start(FakeRunner::new(4), &[]);
        running.until(3600.0).await;
        assert_eq!(running.sink.passes(), 1);
        assert_eq!(running.runner.total(), 0);
        running.set_index(&[("app", "reg.io/app:1")]);
        running.until(3601.0).await;
        assert_eq!(running.runner.made("reg.io/app:1"), [3600.0]);
        assert_eq!(running.sink.passes(), 2);
        running.stop().await;
    }

    /// README: a new or changed reference is checked within moments, not at the next
    /// interval; known references keep their schedule, and new containers of a known
    /// reference get its last outcome at once; a deleted workload's series disappear at
    /// once, and the checker forgets registries nothing uses any more.
    #[tokio::test(start_paused = true)]
    async fn index_changes_take_effect_at_once() {
        let running = start(FakeRunner::new(4), &[("a", "reg-a.io/app:1")]);
        running
            .runner
            .answer("reg-a.io/app:1", CheckStatus::AuthenticationFailure);
        running.until(5.0).await;
        running.set_index(&[
            ("a", "reg-a.io/app:1"),
            ("a2", "reg-a.io/app:1"),
            ("b", "reg-b.io/app:1"),
        ]);
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        // Before any check: the known reference's outcome for its new container.
        assert_eq!(
            running.sink.status("a2"),
            Some(CheckStatus::AuthenticationFailure)
        );
        running.until(6.0).await;
        assert_eq!(running.runner.made("reg-b.io/app:1"), [5.0]);
        assert_eq!(
            running.runner.made("reg-a.io/app:1"),
            [0.0],
            "not before 10 s"
        );
        assert_eq!(running.sink.status("b"), Some(CheckStatus::Available));

        running.set_index(&[("b", "reg-b.io/app:1")]);
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert_eq!(running.sink.status("a"), None, "series gone at once");
        assert_eq!(running.sink.status("a2"), None);
        assert_eq!(running.sink.status("b"), Some(CheckStatus::Available));
        assert_eq!(
            running.runner.registries.lock().unwrap().last(),
            Some(&BTreeSet::from(["reg-b.io".to_string()]))
        );
        running.until(1000.0).await;
        assert_eq!(running.runner.made("reg-a.io/app:1"), [0.0], "never again");
        running.stop().await;
    }

    /// A check in flight is not started again when the index changes, and its answer is
    /// dropped when its reference went away meanwhile: the series stay gone, and the
    /// pass closes without it.
    #[tokio::test(start_paused = true)]
    async fn a_check_in_flight_is_not_repeated_nor_recorded_once_its_reference_is_gone() {
        let mut runner = FakeRunner::new(4);
        runner.latency = Duration::from_secs(20);
        let running = start(runner, &[("a", "reg.io/a:1")]);
        running.until(5.0).await;
        running.set_index(&[("a", "reg.io/a:1"), ("b", "reg.io/b:1")]);
        running.until(10.0).await;
        assert_eq!(running.runner.made("reg.io/a:1"), [0.0], "still in flight");
        assert_eq!(running.runner.made("reg.io/b:1"), [5.0]);
        running.set_index(&[("b", "reg.io/b:1")]);
        running.until(21.0).await;
        assert_eq!(running.sink.status("a"), None);
        assert_eq!(running.sink.passes(), 0, "b is still being checked");
        running.until(26.0).await;
        assert_eq!(running.sink.passes(), 1);
        assert_eq!(running.sink.status("b"), Some(CheckStatus::Available));
        running.until(1000.0).await;
        assert_eq!(running.runner.made("reg.io/a:1"), [0.0]);
        running.stop().await;
    }

    /// What needs no registry to judge (an image the kubelet cannot parse) is recorded
    /// with the index, never checked.
    #[tokio::test(start_paused = true)]
    async fn settled_references_are_recorded_without_a_check() {
        let running = start(
            FakeRunner::new(4),
            &[("bad", "reg.io/Upper/Case:1"), ("ok", "reg.io/ok:1")],
        );
        running.until(1.0).await;
        assert_eq!(
            running.sink.status("bad"),
            Some(CheckStatus::BadImageFormat)
        );
        assert_eq!(running.runner.made("reg.io/ok:1"), [0.0]);
        assert_eq!(running.runner.total(), 1);
        assert_eq!(
            running.status(),
            SchedulerStatus {
                passes: 1,
                distinct_checks: 1,
                containers: 2,
                unavailable: 1,
            }
        );
        running.stop().await;
    }

    /// No more checks run at once than the runner's parallelism; the rest wait their
    /// turn and still run as soon as a slot frees.
    #[tokio::test(start_paused = true)]
    async fn checks_in_flight_never_exceed_the_parallelism() {
        let mut runner = FakeRunner::new(2);
        runner.latency = Duration::from_secs(3);
        let images: Vec<(String, String)> = (0..5)
            .map(|i| (format!("w{i}"), format!("reg.io/app{i}:1")))
            .collect();
        let workloads: Vec<(&str, &str)> = images
            .iter()
            .map(|(n, i)| (n.as_str(), i.as_str()))
            .collect();
        let running = start(runner, &workloads);
        running.until(20.0).await;
        let mut starts: Vec<f64> = running
            .runner
            .made
            .lock()
            .unwrap()
            .iter()
            .map(|(_, at)| at.as_secs_f64())
            .collect();
        starts.sort_by(f64::total_cmp);
        assert_eq!(starts, [0.0, 0.0, 3.0, 3.0, 6.0]);
        assert_eq!(running.runner.max_in_flight.load(Ordering::SeqCst), 2);
        assert_eq!(running.sink.passes(), 1);
        running.stop().await;
    }

    /// When a node group gains its first agent, what was checked centrally is checked
    /// again through it at once (after the debounce), once: more agents of a covered
    /// group cost nothing, joins within the debounce are one recheck, and a second
    /// group rechecks what no node of it answered.
    #[tokio::test(start_paused = true)]
    async fn agent_joins_recheck_once_per_new_node_group() {
        let running = start(
            FakeRunner::new(4).with_agents(),
            &[("a", "reg.io/a:1"), ("b", "reg.io/b:1")],
        );
        let runner = &running.runner;
        runner.answer("reg.io/a:1", CheckStatus::RegistryUnavailable);
        runner.answer("reg.io/b:1", CheckStatus::RegistryUnavailable);
        running.until(50.0).await;
        // Retried centrally at 10 and 30 s.
        assert_eq!(runner.made("reg.io/a:1"), [0.0, 10.0, 30.0]);
        assert_eq!(*running.sink.agents_connected.lock().unwrap(), Some(0));

        // Two groups' first agents within the debounce: one recheck, a second later.
        let answered_by = |nodes: &[&str]| {
            nodes
                .iter()
                .map(|n| (n.to_string(), node(CheckStatus::Available, true)))
                .collect::<BTreeMap<_, _>>()
        };
        runner.fleet().join("node-1", "z1");
        running.until(50.5).await;
        runner.fleet().join("node-2", "z2");
        runner.answer_from_nodes(
            "reg.io/a:1",
            CheckStatus::Available,
            answered_by(&["node-1", "node-2"]),
        );
        runner.answer_from_nodes(
            "reg.io/b:1",
            CheckStatus::Available,
            answered_by(&["node-1", "node-2"]),
        );
        running.until(52.0).await;
        assert_eq!(runner.made("reg.io/a:1"), [0.0, 10.0, 30.0, 51.0]);
        assert_eq!(runner.made("reg.io/b:1"), [0.0, 10.0, 30.0, 51.0]);
        assert_eq!(running.sink.status("a"), Some(CheckStatus::Available));
        assert_eq!(*running.sink.agents_connected.lock().unwrap(), Some(2));

        // More agents of covered groups: no recheck.
        for (i, group) in ["z1", "z2", "z1"].iter().enumerate() {
            runner.fleet().join(&format!("node-{}", i + 3), group);
            running.until(60.0 + 10.0 * i as f64).await;
        }
        running.until(100.0).await;
        assert_eq!(runner.made("reg.io/a:1").len(), 4);
        assert_eq!(*running.sink.agents_connected.lock().unwrap(), Some(5));

        // A third group: both are rechecked through it, once.
        runner.fleet().join("node-6", "z3");
        running.until(102.0).await;
        assert_eq!(runner.made("reg.io/a:1"), [0.0, 10.0, 30.0, 51.0, 101.0]);
        assert_eq!(runner.made("reg.io/b:1"), [0.0, 10.0, 30.0, 51.0, 101.0]);
        // Then the interval again, counted from that check.
        running.until(400.0).await;
        assert_eq!(runner.made("reg.io/a:1"), [0.0, 10.0, 30.0, 51.0, 101.0]);
        running.until(402.0).await;
        assert_eq!(runner.made("reg.io/a:1").len(), 6);
        running.stop().await;
    }

    /// A check that a new group's agent already answered (it ran between the join and
    /// the end of the debounce) is not made again for that group; the others are.
    #[tokio::test(start_paused = true)]
    async fn a_check_already_answered_by_the_new_group_is_not_made_again() {
        let running = start(
            FakeRunner::new(4).with_agents(),
            &[("a", "reg.io/a:1"), ("b", "reg.io/b:1")],
        );
        let runner = &running.runner;
        runner.answer("reg.io/a:1", CheckStatus::RegistryUnavailable);
        running.until(69.5).await;
        runner.fleet().join("node-1", "z1");
        runner.answer_from_nodes(
            "reg.io/a:1",
            CheckStatus::Available,
            BTreeMap::from([("node-1".to_string(), node(CheckStatus::Available, true))]),
        );
        running.until(72.0).await;
        // `a`'s retry at 70 s went through node-1; `b` was checked centrally only.
        assert_eq!(runner.made("reg.io/a:1"), [0.0, 10.0, 30.0, 70.0]);
        assert_eq!(runner.made("reg.io/b:1"), [0.0, 70.5]);
        running.until(372.0).await;
        assert_eq!(runner.made("reg.io/a:1"), [0.0, 10.0, 30.0, 70.0, 370.0]);
        running.stop().await;
    }

    /// The node view of an image: per node its conclusive answer (a node that checked
    /// without the workload's credentials and failed says nothing about what its kubelet
    /// would see), nodes per status, and the nodes holding it, from the answers and the
    /// agents' image lists; gone with the image.
    #[tokio::test(start_paused = true)]
    async fn node_answers_make_the_image_node_view() {
        let running = start(FakeRunner::new(4).with_agents(), &[("app", "reg.io/app:1")]);
        let runner = &running.runner;
        for (name, group) in [("n1", "z1"), ("n2", "z2"), ("n3", "z3")] {
            runner.fleet().join(name, group);
        }
        let mut without_credentials = node(CheckStatus::AuthenticationFailure, false);
        without_credentials.without_workload_credentials = true;
        runner.answer_from_nodes(
            "reg.io/app:1",
            CheckStatus::Absent,
            BTreeMap::from([
                ("n1".to_string(), node(CheckStatus::Available, true)),
                ("n2".to_string(), node(CheckStatus::Absent, false)),
                ("n3".to_string(), without_credentials),
            ]),
        );
        // n4 holds the image by its image list alone.
        runner.fleet().hold("reg.io/app:1", &["n4"]);
        running.until(2.0).await;
        let views = running.sink.image_nodes.lock().unwrap().clone();
        assert_eq!(
            views.get("reg.io/app:1"),
            Some(&ImageNodes {
                statuses: BTreeMap::from([(CheckStatus::Available, 1), (CheckStatus::Absent, 1)]),
                cached: 2,
                answers: BTreeMap::from([
                    (
                        "n1".to_string(),
                        (CheckStatus::Available, "node says Available".to_string())
                    ),
                    (
                        "n2".to_string(),
                        (CheckStatus::Absent, "node says Absent".to_string())
                    ),
                ]),
            }),
            "{views:?}"
        );
        running.set_index(&[]);
        running.until(3.0).await;
        assert!(running.sink.image_nodes.lock().unwrap().is_empty());
        running.stop().await;
    }

    /// Agent changes refresh the node view of the images they concern, and only
    /// those: an image list naming an image, a node whose answer counted as cached
    /// going away. The views converge to what a full refresh makes.
    #[tokio::test(start_paused = true)]
    async fn agent_changes_refresh_only_the_views_they_concern() {
        let running = start(
            FakeRunner::new(4).with_agents(),
            &[
                ("a", "reg.io/a:1"),
                ("b", "reg.io/b:1"),
                ("c", "reg.io/c:1"),
            ],
        );
        let runner = &running.runner;
        runner.fleet().join("n1", "z1");
        runner.fleet().join("n2", "z1");
        runner.answer_from_nodes(
            "reg.io/b:1",
            CheckStatus::Available,
            BTreeMap::from([("n1".to_string(), node(CheckStatus::Available, true))]),
        );
        running.until(2.0).await;
        let views = running.sink.image_nodes.lock().unwrap().clone();
        assert_eq!(views.len(), 3, "{views:?}");
        assert_eq!(views["reg.io/b:1"].cached, 1, "{views:?}");
        running.sink.image_nodes_set.lock().unwrap().clear();

        // An image list: only a's view changes.
        runner.fleet().hold("reg.io/a:1", &["n4", "n5"]);
        running.until(4.0).await;
        assert_eq!(
            *running.sink.image_nodes_set.lock().unwrap(),
            ["reg.io/a:1"]
        );
        assert_eq!(
            running.sink.image_nodes.lock().unwrap()["reg.io/a:1"].cached,
            2
        );
        running.sink.image_nodes_set.lock().unwrap().clear();

        // n1 goes: b no longer counts it as cached; a and c stay as they were.
        runner.fleet().leave("n1");
        running.until(6.0).await;
        assert_eq!(
            *running.sink.image_nodes_set.lock().unwrap(),
            ["reg.io/b:1"]
        );
        let views = running.sink.image_nodes.lock().unwrap().clone();
        assert_eq!(views["reg.io/b:1"].cached, 0, "{views:?}");
        assert_eq!(views["reg.io/a:1"].cached, 2, "{views:?}");
        assert_eq!(views["reg.io/c:1"].cached, 0, "{views:?}");
        running.sink.image_nodes_set.lock().unwrap().clear();

        // A change that concerns no image (a node of a covered group, holding
        // nothing, that answered nothing) refreshes no view.
        runner.fleet().join("n9", "z1");
        running.until(8.0).await;
        assert!(running.sink.image_nodes_set.lock().unwrap().is_empty());
        running.stop().await;
    }

    /// The scheduler also ends when the index sender goes away.
    #[tokio::test(start_paused = true)]
    async fn ends_when_the_indexes_end() {
        let Running { indexes, task, .. } = start(FakeRunner::new(1), &[("a", "reg.io/a:1")]);
        drop(indexes);
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the scheduler ends with its index sender")
            .unwrap();
    }
}
