//! Placement: which connected agent checks an image. One node per node group
//! ([`AgentHub::plan`]), and within a group the node running the workload, then one
//! holding the image, then the least busy ([`AgentHub::place_preferring`]).
//!
//! Placement reads the hub's indexes (group -> agents, image -> group -> holders) and
//! never walks the whole fleet: the nodes running the workload are looked up one by
//! one (the caller's list), and within a group's holders or members the agents are
//! visited in name order until an idle one is found, at most [`SCAN_LIMIT`] of them
//! (then the least busy of those). So a placement costs the same at 100 agents and at
//! 5,000; `pullwatch_agent_placement_visits_total` counts the agents it looked at.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use pullwatch::locks::lock;

use super::{AgentEntry, AgentHub, HubState};

/// Agents of one group (its holders of the image, or all its agents) looked at before
/// taking the least busy of them, when none of them is idle.
pub const SCAN_LIMIT: usize = 16;

/// Placement order, smallest first: holds the image, has a free slot, fewest tasks,
/// name. (Whether it runs the workload is decided before, by tier.)
type Rank<'a> = (bool, bool, usize, &'a str);

/// The best candidate seen so far, and how many agents were looked at.
struct Best<'a> {
    slots: usize,
    best: Option<(Rank<'a>, &'a Arc<str>)>,
    visits: u64,
}

impl<'a> Best<'a> {
    fn new(slots: usize) -> Self {
        Best {
            slots,
            best: None,
            visits: 0,
        }
    }

    fn rank(&self, node: &'a str, entry: &AgentEntry, image: &str) -> Rank<'a> {
        let load = entry.session.load.load(Ordering::Relaxed);
        (!entry.holds(image), load >= self.slots, load, node)
    }

    /// Considers one agent.
    fn offer(&mut self, node: &'a Arc<str>, entry: &AgentEntry, image: &str) {
        self.visits += 1;
        let rank = self.rank(node, entry, image);
        if self.best.as_ref().is_none_or(|(best, _)| rank < *best) {
            self.best = Some((rank, node));
        }
    }

    /// Visits `nodes` in name order until an idle one (which no later one beats) or
    /// [`SCAN_LIMIT`] acceptable ones were seen.
    fn scan(
        &mut self,
        state: &'a HubState,
        nodes: &'a BTreeSet<Arc<str>>,
        image: &str,
        accept: &impl Fn(&str) -> bool,
    ) {
        let mut seen = 0;
        for node in nodes {
            if !accept(node) {
                self.visits += 1;
                continue;
            }
            let Some(entry) = state.agents.get(node) else {
                continue;
            };
            self.offer(node, entry, image);
            seen += 1;
            let idle = entry.session.load.load(Ordering::Relaxed) == 0;
            if idle || seen >= SCAN_LIMIT {
                break;
            }
        }
    }

    fn node(&self) -> Option<Arc<str>> {
        self.best.as_ref().map(|(_, node)| (*node).clone())
    }
}

impl AgentHub {
    /// [`Self::place_preferring`] with no preferred node.
    #[cfg(test)]
    pub(crate) fn place(
        &self,
        image: &str,
        group: Option<&str>,
        exclude: &[String],
        allowed: Option<&[String]>,
    ) -> Option<String> {
        self.place_preferring(image, group, exclude, allowed, &[])
    }

