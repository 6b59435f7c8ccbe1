//! The workspace's own binaries, for tests and benches of the test-bench crate that run
//! both `pullwatch-aggregator` and `pullwatch-agent` (a crate cannot name another crate's
//! binaries through `CARGO_BIN_EXE_*`).

use std::path::{Path, PathBuf};

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
