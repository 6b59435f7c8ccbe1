//! Inventory: the first stage of the data flow. What runs (workloads and their
//! containers), and what they can authenticate with (pull secrets, service accounts),
//! reduced to the few fields a check needs.
//!
//! Sources fill an [`Inventory`]: [`manifests`] from YAML files, [`cluster`] from
//! watches on a live cluster; [`SharedInventory`] is where they meet the index
//! builder, and where the agent hub reads its node groups ([`nodes`]: each Node's
//! platform and group label, from the one watch of Nodes). The reduction from
//! Kubernetes objects lives here so every source reduces the same way.

pub(crate) mod cluster;
pub(crate) mod interner;
pub mod manifests;
pub(crate) mod nodes;
pub(crate) mod owners;
pub(crate) mod placements;
pub(crate) mod platforms;
pub(crate) mod running;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};

use pullwatch::locks::lock;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, PodSpec, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pullwatch::DockerConfig;
use serde::Serialize;

pub(crate) use interner::Interner;
pub(crate) use nodes::Nodes;
pub(crate) use owners::OwnedPods;
pub(crate) use placements::PodPlacements;
pub(crate) use platforms::PlatformConstraints;
pub(crate) use running::RunningDigests;

/// The kind of a workload, named as in the metric `kind` label: the kinds pullwatch
/// watches, or (for pods whose controller it does not watch: an Argo Rollout, a bare
/// ReplicaSet, an operator's custom resource) the top-most controller it knows of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
    CronJob,
    Job,
    Pod,
    /// A controller kind pullwatch does not watch, lowercased (`rollout`,
    /// `replicaset`, `postgrescluster`). Interned: kinds are type names, bounded by the
    /// cluster's API types, so each distinct one is kept once for the process's life.
    Other(&'static str),
}

impl WorkloadKind {
    /// The kinds pullwatch watches.
    pub(crate) const ALL: [WorkloadKind; 6] = [
        WorkloadKind::Deployment,
        WorkloadKind::StatefulSet,
        WorkloadKind::DaemonSet,
        WorkloadKind::CronJob,
        WorkloadKind::Job,
        WorkloadKind::Pod,
    ];

    /// Lowercase, as in the `kind` label and the legacy metric names.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployment",
            WorkloadKind::StatefulSet => "statefulset",
            WorkloadKind::DaemonSet => "daemonset",
            WorkloadKind::CronJob => "cronjob",
            WorkloadKind::Job => "job",
            WorkloadKind::Pod => "pod",
            WorkloadKind::Other(kind) => kind,
        }
    }

    /// Parses the name of a watched kind case-insensitively (`Deployment`,
    /// `deployment`).
    pub(crate) fn parse(name: &str) -> Option<WorkloadKind> {
        WorkloadKind::ALL
            .into_iter()
            .find(|kind| kind.as_str().eq_ignore_ascii_case(name))
    }

    /// The kind of a controller as an ownerReference names it (`Rollout`): a watched
    /// kind when it is one, else [`WorkloadKind::Other`] with the name lowercased.
    pub(crate) fn of_controller(kind: &str) -> WorkloadKind {
        WorkloadKind::parse(kind).unwrap_or_else(|| WorkloadKind::Other(intern_kind(kind)))
    }

    /// True for the kinds pullwatch watches (a pod they control is covered by them).
    pub(crate) fn is_watched(self) -> bool {
        !matches!(self, WorkloadKind::Other(_))
    }
}

impl Serialize for WorkloadKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Interns a controller kind's lowercase name: one leaked string per distinct kind
/// (type names, a few dozen in a cluster), so [`WorkloadKind`] stays `Copy`.
fn intern_kind(kind: &str) -> &'static str {
    static KINDS: std::sync::OnceLock<Mutex<std::collections::BTreeSet<&'static str>>> =
        std::sync::OnceLock::new();
    let lower = kind.to_ascii_lowercase();
    let mut kinds = lock(KINDS.get_or_init(Default::default));
    if let Some(known) = kinds.get(lower.as_str()) {
        return known;
    }
    let leaked: &'static str = Box::leak(lower.into_boxed_str());
    kinds.insert(leaked);
    leaked
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One container's image, as written in the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerImage {
    pub container: Arc<str>,
    pub image: Arc<str>,
}

/// A workload reduced to what a check needs. Its strings are shared (see
/// [`Interner`]): the index and the store hold the same ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub namespace: Arc<str>,
    pub kind: WorkloadKind,
    pub name: Arc<str>,
    /// Init, regular and ephemeral containers, in that order.
    pub containers: Vec<ContainerImage>,
    /// `imagePullSecrets` of the pod (template), in order.
    pub pull_secrets: Vec<Arc<str>>,
    /// `serviceAccountName`, `default` when unset.
    pub service_account: Arc<str>,
    /// False for replicas 0, a suspended CronJob, a DaemonSet scheduled nowhere.
    pub enabled: bool,
    /// The pod template's constraints on the node platform (nodeSelector, required
    /// node affinity on os/arch).
    pub platforms: PlatformConstraints,
}

