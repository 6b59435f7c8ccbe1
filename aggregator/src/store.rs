//! The result store: the fifth stage. The latest outcome of every container reference,
//! the state the metrics and one-shot reports are rendered from.
//!
//! Copy-on-write: [`ResultStore::snapshot`] is two reference-count increments, so a
//! scrape renders every family from one version of the store while checks keep
//! recording; the first write after a snapshot copies the map once (per scrape, not
//! per write).

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pullwatch::CheckOutcome;

use crate::answers::ImageNodes;
use crate::index::ContainerRef;
use crate::inventory::RunningDigests;

/// Whether running pods of `container`'s workload run what its tag resolves to now
/// (`outcome`'s digest): Some(true) when some runs another digest, Some(false) when all
/// run it, None when unknown (no digest answered, no running pod reported one, or a
/// digest reference, which cannot move).
pub(crate) fn tag_moved(
    running: &RunningDigests,
    container: &ContainerRef,
    outcome: &CheckOutcome,
) -> Option<bool> {
    let now = outcome.digest.as_deref()?;
    if container.image.contains('@') {
        return None;
    }
    let digests = running.digests(
        &container.namespace,
        container.kind,
        &container.name,
        &container.container,
        &container.image,
    )?;
    Some(digests.keys().any(|running| &**running != now))
}

#[derive(Clone, Debug, Default)]
pub struct ResultStore {
    /// One outcome per container, shared by the containers of one check (and only
    /// copied where a workload's platforms make it differ).
    outcomes: Arc<BTreeMap<ContainerRef, Arc<CheckOutcome>>>,
    /// Image as written -> what the nodes say; only with agents.
    image_nodes: Arc<BTreeMap<String, ImageNodes>>,
    /// Changes when a reference comes or goes or its status changes: what the
    /// canonical families show (a recheck with the same status leaves it).
    statuses_version: u64,
    /// Changes when the node view of some image changes.
    nodes_version: u64,
}

/// The keys after `after` (None: every key), for a map's `range`: where a streamed
/// answer picks up.
fn after_key<K: ?Sized>(after: Option<&K>) -> (Bound<&K>, Bound<&K>) {
    let from = after.map_or(Bound::Unbounded, Bound::Excluded);
    (from, Bound::Unbounded)
}

