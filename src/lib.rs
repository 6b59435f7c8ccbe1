//! pullwatch's shared vocabulary: image references, check statuses, registry
//! credentials and the kubelet's keyring, and the generated agent protocol.
//!
//! The aggregator and the agent both build on these; nothing here does I/O.

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

pub use credentials::{DockerConfig, Keyring, RegistryCredential, SourcedCredential};
pub use platform::Platform;
pub use reference::{ImageReference, ReferenceError};
pub use status::{CheckOutcome, CheckStatus};

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
