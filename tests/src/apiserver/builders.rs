//! Terse builders of k8s-openapi objects for tests.
//!
//! Images are given as `"nginx:1.25"` (container named `c0`, `c1`, ... by position) or
//! `"web=nginx:1.25"` (container named `web`; image references never contain `=`).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec, ReplicaSet, ReplicaSetSpec, StatefulSet,
    StatefulSetSpec,
};
use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerStatus, LocalObjectReference, Namespace, Node, Pod, PodSpec, PodStatus,
    PodTemplateSpec, Secret, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use serde_json::json;

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: (!ns.is_empty()).then(|| ns.to_owned()),
        ..ObjectMeta::default()
    }
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Splits `"name=image"`; a bare image is named `c{index}`.
pub fn container_name_and_image(index: usize, spec: &str) -> (String, String) {
    match spec.split_once('=') {
        Some((name, image)) => (name.to_owned(), image.to_owned()),
        None => (format!("c{index}"), spec.to_owned()),
    }
}

fn containers(images: &[&str]) -> Vec<Container> {
    images
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let (name, image) = container_name_and_image(i, spec);
            Container {
                name,
                image: Some(image),
                ..Container::default()
            }
        })
        .collect()
}

/// A pod spec running these images.
pub fn pod_spec(images: &[&str]) -> PodSpec {
    PodSpec {
        containers: containers(images),
        ..PodSpec::default()
    }
}

fn template(name: &str, images: &[&str], restart_policy: Option<&str>) -> PodTemplateSpec {
    let mut spec = pod_spec(images);
    spec.restart_policy = restart_policy.map(str::to_owned);
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(map(&[("app", name)])),
            ..ObjectMeta::default()
        }),
        spec: Some(spec),
    }
}

fn selector(name: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(map(&[("app", name)])),
        ..LabelSelector::default()
    }
}

