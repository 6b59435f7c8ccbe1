//! The image index: the second stage. Every container reference of the inventory,
//! filtered, resolved to the credentials the kubelet would try, and deduplicated into
//! the set of distinct checks to make.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use pullwatch::locks::lock;
use pullwatch::registry::pull_path::Schema1Pulls;
use pullwatch::{CheckOutcome, CheckStatus, ImageReference, Keyring, Platform, SourcedCredential};
use regex::Regex;
use tokio::sync::watch;

use crate::inventory::{
    Inventory, PodPlacements, SecretCredentials, SharedInventory, Workload, WorkloadKey,
    WorkloadKind,
};
#[cfg(test)]
use crate::inventory::{PullSecret, SecretFormat};
use crate::mirrors::Mirrors;

/// One container of one workload: the unit the canonical metrics describe. Its
/// strings are the inventory's (shared, not copied), so the index and the store add a
/// few words per container.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerRef {
    pub(crate) namespace: Arc<str>,
    pub(crate) kind: WorkloadKind,
    pub(crate) name: Arc<str>,
    pub(crate) container: Arc<str>,
    /// The image exactly as written in the spec.
    pub(crate) image: Arc<str>,
}

#[cfg(test)]
impl ContainerRef {
    /// A container of a Deployment, for tests.
    pub(crate) fn deployment(namespace: &str, name: &str, container: &str, image: &str) -> Self {
        ContainerRef {
            namespace: namespace.into(),
            kind: WorkloadKind::Deployment,
            name: name.into(),
            container: container.into(),
            image: image.into(),
        }
    }
}

/// A distinct check: the reference to ask for (after mirrors) and the credentials to
/// try, in order, and — where it differs — the reference the kubelet pulls (before
/// `--image-mirror` and `--default-registry`), which agents check. Two keys are equal
/// when those and the credential values are equal, whatever secrets they came from.
///
/// Shared: the index, the scheduler's per-key state, its pass and its image map each
/// hold the key, so a clone is a reference count, not a copy of the references.
#[derive(Clone, Debug)]
pub struct CheckKey(Arc<CheckKeyParts>);

/// What a [`CheckKey`] is made of.
#[derive(Debug)]
pub struct CheckKeyParts {
    pub(crate) reference: ImageReference,
    pub(crate) credentials: Arc<[SourcedCredential]>,
    /// The kubelet's reference when it is not `reference`: two images the aggregator
    /// checks as one are still two different pulls on a node.
    pub(crate) kubelet_reference: Option<ImageReference>,
}

impl std::ops::Deref for CheckKey {
    type Target = CheckKeyParts;

    fn deref(&self) -> &CheckKeyParts {
        &self.0
    }
}

impl CheckKey {
    /// A key whose kubelet reference is the checked one.
    pub fn new(reference: ImageReference, credentials: Arc<[SourcedCredential]>) -> CheckKey {
        CheckKey::with_kubelet_reference(reference, credentials, None)
    }

    /// A key checked as `reference` whose kubelet pulls `kubelet_reference` (None:
    /// the same).
    pub(crate) fn with_kubelet_reference(
        reference: ImageReference,
        credentials: Arc<[SourcedCredential]>,
        kubelet_reference: Option<ImageReference>,
    ) -> CheckKey {
        CheckKey(Arc::new(CheckKeyParts {
            reference,
            credentials,
            kubelet_reference,
        }))
    }

    fn identity(
        &self,
    ) -> (
        &ImageReference,
        Option<&ImageReference>,
        impl Iterator<Item = &pullwatch::RegistryCredential>,
    ) {
        (
            &self.reference,
            self.kubelet_reference.as_ref(),
            self.credentials.iter().map(|c| &c.credential),
        )
    }
}

impl PartialEq for CheckKey {
    fn eq(&self, other: &Self) -> bool {
        if Arc::ptr_eq(&self.0, &other.0) {
            return true;
        }
        let (a_ref, a_kubelet, a_creds) = self.identity();
        let (b_ref, b_kubelet, b_creds) = other.identity();
        a_ref == b_ref && a_kubelet == b_kubelet && a_creds.eq(b_creds)
    }
}
impl Eq for CheckKey {}
impl Hash for CheckKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (reference, kubelet, creds) = self.identity();
        reference.hash(state);
        kubelet.hash(state);
        for credential in creds {
            credential.hash(state);
        }
    }
}
impl PartialOrd for CheckKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for CheckKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let (a_ref, a_kubelet, a_creds) = self.identity();
        let (b_ref, b_kubelet, b_creds) = other.identity();
        a_ref
            .cmp(b_ref)
            .then_with(|| a_kubelet.cmp(&b_kubelet))
            .then_with(|| a_creds.cmp(b_creds))
    }
}

/// Which container references to keep, as the older exporter's flags say.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    /// An image is kept when it matches any of these (none: all images)...
    pub(crate) allowed_images: Vec<Regex>,
    /// ...and none of these.
    pub(crate) ignored_images: Vec<Regex>,
    /// Only namespaces whose labels match this selector (none: all namespaces).
    pub(crate) namespace_selector: Option<LabelSelector>,
    /// Kinds checked even when disabled (replicas 0, suspended...).
    pub(crate) force_check_disabled: BTreeSet<WorkloadKind>,
}

impl Filters {
    fn keeps_image(&self, image: &str) -> bool {
        (self.allowed_images.is_empty() || self.allowed_images.iter().any(|r| r.is_match(image)))
            && !self.ignored_images.iter().any(|r| r.is_match(image))
    }

    /// Whether `workload` is checked at all: its namespace matches
    /// `--namespace-label`, and it is enabled or its kind forced.
    fn keeps_workload(&self, inventory: &Inventory, workload: &Workload) -> bool {
        if let Some(selector) = &self.namespace_selector {
            let labels = inventory.namespaces.get(&*workload.namespace);
            if !labels.is_some_and(|l| selector.matches(l)) {
                tracing::debug!(namespace = %workload.namespace, "namespace does not match --namespace-label; skipping");
                return false;
            }
        }
        if !workload.enabled && !self.force_check_disabled.contains(&workload.kind) {
            tracing::debug!(kind = %workload.kind, namespace = %workload.namespace, name = %workload.name, "workload is disabled; skipping");
            return false;
        }
        true
    }
}

