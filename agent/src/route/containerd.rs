//! containerd's route: the way containerd on this node would reach a registry, read
//! from containerd's own files.
//!
//! The route is containerd's (1.6/1.7 `remotes/docker/config`): the `hosts.toml` of the
//! registry's directory under `--containerd-hosts-dir` (`<host>_<port>_`, `<host>:<port>`,
//! then `_default`), its `[host."..."]` mirrors in file order with their capabilities,
//! `ca`, `client`, `skip_verify`, `header` and `override_path`, and the `server` (or the
//! registry itself) last. A directory without hosts.toml contributes Docker-style
//! certificate files (`*.crt`, `*.cert` + `*.key`). Without any directory: HTTPS to the
//! registry (`registry-1.docker.io` for Docker Hub), plain HTTP for loopback registries.
//! The rules follow the node's containerd version ([`HostsDialect`]).
//!
//! Also containerd's own credentials ([`RuntimeAuth`]: `registry.configs."<host>".auth`
//! of `--containerd-config`), which apply when the kubelet would send no AuthConfig.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use pullwatch::{ImageReference, RegistryCredential};
use serde::Deserialize;
use tracing::warn;

use super::{
    Capabilities, FailurePolicy, RegistryHost, Route, RouteEndpoint, RouteError, cert_files,
};

/// containerd's `IsLocalhost`: `localhost` or a loopback IP, with or without a port.
fn is_localhost(host: &str) -> bool {
    if host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
        return true;
    }
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => host,
        }
    };
    name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The directory containerd would read for `registry` under `root`, if any.
pub fn host_dir(root: &Path, registry: &str) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(i) = registry.rfind(':')
        && i > 0
        && !registry.ends_with(']')
    {
        candidates.push(format!("{}_{}_", &registry[..i], &registry[i + 1..]));
    }
    candidates.push(registry.to_string());
    candidates.push("_default".to_string());
    candidates
        .into_iter()
        .map(|c| root.join(c))
        .find(|p| p.is_dir())
}

/// How the node's containerd reads hosts.toml: the rules changed between versions, and
/// the agent must take the route the node's own containerd takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HostsDialect {
    /// containerd 1.6 (every release) and 1.7 before 1.7.32: a hosts.toml without a
    /// `[host]` table is rejected ("invalid `host` tree", containerd issue 10027), so
    /// its root-level `server`, `ca`... are ignored.
    RequiresHostTable,
    /// containerd 1.7.32 and later, 2.x, and runtimes whose version is unknown: a
    /// hosts.toml of root-level fields alone is honoured.
    #[default]
    Current,
}

impl HostsDialect {
    /// The dialect of the runtime CRI `Version` reports (`containerd`, `1.6.20~ds1`,
    /// `v1.7.13`, `v1.7.23-k3s2`...).
    pub fn for_runtime(name: &str, version: &str) -> HostsDialect {
        if !name.eq_ignore_ascii_case("containerd") {
            return HostsDialect::Current;
        }
        match pullwatch::release_numbers(version).as_slice() {
            [1, minor, ..] if *minor < 7 => HostsDialect::RequiresHostTable,
            [1, 7, patch, ..] if *patch < 32 => HostsDialect::RequiresHostTable,
            [1, 7] => HostsDialect::RequiresHostTable,
            _ => HostsDialect::Current,
        }
    }
}

/// The hosts containerd would try for `registry`, in order (the upstream last), read
/// with the current containerd's rules.
pub fn registry_hosts(root: &Path, registry: &str) -> Result<Vec<RegistryHost>, RouteError> {
    registry_hosts_for(root, registry, HostsDialect::Current)
}

