//! `promtool check metrics` on an exposition text.

use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::util::{require_tool, run_sync};

/// Runs `promtool check metrics` with `exposition` on stdin.
///
/// Ok when promtool exits 0; otherwise Err carrying promtool's exit code and full output
/// (promtool exits non-zero for lint problems such as a missing HELP or a counter without
/// `_total`, as well as for parse errors).
pub fn promtool_check_metrics(exposition: &str) -> Result<()> {
    let promtool = require_tool("promtool")?;
    let out = run_sync(
        Command::new(promtool).args(["check", "metrics"]),
        exposition.as_bytes(),
        Duration::from_secs(30),
    )?;
    if !out.success {
        bail!(
            "promtool check metrics failed (exit {:?}):\n{}{}",
            out.code,
            out.stdout,
            out.stderr
        );
    }
    Ok(())
}
