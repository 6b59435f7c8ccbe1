//! Pods whose controller pullwatch does not watch (an Argo Rollout's ReplicaSets, a
//! bare ReplicaSet, an operator's custom resource): grouped by their top-most known
//! controller into one workload each, so every pod's images are checked exactly once
//! however many replicas run.
//!
//! A pod is covered by its controller only when pullwatch watches that kind, directly
//! (StatefulSet, DaemonSet, Job) or through a ReplicaSet a Deployment owns. Pods of a
//! ReplicaSet are therefore kept until grouping, which asks the ReplicaSets the
//! inventory knows who owns them. Pods of one controller usually share one template,
//! kept once (`Arc`) with a pod count: a replica more or less changes nothing a check
//! depends on, so it costs no index rebuild.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{ContainerImage, PlatformConstraints, Workload, WorkloadKind};

/// A controller as an ownerReference names it: (namespace, kind as written, name).
pub(crate) type OwnerKey = (String, String, String);

/// What a pod runs and may authenticate with: a [`Workload`] without its identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PodTemplate {
    pub(crate) containers: Vec<ContainerImage>,
    pub(crate) pull_secrets: Vec<Arc<str>>,
    pub(crate) service_account: Arc<str>,
    pub(crate) platforms: PlatformConstraints,
}

/// Pods grouped by their controller, and who controls the ReplicaSets.
#[derive(Clone, Debug, Default)]
pub(crate) struct OwnedPods {
    /// (namespace, pod) -> its controller and the template it runs.
    pods: BTreeMap<(String, String), (OwnerKey, Arc<PodTemplate>)>,
    /// Controller -> the distinct templates its pods run, with pod counts.
    templates: BTreeMap<OwnerKey, Vec<(Arc<PodTemplate>, usize)>>,
    /// (namespace, ReplicaSet) -> its controller, for ReplicaSets a Deployment does not
    /// own (those are most ReplicaSets and are not kept: a Deployment names its
    /// ReplicaSets `<deployment>-<pod-template-hash>`). `None`: no controller.
    replicasets: BTreeMap<(String, String), Option<(String, String)>>,
}

impl OwnedPods {
    /// Records that pod (namespace, name), controlled by `owner` (kind, name), runs
    /// `template`. Returns whether the set of templates of any controller changed
    /// (what the index depends on); a further replica of a known template does not.
    pub(crate) fn apply(
        &mut self,
        namespace: &str,
        name: &str,
        owner: (&str, &str),
        template: PodTemplate,
    ) -> bool {
        let key = (namespace.to_string(), name.to_string());
        let owner: OwnerKey = (
            namespace.to_string(),
            owner.0.to_string(),
            owner.1.to_string(),
        );
        if let Some((known_owner, known)) = self.pods.get(&key)
            && *known_owner == owner
            && **known == template
        {
            return false;
        }
        let removed = self.remove(namespace, name);
        let counts = self.templates.entry(owner.clone()).or_default();
        let (template, added) = match counts.iter_mut().find(|(t, _)| **t == template) {
            Some((shared, count)) => {
                *count += 1;
                (shared.clone(), false)
            }
            None => {
                let template = Arc::new(template);
                counts.push((template.clone(), 1));
                (template, true)
            }
        };
        self.pods.insert(key, (owner, template));
        removed || added
    }

    /// Forgets a pod. Returns whether a controller lost its last pod of a template.
    pub(crate) fn remove(&mut self, namespace: &str, name: &str) -> bool {
        let Some((owner, template)) = self.pods.remove(&(namespace.to_string(), name.to_string()))
        else {
            return false;
        };
        let Some(counts) = self.templates.get_mut(&owner) else {
            return false;
        };
        let Some(at) = counts.iter().position(|(t, _)| Arc::ptr_eq(t, &template)) else {
            return false;
        };
        counts[at].1 -= 1;
        if counts[at].1 > 0 {
            return false;
        }
        counts.remove(at);
        if counts.is_empty() {
            self.templates.remove(&owner);
        }
        true
    }

    /// Drops every pod whose (namespace, name) is not in `seen` (a relist).
    pub(crate) fn retain_seen(
        &mut self,
        seen: &std::collections::HashSet<(String, String)>,
    ) -> bool {
        let mut changed = false;
        for (namespace, name) in super::unseen(&self.pods, seen) {
            changed |= self.remove(&namespace, &name);
        }
        changed
    }

