//! The result store: the latest outcome of every container reference, the state the
//! metrics and one-shot reports are rendered from.

use std::collections::{BTreeMap, BTreeSet};

use pullwatch::CheckOutcome;

use crate::index::ContainerRef;

#[derive(Debug, Default)]
pub struct ResultStore {
    outcomes: BTreeMap<ContainerRef, CheckOutcome>,
}

impl ResultStore {
    pub fn set(&mut self, container: ContainerRef, outcome: CheckOutcome) {
        self.outcomes.insert(container, outcome);
    }

    /// Forgets every reference not in `current` (the workload or container went away).
    pub fn retain(&mut self, current: &BTreeSet<ContainerRef>) {
        self.outcomes
            .retain(|container, _| current.contains(container));
    }

    pub fn get(&self, container: &ContainerRef) -> Option<&CheckOutcome> {
        self.outcomes.get(container)
    }

    /// Every reference with its outcome, ordered by namespace, kind, name, container.
    pub fn iter(&self) -> impl Iterator<Item = (&ContainerRef, &CheckOutcome)> {
        self.outcomes.iter()
    }

    pub fn len(&self) -> usize {
        self.outcomes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.outcomes.is_empty()
    }
}
