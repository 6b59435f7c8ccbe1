//! Inventory from a live cluster: one kube-rs watcher per kind (per type for pull
//! secrets, whose field selector cannot OR two), each event reduced at
//! once to what a check needs (no object is kept whole: no managedFields, no
//! annotations, no unrelated secret data). Nodes are watched once, for the platforms
//! workloads land on and the agent hub's node groups alike.
//!
//! Relists are applied without buffering whole objects: every listed object is
//! applied as it arrives and remembered by key only; when the list is done, objects
//! of that kind it did not return are dropped (they were deleted while unwatched).

use std::collections::HashSet;
use std::fmt::Debug;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret, ServiceAccount};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{KubeObject, ObjectKind, SecretFormat, SharedInventory, WatchState, WorkloadKind};
use pullwatch::locks::lock;

/// Why the cluster could not be reached at start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read kubeconfig {path}: {}", without_content(source))]
    Kubeconfig {
        path: std::path::PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no Kubernetes configuration found (not in a cluster, no KUBECONFIG, no ~/.kube/config): {}",
        without_content(.0)
    )]
    Infer(#[from] kube::config::InferConfigError),
    #[error("cannot build a Kubernetes client: {}", without_content(.0))]
    Client(#[from] kube::Error),
}

/// An error about a kubeconfig, which holds tokens and keys, without what it would
/// quote of it: kube's YAML errors add the lines around the error after the first line
/// (a token on the line above), and base64 errors name a byte of a key.
fn without_content(error: &dyn std::fmt::Display) -> String {
    let text = error.to_string();
    let first_line = text.lines().next().unwrap_or_default();
    match first_line
        .find("Invalid symbol")
        .or_else(|| first_line.find("Invalid last symbol"))
    {
        Some(at) => format!("{}not valid base64", &first_line[..at]),
        None => first_line.to_string(),
    }
}

/// A Kubernetes client from `--kubeconfig`, else in-cluster config or `KUBECONFIG`.
pub(crate) async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client, ClusterError> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                ClusterError::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|source| ClusterError::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                })?
        }
        None => kube::Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// Series about the watches themselves, registered by [`crate::metrics::Metrics`].
#[derive(Clone)]
pub(crate) struct InventoryMetrics {
    synced: IntGaugeVec,
    forbidden: IntGaugeVec,
    errors: IntCounterVec,
    objects: IntGaugeVec,
}

impl InventoryMetrics {
    pub(crate) fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = InventoryMetrics {
            synced: IntGaugeVec::new(
                Opts::new(
                    "pullwatch_inventory_synced",
                    "1 once the first full list of a resource has been applied.",
                ),
                &["resource"],
            )?,
            forbidden: IntGaugeVec::new(
                Opts::new(
                    "pullwatch_inventory_forbidden",
                    "1 while the API server refuses to list a resource (RBAC); pullwatch runs without it.",
                ),
                &["resource"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "pullwatch_inventory_watch_errors_total",
                    "List and watch errors, by resource (the watch retries with backoff).",
                ),
                &["resource"],
            )?,
            objects: IntGaugeVec::new(
                Opts::new(
                    "pullwatch_inventory_objects",
                    "Objects of a resource held in the inventory.",
                ),
                &["resource"],
            )?,
        };
        registry.register(Box::new(metrics.synced.clone()))?;
        registry.register(Box::new(metrics.forbidden.clone()))?;
        registry.register(Box::new(metrics.errors.clone()))?;
        registry.register(Box::new(metrics.objects.clone()))?;
        Ok(metrics)
    }
}

/// The resource of the one watch of Nodes.
pub(crate) const NODES: &str = "nodes";

/// Which resources to watch.
struct Watch<K> {
    resource: &'static str,
    kind: ObjectKind,
    config: watcher::Config,
    wrap: fn(K) -> KubeObject,
}

