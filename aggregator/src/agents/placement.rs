//! Placement: which connected agent checks an image. One node per node group
//! ([`AgentHub::plan`]), and within a group the node running the workload, then one
//! holding the image, then the least busy ([`AgentHub::place`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use pullwatch::support::lock;

use super::{AgentHub, AgentInfo};

impl AgentHub {
    /// Picks an agent for `image`: in `group` if given, not in `exclude`, within
    /// `allowed` if given; preferring nodes that hold the image, then the least busy.
    pub fn place(
        &self,
        image: &str,
        group: Option<&str>,
        exclude: &[String],
        allowed: Option<&[String]>,
    ) -> Option<String> {
        self.place_preferring(image, group, exclude, allowed, &[])
    }

    /// [`Self::place`], preferring the `preferred` nodes (those running the workload)
    /// above all.
    pub fn place_preferring(
        &self,
        image: &str,
        group: Option<&str>,
        exclude: &[String],
        allowed: Option<&[String]>,
        preferred: &[String],
    ) -> Option<String> {
        self.agents()
            .into_iter()
            .filter(|a| !exclude.contains(&a.node_name))
            .filter(|a| allowed.is_none_or(|nodes| nodes.contains(&a.node_name)))
            .filter(|a| group.is_none_or(|g| self.group_of(a) == g))
            .min_by_key(|a| self.rank(a, image, |n| preferred.iter().any(|p| p == n)))
            .map(|a| a.node_name)
    }

    /// One node per node group for `image`: in each group the best by [`Self::rank`],
    /// `preferred` (nodes running the workload) first. Sorted by group.
    pub fn plan(&self, image: &str, preferred: &BTreeSet<Arc<str>>) -> Vec<(String, String)> {
        let mut best: BTreeMap<String, AgentInfo> = BTreeMap::new();
        for agent in self.agents() {
            let group = self.group_of(&agent);
            let better = best.get(&group).is_none_or(|current| {
                self.rank(&agent, image, |n| preferred.contains(n))
                    < self.rank(current, image, |n| preferred.contains(n))
            });
            if better {
                best.insert(group, agent);
            }
        }
        best.into_iter().map(|(g, a)| (g, a.node_name)).collect()
    }

    /// Placement order, smallest first: runs the workload, holds the image, has a free
    /// slot, fewest tasks, name.
    fn rank(
        &self,
        agent: &AgentInfo,
        image: &str,
        preferred: impl Fn(&str) -> bool,
    ) -> (bool, bool, bool, usize, String) {
        let slots = self.inner.config.max_concurrent_checks.max(1) as usize;
        (
            !preferred(&agent.node_name),
            !agent.images.contains(image),
            agent.in_flight >= slots,
            agent.in_flight,
            agent.node_name.clone(),
        )
    }

    /// For each of `images` (normalized references) that some agent holds: the nodes
    /// holding it, by their last image lists.
    pub fn holders_of(&self, images: &HashSet<String>) -> HashMap<String, BTreeSet<String>> {
        let state = lock(&self.inner.state);
        let mut holders: HashMap<String, BTreeSet<String>> = HashMap::new();
        for entry in state.agents.values() {
            for image in entry.info.images.iter().filter(|i| images.contains(*i)) {
                holders
                    .entry(image.clone())
                    .or_default()
                    .insert(entry.info.node_name.clone());
            }
        }
        holders
    }

    /// Nodes whose agents hold `image` (a normalized reference), by their last image list.
    pub fn holders(&self, image: &str) -> BTreeSet<String> {
        lock(&self.inner.state)
            .agents
            .values()
            .filter(|e| e.info.images.contains(image))
            .map(|e| e.info.node_name.clone())
            .collect()
    }
}
