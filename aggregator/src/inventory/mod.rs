//! Inventory: the first stage of the data flow. What runs (workloads and their
//! containers), and what they can authenticate with (pull secrets, service accounts),
//! reduced to the few fields a check needs.
//!
//! Sources fill an [`Inventory`]; [`manifests`] reads it from YAML files. The reduction
//! from Kubernetes objects lives here so every source reduces the same way.

pub mod manifests;

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pullwatch::DockerConfig;
use serde::Serialize;

/// The workload kinds pullwatch watches, named as in the metric `kind` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
    CronJob,
    Job,
    Pod,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 6] = [
        WorkloadKind::Deployment,
        WorkloadKind::StatefulSet,
        WorkloadKind::DaemonSet,
        WorkloadKind::CronJob,
        WorkloadKind::Job,
        WorkloadKind::Pod,
    ];

    /// Lowercase, as in the `kind` label and the legacy metric names.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployment",
            WorkloadKind::StatefulSet => "statefulset",
            WorkloadKind::DaemonSet => "daemonset",
            WorkloadKind::CronJob => "cronjob",
            WorkloadKind::Job => "job",
            WorkloadKind::Pod => "pod",
        }
    }

    /// Parses a kind name case-insensitively (`Deployment`, `deployment`).
    pub fn parse(name: &str) -> Option<WorkloadKind> {
        WorkloadKind::ALL
            .into_iter()
            .find(|kind| kind.as_str().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One container's image, as written in the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerImage {
    pub container: String,
    pub image: String,
}

/// A workload reduced to what a check needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    pub kind: WorkloadKind,
    pub name: String,
    /// Init, regular and ephemeral containers, in that order.
    pub containers: Vec<ContainerImage>,
    /// `imagePullSecrets` of the pod (template), in order.
    pub pull_secrets: Vec<String>,
    /// `serviceAccountName`, `default` when unset.
    pub service_account: String,
    /// False for replicas 0, a suspended CronJob, a DaemonSet scheduled nowhere.
    pub enabled: bool,
}

/// The credentials a pull secret carries, or why it carries none.
#[derive(Clone, Debug)]
pub enum SecretCredentials {
    Parsed(DockerConfig),
    /// The secret has a docker config type but its payload does not parse.
    Broken(String),
}

/// Everything the index needs, from any source.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub workloads: Vec<Workload>,
    /// (namespace, name) -> credentials of docker config secrets.
    pub secrets: BTreeMap<(String, String), SecretCredentials>,
    /// (namespace, name) -> the service account's imagePullSecrets.
    pub service_accounts: BTreeMap<(String, String), Vec<String>>,
    /// namespace -> labels, for `--namespace-label`.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

/// A Kubernetes object the inventory understands, before reduction.
pub enum KubeObject {
    Deployment(Box<Deployment>),
    StatefulSet(Box<StatefulSet>),
    DaemonSet(Box<DaemonSet>),
    CronJob(Box<CronJob>),
    Job(Box<Job>),
    Pod(Box<Pod>),
    Secret(Box<Secret>),
    ServiceAccount(Box<ServiceAccount>),
    Namespace(Box<Namespace>),
}

type ConfigParser = fn(&[u8]) -> Result<DockerConfig, pullwatch::credentials::CredentialError>;

const DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
const DOCKER_CFG: &str = "kubernetes.io/dockercfg";

