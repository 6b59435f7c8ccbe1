//! Stage `check`, the executor: one image, checked from this node the way the kubelet
//! would pull it, in one of three modes.
//!
//! **A check never changes what the node would run**: it never re-points a tag, never
//! adds or removes an image the node had, and downloads no layer unless
//! `--pull-absent-images` (whose pull is removed again unless `--keep-pulled-images`).
//! A CRI `PullImage` of a held tag whose registry digest moved would download the new
//! image and re-point the node's tag, so a tag is never pulled on a node that holds it.
//!
//! - `resolve`: the manifest along the node's runtime's route ([`resolve`], over
//!   [`crate::route`]), and its pull path walked without downloading a layer.
//! - `auto` and `pull`: for a tag, resolve first and compare the digest the tag
//!   resolves to with what the node holds (CRI `ImageStatus` repo digests). Equal: the
//!   runtime confirms with a `PullImage` **by digest** (only a manifest `HEAD` through
//!   the runtime's own route; it cannot move anything). Different: the tag moved — no
//!   pull, the tag's status plus `tag_moved`. A digest reference the node holds is
//!   pulled as is. An image the node does not hold is resolved, or pulled (and removed
//!   again) with `--pull-absent-images`.

pub mod resolve;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pullwatch::locks::lock;
use pullwatch::{
    CheckMode, CheckStatus, CredentialAttempt, ImageReference, Platform, SourcedCredential,
    most_informative_failure,
};
use serde::Serialize;
use tracing::{debug, warn};

use crate::cri::{CriClient, CriError, classify_pull_error};
use crate::keyring::NodeKeyring;
use crate::route::RouteRuntime;
use crate::route::crio;
use resolve::Resolver;

/// `credential_source` when no AuthConfig was sent: the runtime used its own registry
/// configuration (containerd `registry.configs`) or went anonymous.
pub(crate) const RUNTIME_SOURCE: &str = "runtime";

/// Node policy for checks.
#[derive(Clone, Copy, Debug)]
pub struct CheckOptions {
    /// `--pull-absent-images`: allow `pull` on images the node does not hold.
    pub pull_absent_images: bool,
    /// `--keep-pulled-images`: keep what a check pulled.
    pub keep_pulled_images: bool,
}

/// The result of one check, as printed by `check -o json` (exactly these keys) and
/// sent to the aggregator.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CheckReport {
    /// The image as asked for.
    pub image: String,
    pub status: CheckStatus,
    pub reason: String,
    /// What actually ran: `pull` or `resolve` (the requested mode when nothing ran).
    pub mode: CheckMode,
    /// Where the credential that decided the result came from (`secret/<ns>/<name>`,
    /// `config.json:<path>`, `plugin:<name>`, or `runtime`).
    pub credential_source: String,
    /// What the reference resolves to now along the node's route (`sha256:...`); for
    /// a digest reference, that digest. None when no manifest was answered.
    pub digest: Option<String>,
    /// What the node holds under this name (CRI `ImageStatus` repo digest), when it
    /// holds the image and the runtime knows where it came from.
    pub held_digest: Option<String>,
    /// The node holds the tag at another digest than the registry now answers: a
    /// restart here runs different code than a start on a fresh node. None when it
    /// cannot be known (not held, digest reference, no digest from the registry).
    pub tag_moved: Option<bool>,
    /// Whether the node holds the image after the check.
    #[serde(skip)]
    pub image_present: bool,
    #[serde(skip)]
    pub duration: Duration,
    /// The runtime itself failed (not the registry): the result says nothing about the
    /// image and should not be exported as its status.
    #[serde(skip)]
    pub runtime_failure: bool,
}

impl CheckReport {
    pub fn is_available(&self) -> bool {
        self.status == CheckStatus::Available
    }
}

/// Checks images from this node.
pub struct Checker {
    cri: CriClient,
    keyring: Arc<NodeKeyring>,
    resolver: Arc<Resolver>,
    options: CheckOptions,
    /// The resolver follows the hosts.toml rules of the node's runtime version, learnt
    /// from CRI `Version` once the runtime answers it.
    runtime_known: AtomicBool,
    /// This node's platform: an index without an entry for it cannot be pulled here.
    platform: Platform,
    /// How long the runtime's confirmation of a held image stands (zero: every check).
    confirm_interval: Duration,
    /// When the runtime last confirmed (image, digest, credential source): a `PullImage`
    /// by digest commits containerd's metadata store, so it is not repeated every check.
    confirmed: Mutex<HashMap<(String, String, String), Instant>>,
}

