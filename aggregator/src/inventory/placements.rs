//! Where pods run: which nodes run pods of which (namespace, image), and nothing else
//! of the pods. The aggregator sends a workload's pull secrets only to nodes that run a
//! pod of its namespace using its image: the nodes whose kubelet already holds them.
//!
//! Kept compact for large clusters: per pod only its node and its distinct images,
//! all three strings shared (`Arc<str>`) with the per-(namespace, image) counts, so a
//! thousand replicas of one image on fifty nodes cost a thousand small entries and one
//! copy of each name.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

/// One pod's placement: its node and the distinct images of its containers.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Placement {
    node: Arc<str>,
    images: Box<[Arc<str>]>,
}

/// namespace -> image (as written in the pod spec) -> node -> pods there.
type ByImage = BTreeMap<Arc<str>, BTreeMap<Arc<str>, BTreeMap<Arc<str>, u32>>>;

/// Which nodes run pods of which (namespace, image).
#[derive(Clone, Debug, Default)]
pub(crate) struct PodPlacements {
    /// (namespace, pod name) -> placement.
    pods: BTreeMap<(String, String), Placement>,
    by_image: ByImage,
    /// node -> pods placed there; also where node names are shared from.
    nodes: BTreeMap<Arc<str>, usize>,
}

impl PodPlacements {
    /// Records where `pod` runs, replacing what was known about it. A pod not bound to
    /// a node yet, or finished (`Succeeded`, `Failed`), runs nowhere. Returns whether
    /// anything changed.
    pub(crate) fn apply(&mut self, namespace: &str, name: &str, pod: &Pod) -> bool {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty());
        let finished = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|phase| phase == "Succeeded" || phase == "Failed");
        let (Some(node), false, Some(spec)) = (node, finished, pod.spec.as_ref()) else {
            return self.remove(namespace, name);
        };
        let images: BTreeSet<&str> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .filter_map(|c| c.image.as_deref())
            .chain(
                spec.ephemeral_containers
                    .iter()
                    .flatten()
                    .filter_map(|c| c.image.as_deref()),
            )
            .filter(|i| !i.is_empty())
            .collect();
        let key = (namespace.to_string(), name.to_string());
        if let Some(existing) = self.pods.get(&key)
            && &*existing.node == node
            && existing
                .images
                .iter()
                .map(|i| &**i)
                .eq(images.iter().copied())
        {
            return false;
        }
        self.remove(namespace, name);
        let (ns, node) = self.intern(namespace, node);
        let images_of_ns = self.by_image.entry(ns).or_default();
        let mut interned = Vec::with_capacity(images.len());
        for image in images {
            let image: Arc<str> = match images_of_ns.get_key_value(image) {
                Some((existing, _)) => existing.clone(),
                None => Arc::from(image),
            };
            *images_of_ns
                .entry(image.clone())
                .or_default()
                .entry(node.clone())
                .or_default() += 1;
            interned.push(image);
        }
        *self.nodes.entry(node.clone()).or_default() += 1;
        self.pods.insert(
            key,
            Placement {
                node,
                images: interned.into_boxed_slice(),
            },
        );
        true
    }

    /// Forgets a pod. Returns whether it was known.
    pub(crate) fn remove(&mut self, namespace: &str, name: &str) -> bool {
        let Some(placement) = self.pods.remove(&(namespace.to_string(), name.to_string())) else {
            return false;
        };
        self.unindex(namespace, &placement);
        true
    }

    /// Drops every pod whose (namespace, name) is not in `seen` (a relist).
    pub(crate) fn retain_seen(&mut self, seen: &HashSet<(String, String)>) {
        for (namespace, name) in super::unseen(&self.pods, seen) {
            self.remove(&namespace, &name);
        }
    }

    /// Nodes that run a pod of `namespace` using `image` (as written in the spec).
    pub(crate) fn nodes_running(
        &self,
        namespace: &str,
        image: &str,
    ) -> impl Iterator<Item = &Arc<str>> {
        self.by_image
            .get(namespace)
            .and_then(|images| images.get(image))
            .into_iter()
            .flat_map(|nodes| nodes.keys())
    }

    #[cfg(test)]
    /// Pods placed on a node.
    pub(crate) fn len(&self) -> usize {
        self.pods.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// Shared copies of a namespace and node name, reusing ones already held.
    fn intern(&self, namespace: &str, node: &str) -> (Arc<str>, Arc<str>) {
        let ns = self
            .by_image
            .get_key_value(namespace)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| Arc::from(namespace));
        let node = self
            .nodes
            .get_key_value(node)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| Arc::from(node));
        (ns, node)
    }

    fn unindex(&mut self, namespace: &str, placement: &Placement) {
        if let Some(count) = self.nodes.get_mut(&placement.node) {
            *count -= 1;
            if *count == 0 {
                self.nodes.remove(&placement.node);
            }
        }
        let Some(images) = self.by_image.get_mut(namespace) else {
            return;
        };
        for image in placement.images.iter() {
            if let Some(nodes) = images.get_mut(image) {
                if let Some(count) = nodes.get_mut(&placement.node) {
                    *count -= 1;
                    if *count == 0 {
                        nodes.remove(&placement.node);
                    }
                }
                if nodes.is_empty() {
                    images.remove(image);
                }
            }
        }
        if images.is_empty() {
            self.by_image.remove(namespace);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodStatus};

    fn pod(node: Option<&str>, images: &[&str], phase: Option<&str>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                node_name: node.map(str::to_string),
                containers: images
                    .iter()
                    .enumerate()
                    .map(|(i, image)| Container {
                        name: format!("c{i}"),
                        image: Some(image.to_string()),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            status: phase.map(|p| PodStatus {
                phase: Some(p.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn nodes(p: &PodPlacements, ns: &str, image: &str) -> Vec<String> {
        p.nodes_running(ns, image).map(|n| n.to_string()).collect()
    }

    #[test]
    fn counts_pods_per_node_and_forgets_them() {
        let mut p = PodPlacements::default();
        assert!(p.apply(
            "a",
            "web-1",
            &pod(Some("n1"), &["img:1", "img:1", "side"], None)
        ));
        assert!(p.apply("a", "web-2", &pod(Some("n1"), &["img:1"], None)));
        assert!(p.apply("a", "web-3", &pod(Some("n2"), &["img:1"], Some("Running"))));
        // Not bound yet, finished: nowhere.
        assert!(!p.apply("a", "pending", &pod(None, &["img:1"], None)));
        assert!(!p.apply("a", "done", &pod(Some("n3"), &["img:1"], Some("Succeeded"))));
        assert_eq!(nodes(&p, "a", "img:1"), ["n1", "n2"]);
        assert_eq!(nodes(&p, "a", "side"), ["n1"]);
        // Namespaces do not mix.
        assert!(nodes(&p, "b", "img:1").is_empty());
        // Unchanged: no change reported.
        assert!(!p.apply("a", "web-2", &pod(Some("n1"), &["img:1"], None)));

        assert!(p.remove("a", "web-1"));
        assert_eq!(
            nodes(&p, "a", "img:1"),
            ["n1", "n2"],
            "web-2 still runs on n1"
        );
        assert!(nodes(&p, "a", "side").is_empty());
        // An image change moves the pod's entry.
        assert!(p.apply("a", "web-2", &pod(Some("n1"), &["img:2"], None)));
        assert_eq!(nodes(&p, "a", "img:1"), ["n2"]);
        assert_eq!(nodes(&p, "a", "img:2"), ["n1"]);
        // A pod that finishes leaves.
        assert!(p.apply("a", "web-3", &pod(Some("n2"), &["img:1"], Some("Failed"))));
        assert!(nodes(&p, "a", "img:1").is_empty());

        p.retain_seen(&HashSet::new());
        assert!(p.is_empty());
        assert!(p.by_image.is_empty(), "no empty index entries are left");
        assert!(p.nodes.is_empty());
    }
}
