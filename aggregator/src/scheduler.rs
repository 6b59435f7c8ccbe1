//! The scheduler: the third stage. Decides when each distinct check runs and hands
//! each outcome to the store (which the metrics are rendered from) as it arrives.
//!
//! [`Pipeline::run_cycle`] checks a whole index once (the `check` command).
//! [`Scheduler`] keeps a changing index checked (the `serve` command): a new
//! reference within moments of appearing, every reference at least once per
//! interval, failures again sooner with capped backoff, and a vanished reference's
//! series gone at once.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use pullwatch::CheckOutcome;
use tokio::sync::watch;

use crate::checker::Checker;
use crate::checker::limits::lock;
use crate::index::{CheckKey, ContainerRef, ImageIndex, IndexOptions};
use crate::inventory::SharedInventory;
use crate::metrics::{Metrics, MetricsError};
use crate::store::ResultStore;

/// The checker with the state its results feed.
pub struct Pipeline {
    checker: Checker,
    store: Mutex<ResultStore>,
    pub metrics: Metrics,
    /// Checks started at once; the checker's own limits still apply beneath this.
    parallelism: usize,
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
        }
    }

    /// Checks everything in `index`, then drops results of references no longer in it.
    pub async fn run_cycle(&self, index: &ImageIndex) -> CycleSummary {
        let started = Instant::now();
        for (container, outcome) in &index.settled {
            self.record(std::slice::from_ref(container), outcome);
        }
        let checks = futures::stream::iter(index.checks.iter())
            .map(|(key, containers)| async move {
                let outcome = self.checker.check(key).await;
                self.record(containers, &outcome);
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
        self.metrics.recheck_completed();
        CycleSummary {
            distinct_checks: index.checks.len(),
            containers: current.len(),
            unavailable,
            duration: started.elapsed(),
        }
    }

    /// Checks one distinct reference.
    pub async fn check(&self, key: &CheckKey) -> CheckOutcome {
        self.checker.check(key).await
    }

    /// Sets the outcome of `containers`.
    pub fn record(&self, containers: &[ContainerRef], outcome: &CheckOutcome) {
        let mut store = lock(&self.store);
        for container in containers {
            store.set(container.clone(), outcome.clone());
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
        self.metrics.render(&lock(&self.store))
    }

    /// How many parts [`Pipeline::render_metrics_part`] renders.
    pub fn metrics_part_count(&self) -> usize {
        self.metrics.part_count()
    }

    /// One part of the exposition, so a scrape can be streamed without holding the
    /// store for the whole response or building it in one piece.
    pub fn render_metrics_part(&self, part: usize) -> Result<String, MetricsError> {
        let mut out = String::new();
        self.metrics
            .render_part(part, &lock(&self.store), &mut out)?;
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
}

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
                    in_flight.push(async move {
                        let outcome = pipeline.check(&key).await;
                        (key, outcome)
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
                Some((key, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                    self.finish(key, outcome);
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
        for (container, outcome) in &index.settled {
            self.pipeline
                .record(std::slice::from_ref(container), outcome);
        }
        let now = Instant::now();
        for (key, containers) in &index.checks {
            match self.keys.get(key) {
                Some(state) => {
                    if let Some(outcome) = &state.outcome {
                        self.pipeline.record(containers, outcome);
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
        self.index = index;
        self.refresh_status();
    }

    fn finish(&mut self, key: CheckKey, outcome: CheckOutcome) {
        let Some(state) = self.keys.get_mut(&key) else {
            return; // The reference went away while it was being checked.
        };
        state.in_flight = false;
        if outcome.is_available() {
            state.failures = 0;
            state.next_due = Instant::now() + self.interval;
        } else {
            state.failures = state.failures.saturating_add(1);
            let backoff = RETRY_BASE.saturating_mul(1 << state.failures.saturating_sub(1).min(16));
            state.next_due = Instant::now() + backoff.min(self.interval);
        }
        if let Some(containers) = self.index.checks.get(&key) {
            self.pipeline.record(containers, &outcome);
        }
        state.outcome = Some(outcome);
        self.pass_remaining.remove(&key);
    }

    /// Closes the pass when every check of it has been made; true if it did.
    fn complete_pass_if_done(&mut self) -> bool {
        if !self.pass_open || !self.pass_remaining.is_empty() {
            return false;
        }
        self.pipeline.metrics.recheck_completed();
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

async fn sleep_until(when: Option<Instant>) {
    match when {
        Some(when) => tokio::time::sleep_until(when.into()).await,
        None => std::future::pending().await,
    }
}

/// Rebuilds the index whenever the inventory changes (after a short quiet period,
/// so a burst of watch events is one rebuild) and publishes it, but only once the
/// inventory has been fully synced: an index of half a cluster would drop series.
pub async fn build_indexes(
    shared: SharedInventory,
    options: IndexOptions,
    debounce: Duration,
    indexes: watch::Sender<Option<Arc<ImageIndex>>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shared.changed.notified() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        tokio::time::sleep(debounce).await;
        if !shared.synced() {
            continue;
        }
        let index = {
            let inventory = lock(&shared.inventory);
            ImageIndex::build(&inventory, &options)
        };
        if indexes.send(Some(Arc::new(index))).is_err() {
            return;
        }
    }
}
