//! The containers auth file, as CRI-O's containers/image reads it
//! (`pkg/docker/config`): which files, in which order, and which key of a file
//! answers for an image: the repository, then each namespace above it, then the host
//! (`quay.io/ns/app` → `quay.io/ns` → `quay.io`), then a key that normalizes to the
//! host (`https://host/v1/`, `index.docker.io` for `docker.io`).
//!
//! Only the `auth` (base64 `user:password`) and `identitytoken` fields count, as
//! upstream. `credHelpers` entries and external credential helpers are programs on
//! the node that pullwatch does not run: such an entry is reported, not followed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use pullwatch::RegistryCredential;
use serde::Deserialize;

/// Why the auth file could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthFileError {
    #[error("reading JSON file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error(
        "{path}: credentials for {registry} come from credential helper {helper:?}, which pullwatch does not run"
    )]
    CredentialHelper {
        path: PathBuf,
        registry: String,
        helper: String,
    },
}

/// One auth file and its format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AuthPath {
    pub(crate) path: PathBuf,
    /// `.dockercfg`: the top level is the `auths` map, keys are registries only.
    pub(crate) legacy_format: bool,
}

impl AuthPath {
    pub(crate) fn new(path: impl Into<PathBuf>) -> AuthPath {
        AuthPath {
            path: path.into(),
            legacy_format: false,
        }
    }
}

/// `getAuthFilePaths` for a process with `env` (a lookup of environment variables),
/// user `uid` and home `home`: an explicit file alone; else
/// `$XDG_RUNTIME_DIR/containers/auth.json` (or `/run/containers/<uid>/auth.json`),
/// `$XDG_CONFIG_HOME/containers/auth.json` (or `~/.config/...`),
/// `$DOCKER_CONFIG/config.json` (or `~/.docker/config.json`), `~/.dockercfg`.
pub(crate) fn auth_file_paths(
    explicit: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
    uid: u32,
    home: &Path,
) -> Vec<AuthPath> {
    if let Some(path) = explicit {
        return vec![AuthPath::new(path)];
    }
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    let mut paths = vec![match set("XDG_RUNTIME_DIR") {
        Some(dir) => AuthPath::new(Path::new(&dir).join("containers/auth.json")),
        None => AuthPath::new(format!("/run/containers/{uid}/auth.json")),
    }];
    let config_home = set("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".config"));
    paths.push(AuthPath::new(config_home.join("containers/auth.json")));
    paths.push(match set("DOCKER_CONFIG") {
        Some(dir) => AuthPath::new(Path::new(&dir).join("config.json")),
        None => AuthPath::new(home.join(".docker/config.json")),
    });
    paths.push(AuthPath {
        path: home.join(".dockercfg"),
        legacy_format: true,
    });
    paths
}

#[derive(Clone, Default, Deserialize)]
struct Entry {
    #[serde(default)]
    auth: String,
    #[serde(default)]
    identitytoken: String,
}

#[derive(Default, Deserialize)]
struct File {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

/// The credential `key` (a repository `host/path`, or a host) gets from the files in
/// order: the first file with a matching entry answers. Ok(None): no file has one.
pub(crate) fn lookup(
    paths: &[AuthPath],
    key: &str,
) -> Result<Option<(RegistryCredential, PathBuf)>, AuthFileError> {
    let registry = key.split_once('/').map_or(key, |(host, _)| host);
    for path in paths {
        if let Some(credential) = find_in_file(key, registry, path)? {
            return Ok(Some((credential, path.path.clone())));
        }
    }
    Ok(None)
}

/// `findCredentialsInFile`.
fn find_in_file(
    key: &str,
    registry: &str,
    path: &AuthPath,
) -> Result<Option<RegistryCredential>, AuthFileError> {
    let read_error = |reason: String| AuthFileError::Read {
        path: path.path.clone(),
        reason,
    };
    let raw = match std::fs::read(&path.path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(e.to_string())),
    };
    // serde_json's messages give a position, never the content.
    let file: File = if path.legacy_format {
        File {
            auths: serde_json::from_slice(&raw).map_err(|e| read_error(e.to_string()))?,
            cred_helpers: BTreeMap::new(),
        }
    } else {
        serde_json::from_slice(&raw).map_err(|e| read_error(e.to_string()))?
    };
    if let Some(helper) = file.cred_helpers.get(registry) {
        return Err(AuthFileError::CredentialHelper {
            path: path.path.clone(),
            registry: registry.to_string(),
            helper: helper.clone(),
        });
    }
    for candidate in auth_key_lookup_order(key, registry, path.legacy_format) {
        if let Some(entry) = file.auths.get(&candidate) {
            return decode(entry).map_err(read_error);
        }
    }
    // Keys written as URLs (`https://host/v1/`) or docker.io's aliases.
    let registry = normalize_registry(registry);
    for (candidate, entry) in &file.auths {
        if normalize_auth_file_key(candidate, path.legacy_format) == registry {
            return decode(entry).map_err(read_error);
        }
    }
    Ok(None)
}

/// `authKeyLookupOrder`: the key, then each parent namespace, down to the host; a
/// legacy file only by host.
pub(crate) fn auth_key_lookup_order(key: &str, registry: &str, legacy_format: bool) -> Vec<String> {
    if legacy_format {
        return vec![registry.to_string()];
    }
    let mut keys = vec![key.to_string()];
    let mut rest = key;
    while let Some((parent, _)) = rest.rsplit_once('/') {
        keys.push(parent.to_string());
        rest = parent;
    }
    keys
}

/// `decodeDockerAuth`: `auth` must be base64 (else the lookup fails, as upstream);
/// one that is not `user:password` is skipped (None: Docker writes empty entries when
/// a helper holds the secret).
fn decode(entry: &Entry) -> Result<Option<RegistryCredential>, String> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(entry.auth.as_bytes())
        // base64's message gives a position, never the content.
        .map_err(|e| e.to_string())?;
    let Some((user, password)) = std::str::from_utf8(&decoded)
        .ok()
        .and_then(|text| text.split_once(':'))
    else {
        return Ok(None);
    };
    Ok(Some(RegistryCredential {
        username: user.to_string(),
        password: password.trim_matches('\0').to_string(),
        identity_token: (!entry.identitytoken.is_empty()).then(|| entry.identitytoken.clone()),
        registry_token: None,
    }))
}

