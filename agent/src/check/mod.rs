//! Stage `check`, the executor: one image, checked from this node the way the kubelet
//! would pull it, in one of three modes.
//!
//! **A check never changes what the node would run**: it never re-points a tag, never
//! adds or removes an image the node had, and downloads no layer unless
//! `--pull-absent-images` (whose pull is removed again unless `--keep-pulled-images`).
//! A CRI `PullImage` of a held tag whose registry digest moved would download the new
//! image and re-point the node's tag, so a tag is never pulled on a node that holds it.
//!
//! - `resolve`: the manifest along containerd's route ([`resolve`], over [`crate::route`]),
//!   no layers.
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
use crate::route::crio;
use crate::route::endpoints::RouteRuntime;
use resolve::Resolver;

/// `credential_source` when no AuthConfig was sent: the runtime used its own registry
/// configuration (containerd `registry.configs`) or went anonymous.
pub const RUNTIME_SOURCE: &str = "runtime";

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
    pub fn runtime_is(&self, name: &str, version: &str) {
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
        let mut report = self.check_inner(image, mode, pull_secrets).await;
        report.reason = self.redact(image, &report.reason, pull_secrets).await;
        report.duration = started.elapsed();
        debug!(image, status = %report.status, mode = %report.mode, source = %report.credential_source, elapsed_ms = report.duration.as_millis() as u64, "check done");
        report
    }

    /// `reason` without any form of a credential the check may have used (the
    /// workload's secrets, the node's files and plugins): the runtime and the registry
    /// quote what they were sent. The one place every reason of the agent passes.
    async fn redact(
        &self,
        image: &str,
        reason: &str,
        pull_secrets: &[SourcedCredential],
    ) -> String {
        if reason.is_empty() {
            return String::new();
        }
        let mut redactor = pullwatch::redact::Redactor::for_credentials(
            pull_secrets.iter().map(|s| &s.credential),
        );
        if let Ok(reference) = ImageReference::parse(image) {
            for found in self.keyring.lookup(&reference, &[]).await.credentials {
                redactor.credential(&found.credential);
            }
        }
        redactor.redact(reason)
    }

    async fn check_inner(
        &self,
        image: &str,
        mode: CheckMode,
        pull_secrets: &[SourcedCredential],
    ) -> CheckReport {
        let mut report = CheckReport {
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
        };
        let reference = match ImageReference::parse(image) {
            Ok(reference) => reference,
            Err(error) => {
                report.status = CheckStatus::BadImageFormat;
                report.reason = error.to_string();
                return report;
            }
        };
        // The normalized form: what the kubelet hands the runtime after parsing.
        let target = reference.to_string();
        self.learn_runtime().await;
        // CRI-O resolves short names through registries.conf, not as Docker Hub names.
        if self.resolver.route_runtime() == RouteRuntime::CriO && crio::short_name(image) {
            report.status = CheckStatus::BadImageFormat;
            report.reason = crio::short_name_reason(image);
            return report;
        }

        // What the node holds. Resolve mode does not depend on the runtime: a runtime
        // that cannot answer there only means nothing is known about the node's copy.
        let held = match self.cri.image_status(&target).await {
            Ok(image) => image,
            Err(_) if mode == CheckMode::Resolve => None,
            Err(error) => return runtime_failed(report, &error),
        };
        // A record without a repo digest is what a failed pull leaves (containerd keeps
        // the tag of an artifact it could not unpack): nothing the node could run from,
        // so not held. Nor is it pulled over (a pull would replace the record and the
        // clean-up after it remove it): it is resolved, with its pull path walked.
        let unpulled_record = held
            .as_ref()
            .is_some_and(|image| image.repo_digests.is_empty());
        let held = held.filter(|image| !image.repo_digests.is_empty());
        let pull_absent_images = self.options.pull_absent_images && !unpulled_record;
        report.image_present = held.is_some();
        let held_digests: Vec<String> = held
            .as_ref()
            .map(|image| repo_digests_of(&reference, &image.repo_digests))
            .unwrap_or_default();
        report.held_digest = held_digests.first().cloned();

        let lookup = self.keyring.lookup(&reference, pull_secrets).await;
        let candidates: Vec<Option<&SourcedCredential>> = if lookup.credentials.is_empty() {
            vec![None]
        } else {
            lookup.credentials.iter().map(Some).collect()
        };

        let pinned = reference.digest().map(str::to_string);
        let decision = if mode == CheckMode::Resolve {
            None
        } else if let Some(digest) = &pinned {
            // A digest cannot move: pulling it re-points nothing.
            (held.is_some() || pull_absent_images).then(|| (target.clone(), Some(digest.clone())))
        } else if held.is_none() {
            // Nothing held under this tag: nothing a pull could re-point.
            pull_absent_images.then(|| (target.clone(), None))
        } else {
            // A held tag: resolve first, then confirm by digest if nothing moved.
            None
        };

        let result = match decision {
            Some((pull_target, known_digest)) => {
                report.mode = CheckMode::Pull;
                let result = self.pull(&pull_target, &candidates).await;
                report.digest = known_digest;
                if let PullResult::Done(Ok(_)) = &result
                    && held.is_none()
                {
                    // What the pulled tag turned out to be, before it goes again.
                    if report.digest.is_none()
                        && let Ok(Some(image)) = self.cri.image_status(&target).await
                    {
                        report.digest = repo_digests_of(&reference, &image.repo_digests)
                            .into_iter()
                            .next();
                    }
                    self.remove_or_keep(&target, &mut report).await;
                }
                result
            }
            None => {
                report.mode = CheckMode::Resolve;
                let (resolved, attempts) = self.resolve(&reference, &candidates).await;
                report.digest = pinned
                    .clone()
                    .or(resolved.as_ref().and_then(|(_, d)| d.clone()))
                    // Found, but not for this node's platform: still what the tag is now.
                    .or_else(|| attempts.iter().find_map(|a| a.outcome.digest.clone()));
                match (&resolved, &report.digest) {
                    // A held tag that resolved: compare before anything touches the runtime.
                    (Some(_), Some(now))
                        if mode != CheckMode::Resolve
                            && pinned.is_none()
                            && !held_digests.is_empty() =>
                    {
                        if held_digests.iter().any(|d| d == now) {
                            report.tag_moved = Some(false);
                            let source = resolved
                                .as_ref()
                                .map(|(source, _)| source.clone())
                                .unwrap_or_default();
                            let key = (target.clone(), now.clone(), source);
                            if self.recently_confirmed(&key) {
                                // The walk just said the node could pull it; the runtime
                                // said so too, recently, for this digest and route.
                                PullResult::Resolved(resolved, attempts)
                            } else {
                                report.mode = CheckMode::Pull;
                                let by_digest = format!("{}@{now}", reference.name());
                                let result = self.pull(&by_digest, &candidates).await;
                                if matches!(result, PullResult::Done(Ok(_))) {
                                    self.confirmed_now(key);
                                }
                                result
                            }
                        } else {
                            report.tag_moved = Some(true);
                            debug!(image = %target, held = ?held_digests, %now, "tag moved; not pulled");
                            PullResult::Resolved(resolved, attempts)
                        }
                    }
                    _ => {
                        // Resolve mode still says whether the node's copy is current.
                        if pinned.is_none()
                            && !held_digests.is_empty()
                            && let Some(now) = &report.digest
                        {
                            report.tag_moved = Some(!held_digests.iter().any(|d| d == now));
                        }
                        PullResult::Resolved(resolved, attempts)
                    }
                }
            }
        };

        match result {
            PullResult::RuntimeFailed(error) => return runtime_failed(report, &error),
            PullResult::Done(Ok(source)) | PullResult::Resolved(Some((source, _)), _) => {
                report.status = CheckStatus::Available;
                report.credential_source = source;
            }
            PullResult::Done(Err(attempts)) | PullResult::Resolved(None, attempts) => {
                let failed = most_informative_failure(&attempts);
                report.status = failed.status;
                report.credential_source = failed.source;
                report.reason = failed.reason;
                if !lookup.problems.is_empty() {
                    report.reason = format!(
                        "{}; credential providers failed: {}",
                        report.reason,
                        lookup.problems.join("; ")
                    );
                }
            }
        }
        if report.tag_moved == Some(true) {
            let moved = format!(
                "tag moved: the node holds {} but the registry now answers {}; not pulled, so the node keeps what it runs",
                report.held_digest.as_deref().unwrap_or("?"),
                report.digest.as_deref().unwrap_or("?"),
            );
            report.reason = if report.reason.is_empty() {
                moved
            } else {
                format!("{}; {moved}", report.reason)
            };
        }
        report
    }

    /// CRI `PullImage` of `target` with each credential in turn until one works.
    async fn pull(&self, target: &str, candidates: &[Option<&SourcedCredential>]) -> PullResult {
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
                    return PullResult::Done(Ok(source));
                }
                Err(error) if error.is_runtime_failure() => {
                    return PullResult::RuntimeFailed(error);
                }
                Err(error) => attempts.push(CredentialAttempt {
                    source,
                    outcome: classify_pull_error(&error),
                }),
            }
        }
        PullResult::Done(Err(attempts))
    }

    /// The manifest along the node's route with each credential in turn: the source
    /// and digest that worked, or every attempt.
    async fn resolve(
        &self,
        reference: &ImageReference,
        candidates: &[Option<&SourcedCredential>],
    ) -> (Option<(String, Option<String>)>, Vec<CredentialAttempt>) {
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
                return (Some((source, resolved.outcome.digest)), attempts);
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

/// What a check's registry step came to.
enum PullResult {
    /// The runtime answered the pull: the source that worked, or every attempt.
    Done(Result<String, Vec<CredentialAttempt>>),
    /// The runtime itself failed.
    RuntimeFailed(CriError),
    /// Resolved along the route (no pull): (source, digest) that worked, or attempts.
    Resolved(Option<(String, Option<String>)>, Vec<CredentialAttempt>),
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

fn source_of(candidate: Option<&SourcedCredential>) -> String {
    candidate
        .map(|c| c.source.to_string())
        .unwrap_or_else(|| RUNTIME_SOURCE.to_string())
}

fn runtime_failed(mut report: CheckReport, error: &CriError) -> CheckReport {
    report.status = CheckStatus::UnknownError;
    report.reason = error.to_string();
    report.runtime_failure = true;
    report
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
        let value = serde_json::to_value(&report).unwrap();
        let mut keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "credential_source",
                "digest",
                "held_digest",
                "image",
                "mode",
                "reason",
                "status",
                "tag_moved"
            ]
        );
        assert_eq!(value["status"], "absent");
        assert_eq!(value["tag_moved"], true);
        assert_eq!(value["held_digest"], "sha256:a");
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
