//! Stage `keyring`: the credentials the kubelet on this node would try for an image,
//! in the kubelet's order, each labelled with where it came from (`credential_source`).
//! This module is the order; the sources are its submodules.
//!
//! 1. the workload's pull secrets (sent by the aggregator, already matched to the image);
//! 2. the kubelet's docker config files ([`files`]: the first valid `config.json`, else
//!    the first valid `.dockercfg`, re-read every 5 minutes);
//! 3. credential-provider exec plugins ([`plugins`]), only for images their
//!    `matchImages` globs match, cached as the kubelet caches them;
//! 4. when none of these matches: no AuthConfig at all, so the runtime uses its own
//!    registry configuration. Like the kubelet, the runtime's own credentials are not
//!    tried after matching credentials have all failed.
//!
//! Credentials never appear in logs or errors; only their sources do.

mod files;
mod plugins;

use std::path::PathBuf;
use std::sync::Mutex;

use pullwatch::{ImageReference, Keyring, SourcedCredential};
use tracing::warn;

use files::DockerConfigFiles;
use plugins::{PluginProvider, load_plugins};

/// Why the node keyring could not be set up (bad plugin configuration: the kubelet
/// refuses to start on these, so the agent does too).
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("reading credential provider config {path}: {source}")]
    ConfigRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing credential provider config {path}: {reason}")]
    ConfigParse { path: PathBuf, reason: String },
    #[error("invalid credential provider config {path}: {reason}")]
    ConfigInvalid { path: PathBuf, reason: String },
    #[error("credential provider plugin binary directory {0} does not exist")]
    BinDirMissing(PathBuf),
    #[error("credential provider plugin binary {0} does not exist or is not executable")]
    PluginMissing(PathBuf),
    #[error(
        "--image-credential-provider-config is set but --image-credential-provider-bin-dir is not"
    )]
    BinDirUnset,
}

/// Where the node's credentials come from.
#[derive(Clone, Debug, Default)]
pub struct KeyringConfig {
    /// The kubelet's `--root-dir` (preferred docker config path).
    pub kubelet_root_dir: PathBuf,
    /// Directories searched for `config.json`, in order. Default: root dir, working
    /// dir, `$HOME/.docker`, `/.docker`.
    pub config_json_dirs: Option<Vec<PathBuf>>,
    /// Directories searched for `.dockercfg`, in order. Default: root dir, working dir,
    /// `$HOME`, `/`.
    pub dockercfg_dirs: Option<Vec<PathBuf>>,
    /// `--image-credential-provider-config`.
    pub provider_config: Option<PathBuf>,
    /// `--image-credential-provider-bin-dir`.
    pub provider_bin_dir: Option<PathBuf>,
}

impl KeyringConfig {
    fn search_dirs(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/"));
        let json = self.config_json_dirs.clone().unwrap_or_else(|| {
            vec![
                self.kubelet_root_dir.clone(),
                cwd.clone(),
                home.join(".docker"),
                PathBuf::from("/.docker"),
            ]
        });
        let legacy = self
            .dockercfg_dirs
            .clone()
            .unwrap_or_else(|| vec![self.kubelet_root_dir.clone(), cwd, home, PathBuf::from("/")]);
        (json, legacy)
    }
}

/// The node keyring. Cheap to share (`Arc`), safe to use concurrently.
pub struct NodeKeyring {
    files: DockerConfigFiles,
    plugins: Vec<PluginProvider>,
}