/// Runtime confirmations remembered at most (oldest expired first).
const MAX_CONFIRMED: usize = 16_384;

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field("cri", &self.cri)
            .field("options", &self.options)
            .finish()
    }
}

impl Checker {
    pub fn new(
        cri: CriClient,
        keyring: Arc<NodeKeyring>,
        resolver: Arc<Resolver>,
        options: CheckOptions,
    ) -> Checker {
        Checker {
            cri,
            keyring,
            resolver,
            options,
            runtime_known: AtomicBool::new(false),
            platform: Platform::host(),
            confirm_interval: Duration::ZERO,
            confirmed: Mutex::new(HashMap::new()),
        }
    }

    /// Lets the runtime's confirmation of a held image (a `PullImage` by digest) stand
    /// for `interval`: in between, a held image whose tag still resolves to the digest
    /// the node holds, along the same route with the same credential, is answered by
    /// the walk of its pull path alone, with no runtime write.
    pub fn with_runtime_confirmation(mut self, interval: Duration) -> Checker {
        self.confirm_interval = interval;
        self
    }

    fn recently_confirmed(&self, key: &(String, String, String)) -> bool {
        !self.confirm_interval.is_zero()
            && lock(&self.confirmed)
                .get(key)
                .is_some_and(|at| at.elapsed() < self.confirm_interval)
    }

    fn confirmed_now(&self, key: (String, String, String)) {
        if self.confirm_interval.is_zero() {
            return;
        }
        let mut confirmed = lock(&self.confirmed);
        if confirmed.len() >= MAX_CONFIRMED {
            let interval = self.confirm_interval;
            confirmed.retain(|_, at| at.elapsed() < interval);
            if confirmed.len() >= MAX_CONFIRMED {
                confirmed.clear();
            }
        }
        confirmed.insert(key, Instant::now());
    }

    /// Tells the resolver which containerd it stands in for (once; retried while the
    /// runtime does not answer, meanwhile the current rules apply).
    async fn learn_runtime(&self) {
        if self.runtime_known.load(Ordering::Relaxed) {
            return;
        }
        match self.cri.version().await {
            Ok(version) => self.runtime_is(&version.runtime_name, &version.runtime_version),
            Err(error) => debug!(%error, "runtime version unknown; current hosts.toml rules"),
        }
    }

    /// What CRI `Version` answered (the session asks it when it registers).
    pub(crate) fn runtime_is(&self, name: &str, version: &str) {
        self.resolver.set_runtime(name, version);
        self.runtime_known.store(true, Ordering::Relaxed);
    }

    pub fn cri(&self) -> &CriClient {
        &self.cri
    }

    pub fn keyring(&self) -> &NodeKeyring {
        &self.keyring
    }

    /// Checks `image` in `mode` with the workload's `pull_secrets` (already matched to
    /// the image; empty outside a workload).
    pub async fn check(
        &self,
        image: &str,
        mode: CheckMode,
        pull_secrets: &[SourcedCredential],
    ) -> CheckReport {
        let started = Instant::now();
        let (mut report, looked_up) = self.check_inner(image, mode, pull_secrets).await;
        report.reason = self
            .redact(image, &report.reason, pull_secrets, looked_up)
            .await;
        report.duration = started.elapsed();
        debug!(image, status = %report.status, mode = %report.mode, source = %report.credential_source, elapsed_ms = report.duration.as_millis() as u64, "check done");
        report
    }

    /// `reason` without any form of a credential the check may have used (the
    /// workload's secrets, the node's files and plugins): the runtime and the registry
    /// quote what they were sent. `looked_up` is what the check's own keyring lookup
    /// found; a check that ended before its lookup has the keyring asked here (so a
    /// failing credential plugin runs once per check, not twice). The one place every
    /// reason of the agent passes.
    async fn redact(
        &self,
        image: &str,
        reason: &str,
        pull_secrets: &[SourcedCredential],
        looked_up: Option<Vec<SourcedCredential>>,
    ) -> String {
        if reason.is_empty() {
            return String::new();
        }
        let mut redactor = pullwatch::redact::Redactor::for_credentials(
            pull_secrets.iter().map(|s| &s.credential),
        );
        let node_credentials = match looked_up {
            Some(found) => found,
            None => match ImageReference::parse(image) {
                Ok(reference) => self.keyring.lookup(&reference, &[]).await.credentials,
                Err(_) => Vec::new(),
            },
        };
        for found in node_credentials {
            redactor.credential(&found.credential);
        }
        redactor.redact(reason)
    }

