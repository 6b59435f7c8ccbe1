//! CRI-O's route: what containers/image (`docker/docker_image_src.go`,
//! `docker_client.go`) does for a pull, built from the node's files.
//!
//! - The entry of registries.conf (+ drop-ins) with the longest prefix for the image
//!   ([`super::registries_conf`]); none: the image's own registry alone.
//! - Its pull sources in order: mirrors allowed for this kind of reference, then the
//!   primary; each with the reference rewritten for its `location`.
//! - Per endpoint: `blocked` when the entry for the rewritten name is blocked
//!   (containers/image refuses it without a request); `insecure`: TLS unverified and a
//!   plain-HTTP fallback; CA and client certificates from `<certs dir>/<host[:port]>`
//!   (`*.crt`, `*.cert` + `*.key`).
//! - Credentials: the kubelet's AuthConfig only to endpoints on the image's own domain
//!   (containers/image ≥ 5.30 strips it from mirrors on another domain); elsewhere,
//!   and when the kubelet sends none, the auth file's entry for the rewritten
//!   repository, most specific key first ([`super::auth_file`]).
//! - The first endpoint that serves the manifest wins, whatever the others answered;
//!   when none does, the primary's failure is the answer.
//!
//! Short names (`nginx`) are not resolved: CRI-O resolves them through registries.conf
//! aliases and `unqualified-search-registries`, not as Docker Hub names; see
//! [`short_name`].

use std::path::PathBuf;

use pullwatch::{CheckOutcome, CheckStatus, ImageReference};
use tracing::debug;

use super::auth_file::{self, AuthPath};
use super::registries_conf::{
    AUTHENTICATION_FILE_HELPER, PullSource, RegistriesConf, Registry, parse_named,
};
use super::{Capabilities, FailurePolicy, RegistryHost, Route, RouteEndpoint, RouteError};

/// Where CRI-O's route is read from (the agent's `--registries-conf`,
/// `--registries-conf-dir`, `--containers-auth-file`, `--containers-certs-dir`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CrioRouteConfig {
    pub(crate) registries_conf: PathBuf,
    pub(crate) registries_conf_dir: PathBuf,
    /// CRI-O's `global_auth_file`; None: containers/image's default lookup for this
    /// process ([`auth_file::auth_file_paths`]).
    pub(crate) auth_file: Option<PathBuf>,
    /// Per-host certificate directories, in lookup order: the first `<dir>/<host>`
    /// that exists is used (containers/image: `/etc/containers/certs.d`, then
    /// `/etc/docker/certs.d`).
    pub(crate) certs_dirs: Vec<PathBuf>,
}

impl Default for CrioRouteConfig {
    fn default() -> Self {
        CrioRouteConfig {
            registries_conf: PathBuf::from("/etc/containers/registries.conf"),
            registries_conf_dir: PathBuf::from("/etc/containers/registries.conf.d"),
            auth_file: None,
            certs_dirs: vec![
                PathBuf::from("/etc/containers/certs.d"),
                PathBuf::from("/etc/docker/certs.d"),
            ],
        }
    }
}

impl CrioRouteConfig {
    /// The auth files consulted, in order.
    pub(crate) fn auth_paths(&self) -> Vec<AuthPath> {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"));
        auth_file::auth_file_paths(
            self.auth_file.as_deref(),
            |name| std::env::var(name).ok(),
            current_uid(),
            &home,
        )
    }

    /// The merged registries.conf (read on every call, as CRI-O re-reads it on reload).
    pub(crate) fn registries(&self) -> Result<RegistriesConf, RouteError> {
        RegistriesConf::load(
            &self.registries_conf,
            false,
            Some(&self.registries_conf_dir),
        )
        .map_err(|e| RouteError::Invalid {
            path: self.registries_conf.clone(),
            reason: e.to_string(),
        })
    }