/// Starts one watch task per resource. They run until aborted.
pub(crate) fn spawn_watches(
    client: Client,
    shared: SharedInventory,
    metrics: InventoryMetrics,
) -> Vec<JoinHandle<()>> {
    // kube's default page size; bookmarks on so watches resume without relisting.
    let config = watcher::Config::default;
    let mut tasks = Vec::new();
    macro_rules! watch {
        ($k:ty, $resource:expr, $kind:expr, $config:expr, $wrap:expr) => {
            tasks.push(spawn_watch::<$k>(
                Api::all(client.clone()),
                Watch {
                    resource: $resource,
                    kind: $kind,
                    config: $config,
                    wrap: $wrap,
                },
                shared.clone(),
                metrics.clone(),
            ))
        };
    }
    watch!(
        Deployment,
        "deployments",
        ObjectKind::Workload(WorkloadKind::Deployment),
        config(),
        |o| KubeObject::Deployment(Box::new(o))
    );
    watch!(
        StatefulSet,
        "statefulsets",
        ObjectKind::Workload(WorkloadKind::StatefulSet),
        config(),
        |o| KubeObject::StatefulSet(Box::new(o))
    );
    watch!(
        DaemonSet,
        "daemonsets",
        ObjectKind::Workload(WorkloadKind::DaemonSet),
        config(),
        |o| KubeObject::DaemonSet(Box::new(o))
    );
    watch!(
        CronJob,
        "cronjobs",
        ObjectKind::Workload(WorkloadKind::CronJob),
        config(),
        |o| KubeObject::CronJob(Box::new(o))
    );
    watch!(
        Job,
        "jobs",
        ObjectKind::Workload(WorkloadKind::Job),
        config(),
        |o| KubeObject::Job(Box::new(o))
    );
    watch!(
        Pod,
        "pods",
        ObjectKind::Workload(WorkloadKind::Pod),
        config(),
        |o| KubeObject::Pod(Box::new(o))
    );
    // Who controls each ReplicaSet: a Deployment's pods are covered by the Deployment,
    // an Argo Rollout's (or a bare ReplicaSet's) are grouped under it. Only the owner
    // is kept, and only of ReplicaSets no Deployment owns.
    watch!(
        ReplicaSet,
        "replicasets",
        ObjectKind::ReplicaSet,
        config(),
        |o| KubeObject::ReplicaSet(Box::new(o))
    );
    watch!(
        ServiceAccount,
        "serviceaccounts",
        ObjectKind::ServiceAccount,
        config(),
        |o| KubeObject::ServiceAccount(Box::new(o))
    );
    watch!(
        Namespace,
        "namespaces",
        ObjectKind::Namespace,
        config(),
        |o| KubeObject::Namespace(Box::new(o))
    );
    // The platforms workloads can land on, and the agent hub's node groups; refused
    // by RBAC, no platform is checked and agents are grouped by the labels they send.
    watch!(Node, NODES, ObjectKind::Node, config(), |o| {
        KubeObject::Node(Box::new(o))
    });
    // A field selector cannot OR two types: one watch per pull-secret type, and no
    // other secret (TLS keys, tokens) is ever listed.
    for format in [SecretFormat::DockerConfigJson, SecretFormat::DockerCfg] {
        let resource = match format {
            SecretFormat::DockerConfigJson => "secrets/dockerconfigjson",
            SecretFormat::DockerCfg => "secrets/dockercfg",
        };
        watch!(
            Secret,
            resource,
            ObjectKind::Secret(format),
            config().fields(&format!("type={}", format.secret_type())),
            |o| KubeObject::Secret(Box::new(o))
        );
    }
    tasks
}

fn spawn_watch<K>(
    api: Api<K>,
    watch: Watch<K>,
    shared: SharedInventory,
    metrics: InventoryMetrics,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    shared.set_state(watch.resource, WatchState::default());
    tokio::spawn(async move {
        let start = || {
            watcher::watcher(api.clone(), watch.config.clone())
                .default_backoff()
                .boxed()
        };
        let mut stream = start();
        let mut seen: Option<HashSet<(String, String)>> = None;
        // Whether the relist in progress changed anything (most relists change nothing).
        let mut relist_changed = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => {
                    seen = Some(HashSet::new());
                    relist_changed = false;
                }
                Ok(Event::InitApply(object)) => {
                    let object = (watch.wrap)(object);
                    if let Some(seen) = seen.as_mut() {
                        seen.insert(object.key());
                    }
                    relist_changed |= lock(&shared.inventory).apply(object);
                }
                Ok(Event::InitDone) => {
                    let seen = seen.take();
                    relist_done(&shared, &metrics, &watch, seen, relist_changed);
                }
                Ok(Event::Apply(object)) => {
                    let object = (watch.wrap)(object);
                    apply_change(&shared, &metrics, &watch, |inventory| {
                        inventory.apply(object)
                    });
                }
                Ok(Event::Delete(object)) => {
                    let object = (watch.wrap)(object);
                    apply_change(&shared, &metrics, &watch, |inventory| {
                        inventory.delete(&object)
                    });
                }
                Err(error) => {
                    // A watch refused after a list succeeded (RBAC revoked mid-run):
                    // kube retries the watch from its resourceVersion and says
                    // nothing when it is allowed again, so the refusal would never
                    // clear. Start over with a list: its InitDone clears it. (A
                    // refused list is retried by the watcher with its backoff.)
                    if watch_failed(&shared, &metrics, &watch, &error)
                        && !matches!(error, watcher::Error::InitialListFailed(_))
                    {
                        stream = start();
                    }
                }
            }
        }
    })
}

