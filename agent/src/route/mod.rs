//! Stage `route`: the way the node's runtime reaches a registry for one image, read
//! from the runtime's own files, never from the network: a [`Route`], the endpoints the
//! runtime would ask in order, each with its TLS settings ([`RegistryHost`]), the
//! credential it may get and whether the runtime refuses it. [`crate::check::resolve`]
//! walks it.
//!
//! Each runtime has its rules: containerd's hosts.toml and its own `registry.configs`
//! credentials ([`containerd`]); CRI-O's registries.conf and the containers auth file
//! ([`crio`] over [`registries_conf`] and [`auth_file`]). Which one applies is
//! `--runtime-dialect` ([`RuntimeDialect`]), settled into a [`RouteRuntime`].

pub(crate) mod auth_file;
pub mod containerd;
pub(crate) mod crio;
pub(crate) mod registries_conf;

use std::path::{Path, PathBuf};

use pullwatch::{CheckOutcome, RegistryCredential};

/// Why the route for a registry could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// What a host may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Capabilities {
    pub pull: bool,
    pub resolve: bool,
    pub push: bool,
}

impl Capabilities {
    const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
}

/// One endpoint of a registry's route.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RegistryHost {
    pub scheme: String,
    /// `host[:port]`.
    pub host: String,
    /// API root, normally `/v2`.
    pub path: String,
    pub capabilities: Capabilities,
    pub ca: Vec<PathBuf>,
    /// (certificate, key): key None when the certificate file holds both.
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    pub skip_verify: Option<bool>,
    pub headers: Vec<(String, String)>,
}

impl RegistryHost {
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.host)
    }
}

/// Docker's certs.d layout: `*.crt` CAs, `*.cert` client certificates with `*.key`.
pub(crate) fn cert_files(dir: &Path) -> Result<Vec<RegistryHost>, RouteError> {
    let mut host = RegistryHost::default();
    let entries = std::fs::read_dir(dir).map_err(|source| RouteError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for file in files {
        match file.extension().and_then(|e| e.to_str()) {
            Some("crt") => host.ca.push(file),
            Some("cert") => {
                let key = file.with_extension("key");
                if !key.is_file() {
                    return Err(RouteError::Invalid {
                        path: file,
                        reason: "client certificate without a matching .key".into(),
                    });
                }
                host.client.push((file, Some(key)));
            }
            _ => {}
        }
    }
    Ok(vec![host])
}

/// The runtime whose rules the agent follows (`--runtime-dialect`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RuntimeDialect {
    /// From CRI `Version`'s runtime name (`cri-o`: CRI-O; anything else, or no
    /// answer: containerd).
    #[default]
    Auto,
    Containerd,
    #[value(name = "cri-o")]
    CriO,
}

/// The runtime a route is built for, once `auto` is settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) enum RouteRuntime {
    #[default]
    Containerd,
    CriO,
}

impl RouteRuntime {
    /// The runtime CRI `Version` names (`runtime_name`).
    pub(crate) fn from_runtime_name(name: &str) -> RouteRuntime {
        if name.eq_ignore_ascii_case("cri-o") {
            RouteRuntime::CriO
        } else {
            RouteRuntime::Containerd
        }
    }
}

/// Which answer stands when no endpoint had the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailurePolicy {
    /// containerd: the first failure that was not a 404, else "not found".
    FirstFailure,
    /// containers/image (CRI-O): the primary's (the last endpoint's) failure.
    Primary,
}

/// One endpoint of a route.
#[derive(Clone, Debug)]
pub(crate) struct RouteEndpoint {
    /// Scheme, host, API root, TLS material, headers.
    pub host: RegistryHost,
    /// The repository on this endpoint (registries.conf `location` may rewrite it).
    pub repository: String,
    /// `?ns=<registry>` (containerd asks mirrors so).
    pub namespace: Option<String>,
    /// Whether the credential the kubelet sends in CRI may go to this endpoint.
    /// containers/image keeps it from mirrors on another domain.
    pub request_credentials: bool,
    /// The runtime's own credential for this endpoint (containerd's
    /// `registry.configs`, CRI-O's auth file); Err: why it cannot be read, which fails
    /// this endpoint when it is needed.
    pub runtime_credential: Result<Option<RegistryCredential>, String>,
    /// registries.conf `insecure`: HTTPS without verification, then plain HTTP when
    /// HTTPS gets no answer.
    pub http_fallback: bool,
    /// The runtime refuses this endpoint without asking (registries.conf `blocked`).
    pub refused: Option<CheckOutcome>,
}

impl RouteEndpoint {
    /// The credential this endpoint gets when the kubelet sends `requested`.
    pub(crate) fn credential<'a>(
        &'a self,
        requested: Option<&'a RegistryCredential>,
    ) -> Result<Option<&'a RegistryCredential>, String> {
        match requested {
            Some(credential) if self.request_credentials => Ok(Some(credential)),
            _ => self
                .runtime_credential
                .as_ref()
                .map(Option::as_ref)
                .map_err(Clone::clone),
        }
    }
}

/// The endpoints one runtime would try for one image, in order.
#[derive(Clone, Debug)]
pub(crate) struct Route {
    pub endpoints: Vec<RouteEndpoint>,
    pub failure: FailurePolicy,
    /// containerd tries `HEAD /blobs/<digest>` when a digest's manifest request fails.
    pub blob_fallback: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialect_names_and_runtime_names() {
        use clap::ValueEnum;
        let names: Vec<String> = RuntimeDialect::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
            .collect();
        assert_eq!(names, ["auto", "containerd", "cri-o"]);
        assert_eq!(RouteRuntime::from_runtime_name("cri-o"), RouteRuntime::CriO);
        assert_eq!(
            RouteRuntime::from_runtime_name("containerd"),
            RouteRuntime::Containerd
        );
        assert_eq!(
            RouteRuntime::from_runtime_name(""),
            RouteRuntime::Containerd
        );
    }

    #[test]
    fn credentials_per_endpoint() {
        let mine = RegistryCredential {
            username: "kubelet".into(),
            ..Default::default()
        };
        let runtime = RegistryCredential {
            username: "runtime".into(),
            ..Default::default()
        };
        let mut endpoint = RouteEndpoint {
            host: RegistryHost::default(),
            repository: "app".into(),
            namespace: None,
            request_credentials: true,
            runtime_credential: Ok(Some(runtime.clone())),
            http_fallback: false,
            refused: None,
        };
        assert_eq!(endpoint.credential(Some(&mine)).unwrap(), Some(&mine));
        assert_eq!(endpoint.credential(None).unwrap(), Some(&runtime));
        endpoint.request_credentials = false;
        assert_eq!(endpoint.credential(Some(&mine)).unwrap(), Some(&runtime));
        endpoint.runtime_credential = Err("unreadable".into());
        assert!(endpoint.credential(Some(&mine)).is_err());
        endpoint.request_credentials = true;
        assert_eq!(endpoint.credential(Some(&mine)).unwrap(), Some(&mine));
    }
}
