//! pullwatch-agent: checks, from a node, whether images can be pulled, the way the
//! kubelet on that node would pull them. One module per stage, in the order a check
//! flows: a task arrives over the [`session`], the [`check`] executor asks the
//! [`keyring`] for credentials, then the runtime ([`cri`]) or the registry along
//! the runtime's [`route`], and the result goes back over the session and into
//! [`metrics`].
//!
//! - [`cri`]: the runtime's CRI socket (`runtime.v1`) and CRI errors as check statuses;
//! - [`keyring`]: the credentials the kubelet would try, in its order
//!   (the kubelet's docker config files, then exec plugins);
//! - [`route`]: the way the node's runtime reaches a registry for an image: the
//!   endpoints it asks in order, from containerd's hosts.toml and its own registry
//!   credentials ([`route::containerd`]) or CRI-O's registries.conf and auth file;
//! - [`check`]: the executor that picks `pull` or `resolve` per image
//!   ([`check::resolve`]: manifest checks along the route, through
//!   [`pullwatch::registry`]);
//! - [`session`]: the stream to the aggregator (`run`);
//! - [`metrics`]: per-node `/metrics`, served by [`pullwatch::serve`];
//! - [`flags`]: the command line and the wiring it describes (`main` maps every
//!   error to its exit code).
//!
//! The shared vocabulary and machinery (references, statuses, credentials, the registry
//! client, HTTP serving, logging) come from the root crate `pullwatch`; nothing here
//! depends on the aggregator.

pub mod check;
pub mod cri;
pub mod flags;
pub mod keyring;
pub mod metrics;
pub mod route;
pub mod session;

use std::path::PathBuf;

/// Whatever failed in the agent's library, by what failed (one enum for the crate, as
/// kube-rs's controller-rs does it). Stage errors that carry detail a caller acts on
/// ([`cri::CriError`] codes, [`session::SessionError`] kinds) are kept whole inside.
/// `main` maps every one to exit code 2 (a setup that can never work) in one place.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CRI endpoint cannot be used (`--cri-endpoint`).
    #[error("setting up the checker: {0}")]
    Cri(#[from] cri::CriError),
    /// The credential-provider plugin configuration is refused, as the kubelet refuses it.
    #[error("setting up the checker: {0}")]
    Keyring(#[from] keyring::KeyringError),
    /// containerd's config (`--containerd-config`) cannot be read.
    #[error("setting up the checker: {0}")]
    Route(#[from] route::RouteError),
    /// A `--pull-secret-file` cannot be read or parsed.
    #[error("reading pull secret file {path}: {reason}")]
    PullSecret { path: PathBuf, reason: String },
    /// The session settings can never work (`--aggregator`, its CA, a token over
    /// plain HTTP).
    #[error("invalid configuration: {0}")]
    Session(#[from] session::SessionError),
    /// The metrics registry refused a metric.
    #[error("setting up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The check result could not be encoded.
    #[error("encoding the result: {0}")]
    Encode(#[from] serde_json::Error),
    /// The check result could not be written to stdout (a closed pipe is not an
    /// error: its reader took what it wanted).
    #[error("cannot write the result to stdout: {0}")]
    Output(std::io::Error),
    /// Shared machinery: logging, the async runtime, binding `--metrics-address`.
    #[error(transparent)]
    Shared(#[from] pullwatch::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
