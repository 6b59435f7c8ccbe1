//! What running pods run: per pod container, the manifest digest its runtime reports
//! (`status.containerStatuses[].imageID`), and nothing else of the status. Compared
//! with what the tag resolves to now, it says whether a restart (or a new node) would
//! run different code than the running pods: a moved tag.
//!
//! Kept compact: per pod its workload and one (container, image, digest) triple per
//! container with a digest; the strings shared (`Arc<str>`) with the per-workload
//! counts.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use super::WorkloadKind;

/// (namespace, kind, workload name, container, image as written in the spec).
pub(crate) type RunningKey = (Arc<str>, WorkloadKind, Arc<str>, Arc<str>, Arc<str>);

/// One pod: the key of each of its containers that reported a digest, and the digest.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PodDigests {
    containers: Vec<(RunningKey, Arc<str>)>,
}

/// Digests running pods run, by workload container.
#[derive(Clone, Debug, Default)]
pub(crate) struct RunningDigests {
    /// (namespace, pod name) -> its containers' digests.
    pods: BTreeMap<(String, String), PodDigests>,
    /// Workload container -> digest -> running containers with it.
    by_workload: BTreeMap<RunningKey, BTreeMap<Arc<str>, u32>>,
}

impl RunningDigests {
    /// Records what `pod` runs, replacing what was known about it. A pod that is not
    /// running (pending, finished) runs nothing. Returns whether anything changed.
    pub(crate) fn apply(&mut self, namespace: &str, name: &str, pod: &Pod) -> bool {
        let digests = Self::digests_of(namespace, name, pod);
        let key = (namespace.to_string(), name.to_string());
        if self.pods.get(&key).map(|p| &p.containers) == Some(&digests) {
            return false;
        }
        let had = self.remove(namespace, name);
        if digests.is_empty() {
            return had;
        }
        let mut containers = Vec::with_capacity(digests.len());
        for (running, digest) in digests {
            // Share the strings already held for this workload container and digest.
            let running = match self.by_workload.get_key_value(&running) {
                Some((existing, _)) => existing.clone(),
                None => running,
            };
            let counts = self.by_workload.entry(running.clone()).or_default();
            let digest = match counts.get_key_value(&*digest) {
                Some((existing, _)) => existing.clone(),
                None => digest,
            };
            *counts.entry(digest.clone()).or_default() += 1;
            containers.push((running, digest));
        }
        self.pods.insert(key, PodDigests { containers });
        true
    }

    /// Forgets a pod. Returns whether it was known.
    pub(crate) fn remove(&mut self, namespace: &str, name: &str) -> bool {
        let Some(pod) = self.pods.remove(&(namespace.to_string(), name.to_string())) else {
            return false;
        };
        for (running, digest) in pod.containers {
            if let Some(digests) = self.by_workload.get_mut(&running) {
                if let Some(count) = digests.get_mut(&digest) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        digests.remove(&digest);
                    }
                }
                if digests.is_empty() {
                    self.by_workload.remove(&running);
                }
            }
        }
        true
    }

    /// Drops every pod whose (namespace, name) is not in `seen` (a relist).
    pub(crate) fn retain_seen(&mut self, seen: &HashSet<(String, String)>) {
        for (namespace, name) in super::unseen(&self.pods, seen) {
            self.remove(&namespace, &name);
        }
    }

    /// The digests running containers of a workload container run, with counts; None
    /// when no running pod of it reported one.
    pub(crate) fn digests(
        &self,
        namespace: &str,
        kind: WorkloadKind,
        name: &str,
        container: &str,
        image: &str,
    ) -> Option<&BTreeMap<Arc<str>, u32>> {
        let key: RunningKey = (
            Arc::from(namespace),
            kind,
            Arc::from(name),
            Arc::from(container),
            Arc::from(image),
        );
        self.by_workload.get(&key)
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// The (workload container, digest) pairs of a running pod, sorted.
    fn digests_of(namespace: &str, name: &str, pod: &Pod) -> Vec<(RunningKey, Arc<str>)> {
        let (Some(spec), Some(status)) = (pod.spec.as_ref(), pod.status.as_ref()) else {
            return Vec::new();
        };
        if status.phase.as_deref() != Some("Running") {
            return Vec::new();
        }
        let Some((kind, workload)) = workload_of(pod, name) else {
            return Vec::new();
        };
        let images: BTreeMap<&str, &str> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .filter_map(|c| c.image.as_deref().map(|i| (c.name.as_str(), i)))
            .chain(
                spec.ephemeral_containers
                    .iter()
                    .flatten()
                    .filter_map(|c| c.image.as_deref().map(|i| (c.name.as_str(), i))),
            )
            .collect();
        let statuses = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten())
            .chain(status.ephemeral_container_statuses.iter().flatten());
        let mut out = Vec::new();
        for container in statuses {
            let (Some(image), Some(digest)) = (
                images.get(container.name.as_str()),
                running_digest(container),
            ) else {
                continue;
            };
            let key: RunningKey = (
                Arc::from(namespace),
                kind,
                Arc::from(workload.as_str()),
                Arc::from(container.name.as_str()),
                Arc::from(*image),
            );
            out.push((key, Arc::from(digest)));
        }
        out.sort();
        out.dedup();
        out
    }
}

/// The digest a container runs: `imageID` with the runtime's scheme prefix stripped
/// (`docker-pullable://`), the part after `@`. A bare image ID (`sha256:...` of the
/// config, for an image the runtime holds without a repo digest) names no manifest
/// and is not comparable: None. So is a container that has not started.
pub(crate) fn running_digest(status: &ContainerStatus) -> Option<&str> {
    let id = status.image_id.as_str();
    let id = id.split_once("://").map_or(id, |(_, rest)| rest);
    let (_, digest) = id.rsplit_once('@')?;
    digest.contains(':').then_some(digest)
}