    /// The check itself, in its steps: the reference, what the node holds, the
    /// credentials to try, the first step (a pull that re-points nothing, or a
    /// resolve), then what that came to, with the credentials the keyring lookup
    /// found (None when the check ended before it). [`Checker::check`] times it and
    /// redacts it.
    async fn check_inner(
        &self,
        image: &str,
        mode: CheckMode,
        pull_secrets: &[SourcedCredential],
    ) -> (CheckReport, Option<Vec<SourcedCredential>>) {
        let report = CheckReport::unchecked(image, mode);
        let reference = match ImageReference::parse(image) {
            Ok(reference) => reference,
            Err(error) => {
                let report = report.refused(CheckStatus::BadImageFormat, error.to_string());
                return (report, None);
            }
        };
        self.learn_runtime().await;
        // CRI-O resolves short names through registries.conf, not as Docker Hub names.
        if self.resolver.route_runtime() == RouteRuntime::CriO && crio::short_name(image) {
            let reason = crio::short_name_reason(image);
            return (report.refused(CheckStatus::BadImageFormat, reason), None);
        }
        let node = match self.node_copy(&reference, mode).await {
            Ok(node) => node,
            Err(error) => return (report.runtime_failed(&error), None),
        };
        let mut report = CheckReport {
            image_present: node.held,
            held_digest: node.digests.first().cloned(),
            ..report
        };
        let lookup = self.keyring.lookup(&reference, pull_secrets).await;
        let candidates = candidates(&lookup.credentials);
        let finding = match self.first_step(&reference, mode, &node) {
            FirstStep::Pull { known_digest } => {
                self.pull_unmovable(&reference, known_digest, &node, &candidates, &mut report)
                    .await
            }
            FirstStep::Resolve => {
                self.resolve_then_confirm(&reference, mode, &node, &candidates, &mut report)
                    .await
            }
        };
        (
            report.settle(finding, &lookup.problems),
            Some(lookup.credentials),
        )
    }

    /// What the node holds under `reference` (CRI `ImageStatus`). Resolve mode does not
    /// depend on the runtime: a runtime that cannot answer there only means nothing is
    /// known about the node's copy.
    async fn node_copy(
        &self,
        reference: &ImageReference,
        mode: CheckMode,
    ) -> Result<NodeCopy, CriError> {
        let record = match self.cri.image_status(&reference.to_string()).await {
            Ok(record) => record,
            Err(_) if mode == CheckMode::Resolve => None,
            Err(error) => return Err(error),
        };
        // A record without a repo digest is what a failed pull leaves (containerd keeps
        // the tag of an artifact it could not unpack): nothing the node could run from,
        // so not held. Nor is it pulled over (a pull would replace the record and the
        // clean-up after it remove it): it is resolved, with its pull path walked.
        Ok(match record {
            Some(image) if image.repo_digests.is_empty() => NodeCopy {
                unpulled_record: true,
                ..NodeCopy::default()
            },
            Some(image) => NodeCopy {
                held: true,
                digests: repo_digests_of(reference, &image.repo_digests),
                unpulled_record: false,
            },
            None => NodeCopy::default(),
        })
    }

    /// Whether the check may pull at once (nothing a pull could re-point) or resolves
    /// first.
    fn first_step(
        &self,
        reference: &ImageReference,
        mode: CheckMode,
        node: &NodeCopy,
    ) -> FirstStep {
        let pull_absent_images = self.options.pull_absent_images && !node.unpulled_record;
        match reference.digest() {
            _ if mode == CheckMode::Resolve => FirstStep::Resolve,
            // A digest cannot move: pulling it re-points nothing.
            Some(digest) if node.held || pull_absent_images => FirstStep::Pull {
                known_digest: Some(digest.to_string()),
            },
            // Nothing held under this tag: nothing a pull could re-point.
            None if !node.held && pull_absent_images => FirstStep::Pull { known_digest: None },
            // A held tag: resolve first, then confirm by digest if nothing moved.
            _ => FirstStep::Resolve,
        }
    }

