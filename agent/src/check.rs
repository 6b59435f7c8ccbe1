//! The check executor: one image, checked from this node the way the kubelet would pull
//! it, in one of three modes.
//!
//! - `pull`: CRI `PullImage` with each matching credential in turn (none: no
//!   AuthConfig). On a node that holds the image this only resolves the manifest
//!   (`HEAD`), through the runtime's own route: the most faithful check there is.
//! - `resolve`: the manifest along containerd's route ([`crate::resolve`]), no layers.
//! - `auto`: `pull` where `ImageStatus` says the image is present, `resolve` where not.
//!
//! Pulling an absent image downloads all of it, so it happens only with
//! `--pull-absent-images` (otherwise such a check resolves instead, and says so in
//! `mode`), and the image is removed again afterwards unless `--keep-pulled-images`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pullwatch::{CheckOutcome, CheckStatus, ImageReference, SourcedCredential};
use serde::Serialize;
use tracing::{debug, warn};

use crate::cri::{CriClient, CriError, classify_pull_error};
use crate::keyring::NodeKeyring;
use crate::resolve::Resolver;

/// `credential_source` when no AuthConfig was sent: the runtime used its own registry
/// configuration (containerd `registry.configs`) or went anonymous.
pub const RUNTIME_SOURCE: &str = "runtime";

/// How a check is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Auto,
    Pull,
    Resolve,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Pull => "pull",
            Mode::Resolve => "resolve",
        }
    }
}

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
    pub mode: String,
    /// Where the credential that decided the result came from (`secret/<ns>/<name>`,
    /// `config.json:<path>`, `plugin:<name>`, or `runtime`).
    pub credential_source: String,
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
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field("cri", &self.cri)
            .field("options", &self.options)
            .finish()
    }
}

