//! What a check found, in the vocabulary every stage (checker, agent, metrics, CLI)
//! shares: its status, its outcome (status, reason, digest, platforms, each walked
//! platform's verdict), how it is made ([`CheckMode`]), and the one rule for a check
//! that tried several credentials ([`most_informative_failure`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The outcome class of one availability check, as exported in the canonical metrics.
///
/// The order of the variants is the order of the metric names in the exposition and
/// nothing else; use [`CheckStatus::informativeness`] to compare failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Available,
    Absent,
    BadImageFormat,
    RegistryUnavailable,
    AuthenticationFailure,
    AuthorizationFailure,
    RateLimited,
    UnknownError,
}

impl CheckStatus {
    /// Every status, in exposition order.
    pub const ALL: [CheckStatus; 8] = [
        CheckStatus::Available,
        CheckStatus::Absent,
        CheckStatus::BadImageFormat,
        CheckStatus::RegistryUnavailable,
        CheckStatus::AuthenticationFailure,
        CheckStatus::AuthorizationFailure,
        CheckStatus::RateLimited,
        CheckStatus::UnknownError,
    ];

    /// The snake_case name used in metric names, JSON and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Available => "available",
            CheckStatus::Absent => "absent",
            CheckStatus::BadImageFormat => "bad_image_format",
            CheckStatus::RegistryUnavailable => "registry_unavailable",
            CheckStatus::AuthenticationFailure => "authentication_failure",
            CheckStatus::AuthorizationFailure => "authorization_failure",
            CheckStatus::RateLimited => "rate_limited",
            CheckStatus::UnknownError => "unknown_error",
        }
    }

    /// How far into the registry conversation a check got before it ended with this
    /// status. When several credentials are tried and all fail, the attempt that got
    /// furthest tells the operator the most (a credential that authenticated and found
    /// the tag missing beats one that was refused at the door).
    pub fn informativeness(self) -> u8 {
        match self {
            CheckStatus::Available => 8,
            CheckStatus::BadImageFormat => 7,
            CheckStatus::Absent => 6,
            CheckStatus::AuthorizationFailure => 5,
            CheckStatus::AuthenticationFailure => 4,
            CheckStatus::RateLimited => 3,
            CheckStatus::RegistryUnavailable => 2,
            CheckStatus::UnknownError => 1,
        }
    }
}

impl fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a string that names no status.
#[derive(Debug, thiserror::Error)]
#[error("unknown check status {0:?} (expected one of: {names})", names = status_names())]
pub struct UnknownStatus(pub String);

/// Every status name, comma-separated, from [`CheckStatus::as_str`] (the one place
/// they are written out).
fn status_names() -> String {
    CheckStatus::ALL.map(CheckStatus::as_str).join(", ")
}

impl FromStr for CheckStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CheckStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

/// How a check is made: `pull` the image through the runtime, `resolve` its manifest
/// along the node's route without pulling, or `auto` (pull where the node holds the
/// image, resolve where not). The agent's `--mode` and the protocol's `CheckMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum CheckMode {
    Auto,
    Pull,
    Resolve,
}

impl CheckMode {
    /// Every mode.
    pub const ALL: [CheckMode; 3] = [CheckMode::Auto, CheckMode::Pull, CheckMode::Resolve];

    /// The name used in `--mode`, JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckMode::Auto => "auto",
            CheckMode::Pull => "pull",
            CheckMode::Resolve => "resolve",
        }
    }
}

impl fmt::Display for CheckMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status with the human-readable reason behind it (empty for `available`).
///
/// Reasons never carry credentials: they are built from status codes, registry error
/// codes and transport errors only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOutcome {
    pub status: CheckStatus,
    pub reason: String,
    /// The manifest digest the registry answered for the reference (its
    /// `Docker-Content-Digest`, else the sha256 of the manifest body), when it answered
    /// with a manifest. What a tag resolves to *now*: the base of tag-drift detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The media type of that manifest (an index, a manifest list, a single manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// When that manifest is an index: the platforms its entries offer (read once per
    /// digest, only where platforms are checked). Whether each workload's platforms
    /// are among them is decided per workload, not here.
    #[serde(skip)]
    pub platforms: Option<std::sync::Arc<[crate::platform::Platform]>>,
    /// When that manifest is an index and its pull path was walked: the verdict for
    /// each platform walked (the child containerd picks there, its config and layers).
    #[serde(skip)]
    pub walked: Option<std::sync::Arc<[PlatformVerdict]>>,
    /// When the check that produced this outcome finished (None: not a check, e.g. a
    /// reference that does not parse).
    #[serde(skip)]
    pub checked_at: Option<std::time::SystemTime>,
}

impl CheckOutcome {
    pub fn available() -> Self {
        CheckOutcome {
            status: CheckStatus::Available,
            reason: String::new(),
            digest: None,
            media_type: None,
            platforms: None,
            walked: None,
            checked_at: None,
        }
    }

    /// `available`, with the manifest the registry answered.
    pub fn available_at(digest: Option<String>, media_type: Option<String>) -> Self {
        CheckOutcome {
            digest,
            media_type,
            ..Self::available()
        }
    }