    /// CRI-O's route for `image`. `by_digest`: for a manifest fetched by digest in the
    /// image's repository (child manifests), whatever `image` carries.
    pub(crate) fn route(
        &self,
        image: &ImageReference,
        by_digest: bool,
    ) -> Result<Route, RouteError> {
        let conf = self.registries()?;
        let (reference, digested) = match (by_digest, image.digest()) {
            (false, digest) => (image.to_string(), digest.is_some()),
            // The digest itself does not change which sources a digest may use.
            (true, Some(_)) => (image.to_string(), true),
            (true, None) => (format!("{}@sha256:{}", image.name(), "0".repeat(64)), true),
        };
        let sources = pull_sources(&conf, image, &reference, digested).map_err(|reason| {
            RouteError::Invalid {
                path: self.registries_conf.clone(),
                reason,
            }
        })?;
        let uses_auth_files = conf
            .credential_helpers
            .iter()
            .any(|h| h == AUTHENTICATION_FILE_HELPER);
        let auth_paths = self.auth_paths();
        let mut endpoints = Vec::with_capacity(sources.len());
        for source in sources {
            let physical =
                parse_named(&source.reference).map_err(|reason| RouteError::Invalid {
                    path: self.registries_conf.clone(),
                    reason,
                })?;
            endpoints.push(self.endpoint(
                &conf,
                image,
                &source,
                &physical,
                uses_auth_files.then_some(auth_paths.as_slice()),
            )?);
        }
        Ok(Route {
            endpoints,
            failure: FailurePolicy::Primary,
            blob_fallback: false,
        })
    }

    fn endpoint(
        &self,
        conf: &RegistriesConf,
        logical: &ImageReference,
        source: &PullSource,
        physical: &ImageReference,
        auth_paths: Option<&[AuthPath]>,
    ) -> Result<RouteEndpoint, RouteError> {
        let domain = physical.registry();
        let mut host = RegistryHost {
            scheme: "https".into(),
            host: physical.api_host().to_string(),
            path: "/v2".into(),
            capabilities: Capabilities {
                pull: true,
                resolve: true,
                push: false,
            },
            // containers/image sets InsecureSkipVerify from the endpoint, false or true.
            skip_verify: Some(source.endpoint.insecure),
            ..Default::default()
        };
        // docker.io's certificates live under "docker.io", as containers/image reads them;
        // the first directory that has the host's wins (`dockerCertDir`).
        if let Some(cert_dir) = self
            .certs_dirs
            .iter()
            .map(|dir| dir.join(domain))
            .find(|dir| dir.exists())
        {
            let files = super::cert_files(&cert_dir)?;
            if let Some(found) = files.into_iter().next() {
                host.ca = found.ca;
                host.client = found.client;
            }
        }
        let refused = conf
            .find_registry(&physical.name())
            .filter(|r: &&Registry| r.blocked)
            .map(|r| {
                CheckOutcome::new(
                    CheckStatus::AuthorizationFailure,
                    format!(
                        "registry {} is blocked in {}, {}: CRI-O refuses to pull from it",
                        r.prefix,
                        self.registries_conf.display(),
                        self.registries_conf_dir.display()
                    ),
                )
            });
        let runtime_credential = match auth_paths {
            None => Ok(None),
            Some(paths) => match auth_file::lookup(paths, &physical.name()) {
                Ok(found) => {
                    if let Some((_, path)) = &found {
                        debug!(endpoint = %physical.name(), file = %path.display(), "auth file credential");
                    }
                    Ok(found.map(|(credential, _)| credential))
                }
                Err(e) => Err(format!("getting username and password: {e}")),
            },
        };
        Ok(RouteEndpoint {
            host,
            repository: physical.repository().to_string(),
            namespace: None,
            request_credentials: physical.registry() == logical.registry(),
            runtime_credential,
            http_fallback: source.endpoint.insecure,
            refused,
        })
    }
}

/// `FindRegistry` + `PullSourcesFromReference` for `image` (`reference`: its
/// canonical string); no entry: the image's registry alone, unrewritten.
fn pull_sources(
    conf: &RegistriesConf,
    image: &ImageReference,
    reference: &str,
    digested: bool,
) -> Result<Vec<PullSource>, String> {
    let default;
    let registry = match conf.find_registry(&image.name()) {
        Some(registry) => registry,
        None => {
            default = Registry {
                prefix: reference.to_string(),
                endpoint: super::registries_conf::Endpoint {
                    location: reference.to_string(),
                    ..Default::default()
                },
                ..Default::default()
            };
            &default
        }
    };
    registry
        .pull_sources(reference, digested)
        .map_err(|e| e.to_string())
}