/// Parses `--allowed-images`/`--ignored-images`: regexes separated by `~`.
pub(crate) fn parse_image_regexes(spec: &str) -> Result<Vec<Regex>, regex::Error> {
    spec.split('~')
        .filter(|part| !part.is_empty())
        .map(Regex::new)
        .collect()
}

/// Parses `--force-check-disabled-controllers`: comma-separated kinds, or `*`.
pub(crate) fn parse_kinds(spec: &str) -> Result<BTreeSet<WorkloadKind>, String> {
    let mut kinds = BTreeSet::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part == "*" {
            kinds.extend(WorkloadKind::ALL);
        } else {
            kinds.insert(WorkloadKind::parse(part).ok_or_else(|| {
                format!("unknown controller kind {part:?} (expected deployment, statefulset, daemonset, cronjob, job, pod or *)")
            })?);
        }
    }
    Ok(kinds)
}

/// An equality-based label selector: `key`, `!key`, `key=value`, `key==value`,
/// `key!=value`, comma-separated, all of which must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LabelSelector(Vec<Requirement>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
}

impl LabelSelector {
    pub(crate) fn parse(spec: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in spec.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(format!("empty requirement in label selector {spec:?}"));
            }
            let requirement = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            let key = match &requirement {
                Requirement::Exists(k)
                | Requirement::NotExists(k)
                | Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _) => k,
            };
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(format!("invalid label key in selector {spec:?}"));
            }
            requirements.push(requirement);
        }
        Ok(LabelSelector(requirements))
    }

    pub(crate) fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
        })
    }
}

/// How references are turned into checks.
#[derive(Clone, Debug)]
pub struct IndexOptions {
    pub default_registry: String,
    /// `--platform`: the platforms workloads land on; empty: the cluster's nodes'
    /// (cluster mode), else no platform check.
    pub platforms: Vec<Platform>,
    /// `--schema1-images`: what the nodes' runtime does with a Docker schema 1
    /// manifest; None: what the cluster's nodes' runtimes do (refused when none is
    /// known).
    pub schema1: Option<Schema1Pulls>,
    pub mirrors: Mirrors,
    pub filters: Filters,
}

/// What a node agent needs to check a key the way the kubelet would pull it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentTarget {
    /// The reference as the kubelet pulls it: before `--image-mirror` (the node has
    /// its own mirrors), and normalized as the kubelet does, to Docker Hub for names
    /// without a registry whatever `--default-registry` says.
    pub image: ImageReference,
    /// The credentials the kubelet would try for `image`: the key's own unless a
    /// mirror rewrote the reference.
    pub credentials: Arc<[SourcedCredential]>,
    /// Namespace -> images as written, whose nodes may receive `credentials`:
    /// containers using `image` (the original reference, before mirrors) whose own
    /// namespace's keyring resolves it to these very credential values, i.e. whose
    /// nodes' kubelets already hold them. With `--image-mirror`, containers of other
    /// namespaces (or other originals) can share the check key while their own
    /// credentials differ: they are not added, so one namespace's upstream secret never
    /// reaches a node that only runs another namespace's pods. Without credentials any
    /// container counts (nothing secret is sent). Sorted, each pair once.
    pub sources: Vec<(Arc<str>, Arc<str>)>,
    /// The nodes running pods of `sources`: filled from the live placements when the
    /// check is dispatched ([`AgentTarget::with_nodes`]), so pods coming and going never
    /// cost an index rebuild. Empty in the index and without a live cluster.
    pub workload_nodes: BTreeSet<Arc<str>>,
}

impl AgentTarget {
    /// The secrets rule: a namespace's secrets go only to nodes running that
    /// namespace's pods. The nodes of a container pulling `image` (before mirrors),
    /// whose own namespace resolves it to `own_credentials`, may receive this target's
    /// credentials only when those are the very same image and credential values
    /// (whatever their sources are named), i.e. their kubelet already holds them;
    /// with `--image-mirror`, containers of other namespaces (or other originals) can
    /// share the check key while their own credentials differ. Without credentials
    /// any container's nodes may (nothing secret is sent).
    fn credentials_may_reach_nodes_of(
        &self,
        image: &ImageReference,
        own_credentials: &[SourcedCredential],
    ) -> bool {
        self.credentials.is_empty()
            || (self.image == *image
                && self
                    .credentials
                    .iter()
                    .map(|c| &c.credential)
                    .eq(own_credentials.iter().map(|c| &c.credential)))
    }

    /// This target with `workload_nodes` read from `placements` now.
    pub(crate) fn with_nodes(&self, placements: &PodPlacements) -> AgentTarget {
        let mut target = self.clone();
        target.workload_nodes = self
            .sources
            .iter()
            .flat_map(|(namespace, image)| placements.nodes_running(namespace, image))
            .cloned()
            .collect();
        target
    }
}