/// The hosts the node's containerd (of `dialect`) would try for `registry`, in order.
///
/// As containerd's `loadHostDir`: a missing or empty hosts.toml means the directory's
/// certificate files; a hosts.toml containerd cannot decode is logged and ignored in
/// favour of the same certificate files (the registry itself is then the only host).
pub(crate) fn registry_hosts_for(
    root: &Path,
    registry: &str,
    dialect: HostsDialect,
) -> Result<Vec<RegistryHost>, RouteError> {
    let mut hosts = match host_dir(root, registry) {
        None => vec![RegistryHost::default()],
        Some(dir) => {
            let file = dir.join("hosts.toml");
            match std::fs::read_to_string(&file) {
                Ok(text) if !text.is_empty() => {
                    match parse_hosts_toml(&dir, &file, &text, dialect) {
                        Ok(hosts) => hosts,
                        Err(error) => {
                            warn!(%error, "containerd ignores a hosts.toml it cannot decode and uses the directory's certificate files; so does this check");
                            cert_files(&dir)?
                        }
                    }
                }
                Ok(_) => cert_files(&dir)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => cert_files(&dir)?,
                Err(source) => return Err(RouteError::Read { path: file, source }),
            }
        }
    };
    if let Some(last) = hosts.last_mut()
        && last.host.is_empty()
    {
        if registry == pullwatch::reference::DOCKER_HUB {
            last.scheme = "https".into();
            last.host = pullwatch::reference::DOCKER_HUB_API_HOST.into();
        } else {
            last.host = registry.to_string();
            if is_localhost(registry) {
                last.scheme = "http".into();
                last.skip_verify = Some(true);
            } else {
                last.scheme = "https".into();
            }
        }
        last.path = "/v2".into();
        last.capabilities = Capabilities::ALL;
    }
    Ok(hosts)
}

fn parse_hosts_toml(
    dir: &Path,
    file: &Path,
    text: &str,
    dialect: HostsDialect,
) -> Result<Vec<RegistryHost>, RouteError> {
    let invalid = |reason: String| RouteError::Invalid {
        path: file.to_path_buf(),
        reason,
    };
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| invalid(e.message().to_string()))?;
    let mut hosts = Vec::new();
    if let Some(value) = table.get("host") {
        let toml::Value::Table(mirrors) = value else {
            return Err(invalid("`host` must be a table of hosts".into()));
        };
        // preserve_order: the mirrors come in file order, as containerd sorts them.
        for (server, config) in mirrors {
            let toml::Value::Table(config) = config else {
                return Err(invalid(format!("host {server:?} must be a table")));
            };
            hosts.push(parse_host(dir, server, config).map_err(invalid)?);
        }
    } else if dialect == HostsDialect::RequiresHostTable {
        return Err(invalid("invalid `host` tree".into()));
    }
    let server = match table.get("server") {
        None => "",
        Some(toml::Value::String(s)) => s.as_str(),
        Some(_) => return Err(invalid("`server` must be a string".into())),
    };
    hosts.push(parse_host(dir, server, &table).map_err(invalid)?);
    Ok(hosts)
}