/// The watched workload a pod belongs to: itself when it has no controller; the
/// Deployment of its ReplicaSet (named `<deployment>-<pod-template-hash>` by the
/// Deployment controller); its StatefulSet, DaemonSet or Job. Pods of other
/// controllers (and of a CronJob's Jobs, whose CronJob the pod does not name) are
/// not attributed.
fn workload_of(pod: &Pod, name: &str) -> Option<(WorkloadKind, String)> {
    let meta = &pod.metadata;
    let Some((kind, owner)) = super::owners::controller_of(meta) else {
        return Some((WorkloadKind::Pod, name.to_string()));
    };
    match kind {
        "ReplicaSet" => {
            let hash = meta.labels.as_ref()?.get("pod-template-hash")?;
            let deployment = owner.strip_suffix(&format!("-{hash}"))?;
            Some((WorkloadKind::Deployment, deployment.to_string()))
        }
        "StatefulSet" => Some((WorkloadKind::StatefulSet, owner.to_string())),
        "DaemonSet" => Some((WorkloadKind::DaemonSet, owner.to_string())),
        "Job" => Some((WorkloadKind::Job, owner.to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn status(name: &str, image_id: &str) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            image_id: image_id.into(),
            ..Default::default()
        }
    }

    /// A running pod of Deployment `web` (through ReplicaSet `web-abc`) whose container
    /// `app` runs `image_id`.
    fn pod(phase: &str, image_id: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                owner_references: Some(vec![OwnerReference {
                    kind: "ReplicaSet".into(),
                    name: "web-abc".into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                labels: Some([("pod-template-hash".to_string(), "abc".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("reg.io/app:v1".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: Some(vec![status("app", image_id)]),
                ..Default::default()
            }),
        }
    }

    fn digests_of_web(running: &RunningDigests) -> Option<Vec<(String, u32)>> {
        running
            .digests(
                "ns",
                WorkloadKind::Deployment,
                "web",
                "app",
                "reg.io/app:v1",
            )
            .map(|d| d.iter().map(|(k, v)| (k.to_string(), *v)).collect())
    }

    #[test]
    fn image_ids_as_runtimes_write_them() {
        for (id, digest) in [
            ("reg.io/app@sha256:aa", Some("sha256:aa")),
            ("docker-pullable://nginx@sha256:bb", Some("sha256:bb")),
            ("docker.io/library/nginx@sha256:cc", Some("sha256:cc")),
            // A bare image (config) ID names no manifest.
            ("sha256:dd", None),
            ("docker://sha256:ee", None),
            ("", None),
        ] {
            assert_eq!(running_digest(&status("c", id)), digest, "{id}");
        }
    }

    #[test]
    fn running_pods_count_per_digest_and_leave_when_they_go() {
        let mut running = RunningDigests::default();
        assert!(running.apply("ns", "web-abc-1", &pod("Running", "reg.io/app@sha256:aa")));
        assert!(!running.apply("ns", "web-abc-1", &pod("Running", "reg.io/app@sha256:aa")));
        assert!(running.apply("ns", "web-abc-2", &pod("Running", "reg.io/app@sha256:aa")));
        assert!(running.apply("ns", "web-abc-3", &pod("Running", "reg.io/app@sha256:bb")));
        assert_eq!(
            digests_of_web(&running),
            Some(vec![("sha256:aa".into(), 2), ("sha256:bb".into(), 1)])
        );
        // A pod that stopped running runs nothing.
        assert!(running.apply("ns", "web-abc-3", &pod("Succeeded", "reg.io/app@sha256:bb")));
        assert_eq!(
            digests_of_web(&running),
            Some(vec![("sha256:aa".into(), 2)])
        );
        assert!(running.remove("ns", "web-abc-1"));
        running.retain_seen(&HashSet::new());
        assert_eq!(digests_of_web(&running), None);
        assert!(running.is_empty());
        // Pending pods and pods without a digest are not counted.
        assert!(!running.apply("ns", "p", &pod("Pending", "reg.io/app@sha256:aa")));
        assert!(!running.apply("ns", "p", &pod("Running", "sha256:config")));
    }

    #[test]
    fn pods_are_attributed_to_their_watched_workload() {
        let mut bare = pod("Running", "r@sha256:aa");
        bare.metadata.owner_references = None;
        assert_eq!(
            workload_of(&bare, "solo"),
            Some((WorkloadKind::Pod, "solo".into()))
        );
        assert_eq!(
            workload_of(&pod("Running", "r@sha256:aa"), "web-abc-1"),
            Some((WorkloadKind::Deployment, "web".into()))
        );
        // A ReplicaSet not named after a pod-template-hash is no Deployment's.
        let mut bare_rs = pod("Running", "r@sha256:aa");
        bare_rs.metadata.labels = None;
        assert_eq!(workload_of(&bare_rs, "x"), None);
        for (kind, expected) in [
            ("StatefulSet", Some(WorkloadKind::StatefulSet)),
            ("DaemonSet", Some(WorkloadKind::DaemonSet)),
            ("Job", Some(WorkloadKind::Job)),
            ("Rollout", None),
        ] {
            let mut p = pod("Running", "r@sha256:aa");
            if let Some(owners) = p.metadata.owner_references.as_mut() {
                owners[0].kind = kind.into();
                owners[0].name = "owner".into();
            }
            assert_eq!(workload_of(&p, "x").map(|(k, _)| k), expected, "{kind}");
        }
    }
}
