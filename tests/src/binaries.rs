//! The workspace's own binaries, for tests and benches of the test-bench crate that run
//! both `pullwatch-aggregator` and `pullwatch-agent` (a crate cannot name another crate's
//! binaries through `CARGO_BIN_EXE_*`), and running a binary hermetically, bounded in
//! time.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// A binary of this workspace: `$PULLWATCH_<NAME>_BIN` when set (e.g.
/// `PULLWATCH_AGGREGATOR_BIN` for `pullwatch-aggregator`), else next to this process's own
/// executable in `target/<profile>/`, where `cargo test --workspace` builds it for its
/// crate's own tests. Benches run in the release profile: build the binaries first with
/// `cargo build --release -p pullwatch-aggregator -p pullwatch-agent`.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let var = format!("{}_BIN", name.to_ascii_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&var) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    // target/<profile>/deps/<test> -> target/<profile>/
    let Some(profile_dir) = exe.parent().and_then(Path::parent) else {
        bail!("{} has no target/<profile>/ above it", exe.display());
    };
    let bin = profile_dir.join(name);
    if !bin.is_file() {
        bail!(
            "{} is missing: build it with `cargo build -p {name}` (add --release for a bench), \
             run `cargo test --workspace`, or set {var}",
            bin.display()
        );
    }
    Ok(bin)
}

/// `program` set up to run as on a bare host: nothing of the test's environment but
/// `PATH`, with `HOME` and the working dir at `home` (the kubelet's docker config search
/// path includes both), killed when dropped. Add arguments and variables to it, then
/// run it with [`output_within`].
pub fn hermetic_command(program: impl AsRef<OsStr>, home: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(home)
        .kill_on_drop(true);
    command
}

/// Runs `command` to its end, bounded by `limit`; panics if it cannot start or does not
/// finish in time.
pub async fn output_within(command: &mut tokio::process::Command, limit: Duration) -> Output {
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    tokio::time::timeout(limit, command.output())
        .await
        .unwrap_or_else(|_| panic!("{program} did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

/// The process's stdout as JSON; panics with its stdout and stderr if it is not.
pub fn stdout_json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}
