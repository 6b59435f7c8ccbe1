//! Inventory from manifest files: a file or a directory of `.yaml`/`.yml`/`.json`
//! files, each holding one or more YAML documents, `kind: List` included (as printed
//! by `kubectl get -o yaml`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::{Inventory, KubeObject, PodPlacements, WorkloadKind, owners};

/// Why the manifests could not be read. Every variant names the file, and the line
/// where there is one.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: invalid YAML: {message}")]
    Yaml {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}:{line}: invalid {}: {message}", what_object(kind, name))]
    Object {
        path: PathBuf,
        line: usize,
        kind: String,
        name: String,
        message: String,
    },
    #[error("{path}: no .yaml, .yml or .json files found")]
    Empty { path: PathBuf },
    #[error(
        "{path} is not a regular file or a directory: serve re-reads the manifests every --check-interval, and a pipe gives its content once"
    )]
    NotRereadable { path: PathBuf },
}

/// `Pod "web"`, or what is known of it: a document without kind or name is an
/// `object`.
fn what_object(kind: &str, name: &str) -> String {
    let kind = if kind.is_empty() { "object" } else { kind };
    if name.is_empty() {
        kind.to_string()
    } else {
        format!("{kind} {name:?}")
    }
}

/// `-f -`: standard input, as kubectl reads it.
const STDIN: &str = "/dev/stdin";

/// `path`, with `-` standing for standard input as in kubectl.
fn resolved(path: &Path) -> &Path {
    if path == Path::new("-") {
        Path::new(STDIN)
    } else {
        path
    }
}

/// Reads every manifest under `path` (`-`: standard input) into a fresh inventory.
pub fn load(path: &Path) -> Result<Inventory, ManifestError> {
    let path = resolved(path);
    let files = manifest_files(path)?;
    if files.is_empty() {
        return Err(ManifestError::Empty {
            path: path.to_path_buf(),
        });
    }
    let mut inventory = Inventory::default();
    let mut controlled = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Io {
            path: file.clone(),
            source,
        })?;
        read_text(&file, &text, &mut inventory, &mut controlled)?;
    }
    apply_controlled(&mut inventory, controlled);
    // A manifest says nothing about where pods run, whatever spec.nodeName it carries:
    // no node may be sent pull secrets on its word.
    inventory.placements = PodPlacements::default();
    // Nor about what runs: a status in a file is a snapshot, not the cluster.
    inventory.running = Default::default();
    Ok(inventory)
}

/// Refuses what cannot be read again (a pipe) for `serve`, which re-reads the
/// manifests every interval: read again, a pipe would be empty, and every series gone.
pub fn check_rereadable(path: &Path) -> Result<(), ManifestError> {
    let path = resolved(path);
    let meta = std::fs::metadata(path).map_err(|source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_file() || meta.is_dir() {
        Ok(())
    } else {
        Err(ManifestError::NotRereadable {
            path: path.to_path_buf(),
        })
    }
}

fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let io = |source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    // A file, or a pipe (`-f /dev/stdin`, `-f <(helm template ...)`): read as it is.
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    // Each directory and file once, by what it really is: a symlink loop ends, and a
    // file reached through two links is read once.
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut pending = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let real = std::fs::canonicalize(&dir).map_err(|source| ManifestError::Io {
            path: dir.clone(),
            source,
        })?;
        if !seen.insert(real) {
            continue;
        }
        let entries = std::fs::read_dir(&dir).map_err(|source| ManifestError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| ManifestError::Io {
                path: dir.clone(),
                source,
            })?;
            // A mounted ConfigMap or Secret holds each file three times: as a link at
            // the top, under the `..data` link, and in a `..<timestamp>` directory.
            // The top-level links are the files; the `..` entries are the kubelet's.
            if entry.file_name().to_string_lossy().starts_with("..") {
                continue;
            }
            let entry_path = entry.path();
            if entry_path.is_dir() {
                pending.push(entry_path);
            } else if entry_path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            {
                // A dangling link is kept: reading it reports it, naming it.
                let first =
                    std::fs::canonicalize(&entry_path).map_or(true, |real| seen.insert(real));
                if first {
                    files.push(entry_path);
                }
            }
        }
    }
    // Deterministic order: the same directory always yields the same inventory.
    files.sort();
    Ok(files)
}