/// One `[host."..."]` table (or the file's root, for `server`): as containerd's
/// `parseHostConfig`.
fn parse_host(dir: &Path, server: &str, config: &toml::Table) -> Result<RegistryHost, String> {
    let mut host = RegistryHost::default();
    let override_path = match config.get("override_path") {
        None => false,
        Some(toml::Value::Boolean(b)) => *b,
        Some(_) => return Err("override_path must be a boolean".into()),
    };
    if !server.is_empty() {
        (host.scheme, host.host, host.path) = parse_server(server, override_path)?;
    }
    host.skip_verify = match config.get("skip_verify") {
        None => None,
        Some(toml::Value::Boolean(b)) => Some(*b),
        Some(_) => return Err("skip_verify must be a boolean".into()),
    };
    host.capabilities = parse_capabilities(config.get("capabilities"))?;
    let in_dir = |p: &str| {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    };
    host.ca = match config.get("ca") {
        None => Vec::new(),
        Some(toml::Value::String(s)) => vec![in_dir(s)],
        Some(toml::Value::Array(values)) => values
            .iter()
            .map(|v| {
                v.as_str()
                    .map(in_dir)
                    .ok_or_else(|| format!("invalid ca {v:?}"))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("invalid type {other:?} for \"ca\"")),
    };
    host.client = parse_client_pairs(config.get("client"), in_dir)?;
    if let Some(value) = config.get("header") {
        host.headers = parse_headers(value)?;
    }
    Ok(host)
}

/// `server = "[scheme://]host[:port][/path]"`: the scheme (https when none), the
/// authority and the API root (`/v2` appended unless `override_path`).
fn parse_server(server: &str, override_path: bool) -> Result<(String, String, String), String> {
    let with_scheme = if server.starts_with("http") {
        server.to_string()
    } else {
        format!("https://{server}")
    };
    let (scheme, rest) = with_scheme
        .split_once("://")
        .ok_or_else(|| format!("unable to parse server {server:?}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(format!("unable to parse server {server:?}"));
    }
    let mut path = clean_path(path);
    if path.is_empty() {
        if !override_path {
            path = "/v2".into();
        }
    } else if !path.ends_with("/v2") && !override_path {
        path.push_str("/v2");
    }
    Ok((scheme.to_string(), authority.to_string(), path))
}

/// `capabilities = ["pull", "resolve", "push"]`; none or empty: all.
fn parse_capabilities(value: Option<&toml::Value>) -> Result<Capabilities, String> {
    match value {
        None => Ok(Capabilities::ALL),
        Some(toml::Value::Array(values)) if values.is_empty() => Ok(Capabilities::ALL),
        Some(toml::Value::Array(values)) => {
            let mut caps = Capabilities::default();
            for value in values {
                match value.as_str().map(str::to_ascii_lowercase).as_deref() {
                    Some("pull") => caps.pull = true,
                    Some("resolve") => caps.resolve = true,
                    Some("push") => caps.push = true,
                    _ => return Err(format!("unknown capability {value:?}")),
                }
            }
            Ok(caps)
        }
        Some(_) => Err("capabilities must be an array".into()),
    }
}

/// `client = "both.pem"`, or a list of files and `[cert, key]` pairs (paths relative
/// to the hosts.toml directory, made whole by `in_dir`).
fn parse_client_pairs(
    value: Option<&toml::Value>,
    in_dir: impl Fn(&str) -> PathBuf,
) -> Result<Vec<(PathBuf, Option<PathBuf>)>, String> {
    match value {
        None => Ok(Vec::new()),
        Some(toml::Value::String(s)) => Ok(vec![(in_dir(s), None)]),
        Some(toml::Value::Array(values)) => {
            let mut pairs = Vec::new();
            for value in values {
                match value {
                    toml::Value::String(s) => pairs.push((in_dir(s), None)),
                    toml::Value::Array(pair) if pair.len() == 2 => {
                        let cert = pair[0].as_str().ok_or("invalid client pair")?;
                        let key = pair[1].as_str().ok_or("invalid client pair")?;
                        pairs.push((in_dir(cert), (!key.is_empty()).then(|| in_dir(key))));
                    }
                    other => return Err(format!("invalid pair {other:?} for \"client\"")),
                }
            }
            Ok(pairs)
        }
        Some(other) => Err(format!("invalid type {other:?} for \"client\"")),
    }
}

/// `[header]`: a name to a string or a list of strings, each one header line.
fn parse_headers(value: &toml::Value) -> Result<Vec<(String, String)>, String> {
    let toml::Value::Table(headers) = value else {
        return Err("header must be a table".into());
    };
    let mut lines = Vec::new();
    for (name, value) in headers {
        match value {
            toml::Value::String(s) => lines.push((name.clone(), s.clone())),
            toml::Value::Array(values) => {
                for v in values {
                    let s = v
                        .as_str()
                        .ok_or_else(|| format!("unable to cast {v:?} to string"))?;
                    lines.push((name.clone(), s.to_string()));
                }
            }
            other => return Err(format!("invalid type {other:?} for header {name:?}")),
        }
    }
    Ok(lines)
}

/// Go's `path.Clean` for the URL paths hosts.toml may carry (no `..` handling needed
/// beyond dropping empty and `.` segments).
fn clean_path(path: &str) -> String {
    let segments: Vec<&str> = path
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    if segments.is_empty() {
        String::new()
    } else {
        format!("/{}", segments.join("/"))
    }
}

// ---- containerd's own registry credentials ------------------------------------------

/// `registry.configs."<host>".auth` from containerd's config.toml (v2: the
/// `io.containerd.grpc.v1.cri` plugin; v3: `io.containerd.cri.v1.images`).
#[derive(Clone, Default)]
pub struct RuntimeAuth {
    by_host: HashMap<String, RegistryCredential>,
}

impl std::fmt::Debug for RuntimeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut hosts: Vec<&String> = self.by_host.keys().collect();
        hosts.sort();
        f.debug_struct("RuntimeAuth")
            .field("hosts", &hosts)
            .finish()
    }
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    auth: String,
    #[serde(default)]
    identitytoken: String,
}

