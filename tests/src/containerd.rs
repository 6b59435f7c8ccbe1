//! A real containerd (Debian package `containerd`, with `runc`) per simulated node, in a
//! temp dir: its own root, state, gRPC socket and CRI configuration, so several run
//! side by side without touching the machine's containerd.
//!
//! What makes the CRI plugin work here without special mounts: `snapshotter =
//! "native"`, `disable_cgroup = true`, `disable_apparmor = true`. CNI is pointed at
//! empty dirs in the temp dir; the "no network config found" error it logs at start
//! does not matter for image calls. The registry `config_path` is a per-node `certs.d`
//! dir (hosts.toml), and `registry.configs."<host>".auth` can carry node credentials.

use std::fs::OpenOptions;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tempfile::TempDir;

use crate::util::{Daemon, require_tool};

/// How long [`Containerd::start`] waits for the daemon to boot.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The line containerd logs once every plugin is loaded and the socket serves.
const BOOTED: &str = "containerd successfully booted";
/// The CRI plugin logs this just before it starts answering: containerd reports
/// itself booted a few milliseconds earlier, while CRI calls still fail with
/// "server is not initialized yet".
const CRI_SERVING: &str = "Start streaming server";

/// `registry.configs."<host>".auth` for one registry host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryAuthConfig {
    /// `host[:port]` as containerd sees it (the host it connects to).
    pub host: String,
    pub username: String,
    pub password: String,
}

/// Options for [`Containerd::start`].
#[derive(Clone, Debug, Default)]
pub struct ContainerdOptions {
    /// Node credentials in containerd's own config.
    pub registry_auths: Vec<RegistryAuthConfig>,
}

impl ContainerdOptions {
    /// A node holding `username:password` for `host` (`host[:port]` as containerd
    /// connects to it) in containerd's own config.
    pub fn with_credentials(host: &str, username: &str, password: &str) -> Self {
        ContainerdOptions {
            registry_auths: vec![RegistryAuthConfig {
                host: host.into(),
                username: username.into(),
                password: password.into(),
            }],
        }
    }
}

/// A running containerd with the CRI plugin on a unix socket in a temp dir. Killed when
/// dropped.
pub struct Containerd {
    child: Daemon,
    dir: TempDir,
    socket: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
}

impl std::fmt::Debug for Containerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containerd")
            .field("socket", &self.socket)
            .field("running", &self.child.is_started())
            .finish()
    }
}

fn toml_str(s: &str) -> String {
    // A JSON string is a valid TOML basic string for the paths and names used here.
    serde_json::Value::String(s.to_owned()).to_string()
}