/// Parses one file's text (any number of documents) into `inventory`.
pub fn load_text(path: &Path, text: &str, inventory: &mut Inventory) -> Result<(), ManifestError> {
    let mut controlled = Vec::new();
    read_text(path, text, inventory, &mut controlled)?;
    apply_controlled(inventory, controlled);
    Ok(())
}

/// [`load_text`], with the Pods and Jobs a controller of a watched kind controls set
/// aside in `controlled`: whether that controller is in the files is known only once
/// every file is read.
fn read_text(
    path: &Path,
    text: &str,
    inventory: &mut Inventory,
    controlled: &mut Vec<KubeObject>,
) -> Result<(), ManifestError> {
    // A byte order mark may open a YAML stream (editors on Windows write one).
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (first_line, document) in split_documents(text) {
        let yaml_error = |err: serde_yaml::Error| ManifestError::Yaml {
            path: path.to_path_buf(),
            line: first_line + err.location().map_or(0, |l| l.line().saturating_sub(1)),
            message: without_location(&err.to_string()),
        };
        let mut value: Value = serde_yaml::from_str(document).map_err(yaml_error)?;
        // Merge keys (`<<: *base`), as kubectl's YAML reader applies them: unapplied,
        // a container would be read without the fields it takes from its anchor.
        value.apply_merge().map_err(yaml_error)?;
        add_value(path, first_line, value, inventory, controlled)?;
    }
    Ok(())
}

/// Splits a YAML stream at `---` lines, returning each document with its first line
/// number (1-based), so errors inside a document point at the right line of the file.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut documents = Vec::new();
    let mut start_offset = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed == "..." {
            documents.push((start_line, &text[start_offset..offset]));
            start_offset = offset + line.len();
            start_line = index + 2;
        } else if trimmed.starts_with("--- ") || trimmed.starts_with("---\t") {
            // `--- {kind: Pod, ...}`: the next document starts on the separator line.
            documents.push((start_line, &text[start_offset..offset]));
            start_offset = offset + "---".len();
            start_line = index + 1;
        }
        offset += line.len();
    }
    documents.push((start_line, &text[start_offset..]));
    documents
}

