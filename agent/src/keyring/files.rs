//! The kubelet's docker config files (`credentialprovider.ReadDockerConfigFile` with the
//! kubelet root dir as preferred path): the first valid `config.json` in `<root-dir>`,
//! the working dir, `$HOME/.docker`, `/.docker`; failing that the first valid legacy
//! `.dockercfg` in `<root-dir>`, the working dir, `$HOME`, `/`. Re-read every 5
//! minutes, as the kubelet's caching provider does.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pullwatch::{DockerConfig, Keyring};
use tracing::debug;

/// How long the kubelet caches the docker config files it read.
const DOCKER_CONFIG_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// The kubelet's docker config file provider, cached for 5 minutes.
pub(super) struct DockerConfigFiles {
    pub(super) json_dirs: Vec<PathBuf>,
    pub(super) legacy_dirs: Vec<PathBuf>,
    pub(super) cache: Mutex<Option<(Arc<Keyring>, Instant)>>,
}

impl DockerConfigFiles {
    pub(super) fn keyring(&self) -> Arc<Keyring> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((keyring, expires)) = cache.as_ref()
            && *expires > Instant::now()
        {
            return keyring.clone();
        }
        let keyring = Arc::new(self.read());
        *cache = Some((keyring.clone(), Instant::now() + DOCKER_CONFIG_LIFETIME));
        keyring
    }

    /// `ReadDockerConfigFile`: the first valid config.json, else the first valid
    /// .dockercfg; one file at most.
    fn read(&self) -> Keyring {
        let mut keyring = Keyring::new();
        for dir in &self.json_dirs {
            let path = dir.join("config.json");
            let Some(bytes) = read_if_exists(&path) else {
                continue;
            };
            match DockerConfig::from_config_json(&bytes) {
                // A config.json without "auths" is valid and empty, as to the kubelet.
                Ok(config) => {
                    debug!(path = %path.display(), entries = config.entries.len(), "using kubelet docker config");
                    keyring.add(&format!("config.json:{}", path.display()), &config);
                    return keyring;
                }
                Err(error) => {
                    debug!(path = %path.display(), %error, "skipping invalid config.json")
                }
            }
        }
        for dir in &self.legacy_dirs {
            let path = dir.join(".dockercfg");
            let Some(bytes) = read_if_exists(&path) else {
                continue;
            };
            match DockerConfig::from_dockercfg(&bytes) {
                Ok(config) => {
                    debug!(path = %path.display(), entries = config.entries.len(), "using kubelet .dockercfg");
                    keyring.add(&format!(".dockercfg:{}", path.display()), &config);
                    return keyring;
                }
                Err(error) => {
                    debug!(path = %path.display(), %error, "skipping invalid .dockercfg")
                }
            }
        }
        keyring
    }
}

fn read_if_exists(path: &Path) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => {
            debug!(path = %path.display(), %error, "cannot read docker config");
            None
        }
    }
}
