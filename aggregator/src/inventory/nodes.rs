//! What the inventory keeps of each Node, from the one watch of Nodes: its platform
//! (what workloads can land on), what its container runtime does with a Docker schema 1
//! manifest and, with `--node-group-label`, that label's value (how the agent hub
//! groups nodes: agents cannot read their own Node's labels). Nothing else of a Node is
//! kept.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Node;
use pullwatch::Platform;
use pullwatch::registry::pull_path::Schema1Pulls;

use super::platforms::node_platform;

/// One Node, reduced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeView {
    /// From `status.nodeInfo`; None until the kubelet reports it.
    pub(crate) platform: Option<Platform>,
    /// From `status.nodeInfo.containerRuntimeVersion`; None until the kubelet reports
    /// it, or for a runtime other than containerd and CRI-O.
    pub(crate) schema1: Option<Schema1Pulls>,
    /// The value of the node group label ("" when the Node lacks it); None without
    /// a node group label.
    pub(crate) group: Option<String>,
}

/// Node name -> what is kept of it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Nodes {
    /// The label whose value groups nodes (`--node-group-label`, with agents).
    group_label: Option<String>,
    views: BTreeMap<String, NodeView>,
}

impl Nodes {
    pub(crate) fn with_group_label(group_label: Option<String>) -> Nodes {
        Nodes {
            group_label,
            views: BTreeMap::new(),
        }
    }

    /// Adds or replaces `node`; a Node with nothing to keep is dropped. Returns whether
    /// anything kept changed.
    pub(crate) fn apply(&mut self, name: String, node: &Node) -> bool {
        let group = self.group_label.as_ref().map(|label| {
            node.metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get(label))
                .cloned()
                .unwrap_or_default()
        });
        let schema1 = node
            .status
            .as_ref()
            .and_then(|status| status.node_info.as_ref())
            .and_then(|info| Schema1Pulls::of_node_runtime(&info.container_runtime_version));
        let view = NodeView {
            platform: node_platform(node),
            schema1,
            group,
        };
        if view.platform.is_none() && view.schema1.is_none() && view.group.is_none() {
            return self.views.remove(&name).is_some();
        }
        if self.views.get(&name) == Some(&view) {
            return false;
        }
        self.views.insert(name, view);
        true
    }

    /// Drops `name`; whether it was kept.
    pub(crate) fn remove(&mut self, name: &str) -> bool {
        self.views.remove(name).is_some()
    }

    /// Keeps only the nodes `keep` accepts.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.views.retain(|name, _| keep(name));
    }

    pub(crate) fn len(&self) -> usize {
        self.views.len()
    }

    /// The platforms of the nodes that reported one.
    pub(crate) fn platforms(&self) -> impl Iterator<Item = &Platform> {
        self.views
            .values()
            .filter_map(|view| view.platform.as_ref())
    }

    /// What the nodes' runtimes do with schema 1 manifests, each once, for the nodes
    /// that reported a runtime pullwatch knows.
    pub(crate) fn schema1_pulls(&self) -> Vec<Schema1Pulls> {
        let distinct: std::collections::BTreeSet<Schema1Pulls> = self
            .views
            .values()
            .filter_map(|view| view.schema1)
            .collect();
        distinct.into_iter().collect()
    }

    /// Node name -> its group label's value, for every node (empty without a node
    /// group label).
    pub(crate) fn groups(&self) -> HashMap<String, String> {
        self.views
            .iter()
            .filter_map(|(name, view)| Some((name.clone(), view.group.clone()?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeStatus, NodeSystemInfo};

    fn node(labels: &[(&str, &str)], platform: Option<(&str, &str)>) -> Node {
        let mut node = Node::default();
        node.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        node.status = platform.map(|(os, arch)| NodeStatus {
            node_info: Some(NodeSystemInfo {
                operating_system: os.into(),
                architecture: arch.into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        node
    }

    #[test]
    fn one_view_holds_platforms_and_groups() {
        let mut nodes = Nodes::with_group_label(Some("zone".into()));
        assert!(nodes.apply("a".into(), &node(&[("zone", "z1")], None)));
        assert!(nodes.apply("b".into(), &node(&[], Some(("linux", "arm64")))));
        assert!(!nodes.apply(
            "b".into(),
            &node(&[("other", "x")], Some(("linux", "arm64")))
        ));
        assert_eq!(
            nodes.groups(),
            HashMap::from([("a".into(), "z1".into()), ("b".into(), String::new())])
        );
        assert_eq!(nodes.platforms().count(), 1, "a reported no platform yet");
        assert!(nodes.apply("a".into(), &node(&[("zone", "z2")], None)));
        assert_eq!(nodes.groups()["a"], "z2");
        assert!(nodes.remove("a") && !nodes.remove("a"));

        // Without a group label only platforms are kept.
        let mut plain = Nodes::default();
        assert!(!plain.apply("a".into(), &node(&[("zone", "z1")], None)));
        assert!(plain.apply(
            "b".into(),
            &node(&[("zone", "z1")], Some(("linux", "amd64")))
        ));
        assert!(plain.groups().is_empty());
        assert_eq!(plain.len(), 1);
    }

    fn with_runtime(runtime: &str) -> Node {
        let mut node = node(&[], None);
        node.status = Some(NodeStatus {
            node_info: Some(NodeSystemInfo {
                container_runtime_version: runtime.into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        node
    }

    #[test]
    fn the_nodes_runtimes_say_what_a_schema_1_pull_does() {
        let mut nodes = Nodes::default();
        assert!(nodes.schema1_pulls().is_empty(), "no node yet");
        assert!(nodes.apply("a".into(), &with_runtime("containerd://1.7.27")));
        assert!(nodes.apply("b".into(), &with_runtime("containerd://1.7.20")));
        assert_eq!(nodes.schema1_pulls(), [Schema1Pulls::Converted]);
        // A rolling upgrade: one node on containerd 2 already.
        assert!(nodes.apply("b".into(), &with_runtime("containerd://2.1.4")));
        assert_eq!(
            nodes.schema1_pulls(),
            [Schema1Pulls::Refused, Schema1Pulls::Converted]
        );
        assert!(nodes.apply("c".into(), &with_runtime("cri-o://1.31.3")));
        assert_eq!(nodes.schema1_pulls().len(), 3);
        // A runtime pullwatch does not know counts for nothing.
        assert!(!nodes.apply("d".into(), &with_runtime("docker://28.0.1")));
        assert!(nodes.remove("a") && nodes.remove("c"));
        assert_eq!(nodes.schema1_pulls(), [Schema1Pulls::Refused]);
    }
}