fn normalize_auth_file_key(key: &str, legacy_format: bool) -> String {
    let stripped = key
        .strip_prefix("http://")
        .or_else(|| key.strip_prefix("https://"))
        .unwrap_or(key);
    let stripped = if legacy_format || stripped != key {
        stripped.split('/').next().unwrap_or(stripped)
    } else {
        stripped
    };
    normalize_registry(stripped)
}

fn normalize_registry(registry: &str) -> String {
    match registry {
        "registry-1.docker.io" | "docker.io" => "index.docker.io".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    //! containers/image's `config_test.go`: `TestAuthKeyLookupOrder` case for case,
    //! and the lookup cases of `TestGetAuth` / `TestGetAuthFromLegacyFile` that need
    //! no credential helper, on its own testdata (agent/tests/data/docker-config).
    use super::*;

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/docker-config")
            .join(name)
    }

    #[test]
    fn test_auth_key_lookup_order() {
        for (name, input, expected) in [
            (
                "a top-level repo",
                "quay.io/image",
                &["quay.io/image", "quay.io"][..],
            ),
            (
                "a second-level repo",
                "quay.io/user/image",
                &["quay.io/user/image", "quay.io/user", "quay.io"],
            ),
            (
                "a deeply-nested repo",
                "quay.io/a/b/c/d/image",
                &[
                    "quay.io/a/b/c/d/image",
                    "quay.io/a/b/c/d",
                    "quay.io/a/b/c",
                    "quay.io/a/b",
                    "quay.io/a",
                    "quay.io",
                ],
            ),
            (
                "docker.io library repo",
                "docker.io/library/busybox",
                &[
                    "docker.io/library/busybox",
                    "docker.io/library",
                    "docker.io",
                ],
            ),
            (
                "docker.io non-library repo",
                "docker.io/vendor/busybox",
                &["docker.io/vendor/busybox", "docker.io/vendor", "docker.io"],
            ),
        ] {
            let registry = input.split_once('/').map_or(input, |(h, _)| h);
            assert_eq!(
                auth_key_lookup_order(input, registry, false),
                expected,
                "{name}"
            );
        }
    }

    fn user_password(file: &str, key: &str) -> Option<(String, String)> {
        lookup(&[AuthPath::new(testdata(file))], key)
            .unwrap()
            .map(|(c, _)| (c.username, c.password))
    }

    #[test]
    fn test_get_auth() {
        let pair = |u: &str, p: &str| Some((u.to_string(), p.to_string()));
        for (name, key, file, expected) in [
            (
                "no auth config",
                "index.docker.io",
                "does-not-exist.json",
                None,
            ),
            (
                "match one",
                "example.org",
                "example.json",
                pair("example", "org"),
            ),
            ("match none", "registry.example.org", "example.json", None),
            (
                "match docker.io",
                "docker.io",
                "full.json",
                pair("docker", "io"),
            ),
            (
                "match docker.io normalized",
                "docker.io",
                "abnormal.json",
                pair("index", "docker.io"),
            ),
            (
                "normalize registry",
                "normalize.example.org",
                "full.json",
                pair("normalize", "example"),
            ),
            (
                "match localhost",
                "localhost",
                "full.json",
                pair("local", "host"),
            ),
            (
                "match ip",
                "10.10.30.45:5000",
                "full.json",
                pair("10.10", "30.45-5000"),
            ),
            (
                "match port",
                "localhost:5000",
                "abnormal.json",
                pair("local", "host-5000"),
            ),
            (
                "match none (empty.json)",
                "localhost:5000",
                "empty.json",
                None,
            ),
            (
                "match ref image",
                "example.org/repo/image",
                "refpath.json",
                pair("example", "org"),
            ),
            (
                "match ref repo",
                "example.org/repo",
                "refpath.json",
                pair("example", "org"),
            ),
            (
                "match ref host",
                "example.org/image",
                "refpath.json",
                pair("local", "host"),
            ),
            (
                "docker.io library repo match",
                "docker.io/library/busybox",
                "refpath.json",
                pair("library", "busybox"),
            ),
            (
                "docker.io library namespace match",
                "docker.io/library/notbusybox",
                "refpath.json",
                pair("library", "other"),
            ),
            (
                "docker.io vendor repo match",
                "docker.io/vendor/product",
                "refpath.json",
                pair("first", "level"),
            ),
            (
                "docker.io vendor namespace match",
                "docker.io/vendor",
                "refpath.json",
                pair("first", "level"),
            ),
            (
                "docker.io host-only match",
                "docker.io/other-vendor/other-product",
                "refpath.json",
                pair("top", "level"),
            ),
        ] {
            assert_eq!(user_password(file, key), expected, "{name}");
        }
        let (token, _) = lookup(
            &[AuthPath::new(testdata("example_identitytoken.json"))],
            "example.org",
        )
        .unwrap()
        .unwrap();
        assert_eq!(token.username, "00000000-0000-0000-0000-000000000000");
        assert_eq!(token.password, "");
        assert_eq!(
            token.identity_token.as_deref(),
            Some("some very long identity token")
        );
    }

    #[test]
    fn test_get_auth_from_legacy_file() {
        let legacy = [AuthPath {
            path: testdata("legacy.json"),
            legacy_format: true,
        }];
        for (key, expected) in [
            ("docker.io", Some(("docker", "io-legacy"))),
            ("localhost", Some(("local", "host-legacy"))),
        ] {
            let found = lookup(&legacy, key)
                .unwrap()
                .map(|(c, _)| (c.username, c.password));
            assert_eq!(
                found,
                expected.map(|(u, p)| (u.to_string(), p.to_string())),
                "{key}"
            );
        }
    }

    #[test]
    fn files_in_order_the_first_with_an_entry_answers() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("auth.json");
        let second = dir.path().join("config.json");
        // "a:b", "c:d"
        std::fs::write(&first, r#"{"auths":{"other.io":{"auth":"YTpi"}}}"#).unwrap();
        std::fs::write(&second, r#"{"auths":{"reg.io/team":{"auth":"Yzpk"}}}"#).unwrap();
        let paths = [AuthPath::new(&first), AuthPath::new(&second)];
        let (found, from) = lookup(&paths, "reg.io/team/app").unwrap().unwrap();
        assert_eq!((found.username.as_str(), from), ("c", second.clone()));
        // An unreadable file stops the lookup (containers/image fails the pull), and
        // the error gives a position, never the content.
        std::fs::write(&first, r#"{"auths":{"x":{"auth":"sekrit"#).unwrap();
        let err = lookup(&paths, "reg.io/team/app").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(!err.contains("sekrit"), "{err}");
        // A credHelpers entry for the registry is reported, not run.
        std::fs::write(&first, r#"{"credHelpers":{"reg.io":"ecr-login"}}"#).unwrap();
        assert!(matches!(
            lookup(&paths, "reg.io/team/app"),
            Err(AuthFileError::CredentialHelper { .. })
        ));
    }

    #[test]
    fn default_lookup_order() {
        let home = Path::new("/root");
        let none = |_: &str| None;
        let paths = auth_file_paths(None, none, 0, home);
        let shown: Vec<(String, bool)> = paths
            .iter()
            .map(|p| (p.path.display().to_string(), p.legacy_format))
            .collect();
        assert_eq!(
            shown,
            [
                ("/run/containers/0/auth.json".to_string(), false),
                ("/root/.config/containers/auth.json".to_string(), false),
                ("/root/.docker/config.json".to_string(), false),
                ("/root/.dockercfg".to_string(), true),
            ]
        );
        let env = |name: &str| match name {
            "XDG_RUNTIME_DIR" => Some("/run/user/1000".to_string()),
            "XDG_CONFIG_HOME" => Some("/cfg".to_string()),
            "DOCKER_CONFIG" => Some("/dc".to_string()),
            _ => None,
        };
        let paths = auth_file_paths(None, env, 1000, home);
        assert_eq!(
            paths[0].path,
            Path::new("/run/user/1000/containers/auth.json")
        );
        assert_eq!(paths[1].path, Path::new("/cfg/containers/auth.json"));
        assert_eq!(paths[2].path, Path::new("/dc/config.json"));
        let explicit = auth_file_paths(Some(Path::new("/etc/crio/auth.json")), env, 0, home);
        assert_eq!(explicit, [AuthPath::new("/etc/crio/auth.json")]);
    }
}