    /// Records a ReplicaSet's controller (kind, name), or its having none. Returns
    /// whether grouping may change: only when the controller it names changes, never
    /// on the status updates that are most of a ReplicaSet's events.
    pub(crate) fn apply_replicaset(
        &mut self,
        namespace: &str,
        name: &str,
        controller: Option<(&str, &str)>,
    ) -> bool {
        let key = (namespace.to_string(), name.to_string());
        if controller.is_some_and(|(kind, _)| kind == "Deployment") {
            return self.replicasets.remove(&key).is_some();
        }
        let controller = controller.map(|(k, n)| (k.to_string(), n.to_string()));
        if self.replicasets.get(&key) == Some(&controller) {
            return false;
        }
        self.replicasets.insert(key, controller);
        true
    }

    /// Forgets a ReplicaSet. Returns whether it was kept.
    pub(crate) fn remove_replicaset(&mut self, namespace: &str, name: &str) -> bool {
        self.replicasets
            .remove(&(namespace.to_string(), name.to_string()))
            .is_some()
    }

    /// Drops every kept ReplicaSet not in `seen` (a relist).
    pub(crate) fn retain_seen_replicasets(
        &mut self,
        seen: &std::collections::HashSet<(String, String)>,
    ) -> usize {
        let before = self.replicasets.len();
        self.replicasets.retain(|key, _| seen.contains(key));
        before - self.replicasets.len()
    }

    /// ReplicaSets kept (those no Deployment owns).
    pub(crate) fn replicaset_count(&self) -> usize {
        self.replicasets.len()
    }

    #[cfg(test)]
    /// Pods kept.
    pub(crate) fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// One workload per top-most controller pullwatch does not watch, its containers
    /// the distinct (container, image) pairs its pods run, in first-seen order.
    /// `is_deployment` says whether a Deployment of that (namespace, name) is known:
    /// the fallback for a ReplicaSet the inventory has not seen.
    pub(crate) fn workloads(&self, is_deployment: impl Fn(&str, &str) -> bool) -> Vec<Workload> {
        let mut groups: BTreeMap<(String, WorkloadKind, String), Workload> = BTreeMap::new();
        for ((namespace, kind, name), templates) in &self.templates {
            let Some((kind, name)) = self.top_controller(namespace, kind, name, &is_deployment)
            else {
                continue;
            };
            for (template, _) in templates {
                let workload = groups
                    .entry((namespace.clone(), kind, name.clone()))
                    .or_insert_with(|| Workload {
                        namespace: namespace.as_str().into(),
                        kind,
                        name: name.as_str().into(),
                        containers: Vec::new(),
                        pull_secrets: template.pull_secrets.clone(),
                        service_account: template.service_account.clone(),
                        enabled: true,
                        platforms: template.platforms.clone(),
                    });
                for container in &template.containers {
                    if !workload.containers.contains(container) {
                        workload.containers.push(container.clone());
                    }
                }
            }
        }
        groups.into_values().collect()
    }

    /// The controller a pod of `kind`/`name` is grouped under, or None when a watched
    /// workload covers it.
    pub(crate) fn top_controller(
        &self,
        namespace: &str,
        kind: &str,
        name: &str,
        is_deployment: &impl Fn(&str, &str) -> bool,
    ) -> Option<(WorkloadKind, String)> {
        if kind != "ReplicaSet" {
            let kind = WorkloadKind::of_controller(kind);
            return (!kind.is_watched()).then(|| (kind, name.to_string()));
        }
        match self
            .replicasets
            .get(&(namespace.to_string(), name.to_string()))
        {
            Some(Some((owner_kind, owner_name))) => {
                let kind = WorkloadKind::of_controller(owner_kind);
                (!kind.is_watched()).then(|| (kind, owner_name.clone()))
            }
            Some(None) => Some((WorkloadKind::of_controller(kind), name.to_string())),
            // Not kept: a Deployment's (named `<deployment>-<hash>`), or not seen yet.
            None => {
                let deployment = name.rsplit_once('-').map(|(prefix, _)| prefix);
                if deployment.is_some_and(|d| is_deployment(namespace, d)) {
                    None
                } else {
                    Some((WorkloadKind::of_controller(kind), name.to_string()))
                }
            }
        }
    }
}