/// A version number no store has had before (in this process), so no two stores'
/// versions are ever mistaken for one another.
fn next_version() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl ResultStore {
    /// This version of the store, unaffected by later writes.
    pub(crate) fn snapshot(&self) -> ResultStore {
        self.clone()
    }

    pub(crate) fn set(&mut self, container: ContainerRef, outcome: impl Into<Arc<CheckOutcome>>) {
        let outcome = outcome.into();
        let status = match self.outcomes.get(&container) {
            Some(existing) if *existing == outcome => return,
            Some(existing) => Some(existing.status),
            None => None,
        };
        if status != Some(outcome.status) {
            self.statuses_version = next_version();
        }
        Arc::make_mut(&mut self.outcomes).insert(container, outcome);
    }

    /// Forgets every reference not in `current` (the workload or container went away).
    pub(crate) fn retain(&mut self, current: &HashSet<&ContainerRef>) {
        if self.outcomes.keys().all(|c| current.contains(c)) {
            return;
        }
        self.statuses_version = next_version();
        Arc::make_mut(&mut self.outcomes).retain(|container, _| current.contains(container));
    }

    /// Every reference with its outcome, ordered by namespace, kind, name, container.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&ContainerRef, &CheckOutcome)> {
        self.outcomes
            .iter()
            .map(|(container, outcome)| (container, &**outcome))
    }

    /// Like [`ResultStore::iter`], with the shared outcomes themselves.
    pub(crate) fn iter_shared(&self) -> impl Iterator<Item = (&ContainerRef, &Arc<CheckOutcome>)> {
        self.outcomes.iter()
    }

    /// Whether `other` is this very version (a snapshot of it, no write between).
    pub(crate) fn same_version(&self, other: &ResultStore) -> bool {
        Arc::ptr_eq(&self.outcomes, &other.outcomes)
            && Arc::ptr_eq(&self.image_nodes, &other.image_nodes)
    }

    /// Which references there are and their statuses (all the canonical families
    /// show): equal versions show the same.
    pub(crate) fn statuses_version(&self) -> u64 {
        self.statuses_version
    }

    /// What the nodes say about every image: equal versions say the same.
    pub(crate) fn nodes_version(&self) -> u64 {
        self.nodes_version
    }

    /// What the nodes say about `image`, if any node has checked it.
    pub(crate) fn image_nodes_of(&self, image: &str) -> Option<&ImageNodes> {
        self.image_nodes.get(image)
    }

    /// Like [`ResultStore::iter`], from the reference after `after` (None: the first).
    pub(crate) fn iter_after(
        &self,
        after: Option<&ContainerRef>,
    ) -> impl Iterator<Item = (&ContainerRef, &CheckOutcome)> {
        self.outcomes
            .range::<ContainerRef, _>(after_key(after))
            .map(|(container, outcome)| (container, &**outcome))
    }

    pub(crate) fn len(&self) -> usize {
        self.outcomes.len()
    }

    /// Sets what the nodes say about `image`.
    pub(crate) fn set_image_nodes(&mut self, image: &str, nodes: ImageNodes) {
        if self.image_nodes.get(image) == Some(&nodes) {
            return;
        }
        self.nodes_version = next_version();
        let image_nodes = Arc::make_mut(&mut self.image_nodes);
        match image_nodes.get_mut(image) {
            Some(existing) => *existing = nodes,
            None => {
                image_nodes.insert(image.to_string(), nodes);
            }
        }
    }

    /// Forgets the node view of every image `keep` refuses: its series disappear.
    pub(crate) fn retain_image_nodes(&mut self, keep: impl Fn(&str) -> bool) {
        if self.image_nodes.keys().all(|image| keep(image)) {
            return;
        }
        self.nodes_version = next_version();
        Arc::make_mut(&mut self.image_nodes).retain(|image, _| keep(image));
    }

    /// Every image's node view, ordered by image, from the image after `after` (None:
    /// the first).
    pub(crate) fn image_nodes_after(
        &self,
        after: Option<&str>,
    ) -> impl Iterator<Item = (&String, &ImageNodes)> {
        self.image_nodes.range::<str, _>(after_key(after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pullwatch::CheckStatus;

    fn container(name: &str) -> ContainerRef {
        ContainerRef::deployment("ns", name, "c", "reg.io/app:1")
    }

    /// The statuses version moves exactly when what the canonical families show
    /// does: a reference comes or goes, or its status changes; the nodes version when
    /// an image's node view changes.
    #[test]
    fn versions_move_with_what_the_families_show() {
        let mut store = ResultStore::default();
        let outcome = |status, reason: &str| Arc::new(CheckOutcome::new(status, reason));
        let mut versions = vec![store.statuses_version()];
        let mut moved = |store: &ResultStore| {
            let moved = versions.last() != Some(&store.statuses_version());
            versions.push(store.statuses_version());
            moved
        };
        store.set(container("a"), outcome(CheckStatus::Available, ""));
        assert!(moved(&store), "a reference came");
        store.set(container("a"), outcome(CheckStatus::Available, "rechecked"));
        assert!(!moved(&store), "same status, other reason");
        store.set(container("b"), outcome(CheckStatus::Available, ""));
        assert!(moved(&store), "another reference came");
        store.set(container("a"), outcome(CheckStatus::Absent, "gone"));
        assert!(moved(&store), "a status changed");
        let b = container("b");
        store.retain(&HashSet::from([&b]));
        assert!(moved(&store), "a reference went");
        store.retain(&HashSet::from([&b]));
        assert!(!moved(&store), "nothing went");

        let snapshot = store.snapshot();
        assert_eq!(snapshot.statuses_version(), store.statuses_version());
        let nodes = store.nodes_version();
        let view = ImageNodes {
            cached: 2,
            ..Default::default()
        };
        store.set_image_nodes("reg.io/app:1", view.clone());
        assert_ne!(store.nodes_version(), nodes, "a node view changed");
        let nodes = store.nodes_version();
        store.set_image_nodes("reg.io/app:1", view);
        assert_eq!(store.nodes_version(), nodes, "the same view again");
        store.retain_image_nodes(|_| false);
        assert_ne!(store.nodes_version(), nodes, "a node view went");
        assert_eq!(snapshot.nodes_version(), 0, "a snapshot keeps its version");
        assert_eq!(
            store.statuses_version(),
            snapshot.statuses_version(),
            "node views leave the statuses"
        );
    }
}