    pub fn new(status: CheckStatus, reason: impl Into<String>) -> Self {
        CheckOutcome {
            status,
            reason: reason.into(),
            digest: None,
            media_type: None,
            platforms: None,
            walked: None,
            checked_at: None,
        }
    }

    pub fn is_available(&self) -> bool {
        self.status == CheckStatus::Available
    }

    /// This outcome as it stands for a workload that can land on `wanted` platforms.
    ///
    /// Where the index's pull path was walked for a wanted platform, that platform's
    /// verdict decides (the first failing one, in `wanted`'s order); so a workload
    /// whose platforms all pull is `available` even when another platform's child is
    /// broken. A wanted platform that was not walked falls back on what the index
    /// offers: `absent` when it has no entry that platform runs (what containerd
    /// answers there). Unknown index contents, a single manifest, or no platform to
    /// check change nothing.
    pub fn for_platforms(&self, wanted: &[crate::platform::Platform]) -> CheckOutcome {
        if wanted.is_empty() {
            return self.clone();
        }
        if let Some(walked) = self.walked.as_deref() {
            let mut any_walked = false;
            for platform in wanted {
                if let Some(verdict) = walked.iter().find(|v| &v.platform == platform) {
                    any_walked = true;
                    if verdict.status != CheckStatus::Available {
                        return CheckOutcome {
                            status: verdict.status,
                            reason: verdict.reason.clone(),
                            ..self.clone()
                        };
                    }
                } else if let Some(offered) = self.platforms.as_deref() {
                    let missing =
                        crate::platform::missing_platforms(std::slice::from_ref(platform), offered);
                    if !missing.is_empty() {
                        return CheckOutcome {
                            status: CheckStatus::Absent,
                            reason: crate::platform::missing_reason(&missing, offered),
                            ..self.clone()
                        };
                    }
                }
            }
            if any_walked {
                return CheckOutcome {
                    status: CheckStatus::Available,
                    // What a shallower check skipped, when it says so.
                    reason: if self.is_available() {
                        self.reason.clone()
                    } else {
                        String::new()
                    },
                    ..self.clone()
                };
            }
            return self.clone();
        }
        let Some(offered) = self.platforms.as_deref() else {
            return self.clone();
        };
        if !self.is_available() {
            return self.clone();
        }
        let missing = crate::platform::missing_platforms(wanted, offered);
        if missing.is_empty() {
            return self.clone();
        }
        CheckOutcome {
            status: CheckStatus::Absent,
            reason: crate::platform::missing_reason(&missing, offered),
            ..self.clone()
        }
    }
}

/// The verdict of an index's pull path for one platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformVerdict {
    pub platform: crate::platform::Platform,
    pub status: CheckStatus,
    /// Why not `available` (empty when it is).
    pub reason: String,
}

/// One credential tried by a check: where it came from (`secret/<ns>/<name>`,
/// `config.json:<path>`, `runtime`...: safe to show, never the secret) and how the
/// check ended with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialAttempt {
    pub source: String,
    pub outcome: CheckOutcome,
}

/// What a check reports when every credential it tried failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedAttempts {
    /// The status of the attempt that got furthest.
    pub status: CheckStatus,
    /// The source of that attempt (empty when none was made).
    pub source: String,
    /// One attempt: its reason. Several: each one's source and reason.
    pub reason: String,
}