/// The deduplicated set of checks, and who depends on each.
#[derive(Clone, Debug, Default)]
pub struct ImageIndex {
    pub checks: BTreeMap<CheckKey, Vec<ContainerRef>>,
    /// Per check: how agents check it (same keys as `checks`).
    pub agent_targets: BTreeMap<CheckKey, AgentTarget>,
    /// References that need no registry to judge: images the kubelet cannot parse,
    /// and containers whose pull secrets the kubelet cannot parse.
    pub settled: Vec<(ContainerRef, Arc<CheckOutcome>)>,
    /// Problems found while building (missing or broken pull secrets, bad image
    /// references), for the caller to log once rather than at every rebuild.
    pub warnings: BTreeSet<String>,
    /// (kind, namespace, name) -> the platforms the workload can land on, where any
    /// is known (`--platform`, or the cluster's nodes narrowed by the pod template).
    pub platforms: BTreeMap<WorkloadKey, Arc<[Platform]>>,
    /// Containers sharing a check whose credentials come, with equal values, from
    /// differently named sources (another namespace's secret): the check's source ->
    /// this container's own, so its reason names only its own namespace's secrets.
    pub own_sources: HashMap<ContainerRef, SourceRenames>,
    /// Every platform a workload can land on (`--platform`, or the nodes'): the
    /// platforms an index's pull path is walked for.
    pub walk_platforms: Vec<Platform>,
    /// What the nodes' runtimes do with a Docker schema 1 manifest
    /// (`--schema1-images`, or the nodes'; empty: none known): a central walk pulls a
    /// schema 1 manifest as each does.
    pub walk_schema1: Vec<Schema1Pulls>,
}

/// Credential sources of a shared check -> a container's own: (theirs, its own).
pub(crate) type SourceRenames = Arc<[(Arc<str>, Arc<str>)]>;

/// Where workloads can land (`--platform`, else the cluster's nodes' platforms), and
/// one shared list per distinct subset: most workloads land on the same platforms.
struct LandingPlatforms {
    candidates: Vec<Platform>,
    shared: BTreeMap<Vec<Platform>, Arc<[Platform]>>,
}

impl LandingPlatforms {
    fn new(inventory: &Inventory, options: &IndexOptions) -> LandingPlatforms {
        let candidates = if options.platforms.is_empty() {
            let distinct: BTreeSet<&Platform> = inventory.nodes.platforms().collect();
            distinct.into_iter().cloned().collect()
        } else {
            options.platforms.clone()
        };
        LandingPlatforms {
            candidates,
            shared: BTreeMap::new(),
        }
    }
}

impl ImageIndex {
    /// Builds the index of `inventory`.
    pub fn build(inventory: &Inventory, options: &IndexOptions) -> ImageIndex {
        let mut index = ImageIndex::default();
        let mut keyrings: BTreeMap<(&str, Vec<String>), Result<Keyring, String>> = BTreeMap::new();
        let mut landing = LandingPlatforms::new(inventory, options);
        index.walk_platforms = landing.candidates.clone();
        index.walk_schema1 = match options.schema1 {
            Some(pulls) => vec![pulls],
            None => inventory.nodes.schema1_pulls(),
        };
        let grouped = inventory.grouped_workloads();
        for workload in inventory.workloads.values().chain(&grouped) {
            if !options.filters.keeps_workload(inventory, workload) {
                continue;
            }
            index.record_platforms(workload, &mut landing);
            let secret_names = pull_secret_names(inventory, workload);
            let keyring = &*keyrings
                .entry((&*workload.namespace, secret_names))
                .or_insert_with_key(|(namespace, names)| {
                    keyring_for(inventory, namespace, names, &mut index.warnings)
                });
            for container in &workload.containers {
                if !options.filters.keeps_image(&container.image) {
                    continue;
                }
                let container_ref = ContainerRef {
                    namespace: workload.namespace.clone(),
                    kind: workload.kind,
                    name: workload.name.clone(),
                    container: container.container.clone(),
                    image: container.image.clone(),
                };
                index.add_container(container_ref, keyring, options);
            }
        }
        for target in index.agent_targets.values_mut() {
            target.sources.sort_unstable();
            target.sources.dedup();
            target.sources.shrink_to_fit();
        }
        index
    }

