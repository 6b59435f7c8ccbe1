//! pullwatch's shared vocabulary and shared machinery, below both binaries: image
//! references ([`mod@reference`]), check statuses ([`status`]), registry credentials and the
//! kubelet's keyring ([`credentials`]), platforms ([`platform`]), the registry client
//! both binaries check with ([`registry`]), HTTP serving of their `/metrics`,
//! `/healthz`, `/readyz` ([`serve`]), small support (locks, logging and start-up,
//! error chains: [`support`]; Go durations and globs; redacting `Debug`), and the
//! generated protocols with their conversions to these types ([`wire`]). Nothing here
//! knows about Kubernetes watches or CRI.
//!
//! Errors: each module's error says in detail what went wrong (callers map, e.g., a
//! [`ReferenceError`] to a status); [`Error`] gathers them for callers that only pass
//! an error on.

pub mod backoff;
pub mod codec;
pub mod credentials;
pub mod duration;
pub mod glob;
pub mod platform;
pub mod redact;
pub mod reference;
pub mod registry;
pub mod serve;
pub mod status;
pub mod support;
pub mod wire;

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
    Logging(#[from] support::LoggingError),
    #[error("starting the async runtime: {0}")]
    AsyncRuntime(#[source] std::io::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

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