/// The rule both the agent and the central checker report by, as the kubelet tries
/// each credential in turn: when all failed, the status of the attempt that got
/// furthest ([`CheckStatus::informativeness`]: a credential that authenticated and
/// found the tag missing says more than one refused at the door; the later attempt
/// on a tie), and every attempt's reason under its source.
pub fn most_informative_failure(attempts: &[CredentialAttempt]) -> FailedAttempts {
    let Some(furthest) = attempts
        .iter()
        .max_by_key(|a| a.outcome.status.informativeness())
    else {
        return FailedAttempts {
            status: CheckStatus::UnknownError,
            source: String::new(),
            reason: "no attempt was made".to_string(),
        };
    };
    let reason = if let [only] = attempts {
        only.outcome.reason.clone()
    } else {
        let each: Vec<String> = attempts
            .iter()
            .map(|a| format!("{}: {}", a.source, a.outcome.reason))
            .collect();
        format!("no credential worked: {}", each.join("; "))
    };
    FailedAttempts {
        status: furthest.outcome.status,
        source: furthest.source.clone(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for status in CheckStatus::ALL {
            assert_eq!(status.as_str().parse::<CheckStatus>().unwrap(), status);
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{}\"", status.as_str())
            );
        }
        assert!("ok".parse::<CheckStatus>().is_err());
    }

    #[test]
    fn the_unknown_status_error_names_every_status() {
        let error = "ok".parse::<CheckStatus>().unwrap_err().to_string();
        assert_eq!(
            error,
            "unknown check status \"ok\" (expected one of: available, absent, bad_image_format, registry_unavailable, authentication_failure, authorization_failure, rate_limited, unknown_error)"
        );
    }

    fn attempt(source: &str, status: CheckStatus, reason: &str) -> CredentialAttempt {
        CredentialAttempt {
            source: source.into(),
            outcome: CheckOutcome::new(status, reason),
        }
    }

    #[test]
    fn the_attempt_that_got_furthest_speaks_for_all() {
        let failed = most_informative_failure(&[
            attempt("secret/ns/old", CheckStatus::AuthenticationFailure, "401"),
            attempt(
                "config.json:/k/config.json",
                CheckStatus::Absent,
                "not found",
            ),
            attempt("runtime", CheckStatus::RegistryUnavailable, "refused"),
        ]);
        assert_eq!(failed.status, CheckStatus::Absent);
        assert_eq!(failed.source, "config.json:/k/config.json");
        assert_eq!(
            failed.reason,
            "no credential worked: secret/ns/old: 401; config.json:/k/config.json: not found; runtime: refused"
        );
        // On a tie the later attempt speaks.
        let tie = most_informative_failure(&[
            attempt("a", CheckStatus::AuthorizationFailure, "403"),
            attempt("b", CheckStatus::AuthorizationFailure, "denied"),
        ]);
        assert_eq!(tie.source, "b");
        // One attempt: its own reason, its source beside it.
        let one = most_informative_failure(&[attempt(
            "runtime",
            CheckStatus::RegistryUnavailable,
            "refused",
        )]);
        assert_eq!(
            (one.status, one.source.as_str(), one.reason.as_str()),
            (CheckStatus::RegistryUnavailable, "runtime", "refused")
        );
        let none = most_informative_failure(&[]);
        assert_eq!(
            (none.status, none.source.as_str(), none.reason.as_str()),
            (CheckStatus::UnknownError, "", "no attempt was made")
        );
    }

    #[test]
    fn what_a_shallower_check_skipped_stays_with_each_workloads_verdict() {
        let p = |s: &str| s.parse::<crate::platform::Platform>().unwrap();
        let skipped =
            "checked to --check-depth platform: the config and the layers were not checked";
        let outcome = CheckOutcome {
            reason: skipped.into(),
            walked: Some(
                vec![PlatformVerdict {
                    platform: p("linux/amd64"),
                    status: CheckStatus::Available,
                    reason: String::new(),
                }]
                .into(),
            ),
            ..CheckOutcome::available_at(Some("sha256:i".into()), None)
        };
        let amd64 = outcome.for_platforms(&[p("linux/amd64")]);
        assert_eq!(
            (amd64.status, amd64.reason.as_str()),
            (CheckStatus::Available, skipped)
        );
    }

    #[test]
    fn each_workload_gets_the_verdict_of_its_own_platforms() {
        let p = |s: &str| s.parse::<crate::platform::Platform>().unwrap();
        let outcome = CheckOutcome {
            status: CheckStatus::Absent,
            reason: "layer 1 of 1 (sha256:a) not found for linux/arm64".into(),
            platforms: Some(vec![p("linux/amd64"), p("linux/arm64")].into()),
            walked: Some(
                vec![
                    PlatformVerdict {
                        platform: p("linux/amd64"),
                        status: CheckStatus::Available,
                        reason: String::new(),
                    },
                    PlatformVerdict {
                        platform: p("linux/arm64"),
                        status: CheckStatus::Absent,
                        reason: "layer 1 of 1 (sha256:a) not found for linux/arm64".into(),
                    },
                ]
                .into(),
            ),
            ..CheckOutcome::available_at(Some("sha256:i".into()), None)
        };
        let amd64 = outcome.for_platforms(&[p("linux/amd64")]);
        assert_eq!(amd64.status, CheckStatus::Available);
        assert_eq!(amd64.reason, "");
        assert_eq!(amd64.digest.as_deref(), Some("sha256:i"));
        let both = outcome.for_platforms(&[p("linux/amd64"), p("linux/arm64")]);
        assert_eq!(both.status, CheckStatus::Absent);
        assert!(both.reason.contains("linux/arm64"), "{}", both.reason);
        // Not walked, not offered: absent as containerd answers there.
        let s390x = outcome.for_platforms(&[p("linux/s390x")]);
        assert_eq!(s390x.status, CheckStatus::Absent);
        assert!(
            s390x
                .reason
                .starts_with("no match for platform linux/s390x")
        );
        // No platform known: the check's own outcome.
        assert_eq!(outcome.for_platforms(&[]), outcome);
    }

    #[test]
    fn informativeness_is_a_total_order_with_available_on_top() {
        let mut ranks: Vec<u8> = CheckStatus::ALL
            .iter()
            .map(|s| s.informativeness())
            .collect();
        ranks.sort_unstable();
        ranks.dedup();
        assert_eq!(ranks.len(), CheckStatus::ALL.len());
        assert_eq!(
            CheckStatus::ALL
                .iter()
                .max_by_key(|s| s.informativeness())
                .copied(),
            Some(CheckStatus::Available)
        );
    }
}