    /// A pull that re-points nothing (a digest, or a tag the node does not hold); what
    /// it pulled goes again unless the node held it or `--keep-pulled-images`.
    async fn pull_unmovable(
        &self,
        reference: &ImageReference,
        known_digest: Option<String>,
        node: &NodeCopy,
        candidates: &[Option<&SourcedCredential>],
        report: &mut CheckReport,
    ) -> Finding {
        // The normalized form: what the kubelet hands the runtime after parsing.
        let target = reference.to_string();
        report.mode = CheckMode::Pull;
        report.digest = known_digest;
        // A check dropped from here on (its session broke) still removes what it pulled.
        let abandoned =
            (!node.held && !self.options.keep_pulled_images).then(|| RemoveIfAbandoned {
                cri: self.cri.clone(),
                target: Some(target.clone()),
            });
        let finding = self.pull(&target, candidates).await;
        if matches!(finding, Finding::Pulled(Ok(_))) && !node.held {
            // What the pulled tag turned out to be, before it goes again.
            if report.digest.is_none()
                && let Ok(Some(image)) = self.cri.image_status(&target).await
            {
                report.digest = repo_digests_of(reference, &image.repo_digests)
                    .into_iter()
                    .next();
            }
            self.remove_or_keep(&target, report).await;
        }
        if let Some(mut abandoned) = abandoned {
            abandoned.target = None;
        }
        finding
    }

    /// Resolves along the node's route and says whether the node's copy of a tag is
    /// current; in `auto`/`pull`, a held tag that still resolves to what the node holds
    /// is then confirmed by the runtime, by digest.
    async fn resolve_then_confirm(
        &self,
        reference: &ImageReference,
        mode: CheckMode,
        node: &NodeCopy,
        candidates: &[Option<&SourcedCredential>],
        report: &mut CheckReport,
    ) -> Finding {
        report.mode = CheckMode::Resolve;
        let (resolved, attempts) = self.resolve(reference, candidates).await;
        let pinned = reference.digest();
        report.digest = pinned
            .map(str::to_string)
            .or(resolved.as_ref().and_then(|worked| worked.digest.clone()))
            // Found, but not for this node's platform: still what the tag is now.
            .or_else(|| attempts.iter().find_map(|a| a.outcome.digest.clone()));
        let Some(now) = report.digest.clone() else {
            return Finding::Resolved(resolved, attempts);
        };
        if pinned.is_some() || node.digests.is_empty() {
            return Finding::Resolved(resolved, attempts);
        }
        let moved = !node.digests.contains(&now);
        report.tag_moved = Some(moved);
        let Some(worked) = resolved.as_ref().filter(|_| mode != CheckMode::Resolve) else {
            return Finding::Resolved(resolved, attempts);
        };
        if moved {
            debug!(image = %reference, held = ?node.digests, %now, "tag moved; not pulled");
            return Finding::Resolved(resolved, attempts);
        }
        let confirmation = (reference.to_string(), now, worked.source.clone());
        if self.recently_confirmed(&confirmation) {
            // The walk just said the node could pull it; the runtime said so too,
            // recently, for this digest and route.
            return Finding::Resolved(resolved, attempts);
        }
        report.mode = CheckMode::Pull;
        let by_digest = format!("{}@{}", reference.name(), confirmation.1);
        let finding = self.pull(&by_digest, candidates).await;
        if matches!(finding, Finding::Pulled(Ok(_))) {
            self.confirmed_now(confirmation);
        }
        finding
    }

    /// CRI `PullImage` of `target` with each credential in turn until one works.
    async fn pull(&self, target: &str, candidates: &[Option<&SourcedCredential>]) -> Finding {
        let mut attempts = Vec::new();
        for candidate in candidates {
            let source = source_of(*candidate);
            match self
                .cri
                .pull_image(target, candidate.map(|c| &c.credential))
                .await
            {
                Ok(image_ref) => {
                    debug!(image = %target, %image_ref, %source, "pulled");
                    return Finding::Pulled(Ok(source));
                }
                Err(error) if error.is_runtime_failure() => {
                    return Finding::RuntimeFailed(error);
                }
                Err(error) => attempts.push(CredentialAttempt {
                    source,
                    outcome: classify_pull_error(&error),
                }),
            }
        }
        Finding::Pulled(Err(attempts))
    }