fn render_config(dir: &Path, socket: &Path, opts: &ContainerdOptions) -> String {
    let p = |name: &str| toml_str(&dir.join(name).to_string_lossy());
    let mut config = format!(
        r#"version = 2
root = {root}
state = {state}
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = {socket}

[ttrpc]
  address = {ttrpc}

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[plugins."io.containerd.grpc.v1.cri"]
  disable_cgroup = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "native"

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = {cni_bin}
  conf_dir = {cni_conf}

[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = {certs}
"#,
        root = p("root"),
        state = p("state"),
        socket = toml_str(&socket.to_string_lossy()),
        ttrpc = toml_str(&format!("{}.ttrpc", socket.to_string_lossy())),
        opt = p("opt"),
        cni_bin = p("cni/bin"),
        cni_conf = p("cni/conf"),
        certs = p("certs.d"),
    );
    for auth in &opts.registry_auths {
        config.push_str(&format!(
            "\n[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.{}.auth]\n  username = {}\n  password = {}\n",
            toml_str(&auth.host),
            toml_str(&auth.username),
            toml_str(&auth.password),
        ));
    }
    config
}

impl Containerd {
    /// Writes a config, starts `containerd --config ...` and waits until it has booted
    /// and its socket accepts connections.
    pub async fn start(opts: ContainerdOptions) -> Result<Containerd> {
        require_tool("runc")?;
        let dir = tempfile::Builder::new()
            .prefix("pullwatch-containerd-")
            .tempdir()
            .context("creating containerd temp dir")?;
        for sub in ["root", "state", "opt", "cni/bin", "cni/conf", "certs.d"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        let socket = dir.path().join("containerd.sock");
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, render_config(dir.path(), &socket, &opts))?;
        let mut containerd = Containerd {
            child: Daemon::default(),
            log_path: dir.path().join("containerd.log"),
            dir,
            socket,
            config_path,
        };
        containerd.spawn_and_wait().await?;
        Ok(containerd)
    }

    async fn spawn_and_wait(&mut self) -> Result<()> {
        let binary = require_tool("containerd")?;
        let booted_before = self.log().matches(BOOTED).count();
        let serving_before = self.log().matches(CRI_SERVING).count();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .context("opening containerd log")?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning containerd")?;
        self.child.start(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.exited()? {
                bail!(
                    "containerd exited during startup with {status}; log:\n{}",
                    self.log()
                );
            }
            let log = self.log();
            if log.matches(BOOTED).count() > booted_before
                && log.matches(CRI_SERVING).count() > serving_before
                && UnixStream::connect(&self.socket).is_ok()
            {
                // The CRI plugin marks itself initialized right after that line.
                tokio::time::sleep(Duration::from_millis(20)).await;
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                bail!(
                    "containerd not ready within {READY_TIMEOUT:?}; log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `unix:///.../containerd.sock`, for `--cri-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The node's containerd config.toml (for the agent's `--containerd-config`).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The registry `config_path`: write `<host>/hosts.toml` here.
    pub fn hosts_dir(&self) -> PathBuf {
        self.dir.path().join("certs.d")
    }

    /// Writes `hosts.toml` for `registry_host` (`host:port`) under [`Self::hosts_dir`].
    /// containerd reads it on the next pull; no restart needed.
    pub fn write_hosts_toml(&self, registry_host: &str, content: &str) -> Result<PathBuf> {
        let dir = self.hosts_dir().join(registry_host);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("hosts.toml");
        std::fs::write(&path, content)?;
        Ok(path)
    }

    /// The daemon's process id while it runs (for `/proc/<pid>/...`: CPU time, RSS).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The arguments of a `pullwatch-agent run` on this node: reporting to the
    /// aggregator's agent server at `aggregator` over TLS (its CA in `ca`, the shared
    /// token in `token`), with the kubelet root dir `kubelet_root` and metrics at
    /// `metrics`. Callers add their own flags after these.
    pub fn agent_run_args(
        &self,
        aggregator: std::net::SocketAddr,
        ca: &Path,
        token: &Path,
        kubelet_root: &Path,
        metrics: std::net::SocketAddr,
    ) -> Vec<String> {
        vec![
            "run".to_string(),
            format!("--aggregator=https://{aggregator}"),
            format!("--aggregator-ca={}", ca.display()),
            format!("--token-file={}", token.display()),
            format!("--cri-endpoint={}", self.endpoint()),
            format!("--containerd-hosts-dir={}", self.hosts_dir().display()),
            format!("--kubelet-root-dir={}", kubelet_root.display()),
            format!("--metrics-address={metrics}"),
        ]
    }

    /// The node's temp dir (other node files, e.g. a kubelet root dir, can live here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Installs a kubelet credential-provider exec plugin on this node: `script` as the
    /// executable `name` in a bin dir, `config_yaml` as the CredentialProviderConfig.
    /// Returns (config path, bin dir), as the kubelet's two flags take them.
    pub fn install_credential_provider(
        &self,
        name: &str,
        script: &str,
        config_yaml: &str,
    ) -> Result<(PathBuf, PathBuf)> {
        use std::os::unix::fs::PermissionsExt;
        let bin = self.dir().join("credential-provider-bin");
        std::fs::create_dir_all(&bin)?;
        let executable = bin.join(name);
        std::fs::write(&executable, format!("#!/bin/sh\n{script}\n"))?;
        std::fs::set_permissions(&executable, std::fs::Permissions::from_mode(0o755))?;
        let config = self.dir().join("credential-provider-config.yaml");
        std::fs::write(&config, config_yaml)?;
        Ok((config, bin))
    }

    /// containerd's log so far (appended across restarts).
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Whether the daemon is running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// Kills the daemon (SIGKILL, as a crash would) and waits for it. The socket file
    /// stays behind but refuses connections.
    pub fn stop(&mut self) {
        self.child.stop();
    }

    /// Kills and starts the daemon again with the same config, root and state (images
    /// pulled before are still there), waiting until it has booted.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn_and_wait()
            .await
            .map_err(|e| anyhow!("restarting containerd: {e:#}"))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_carries_node_settings() {
        let dir = Path::new("/tmp/node-a");
        let config = render_config(
            dir,
            &dir.join("containerd.sock"),
            &ContainerdOptions::with_credentials("127.0.0.1:5000", "alice", "s\"cret"),
        );
        assert!(config.contains(r#"snapshotter = "native""#), "{config}");
        assert!(config.contains("disable_cgroup = true"), "{config}");
        assert!(
            config.contains(r#"config_path = "/tmp/node-a/certs.d""#),
            "{config}"
        );
        assert!(
            config.contains(r#"address = "/tmp/node-a/containerd.sock""#),
            "{config}"
        );
        assert!(
            config.contains(
                r#"[plugins."io.containerd.grpc.v1.cri".registry.configs."127.0.0.1:5000".auth]"#
            ),
            "{config}"
        );
        assert!(config.contains(r#"password = "s\"cret""#), "{config}");
    }
}