impl std::fmt::Debug for NodeKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKeyring")
            .field("config_json_dirs", &self.files.json_dirs)
            .field("dockercfg_dirs", &self.files.legacy_dirs)
            .field(
                "plugins",
                &self.plugins.iter().map(|p| &p.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What a lookup found: the credentials to try, in order, and the sources that
/// failed to answer (a plugin that crashed), for the check's reason.
#[derive(Clone, Debug, Default)]
pub struct Lookup {
    pub credentials: Vec<SourcedCredential>,
    pub problems: Vec<String>,
}

impl NodeKeyring {
    /// Reads and validates the plugin configuration (as strictly as the kubelet).
    pub fn new(config: &KeyringConfig) -> Result<NodeKeyring, KeyringError> {
        let (json_dirs, legacy_dirs) = config.search_dirs();
        let plugins = match &config.provider_config {
            None => Vec::new(),
            Some(path) => {
                let bin_dir = config
                    .provider_bin_dir
                    .as_deref()
                    .ok_or(KeyringError::BinDirUnset)?;
                load_plugins(path, bin_dir)?
            }
        };
        Ok(NodeKeyring {
            files: DockerConfigFiles {
                json_dirs,
                legacy_dirs,
                cache: Mutex::new(None),
            },
            plugins,
        })
    }

    /// Names of the configured credential-provider plugins.
    pub fn plugin_names(&self) -> Vec<String> {
        self.plugins.iter().map(|p| p.name.clone()).collect()
    }

    /// The credentials the kubelet would try for `image`, in order. `pull_secrets` are
    /// the workload's, already matched to the image (empty outside a workload context).
    /// An empty result means: pull without AuthConfig.
    pub async fn lookup(
        &self,
        image: &ImageReference,
        pull_secrets: &[SourcedCredential],
    ) -> Lookup {
        let mut lookup = Lookup::default();
        let push = |found: Vec<SourcedCredential>, lookup: &mut Lookup| {
            for credential in found {
                // The same secret reachable twice is tried once: the second try could
                // only fail the same way.
                if !lookup
                    .credentials
                    .iter()
                    .any(|c| c.credential == credential.credential)
                {
                    lookup.credentials.push(credential);
                }
            }
        };
        push(pull_secrets.to_vec(), &mut lookup);
        push(self.files.keyring().lookup(image), &mut lookup);

        let name = image.name();
        let mut plugin_keyring = Keyring::new();
        for plugin in &self.plugins {
            match plugin.provide(&name).await {
                Ok(Some(config)) => plugin_keyring.add(&plugin.source, &config),
                Ok(None) => {}
                Err(problem) => {
                    warn!(plugin = %plugin.name, image = %name, %problem, "credential provider plugin failed");
                    lookup
                        .problems
                        .push(format!("{}: {problem}", plugin.source));
                }
            }
        }
        push(plugin_keyring.lookup(image), &mut lookup);
        lookup
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pullwatch::RegistryCredential;
    use pullwatch::credentials::urls_match;
    use pullwatch::duration;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn image(s: &str) -> ImageReference {
        ImageReference::parse(s).unwrap()
    }

    fn config_with_dirs(dir: &Path) -> KeyringConfig {
        KeyringConfig {
            kubelet_root_dir: dir.join("kubelet"),
            config_json_dirs: Some(vec![
                dir.join("kubelet"),
                dir.join("cwd"),
                dir.join("home/.docker"),
            ]),
            dockercfg_dirs: Some(vec![dir.join("kubelet"), dir.join("home")]),
            ..Default::default()
        }
    }

    fn sources(lookup: &Lookup) -> Vec<String> {
        lookup
            .credentials
            .iter()
            .map(|c| c.source.to_string())
            .collect()
    }

    #[test]
    fn go_durations() {
        let parse = |s: &str| duration::parse_non_negative(s).ok();
        assert_eq!(parse("0"), Some(Duration::ZERO));
        assert_eq!(parse("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(parse("1h0m0s"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("2m30s"), Some(Duration::from_secs(150)));
        assert_eq!(parse("-1s"), None);
        assert_eq!(parse("5"), None);
        assert_eq!(parse("5d"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn url_globs_as_the_kubelet() {
        assert!(urls_match("*.azurecr.io", "team.azurecr.io/app"));
        assert!(!urls_match("*.azurecr.io", "a.b.azurecr.io/app"));
        assert!(urls_match("registry.io/team", "registry.io/team/app"));
        assert!(!urls_match("registry.io/team", "registry.io/other/app"));
        assert!(urls_match("127.0.0.1:5000", "127.0.0.1:5000/private/app"));
        assert!(!urls_match("127.0.0.1:5000", "127.0.0.1:5001/private/app"));
        assert!(!urls_match("127.0.0.1", "127.0.0.1:5000/private/app"));
        assert!(urls_match("[::1]:5000", "[::1]:5000/app"));
        assert!(urls_match("*.*.amazonaws.com", "x.dkr.amazonaws.com/a"));
        assert!(urls_match("reg-[0-9].io", "reg-7.io/a"));
        assert!(!urls_match("reg-[0-9].io", "reg-x.io/a"));
        // As in the kubelet, which parses the glob as a URL: '?' starts a query, so
        // "gcr.?o" is the host "gcr." and never matches.
        assert!(!urls_match("gcr.?o", "gcr.io/a"));
        assert!(urls_match("gcr.i[a-z]", "gcr.io/a"));
    }

    #[tokio::test]
    async fn kubelet_search_order_first_valid_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // An invalid config.json in the root dir is skipped; the cwd one is used; the
        // one in $HOME/.docker is never read because one valid file was found.
        write(&d.join("kubelet/config.json"), "{not json");
        write(
            &d.join("cwd/config.json"),
            r#"{"auths":{"reg.io":{"auth":"Y3dkOnB3"}}}"#,
        );
        write(
            &d.join("home/.docker/config.json"),
            r#"{"auths":{"reg.io":{"username":"home","password":"pw"}}}"#,
        );
        write(
            &d.join("home/.dockercfg"),
            r#"{"reg.io":{"username":"legacy","password":"pw"}}"#,
        );
        let keyring = NodeKeyring::new(&config_with_dirs(d)).unwrap();
        let found = keyring.lookup(&image("reg.io/app:v1"), &[]).await;
        assert_eq!(
            sources(&found),
            [format!(
                "config.json:{}",
                d.join("cwd/config.json").display()
            )]
        );
        assert_eq!(found.credentials[0].credential.username, "cwd");
        assert!(
            keyring
                .lookup(&image("other.io/app"), &[])
                .await
                .credentials
                .is_empty()
        );
    }

    #[tokio::test]
    async fn legacy_dockercfg_when_no_config_json() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            &d.join("home/.dockercfg"),
            r#"{"https://reg.io":{"auth":"bGVnYWN5OnB3"}}"#,
        );
        let keyring = NodeKeyring::new(&config_with_dirs(d)).unwrap();
        let found = keyring.lookup(&image("reg.io/app"), &[]).await;
        assert_eq!(
            sources(&found),
            [format!(
                ".dockercfg:{}",
                d.join("home/.dockercfg").display()
            )]
        );
        assert_eq!(found.credentials[0].credential.username, "legacy");
    }

    #[tokio::test]
    async fn pull_secrets_first_then_files_duplicates_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            &d.join("kubelet/config.json"),
            r#"{"auths":{"reg.io":{"username":"node","password":"pw"},"reg.io/team":{"username":"team","password":"pw"}}}"#,
        );
        let keyring = NodeKeyring::new(&config_with_dirs(d)).unwrap();
        let secret = |source: &str, user: &str| SourcedCredential {
            source: Arc::from(source),
            credential: RegistryCredential {
                username: user.into(),
                password: "pw".into(),
                ..Default::default()
            },
        };
        let found = keyring
            .lookup(
                &image("reg.io/team/app:v1"),
                &[secret("secret/ns/a", "mine"), secret("secret/ns/b", "node")],
            )
            .await;
        let users: Vec<&str> = found
            .credentials
            .iter()
            .map(|c| c.credential.username.as_str())
            .collect();
        // Secrets first; then the node file, most specific key first; the node's
        // "node" credential equals secret b's, so it is tried once.
        assert_eq!(users, ["mine", "node", "team"]);
        assert_eq!(&*found.credentials[1].source, "secret/ns/b");
    }

    fn plugin_script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let path = bin.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        bin
    }

    fn provider_config(dir: &Path, yaml: &str) -> PathBuf {
        let path = dir.join("providers.yaml");
        std::fs::write(&path, yaml).unwrap();
        path
    }

    #[tokio::test]
    async fn plugin_is_called_for_matching_images_and_cached_per_registry() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let calls = d.join("calls");
        // The plugin records each request it gets and answers with a registry-wide key.
        let bin = plugin_script(
            d,
            "ecr-login",
            &format!(
                r#"cat >> {calls}; echo >> {calls}
echo "$1 $EXTRA" >> {calls}
printf '%s' '{{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Registry","cacheDuration":"1h","auth":{{"*.example.com":{{"username":"plugin-user","password":"plugin-pw"}}}}}}'"#,
                calls = calls.display()
            ),
        );
        let config = provider_config(
            d,
            r#"apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: ecr-login
    matchImages: ["*.example.com", "registry.example.org/team"]
    defaultCacheDuration: 10m
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    args: ["--flag"]
    env:
      - name: EXTRA
        value: from-config
"#,
        );
        let keyring = NodeKeyring::new(&KeyringConfig {
            provider_config: Some(config),
            provider_bin_dir: Some(bin),
            ..config_with_dirs(d)
        })
        .unwrap();
        assert_eq!(keyring.plugin_names(), ["ecr-login"]);

        let found = keyring.lookup(&image("a.example.com/app:v1"), &[]).await;
        assert_eq!(sources(&found), ["plugin:ecr-login"]);
        assert_eq!(found.credentials[0].credential.username, "plugin-user");
        // Same registry: served from the Registry-keyed cache, no second exec.
        let again = keyring.lookup(&image("a.example.com/other:v2"), &[]).await;
        assert_eq!(again.credentials.len(), 1);
        // Not matched by matchImages: the plugin is not run.
        let none = keyring.lookup(&image("quay.io/app"), &[]).await;
        assert!(none.credentials.is_empty());

        let log = std::fs::read_to_string(&calls).unwrap();
        assert_eq!(log.matches("CredentialProviderRequest").count(), 1, "{log}");
        assert!(log.contains(r#""image":"a.example.com/app""#), "{log}");
        assert!(log.contains("--flag from-config"), "{log}");
    }

    #[tokio::test]
    async fn plugin_cache_duration_zero_means_no_cache_and_failures_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let calls = d.join("calls");
        let bin = plugin_script(
            d,
            "nocache",
            &format!(
                r#"cat > /dev/null; echo x >> {calls}
printf '%s' '{{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Image","cacheDuration":"0s","auth":{{"reg.io":{{"username":"u","password":"p"}}}}}}'"#,
                calls = calls.display()
            ),
        );
        plugin_script(d, "broken", "echo 'secret-ish output' >&2; exit 3");
        plugin_script(
            d,
            "wrongversion",
            r#"printf '%s' '{"apiVersion":"credentialprovider.kubelet.k8s.io/v1beta1","kind":"CredentialProviderResponse","cacheKeyType":"Image","auth":{}}'"#,
        );
        let config = provider_config(
            d,
            r#"{"apiVersion":"kubelet.config.k8s.io/v1","kind":"CredentialProviderConfig","providers":[
              {"name":"nocache","matchImages":["reg.io"],"defaultCacheDuration":"1h","apiVersion":"credentialprovider.kubelet.k8s.io/v1"},
              {"name":"broken","matchImages":["reg.io"],"defaultCacheDuration":"1h","apiVersion":"credentialprovider.kubelet.k8s.io/v1"},
              {"name":"wrongversion","matchImages":["reg.io"],"defaultCacheDuration":"1h","apiVersion":"credentialprovider.kubelet.k8s.io/v1"}]}"#,
        );
        let keyring = NodeKeyring::new(&KeyringConfig {
            provider_config: Some(config),
            provider_bin_dir: Some(bin),
            ..config_with_dirs(d)
        })
        .unwrap();
        for _ in 0..2 {
            let found = keyring.lookup(&image("reg.io/app"), &[]).await;
            assert_eq!(sources(&found), ["plugin:nocache"]);
            assert_eq!(found.problems.len(), 2, "{:?}", found.problems);
            assert!(found.problems[0].starts_with("plugin:broken: exited with"));
            assert!(!found.problems[0].contains("secret-ish"));
            assert!(found.problems[1].contains("did not match expected apiVersion"));
        }
        let runs = std::fs::read_to_string(&calls).unwrap();
        assert_eq!(
            runs.lines().count(),
            2,
            "cacheDuration 0 disables the cache"
        );
    }

    #[test]
    fn invalid_plugin_configs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let bin = plugin_script(d, "ok", "exit 0");
        let try_config = |yaml: &str| {
            NodeKeyring::new(&KeyringConfig {
                provider_config: Some(provider_config(d, yaml)),
                provider_bin_dir: Some(bin.clone()),
                ..config_with_dirs(d)
            })
            .map(|_| ())
            .unwrap_err()
            .to_string()
        };
        let base = "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\n";
        assert!(try_config(&format!("{base}providers: []")).contains("at least 1 item"));
        assert!(
            try_config(&format!(
                "{base}providers:\n- name: ok\n  matchImages: [a.io]\n  apiVersion: credentialprovider.kubelet.k8s.io/v1\n"
            ))
            .contains("defaultCacheDuration is required")
        );
        assert!(
            try_config(&format!(
                "{base}providers:\n- name: missing\n  matchImages: [a.io]\n  defaultCacheDuration: 1m\n  apiVersion: credentialprovider.kubelet.k8s.io/v1\n"
            ))
            .contains("does not exist")
        );
        assert!(
            try_config(&format!(
                "{base}providers:\n- name: ok\n  matchImages: [a.io]\n  defaultCacheDuration: 1m\n  apiVersion: v9\n"
            ))
            .contains("unsupported apiVersion")
        );
        assert!(
            try_config("apiVersion: kubelet.config.k8s.io/v1\nkind: Other\nproviders: []")
                .contains("kind")
        );
        let unset = NodeKeyring::new(&KeyringConfig {
            provider_config: Some(d.join("x")),
            ..config_with_dirs(d)
        })
        .unwrap_err();
        assert!(matches!(unset, KeyringError::BinDirUnset));
    }
}
