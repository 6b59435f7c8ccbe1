//! The resource types the test API server serves, and its discovery documents.

use serde_json::{Value, json};

/// One served resource type.
#[derive(Debug)]
pub(crate) struct ResourceDef {
    /// URL plural, e.g. `deployments`.
    pub plural: &'static str,
    /// Singular name as discovery reports it.
    pub singular: &'static str,
    /// API group, `""` for core.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Has a `status` subresource: create resets status, update keeps it.
    pub status_subresource: bool,
    /// Has a spec whose changes bump `metadata.generation`.
    pub generation: bool,
    /// Field selector labels the real API server accepts, besides `metadata.name` and
    /// `metadata.namespace`, with the JSON pointer of each value.
    pub fields: &'static [(&'static str, &'static str)],
    pub short_names: &'static [&'static str],
}

impl ResourceDef {
    /// `apps/v1` or `v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployments.apps` or `pods`, as error messages name the resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

const POD_FIELDS: &[(&str, &str)] = &[
    ("spec.nodeName", "/spec/nodeName"),
    ("spec.restartPolicy", "/spec/restartPolicy"),
    ("spec.schedulerName", "/spec/schedulerName"),
    ("spec.serviceAccountName", "/spec/serviceAccountName"),
    ("spec.hostNetwork", "/spec/hostNetwork"),
    ("status.phase", "/status/phase"),
    ("status.podIP", "/status/podIP"),
    ("status.nominatedNodeName", "/status/nominatedNodeName"),
];

/// Every resource type served. Order is discovery order.
pub(crate) const RESOURCES: &[ResourceDef] = &[
    ResourceDef {
        plural: "namespaces",
        singular: "namespace",
        group: "",
        version: "v1",
        kind: "Namespace",
        namespaced: false,
        status_subresource: true,
        generation: false,
        fields: &[("status.phase", "/status/phase")],
        short_names: &["ns"],
    },
    ResourceDef {
        plural: "nodes",
        singular: "node",
        group: "",
        version: "v1",
        kind: "Node",
        namespaced: false,
        status_subresource: true,
        generation: false,
        fields: &[("spec.unschedulable", "/spec/unschedulable")],
        short_names: &["no"],
    },
    ResourceDef {
        plural: "pods",
        singular: "pod",
        group: "",
        version: "v1",
        kind: "Pod",
        namespaced: true,
        status_subresource: true,
        generation: false,
        fields: POD_FIELDS,
        short_names: &["po"],
    },
    ResourceDef {
        plural: "secrets",
        singular: "secret",
        group: "",
        version: "v1",
        kind: "Secret",
        namespaced: true,
        status_subresource: false,
        generation: false,
        fields: &[("type", "/type")],
        short_names: &[],
    },
    ResourceDef {
        plural: "serviceaccounts",
        singular: "serviceaccount",
        group: "",
        version: "v1",
        kind: "ServiceAccount",
        namespaced: true,
        status_subresource: false,
        generation: false,
        fields: &[],
        short_names: &["sa"],
    },
    ResourceDef {
        plural: "configmaps",
        singular: "configmap",
        group: "",
        version: "v1",
        kind: "ConfigMap",
        namespaced: true,
        status_subresource: false,
        generation: false,
        fields: &[],
        short_names: &["cm"],
    },
    ResourceDef {
        plural: "deployments",
        singular: "deployment",
        group: "apps",
        version: "v1",
        kind: "Deployment",
        namespaced: true,
        status_subresource: true,
        generation: true,
        fields: &[],
        short_names: &["deploy"],
    },
    ResourceDef {
        plural: "statefulsets",
        singular: "statefulset",
        group: "apps",
        version: "v1",
        kind: "StatefulSet",
        namespaced: true,
        status_subresource: true,
        generation: true,
        fields: &[],
        short_names: &["sts"],
    },
    ResourceDef {
        plural: "daemonsets",
        singular: "daemonset",
        group: "apps",
        version: "v1",
        kind: "DaemonSet",
        namespaced: true,
        status_subresource: true,
        generation: true,
        fields: &[],
        short_names: &["ds"],
    },
    ResourceDef {
        plural: "replicasets",
        singular: "replicaset",
        group: "apps",
        version: "v1",
        kind: "ReplicaSet",
        namespaced: true,
        status_subresource: true,
        generation: true,
        fields: &[],
        short_names: &["rs"],
    },
    ResourceDef {
        plural: "cronjobs",
        singular: "cronjob",
        group: "batch",
        version: "v1",
        kind: "CronJob",
        namespaced: true,
        status_subresource: true,
        generation: true,
        fields: &[],
        short_names: &["cj"],
    },
    ResourceDef {
        plural: "jobs",
        singular: "job",
        group: "batch",
        version: "v1",
        kind: "Job",
        namespaced: true,
        status_subresource: true,
        generation: true,
        fields: &[("status.successful", "/status/succeeded")],
        short_names: &[],
    },
];

/// Index of the resource served at `group`/`version`/`plural`.
pub(crate) fn find(group: &str, version: &str, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Index of the resource with this group and plural (any version), for the Rust hooks.
pub(crate) fn find_by_plural(group: &str, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.plural == plural)
}

/// The `(group, version)` pairs served, core first.
fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

const VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

fn status_verbs() -> Value {
    json!(["get", "patch", "update"])
}

/// `GET /api`: `APIVersions`.
pub(crate) fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// `GET /apis`: `APIGroupList` of the named groups.
pub(crate) fn api_group_list() -> Value {
    let mut groups: Vec<Value> = Vec::new();
    for (group, version) in group_versions() {
        if group.is_empty() {
            continue;
        }
        let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
        groups.push(json!({
            "name": group,
            "versions": [gv.clone()],
            "preferredVersion": gv,
        }));
    }
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/{group}`: `APIGroup`, or None when the group is not served.
pub(crate) fn api_group(group: &str) -> Option<Value> {
    let (_, version) = group_versions().into_iter().find(|(g, _)| *g == group)?;
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    Some(json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": [gv.clone()],
        "preferredVersion": gv,
    }))
}

/// `GET /api/v1` or `/apis/{group}/{version}`: `APIResourceList`, or None when not served.
pub(crate) fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources: Vec<Value> = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
            "shortNames": r.short_names,
        }));
        if r.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": status_verbs(),
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

/// Aggregated discovery (`Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`)
/// for `/api` (`core` true) or `/apis`.
pub(crate) fn aggregated_discovery(core: bool) -> Value {
    let mut items: Vec<Value> = Vec::new();
    for (group, version) in group_versions() {
        if group.is_empty() != core {
            continue;
        }
        let resources: Vec<Value> = RESOURCES
            .iter()
            .filter(|r| r.group == group && r.version == version)
            .map(|r| {
                let kind = json!({"group": group, "version": version, "kind": r.kind});
                let subresources: Vec<Value> = if r.status_subresource {
                    vec![json!({
                        "subresource": "status",
                        "responseKind": kind.clone(),
                        "verbs": status_verbs(),
                    })]
                } else {
                    Vec::new()
                };
                json!({
                    "resource": r.plural,
                    "responseKind": kind,
                    "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                    "singularResource": r.singular,
                    "verbs": VERBS,
                    "shortNames": r.short_names,
                    "subresources": subresources,
                })
            })
            .collect();
        let metadata = if group.is_empty() {
            json!({"creationTimestamp": null})
        } else {
            json!({"name": group, "creationTimestamp": null})
        };
        items.push(json!({
            "metadata": metadata,
            "versions": [{"version": version, "resources": resources, "freshness": "Current"}],
        }));
    }
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

/// `GET /version`.
pub(crate) fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "emulationMajor": "1",
        "emulationMinor": "33",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "32",
        "gitVersion": "v1.33.0-pullwatch-test",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}
