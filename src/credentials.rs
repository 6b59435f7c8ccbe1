//! Registry credentials and the kubelet's keyring: which credentials a pull of a given
//! image would try, and in what order.
//!
//! This mirrors `k8s.io/kubernetes/pkg/credentialprovider` (`BasicDockerKeyring`):
//! keys are schemeless URLs (`host[:port][/path]`, `*.domain` globs allowed per host
//! label), sorted in reverse lexical order so that more specific paths come first;
//! every matching key contributes its credentials; Docker Hub images fall back to an
//! `index.docker.io` key. Secret values never appear in `Debug` output.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;

use crate::reference::ImageReference;

/// One username/password (or token) pair for a registry.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RegistryCredential {
    pub username: String,
    pub password: String,
    /// OAuth2 refresh token (`identitytoken` in docker config files).
    pub identity_token: Option<String>,
    /// A bearer token to send as is (`registrytoken`).
    pub registry_token: Option<String>,
}

impl RegistryCredential {
    /// A process-local fingerprint, for keying caches (tokens) without holding a second
    /// copy of the secret in the key.
    pub fn fingerprint(credential: Option<&RegistryCredential>) -> u64 {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut hasher = DefaultHasher::new();
        credential.hash(&mut hasher);
        hasher.finish()
    }
}

impl fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only whether fields are set: a Debug of a credential may end up in a log.
        f.debug_struct("RegistryCredential")
            .field("username_set", &!self.username.is_empty())
            .field("password_set", &!self.password.is_empty())
            .field("identity_token_set", &self.identity_token.is_some())
            .field("registry_token_set", &self.registry_token.is_some())
            .finish()
    }
}

/// A credential and where it came from (`secret/<namespace>/<name>`, `config.json:<path>`...):
/// the source is safe to log and to put in a metric label, the credential is not.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourcedCredential {
    pub source: Arc<str>,
    pub credential: RegistryCredential,
}

/// Why a docker config could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("docker config is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("docker config has no \"auths\" object")]
    MissingAuths,
    #[error("the \"auth\" field for {registry:?} is not base64 of user:password")]
    BadAuthField { registry: String },
}

/// The entries of a docker config file (`config.json`/`.dockerconfigjson`, or the
/// older `.dockercfg`), keyed as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DockerConfig {
    pub entries: BTreeMap<String, RegistryCredential>,
}

#[derive(Deserialize)]
struct RawEntry {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

impl DockerConfig {
    /// Parses the `{"auths": {...}}` form (`kubernetes.io/dockerconfigjson`, `config.json`).
    pub fn from_config_json(bytes: &[u8]) -> Result<Self, CredentialError> {
        #[derive(Deserialize)]
        struct ConfigJson {
            auths: Option<BTreeMap<String, RawEntry>>,
        }
        let parsed: ConfigJson = serde_json::from_slice(bytes)?;
        Self::from_raw(parsed.auths.ok_or(CredentialError::MissingAuths)?)
    }

    /// Parses the legacy `{"host": {...}}` form (`kubernetes.io/dockercfg`).
    pub fn from_dockercfg(bytes: &[u8]) -> Result<Self, CredentialError> {
        Self::from_raw(serde_json::from_slice(bytes)?)
    }

    fn from_raw(raw: BTreeMap<String, RawEntry>) -> Result<Self, CredentialError> {
        let mut entries = BTreeMap::new();
        for (registry, entry) in raw {
            let mut credential = RegistryCredential {
                username: entry.username.unwrap_or_default(),
                password: entry.password.unwrap_or_default(),
                identity_token: entry.identitytoken.filter(|t| !t.is_empty()),
                registry_token: entry.registrytoken.filter(|t| !t.is_empty()),
            };
            // As in the kubelet, a non-empty `auth` field wins over username/password.
            if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok());
                let (user, pass) = decoded
                    .as_deref()
                    .and_then(|s| s.split_once(':'))
                    .ok_or_else(|| CredentialError::BadAuthField {
                        registry: registry.clone(),
                    })?;
                credential.username = user.to_string();
                credential.password = pass.to_string();
            }
            entries.insert(registry, credential);
        }
        Ok(DockerConfig { entries })
    }
}

