//! A real `docker-registry` (distribution 2.8) process in a temp dir.

use std::fs::OpenOptions;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tempfile::TempDir;

use crate::ca::{LOOPBACK_SANS, TestCa};
use crate::http_client::{Endpoint, HttpResponse, MANIFEST_ACCEPT, tls_client_config};
use crate::util::{Daemon, free_port_on, require_tool, run_checked};

/// How long [`Registry::start`] waits for `GET /v2/` to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How many times a start is retried when the chosen port was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;

/// Options for [`Registry::start`].
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Require basic auth with this `(user, password)` (bcrypt htpasswd file).
    pub htpasswd: Option<(String, String)>,
    /// Serve HTTPS with a server certificate for 127.0.0.1, ::1 and localhost issued by
    /// this CA.
    pub tls: Option<TestCa>,
    /// Bind `[::1]` instead of `127.0.0.1`.
    pub ipv6: bool,
    /// Accept manifests whose layers carry `urls` (foreign layers): distribution
    /// refuses them unless `validation.manifests.urls.allow` is set.
    pub allow_foreign_urls: bool,
    /// Accept signed Docker schema 1 manifests on `PUT` (`compatibility.schema1.enabled`;
    /// distribution serves them, and converts schema 2 for clients that ask for
    /// neither, either way).
    pub schema1: bool,
}

impl RegistryOptions {
    /// Basic auth required, with this user and password.
    pub fn htpasswd(user: &str, password: &str) -> RegistryOptions {
        RegistryOptions {
            htpasswd: Some((user.into(), password.into())),
            ..RegistryOptions::default()
        }
    }

    /// HTTPS, with a server certificate issued by `ca`.
    pub fn tls(ca: &TestCa) -> RegistryOptions {
        RegistryOptions {
            tls: Some(ca.clone()),
            ..RegistryOptions::default()
        }
    }
}

/// A running `docker-registry` on a loopback port, with filesystem storage in a temp dir.
///
/// The process is killed when the value drops.
pub struct Registry {
    child: Daemon,
    endpoint: Endpoint,
    config_path: PathBuf,
    log_path: PathBuf,
    tls_ca: Option<TestCa>,
    /// A directory with `ca.crt` only, for `skopeo --dest-cert-dir`.
    cert_dir: Option<PathBuf>,
    dir: TempDir,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("url", &self.url())
            .field("dir", &self.dir.path())
            .field("running", &self.child.is_started())
            .finish()
    }
}

impl Registry {
    /// Writes a config, starts `docker-registry serve` and waits until `GET /v2/` answers
    /// 200 (or 401 with htpasswd).
    pub async fn start(opts: RegistryOptions) -> Result<Registry> {
        let binary = require_tool("docker-registry")?;
        let dir = tempfile::Builder::new()
            .prefix("pullwatch-registry-")
            .tempdir()
            .context("creating registry temp dir")?;
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;

        let htpasswd_path = match &opts.htpasswd {
            None => None,
            Some((user, pass)) => {
                let tool = require_tool("htpasswd")?;
                let out = run_checked(
                    Command::new(tool).arg("-Bbn").arg(user).arg(pass),
                    Duration::from_secs(30),
                )
                .context("htpasswd -Bbn")?;
                let line = out.stdout.trim();
                if line.is_empty() {
                    bail!("htpasswd printed nothing");
                }
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, format!("{line}\n"))?;
                Some(path)
            }
        };

        let (tls_files, tls_client, cert_dir) = match &opts.tls {
            None => (None, None, None),
            Some(ca) => {
                let (cert, key) = ca.issue_server_cert(LOOPBACK_SANS)?;
                let cert_dir = dir.path().join("certs.d");
                std::fs::create_dir_all(&cert_dir)?;
                std::fs::copy(ca.ca_cert_path(), cert_dir.join("ca.crt"))?;
                let client = Arc::new(tls_client_config(&ca.ca_pem())?);
                (Some((cert, key)), Some(client), Some(cert_dir))
            }
        };

        let ip = if opts.ipv6 {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        };
        let log_path = dir.path().join("registry.log");
        let config_path = dir.path().join("config.yml");

