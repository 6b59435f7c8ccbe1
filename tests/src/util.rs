//! Small process and network helpers shared by the bench.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// The port is found by binding port 0 and dropping the listener, so another process can
/// take it before the caller binds it; the bench's servers retry on such collisions.
pub fn free_port() -> u16 {
    free_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap_or(0)
}

/// Returns a TCP port that was free a moment ago on the given loopback address.
pub fn free_port_on(ip: IpAddr) -> Result<u16> {
    let listener =
        TcpListener::bind((ip, 0)).with_context(|| format!("binding a free port on {ip}"))?;
    Ok(listener.local_addr()?.port())
}

/// Writes `contents` to `dir/name` and returns the path; panics with the path if it
/// cannot (a test step).
pub fn write_file(dir: impl AsRef<Path>, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.as_ref().join(name);
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// The Debian package that ships a binary the bench uses, for error messages.
fn debian_package(name: &str) -> &'static str {
    match name {
        "docker-registry" => "docker-registry",
        "htpasswd" => "apache2-utils",
        "skopeo" => "skopeo",
        "promtool" | "prometheus" => "prometheus",
        "openssl" => "openssl",
        "containerd" | "ctr" | "containerd-shim-runc-v2" => "containerd",
        "runc" => "runc",
        "curl" => "curl",
        _ => "<unknown package>",
    }
}

/// Finds `name` on `PATH` (or accepts an existing absolute/relative path).
///
/// The error names the Debian package to install when the binary is missing.
pub fn require_tool(name: &str) -> Result<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        if is_executable(&p) {
            return Ok(p);
        }
    } else if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join(name);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    let base = Path::new(name)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(name);
    let package = debian_package(base);
    bail!(
        "required tool `{name}` not found on PATH; install the Debian package `{package}` (apt-get install {package})"
    )
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Output of a finished child process.
#[derive(Debug, Clone)]
pub(crate) struct Finished {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a short-lived tool synchronously with a bounded wait, feeding `stdin`.
///
/// The child is killed when the timeout expires. Output is captured in full.
pub(crate) fn run_sync(cmd: &mut Command, stdin: &[u8], timeout: Duration) -> Result<Finished> {
    let program = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {program}"))?;
    let mut child_stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin pipe"))?;
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // A tool may exit before reading everything; a broken pipe is not our error.
        let _ = child_stdin.write_all(&input);
    });
    let mut out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout pipe"))?;
    let mut err = child
        .stderr
        .take()
        .ok_or_else(|| anyhow!("no stderr pipe"))?;
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{program} did not finish within {timeout:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Finished {
        success: status.success(),
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// Runs a tool synchronously and fails (with its output) unless it exits 0.
pub(crate) fn run_checked(cmd: &mut Command, timeout: Duration) -> Result<Finished> {
    let desc = format!("{cmd:?}");
    let f = run_sync(cmd, b"", timeout)?;
    if !f.success {
        bail!(
            "{desc} failed (exit {:?})\nstdout:\n{}\nstderr:\n{}",
            f.code,
            f.stdout,
            f.stderr
        );
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_tool_names_the_package() {
        let err = require_tool("docker-registry-does-not-exist").unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");
        let err = require_tool("/nonexistent/htpasswd").unwrap_err();
        assert!(err.to_string().contains("apache2-utils"), "{err}");
        assert!(require_tool("sh").unwrap().is_absolute());
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).unwrap();
    }

    #[test]
    fn run_sync_times_out() {
        let start = Instant::now();
        let err = run_sync(
            Command::new("sleep").arg("30"),
            b"",
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(err.to_string().contains("did not finish"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}

/// A long-running child process the bench owns (a registry, a containerd): killed and
/// reaped when stopped, replaced or dropped, so no test leaves a daemon behind.
#[derive(Debug, Default)]
pub struct Daemon(Option<Child>);

impl Daemon {
    /// Owns `child`, stopping whatever ran before.
    pub fn start(&mut self, child: Child) {
        self.stop();
        self.0 = Some(child);
    }

    /// The exit status if the process has exited (it is then forgotten).
    pub fn exited(&mut self) -> std::io::Result<Option<ExitStatus>> {
        let status = match self.0.as_mut() {
            Some(child) => child.try_wait()?,
            None => None,
        };
        if status.is_some() {
            self.0 = None;
        }
        Ok(status)
    }

    /// Whether a process was started and has not been stopped or exited.
    pub fn is_running(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Whether a process was started and not stopped (without asking the OS).
    pub fn is_started(&self) -> bool {
        self.0.is_some()
    }

    /// Its process id while started.
    pub fn id(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    /// Kills (SIGKILL, as a crash would) and reaps the process.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}