/// Whether `image`, as written in the pod, is a short name for containers/image: its
/// first path component is not a host (no `.` or `:`, not `localhost`), or it has
/// none. CRI-O resolves those through registries.conf, not as Docker Hub names.
pub(crate) fn short_name(image: &str) -> bool {
    match image.split_once('/') {
        None => true,
        Some((first, _)) => !first.contains(['.', ':']) && first != "localhost",
    }
}

/// The reason a short name is not checked on a CRI-O node.
pub(crate) fn short_name_reason(image: &str) -> String {
    format!(
        "short name {image:?}: CRI-O resolves it through registries.conf aliases and unqualified-search-registries, which pullwatch does not follow; write the image fully qualified (e.g. docker.io/library/nginx:1.27)"
    )
}

/// This process's user id (owner of its /proc entry), for `/run/containers/<uid>`.
fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or(0, |m| m.uid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(dir: &Path) -> CrioRouteConfig {
        CrioRouteConfig {
            registries_conf: dir.join("registries.conf"),
            registries_conf_dir: dir.join("registries.conf.d"),
            auth_file: Some(dir.join("auth.json")),
            certs_dirs: vec![dir.join("certs.d"), dir.join("docker-certs.d")],
        }
    }

    fn hosts(route: &Route) -> Vec<String> {
        route
            .endpoints
            .iter()
            .map(|e| format!("{}/{}", e.host.host, e.repository))
            .collect()
    }

    #[test]
    fn mirrors_rewrites_and_properties() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        std::fs::write(
            &config.registries_conf,
            r#"
[[registry]]
prefix = "reg.io/team"
location = "primary.io/mirror-of-team"

[[registry.mirror]]
location = "digest-mirror.io/t"
pull-from-mirror = "digest-only"

[[registry.mirror]]
location = "plain.mirror:5000"
insecure = true

[[registry]]
location = "primary.io/mirror-of-team/blocked-app"
blocked = true

[[registry]]
location = "docker.io"
[[registry.mirror]]
location = "hub-cache.internal"
"#,
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("certs.d/plain.mirror:5000")).unwrap();
        std::fs::write(dir.path().join("certs.d/plain.mirror:5000/ca.crt"), "x").unwrap();
        // The first directory with the host's wins: this one is not read for the mirror.
        std::fs::create_dir_all(dir.path().join("docker-certs.d/plain.mirror:5000")).unwrap();
        std::fs::write(
            dir.path()
                .join("docker-certs.d/plain.mirror:5000/other.crt"),
            "x",
        )
        .unwrap();
        // The second directory serves hosts the first does not have.
        std::fs::create_dir_all(dir.path().join("docker-certs.d/hub-cache.internal")).unwrap();
        std::fs::write(
            dir.path().join("docker-certs.d/hub-cache.internal/ca.crt"),
            "x",
        )
        .unwrap();
        // "m:p" for the mirror's namespace, "r:s" for the primary host.
        std::fs::write(
            dir.path().join("auth.json"),
            r#"{"auths":{"plain.mirror:5000":{"auth":"bTpw"},"primary.io":{"auth":"cjpz"}}}"#,
        )
        .unwrap();

        let tag = ImageReference::parse("reg.io/team/app:v1").unwrap();
        let route = config.route(&tag, false).unwrap();
        assert_eq!(
            hosts(&route),
            ["plain.mirror:5000/app", "primary.io/mirror-of-team/app"]
        );
        let mirror = &route.endpoints[0];
        assert!(mirror.http_fallback);
        assert_eq!(mirror.host.skip_verify, Some(true));
        assert_eq!(
            mirror.host.ca,
            [dir.path().join("certs.d/plain.mirror:5000/ca.crt")]
        );
        // Neither endpoint is on reg.io: the kubelet's credential goes nowhere; the
        // auth file answers for each.
        assert!(!mirror.request_credentials);
        assert_eq!(
            mirror
                .credential(None)
                .unwrap()
                .map(|c| c.username.as_str()),
            Some("m")
        );
        assert_eq!(
            route.endpoints[1]
                .credential(None)
                .unwrap()
                .map(|c| c.username.as_str()),
            Some("r")
        );
        assert_eq!(route.failure, FailurePolicy::Primary);
        assert!(!route.blob_fallback);

        let digest = format!("reg.io/team/app@sha256:{}", "a".repeat(64));
        let route = config
            .route(&ImageReference::parse(&digest).unwrap(), false)
            .unwrap();
        assert_eq!(
            hosts(&route),
            [
                "digest-mirror.io/t/app",
                "plain.mirror:5000/app",
                "primary.io/mirror-of-team/app"
            ]
        );
        // Child manifests by digest of a tag's repository: the digest's sources.
        assert_eq!(config.route(&tag, true).unwrap().endpoints.len(), 3);

        // The rewritten name falls under a blocked entry: refused without a request.
        let blocked = ImageReference::parse("reg.io/team/blocked-app:v1").unwrap();
        let route = config.route(&blocked, false).unwrap();
        assert!(route.endpoints[0].refused.is_none());
        let refusal = route.endpoints[1].refused.as_ref().unwrap();
        assert_eq!(refusal.status, CheckStatus::AuthorizationFailure);

        // Docker Hub: registry-1.docker.io, certificates under docker.io.
        let hub = ImageReference::parse("nginx:1.27").unwrap();
        let route = config.route(&hub, false).unwrap();
        assert_eq!(
            hosts(&route),
            [
                "hub-cache.internal/library/nginx",
                "registry-1.docker.io/library/nginx"
            ]
        );
        assert_eq!(
            route.endpoints[0].host.ca,
            [dir.path().join("docker-certs.d/hub-cache.internal/ca.crt")]
        );
        assert!(route.endpoints[1].host.ca.is_empty());
        // No entry: the registry alone, HTTPS verified, even on loopback.
        let other = ImageReference::parse("127.0.0.1:5000/app:v1").unwrap();
        let route = config.route(&other, false).unwrap();
        assert_eq!(hosts(&route), ["127.0.0.1:5000/app"]);
        assert_eq!(route.endpoints[0].host.scheme, "https");
        assert_eq!(route.endpoints[0].host.skip_verify, Some(false));
        assert!(route.endpoints[0].request_credentials);
    }

    #[test]
    fn a_broken_configuration_fails_the_route() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        std::fs::write(
            &config.registries_conf,
            "[[registry]]\nlocation = \"https://x\"\n",
        )
        .unwrap();
        let image = ImageReference::parse("reg.io/app:v1").unwrap();
        let err = config.route(&image, false).unwrap_err().to_string();
        assert!(err.contains("URI schemes are not supported"), "{err}");
        // A missing main file is an empty configuration, as for CRI-O's default path.
        std::fs::remove_file(&config.registries_conf).unwrap();
        assert_eq!(config.route(&image, false).unwrap().endpoints.len(), 1);
    }

    #[test]
    fn credential_helpers_without_the_auth_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        std::fs::write(
            &config.registries_conf,
            "credential-helpers = [\"secretservice\"]\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("auth.json"),
            r#"{"auths":{"reg.io":{"auth":"YTpi"}}}"#,
        )
        .unwrap();
        let image = ImageReference::parse("reg.io/app:v1").unwrap();
        let route = config.route(&image, false).unwrap();
        assert_eq!(route.endpoints[0].credential(None).unwrap(), None);
    }

    #[test]
    fn short_names() {
        for short in ["nginx", "nginx:1.27", "library/nginx", "team/app:v1"] {
            assert!(short_name(short), "{short}");
        }
        for qualified in [
            "docker.io/library/nginx",
            "localhost/app",
            "localhost:5000/app",
            "reg.io/app",
            "[::1]:5000/app",
        ] {
            assert!(!short_name(qualified), "{qualified}");
        }
    }
}
