//! The route for one image, whichever runtime's rules built it: the endpoints the
//! runtime would ask, in order, each with its TLS settings, whether the kubelet's
//! credential may go there, the runtime's own credential for it, and whether the
//! runtime refuses it outright. [`crate::check::resolve`] walks it.
//!
//! containerd's route comes from hosts.toml ([`super::registry_hosts_for`]), CRI-O's
//! from registries.conf and the auth file ([`super::crio`]).

use pullwatch::{CheckOutcome, ImageReference, RegistryCredential};

use super::{RegistryHost, RuntimeAuth};

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
pub enum RouteRuntime {
    #[default]
    Containerd,
    CriO,
}

impl RouteRuntime {
    /// The runtime CRI `Version` names (`runtime_name`).
    pub fn from_runtime_name(name: &str) -> RouteRuntime {
        if name.eq_ignore_ascii_case("cri-o") {
            RouteRuntime::CriO
        } else {
            RouteRuntime::Containerd
        }
    }
}

/// Which answer stands when no endpoint had the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailurePolicy {
    /// containerd: the first failure that was not a 404, else "not found".
    FirstFailure,
    /// containers/image (CRI-O): the primary's (the last endpoint's) failure.
    Primary,
}

/// One endpoint of a route.
#[derive(Clone, Debug)]
pub struct RouteEndpoint {
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
    pub fn credential<'a>(
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
pub struct Route {
    pub endpoints: Vec<RouteEndpoint>,
    pub failure: FailurePolicy,
    /// containerd tries `HEAD /blobs/<digest>` when a digest's manifest request fails.
    pub blob_fallback: bool,
}

impl Route {
    /// containerd's route from its hosts (in order, the registry last): for a tag, the
    /// hosts that may `pull` and `resolve`; for a digest, those that may `pull`.
    pub fn containerd(
        hosts: Vec<RegistryHost>,
        image: &ImageReference,
        by_digest: bool,
        runtime_auth: &RuntimeAuth,
    ) -> Route {
        let registry = image.registry();
        let endpoints = hosts
            .into_iter()
            .filter(|h| h.capabilities.pull && (by_digest || h.capabilities.resolve))
            .map(|host| RouteEndpoint {
                repository: image.repository().to_string(),
                namespace: (host.host != registry).then(|| registry.to_string()),
                request_credentials: true,
                runtime_credential: Ok(runtime_auth.get(&host.host).cloned()),
                http_fallback: false,
                refused: None,
                host,
            })
            .collect();
        Route {
            endpoints,
            failure: FailurePolicy::FirstFailure,
            blob_fallback: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Capabilities;

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

    #[test]
    fn containerd_route_filters_by_capability() {
        let host = |name: &str, pull: bool, resolve: bool| RegistryHost {
            scheme: "https".into(),
            host: name.into(),
            path: "/v2".into(),
            capabilities: Capabilities {
                pull,
                resolve,
                push: false,
            },
            ..Default::default()
        };
        let hosts = vec![
            host("pull-only.mirror", true, false),
            host("reg.io", true, true),
        ];
        let tag = ImageReference::parse("reg.io/app:v1").unwrap();
        let route = Route::containerd(hosts.clone(), &tag, false, &RuntimeAuth::default());
        let names: Vec<&str> = route
            .endpoints
            .iter()
            .map(|e| e.host.host.as_str())
            .collect();
        assert_eq!(names, ["reg.io"]);
        assert_eq!(route.endpoints[0].namespace, None);
        let route = Route::containerd(hosts, &tag, true, &RuntimeAuth::default());
        assert_eq!(route.endpoints.len(), 2);
        assert_eq!(route.endpoints[0].namespace.as_deref(), Some("reg.io"));
        assert_eq!(route.failure, FailurePolicy::FirstFailure);
    }
}