impl RuntimeAuth {
    /// Reads `path`; a missing file means no runtime credentials.
    pub fn load(path: &Path) -> Result<RuntimeAuth, RouteError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(RouteError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Self::parse(&text).map_err(|reason| RouteError::Invalid {
            path: path.to_path_buf(),
            reason,
        })
    }

    pub fn parse(text: &str) -> Result<RuntimeAuth, String> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| e.message().to_string())?;
        let mut by_host = HashMap::new();
        let plugins = table.get("plugins").and_then(|p| p.as_table());
        for plugin in ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images"] {
            let configs = plugins
                .and_then(|p| p.get(plugin))
                .and_then(|p| p.get("registry"))
                .and_then(|r| r.get("configs"))
                .and_then(|c| c.as_table());
            for (host, config) in configs.into_iter().flatten() {
                let Some(auth) = config.get("auth") else {
                    continue;
                };
                let entry: AuthEntry = auth.clone().try_into().map_err(|_| {
                    format!("registry.configs.{host:?}.auth is not a valid auth table")
                })?;
                let mut credential = RegistryCredential {
                    username: entry.username,
                    password: entry.password,
                    identity_token: (!entry.identitytoken.is_empty())
                        .then_some(entry.identitytoken),
                    registry_token: None,
                };
                if !entry.auth.is_empty() {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(entry.auth.trim())
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok())
                        .and_then(|s| {
                            s.split_once(':')
                                .map(|(u, p)| (u.to_string(), p.to_string()))
                        })
                        .ok_or_else(|| {
                            format!(
                                "registry.configs.{host:?}.auth.auth is not base64 of user:password"
                            )
                        })?;
                    credential.username = decoded.0;
                    credential.password = decoded.1;
                }
                by_host.insert(host.clone(), credential);
            }
        }
        Ok(RuntimeAuth { by_host })
    }

    pub fn get(&self, host: &str) -> Option<&RegistryCredential> {
        self.by_host.get(host)
    }

    pub fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.by_host.keys().cloned().collect();
        hosts.sort();
        hosts
    }
}

impl Route {
    /// containerd's route from its hosts (in order, the registry last): for a tag, the
    /// hosts that may `pull` and `resolve`; for a digest, those that may `pull`.
    pub(crate) fn containerd(
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

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn defaults_without_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let hub = registry_hosts(dir.path(), "docker.io").unwrap();
        assert_eq!(hub.len(), 1);
        assert_eq!(hub[0].url(), "https://registry-1.docker.io");
        assert_eq!(hub[0].path, "/v2");
        let local = registry_hosts(dir.path(), "127.0.0.1:5000").unwrap();
        assert_eq!(local[0].url(), "http://127.0.0.1:5000");
        assert_eq!(local[0].skip_verify, Some(true));
        let v6 = registry_hosts(dir.path(), "[::1]:5000").unwrap();
        assert_eq!(v6[0].url(), "http://[::1]:5000");
        let remote = registry_hosts(dir.path(), "quay.io").unwrap();
        assert_eq!(remote[0].url(), "https://quay.io");
        assert_eq!(remote[0].capabilities, Capabilities::ALL);
    }

