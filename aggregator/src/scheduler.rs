//! The scheduler: the third stage. Runs the checks of an index (every distinct check
//! once, concurrently, under the checker's limits) and hands each outcome to the store
//! (which the metrics are rendered from) as soon as it arrives.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pullwatch::CheckOutcome;

use crate::checker::Checker;
use crate::checker::limits::lock;
use crate::index::{ContainerRef, ImageIndex};
use crate::metrics::{Metrics, MetricsError};
use crate::store::ResultStore;

/// The checker with the state its results feed.
pub struct Pipeline {
    checker: Checker,
    store: Mutex<ResultStore>,
    metrics: Metrics,
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

        let current: BTreeSet<ContainerRef> = index
            .checks
            .values()
            .flatten()
            .chain(index.settled.iter().map(|(c, _)| c))
            .cloned()
            .collect();
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

    fn record(&self, containers: &[ContainerRef], outcome: &CheckOutcome) {
        let mut store = lock(&self.store);
        for container in containers {
            store.set(container.clone(), outcome.clone());
        }
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