fn without_location(message: &str) -> String {
    // serde_yaml appends "at line X column Y" relative to the document; we report the file line instead.
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

fn add_value(
    path: &Path,
    line: usize,
    value: Value,
    inventory: &mut Inventory,
    controlled: &mut Vec<KubeObject>,
) -> Result<(), ManifestError> {
    if value.is_null() {
        return Ok(());
    }
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let invalid = |message: String| ManifestError::Object {
        path: path.to_path_buf(),
        line,
        kind: kind.clone(),
        name: name.clone(),
        message,
    };
    fn typed<T: DeserializeOwned>(
        value: Value,
        invalid: impl Fn(String) -> ManifestError,
    ) -> Result<Box<T>, ManifestError> {
        serde_yaml::from_value(value)
            .map(Box::new)
            .map_err(|err| invalid(without_location(&err.to_string())))
    }

    let object = match (api_version.as_str(), kind.as_str()) {
        (_, "List") => {
            let items = match value.get("items") {
                Some(Value::Sequence(items)) => items.clone(),
                Some(Value::Null) | None => Vec::new(),
                Some(_) => return Err(invalid("items must be a list".to_string())),
            };
            for item in items {
                add_value(path, line, item, inventory, controlled)?;
            }
            return Ok(());
        }
        // A typed list, as the API server answers a list (`StatefulSetList`): its
        // items carry no kind or apiVersion of their own. A kind that only ends in
        // "List" without a list of items is some other kind, skipped below.
        (_, typed_list)
            if typed_list.len() > "List".len()
                && typed_list.ends_with("List")
                && matches!(value.get("items"), Some(Value::Sequence(_))) =>
        {
            let item_kind = typed_list.strip_suffix("List").unwrap_or(typed_list);
            let items = match value.get("items") {
                Some(Value::Sequence(items)) => items.clone(),
                _ => Vec::new(),
            };
            for mut item in items {
                // A list's items are objects; a custom kind named `...List` with other
                // items is not a list, and says nothing pullwatch checks.
                let Value::Mapping(fields) = &mut item else {
                    continue;
                };
                if !fields.contains_key("kind") {
                    fields.insert("kind".into(), item_kind.into());
                }
                if !fields.contains_key("apiVersion") {
                    fields.insert("apiVersion".into(), api_version.as_str().into());
                }
                add_value(path, line, item, inventory, controlled)?;
            }
            return Ok(());
        }
        ("apps/v1", "Deployment") => KubeObject::Deployment(typed(value, invalid)?),
        ("apps/v1", "StatefulSet") => KubeObject::StatefulSet(typed(value, invalid)?),
        ("apps/v1", "DaemonSet") => KubeObject::DaemonSet(typed(value, invalid)?),
        ("batch/v1", "CronJob") => KubeObject::CronJob(typed(value, invalid)?),
        ("batch/v1", "Job") => KubeObject::Job(typed(value, invalid)?),
        ("v1", "Pod") => KubeObject::Pod(typed(value, invalid)?),
        ("v1", "Secret") => match unreadable_secret_value(&value) {
            // serde and base64 errors quote the value (`invalid type: string "..."`,
            // `Invalid symbol 45, offset 6`): a Secret's are said without it.
            Some(message) => return Err(invalid(message)),
            None => KubeObject::Secret(typed(value, invalid)?),
        },
        ("v1", "ServiceAccount") => KubeObject::ServiceAccount(typed(value, invalid)?),
        ("v1", "Namespace") => KubeObject::Namespace(typed(value, invalid)?),
        ("", _) | (_, "") if !value.is_mapping() => {
            return Err(invalid(
                "a document must be a Kubernetes object (a mapping)".to_string(),
            ));
        }
        ("", _) | (_, "") => {
            return Err(invalid("missing apiVersion or kind".to_string()));
        }
        (api_version, kind) => {
            tracing::debug!(path = %path.display(), line, api_version, kind, %name, "skipping a kind pullwatch does not check");
            return Ok(());
        }
    };
    if watched_controller(&object).is_some() {
        controlled.push(object);
        return Ok(());
    }
    // Files are read whole; the caller rebuilds the index after every load.
    let _ = inventory.apply(object);
    Ok(())
}

/// The controller (kind, name) of a Pod or Job when it is of a kind pullwatch checks
/// itself (a StatefulSet, a CronJob...), which then covers the Pod or Job.
fn watched_controller(object: &KubeObject) -> Option<(WorkloadKind, String)> {
    let meta = match object {
        KubeObject::Pod(p) => &p.metadata,
        KubeObject::Job(j) => &j.metadata,
        _ => return None,
    };
    let (kind, name) = owners::controller_of(meta)?;
    let kind = WorkloadKind::of_controller(kind);
    kind.is_watched().then(|| (kind, name.to_string()))
}

/// Applies the Pods and Jobs set aside by [`read_text`]: covered by their controller
/// when the files hold it, else checked as themselves. In a cluster the controller
/// exists; a file may hold the Pods without it (`kubectl get pods -o yaml`), and
/// nothing would check them.
fn apply_controlled(inventory: &mut Inventory, controlled: Vec<KubeObject>) {
    // Jobs first: a Pod of a Job is covered when its Job is checked or covered.
    let (jobs, pods): (Vec<_>, Vec<_>) = controlled
        .into_iter()
        .partition(|o| matches!(o, KubeObject::Job(_)));
    let mut covered_jobs: HashSet<(String, String)> = HashSet::new();
    for object in jobs.into_iter().chain(pods) {
        let Some((kind, name)) = watched_controller(&object) else {
            continue;
        };
        let meta = match &object {
            KubeObject::Pod(p) => &p.metadata,
            KubeObject::Job(j) => &j.metadata,
            _ => continue,
        };
        let namespace = super::namespace_of(meta);
        let present = inventory.workloads.contains_key(&(
            kind,
            Arc::from(namespace.as_str()),
            Arc::from(name.as_str()),
        )) || (kind == WorkloadKind::Job
            && covered_jobs.contains(&(namespace.clone(), name.clone())));
        let object = if present {
            if let KubeObject::Job(_) = &object {
                covered_jobs.insert((namespace, super::name_of(meta)));
            }
            object
        } else {
            tracing::debug!(%namespace, name = %super::name_of(meta), controller = %kind, controller_name = %name, "its controller is not in the manifests: checked as itself");
            without_controller(object)
        };
        let _ = inventory.apply(object);
    }
}

/// `object` without its controller reference.
fn without_controller(object: KubeObject) -> KubeObject {
    let not_controller = |owner: &OwnerReference| owner.controller != Some(true);
    match object {
        KubeObject::Pod(mut p) => {
            if let Some(owners) = p.metadata.owner_references.as_mut() {
                owners.retain(not_controller);
            }
            KubeObject::Pod(p)
        }
        KubeObject::Job(mut j) => {
            if let Some(owners) = j.metadata.owner_references.as_mut() {
                owners.retain(not_controller);
            }
            KubeObject::Job(j)
        }
        other => other,
    }
}

/// Which value of a Secret's `data` (base64) or `stringData` (strings) cannot be read,
/// named by its key, never quoted.
fn unreadable_secret_value(secret: &Value) -> Option<String> {
    for field in ["data", "stringData"] {
        let entries = match secret.get(field) {
            None | Some(Value::Null) => continue,
            Some(Value::Mapping(entries)) => entries,
            Some(_) => return Some(format!("{field} must be a mapping of keys to values")),
        };
        for (key, value) in entries {
            let Some(key) = key.as_str() else {
                return Some(format!("{field} has a key that is not a string"));
            };
            let readable = if field == "data" {
                serde_yaml::from_value::<k8s_openapi::ByteString>(value.clone()).is_ok()
            } else {
                serde_yaml::from_value::<String>(value.clone()).is_ok()
            };
            if !readable {
                let expected = if field == "data" {
                    "base64"
                } else {
                    "a string"
                };
                return Some(format!(
                    "{field}[{key:?}] is not {expected} (its content is not shown)"
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{SecretCredentials, WorkloadKind};
    use k8s_openapi::api::core::v1::Pod;

    fn parse(text: &str) -> Result<Inventory, ManifestError> {
        let mut inventory = Inventory::default();
        load_text(Path::new("test.yaml"), text, &mut inventory)?;
        Ok(inventory)
    }

    /// The workloads read, as (kind, name), sorted.
    fn kinds_and_names(inventory: &Inventory) -> Vec<(&str, &str)> {
        let mut seen: Vec<_> = inventory
            .workloads
            .values()
            .map(|w| (w.kind.as_str(), &*w.name))
            .collect();
        seen.sort();
        seen
    }

    const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      serviceAccountName: web-sa
      imagePullSecrets: [{name: regcred}]
      initContainers: [{name: init, image: busybox}]
      containers: [{name: app, image: "registry.local:5000/web:v1"}]
"#;

    #[test]
    fn reads_workloads_with_all_containers() {
        let inv = parse(DEPLOYMENT).unwrap();
        assert_eq!(inv.workloads.len(), 1);
        let w = inv.workloads.values().next().unwrap();
        assert_eq!(
            (&*w.namespace, &*w.name, w.kind),
            ("shop", "web", WorkloadKind::Deployment)
        );
        let images: Vec<_> = w
            .containers
            .iter()
            .map(|c| (&*c.container, &*c.image))
            .collect();
        assert_eq!(
            images,
            [("init", "busybox"), ("app", "registry.local:5000/web:v1")]
        );
        assert_eq!(w.pull_secrets, [std::sync::Arc::from("regcred")]);
        assert_eq!(&*w.service_account, "web-sa");
        assert!(w.enabled);
    }

    #[test]
    fn multi_document_list_and_skips() {
        let text = format!(
            "{DEPLOYMENT}\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {{name: bare}}\n  spec:\n    containers: [{{name: c, image: nginx}}]\n    ephemeralContainers: [{{name: dbg, image: busybox:1.36}}]\n- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: owned\n    ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: rs, uid: u, controller: true}}]\n  spec:\n    containers: [{{name: c, image: nginx}}]\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ignored}}\n---\n"
        );
        let inv = parse(&text).unwrap();
        let names: Vec<_> = inv.workloads.values().map(|w| &*w.name).collect();
        assert_eq!(names, ["web", "bare"]);
        let bare = inv.workloads.values().nth(1).unwrap();
        assert_eq!(&*bare.namespace, "default");
        assert_eq!(bare.containers.len(), 2);
        assert_eq!(&*bare.service_account, "default");
    }

    /// A typed list as the API server returns it (`kubectl get --raw
    /// /apis/apps/v1/statefulsets`): any `<Kind>List`, whose items carry no kind or
    /// apiVersion of their own. A StatefulSetList was skipped as an unknown kind (exit
    /// 0, nothing checked), a DeploymentList's items refused ("missing apiVersion or
    /// kind").
    #[test]
    fn typed_lists_of_any_kind_and_their_kindless_items() {
        let text = r#"
apiVersion: apps/v1
kind: StatefulSetList
metadata: {resourceVersion: "1"}
items:
- metadata: {name: db, namespace: x}
  spec: {serviceName: db, selector: {}, template: {spec: {containers: [{name: c, image: reg.io/db:1}]}}}
---
apiVersion: apps/v1
kind: DeploymentList
items:
- metadata: {name: web, namespace: x}
  spec: {selector: {}, template: {spec: {containers: [{name: c, image: reg.io/web:1}]}}}
---
apiVersion: example.com/v1
kind: IPAllowList
metadata: {name: not-a-list}
spec: {items: 3}
---
apiVersion: example.com/v1
kind: PortList
metadata: {name: not-a-list-either}
items: [80, 443]
"#;
        let inv = parse(text).unwrap();
        assert_eq!(
            kinds_and_names(&inv),
            [("deployment", "web"), ("statefulset", "db")]
        );
    }

    #[test]
    fn disabled_workloads_and_cronjob_jobs() {
        let text = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 0
  serviceName: db
  selector: {matchLabels: {app: db}}
  template: {spec: {containers: [{name: db, image: postgres}]}}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "0 0 * * *"
  suspend: true
  jobTemplate: {spec: {template: {spec: {restartPolicy: Never, containers: [{name: j, image: alpine}]}}}}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: nightly-123
  ownerReferences: [{apiVersion: batch/v1, kind: CronJob, name: nightly, uid: u, controller: true}]
spec: {template: {spec: {restartPolicy: Never, containers: [{name: j, image: alpine}]}}}
"#;
        let inv = parse(text).unwrap();
        let seen: Vec<_> = inv
            .workloads
            .values()
            .map(|w| (w.kind, w.enabled))
            .collect();
        assert_eq!(
            seen,
            [
                (WorkloadKind::StatefulSet, false),
                (WorkloadKind::CronJob, false)
            ]
        );
    }

    #[test]
    fn secrets_and_service_accounts() {
        let text = r#"
apiVersion: v1
kind: Secret
metadata: {name: regcred, namespace: shop}
type: kubernetes.io/dockerconfigjson
stringData:
  .dockerconfigjson: '{"auths":{"registry.local:5000":{"username":"u","password":"p"}}}'
---
apiVersion: v1
kind: Secret
metadata: {name: broken, namespace: shop}
type: kubernetes.io/dockerconfigjson
data:
  .dockerconfigjson: bm90IGpzb24=
---
apiVersion: v1
kind: Secret
metadata: {name: tls, namespace: shop}
type: kubernetes.io/tls
data: {}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web-sa, namespace: shop}
imagePullSecrets: [{name: regcred}]
"#;
        let inv = parse(text).unwrap();
        assert!(matches!(
            inv.secrets[&("shop".into(), "regcred".into())].credentials,
            SecretCredentials::Parsed(ref c) if c.entries["registry.local:5000"].username == "u"
        ));
        assert!(matches!(
            inv.secrets[&("shop".into(), "broken".into())].credentials,
            SecretCredentials::Broken(_)
        ));
        assert_eq!(inv.secrets.len(), 2, "non-docker secrets are not kept");
        assert_eq!(
            inv.service_accounts[&("shop".into(), "web-sa".into())],
            ["regcred"]
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let err =
            parse("apiVersion: v1\nkind: Pod\n---\nkind: Pod\nmetadata: {name: x\n").unwrap_err();
        let shown = err.to_string();
        assert!(
            matches!(err, ManifestError::Yaml { line, .. } if line >= 5),
            "{shown}"
        );
        assert!(shown.starts_with("test.yaml:"), "{shown}");

        let err = parse("# comment\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: many}\n").unwrap_err();
        let shown = err.to_string();
        assert!(
            matches!(err, ManifestError::Object { line: 3, .. }),
            "{shown}"
        );
        assert!(
            shown.contains("Deployment") && shown.contains("\"d\""),
            "{shown}"
        );

        assert!(matches!(
            parse("- a\n- b\n").unwrap_err(),
            ManifestError::Object { .. }
        ));
        assert!(matches!(
            parse("metadata: {name: x}\n").unwrap_err(),
            ManifestError::Object { .. }
        ));
        // A document that is no Kubernetes object (a Helm values.yaml) says so, without
        // an empty kind and name (`invalid  "": ...`).
        let shown = parse("replicaCount: 1\n").unwrap_err().to_string();
        assert_eq!(
            shown,
            "test.yaml:1: invalid object: missing apiVersion or kind"
        );
        let shown = parse("kind: Pod\nmetadata: {name: x}\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            shown,
            "test.yaml:1: invalid Pod \"x\": missing apiVersion or kind"
        );
    }

    /// YAML a kubectl user writes: a document on its `---` line, merge keys, a byte
    /// order mark. None may be dropped or misread: a container silently left out, or
    /// read without the image its merge key gives it, would be a false verdict.
    #[test]
    fn documents_on_the_separator_line_merge_keys_and_a_bom() {
        let inline = "--- {apiVersion: v1, kind: Pod, metadata: {name: inline}, spec: {containers: [{name: c, image: \"reg.io/a:1\"}]}}\n--- # a comment\napiVersion: v1\nkind: Pod\nmetadata: {name: after}\nspec: {containers: [{name: c, image: \"reg.io/b:1\"}]}\n";
        let inv = parse(inline).unwrap();
        let mut names: Vec<_> = inv.workloads.values().map(|w| &*w.name).collect();
        names.sort();
        assert_eq!(names, ["after", "inline"]);
        // A broken document on the separator line is an error there, not skipped.
        let err =
            parse("apiVersion: v1\nkind: Pod\n--- {apiVersion: v1, kind: Pod]\n").unwrap_err();
        assert!(matches!(err, ManifestError::Yaml { line: 3, .. }), "{err}");

        let merged = r#"
apiVersion: v1
kind: Pod
metadata: {name: merged}
spec:
  containers:
  - &base {name: a, image: "reg.io/app:1"}
  - <<: *base
    name: b
"#;
        let inv = parse(merged).unwrap();
        let w = inv.workloads.values().next().unwrap();
        let images: Vec<_> = w
            .containers
            .iter()
            .map(|c| (&*c.container, &*c.image))
            .collect();
        assert_eq!(images, [("a", "reg.io/app:1"), ("b", "reg.io/app:1")]);

        let bom = "\u{feff}apiVersion: v1\nkind: Pod\nmetadata: {name: bom}\nspec: {containers: [{name: c, image: \"reg.io/a:1\"}]}\n";
        let inv = parse(bom).unwrap();
        assert_eq!(inv.workloads.len(), 1);
    }

    /// A Secret's values are secrets: what cannot be read of them is said without
    /// quoting them, whatever serde or base64 would quote.
    #[test]
    fn a_broken_secret_is_reported_without_its_content() {
        for data in [
            "data: {.dockerconfigjson: \"Canary-pw not base64!\"}",
            "data: {.dockerconfigjson: 12345678}",
            "stringData: {.dockerconfigjson: 12345678}",
            "stringData: {.dockerconfigjson: [Canary-pw]}",
            "data: [Canary-pw]",
            "type: [Canary-pw]",
        ] {
            let text = format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: s, namespace: ns}}\n{data}\n"
            );
            let err = parse(&text).unwrap_err();
            let shown = err.to_string();
            assert!(matches!(err, ManifestError::Object { .. }), "{shown}");
            assert!(shown.contains("Secret \"s\""), "{shown}");
            for secret in ["Canary", "12345678", "symbol"] {
                assert!(!shown.contains(secret), "{data}: {shown}");
            }
        }
    }

    /// `kubectl get pods -A -o yaml > pods.yaml`: a Pod (or Job) names a controller of
    /// a watched kind that the files do not hold. Nothing covers it then: it is checked
    /// as itself, not skipped (its images were never checked, and the run said all
    /// available). A controller in the files, in any file and order, still covers it.
    #[test]
    fn pods_and_jobs_whose_controller_is_not_in_the_files_are_checked_as_themselves() {
        let owned = |kind: &str, name: &str, owner_kind: &str, owner: &str, image: &str| {
            let spec = if kind == "Pod" {
                format!("spec: {{containers: [{{name: c, image: {image}}}]}}")
            } else {
                format!(
                    "spec: {{template: {{spec: {{restartPolicy: Never, containers: [{{name: c, image: {image}}}]}}}}}}"
                )
            };
            let api = if kind == "Pod" { "v1" } else { "batch/v1" };
            format!(
                "apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: x\n  ownerReferences: [{{apiVersion: apps/v1, kind: {owner_kind}, name: {owner}, uid: u, controller: true}}]\n{spec}\n"
            )
        };
        let present = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: agent, namespace: x}\nspec: {selector: {}, template: {spec: {containers: [{name: c, image: reg.io/agent:1}]}}}\n---\napiVersion: batch/v1\nkind: CronJob\nmetadata: {name: other, namespace: x}\nspec: {schedule: '* * * * *', jobTemplate: {spec: {template: {spec: {restartPolicy: Never, containers: [{name: c, image: reg.io/other:1}]}}}}}\n";
        let text = [
            owned("Pod", "db-0", "StatefulSet", "db", "reg.io/db:1"),
            // Its DaemonSet comes later in the stream.
            owned("Pod", "agent-x1", "DaemonSet", "agent", "reg.io/agent:1"),
            owned("Job", "nightly-1", "CronJob", "nightly", "reg.io/nightly:1"),
            // The Job above, without its CronJob, is checked: it covers its Pod.
            owned(
                "Pod",
                "nightly-1-abc",
                "Job",
                "nightly-1",
                "reg.io/nightly:1",
            ),
            owned("Job", "other-1", "CronJob", "other", "reg.io/other:1"),
            owned("Pod", "other-1-xyz", "Job", "other-1", "reg.io/other:1"),
            present.to_string(),
        ]
        .join("---\n");
        let inv = parse(&text).unwrap();
        assert_eq!(
            kinds_and_names(&inv),
            [
                ("cronjob", "other"),
                ("daemonset", "agent"),
                ("job", "nightly-1"),
                ("pod", "db-0")
            ]
        );

        // Across files: the StatefulSet in another file covers its Pod.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            owned("Pod", "db-0", "StatefulSet", "db", "reg.io/db:1"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.yaml"),
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db, namespace: x}\nspec: {serviceName: db, selector: {}, template: {spec: {containers: [{name: c, image: reg.io/db:1}]}}}\n",
        )
        .unwrap();
        let inv = load(dir.path()).unwrap();
        assert_eq!(kinds_and_names(&inv), [("statefulset", "db")]);
    }

    #[test]
    fn directories_are_walked_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(
            dir.path().join("b.yaml"),
            DEPLOYMENT.replace("name: web", "name: b"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("sub/a.yml"),
            DEPLOYMENT.replace("name: web", "name: a"),
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not yaml: [").unwrap();
        let inv = load(dir.path()).unwrap();
        let names: Vec<_> = inv.workloads.values().map(|w| &*w.name).collect();
        assert_eq!(names, ["a", "b"]);
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            load(empty.path()),
            Err(ManifestError::Empty { .. })
        ));
        assert!(matches!(
            load(&empty.path().join("missing")),
            Err(ManifestError::Io { .. })
        ));
    }

    /// A Pod in a manifest names a node, but nothing runs there on a file's word: pull
    /// secrets must not follow it. In a cluster the same Pod would place them.
    #[test]
    fn manifests_place_no_pods_on_nodes() {
        let pod = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web, uid: u1, controller: true}]