    #[test]
    fn host_directory_lookup_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert_eq!(host_dir(root, "reg.io:5000"), None);
        std::fs::create_dir_all(root.join("_default")).unwrap();
        assert_eq!(host_dir(root, "reg.io:5000"), Some(root.join("_default")));
        std::fs::create_dir_all(root.join("reg.io:5000")).unwrap();
        assert_eq!(
            host_dir(root, "reg.io:5000"),
            Some(root.join("reg.io:5000"))
        );
        std::fs::create_dir_all(root.join("reg.io_5000_")).unwrap();
        assert_eq!(
            host_dir(root, "reg.io:5000"),
            Some(root.join("reg.io_5000_"))
        );
        assert_eq!(host_dir(root, "reg.io"), Some(root.join("_default")));
    }

    #[test]
    fn hosts_toml_mirrors_in_file_order_then_server() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            &root.join("docker.io/hosts.toml"),
            r#"
server = "https://registry-1.docker.io"
capabilities = ["pull", "resolve"]

[host."https://zz-mirror.internal"]
  capabilities = ["pull"]
  ca = "mirror.crt"
  skip_verify = false
  [host."https://zz-mirror.internal".header]
    x-team = "infra"
    x-multi = ["a", "b"]

[host."http://aa-mirror.local:5000/prefix"]
  capabilities = ["pull", "resolve"]
  client = [["/etc/c.cert", "/etc/c.key"], "/etc/both.pem"]

[host."https://raw.example/api"]
  override_path = true
