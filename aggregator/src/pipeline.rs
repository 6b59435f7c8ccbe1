//! The assembly behind the scheduler: the checker, the agents, the store and the
//! metrics wired together as the scheduler's [`CheckRunner`] (where checks are made:
//! through the agents when any answers, else centrally) and [`OutcomeSink`] (where
//! outcomes go: the store and the gauges). Not a stage of its own: it is where the
//! later stages meet, so the scheduler need not know them.
//!
//! [`Pipeline::run_cycle`] checks a whole index once (the `check` command).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use pullwatch::CheckOutcome;
use pullwatch::locks::lock;
use tokio::sync::watch;
use tracing::debug;

use crate::agents::AgentHub;
use crate::answers::{ImageNodes, KeyCheck};
use crate::checker::CentralChecker;
use crate::index::{AgentTarget, CheckKey, ContainerRef, ImageIndex};
use crate::inventory::Inventory;
use crate::metrics::{Metrics, MetricsError, ScrapePosition};
use crate::scheduler::{CheckRunner, NodeAgents, OutcomeSink};
use crate::store::ResultStore;

/// The checker with the state its results feed.
pub struct Pipeline {
    checker: CentralChecker,
    store: Mutex<ResultStore>,
    pub(crate) metrics: Metrics,
    /// Checks started at once; the checker's own limits still apply beneath this.
    parallelism: usize,
    /// The agent hub, when the agent server runs.
    hub: Option<AgentHub>,
    /// The live inventory (cluster mode): what running pods run, for moved tags.
    inventory: Option<Arc<Mutex<Inventory>>>,
    /// When the last full pass over every reference finished.
    last_full_pass: Mutex<Option<SystemTime>>,
}

/// How far a pass over an index got: container references with a result, and
/// distinct checks started and not finished.
#[derive(Debug, Default)]
pub(crate) struct CycleProgress {
    done: AtomicUsize,
    in_flight: AtomicUsize,
}

impl CycleProgress {
    /// Container references with a result.
    pub(crate) fn done(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// Distinct checks started and not finished.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// What one pass over an index found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CycleSummary {
    pub(crate) distinct_checks: usize,
    pub(crate) containers: usize,
    pub(crate) unavailable: usize,
    pub(crate) duration: Duration,
}

impl Pipeline {
    pub fn new(checker: CentralChecker, metrics: Metrics, parallelism: usize) -> Self {
        Pipeline {
            checker,
            store: Mutex::new(ResultStore::default()),
            metrics,
            parallelism: parallelism.max(1),
            hub: None,
            inventory: None,
            last_full_pass: Mutex::new(None),
        }
    }

    /// One full pass over every reference finished.
    pub(crate) fn pass_completed(&self) {
        self.metrics.recheck_completed();
        *lock(&self.last_full_pass) = Some(SystemTime::now());
    }

    /// The pull quota of each registry that announced one, as the aggregator's checks
    /// and each node's agent last saw it.
    pub(crate) fn registry_quotas(&self) -> Vec<crate::results::RegistryQuotaView> {
        crate::results::registry_quotas(
            self.metrics.checker.quotas.snapshot(),
            self.hub
                .as_ref()
                .map(|hub| hub.node_quotas().by_registry())
                .unwrap_or_default(),
        )
    }

    /// Runs `read` with what running pods run (cluster mode; None otherwise), holding
    /// the inventory only for that long.
    pub(crate) fn with_running<R>(
        &self,
        read: impl FnOnce(Option<&crate::inventory::RunningDigests>) -> R,
    ) -> R {
        match &self.inventory {
            Some(inventory) => read(Some(&lock(inventory).running)),
            None => read(None),
        }
    }

    /// When the last full pass finished, if one has.
    pub(crate) fn last_full_pass(&self) -> Option<SystemTime> {
        *lock(&self.last_full_pass)
    }

    /// Reads what running pods run from `inventory` (cluster mode), for the
    /// moved-tag series.
    pub(crate) fn with_inventory(mut self, inventory: Arc<Mutex<Inventory>>) -> Self {
        self.inventory = Some(inventory);
        self
    }

    /// Routes checks through `hub`'s agents whenever one is connected.
    pub(crate) fn with_agents(mut self, hub: AgentHub) -> Self {
        self.hub = Some(hub);
        self
    }

    /// Checks everything in `index`, then drops results of references no longer in it.
    pub async fn run_cycle(&self, index: &ImageIndex) -> CycleSummary {
        self.run_cycle_with(index, &CycleProgress::default()).await
    }