    /// The manifest along the node's route with each credential in turn: the source
    /// and digest that worked, or every attempt.
    async fn resolve(
        &self,
        reference: &ImageReference,
        candidates: &[Option<&SourcedCredential>],
    ) -> (Option<Worked>, Vec<CredentialAttempt>) {
        let mut attempts = Vec::new();
        for candidate in candidates {
            let source = source_of(*candidate);
            let resolved = self
                .resolver
                .resolve_for(reference, candidate.map(|c| &c.credential), &self.platform)
                .await;
            if resolved.outcome.is_available() {
                debug!(image = %reference, host = ?resolved.served_by, %source, digest = ?resolved.outcome.digest, "resolved");
                // An index without an entry this node runs: containerd answers "no
                // match for platform" here, whatever the credential.
                let here = resolved
                    .outcome
                    .for_platforms(std::slice::from_ref(&self.platform));
                if !here.is_available() {
                    attempts.push(CredentialAttempt {
                        source,
                        outcome: here,
                    });
                    return (None, attempts);
                }
                let worked = Worked {
                    source,
                    digest: resolved.outcome.digest,
                    note: here.reason,
                };
                return (Some(worked), attempts);
            }
            attempts.push(CredentialAttempt {
                source,
                outcome: resolved.outcome,
            });
        }
        (None, attempts)
    }

    /// An image pulled only for a check goes again, unless `--keep-pulled-images`.
    async fn remove_or_keep(&self, target: &str, report: &mut CheckReport) {
        if self.options.keep_pulled_images {
            report.image_present = true;
        } else if let Err(error) = self.cri.remove_image(target).await {
            warn!(image = %target, %error, "could not remove an image pulled only for a check");
            report.image_present = true;
        }
    }
}

/// An image a check is pulling for itself, removed if the check is dropped before it
/// removes it (`target` is taken once it did): a CRI RemoveImage of an image the pull
/// never made is a no-op.
struct RemoveIfAbandoned {
    cri: CriClient,
    target: Option<String>,
}

impl Drop for RemoveIfAbandoned {
    fn drop(&mut self) {
        let Some(target) = self.target.take() else {
            return;
        };
        // No runtime: the process is exiting and nothing can be sent any more.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let cri = self.cri.clone();
        runtime.spawn(async move {
            if let Err(error) = cri.remove_image(&target).await {
                warn!(image = %target, %error, "could not remove an image pulled for an abandoned check");
            }
        });
    }
}

/// What the node holds under a reference.
#[derive(Default)]
struct NodeCopy {
    /// The node holds the image (a record with a repo digest).
    held: bool,
    /// The manifest digests it holds for the reference's repository.
    digests: Vec<String>,
    /// A record without a repo digest: what a failed pull leaves.
    unpulled_record: bool,
}

/// How a check starts.
enum FirstStep {
    /// A pull that cannot re-point anything; `known_digest`: a digest reference's own.
    Pull { known_digest: Option<String> },
    /// Resolve along the route (then, for a held tag, confirm by digest).
    Resolve,
}

/// The credential source, and digest, that worked along the route.
struct Worked {
    source: String,
    digest: Option<String>,
    /// What the check skipped (a shallower `--check-depth`), else empty.
    note: String,
}

/// What a check's registry step came to.
enum Finding {
    /// The runtime answered the pull: the source that worked, or every attempt.
    Pulled(Result<String, Vec<CredentialAttempt>>),
    /// The runtime itself failed.
    RuntimeFailed(CriError),
    /// Resolved along the route (no pull): what worked, or every attempt.
    Resolved(Option<Worked>, Vec<CredentialAttempt>),
}

impl CheckReport {
    /// The report of a check not made yet.
    fn unchecked(image: &str, mode: CheckMode) -> CheckReport {
        CheckReport {
            image: image.to_string(),
            status: CheckStatus::UnknownError,
            reason: String::new(),
            mode,
            credential_source: String::new(),
            digest: None,
            held_digest: None,
            tag_moved: None,
            image_present: false,
            duration: Duration::ZERO,
            runtime_failure: false,
        }
    }

    /// Not checked: `status` for `reason`, found before any request.
    fn refused(self, status: CheckStatus, reason: String) -> CheckReport {
        CheckReport {
            status,
            reason,
            ..self
        }
    }