spec:
  nodeName: node-a
  containers: [{name: app, image: "reg.io/app:1"}]
"#;
        let inv = parse(pod).unwrap();
        // The controller covers the workload; the placement is recorded...
        assert!(inv.workloads.is_empty());
        assert_eq!(
            inv.placements.nodes_running("shop", "reg.io/app:1").count(),
            1
        );
        // ...but a manifests load drops it.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pod.yaml"), pod).unwrap();
        let loaded = load(dir.path()).unwrap();
        assert!(loaded.placements.is_empty());
        // Deleting the pod forgets where it ran.
        let mut inv = inv;
        let object: Pod = serde_yaml::from_str(pod).unwrap();
        inv.delete(&KubeObject::Pod(Box::new(object)));
        assert!(inv.placements.is_empty());
    }

    #[test]
    fn configmap_mounts_and_symlink_loops_are_read_once() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // The kubelet's atomic writer: ..2026_12_04.../web.yaml, ..data -> that dir,
        // web.yaml -> ..data/web.yaml.
        let stamp = root.join("..2026_12_04_05_00_00.000000001");
        std::fs::create_dir(&stamp).unwrap();
        std::fs::write(
            stamp.join("web.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nspec:\n  containers: [{name: c, image: nginx}]\n",
        )
        .unwrap();
        symlink(stamp.file_name().unwrap(), root.join("..data")).unwrap();
        symlink("..data/web.yaml", root.join("web.yaml")).unwrap();
        // A loop, and a second link to the same file.
        std::fs::create_dir(root.join("sub")).unwrap();
        symlink("..", root.join("sub/loop")).unwrap();
        symlink("../web.yaml", root.join("sub/again.yaml")).unwrap();

        let files = manifest_files(root).unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(files[0].ends_with("again.yaml") || files[0].ends_with("web.yaml"));
        let inventory = load(root).unwrap();
        assert_eq!(inventory.workloads.len(), 1);
    }
}