/// A list (or relist) complete: objects it did not see are gone, the resource is
/// synced and allowed, and the index is rebuilt if anything changed (or this list
/// completes the sync, and so readiness, even when empty).
fn relist_done<K>(
    shared: &SharedInventory,
    metrics: &InventoryMetrics,
    watch: &Watch<K>,
    seen: Option<HashSet<(String, String)>>,
    mut relist_changed: bool,
) {
    let resource = watch.resource;
    let count = {
        let mut inventory = lock(&shared.inventory);
        if let Some(seen) = seen {
            relist_changed |= inventory.retain_seen(watch.kind, &seen) > 0;
        }
        inventory.object_count(watch.kind)
    };
    let previous = shared.set_state(
        resource,
        WatchState {
            synced: true,
            forbidden: false,
            last_error: None,
        },
    );
    if previous.forbidden {
        info!(resource, "listing is allowed again");
    }
    let first = !previous.synced;
    metrics.synced.with_label_values(&[resource]).set(1);
    metrics.forbidden.with_label_values(&[resource]).set(0);
    metrics
        .objects
        .with_label_values(&[resource])
        .set(count as i64);
    if first {
        info!(resource, objects = count, "initial list applied");
    } else {
        debug!(
            resource,
            objects = count,
            changed = relist_changed,
            "relist applied"
        );
    }
    if first || relist_changed || previous.forbidden {
        shared.notify_changed(watch.kind);
    }
}

/// Records a failed list or watch of `resource`. Returns whether RBAC refused it;
/// otherwise the last known state stays, checks go on, and kube retries with backoff.
fn watch_failed<K>(
    shared: &SharedInventory,
    metrics: &InventoryMetrics,
    watch: &Watch<K>,
    error: &watcher::Error,
) -> bool {
    let resource = watch.resource;
    metrics.errors.with_label_values(&[resource]).inc();
    let forbidden = is_forbidden(error);
    let message = error.to_string();
    let newly_forbidden = shared.update_state(resource, |state| {
        let newly = forbidden && !state.forbidden;
        state.forbidden |= forbidden;
        state.last_error = Some(message.clone());
        newly
    });
    if forbidden {
        metrics.forbidden.with_label_values(&[resource]).set(1);
        if newly_forbidden {
            warn!(resource, error = %message, "forbidden by RBAC: running without it (kept retrying)");
            // Readiness may now be reached without this resource.
            shared.notify_changed(watch.kind);
        }
    } else {
        warn!(resource, error = %message, "list/watch failed; retrying with backoff");
    }
    forbidden
}

/// One watch event's change; the index is rebuilt only when something a check
/// depends on changed (a Pod's status update, the bulk of a cluster's events, does not).
fn apply_change<K>(
    shared: &SharedInventory,
    metrics: &InventoryMetrics,
    watch: &Watch<K>,
    change: impl FnOnce(&mut super::Inventory) -> bool,
) {
    let count = {
        let mut inventory = lock(&shared.inventory);
        if !change(&mut inventory) {
            return;
        }
        inventory.object_count(watch.kind)
    };
    metrics
        .objects
        .with_label_values(&[watch.resource])
        .set(count as i64);
    shared.notify_changed(watch.kind);
}

fn is_forbidden(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.is_forbidden(),
        watcher::Error::WatchError(status) => status.is_forbidden(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kubeconfig holds tokens and keys: what cannot be read of it is said by line
    /// and column, never by quoting it. kube's YAML errors quote the lines around the
    /// error (a token on the line above), its base64 errors a byte of the key.
    #[tokio::test]
    async fn kubeconfig_errors_never_quote_the_kubeconfig() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "users:\n- name: u\n  user:\n    token: Canary-token-abc\n    exec: 5\n",
                "line 7 column 11",
            ),
            (
                "clusters: [{name: c, cluster: {server: \"https://127.0.0.1:6443\"}}]\nusers: [{name: u, user: {token: Canary-token-abc, client-key-data: \"Canary!!notbase64\"}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n",
                "base64",
            ),
        ];
        for (body, expected) in cases {
            let path = dir.path().join("kubeconfig");
            std::fs::write(&path, format!("apiVersion: v1\nkind: Config\n{body}")).unwrap();
            let shown = match client(Some(&path)).await {
                Ok(_) => panic!("{body}: a client"),
                Err(error) => error.to_string(),
            };
            assert!(shown.contains(expected), "{shown}");
            for secret in ["Canary", "token", "symbol"] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
        }
    }
}