/// One credential's attempt.
struct Attempt {
    source: String,
    outcome: CheckOutcome,
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
        }
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
        mode: Mode,
        pull_secrets: &[SourcedCredential],
    ) -> CheckReport {
        let started = Instant::now();
        let mut report = self.check_inner(image, mode, pull_secrets).await;
        report.duration = started.elapsed();
        debug!(image, status = %report.status, mode = %report.mode, source = %report.credential_source, elapsed_ms = report.duration.as_millis() as u64, "check done");
        report
    }

    async fn check_inner(
        &self,
        image: &str,
        mode: Mode,
        pull_secrets: &[SourcedCredential],
    ) -> CheckReport {
        let mut report = CheckReport {
            image: image.to_string(),
            status: CheckStatus::UnknownError,
            reason: String::new(),
            mode: mode.as_str().to_string(),
            credential_source: String::new(),
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

        let present = if mode == Mode::Resolve {
            None
        } else {
            match self.cri.image_status(&target).await {
                Ok(image) => Some(image.is_some()),
                Err(error) => return runtime_failed(report, &error),
            }
        };
        let run_pull = match (mode, present) {
            (Mode::Resolve, _) => false,
            (_, Some(true)) => true,
            (_, _) => self.options.pull_absent_images,
        };
        report.image_present = present.unwrap_or(false);

        let lookup = self.keyring.lookup(&reference, pull_secrets).await;
        let mut attempts: Vec<Attempt> = Vec::new();
        let candidates: Vec<Option<&SourcedCredential>> = if lookup.credentials.is_empty() {
            vec![None]
        } else {
            lookup.credentials.iter().map(Some).collect()
        };

        let mut success: Option<String> = None;
        if run_pull {
            report.mode = Mode::Pull.as_str().to_string();
            for candidate in &candidates {
                let source = source_of(*candidate);
                match self
                    .cri
                    .pull_image(&target, candidate.map(|c| &c.credential))
                    .await
                {
                    Ok(image_ref) => {
                        debug!(image = %target, %image_ref, %source, "pulled");
                        success = Some(source);
                        break;
                    }
                    Err(error) if error.is_runtime_failure() => {
                        return runtime_failed(report, &error);
                    }
                    Err(error) => attempts.push(Attempt {
                        source,
                        outcome: classify_pull_error(&error),
                    }),
                }
            }
            if success.is_some() && present == Some(false) {
                if self.options.keep_pulled_images {
                    report.image_present = true;
                } else if let Err(error) = self.cri.remove_image(&target).await {
                    warn!(image = %target, %error, "could not remove an image pulled only for a check");
                    report.image_present = true;
                }
            }
        } else {
            report.mode = Mode::Resolve.as_str().to_string();
            for candidate in &candidates {
                let source = source_of(*candidate);
                let resolved = self
                    .resolver
                    .resolve(&reference, candidate.map(|c| &c.credential))
                    .await;
                if resolved.outcome.is_available() {
                    debug!(image = %target, host = ?resolved.served_by, %source, "resolved");
                    success = Some(source);
                    break;
                }
                attempts.push(Attempt {
                    source,
                    outcome: resolved.outcome,
                });
            }
        }

        match success {
            Some(source) => {
                report.status = CheckStatus::Available;
                report.credential_source = source;
            }
            None => {
                let (status, source, reason) = combine(&attempts);
                report.status = status;
                report.credential_source = source;
                report.reason = reason;
                if !lookup.problems.is_empty() {
                    report.reason = format!(
                        "{}; credential providers failed: {}",
                        report.reason,
                        lookup.problems.join("; ")
                    );
                }
            }
        }
        report
    }
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

/// When every credential failed: the status of the attempt that got furthest (a
/// credential that authenticated and found the tag missing says more than one refused
/// at the door), and every attempt's reason.
fn combine(attempts: &[Attempt]) -> (CheckStatus, String, String) {
    let Some(best) = attempts
        .iter()
        .max_by_key(|a| a.outcome.status.informativeness())
    else {
        return (
            CheckStatus::UnknownError,
            String::new(),
            "no attempt was made".to_string(),
        );
    };
    let reason = if attempts.len() == 1 {
        best.outcome.reason.clone()
    } else {
        attempts
            .iter()
            .map(|a| format!("{}: {}", a.source, a.outcome.reason))
            .collect::<Vec<_>>()
            .join("; ")
    };
    (best.outcome.status, best.source.clone(), reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(source: &str, status: CheckStatus, reason: &str) -> Attempt {
        Attempt {
            source: source.into(),
            outcome: CheckOutcome::new(status, reason),
        }
    }

    #[test]
    fn combine_prefers_the_attempt_that_got_furthest() {
        let (status, source, reason) = combine(&[
            attempt("secret/ns/old", CheckStatus::AuthenticationFailure, "401"),
            attempt(
                "config.json:/k/config.json",
                CheckStatus::Absent,
                "not found",
            ),
        ]);
        assert_eq!(status, CheckStatus::Absent);
        assert_eq!(source, "config.json:/k/config.json");
        assert_eq!(
            reason,
            "secret/ns/old: 401; config.json:/k/config.json: not found"
        );
        let (status, source, reason) = combine(&[attempt(
            "runtime",
            CheckStatus::RegistryUnavailable,
            "refused",
        )]);
        assert_eq!(
            (status, source.as_str(), reason.as_str()),
            (CheckStatus::RegistryUnavailable, "runtime", "refused")
        );
    }

    #[test]
    fn report_json_has_exactly_the_documented_keys() {
        let report = CheckReport {
            image: "nginx".into(),
            status: CheckStatus::Absent,
            reason: "gone".into(),
            mode: "resolve".into(),
            credential_source: "runtime".into(),
            image_present: true,
            duration: Duration::from_secs(1),
            runtime_failure: false,
        };
        let value = serde_json::to_value(&report).unwrap();
        let mut keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            ["credential_source", "image", "mode", "reason", "status"]
        );
        assert_eq!(value["status"], "absent");
    }
}