    /// Picks an agent for `image`: in `group` if given, not in `exclude`, within
    /// `allowed` if given; preferring the `preferred` nodes (those running the
    /// workload) above all, then nodes that hold the image, then the least busy.
    pub(crate) fn place_preferring(
        &self,
        image: &str,
        group: Option<&str>,
        exclude: &[String],
        allowed: Option<&[String]>,
        preferred: &[String],
    ) -> Option<String> {
        let state = lock(&self.inner.state);
        let slots = self.slots();
        let accept = |node: &str| {
            !exclude.iter().any(|e| e == node)
                && allowed.is_none_or(|nodes| nodes.iter().any(|n| n == node))
        };
        let in_group = |entry: &AgentEntry| group.is_none_or(|g| entry.group.as_ref() == g);
        // The caller's lists (running the workload; allowed to get the task) are
        // looked up one by one.
        let listed = |nodes: &[String], visits: &mut u64| {
            let mut best = Best::new(slots);
            for node in nodes {
                if let Some((name, entry)) = state.agents.get_key_value(node.as_str())
                    && accept(name)
                    && in_group(entry)
                {
                    best.offer(name, entry, image);
                }
            }
            *visits += best.visits;
            best.node()
        };
        let mut visits = 0;
        let mut chosen = listed(preferred, &mut visits);
        if chosen.is_none()
            && let Some(allowed) = allowed
        {
            // Only the caller's nodes may get the task: nothing else to look at.
            chosen = listed(allowed, &mut visits);
        } else if chosen.is_none() {
            let groups: Vec<&Arc<str>> = match group {
                Some(g) => state
                    .members
                    .get_key_value(g)
                    .map(|(g, _)| g)
                    .into_iter()
                    .collect(),
                None => state.members.keys().collect(),
            };
            let holders = state.holders.get(image);
            let mut best = Best::new(slots);
            for g in &groups {
                if let Some(nodes) = holders.and_then(|h| h.get(*g)) {
                    best.scan(&state, nodes, image, &accept);
                }
            }
            if best.best.is_none() {
                for g in &groups {
                    if let Some(nodes) = state.members.get(*g) {
                        best.scan(&state, nodes, image, &accept);
                    }
                }
            }
            visits += best.visits;
            chosen = best.node();
        }
        self.count_placement(visits);
        chosen.map(|node| node.to_string())
    }

    /// One node per node group for `image`: in each group the best by rank,
    /// `preferred` (nodes running the workload) first. Sorted by group.
    pub fn plan(&self, image: &str, preferred: &BTreeSet<Arc<str>>) -> Vec<(String, String)> {
        let state = lock(&self.inner.state);
        let slots = self.slots();
        let mut visits = 0;
        // Nodes running the workload, best per group.
        let mut per_group: BTreeMap<&str, Best> = BTreeMap::new();
        for node in preferred {
            if let Some((name, entry)) = state.agents.get_key_value(node.as_ref()) {
                per_group
                    .entry(entry.group.as_ref())
                    .or_insert_with(|| Best::new(slots))
                    .offer(name, entry, image);
            }
        }
        let holders = state.holders.get(image);
        let accept = |_: &str| true;
        let mut plan = Vec::with_capacity(state.members.len());
        for (group, members) in &state.members {
            let node = match per_group.get(group.as_ref()) {
                Some(best) => {
                    visits += best.visits;
                    best.node()
                }
                None => {
                    let mut best = Best::new(slots);
                    if let Some(nodes) = holders.and_then(|h| h.get(group)) {
                        best.scan(&state, nodes, image, &accept);
                    }
                    if best.best.is_none() {
                        best.scan(&state, members, image, &accept);
                    }
                    visits += best.visits;
                    best.node()
                }
            };
            if let Some(node) = node {
                plan.push((group.to_string(), node.to_string()));
            }
        }
        self.count_placement(visits);
        plan
    }

    fn slots(&self) -> usize {
        self.inner.config.max_concurrent_checks.max(1) as usize
    }

    fn count_placement(&self, visits: u64) {
        self.inner.metrics.placements.inc();
        self.inner.metrics.placement_visits.inc_by(visits);
    }

    /// For each of `images` (normalized references) that some agent holds: the nodes
    /// holding it, by their last image lists (the hub's own node names, shared).
    pub(crate) fn holders_of(
        &self,
        images: &HashSet<String>,
    ) -> HashMap<String, BTreeSet<Arc<str>>> {
        let state = lock(&self.inner.state);
        images
            .iter()
            .filter_map(|image| {
                let groups = state.holders.get(image.as_str())?;
                let nodes = groups.values().flatten().cloned().collect();
                Some((image.clone(), nodes))
            })
            .collect()
    }

    /// Nodes whose agents hold `image` (a normalized reference), by their last image list.
    pub fn holders(&self, image: &str) -> BTreeSet<String> {
        lock(&self.inner.state)
            .holders
            .get(image)
            .map(|groups| {
                groups
                    .values()
                    .flatten()
                    .map(|node| node.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}