const DEFAULT_REGISTRY_KEY: &str = "index.docker.io";

/// A set of credentials indexed the way the kubelet indexes them.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    /// Keys, reverse-sorted so more specific paths match first.
    index: Vec<String>,
    creds: BTreeMap<String, Vec<SourcedCredential>>,
}

impl Keyring {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Adds every entry of `config`, labelled with `source`.
    pub fn add(&mut self, source: &str, config: &DockerConfig) {
        let source: Arc<str> = Arc::from(source);
        for (location, credential) in &config.entries {
            let Some(key) = keyring_key(location) else {
                tracing::debug!(%source, location, "skipping docker config entry with an unparsable registry key");
                continue;
            };
            self.creds
                .entry(key.clone())
                .or_default()
                .push(SourcedCredential {
                    source: source.clone(),
                    credential: credential.clone(),
                });
            if !self.index.contains(&key) {
                self.index.push(key);
            }
        }
        self.index.sort_unstable_by(|a, b| b.cmp(a));
    }

    /// The credentials a kubelet would try for `image`, in the order it would try them.
    /// Empty means: pull anonymously.
    pub fn lookup(&self, image: &ImageReference) -> Vec<SourcedCredential> {
        let target = image.name();
        let mut matched: Vec<SourcedCredential> = self
            .index
            .iter()
            .filter(|key| urls_match(key, &target))
            .flat_map(|key| self.creds.get(key.as_str()).into_iter().flatten().cloned())
            .collect();
        if matched.is_empty() && image.registry() == crate::reference::DOCKER_HUB {
            matched = self
                .creds
                .get(DEFAULT_REGISTRY_KEY)
                .cloned()
                .unwrap_or_default();
        }
        matched
    }
}

/// `https://host/v1/` -> `host`; `host/path` -> `host/path`; as the kubelet's `Add`.
fn keyring_key(location: &str) -> Option<String> {
    let without_scheme = location
        .strip_prefix("https://")
        .or_else(|| location.strip_prefix("http://"))
        .unwrap_or(location);
    let (host, path) = match without_scheme.find('/') {
        Some(i) => (&without_scheme[..i], &without_scheme[i..]),
        None => (without_scheme, ""),
    };
    if host.is_empty() {
        return None;
    }
    // docker treats /v1/ and /v2/ as the bare host.
    let path = path
        .strip_prefix("/v2/")
        .or_else(|| path.strip_prefix("/v1/"))
        .map(|rest| format!("/{rest}"))
        .unwrap_or_else(|| path.to_string());
    if path.is_empty() || path == "/" {
        Some(host.to_string())
    } else {
        Some(format!("{host}{path}"))
    }
}

/// The kubelet's `URLsMatchStr`: same port, same number of host labels, each label a
/// glob match, and the target's path starts with the key's path.
fn urls_match(key: &str, target: &str) -> bool {
    let (key_host, key_path) = split_host_path(key);
    let (target_host, target_path) = split_host_path(target);
    let (key_labels, key_port) = split_host_port(key_host);
    let (target_labels, target_port) = split_host_port(target_host);
    if key_port != target_port || !target_path.starts_with(key_path) {
        return false;
    }
    let key_labels: Vec<&str> = key_labels.split('.').collect();
    let target_labels: Vec<&str> = target_labels.split('.').collect();
    key_labels.len() == target_labels.len()
        && key_labels
            .iter()
            .zip(&target_labels)
            .all(|(pattern, label)| crate::glob::matches(pattern, label).unwrap_or(false))
}

fn split_host_path(url: &str) -> (&str, &str) {
    match url.find('/') {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, ""),
    }
}