        let placeholder = SocketAddr::new(ip, 0);
        let mut registry = Registry {
            child: Daemon::default(),
            endpoint: Endpoint {
                host: placeholder.to_string(),
                addr: placeholder,
                tls: tls_client,
                creds: opts.htpasswd.clone(),
            },
            config_path,
            log_path,
            tls_ca: opts.tls.clone(),
            cert_dir,
            dir,
        };
        let mut last_err = anyhow!("no attempt made");
        for _ in 0..PORT_ATTEMPTS {
            let addr = SocketAddr::new(ip, free_port_on(ip)?);
            registry.endpoint.addr = addr;
            registry.endpoint.host = addr.to_string();
            let config = render_config(
                &addr,
                &storage,
                htpasswd_path.as_deref(),
                tls_files.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
                opts.allow_foreign_urls,
                opts.schema1,
            );
            std::fs::write(&registry.config_path, config)?;
            let log_len_before = registry.log().len();
            match registry.spawn_and_wait(&binary).await {
                Ok(()) => return Ok(registry),
                Err(e) => {
                    registry.stop();
                    let log = registry.log();
                    let this_attempt = log.get(log_len_before..).unwrap_or(&log);
                    if !this_attempt.contains("address already in use") {
                        return Err(e.context(format!("registry log:\n{log}")));
                    }
                    last_err = e;
                }
            }
        }
        Err(last_err.context("could not find a free port for the registry"))
    }

    async fn spawn_and_wait(&mut self, binary: &Path) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .context("opening registry log")?;
        let child = Command::new(binary)
            .arg("serve")
            .arg(&self.config_path)
            .current_dir(self.dir.path())
            .env_remove("REGISTRY_HTTP_ADDR")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning docker-registry")?;
        self.child.start(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.exited()? {
                bail!("docker-registry exited during startup with {status}");
            }
            let probe = tokio::time::timeout(Duration::from_secs(2), async {
                let mut conn = self.endpoint.connect().await?;
                conn.send(http::Method::GET, "/v2/", &[], Vec::new(), false)
                    .await
            })
            .await;
            if let Ok(Ok(resp)) = probe
                && (resp.status == 200 || resp.status == 401)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "docker-registry on {} not ready within {READY_TIMEOUT:?}",
                    self.endpoint.host
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `127.0.0.1:PORT` or `[::1]:PORT`.
    pub fn host(&self) -> String {
        self.endpoint.host.clone()
    }

    /// The socket address the registry listens on.
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr
    }

    /// `http://HOST` or `https://HOST`.
    pub fn url(&self) -> String {
        let scheme = if self.endpoint.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.endpoint.host)
    }

    /// The `(user, password)` the registry requires, if any.
    pub fn credentials(&self) -> Option<(String, String)> {
        self.endpoint.creds.clone()
    }

    /// The CA that signed the registry's certificate, if it serves TLS.
    pub fn tls_ca(&self) -> Option<&TestCa> {
        self.tls_ca.as_ref()
    }

    /// A directory holding only `ca.crt` (docker/skopeo `certs.d` layout), if TLS.
    pub fn cert_dir(&self) -> Option<&Path> {
        self.cert_dir.as_deref()
    }

    /// Path of the registry's log file (stdout and stderr, appended across restarts).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far, including the access log lines such as
    /// `"HEAD /v2/<repo>/manifests/<tag> HTTP/1.1" 200`.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Root of the filesystem storage.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Whether the process is running (not stopped and not exited).
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// Kills the process and waits for it; afterwards the port refuses connections.
    pub fn stop(&mut self) {
        self.child.stop();
    }

    /// Starts the process again on the same port with the same storage and config.
    pub async fn start_again(&mut self) -> Result<()> {
        self.stop();
        let binary = require_tool("docker-registry")?;
        let mut result = Err(anyhow!("not started"));
        for _ in 0..PORT_ATTEMPTS {
            result = self.spawn_and_wait(&binary).await;
            if result.is_ok() {
                break;
            }
            self.stop();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        result.with_context(|| format!("restarting registry; log:\n{}", self.log()))
    }

    /// Sends a request, with basic auth when the registry has credentials.
    pub async fn request(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<HttpResponse> {
        let mut conn = self.endpoint.connect().await?;
        conn.send(method, path, headers, body, true).await
    }

    /// Sends a request without credentials (to see the 401).
    pub async fn request_unauthenticated(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<HttpResponse> {
        let mut conn = self.endpoint.connect().await?;
        conn.send(method, path, headers, Vec::new(), false).await
    }

    /// `HEAD /v2/<repo>/manifests/<reference>` with an `Accept` header listing every
    /// manifest type, authenticated if needed.
    pub async fn head_manifest(&self, repo: &str, reference: &str) -> Result<HttpResponse> {
        self.request(
            http::Method::HEAD,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("accept", MANIFEST_ACCEPT)],
            Vec::new(),
        )
        .await
    }

    /// `GET /v2/<repo>/manifests/<reference>` with an `Accept` header listing every
    /// manifest type, authenticated if needed.
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Result<HttpResponse> {
        self.request(
            http::Method::GET,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("accept", MANIFEST_ACCEPT)],
            Vec::new(),
        )
        .await
    }

    /// Points `repo:target_tag` at the manifest `repo:source_tag` has, the way a
    /// re-push of a release tag moves it. Returns the digest `target_tag` has now.
    pub async fn move_tag(&self, repo: &str, source_tag: &str, target_tag: &str) -> Result<String> {
        let source = self.get_manifest(repo, source_tag).await?;
        if source.status != 200 {
            bail!("GET manifest {repo}:{source_tag}: status {}", source.status);
        }
        let content_type = source
            .header("content-type")
            .ok_or_else(|| anyhow::anyhow!("manifest {repo}:{source_tag} has no content type"))?
            .to_string();
        let resp = self
            .request(
                http::Method::PUT,
                &format!("/v2/{repo}/manifests/{target_tag}"),
                &[("content-type", content_type.as_str())],
                source.body,
            )
            .await?;
        if resp.status != 201 {
            bail!(
                "PUT manifest {repo}:{target_tag}: status {} body {}",
                resp.status,
                resp.text()
            );
        }
        resp.header("docker-content-digest")
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("PUT manifest {repo}:{target_tag}: no digest"))
    }

    /// Deletes the manifest `digest` in `repo` through the registry API (tags pointing
    /// at it go away too), so the image becomes "lost".
    pub async fn delete_manifest(&self, repo: &str, digest: &str) -> Result<()> {
        let resp = self
            .request(
                http::Method::DELETE,
                &format!("/v2/{repo}/manifests/{digest}"),
                &[],
                Vec::new(),
            )
            .await?;
        if resp.status != 202 {
            bail!(
                "DELETE manifest {repo}@{digest}: status {} body {}",
                resp.status,
                resp.text()
            );
        }
        Ok(())
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn yaml_str(s: &str) -> String {
    // JSON strings are valid YAML double-quoted scalars.
    serde_json::Value::String(s.to_owned()).to_string()
}

fn render_config(
    addr: &SocketAddr,
    storage: &Path,
    htpasswd: Option<&Path>,
    tls: Option<(&Path, &Path)>,
    allow_foreign_urls: bool,
    schema1: bool,
) -> String {
    let mut c = format!(
        "version: 0.1\n\
         log:\n  \
           level: info\n  \
           formatter: text\n  \
           accesslog:\n    \
             disabled: false\n\
         storage:\n  \
           filesystem:\n    \
             rootdirectory: {}\n  \
           delete:\n    \
             enabled: true\n  \
           maintenance:\n    \
             uploadpurging:\n      \
               enabled: false\n\
         http:\n  \
           addr: {}\n  \
           secret: pullwatch-testbench-secret\n  \
           headers:\n    \
             X-Content-Type-Options: [nosniff]\n",
        yaml_str(&storage.to_string_lossy()),
        yaml_str(&addr.to_string()),
    );
    if let Some((cert, key)) = tls {
        c.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            yaml_str(&cert.to_string_lossy()),
            yaml_str(&key.to_string_lossy())
        ));
    }
    if allow_foreign_urls {
        c.push_str("validation:\n  manifests:\n    urls:\n      allow:\n        - ^https?://\n");
    }
    if schema1 {
        c.push_str("compatibility:\n  schema1:\n    enabled: true\n");
    }
    if let Some(path) = htpasswd {
        c.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: pullwatch-testbench\n    path: {}\n",
            yaml_str(&path.to_string_lossy())
        ));
    }
    c
}
