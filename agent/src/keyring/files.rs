//! The kubelet's docker config files (`credentialprovider.ReadDockerConfigFile` with the
//! kubelet root dir as preferred path): the first valid `config.json` in `<root-dir>`,
//! the working dir, `$HOME/.docker`, `/.docker`; failing that the first valid legacy
//! `.dockercfg` in `<root-dir>`, the working dir, `$HOME`, `/`. Re-read every 5
//! minutes, as the kubelet's caching provider does.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pullwatch::credentials::CredentialError;
use pullwatch::locks::lock;
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
        let mut cache = lock(&self.cache);
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
        type Parse = fn(&[u8]) -> Result<DockerConfig, CredentialError>;
        let forms: [(&[PathBuf], &str, Parse); 2] = [
            (
                &self.json_dirs,
                "config.json",
                DockerConfig::from_config_json,
            ),
            (
                &self.legacy_dirs,
                ".dockercfg",
                DockerConfig::from_dockercfg,
            ),
        ];
        let mut keyring = Keyring::new();
        for (dirs, name, parse) in forms {
            for dir in dirs {
                let path = dir.join(name);
                let Some(bytes) = read_if_exists(&path) else {
                    continue;
                };
                match parse(&bytes) {
                    // A config.json without "auths" is valid and empty, as to the kubelet.
                    Ok(config) => {
                        debug!(path = %path.display(), entries = config.entries.len(), "using the kubelet's docker config");
                        keyring.add(&format!("{name}:{}", path.display()), &config);
                        return keyring;
                    }
                    Err(error) => {
                        debug!(path = %path.display(), %error, "skipping an invalid docker config")
                    }
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