/// The controller owner of an object: (kind, name). The API server allows one.
pub(crate) fn controller_of(meta: &ObjectMeta) -> Option<(&str, &str)> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|owner| owner.controller == Some(true))
        .map(|owner| (owner.kind.as_str(), owner.name.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(image: &str) -> PodTemplate {
        PodTemplate {
            containers: vec![ContainerImage {
                container: "app".into(),
                image: image.into(),
            }],
            pull_secrets: Vec::new(),
            service_account: "default".into(),
            platforms: PlatformConstraints::default(),
        }
    }

    fn names(pods: &OwnedPods, deployments: &[&str]) -> Vec<(String, String, Vec<String>)> {
        pods.workloads(|_, name| deployments.contains(&name))
            .into_iter()
            .map(|w| {
                (
                    w.kind.to_string(),
                    w.name.to_string(),
                    w.containers
                        .into_iter()
                        .map(|c| c.image.to_string())
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn replicas_of_one_template_are_one_workload_and_cost_no_rebuild() {
        let mut pods = OwnedPods::default();
        assert!(pods.apply("ns", "db-0", ("PostgresCluster", "db"), template("pg:16")));
        assert!(!pods.apply("ns", "db-1", ("PostgresCluster", "db"), template("pg:16")));
        assert!(!pods.apply("ns", "db-1", ("PostgresCluster", "db"), template("pg:16")));
        assert_eq!(
            names(&pods, &[]),
            [("postgrescluster".into(), "db".into(), vec!["pg:16".into()])]
        );
        assert!(
            !pods.remove("ns", "db-0"),
            "one replica of the template is left"
        );
        assert!(pods.remove("ns", "db-1"), "the last pod takes the workload");
        assert!(names(&pods, &[]).is_empty());
        assert_eq!(pods.pod_count(), 0);
    }

    #[test]
    fn replicasets_resolve_to_their_top_most_controller() {
        let mut pods = OwnedPods::default();
        // A Rollout's two revisions: both group under the Rollout, both images kept.
        assert!(pods.apply_replicaset("ns", "shop-7f9", Some(("Rollout", "shop"))));
        assert!(!pods.apply_replicaset("ns", "shop-7f9", Some(("Rollout", "shop"))));
        assert!(pods.apply_replicaset("ns", "shop-5c1", Some(("Rollout", "shop"))));
        pods.apply(
            "ns",
            "shop-7f9-a",
            ("ReplicaSet", "shop-7f9"),
            template("shop:1"),
        );
        pods.apply(
            "ns",
            "shop-5c1-a",
            ("ReplicaSet", "shop-5c1"),
            template("shop:2"),
        );
        // A bare ReplicaSet is its own top-most controller.
        assert!(pods.apply_replicaset("ns", "bare", None));
        pods.apply("ns", "bare-x", ("ReplicaSet", "bare"), template("bare:1"));
        // A Deployment's ReplicaSet is not kept, and its pods are covered.
        assert!(!pods.apply_replicaset("ns", "web-6d8", Some(("Deployment", "web"))));
        pods.apply(
            "ns",
            "web-6d8-q",
            ("ReplicaSet", "web-6d8"),
            template("web:1"),
        );
        // A ReplicaSet not seen: covered only when a Deployment of its prefix exists.
        pods.apply(
            "ns",
            "api-1a2-q",
            ("ReplicaSet", "api-1a2"),
            template("api:1"),
        );
        assert_eq!(
            names(&pods, &["web"]),
            [
                (
                    "replicaset".into(),
                    "api-1a2".into(),
                    vec!["api:1".to_string()]
                ),
                ("replicaset".into(), "bare".into(), vec!["bare:1".into()]),
                (
                    "rollout".into(),
                    "shop".into(),
                    vec!["shop:2".to_string(), "shop:1".into()]
                ),
            ]
        );
        assert_eq!(names(&pods, &["web", "api"]).len(), 2);
        // A watched controller kind covers its pods.
        pods.apply(
            "ns",
            "cache-0",
            ("StatefulSet", "cache"),
            template("redis:7"),
        );
        assert_eq!(names(&pods, &["web", "api"]).len(), 2);
        assert!(pods.remove_replicaset("ns", "bare"));
        assert_eq!(pods.replicaset_count(), 2);
    }
}