    /// Records the platforms `workload` can land on, or warns when it can land on
    /// none of the candidates.
    fn record_platforms(&mut self, workload: &Workload, landing: &mut LandingPlatforms) {
        if landing.candidates.is_empty() {
            return;
        }
        let wanted: Vec<Platform> = landing
            .candidates
            .iter()
            .filter(|p| workload.platforms.allows(p))
            .cloned()
            .collect();
        if wanted.is_empty() {
            self.warnings.insert(format!(
                "{} {}/{} can land on none of the platforms {} (nodeSelector/affinity)",
                workload.kind,
                workload.namespace,
                workload.name,
                landing
                    .candidates
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            return;
        }
        let shared = landing
            .shared
            .entry(wanted)
            .or_insert_with_key(|w| w.clone().into())
            .clone();
        self.platforms.insert(
            (
                workload.kind,
                workload.namespace.clone(),
                workload.name.clone(),
            ),
            shared,
        );
    }

    /// Adds one container: to a check, or settled where the kubelet would fail it
    /// before contacting a registry.
    fn add_container(
        &mut self,
        container_ref: ContainerRef,
        keyring: &Result<Keyring, String>,
        options: &IndexOptions,
    ) {
        // The kubelet parses first (InvalidImageName), then builds the keyring
        // from the pod's pull secrets (a secret it cannot parse fails the pull).
        let kubelet_ref = ImageReference::parse(&container_ref.image);
        let empty = Keyring::new();
        let keyring = match (&kubelet_ref, keyring) {
            (Ok(_), Err(broken)) => {
                self.settled.push((
                    container_ref,
                    Arc::new(CheckOutcome::new(
                        CheckStatus::AuthenticationFailure,
                        broken.clone(),
                    )),
                ));
                return;
            }
            (_, Ok(keyring)) => keyring,
            // A bad reference, settled below: no credentials are looked up.
            (Err(_), Err(_)) => &empty,
        };
        // Central checks honour --default-registry (the old exporter's flag);
        // agents are always asked about what the kubelet pulls.
        let references = kubelet_ref.and_then(|original| {
            let central = if options.default_registry == pullwatch::reference::DOCKER_HUB {
                original.clone()
            } else {
                ImageReference::parse_with_default_registry(
                    &container_ref.image,
                    &options.default_registry,
                )?
            };
            Ok((original, central))
        });
        match references {
            Ok((original, central)) => {
                self.add_check(container_ref, original, &central, keyring, &options.mirrors);
            }
            Err(err) => {
                self.warnings.insert(format!(
                    "bad image reference {:?} in {} {}/{} container {}: {err}",
                    container_ref.image,
                    container_ref.kind,
                    container_ref.namespace,
                    container_ref.name,
                    container_ref.container
                ));
                self.settled.push((
                    container_ref,
                    Arc::new(CheckOutcome::new(
                        CheckStatus::BadImageFormat,
                        err.to_string(),
                    )),
                ));
            }
        }
    }

    /// Adds a container whose kubelet pulls `original` to the check of `central`
    /// (after mirrors) with the credentials of its namespace's `keyring`, and to that
    /// check's agent target where the secrets rule lets its nodes have them.
    fn add_check(
        &mut self,
        container_ref: ContainerRef,
        original: ImageReference,
        central: &ImageReference,
        keyring: &Keyring,
        mirrors: &Mirrors,
    ) {
        let reference = mirrors.apply(central);
        let credentials: Arc<[SourcedCredential]> = keyring.lookup(&reference).into();
        let kubelet_reference = (original != reference).then(|| original.clone());
        let key = CheckKey::with_kubelet_reference(reference, credentials, kubelet_reference);
        let own_credentials: Arc<[SourcedCredential]> = if key.reference == original {
            key.credentials.clone()
        } else {
            keyring.lookup(&original).into()
        };
        let target = self
            .agent_targets
            .entry(key.clone())
            .or_insert_with(|| AgentTarget {
                credentials: own_credentials.clone(),
                image: original.clone(),
                sources: Vec::new(),
                workload_nodes: BTreeSet::new(),
            });
        if target.credentials_may_reach_nodes_of(&original, &own_credentials) {
            target
                .sources
                .push((container_ref.namespace.clone(), container_ref.image.clone()));
        }
        let shared = self.checks.entry(key.clone());
        // Equal credential values from differently named sources: this container's
        // reasons name its own.
        let renames: Vec<(Arc<str>, Arc<str>)> = shared
            .key()
            .credentials
            .iter()
            .zip(key.credentials.iter())
            .filter(|(theirs, own)| theirs.source != own.source)
            .map(|(theirs, own)| (theirs.source.clone(), own.source.clone()))
            .collect();
        if !renames.is_empty() {
            self.own_sources
                .insert(container_ref.clone(), renames.into());
        }
        shared.or_default().push(container_ref);
    }

    /// The outcome of a check as it stands for one container where that differs
    /// from the check's own: `absent` where the tag is an index without an entry for a
    /// platform its workload can land on; a reason naming this container's own
    /// credential sources where the check was made with another namespace's equal
    /// ones. None: the check's outcome stands.
    pub(crate) fn outcome_for(
        &self,
        container: &ContainerRef,
        outcome: &CheckOutcome,
    ) -> Option<CheckOutcome> {
        let mut own = None;
        if outcome.platforms.is_some() || outcome.walked.is_some() {
            let key = (
                container.kind,
                container.namespace.clone(),
                container.name.clone(),
            );
            if let Some(wanted) = self.platforms.get(&key) {
                own = Some(outcome.for_platforms(wanted));
            }
        }
        if let Some(renames) = self.own_sources.get(container)
            && !outcome.reason.is_empty()
        {
            let mut renamed = own.unwrap_or_else(|| outcome.clone());
            renamed.reason = rename_sources(&renamed.reason, renames);
            own = Some(renamed);
        }
        own
    }

    /// Logs the warnings that `previous` did not already have.
    pub(crate) fn log_new_warnings(&self, previous: Option<&ImageIndex>) {
        for warning in &self.warnings {
            if previous.is_none_or(|p| !p.warnings.contains(warning)) {
                tracing::warn!("{warning}");
            }
        }
    }

    /// Every container reference of the index.
    pub fn containers(&self) -> HashSet<&ContainerRef> {
        self.checks
            .values()
            .flatten()
            .chain(self.settled.iter().map(|(c, _)| c))
            .collect()
    }

    /// Number of container references the index covers.
    pub fn container_count(&self) -> usize {
        self.checks.values().map(Vec::len).sum::<usize>() + self.settled.len()
    }
}

/// The kubelet's choice: the pod's imagePullSecrets, else its service account's.
fn pull_secret_names(inventory: &Inventory, workload: &Workload) -> Vec<String> {
    if !workload.pull_secrets.is_empty() {
        return workload
            .pull_secrets
            .iter()
            .map(|s| s.to_string())
            .collect();
    }
    inventory
        .service_accounts
        .get(&(
            workload.namespace.to_string(),
            workload.service_account.to_string(),
        ))
        .cloned()
        .unwrap_or_default()
}

/// A keyring of the named secrets of one namespace (never another namespace's), or,
/// when one of them does not parse, the reason the kubelet would fail every pull
/// (`MakeDockerKeyring` returns the first such error). Missing secrets and secrets
/// without a payload are skipped, as the kubelet skips them.
fn keyring_for(
    inventory: &Inventory,
    namespace: &str,
    names: &[String],
    warnings: &mut BTreeSet<String>,
) -> Result<Keyring, String> {
    let mut keyring = Keyring::new();
    for name in names {
        match inventory
            .secrets
            .get(&(namespace.to_string(), name.clone()))
            .map(|secret| &secret.credentials)
        {
            Some(SecretCredentials::Parsed(config)) => {
                keyring.add(&format!("secret/{namespace}/{name}"), config);
            }
            Some(SecretCredentials::Broken(why)) => {
                warnings.insert(format!(
                    "pull secret {namespace}/{name} is unusable ({why}); the kubelet fails every pull of the pods that use it"
                ));
                return Err(format!(
                    "pull secret secret/{namespace}/{name} cannot be parsed ({why}): the kubelet fails the pull before contacting the registry"
                ));
            }
            Some(SecretCredentials::Ignored(why)) => {
                warnings.insert(format!(
                    "pull secret {namespace}/{name} carries no credentials ({why}); continuing without it, as the kubelet does"
                ));
            }
            None => {
                warnings.insert(format!(
                    "pull secret {namespace}/{name} not found; continuing without it, as the kubelet would"
                ));
            }
        }
    }
    Ok(keyring)
}

/// Rebuilds the index whenever the inventory changes (after a short quiet period,
/// so a burst of watch events is one rebuild) and publishes it, but only once the
/// inventory has been fully synced: an index of half a cluster would drop series.
pub(crate) async fn build_indexes(
    shared: SharedInventory,
    options: IndexOptions,
    debounce: Duration,
    indexes: watch::Sender<Option<Arc<ImageIndex>>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shared.changed.notified() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        tokio::time::sleep(debounce).await;
        if !shared.synced() {
            continue;
        }
        let index = {
            let inventory = lock(&shared.inventory);
            ImageIndex::build(&inventory, &options)
        };
        if indexes.send(Some(Arc::new(index))).is_err() {
            return;
        }
    }
}

/// `reason` with each source name `from` (a whole name: `secret/a/s1` is not a prefix
/// of `secret/a/s10`) replaced by `to`.
fn rename_sources(reason: &str, renames: &[(Arc<str>, Arc<str>)]) -> String {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '/');
    let mut out = String::with_capacity(reason.len());
    let mut rest = reason;
    'scan: while !rest.is_empty() {
        for (from, to) in renames {
            if let Some(after) = rest.strip_prefix(&**from) {
                let boundary_before = out.chars().next_back().is_none_or(|c| !is_name_char(c));
                let boundary_after = after.chars().next().is_none_or(|c| !is_name_char(c));
                if boundary_before && boundary_after {
                    out.push_str(to);
                    rest = after;
                    continue 'scan;
                }
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
}

#[cfg(test)]
impl ImageIndex {
    /// The index of Deployments `ns/<name>`, each with one container `app` using
    /// `image`, with the default options: what the scheduler's and the pipeline's tests
    /// start from.
    pub(crate) fn of_deployments(workloads: &[(&str, &str)]) -> ImageIndex {
        ImageIndex::build(
            &Inventory::of_deployments(workloads),
            &IndexOptions {
                default_registry: "docker.io".into(),
                platforms: Vec::new(),
                schema1: None,
                mirrors: Mirrors::default(),
                filters: Filters::default(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::ContainerImage;
    use pullwatch::{DockerConfig, RegistryCredential};

    fn add(inv: &mut Inventory, workload: Workload) {
        inv.workloads.insert(
            (
                workload.kind,
                workload.namespace.clone(),
                workload.name.clone(),
            ),
            workload,
        );
    }

    fn workload(ns: &str, name: &str, images: &[&str], secrets: &[&str]) -> Workload {
        Workload {
            namespace: ns.into(),
            kind: WorkloadKind::Deployment,
            name: name.into(),
            containers: images
                .iter()
                .enumerate()
                .map(|(i, image)| ContainerImage {
                    container: format!("c{i}").into(),
                    image: (*image).into(),
                })
                .collect(),
            pull_secrets: secrets.iter().map(|s| Arc::from(*s)).collect(),
            service_account: "default".into(),
            enabled: true,
            platforms: Default::default(),
        }
    }

    fn secret(user: &str, registry: &str) -> PullSecret {
        let mut config = DockerConfig::default();
        config.entries.insert(
            registry.into(),
            RegistryCredential {
                username: user.into(),
                password: "pw".into(),
                ..Default::default()
            },
        );
        PullSecret {
            format: SecretFormat::DockerConfigJson,
            credentials: SecretCredentials::Parsed(config.into()),
        }
    }

    fn options() -> IndexOptions {
        IndexOptions {
            default_registry: "docker.io".into(),
            platforms: Vec::new(),
            schema1: None,
            mirrors: Mirrors::default(),
            filters: Filters::default(),
        }
    }

    #[test]
    fn deduplicates_by_reference_and_credential_values() {
        let mut inv = Inventory::default();
        // Same image spelled two ways, same credentials from differently named secrets.
        add(&mut inv, workload("a", "w1", &["reg.io/app:v1"], &["s1"]));
        add(&mut inv, workload("b", "w2", &["reg.io/app:v1"], &["s2"]));
        add(
            &mut inv,
            workload("c", "w3", &["nginx", "docker.io/library/nginx:latest"], &[]),
        );
        add_secret(&mut inv, "a", "s1", secret("u", "reg.io"));
        add_secret(&mut inv, "b", "s2", secret("u", "reg.io"));
        let index = ImageIndex::build(&inv, &options());
        assert_eq!(index.checks.len(), 2);
        assert_eq!(index.container_count(), 4);
        for (key, refs) in &index.checks {
            assert_eq!(refs.len(), 2, "{key:?}");
        }
    }

    #[test]
    fn a_shared_check_names_each_namespace_its_own_secrets() {
        let mut inv = Inventory::default();
        add(
            &mut inv,
            workload("alpha", "w1", &["reg.io/app:v1"], &["s1"]),
        );
        add(
            &mut inv,
            workload("tenant-b", "w2", &["reg.io/app:v1"], &["other"]),
        );
        add_secret(&mut inv, "alpha", "s1", secret("u", "reg.io"));
        add_secret(&mut inv, "tenant-b", "other", secret("u", "reg.io"));
        let index = ImageIndex::build(&inv, &options());
        assert_eq!(index.checks.len(), 1, "equal values: one check");
        let (key, containers) = index.checks.iter().next().unwrap();
        let source = key.credentials[0].source.clone();
        let outcome = CheckOutcome::new(
            CheckStatus::AuthenticationFailure,
            format!("401 (credentials from {source})"),
        );
        for container in containers {
            let own = index.outcome_for(container, &outcome);
            let reason = own.as_ref().map_or(&outcome.reason, |o| &o.reason);
            let (mine, theirs) = if &*container.namespace == "alpha" {
                ("secret/alpha/s1", "secret/tenant-b/")
            } else {
                ("secret/tenant-b/other", "secret/alpha/")
            };
            assert!(reason.contains(&format!("from {mine})")), "{reason}");
            assert!(!reason.contains(theirs), "{reason}");
        }
        assert_eq!(
            rename_sources(
                "secret/a/s1: x; secret/a/s10: y",
                &[("secret/a/s1".into(), "secret/b/t".into())]
            ),
            "secret/b/t: x; secret/a/s10: y",
            "whole names only"
        );
    }

    #[test]
    fn credentials_never_cross_namespaces_and_fall_back_to_service_account() {
        let mut inv = Inventory::default();
        add(&mut inv, workload("a", "w", &["reg.io/app"], &[]));
        add(&mut inv, workload("b", "w", &["reg.io/app"], &["s"]));
        inv.service_accounts
            .insert(("a".into(), "default".into()), vec!["sa-secret".into()]);
        inv.secrets.insert(
            ("a".into(), "sa-secret".into()),
            secret("from-sa", "reg.io"),
        );
        // A secret named "s" exists only in namespace a: workload b must not get it.
        inv.secrets.insert(
            ("a".into(), "s".into()),
            secret("wrong-namespace", "reg.io"),
        );
        let index = ImageIndex::build(&inv, &options());
        let by_ns: BTreeMap<_, _> = index
            .checks
            .iter()
            .map(|(k, refs)| {
                (
                    refs[0].namespace.clone(),
                    k.credentials
                        .iter()
                        .map(|c| c.credential.username.clone())
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        assert_eq!(by_ns["a"], ["from-sa"]);
        assert!(by_ns["b"].is_empty());
    }

    #[test]
    fn filters_and_bad_references() {
        let mut inv = Inventory::default();
        add(
            &mut inv,
            workload(
                "a",
                "w",
                &["nginx", "reg.io/skip-me", "reg.io/keep", "BAD IMAGE"],
                &[],
            ),
        );
        let mut disabled = workload("a", "off", &["reg.io/keep"], &[]);
        disabled.enabled = false;
        add(&mut inv, disabled);
        let mut opts = options();
        opts.filters.allowed_images = parse_image_regexes("^reg\\.io/~BAD").unwrap();
        opts.filters.ignored_images = parse_image_regexes("skip-me").unwrap();
        let index = ImageIndex::build(&inv, &opts);
        let images: Vec<_> = index.checks.values().flatten().map(|r| &*r.image).collect();
        assert_eq!(images, ["reg.io/keep"]);
        assert_eq!(index.settled.len(), 1);
        assert_eq!(index.settled[0].1.status, CheckStatus::BadImageFormat);
        assert!(index.settled[0].1.reason.contains("whitespace"));

        opts.filters.force_check_disabled = parse_kinds("Deployment").unwrap();
        let index = ImageIndex::build(&inv, &opts);
        assert_eq!(index.checks.values().flatten().count(), 2);
        assert_eq!(parse_kinds("*").unwrap().len(), WorkloadKind::ALL.len());
        assert!(parse_kinds("replicaset").is_err());
    }

    #[test]
    fn namespace_label_selector() {
        let mut inv = Inventory::default();
        add(&mut inv, workload("on", "w", &["nginx"], &[]));
        add(&mut inv, workload("off", "w", &["redis"], &[]));
        add(&mut inv, workload("unknown", "w", &["alpine"], &[]));
        inv.namespaces.insert(
            "on".into(),
            [("check".to_string(), "yes".to_string())].into(),
        );
        inv.namespaces.insert(
            "off".into(),
            [("check".to_string(), "no".to_string())].into(),
        );
        let mut opts = options();
        opts.filters.namespace_selector = Some(LabelSelector::parse("check=yes").unwrap());
        let index = ImageIndex::build(&inv, &opts);
        let namespaces: Vec<_> = index
            .checks
            .values()
            .flatten()
            .map(|r| &*r.namespace)
            .collect();
        assert_eq!(namespaces, ["on"]);

        let labels: BTreeMap<String, String> = [("a".to_string(), "1".to_string())].into();
        assert!(LabelSelector::parse("a").unwrap().matches(&labels));
        assert!(!LabelSelector::parse("!a").unwrap().matches(&labels));
        assert!(LabelSelector::parse("a==1,b!=2").unwrap().matches(&labels));
        assert!(!LabelSelector::parse("a!=1").unwrap().matches(&labels));
        assert!(LabelSelector::parse("a,,b").is_err());
        assert!(LabelSelector::parse("=x").is_err());
    }

    /// Pull secret `namespace/name` in `inv`.
    fn add_secret(inv: &mut Inventory, namespace: &str, name: &str, secret: PullSecret) {
        inv.secrets.insert((namespace.into(), name.into()), secret);
    }

    /// Pod `namespace/name` of `image` running on `node`, in `inv`'s placements.
    fn run_pod(inv: &mut Inventory, namespace: &str, name: &str, node: &str, image: &str) {
        inv.placements.apply(namespace, name, &pod(node, image));
    }

    /// Per `(namespace, secret name, secret, node)`: a Deployment `w` of `image` using
    /// that pull secret, the secret, and the Deployment's pod `w-1` on `node`.
    fn tenants(image: &str, tenants: [(&str, &str, PullSecret, &str); 2]) -> Inventory {
        let mut inv = Inventory::default();
        for (namespace, name, pull_secret, node) in tenants {
            add(&mut inv, workload(namespace, "w", &[image], &[name]));
            add_secret(&mut inv, namespace, name, pull_secret);
            run_pod(&mut inv, namespace, "w-1", node, image);
        }
        inv
    }

    /// A pod bound to `node` running `image`: where a container runs.
    fn pod(node: &str, image: &str) -> k8s_openapi::api::core::v1::Pod {
        use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
        Pod {
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                containers: vec![Container {
                    name: "c".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn sourced(source: &str, user: &str) -> SourcedCredential {
        SourcedCredential {
            source: source.into(),
            credential: RegistryCredential {
                username: user.into(),
                password: "pw".into(),
                ..Default::default()
            },
        }
    }

    fn target(image: &str, credentials: &[SourcedCredential]) -> AgentTarget {
        AgentTarget {
            image: ImageReference::parse(image).unwrap(),
            credentials: credentials.into(),
            sources: Vec::new(),
            workload_nodes: BTreeSet::new(),
        }
    }

    /// The secrets rule on its own: the same image with the same credential values
    /// (whatever the secret is called) may reach a container's nodes; other values,
    /// none at all, or another original image may not; no credentials reach anyone.
    #[test]
    fn credentials_reach_only_nodes_whose_namespace_resolves_them_itself() {
        let image = ImageReference::parse("registry.example/team/app:1").unwrap();
        let other_image = ImageReference::parse("registry.example/other/app:1").unwrap();
        let a = [sourced("secret/a/pull", "alice")];
        let with_a = target("registry.example/team/app:1", &a);

        assert!(with_a.credentials_may_reach_nodes_of(&image, &a));
        // Equal values under another namespace's secret name: its kubelet holds them.
        assert!(
            with_a.credentials_may_reach_nodes_of(&image, &[sourced("secret/b/copy", "alice")])
        );
        assert!(!with_a.credentials_may_reach_nodes_of(&image, &[sourced("secret/b/pull", "bob")]));
        assert!(!with_a.credentials_may_reach_nodes_of(&image, &[]));
        assert!(!with_a.credentials_may_reach_nodes_of(
            &image,
            &[
                sourced("secret/a/pull", "alice"),
                sourced("secret/a/extra", "carol")
            ]
        ));
        // The same key reached through a mirror from another original image.
        assert!(!with_a.credentials_may_reach_nodes_of(&other_image, &a));

        let anonymous = target("registry.example/team/app:1", &[]);
        assert!(
            anonymous
                .credentials_may_reach_nodes_of(&other_image, &[sourced("secret/b/pull", "bob")])
        );
    }

    /// Issue 10: with a mirror, two namespaces share one check key; namespace a's
    /// upstream secret goes only to a's nodes, never to b's.
    #[test]
    fn mirrored_keys_send_each_namespace_secret_only_to_its_own_nodes() {
        // a holds an upstream secret; b holds a different one.
        let mut inv = tenants(
            "up.io/lib:1",
            [
                ("a", "s", secret("alice", "up.io"), "n-a"),
                ("b", "t", secret("bob", "up.io"), "n-b"),
            ],
        );
        let mut opts = options();
        opts.mirrors = Mirrors::parse(&["up.io=mirror.io/up".to_string()]).unwrap();
        let index = ImageIndex::build(&inv, &opts);
        // One check key at the mirror (no mirror credentials), both namespaces.
        assert_eq!(index.checks.len(), 1);
        assert_eq!(index.checks.values().next().unwrap().len(), 2);
        assert_eq!(index.agent_targets.len(), 1);
        let target = index.agent_targets.values().next().unwrap();
        assert_eq!(target.image.to_string(), "up.io/lib:1");
        assert_eq!(target.credentials.len(), 1);
        let source = target.credentials[0].source.to_string();
        let (own_node, other_node) = match source.as_str() {
            "secret/a/s" => ("n-a", "n-b"),
            "secret/b/t" => ("n-b", "n-a"),
            other => panic!("unexpected source {other}"),
        };
        let target = target.with_nodes(&inv.placements);
        let nodes: Vec<&str> = target.workload_nodes.iter().map(|n| &**n).collect();
        assert_eq!(
            nodes,
            [own_node],
            "{source} must reach only its namespace's node, never {other_node}"
        );

        // The same secret value in both namespaces: b's node already holds it.
        add_secret(&mut inv, "b", "t", secret("alice", "up.io"));
        let index = ImageIndex::build(&inv, &opts);
        let target = index.agent_targets.values().next().unwrap();
        let target = target.with_nodes(&inv.placements);
        let nodes: Vec<&str> = target.workload_nodes.iter().map(|n| &**n).collect();
        assert_eq!(nodes, ["n-a", "n-b"]);

        // A third namespace with no secret at all for the image: never its node.
        add(&mut inv, workload("c", "w", &["up.io/lib:1"], &[]));
        run_pod(&mut inv, "c", "w-1", "n-c", "up.io/lib:1");
        let index = ImageIndex::build(&inv, &opts);
        let target = index
            .agent_targets
            .values()
            .next()
            .unwrap()
            .with_nodes(&inv.placements);
        assert!(!target.workload_nodes.contains("n-c"), "{target:?}");
    }

    #[test]
    fn agent_targets_know_workload_nodes_and_the_unmirrored_reference() {
        let mut inv = tenants(
            "reg.io/app:v1",
            [
                ("a", "s", secret("u", "reg.io"), "n1"),
                ("b", "s", secret("u", "reg.io"), "n2"),
            ],
        );
        add(&mut inv, workload("a", "m", &["up.io/lib:1"], &["s"]));
        // Same image on n3, but in another namespace: no credentials of a or b go there.
        run_pod(&mut inv, "c", "x", "n3", "reg.io/app:v1");
        let mut opts = options();
        opts.mirrors = Mirrors::parse(&["up.io=reg.io/mirror".to_string()]).unwrap();
        let index = ImageIndex::build(&inv, &opts);
        assert_eq!(index.agent_targets.len(), index.checks.len());
        let app = index
            .agent_targets
            .iter()
            .find(|(k, _)| k.reference.repository() == "app")
            .map(|(_, t)| t)
            .unwrap();
        let app = app.with_nodes(&inv.placements);
        let nodes: Vec<&str> = app.workload_nodes.iter().map(|n| &**n).collect();
        assert_eq!(nodes, ["n1", "n2"]);
        assert_eq!(app.image.to_string(), "reg.io/app:v1");
        assert_eq!(app.credentials.len(), 1);
        // The mirrored key is checked centrally at the mirror (with the mirror's
        // credentials), by agents under its own name (with its own: none here).
        let (key, mirrored) = index
            .agent_targets
            .iter()
            .find(|(k, _)| k.reference.repository() == "mirror/lib")
            .unwrap();
        assert_eq!(key.credentials.len(), 1);
        assert_eq!(mirrored.image.to_string(), "up.io/lib:1");
        assert!(mirrored.credentials.is_empty());
        assert!(
            mirrored
                .with_nodes(&inv.placements)
                .workload_nodes
                .is_empty()
        );
    }

    #[test]
    fn default_registry_moves_central_checks_never_what_agents_are_asked() {
        let mut inv = Inventory::default();
        add(
            &mut inv,
            workload("a", "w", &["nginx:1", "org/app", "ghcr.io/x/y"], &["s"]),
        );
        inv.secrets.insert(
            ("a".into(), "s".into()),
            secret("hub", "https://index.docker.io/v1/"),
        );
        let mut opts = options();
        opts.default_registry = "mirror.local:5000".into();
        let index = ImageIndex::build(&inv, &opts);
        let pairs: BTreeMap<String, String> = index
            .agent_targets
            .iter()
            .map(|(k, t)| (k.reference.to_string(), t.image.to_string()))
            .collect();
        assert_eq!(
            pairs,
            BTreeMap::from([
                (
                    "mirror.local:5000/nginx:1".to_string(),
                    "docker.io/library/nginx:1".to_string()
                ),
                (
                    "mirror.local:5000/org/app:latest".to_string(),
                    "docker.io/org/app:latest".to_string()
                ),
                (
                    "ghcr.io/x/y:latest".to_string(),
                    "ghcr.io/x/y:latest".to_string()
                ),
            ])
        );
        // Agents get the credentials the kubelet would use for the docker.io name.
        for target in index.agent_targets.values() {
            let users: Vec<&str> = target
                .credentials
                .iter()
                .map(|c| c.credential.username.as_str())
                .collect();
            let want: &[&str] = if target.image.registry() == "docker.io" {
                &["hub"]
            } else {
                &[]
            };
            assert_eq!(users, want, "{}", target.image);
        }
    }

    /// Two images the aggregator checks as one (here: `nginx:1` and
    /// `mirror.local:5000/nginx:1` under `--default-registry mirror.local:5000`) are two
    /// different pulls on a node: each gets its own check, and agents are asked about
    /// each one's own reference.
    #[test]
    fn images_checked_as_one_centrally_are_asked_of_agents_separately() {
        let mut inv = Inventory::default();
        add(&mut inv, workload("a", "hub", &["nginx:1"], &[]));
        add(
            &mut inv,
            workload("a", "local", &["mirror.local:5000/nginx:1"], &[]),
        );
        let mut opts = options();
        opts.default_registry = "mirror.local:5000".into();
        let index = ImageIndex::build(&inv, &opts);
        let mut asked: Vec<(String, String, Vec<String>)> = index
            .agent_targets
            .iter()
            .map(|(key, target)| {
                (
                    key.reference.to_string(),
                    target.image.to_string(),
                    index.checks[key]
                        .iter()
                        .map(|c| c.name.to_string())
                        .collect(),
                )
            })
            .collect();
        asked.sort();
        assert_eq!(
            asked,
            [
                (
                    "mirror.local:5000/nginx:1".to_string(),
                    "docker.io/library/nginx:1".to_string(),
                    vec!["hub".to_string()]
                ),
                (
                    "mirror.local:5000/nginx:1".to_string(),
                    "mirror.local:5000/nginx:1".to_string(),
                    vec!["local".to_string()]
                ),
            ]
        );
    }

    #[test]
    fn a_pull_secret_the_kubelet_cannot_parse_fails_every_pull_of_the_pod() {
        let mut inv = Inventory::default();
        add(
            &mut inv,
            workload(
                "a",
                "w",
                &["reg.io/app:v1", "nginx", "BAD IMAGE"],
                &["broken", "good"],
            ),
        );
        add(
            &mut inv,
            workload("a", "other", &["reg.io/app:v1"], &["good", "empty"]),
        );
        inv.secrets.insert(
            ("a".into(), "broken".into()),
            PullSecret {
                format: SecretFormat::DockerConfigJson,
                credentials: SecretCredentials::Broken(
                    "docker config is not valid JSON (syntax error at line 1, column 2)".into(),
                ),
            },
        );
        add_secret(&mut inv, "a", "good", secret("u", "reg.io"));
        inv.secrets.insert(
            ("a".into(), "empty".into()),
            PullSecret {
                format: SecretFormat::DockerConfigJson,
                credentials: SecretCredentials::Ignored("empty".into()),
            },
        );
        let index = ImageIndex::build(&inv, &options());
        let settled: BTreeMap<&str, &CheckOutcome> = index
            .settled
            .iter()
            .map(|(c, o)| (&*c.image, &**o))
            .collect();
        // The image is parsed first (InvalidImageName), then the secrets.
        assert_eq!(settled["BAD IMAGE"].status, CheckStatus::BadImageFormat);
        for image in ["reg.io/app:v1", "nginx"] {
            assert_eq!(settled[image].status, CheckStatus::AuthenticationFailure);
            assert!(
                settled[image].reason.contains("secret/a/broken"),
                "{}",
                settled[image].reason
            );
        }
        // The other workload skips the empty secret and is checked with the good one.
        let refs: Vec<&str> = index
            .checks
            .iter()
            .flat_map(|(k, refs)| {
                assert_eq!(k.credentials.len(), 1);
                refs.iter().map(|r| &*r.name)
            })
            .collect();
        assert_eq!(refs, ["other"]);
        assert!(index.warnings.iter().any(|w| w.contains("a/empty")));
    }
}