"#,
        );
        let hosts = registry_hosts(root, "docker.io").unwrap();
        let urls: Vec<String> = hosts
            .iter()
            .map(|h| format!("{}{}", h.url(), h.path))
            .collect();
        // File order, not alphabetical; the server last.
        assert_eq!(
            urls,
            [
                "https://zz-mirror.internal/v2",
                "http://aa-mirror.local:5000/prefix/v2",
                "https://raw.example/api",
                "https://registry-1.docker.io/v2",
            ]
        );
        assert_eq!(
            hosts[0].capabilities,
            Capabilities {
                pull: true,
                resolve: false,
                push: false
            }
        );
        assert_eq!(hosts[0].ca, [root.join("docker.io/mirror.crt")]);
        assert_eq!(hosts[0].skip_verify, Some(false));
        assert_eq!(
            hosts[0].headers,
            [
                ("x-team".to_string(), "infra".to_string()),
                ("x-multi".to_string(), "a".to_string()),
                ("x-multi".to_string(), "b".to_string())
            ]
        );
        assert_eq!(
            hosts[1].client,
            [
                (
                    PathBuf::from("/etc/c.cert"),
                    Some(PathBuf::from("/etc/c.key"))
                ),
                (PathBuf::from("/etc/both.pem"), None)
            ]
        );
        assert_eq!(hosts[2].capabilities, Capabilities::ALL);
        assert_eq!(
            hosts[3].capabilities,
            Capabilities {
                pull: true,
                resolve: true,
                push: false
            }
        );
    }

    #[test]
    fn mirrors_without_server_fall_back_to_the_registry_and_cert_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            &root.join("_default/hosts.toml"),
            "[host.\"https://cache.internal\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        );
        let hosts = registry_hosts(root, "ghcr.io").unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[0].url(), "https://cache.internal");
        assert_eq!(hosts[1].url(), "https://ghcr.io");

        write(&root.join("reg.io/ca.crt"), "x");
        write(&root.join("reg.io/client.cert"), "x");
        write(&root.join("reg.io/client.key"), "x");
        let hosts = registry_hosts(root, "reg.io").unwrap();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].url(), "https://reg.io");
        assert_eq!(hosts[0].ca, [root.join("reg.io/ca.crt")]);
        assert_eq!(hosts[0].client.len(), 1);

        // A hosts.toml containerd cannot decode (an unknown capability) is ignored in
        // favour of the directory's certificate files, as containerd's loadHostDir.
        write(
            &root.join("bad.io/hosts.toml"),
            "[host.\"https://m\"]\ncapabilities = [\"fly\"]\n",
        );
        write(&root.join("bad.io/extra.crt"), "x");
        for dialect in [HostsDialect::RequiresHostTable, HostsDialect::Current] {
            let hosts = registry_hosts_for(root, "bad.io", dialect).unwrap();
            assert_eq!(hosts.len(), 1, "{dialect:?}");
            assert_eq!(hosts[0].url(), "https://bad.io");
            assert_eq!(hosts[0].ca, [root.join("bad.io/extra.crt")]);
        }
    }

    #[test]
    fn a_server_without_a_host_table_follows_the_containerd_version() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            &root.join("reg.io/hosts.toml"),
            "server = \"https://elsewhere.internal\"\n",
        );
        // containerd 1.6 and 1.7 < 1.7.32: "invalid `host` tree", the registry itself.
        let hosts = registry_hosts_for(root, "reg.io", HostsDialect::RequiresHostTable).unwrap();
        assert_eq!(
            hosts.iter().map(RegistryHost::url).collect::<Vec<_>>(),
            ["https://reg.io"]
        );
        // Later versions honour the server.
        let hosts = registry_hosts_for(root, "reg.io", HostsDialect::Current).unwrap();
        assert_eq!(
            hosts.iter().map(RegistryHost::url).collect::<Vec<_>>(),
            ["https://elsewhere.internal"]
        );
        // An empty [host] table is enough for every version.
        write(
            &root.join("reg.io/hosts.toml"),
            "server = \"https://elsewhere.internal\"\n[host]\n",
        );
        let hosts = registry_hosts_for(root, "reg.io", HostsDialect::RequiresHostTable).unwrap();
        assert_eq!(hosts[0].url(), "https://elsewhere.internal");
    }

    #[test]
    fn dialects_by_runtime_version() {
        use HostsDialect::*;
        for (name, version, dialect) in [
            ("containerd", "1.6.20~ds1", RequiresHostTable),
            ("containerd", "v1.6.38", RequiresHostTable),
            ("containerd", "v1.7.13", RequiresHostTable),
            ("containerd", "v1.7.31", RequiresHostTable),
            ("containerd", "v1.7.23-k3s2", RequiresHostTable),
            ("containerd", "v1.7.32", Current),
            ("containerd", "1.7.34", Current),
            ("containerd", "v2.0.0", Current),
            ("containerd", "2.1.4", Current),
            ("containerd", "", Current),
            ("cri-o", "1.30.0", Current),
        ] {
            assert_eq!(
                HostsDialect::for_runtime(name, version),
                dialect,
                "{name} {version}"
            );
        }
    }

    #[test]
    fn containerd_registry_configs_auth() {
        let auth = RuntimeAuth::parse(
            r#"
version = 2
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
[plugins."io.containerd.grpc.v1.cri".registry.configs."reg.io".auth]
  username = "alice"
  password = "pw"
[plugins."io.containerd.grpc.v1.cri".registry.configs."127.0.0.1:5000".auth]
  auth = "Ym9iOnNlY3JldA=="
[plugins."io.containerd.grpc.v1.cri".registry.configs."tls.io".tls]
  insecure_skip_verify = true
"#,
        )
        .unwrap();
        assert_eq!(auth.get("reg.io").unwrap().username, "alice");
        let bob = auth.get("127.0.0.1:5000").unwrap();
        assert_eq!(
            (bob.username.as_str(), bob.password.as_str()),
            ("bob", "secret")
        );
        assert!(auth.get("tls.io").is_none());
        assert_eq!(auth.hosts(), ["127.0.0.1:5000", "reg.io"]);
        // Debug shows hosts, never secrets.
        let shown = format!("{auth:?}");
        assert!(!shown.contains("alice") && !shown.contains("pw"), "{shown}");
        let v3 = RuntimeAuth::parse(
            "version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry.configs.\"r.io\".auth]\nusername = \"u\"\npassword = \"p\"\n",
        )
        .unwrap();
        assert_eq!(v3.get("r.io").unwrap().username, "u");
        assert!(RuntimeAuth::parse("[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"r\".auth]\nauth = \"!!\"\n").is_err());
    }

    #[test]
    fn localhost_detection() {
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1",
            "127.0.0.1:5000",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_localhost(host), "{host}");
        }
        for host in [
            "reg.io",
            "10.0.0.1:5000",
            "[2001:db8::1]:5000",
            "localhost.example",
        ] {
            assert!(!is_localhost(host), "{host}");
        }
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