    /// [`Pipeline::run_cycle`], counting in `progress` how far it got (the `check`
    /// command reports it; dropped midway, what was recorded stays in the store).
    pub(crate) async fn run_cycle_with(
        &self,
        index: &ImageIndex,
        progress: &CycleProgress,
    ) -> CycleSummary {
        let started = Instant::now();
        self.walk_as(index);
        for (container, outcome) in &index.settled {
            self.record(index, std::slice::from_ref(container), outcome);
            progress.done.fetch_add(1, Ordering::Relaxed);
        }
        let checks = futures::stream::iter(index.checks.iter())
            .map(|(key, containers)| async move {
                progress.in_flight.fetch_add(1, Ordering::Relaxed);
                let mut outcome = self.checker.check(key).await;
                outcome.checked_at = Some(SystemTime::now());
                self.record(index, containers, &Arc::new(outcome));
                progress.done.fetch_add(containers.len(), Ordering::Relaxed);
                progress.in_flight.fetch_sub(1, Ordering::Relaxed);
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

    /// Checks one distinct reference through the agents (one node per node group)
    /// when any is connected and answers; centrally otherwise.
    pub(crate) async fn check_routed(
        &self,
        key: &CheckKey,
        target: Option<&AgentTarget>,
    ) -> KeyCheck {
        if let (Some(hub), Some(target)) = (&self.hub, target)
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

    /// Records `outcome` for `containers` of `index`, each as it stands for its
    /// workload's platforms.
    pub(crate) fn record(
        &self,
        index: &ImageIndex,
        containers: &[ContainerRef],
        outcome: &Arc<CheckOutcome>,
    ) {
        let mut store = lock(&self.store);
        for container in containers {
            match index.outcome_for(container, outcome) {
                Some(own) => store.set(container.clone(), own),
                None => store.set(container.clone(), outcome.clone()),
            }
        }
    }

    /// Every container reference with its latest outcome.
    pub fn results(&self) -> Vec<(ContainerRef, CheckOutcome)> {
        lock(&self.store)
            .iter()
            .map(|(c, o)| (c.clone(), o.clone()))
            .collect()
    }

    #[cfg(test)]
    /// The whole Prometheus text exposition.
    pub(crate) fn render_metrics(&self) -> Result<String, MetricsError> {
        let store = lock(&self.store);
        match &self.inventory {
            Some(inventory) => self
                .metrics
                .render_with(&store, Some(&lock(inventory).running)),
            None => self.metrics.render(&store),
        }
    }

    /// The store as it is now, for a scrape: every chunk of one exposition is
    /// rendered from it, so a container is never 1 in two families or missing from one.
    pub fn store_snapshot(&self) -> ResultStore {
        lock(&self.store).snapshot()
    }

    /// The next chunk of the exposition from `store` (a [`Pipeline::store_snapshot`]),
    /// moving `at` past it, so a scrape is streamed without holding the store or
    /// building it in one piece. None: the exposition is done.
    pub fn render_metrics_chunk(
        &self,
        store: &ResultStore,
        at: &mut ScrapePosition,
    ) -> Option<Result<String, MetricsError>> {
        if at.is_done(&self.metrics) {
            return None;
        }
        let mut out = String::new();
        // The live inventory only for the part that reads it.
        let inventory = match &self.inventory {
            Some(inventory) if at.part + 1 == self.metrics.part_count() => Some(lock(inventory)),
            _ => None,
        };
        let rendered =
            self.metrics
                .render_chunk(at, store, inventory.as_ref().map(|i| &i.running), &mut out);
        Some(rendered.map(|()| out))
    }
}

impl CheckRunner for Pipeline {
    fn parallelism(&self) -> usize {
        self.parallelism
    }

    fn check(
        &self,
        key: &CheckKey,
        target: Option<&AgentTarget>,
    ) -> impl Future<Output = KeyCheck> + Send {
        self.check_routed(key, target)
    }

    fn retain_registries(&self, registries: &BTreeSet<&str>) {
        self.checker.retain_registries(registries);
    }

    fn walk_as(&self, index: &ImageIndex) {
        self.checker.set_platforms(&index.walk_platforms);
        self.checker.set_schema1_pulls(&index.walk_schema1);
    }

    fn node_agents(&self) -> Option<&dyn NodeAgents> {
        self.hub.as_ref().map(|hub| hub as &dyn NodeAgents)
    }
}

impl OutcomeSink for Pipeline {
    fn record(&self, index: &ImageIndex, containers: &[ContainerRef], outcome: &Arc<CheckOutcome>) {
        Pipeline::record(self, index, containers, outcome);
    }

    fn retain(&self, current: &HashSet<&ContainerRef>) {
        lock(&self.store).retain(current);
    }

    fn counts(&self) -> (usize, usize) {
        let store = lock(&self.store);
        let unavailable = store.iter().filter(|(_, o)| !o.is_available()).count();
        (store.len(), unavailable)
    }

    fn pass_completed(&self) {
        Pipeline::pass_completed(self);
    }

    fn agents_connected(&self, count: usize) {
        self.metrics.agents_connected.set(count as i64);
    }

    fn set_image_nodes(&self, views: Vec<(String, ImageNodes)>) {
        let mut store = lock(&self.store);
        for (image, nodes) in views {
            store.set_image_nodes(&image, nodes);
        }
    }

    fn retain_image_nodes(&self, keep: &dyn Fn(&str) -> bool) {
        lock(&self.store).retain_image_nodes(keep);
    }
}

impl NodeAgents for AgentHub {
    fn subscribe(&self) -> watch::Receiver<u64> {
        AgentHub::subscribe(self)
    }

    fn groups(&self) -> BTreeMap<String, String> {
        self.node_groups()
    }

    fn holders_of(&self, images: &HashSet<String>) -> HashMap<String, BTreeSet<Arc<str>>> {
        AgentHub::holders_of(self, images)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::{AgentInfo, HubConfig, SessionId};
    use crate::checker::CheckerConfig;
    use crate::scheduler::{AGENT_CHANGE_DEBOUNCE, Scheduler, SchedulerStatus};
    use pullwatch::CheckStatus;
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
        let index = ImageIndex::of_deployments(workloads);
        let metrics = Metrics::new(false).unwrap();
        let checker = CentralChecker::new(
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
            Scheduler::new(
                pipeline.clone(),
                pipeline.clone(),
                Duration::from_secs(3600),
            )
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