/// A Deployment (1 replica, selector `app=<name>`).
pub fn deployment(ns: &str, name: &str, images: &[&str]) -> Deployment {
    Deployment {
        metadata: meta(ns, name),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: selector(name),
            template: template(name, images, None),
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// A StatefulSet (1 replica, service name = name).
pub fn statefulset(ns: &str, name: &str, images: &[&str]) -> StatefulSet {
    StatefulSet {
        metadata: meta(ns, name),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            selector: selector(name),
            service_name: Some(name.to_owned()),
            template: template(name, images, None),
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

/// A DaemonSet.
pub fn daemonset(ns: &str, name: &str, images: &[&str]) -> DaemonSet {
    DaemonSet {
        metadata: meta(ns, name),
        spec: Some(DaemonSetSpec {
            selector: selector(name),
            template: template(name, images, None),
            ..DaemonSetSpec::default()
        }),
        status: None,
    }
}

/// A ReplicaSet (1 replica).
pub fn replicaset(ns: &str, name: &str, images: &[&str]) -> ReplicaSet {
    ReplicaSet {
        metadata: meta(ns, name),
        spec: Some(ReplicaSetSpec {
            replicas: Some(1),
            selector: selector(name),
            template: Some(template(name, images, None)),
            ..ReplicaSetSpec::default()
        }),
        status: None,
    }
}

/// A CronJob every five minutes, not suspended.
pub fn cronjob(ns: &str, name: &str, images: &[&str]) -> CronJob {
    CronJob {
        metadata: meta(ns, name),
        spec: Some(CronJobSpec {
            schedule: "*/5 * * * *".to_owned(),
            suspend: Some(false),
            job_template: JobTemplateSpec {
                metadata: None,
                spec: Some(JobSpec {
                    template: template(name, images, Some("OnFailure")),
                    ..JobSpec::default()
                }),
            },
            ..CronJobSpec::default()
        }),
        status: None,
    }
}

/// A Job.
pub fn job(ns: &str, name: &str, images: &[&str]) -> Job {
    Job {
        metadata: meta(ns, name),
        spec: Some(JobSpec {
            template: template(name, images, Some("Never")),
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// A bare Pod (no owner).
pub fn pod(ns: &str, name: &str, images: &[&str]) -> Pod {
    Pod {
        metadata: meta(ns, name),
        spec: Some(pod_spec(images)),
        status: None,
    }
}

/// A Namespace with labels.
pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    let mut m = meta("", name);
    if !labels.is_empty() {
        m.labels = Some(map(labels));
    }
    Namespace {
        metadata: m,
        ..Namespace::default()
    }
}

/// A Node with labels.
pub fn node(name: &str, labels: &[(&str, &str)]) -> Node {
    let mut m = meta("", name);
    if !labels.is_empty() {
        m.labels = Some(map(labels));
    }
    Node {
        metadata: m,
        ..Node::default()
    }
}

/// A ServiceAccount with these image pull secrets.
pub fn service_account(ns: &str, name: &str, pull_secrets: &[&str]) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(ns, name),
        image_pull_secrets: (!pull_secrets.is_empty()).then(|| refs(pull_secrets)),
        ..ServiceAccount::default()
    }
}

fn refs(names: &[&str]) -> Vec<LocalObjectReference> {
    names
        .iter()
        .map(|n| LocalObjectReference {
            name: (*n).to_owned(),
        })
        .collect()
}

fn basic_auth(user: &str, password: &str) -> String {
    B64.encode(format!("{user}:{password}"))
}

/// A `kubernetes.io/dockerconfigjson` secret with one registry entry
/// (`{"auths":{host:{username,password,auth}}}`).
pub fn secret_dockerconfigjson(
    ns: &str,
    name: &str,
    host: &str,
    user: &str,
    password: &str,
) -> Secret {
    let config = json!({"auths": {host: {
        "username": user,
        "password": password,
        "auth": basic_auth(user, password),
    }}});
    Secret {
        metadata: meta(ns, name),
        type_: Some("kubernetes.io/dockerconfigjson".to_owned()),
        data: Some(BTreeMap::from([(
            ".dockerconfigjson".to_owned(),
            ByteString(config.to_string().into_bytes()),
        )])),
        ..Secret::default()
    }
}

/// A legacy `kubernetes.io/dockercfg` secret with one registry entry
/// (`{host:{username,password,auth,email}}`).
pub fn secret_dockercfg(ns: &str, name: &str, host: &str, user: &str, password: &str) -> Secret {
    let config = json!({host: {
        "username": user,
        "password": password,
        "auth": basic_auth(user, password),
        "email": "test@example.invalid",
    }});
    Secret {
        metadata: meta(ns, name),
        type_: Some("kubernetes.io/dockercfg".to_owned()),
        data: Some(BTreeMap::from([(
            ".dockercfg".to_owned(),
            ByteString(config.to_string().into_bytes()),
        )])),
        ..Secret::default()
    }
}

/// An `Opaque` secret with these keys and values.
pub fn secret_opaque(ns: &str, name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: meta(ns, name),
        type_: Some("Opaque".to_owned()),
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// Objects with a pod spec (their template's, for controllers).
pub trait PodSpecMut {
    /// The pod spec, created empty if absent.
    fn pod_spec_mut(&mut self) -> &mut PodSpec;
}

fn template_spec(t: &mut PodTemplateSpec) -> &mut PodSpec {
    t.spec.get_or_insert_with(PodSpec::default)
}

impl PodSpecMut for Deployment {
    fn pod_spec_mut(&mut self) -> &mut PodSpec {
        template_spec(&mut self.spec.get_or_insert_with(Default::default).template)
    }
}

impl PodSpecMut for StatefulSet {
    fn pod_spec_mut(&mut self) -> &mut PodSpec {
        template_spec(&mut self.spec.get_or_insert_with(Default::default).template)
    }
}

impl PodSpecMut for DaemonSet {
    fn pod_spec_mut(&mut self) -> &mut PodSpec {
        template_spec(&mut self.spec.get_or_insert_with(Default::default).template)
    }
}

impl PodSpecMut for ReplicaSet {
    fn pod_spec_mut(&mut self) -> &mut PodSpec {
        template_spec(
            self.spec
                .get_or_insert_with(Default::default)
                .template
                .get_or_insert_with(Default::default),
        )
    }
}

impl PodSpecMut for Job {
    fn pod_spec_mut(&mut self) -> &mut PodSpec {
        template_spec(&mut self.spec.get_or_insert_with(Default::default).template)
    }
}

impl PodSpecMut for CronJob {
    fn pod_spec_mut(&mut self) -> &mut PodSpec {
        template_spec(
            &mut self
                .spec
                .get_or_insert_with(Default::default)
                .job_template
                .spec
                .get_or_insert_with(Default::default)
                .template,
        )
    }
}

impl PodSpecMut for Pod {
    fn pod_spec_mut(&mut self) -> &mut PodSpec {
        self.spec.get_or_insert_with(PodSpec::default)
    }
}

/// Sets the pod spec's `imagePullSecrets`.
pub fn with_pull_secrets<T: PodSpecMut>(mut obj: T, secrets: &[&str]) -> T {
    obj.pod_spec_mut().image_pull_secrets = Some(refs(secrets));
    obj
}

/// Sets the pod spec's `serviceAccountName`.
pub fn with_service_account<T: PodSpecMut>(mut obj: T, service_account: &str) -> T {
    obj.pod_spec_mut().service_account_name = Some(service_account.to_owned());
    obj
}

/// Sets the pod spec's init containers (named `init0`... unless given as `name=image`).
pub fn with_init_images<T: PodSpecMut>(mut obj: T, images: &[&str]) -> T {
    let mut init = containers(images);
    for (i, c) in init.iter_mut().enumerate() {
        if !images[i].contains('=') {
            c.name = format!("init{i}");
        }
    }
    obj.pod_spec_mut().init_containers = Some(init);
    obj
}

/// Adds labels to the object's metadata.
pub fn with_labels<T>(mut obj: T, labels: &[(&str, &str)]) -> T
where
    T: k8s_openapi::Metadata<Ty = ObjectMeta>,
{
    obj.metadata_mut()
        .labels
        .get_or_insert_with(BTreeMap::new)
        .extend(map(labels));
    obj
}

/// Adds annotations to the object's metadata.
pub fn with_annotations<T>(mut obj: T, annotations: &[(&str, &str)]) -> T
where
    T: k8s_openapi::Metadata<Ty = ObjectMeta>,
{
    obj.metadata_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .extend(map(annotations));
    obj
}

/// A pod's status as its kubelet reports a running pod on `node`: phase `Running`,
/// and per container (in spec order) the image ID its runtime reports (`imageID`,
/// e.g. `registry/repo@sha256:...`).
pub fn running(mut pod: Pod, node: &str, image_ids: &[&str]) -> Pod {
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    spec.node_name = Some(node.to_owned());
    let statuses = spec
        .containers
        .iter()
        .zip(image_ids)
        .map(|(c, id)| ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            image_id: (*id).to_owned(),
            ready: true,
            ..ContainerStatus::default()
        })
        .collect();
    pod.status = Some(PodStatus {
        phase: Some("Running".to_owned()),
        container_statuses: Some(statuses),
        ..PodStatus::default()
    });
    pod
}

/// Makes `owner` the controller of `obj` (an ownerReference with `controller: true`). The
/// owner should have a uid, i.e. be the object the server returned.
pub fn with_owner<T, O>(obj: T, owner: &O) -> T
where
    T: k8s_openapi::Metadata<Ty = ObjectMeta>,
    O: k8s_openapi::Metadata<Ty = ObjectMeta>,
{
    let om = owner.metadata();
    with_controller(
        obj,
        O::API_VERSION,
        O::KIND,
        om.name.as_deref().unwrap_or_default(),
        om.uid.as_deref().unwrap_or_default(),
    )
}

/// Makes a controller named by its API version, kind, name and uid the controller of
/// `obj`: for owners the test server does not serve (an Argo Rollout, an operator's
/// custom resource).
pub fn with_controller<T>(mut obj: T, api_version: &str, kind: &str, name: &str, uid: &str) -> T
where
    T: k8s_openapi::Metadata<Ty = ObjectMeta>,
{
    obj.metadata_mut()
        .owner_references
        .get_or_insert_with(Vec::new)
        .push(OwnerReference {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        });
    obj
}

/// Objects with `spec.replicas`.
pub trait Replicated {
    /// Sets `spec.replicas`.
    fn set_replicas(&mut self, replicas: i32);
}

impl Replicated for Deployment {
    fn set_replicas(&mut self, replicas: i32) {
        self.spec.get_or_insert_with(Default::default).replicas = Some(replicas);
    }
}

impl Replicated for StatefulSet {
    fn set_replicas(&mut self, replicas: i32) {
        self.spec.get_or_insert_with(Default::default).replicas = Some(replicas);
    }
}

impl Replicated for ReplicaSet {
    fn set_replicas(&mut self, replicas: i32) {
        self.spec.get_or_insert_with(Default::default).replicas = Some(replicas);
    }
}

/// Sets `spec.replicas`.
pub fn with_replicas<T: Replicated>(mut obj: T, replicas: i32) -> T {
    obj.set_replicas(replicas);
    obj
}

/// Sets a CronJob's `spec.suspend`.
pub fn suspended(mut cronjob: CronJob, suspend: bool) -> CronJob {
    cronjob.spec.get_or_insert_with(Default::default).suspend = Some(suspend);
    cronjob
}
