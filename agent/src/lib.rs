//! pullwatch-agent: checks, from a node, whether images can be pulled, the way the
//! kubelet on that node would pull them. One module per stage:
//!
//! - [`cri`]: the runtime's CRI socket (`runtime.v1`) and CRI errors as check statuses;
//! - [`keyring`]: the credentials the kubelet would try, in its order;
//! - [`route`]: containerd's hosts.toml route and its own registry credentials;
//! - [`check`]: the executor that picks `pull` or `resolve` per image
//!   ([`check::resolve`]: manifest-only checks along the route);
//! - [`session`]: the stream to the aggregator (`run`), [`metrics`]: per-node `/metrics`;
//! - [`cli`]: flags and wiring.

pub mod check;
pub mod cli;
pub mod cri;
pub mod keyring;
pub mod metrics;
pub mod route;
pub mod session;