/// The credentials a pull secret carries, or why it carries none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SecretCredentials {
    /// Shared by every secret carrying equal values (one robot account's secret
    /// copied into each namespace is kept once).
    Parsed(Arc<DockerConfig>),
    /// The payload is missing or empty: the kubelet skips such a secret.
    Ignored(String),
    /// The payload does not parse: the kubelet fails every pull that would use the
    /// secret (`MakeDockerKeyring` returns the error), before contacting a registry.
    Broken(String),
}

/// Identifies a workload: kind, namespace, name.
pub(crate) type WorkloadKey = (WorkloadKind, Arc<str>, Arc<str>);

/// The two secret types that carry registry credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum SecretFormat {
    /// `kubernetes.io/dockerconfigjson`
    DockerConfigJson,
    /// `kubernetes.io/dockercfg`
    DockerCfg,
}

impl SecretFormat {
    pub(crate) fn secret_type(self) -> &'static str {
        match self {
            SecretFormat::DockerConfigJson => DOCKER_CONFIG_JSON,
            SecretFormat::DockerCfg => DOCKER_CFG,
        }
    }
}

/// A pull secret: its format and what it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PullSecret {
    pub(crate) format: SecretFormat,
    pub(crate) credentials: SecretCredentials,
}

/// The kinds of object an inventory holds, one per watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum ObjectKind {
    Workload(WorkloadKind),
    Secret(SecretFormat),
    ServiceAccount,
    Namespace,
    Node,
    /// Who controls each ReplicaSet: whether its pods are a watched Deployment's.
    ReplicaSet,
}

/// Everything the index needs, from any source. Keyed maps, so a watch event's
/// apply or delete is one insert or remove.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub workloads: BTreeMap<WorkloadKey, Workload>,
    /// (namespace, name) -> docker config secrets and their credentials.
    pub(crate) secrets: BTreeMap<(String, String), PullSecret>,
    /// (namespace, name) -> the service account's imagePullSecrets.
    pub(crate) service_accounts: BTreeMap<(String, String), Vec<String>>,
    /// namespace -> labels, for `--namespace-label`.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Which nodes run pods of which (namespace, image), from every Pod with a node
    /// (controller-owned ones included): where pull secrets may go.
    pub(crate) placements: PodPlacements,
    /// The digest each running pod container runs, by workload container: what a
    /// moved tag is measured against. Changes here never need an index rebuild.
    pub(crate) running: RunningDigests,
    /// Node name -> its platform (cluster mode: what workloads can land on) and its
    /// group label's value (with agents and `--node-group-label`).
    pub(crate) nodes: Nodes,
    /// Pods whose controller pullwatch does not watch, grouped by their top-most
    /// known controller (see [`Inventory::grouped_workloads`]).
    pub(crate) owned: OwnedPods,
    /// Namespaces, images, container, secret and service account names, each kept
    /// once however many workloads name it.
    pub(crate) strings: Interner<str>,
    /// Parsed pull secrets, each distinct value kept once.
    pub(crate) configs: Interner<DockerConfig>,
}

/// What each watch has achieved, for readiness and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct WatchState {
    /// A full list has been applied at least once.
    pub(crate) synced: bool,
    /// The API server refused the list with 403 (RBAC).
    pub(crate) forbidden: bool,
    pub(crate) last_error: Option<String>,
}

/// The shared inventory the watches fill, and who to tell when it changes.
#[derive(Clone)]
pub(crate) struct SharedInventory {
    pub(crate) inventory: Arc<Mutex<Inventory>>,
    /// The index builder's wake-up.
    pub(crate) changed: Arc<Notify>,
    /// Bumped when the Nodes or their watch's state changed: the agent hub's wake-up
    /// (its node groups come from here).
    nodes_changed: Arc<watch::Sender<u64>>,
    states: Arc<Mutex<BTreeMap<&'static str, WatchState>>>,
}

impl Default for SharedInventory {
    fn default() -> Self {
        SharedInventory::with_node_group_label(None)
    }
}

