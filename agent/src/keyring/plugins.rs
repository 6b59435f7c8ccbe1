//! The kubelet's credential-provider exec plugins (`--image-credential-provider-config`,
//! `--image-credential-provider-bin-dir`): the config validated as strictly as the
//! kubelet does, CredentialProviderRequest on stdin, CredentialProviderResponse on
//! stdout, only for images their `matchImages` globs match, cached per `cacheKeyType`
//! for `cacheDuration` (or the provider's `defaultCacheDuration`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pullwatch::credentials::{is_schemeless_url, urls_match};
use pullwatch::duration;
use pullwatch::locks::lock;
use pullwatch::{DockerConfig, RegistryCredential};
use serde::Deserialize;
use tracing::warn;

use super::KeyringError;

/// The kubelet's catch-all timeout for one exec plugin run.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Expired plugin cache entries are purged at most this often (as the kubelet).
const CACHE_PURGE_INTERVAL: Duration = Duration::from_secs(15 * 60);

const CONFIG_API_VERSIONS: [&str; 3] = [
    "kubelet.config.k8s.io/v1",
    "kubelet.config.k8s.io/v1beta1",
    "kubelet.config.k8s.io/v1alpha1",
];
const PROVIDER_API_VERSIONS: [&str; 3] = [
    "credentialprovider.kubelet.k8s.io/v1",
    "credentialprovider.kubelet.k8s.io/v1beta1",
    "credentialprovider.kubelet.k8s.io/v1alpha1",
];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProviderConfigFile {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    providers: Vec<ProviderEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProviderEntry {
    #[serde(default)]
    name: String,
    #[serde(default)]
    match_images: Vec<String>,
    default_cache_duration: Option<String>,
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
    #[serde(default)]
    token_attributes: Option<serde_yaml::Value>,
}

#[derive(Deserialize, Clone)]
struct EnvVar {
    name: String,
    #[serde(default)]
    value: String,
}

pub(super) fn load_plugins(
    path: &Path,
    bin_dir: &Path,
) -> Result<Vec<PluginProvider>, KeyringError> {
    let invalid = |reason: String| KeyringError::ConfigInvalid {
        path: path.to_path_buf(),
        reason,
    };
    if !bin_dir.is_dir() {
        return Err(KeyringError::BinDirMissing(bin_dir.to_path_buf()));
    }
    let file = read_config(path)?;
    let mut plugins = Vec::new();
    let mut seen = Vec::new();
    for entry in file.providers {
        if seen.contains(&entry.name) {
            return Err(invalid(format!("duplicate provider name {:?}", entry.name)));
        }
        seen.push(entry.name.clone());
        let default_cache_duration = validate_provider(&entry).map_err(invalid)?;
        if entry.token_attributes.is_some() {
            // Service-account-token plugins need a token for the pod's service account,
            // which a node agent does not have: such a plugin would not be called for
            // our checks anyway, so it is left out rather than called wrongly.
            warn!(provider = %entry.name, "credential provider uses tokenAttributes (service account tokens); the agent cannot call it and skips it");
            continue;
        }
        let binary = bin_dir.join(&entry.name);
        if !is_executable(&binary) {
            return Err(KeyringError::PluginMissing(binary));
        }
        plugins.push(PluginProvider {
            source: format!("plugin:{}", entry.name),
            name: entry.name,
            binary,
            api_version: entry.api_version,
            args: entry.args,
            env: entry.env,
            match_images: entry.match_images,
            default_cache_duration,
            cache: Mutex::new(PluginCache::default()),
            exec_lock: tokio::sync::Mutex::new(()),
        });
    }
    Ok(plugins)
}

/// The configuration file, read and checked as a whole as the kubelet does (kind,
/// apiVersion, at least one provider).
fn read_config(path: &Path) -> Result<ProviderConfigFile, KeyringError> {
    let invalid = |reason: String| KeyringError::ConfigInvalid {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| KeyringError::ConfigRead {
        path: path.to_path_buf(),
        source,
    })?;
    // YAML is a superset of JSON: the kubelet accepts both.
    let file: ProviderConfigFile =
        serde_yaml::from_slice(&bytes).map_err(|e| KeyringError::ConfigParse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if file.kind != "CredentialProviderConfig" {
        return Err(invalid(format!(
            "kind is {:?}, expected CredentialProviderConfig",
            file.kind
        )));
    }
    if !CONFIG_API_VERSIONS.contains(&file.api_version.as_str()) {
        return Err(invalid(format!(
            "unsupported apiVersion {:?}",
            file.api_version
        )));
    }
    if file.providers.is_empty() {
        return Err(invalid("at least 1 item in plugins is required".into()));
    }
    Ok(file)
}

/// One provider entry checked as the kubelet checks it: its default cache duration,
/// or why the configuration is refused.
fn validate_provider(entry: &ProviderEntry) -> Result<Duration, String> {
    if entry.name.is_empty()
        || entry.name.contains('/')
        || entry.name.contains(' ')
        || entry.name == "."
        || entry.name == ".."
    {
        return Err(format!("invalid provider name {:?}", entry.name));
    }
    if entry.match_images.is_empty() {
        return Err(format!(
            "provider {}: at least 1 item in matchImages is required",
            entry.name
        ));
    }
    // As the kubelet: each entry must parse as a schemeless URL (Go's url.Parse of
    // `https://<entry>`); the globs in it are only checked when matched.
    if let Some(pattern) = entry.match_images.iter().find(|p| !is_schemeless_url(p)) {
        return Err(format!(
            "provider {}: match image {pattern:?} is invalid",
            entry.name
        ));
    }
    if !PROVIDER_API_VERSIONS.contains(&entry.api_version.as_str()) {
        return Err(format!(
            "provider {}: unsupported apiVersion {:?}",
            entry.name, entry.api_version
        ));
    }
    let Some(text) = entry.default_cache_duration.as_deref() else {
        return Err(format!(
            "provider {}: defaultCacheDuration is required",
            entry.name
        ));
    };
    duration::parse_non_negative(text).map_err(|e| {
        format!(
            "provider {}: defaultCacheDuration must be a duration greater than or equal to 0: {e}",
            entry.name
        )
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[derive(Default)]
struct PluginCache {
    entries: HashMap<String, (DockerConfig, Instant)>,
    last_purge: Option<Instant>,
}

impl PluginCache {
    fn get(&mut self, key: &str, now: Instant) -> Option<DockerConfig> {
        if self
            .last_purge
            .is_none_or(|t| now.duration_since(t) > CACHE_PURGE_INTERVAL)
        {
            self.entries.retain(|_, (_, expires)| *expires > now);
            self.last_purge = Some(now);
        }
        match self.entries.get(key) {
            Some((config, expires)) if *expires > now => Some(config.clone()),
            _ => None,
        }
    }
}

pub(super) struct PluginProvider {
    pub(super) name: String,
    pub(super) source: String,
    binary: PathBuf,
    api_version: String,
    args: Vec<String>,
    env: Vec<EnvVar>,
    match_images: Vec<String>,
    default_cache_duration: Duration,
    cache: Mutex<PluginCache>,
    /// One exec at a time per plugin, so concurrent checks of one image run it once
    /// (the kubelet uses a singleflight group for the same purpose).
    exec_lock: tokio::sync::Mutex<()>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProviderResponse {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    cache_key_type: String,
    cache_duration: Option<String>,
    #[serde(default)]
    auth: HashMap<String, ResponseAuth>,
}

#[derive(Deserialize)]
struct ResponseAuth {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// The registry part of an image name, as the kubelet's `parseRegistry`.
fn registry_of(image: &str) -> &str {
    image.split('/').next().unwrap_or(image)
}

const GLOBAL_CACHE_KEY: &str = "global";

impl PluginProvider {
    fn matches(&self, image: &str) -> bool {
        self.match_images.iter().any(|p| urls_match(p, image))
    }

    /// The plugin's credentials for `image` (a normalized name without tag), from the
    /// cache or by running the plugin. Ok(None): the plugin does not handle the image.
    pub(super) async fn provide(&self, image: &str) -> Result<Option<DockerConfig>, String> {
        if !self.matches(image) {
            return Ok(None);
        }
        if let Some(config) = self.cached(image) {
            return Ok(Some(config));
        }
        let _running = self.exec_lock.lock().await;
        if let Some(config) = self.cached(image) {
            return Ok(Some(config));
        }
        let response = self.exec(image).await?;
        let cache_key = match response.cache_key_type.as_str() {
            "Image" => image.to_string(),
            "Registry" => registry_of(image).to_string(),
            "Global" => GLOBAL_CACHE_KEY.to_string(),
            other => {
                return Err(format!(
                    "plugin did not return a valid cacheKeyType: {other:?}"
                ));
            }
        };
        let config = DockerConfig {
            entries: response
                .auth
                .into_iter()
                .map(|(key, auth)| {
                    (
                        key,
                        RegistryCredential {
                            username: auth.username,
                            password: auth.password,
                            ..Default::default()
                        },
                    )
                })
                .collect(),
        };
        let lifetime = match response.cache_duration.as_deref() {
            None => self.default_cache_duration,
            // A negative duration expires at once, as in the kubelet's cache.
            Some(text) => duration::parse_nanos(text)
                .map(|nanos| Duration::from_nanos(u64::try_from(nanos).unwrap_or(0)))
                .map_err(|e| format!("plugin returned an invalid cacheDuration: {e}"))?,
        };
        if !lifetime.is_zero() {
            let mut cache = lock(&self.cache);
            cache
                .entries
                .insert(cache_key, (config.clone(), Instant::now() + lifetime));
        }
        Ok(Some(config))
    }

    fn cached(&self, image: &str) -> Option<DockerConfig> {
        let now = Instant::now();
        let mut cache = lock(&self.cache);
        [image, registry_of(image), GLOBAL_CACHE_KEY]
            .into_iter()
            .find_map(|key| cache.get(key, now))
    }

    async fn exec(&self, image: &str) -> Result<ProviderResponse, String> {
        use tokio::io::AsyncWriteExt;
        let request = serde_json::json!({
            "apiVersion": self.api_version,
            "kind": "CredentialProviderRequest",
            "image": image,
        });
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|v| (v.name.clone(), v.value.clone())))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.binary.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            let bytes = request.to_string().into_bytes();
            // A plugin that exits without reading its input fails below on its own.
            let _ = stdin.write_all(&bytes).await;
        }
        let output = match tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output()).await {
            Err(_) => return Err(format!("did not finish within {PLUGIN_TIMEOUT:?}")),
            Ok(Err(e)) => return Err(format!("waiting for the plugin: {e}")),
            Ok(Ok(output)) => output,
        };
        if !output.status.success() {
            // stderr is left out on purpose: a failing plugin may print what it got.
            return Err(format!("exited with {}", output.status));
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct TypeMeta {
            #[serde(default)]
            api_version: String,
        }
        let meta: TypeMeta = serde_json::from_slice(&output.stdout)
            .map_err(|_| "response on stdout is not a JSON object".to_string())?;
        if meta.api_version != self.api_version {
            return Err(format!(
                "apiVersion from credential plugin response did not match expected apiVersion:{}, actual apiVersion:{}",
                self.api_version, meta.api_version
            ));
        }
        // The decoding error is not shown: it may quote the credentials.
        let response: ProviderResponse = serde_json::from_slice(&output.stdout)
            .map_err(|_| "error decoding credential provider plugin response".to_string())?;
        if response.kind != "CredentialProviderResponse" {
            return Err(format!(
                "unexpected kind {:?} in plugin response",
                response.kind
            ));
        }
        debug_assert_eq!(response.api_version, self.api_version);
        Ok(response)
    }
}