impl Inventory {
    /// Adds one object; objects that carry nothing for pullwatch (a Pod owned by a
    /// controller, a Job owned by a CronJob, a Secret of another type) are skipped
    /// with a debug log.
    pub fn add(&mut self, object: KubeObject) {
        match object {
            KubeObject::Deployment(d) => {
                let spec = d.spec.as_ref();
                let enabled = spec.and_then(|s| s.replicas).is_none_or(|r| r > 0);
                let pod = spec.and_then(|s| s.template.spec.as_ref());
                self.add_workload(&d.metadata, WorkloadKind::Deployment, pod, enabled);
            }
            KubeObject::StatefulSet(s) => {
                let spec = s.spec.as_ref();
                let enabled = spec.and_then(|s| s.replicas).is_none_or(|r| r > 0);
                let pod = spec.and_then(|s| s.template.spec.as_ref());
                self.add_workload(&s.metadata, WorkloadKind::StatefulSet, pod, enabled);
            }
            KubeObject::DaemonSet(d) => {
                // Without a status (a manifest file) we cannot know; assume it runs.
                let enabled = d
                    .status
                    .as_ref()
                    .is_none_or(|s| s.desired_number_scheduled > 0);
                let pod = d.spec.as_ref().and_then(|s| s.template.spec.as_ref());
                self.add_workload(&d.metadata, WorkloadKind::DaemonSet, pod, enabled);
            }
            KubeObject::CronJob(c) => {
                let spec = c.spec.as_ref();
                let enabled = !spec.and_then(|s| s.suspend).unwrap_or(false);
                let pod = spec
                    .and_then(|s| s.job_template.spec.as_ref())
                    .and_then(|j| j.template.spec.as_ref());
                self.add_workload(&c.metadata, WorkloadKind::CronJob, pod, enabled);
            }
            KubeObject::Job(j) => {
                if owned_by(&j.metadata, Some("CronJob")) {
                    tracing::debug!(name = ?j.metadata.name, "skipping Job owned by a CronJob: the CronJob covers it");
                    return;
                }
                let enabled = !j.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
                let pod = j.spec.as_ref().and_then(|s| s.template.spec.as_ref());
                self.add_workload(&j.metadata, WorkloadKind::Job, pod, enabled);
            }
            KubeObject::Pod(p) => {
                if owned_by(&p.metadata, None) {
                    tracing::debug!(name = ?p.metadata.name, "skipping Pod with a controller: its controller covers it");
                    return;
                }
                self.add_workload(&p.metadata, WorkloadKind::Pod, p.spec.as_ref(), true);
            }
            KubeObject::Secret(s) => self.add_secret(&s),
            KubeObject::ServiceAccount(sa) => {
                let key = (namespace_of(&sa.metadata), name_of(&sa.metadata));
                let secrets = sa
                    .image_pull_secrets
                    .iter()
                    .flatten()
                    .map(|r| r.name.clone())
                    .filter(|n| !n.is_empty())
                    .collect();
                self.service_accounts.insert(key, secrets);
            }
            KubeObject::Namespace(ns) => {
                let labels = ns.metadata.labels.clone().unwrap_or_default();
                self.namespaces.insert(name_of(&ns.metadata), labels);
            }
        }
    }

    fn add_workload(
        &mut self,
        meta: &ObjectMeta,
        kind: WorkloadKind,
        pod: Option<&PodSpec>,
        enabled: bool,
    ) {
        let Some(pod) = pod else {
            tracing::warn!(%kind, name = ?meta.name, "workload has no pod spec; nothing to check");
            return;
        };
        self.workloads.push(Workload {
            namespace: namespace_of(meta),
            kind,
            name: name_of(meta),
            containers: containers_of(pod),
            pull_secrets: pod
                .image_pull_secrets
                .iter()
                .flatten()
                .map(|r| r.name.clone())
                .filter(|n| !n.is_empty())
                .collect(),
            service_account: pod
                .service_account_name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".to_string()),
            enabled,
        });
    }

    fn add_secret(&mut self, secret: &Secret) {
        let secret_type = secret.type_.as_deref().unwrap_or_default();
        let (field, parse): (&str, ConfigParser) = match secret_type {
            DOCKER_CONFIG_JSON => (".dockerconfigjson", DockerConfig::from_config_json),
            DOCKER_CFG => (".dockercfg", DockerConfig::from_dockercfg),
            _ => return,
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
            None => SecretCredentials::Broken(format!(
                "secret of type {secret_type} has no {field} key"
            )),
            Some(bytes) => match parse(&bytes) {
                Ok(config) => SecretCredentials::Parsed(config),
                Err(err) => SecretCredentials::Broken(err.to_string()),
            },
        };
        if let SecretCredentials::Broken(why) = &credentials {
            tracing::warn!(namespace = %key.0, secret = %key.1, reason = %why, "pull secret is unusable");
        }
        self.secrets.insert(key, credentials);
    }
}

/// True when the object has a controller owner (of `kind`, when given).
fn owned_by(meta: &ObjectMeta, kind: Option<&str>) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|owner| owner.controller == Some(true) && kind.is_none_or(|k| owner.kind == k))
}

fn namespace_of(meta: &ObjectMeta) -> String {
    meta.namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_string())
}

fn name_of(meta: &ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

fn containers_of(pod: &PodSpec) -> Vec<ContainerImage> {
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
        .map(|(name, image)| ContainerImage {
            container: name.clone(),
            // A container without an image is itself a bad image reference: keep it so it is reported.
            image: image.clone().unwrap_or_default(),
        })
        .collect()
}