fn split_host_port(host: &str) -> (&str, &str) {
    // As Go's net.SplitHostPort: `[addr]:port` and `[addr]` lose their brackets.
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((addr, after)) => (addr, after.strip_prefix(':').unwrap_or("")),
            None => (host, ""),
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) => (h, port),
        None => (host, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(user: &str) -> RegistryCredential {
        RegistryCredential {
            username: user.into(),
            password: format!("{user}-pw"),
            ..Default::default()
        }
    }

    fn config(entries: &[(&str, &str)]) -> DockerConfig {
        DockerConfig {
            entries: entries
                .iter()
                .map(|(k, user)| (k.to_string(), cred(user)))
                .collect(),
        }
    }

    fn users(keyring: &Keyring, image: &str) -> Vec<String> {
        keyring
            .lookup(&ImageReference::parse(image).unwrap())
            .into_iter()
            .map(|c| c.credential.username)
            .collect()
    }

    #[test]
    fn parses_both_formats_and_auth_field() {
        let json = br#"{"auths":{"reg.io":{"auth":"dXNlcjpwYTpzcw=="},"other.io":{"username":"u","password":"p"}}}"#;
        let cfg = DockerConfig::from_config_json(json).unwrap();
        assert_eq!(cfg.entries["reg.io"].username, "user");
        assert_eq!(cfg.entries["reg.io"].password, "pa:ss");
        assert_eq!(cfg.entries["other.io"].password, "p");
        let legacy =
            DockerConfig::from_dockercfg(br#"{"reg.io":{"auth":"dXNlcjpwYTpzcw=="}}"#).unwrap();
        assert_eq!(legacy.entries["reg.io"].username, "user");
        assert!(matches!(
            DockerConfig::from_config_json(b"{}"),
            Err(CredentialError::MissingAuths)
        ));
        assert!(matches!(
            DockerConfig::from_config_json(br#"{"auths":{"r":{"auth":"!!"}}}"#),
            Err(CredentialError::BadAuthField { .. })
        ));
        assert!(matches!(
            DockerConfig::from_config_json(b"{"),
            Err(CredentialError::Json(_))
        ));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = cred("alice");
        let shown = format!("{c:?}");
        assert!(!shown.contains("alice"), "{shown}");
        assert!(!shown.contains("alice-pw"), "{shown}");
    }

    #[test]
    fn most_specific_first_and_all_matches() {
        let mut k = Keyring::new();
        k.add(
            "secret/ns/a",
            &config(&[
                ("quay.io", "host"),
                ("quay.io/team", "team"),
                ("quay.io/team/app", "app"),
            ]),
        );
        assert_eq!(users(&k, "quay.io/team/app:v1"), ["app", "team", "host"]);
        assert_eq!(users(&k, "quay.io/other/x"), ["host"]);
        assert!(users(&k, "ghcr.io/team/app").is_empty());
    }

    #[test]
    fn globs_ports_schemes_and_versions() {
        let mut k = Keyring::new();
        k.add(
            "s",
            &config(&[
                ("*.example.com", "glob"),
                ("https://reg.local:5000/v2/", "port"),
                ("http://plain.local/v1/", "plain"),
            ]),
        );
        assert_eq!(users(&k, "a.example.com/x"), ["glob"]);
        // A glob stands for exactly one label.
        assert!(users(&k, "a.b.example.com/x").is_empty());
        assert!(users(&k, "example.com/x").is_empty());
        assert_eq!(users(&k, "reg.local:5000/x"), ["port"]);
        assert!(users(&k, "reg.local/x").is_empty());
        assert!(users(&k, "reg.local:5001/x").is_empty());
        assert_eq!(users(&k, "plain.local/x"), ["plain"]);
    }

    #[test]
    fn docker_hub_keys() {
        let mut k = Keyring::new();
        k.add("s", &config(&[("https://index.docker.io/v1/", "hub")]));
        assert_eq!(users(&k, "nginx"), ["hub"]);
        assert_eq!(users(&k, "docker.io/org/app"), ["hub"]);
        assert!(users(&k, "ghcr.io/org/app").is_empty());
        let mut k = Keyring::new();
        k.add("s", &config(&[("docker.io", "plain-key")]));
        assert_eq!(users(&k, "nginx"), ["plain-key"]);
    }

    #[test]
    fn ipv6_and_merged_sources_keep_order() {
        let mut k = Keyring::new();
        k.add("first", &config(&[("[::1]:5000", "one")]));
        k.add("second", &config(&[("[::1]:5000", "two")]));
        let found = k.lookup(&ImageReference::parse("[::1]:5000/app").unwrap());
        let sources: Vec<&str> = found.iter().map(|c| &*c.source).collect();
        assert_eq!(sources, ["first", "second"]);
        assert!(users(&k, "[::1]:5001/app").is_empty());
    }
}