    /// The runtime itself failed: nothing is known about the image.
    fn runtime_failed(self, error: &CriError) -> CheckReport {
        CheckReport {
            runtime_failure: true,
            ..self.refused(CheckStatus::UnknownError, error.to_string())
        }
    }

    /// The status, credential source and reason `finding` comes to: what worked, or the
    /// most informative failure (with what the credential providers failed with); a
    /// moved tag says so.
    fn settle(mut self, finding: Finding, provider_problems: &[String]) -> CheckReport {
        match finding {
            Finding::RuntimeFailed(error) => return self.runtime_failed(&error),
            Finding::Pulled(Ok(source)) => {
                self.status = CheckStatus::Available;
                self.credential_source = source;
            }
            Finding::Resolved(Some(Worked { source, note, .. }), _) => {
                self.status = CheckStatus::Available;
                self.credential_source = source;
                self.reason = note;
            }
            Finding::Pulled(Err(attempts)) | Finding::Resolved(None, attempts) => {
                let failed = most_informative_failure(&attempts);
                self.status = failed.status;
                self.credential_source = failed.source;
                self.reason = failed.reason;
                if !provider_problems.is_empty() {
                    self.reason = format!(
                        "{}; credential providers failed: {}",
                        self.reason,
                        provider_problems.join("; ")
                    );
                }
            }
        }
        if self.tag_moved == Some(true) {
            let moved = format!(
                "tag moved: the node holds {} but the registry now answers {}; not pulled, so the node keeps what it runs",
                self.held_digest.as_deref().unwrap_or("?"),
                self.digest.as_deref().unwrap_or("?"),
            );
            self.reason = if self.reason.is_empty() {
                moved
            } else {
                format!("{}; {moved}", self.reason)
            };
        }
        self
    }
}

/// The manifest digests the node holds for `reference`'s repository, from CRI repo
/// digests (`registry/repo@sha256:...`; docker.io names as the runtime writes them).
fn repo_digests_of(reference: &ImageReference, repo_digests: &[String]) -> Vec<String> {
    let name = reference.name();
    repo_digests
        .iter()
        .filter_map(|entry| {
            let (entry_name, digest) = entry.rsplit_once('@')?;
            let entry_name = ImageReference::parse(entry_name)
                .map(|r| r.name())
                .unwrap_or_else(|_| entry_name.to_string());
            (entry_name == name).then(|| digest.to_string())
        })
        .collect()
}

/// The credentials to try, in order; none found: one try with no AuthConfig (the
/// runtime's own configuration, or anonymous).
fn candidates(credentials: &[SourcedCredential]) -> Vec<Option<&SourcedCredential>> {
    if credentials.is_empty() {
        vec![None]
    } else {
        credentials.iter().map(Some).collect()
    }
}

fn source_of(candidate: Option<&SourcedCredential>) -> String {
    candidate
        .map(|c| c.source.to_string())
        .unwrap_or_else(|| RUNTIME_SOURCE.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_json_has_exactly_the_documented_keys() {
        let report = CheckReport {
            image: "nginx".into(),
            status: CheckStatus::Absent,
            reason: "gone".into(),
            mode: CheckMode::Resolve,
            credential_source: "runtime".into(),
            digest: Some("sha256:b".into()),
            held_digest: Some("sha256:a".into()),
            tag_moved: Some(true),
            image_present: true,
            duration: Duration::from_secs(1),
            runtime_failure: false,
        };
        // Exactly these keys, with these values: what `check -o json` prints.
        assert_eq!(
            serde_json::to_value(&report).unwrap(),
            serde_json::json!({
                "image": "nginx",
                "status": "absent",
                "reason": "gone",
                "mode": "resolve",
                "credential_source": "runtime",
                "digest": "sha256:b",
                "held_digest": "sha256:a",
                "tag_moved": true,
            })
        );
    }

    #[test]
    fn held_digests_are_those_of_the_same_repository() {
        let reference = ImageReference::parse("nginx:1.27").unwrap();
        let held = [
            "docker.io/library/nginx@sha256:aaa".to_string(),
            "registry.example/library/nginx@sha256:bbb".to_string(),
            "nginx@sha256:ccc".to_string(),
            "no-digest-here".to_string(),
        ];
        assert_eq!(
            repo_digests_of(&reference, &held),
            ["sha256:aaa", "sha256:ccc"]
        );
    }
}
