//! pullwatch's shared vocabulary and shared machinery, below both binaries: image
//! references ([`mod@reference`]), check statuses ([`status`]), registry credentials and the
//! kubelet's keyring ([`credentials`]), platforms ([`platform`]), the registry client
//! both binaries check with ([`registry`]), HTTP serving of their `/metrics`,
//! `/healthz`, `/readyz` ([`serve`]), the generated protocols with their conversions to
//! these types ([`wire`]) and the agent protocol's codec ([`codec`]), and what each
//! process needs: start-up and shutdown ([`process`]), logging ([`logging`]), text safe
//! for a terminal ([`terminal`]), poison-tolerant locks ([`locks`]), the allocator's
//! memory ([`memory`]), reconnect pauses ([`backoff`]), Go durations and globs
//! ([`duration`], [`mod@glob`]), JSON read as Go's `encoding/json` reads it
//! ([`go_json`]), redaction of secrets ([`redact`]) and [`error_chain`].
//! Nothing here knows about Kubernetes watches or CRI.
//!
//! Errors: each module's error says in detail what went wrong (callers map, e.g., a
//! [`ReferenceError`] to a status); [`Error`] gathers them for callers that only pass
//! an error on.

pub mod backoff;
pub(crate) mod codec;
pub mod credentials;
pub mod duration;
pub(crate) mod glob;
pub(crate) mod go_json;
pub mod locks;
pub mod logging;
pub mod memory;
pub(crate) mod platform;
pub mod process;
pub mod redact;
pub mod reference;
pub mod registry;
pub mod serve;
pub(crate) mod status;
pub mod terminal;
pub(crate) mod wire;

pub use credentials::{DockerConfig, Keyring, RegistryCredential, SourcedCredential};
pub use platform::Platform;
pub use reference::{ImageReference, ReferenceError};
pub use status::{
    CheckMode, CheckOutcome, CheckStatus, CredentialAttempt, FailedAttempts, PlatformVerdict,
    most_informative_failure,
};

/// Whatever failed in this crate, by what failed; each variant keeps the module's
/// detailed error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Credential(#[from] credentials::CredentialError),
    #[error(transparent)]
    Duration(#[from] duration::DurationError),
    #[error(transparent)]
    Glob(#[from] glob::BadPattern),
    #[error(transparent)]
    Index(#[from] platform::IndexError),
    #[error(transparent)]
    Bind(#[from] serve::BindError),
    #[error(transparent)]
    Logging(#[from] logging::LoggingError),
    #[error("starting the async runtime: {0}")]
    AsyncRuntime(#[source] std::io::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and all its causes, `: `-joined. (reqwest's own Display omits the cause,
/// which is where "connection refused" lives.) Never contains credentials as long as
/// none are put in URLs, which pullwatch never does.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

/// The release numbers a version string starts with, as runtimes report their version
/// (CRI `Version`): `v1.7.23-k3s2` is `[1, 7, 23]`, `1.6.20~ds1` `[1, 6, 20]`, `` none.
pub fn release_numbers(version: &str) -> Vec<u32> {
    version
        .trim_start_matches('v')
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .next()
        .unwrap_or_default()
        .split('.')
        .map_while(|part| part.parse().ok())
        .collect()
}

/// Generated code for `proto/pullwatch/v1`.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("pullwatch.v1");
}

/// Generated code for `proto/cri`: the subset of the CRI `runtime.v1` API (same package,
/// message names and field numbers as k8s.io/cri-api) that the agent calls.
pub mod cri {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("runtime.v1");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chains_causes_without_repeating_them() {
        let error = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        assert_eq!(error_chain(&error), "outer: connection refused");
    }
}