impl SharedInventory {
    /// An empty inventory whose Nodes keep the value of `node_group_label` (with
    /// agents and `--node-group-label`).
    pub(crate) fn with_node_group_label(node_group_label: Option<String>) -> SharedInventory {
        let inventory = Inventory {
            nodes: Nodes::with_group_label(node_group_label),
            ..Inventory::default()
        };
        SharedInventory {
            inventory: Arc::new(Mutex::new(inventory)),
            changed: Arc::new(Notify::new()),
            nodes_changed: Arc::new(watch::channel(0).0),
            states: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// Something a check depends on changed in objects of `kind` (or in their
    /// watch's state): wakes the index builder, and the node groups' follower when
    /// Nodes changed.
    pub(crate) fn notify_changed(&self, kind: ObjectKind) {
        self.changed.notify_one();
        if kind == ObjectKind::Node {
            self.nodes_changed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Tells when the Nodes or their watch's state changed.
    pub(crate) fn subscribe_nodes(&self) -> watch::Receiver<u64> {
        self.nodes_changed.subscribe()
    }

    /// The state of `resource`'s watch.
    pub(crate) fn state(&self, resource: &str) -> WatchState {
        lock(&self.states)
            .get(resource)
            .cloned()
            .unwrap_or_default()
    }

    /// True once every watch has listed (or been refused by RBAC) at least once.
    pub(crate) fn synced(&self) -> bool {
        let states = lock(&self.states);
        !states.is_empty() && states.values().all(|s| s.synced || s.forbidden)
    }

    /// Sets a resource's state, returning the previous one.
    pub(crate) fn set_state(&self, resource: &'static str, state: WatchState) -> WatchState {
        lock(&self.states)
            .insert(resource, state)
            .unwrap_or_default()
    }

    /// Changes a resource's state in place.
    pub(crate) fn update_state<T>(
        &self,
        resource: &'static str,
        change: impl FnOnce(&mut WatchState) -> T,
    ) -> T {
        change(lock(&self.states).entry(resource).or_default())
    }

    /// One line for `/readyz`: what is not synced, what is forbidden.
    pub(crate) fn describe(&self) -> String {
        let states = lock(&self.states);
        let pending: Vec<&str> = states
            .iter()
            .filter(|(_, s)| !s.synced && !s.forbidden)
            .map(|(r, _)| *r)
            .collect();
        let forbidden: Vec<&str> = states
            .iter()
            .filter(|(_, s)| s.forbidden)
            .map(|(r, _)| *r)
            .collect();
        let mut parts = Vec::new();
        if !pending.is_empty() {
            parts.push(format!(
                "waiting for the first list of {}",
                pending.join(", ")
            ));
        }
        if !forbidden.is_empty() {
            parts.push(format!(
                "forbidden by RBAC, running without: {}",
                forbidden.join(", ")
            ));
        }
        parts.join("; ")
    }
}

/// A Kubernetes object the inventory understands, before reduction.
#[derive(Clone, Debug)]
pub(crate) enum KubeObject {
    Deployment(Box<Deployment>),
    StatefulSet(Box<StatefulSet>),
    DaemonSet(Box<DaemonSet>),
    CronJob(Box<CronJob>),
    Job(Box<Job>),
    Pod(Box<Pod>),
    Secret(Box<Secret>),
    ServiceAccount(Box<ServiceAccount>),
    Namespace(Box<Namespace>),
    Node(Box<Node>),
    ReplicaSet(Box<ReplicaSet>),
}

type ConfigParser = fn(&[u8]) -> Result<DockerConfig, pullwatch::credentials::CredentialError>;

impl KubeObject {
    /// (namespace, name); namespace is empty for cluster-scoped objects.
    pub(crate) fn key(&self) -> (String, String) {
        let meta = self.metadata();
        match self {
            KubeObject::Namespace(_) | KubeObject::Node(_) => (String::new(), name_of(meta)),
            _ => (namespace_of(meta), name_of(meta)),
        }
    }

    fn metadata(&self) -> &ObjectMeta {
        match self {
            KubeObject::Deployment(o) => &o.metadata,
            KubeObject::StatefulSet(o) => &o.metadata,
            KubeObject::DaemonSet(o) => &o.metadata,
            KubeObject::CronJob(o) => &o.metadata,
            KubeObject::Job(o) => &o.metadata,
            KubeObject::Pod(o) => &o.metadata,
            KubeObject::Secret(o) => &o.metadata,
            KubeObject::ServiceAccount(o) => &o.metadata,
            KubeObject::Namespace(o) => &o.metadata,
            KubeObject::Node(o) => &o.metadata,
            KubeObject::ReplicaSet(o) => &o.metadata,
        }
    }
}

const DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
const DOCKER_CFG: &str = "kubernetes.io/dockercfg";

impl Inventory {
    /// Adds or replaces one object; objects that carry nothing for pullwatch (a Pod
    /// owned by a controller, a Job owned by a CronJob, a Secret of another type) are
    /// skipped with a debug log. Returns whether anything a check depends on changed:
    /// most watch events (a Pod's status, a Deployment's rollout progress) change
    /// nothing, and must not cost an index rebuild.
    #[must_use = "a change must reach the index builder"]
    pub(crate) fn apply(&mut self, object: KubeObject) -> bool {
        match object {
            KubeObject::Deployment(d) => {
                let spec = d.spec.as_ref();
                let enabled = spec.and_then(|s| s.replicas).is_none_or(|r| r > 0);
                let pod = spec.and_then(|s| s.template.spec.as_ref());
                self.add_workload(&d.metadata, WorkloadKind::Deployment, pod, enabled)
            }
            KubeObject::StatefulSet(s) => {
                let spec = s.spec.as_ref();
                let enabled = spec.and_then(|s| s.replicas).is_none_or(|r| r > 0);
                let pod = spec.and_then(|s| s.template.spec.as_ref());
                self.add_workload(&s.metadata, WorkloadKind::StatefulSet, pod, enabled)
            }
            KubeObject::DaemonSet(d) => {
                // Without a status (a manifest file) we cannot know; assume it runs.
                let enabled = d
                    .status
                    .as_ref()
                    .is_none_or(|s| s.desired_number_scheduled > 0);
                let pod = d.spec.as_ref().and_then(|s| s.template.spec.as_ref());
                self.add_workload(&d.metadata, WorkloadKind::DaemonSet, pod, enabled)
            }
            KubeObject::CronJob(c) => {
                let spec = c.spec.as_ref();
                let enabled = !spec.and_then(|s| s.suspend).unwrap_or(false);
                let pod = spec
                    .and_then(|s| s.job_template.spec.as_ref())
                    .and_then(|j| j.template.spec.as_ref());
                self.add_workload(&c.metadata, WorkloadKind::CronJob, pod, enabled)
            }
            KubeObject::Job(j) => {
                if owners::controller_of(&j.metadata).is_some_and(|(kind, _)| kind == "CronJob") {
                    tracing::debug!(name = ?j.metadata.name, "skipping Job owned by a CronJob: the CronJob covers it");
                    return self
                        .workloads
                        .remove(&workload_key(WorkloadKind::Job, &j.metadata))
                        .is_some();
                }
                let enabled = !j.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
                let pod = j.spec.as_ref().and_then(|s| s.template.spec.as_ref());
                self.add_workload(&j.metadata, WorkloadKind::Job, pod, enabled)
            }
            KubeObject::Pod(p) => {
                let (namespace, name) = (namespace_of(&p.metadata), name_of(&p.metadata));
                // What it runs is read at scrape time, where it runs at dispatch time:
                // neither changes the index.
                self.running.apply(&namespace, &name, &p);
                self.placements.apply(&namespace, &name, &p);
                if let Some(owner) = owners::controller_of(&p.metadata) {
                    let removed = self
                        .workloads
                        .remove(&workload_key(WorkloadKind::Pod, &p.metadata))
                        .is_some();
                    let owned = match (p.spec.as_ref(), self.covers(&namespace, owner)) {
                        (Some(spec), false) => {
                            let template = self.pod_template(spec);
                            self.owned.apply(&namespace, &name, owner, template)
                        }
                        _ => {
                            tracing::debug!(name = ?p.metadata.name, "skipping Pod with a watched controller: its controller covers it");
                            self.owned.remove(&namespace, &name)
                        }
                    };
                    return removed | owned;
                }
                self.add_workload(&p.metadata, WorkloadKind::Pod, p.spec.as_ref(), true)
            }
            KubeObject::Secret(s) => self.add_secret(&s),
            KubeObject::ServiceAccount(sa) => {
                let key = (namespace_of(&sa.metadata), name_of(&sa.metadata));
                let secrets: Vec<String> = sa
                    .image_pull_secrets
                    .iter()
                    .flatten()
                    .map(|r| r.name.clone())
                    .filter(|n| !n.is_empty())
                    .collect();
                replace(&mut self.service_accounts, key, secrets)
            }
            KubeObject::Namespace(ns) => {
                let labels = ns.metadata.labels.clone().unwrap_or_default();
                replace(&mut self.namespaces, name_of(&ns.metadata), labels)
            }
            KubeObject::Node(node) => self.nodes.apply(name_of(&node.metadata), &node),
            KubeObject::ReplicaSet(rs) => self.owned.apply_replicaset(
                &namespace_of(&rs.metadata),
                &name_of(&rs.metadata),
                owners::controller_of(&rs.metadata),
            ),
        }
    }

    /// One workload per top-most controller pullwatch does not watch, for the pods it
    /// controls: checked besides [`Inventory::workloads`].
    pub(crate) fn grouped_workloads(&self) -> Vec<Workload> {
        self.owned
            .workloads(|namespace, name| self.has_deployment(namespace, name))
    }

    /// Whether a watched workload covers the pods `owner` (kind, name) controls; the
    /// pods it does not cover are kept for grouping.
    fn covers(&self, namespace: &str, (kind, name): (&str, &str)) -> bool {
        self.owned
            .top_controller(namespace, kind, name, &|namespace, name| {
                self.has_deployment(namespace, name)
            })
            .is_none()
    }

    fn has_deployment(&self, namespace: &str, name: &str) -> bool {
        self.workloads.contains_key(&(
            WorkloadKind::Deployment,
            Arc::from(namespace),
            Arc::from(name),
        ))
    }

    /// Removes what `object` named (its spec is not looked at); returns whether it
    /// was there.
    pub(crate) fn delete(&mut self, object: &KubeObject) -> bool {
        match object {
            KubeObject::Deployment(d) => {
                self.remove_workload(WorkloadKind::Deployment, &d.metadata)
            }
            KubeObject::StatefulSet(s) => {
                self.remove_workload(WorkloadKind::StatefulSet, &s.metadata)
            }
            KubeObject::DaemonSet(d) => self.remove_workload(WorkloadKind::DaemonSet, &d.metadata),
            KubeObject::CronJob(c) => self.remove_workload(WorkloadKind::CronJob, &c.metadata),
            KubeObject::Job(j) => self.remove_workload(WorkloadKind::Job, &j.metadata),
            KubeObject::Pod(p) => {
                let (namespace, name) = (namespace_of(&p.metadata), name_of(&p.metadata));
                self.running.remove(&namespace, &name);
                self.placements.remove(&namespace, &name);
                let owned = self.owned.remove(&namespace, &name);
                owned | self.remove_workload(WorkloadKind::Pod, &p.metadata)
            }
            KubeObject::Secret(s) => self
                .secrets
                .remove(&(namespace_of(&s.metadata), name_of(&s.metadata)))
                .is_some(),
            KubeObject::ServiceAccount(sa) => self
                .service_accounts
                .remove(&(namespace_of(&sa.metadata), name_of(&sa.metadata)))
                .is_some(),
            KubeObject::Namespace(ns) => self.namespaces.remove(&name_of(&ns.metadata)).is_some(),
            KubeObject::Node(node) => self.nodes.remove(name_str(&node.metadata)),
            KubeObject::ReplicaSet(rs) => self
                .owned
                .remove_replicaset(&namespace_of(&rs.metadata), &name_of(&rs.metadata)),
        }
    }

    /// Drops every object of `kind` whose (namespace, name) is not in `seen`: what a
    /// relist did not return was deleted while nobody watched. Returns how many went.
    pub(crate) fn retain_seen(
        &mut self,
        kind: ObjectKind,
        seen: &std::collections::HashSet<(String, String)>,
    ) -> usize {
        let before = self.object_count(kind);
        let mut owned_changed = false;
        if kind == ObjectKind::Workload(WorkloadKind::Pod) {
            self.placements.retain_seen(seen);
            self.running.retain_seen(seen);
            owned_changed = self.owned.retain_seen(seen);
        }
        match kind {
            ObjectKind::Workload(workload_kind) => self.workloads.retain(|(k, ns, name), _| {
                *k != workload_kind || seen.contains(&(ns.to_string(), name.to_string()))
            }),
            ObjectKind::Secret(format) => self
                .secrets
                .retain(|key, secret| secret.format != format || seen.contains(key)),
            ObjectKind::ServiceAccount => self.service_accounts.retain(|key, _| seen.contains(key)),
            ObjectKind::Namespace => self
                .namespaces
                .retain(|name, _| seen.contains(&(String::new(), name.clone()))),
            ObjectKind::Node => self
                .nodes
                .retain(|name| seen.contains(&(String::new(), name.to_string()))),
            ObjectKind::ReplicaSet => {
                self.owned.retain_seen_replicasets(seen);
            }
        }
        let removed = before - self.object_count(kind) + usize::from(owned_changed);
        if removed > 0 {
            tracing::debug!(?kind, removed, "objects gone after relist");
        }
        removed
    }

    /// How many objects of `kind` the inventory holds.
    pub(crate) fn object_count(&self, kind: ObjectKind) -> usize {
        match kind {
            ObjectKind::Workload(k) => self.workloads.keys().filter(|(wk, _, _)| *wk == k).count(),
            ObjectKind::Secret(format) => {
                self.secrets.values().filter(|s| s.format == format).count()
            }
            ObjectKind::ServiceAccount => self.service_accounts.len(),
            ObjectKind::Namespace => self.namespaces.len(),
            ObjectKind::Node => self.nodes.len(),
            ObjectKind::ReplicaSet => self.owned.replicaset_count(),
        }
    }

    fn remove_workload(&mut self, kind: WorkloadKind, meta: &ObjectMeta) -> bool {
        self.workloads.remove(&workload_key(kind, meta)).is_some()
    }

    fn add_workload(
        &mut self,
        meta: &ObjectMeta,
        kind: WorkloadKind,
        pod: Option<&PodSpec>,
        enabled: bool,
    ) -> bool {
        let mut key = (
            kind,
            self.strings.intern(namespace_str(meta)),
            Arc::from(name_str(meta)),
        );
        // An update keeps the key's strings: the value shares them.
        if let Some((known, _)) = self.workloads.get_key_value(&key) {
            key = known.clone();
        }
        let Some(pod) = pod else {
            tracing::warn!(%kind, name = ?meta.name, "workload has no pod spec; nothing to check");
            return self.workloads.remove(&key).is_some();
        };
        let template = self.pod_template(pod);
        let workload = Workload {
            namespace: key.1.clone(),
            kind,
            name: key.2.clone(),
            containers: template.containers,
            pull_secrets: template.pull_secrets,
            service_account: template.service_account,
            enabled,
            platforms: template.platforms,
        };
        replace(&mut self.workloads, key, workload)
    }

    /// What a pod runs and may authenticate with, its strings shared.
    fn pod_template(&mut self, pod: &PodSpec) -> owners::PodTemplate {
        let strings = &mut self.strings;
        let containers = containers_of(pod)
            .map(|(container, image)| ContainerImage {
                container: strings.intern(container),
                image: strings.intern(image),
            })
            .collect();
        let pull_secrets = pod
            .image_pull_secrets
            .iter()
            .flatten()
            .filter(|r| !r.name.is_empty())
            .map(|r| strings.intern(&r.name))
            .collect();
        // `serviceAccountName`, `default` when unset.
        let service_account = strings.intern(
            pod.service_account_name
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or("default"),
        );
        owners::PodTemplate {
            containers,
            pull_secrets,
            service_account,
            platforms: PlatformConstraints::from_pod_spec(pod),
        }
    }

    fn add_secret(&mut self, secret: &Secret) -> bool {
        let secret_type = secret.type_.as_deref().unwrap_or_default();
        let (format, field, parse): (SecretFormat, &str, ConfigParser) = match secret_type {
            DOCKER_CONFIG_JSON => (
                SecretFormat::DockerConfigJson,
                ".dockerconfigjson",
                DockerConfig::from_config_json,
            ),
            DOCKER_CFG => (
                SecretFormat::DockerCfg,
                ".dockercfg",
                DockerConfig::from_dockercfg,
            ),
            _ => return false,
        };
        let key = (namespace_of(&secret.metadata), name_of(&secret.metadata));
        // Manifests may carry the payload in stringData; the API server would merge it into data.
        let payload = secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(field))
            .map(|s| s.as_bytes().to_vec())
            .or_else(|| {
                secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(field))
                    .map(|b| b.0.clone())
            });
        let credentials = match payload {
            None => SecretCredentials::Ignored(format!(
                "secret of type {secret_type} has no {field} key"
            )),
            Some(bytes) if bytes.is_empty() => SecretCredentials::Ignored(format!(
                "secret of type {secret_type} has an empty {field}"
            )),
            Some(bytes) => match parse(&bytes) {
                Ok(config) => SecretCredentials::Parsed(self.configs.intern_value(config)),
                Err(err) => SecretCredentials::Broken(err.to_string()),
            },
        };
        let secret = PullSecret {
            format,
            credentials,
        };
        let changed = self.secrets.get(&key) != Some(&secret);
        if changed {
            match &secret.credentials {
                SecretCredentials::Broken(why) => {
                    tracing::warn!(namespace = %key.0, secret = %key.1, reason = %why, "pull secret is unusable: the kubelet fails every pull that uses it");
                }
                SecretCredentials::Ignored(why) => {
                    tracing::warn!(namespace = %key.0, secret = %key.1, reason = %why, "pull secret carries no credentials; the kubelet skips it");
                }
                SecretCredentials::Parsed(_) => {}
            }
        }
        self.secrets.insert(key, secret);
        changed
    }
}

/// Inserts `value` unless an equal one is there; returns whether the map changed.
fn replace<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, V>, key: K, value: V) -> bool {
    if map.get(&key) == Some(&value) {
        return false;
    }
    map.insert(key, value);
    true
}

fn workload_key(kind: WorkloadKind, meta: &ObjectMeta) -> WorkloadKey {
    (
        kind,
        Arc::from(namespace_str(meta)),
        Arc::from(name_str(meta)),
    )
}

/// The (namespace, name) keys of `pods` a relist did not return.
fn unseen<V>(
    pods: &BTreeMap<(String, String), V>,
    seen: &std::collections::HashSet<(String, String)>,
) -> Vec<(String, String)> {
    pods.keys()
        .filter(|key| !seen.contains(*key))
        .cloned()
        .collect()
}

fn namespace_of(meta: &ObjectMeta) -> String {
    namespace_str(meta).to_string()
}

/// The object's namespace, `default` when unset.
fn namespace_str(meta: &ObjectMeta) -> &str {
    meta.namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
}

fn name_of(meta: &ObjectMeta) -> String {
    name_str(meta).to_string()
}

fn name_str(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

/// (name, image) of the init, regular and ephemeral containers, in that order. A
/// container without an image is itself a bad image reference: kept (image empty) so
/// it is reported.
fn containers_of(pod: &PodSpec) -> impl Iterator<Item = (&str, &str)> {
    let init = pod
        .init_containers
        .iter()
        .flatten()
        .map(|c| (&c.name, &c.image));
    let regular = pod.containers.iter().map(|c| (&c.name, &c.image));
    let ephemeral = pod
        .ephemeral_containers
        .iter()
        .flatten()
        .map(|c| (&c.name, &c.image));
    init.chain(regular)
        .chain(ephemeral)
        .map(|(name, image)| (name.as_str(), image.as_deref().unwrap_or_default()))
}

#[cfg(test)]
impl Inventory {
    /// Deployments `ns/<name>`, each with one container `app` using `image`: the
    /// inventory the scheduler's and the pipeline's tests start from.
    pub(crate) fn of_deployments(workloads: &[(&str, &str)]) -> Inventory {
        let mut inventory = Inventory::default();
        for (name, image) in workloads {
            inventory.workloads.insert(
                (WorkloadKind::Deployment, "ns".into(), (*name).into()),
                Workload {
                    namespace: "ns".into(),
                    kind: WorkloadKind::Deployment,
                    name: (*name).into(),
                    containers: vec![ContainerImage {
                        container: "app".into(),
                        image: (*image).into(),
                    }],
                    pull_secrets: vec![],
                    service_account: "default".into(),
                    enabled: true,
                    platforms: Default::default(),
                },
            );
        }
        inventory
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodStatus};

    fn pod(image: &str, phase: &str) -> KubeObject {
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        pod.metadata.namespace = Some("ns".into());
        pod.spec = Some(PodSpec {
            node_name: Some("node-a".into()),
            containers: vec![Container {
                name: "c".into(),
                image: Some(image.into()),
                ..Default::default()
            }],
            ..Default::default()
        });
        pod.status = Some(PodStatus {
            phase: Some(phase.into()),
            ..Default::default()
        });
        KubeObject::Pod(Box::new(pod))
    }

    #[test]
    fn only_changes_a_check_depends_on_count_as_changes() {
        let mut inventory = Inventory::default();
        assert!(inventory.apply(pod("nginx:1", "Pending")));
        // A status update (the bulk of a cluster's events) changes nothing we keep.
        assert!(!inventory.apply(pod("nginx:1", "Running")));
        assert!(inventory.apply(pod("nginx:2", "Running")));
        assert!(inventory.delete(&pod("nginx:2", "Running")));
        assert!(!inventory.delete(&pod("nginx:2", "Running")));

        let mut namespace = Namespace::default();
        namespace.metadata.name = Some("ns".into());
        assert!(inventory.apply(KubeObject::Namespace(Box::new(namespace.clone()))));
        assert!(!inventory.apply(KubeObject::Namespace(Box::new(namespace.clone()))));
        namespace.metadata.labels = Some([("team".to_string(), "a".to_string())].into());
        assert!(inventory.apply(KubeObject::Namespace(Box::new(namespace))));
    }

    #[test]
    fn relists_report_what_they_dropped() {
        let mut inventory = Inventory::default();
        let _ = inventory.apply(pod("nginx:1", "Running"));
        let kind = ObjectKind::Workload(WorkloadKind::Pod);
        let seen: std::collections::HashSet<(String, String)> =
            [("ns".to_string(), "p".to_string())].into();
        assert_eq!(inventory.retain_seen(kind, &seen), 0);
        assert_eq!(
            inventory.retain_seen(kind, &Default::default()),
            1,
            "the workload (placements are read at dispatch and never rebuild the index)"
        );
        assert_eq!(inventory.object_count(kind), 0);
        assert_eq!(inventory.placements.len(), 0, "the placement went too");
    }

    #[test]
    fn replicas_coming_and_going_never_change_the_index() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let mut inventory = Inventory::default();
        let mut deployment = Deployment::default();
        deployment.metadata.name = Some("web".into());
        deployment.metadata.namespace = Some("ns".into());
        let KubeObject::Pod(template) = pod("nginx:1", "Running") else {
            unreachable!()
        };
        let mut spec = k8s_openapi::api::apps::v1::DeploymentSpec::default();
        spec.template.spec = template.spec;
        deployment.spec = Some(spec);
        assert!(inventory.apply(KubeObject::Deployment(Box::new(deployment))));
        let replica = |name: &str, node: &str| {
            let KubeObject::Pod(mut pod) = pod("nginx:1", "Running") else {
                unreachable!()
            };
            pod.metadata.name = Some(name.into());
            pod.metadata.owner_references = Some(vec![OwnerReference {
                kind: "ReplicaSet".into(),
                name: "web-6d8".into(),
                controller: Some(true),
                ..Default::default()
            }]);
            if let Some(spec) = pod.spec.as_mut() {
                spec.node_name = Some(node.into());
            }
            KubeObject::Pod(pod)
        };
        for (i, node) in ["node-a", "node-b", "node-c"].into_iter().enumerate() {
            assert!(!inventory.apply(replica(&format!("web-6d8-{i}"), node)));
        }
        assert_eq!(
            inventory.placements.nodes_running("ns", "nginx:1").count(),
            3,
            "where they run is kept, for dispatch"
        );
        assert!(!inventory.delete(&replica("web-6d8-0", "node-a")));
        assert_eq!(
            inventory.placements.nodes_running("ns", "nginx:1").count(),
            2
        );
        assert_eq!(inventory.owned.pod_count(), 0, "covered pods are not kept");
    }

    fn pull_secret(namespace: &str, name: &str, config: &str) -> KubeObject {
        let mut secret = Secret::default();
        secret.metadata.name = Some(name.into());
        secret.metadata.namespace = Some(namespace.into());
        secret.type_ = Some(DOCKER_CONFIG_JSON.into());
        secret.string_data = Some([(".dockerconfigjson".to_string(), config.to_string())].into());
        KubeObject::Secret(Box::new(secret))
    }

    fn parsed(inventory: &Inventory, namespace: &str, name: &str) -> Arc<DockerConfig> {
        match &inventory.secrets[&(namespace.to_string(), name.to_string())].credentials {
            SecretCredentials::Parsed(config) => config.clone(),
            other => panic!("{namespace}/{name} did not parse: {other:?}"),
        }
    }

    #[test]
    fn repeated_values_are_kept_once() {
        let mut inventory = Inventory::default();
        let KubeObject::Pod(template) = pod("reg.io/app:v1", "Running") else {
            unreachable!()
        };
        for name in ["a", "b"] {
            let mut deployment = Deployment::default();
            deployment.metadata.name = Some(name.into());
            deployment.metadata.namespace = Some("ns".into());
            let mut spec = k8s_openapi::api::apps::v1::DeploymentSpec::default();
            spec.template.spec = template.spec.clone();
            deployment.spec = Some(spec);
            assert!(inventory.apply(KubeObject::Deployment(Box::new(deployment))));
        }
        let [a, b]: [&Workload; 2] = inventory
            .workloads
            .values()
            .collect::<Vec<_>>()
            .try_into()
            .unwrap();
        assert!(Arc::ptr_eq(&a.namespace, &b.namespace));
        assert!(Arc::ptr_eq(&a.containers[0].image, &b.containers[0].image));
        assert!(Arc::ptr_eq(&a.service_account, &b.service_account));
        let (key, value) = inventory.workloads.iter().next().unwrap();
        assert!(
            Arc::ptr_eq(&key.2, &value.name),
            "one name for key and value"
        );

        let robot = r#"{"auths":{"reg.io":{"username":"robot","password":"token"}}}"#;
        let other = r#"{"auths":{"reg.io":{"username":"other","password":"token"}}}"#;
        for namespace in ["ns", "team-a"] {
            assert!(inventory.apply(pull_secret(namespace, "pull", robot)));
        }
        assert!(inventory.apply(pull_secret("team-b", "pull", other)));
        assert!(Arc::ptr_eq(
            &parsed(&inventory, "ns", "pull"),
            &parsed(&inventory, "team-a", "pull")
        ));
        assert!(!Arc::ptr_eq(
            &parsed(&inventory, "ns", "pull"),
            &parsed(&inventory, "team-b", "pull")
        ));
        assert_eq!(
            parsed(&inventory, "team-b", "pull").entries["reg.io"].username,
            "other"
        );
    }
}
