//! `pullwatch-aggregator`: `check` once, or `serve` metrics continuously
//! ([`pullwatch_aggregator::commands`]).

use std::process::ExitCode;

use clap::Parser;
use pullwatch_aggregator::Error;
use pullwatch_aggregator::commands;
use pullwatch_aggregator::flags::{Cli, Command};
use tracing::error;

/// jemalloc rather than glibc's malloc. After three reconnect storms of 5,000 agents
/// (fleet bench) glibc kept RSS 25 to 30% above what it was before them, `malloc_trim`
/// after each wave notwithstanding: the freed connection buffers lie scattered among
/// live ones. jemalloc, with [`JEMALLOC_CONF`], gives freed pages back on its own
/// 250 ms after a wave frees them, at the same memory per connected agent.
/// (mimalloc, 2.x and 3.x alike, held 40% more per agent.)
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at its start (`MALLOC_CONF`-style; the environment's
/// `_RJEM_MALLOC_CONF` still overrides): a background thread purges freed pages,
/// dirty ones after 250 ms, straight back to the OS (no lazy "muzzy" stage, which RSS
/// would still count). Fleet bench, 5,000 agents, RSS 12 s after three reconnect
/// storms against before them: +5.0 to +10.9% with 1 s (five runs), +3.4 to +4.7%
/// with 250 ms (three runs), at the same CPU per dispatched check; 0 ms (every freed
/// page at once) gave +2.9 and +4.3% but 1.5 to 2.5x the CPU per check.
#[cfg(not(target_env = "msvc"))]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static JEMALLOC_CONF: &[u8; 59] =
    b"background_thread:true,dirty_decay_ms:250,muzzy_decay_ms:0\0";

fn main() -> ExitCode {
    #[cfg(not(target_env = "msvc"))]
    pullwatch_aggregator::heap::allocator_is_jemalloc();
    let cli = Cli::parse();
    // `serve` runs as a service: its errors are log lines like the rest of its output.
    let serving = matches!(cli.command, Command::Serve(_));
    match commands::run(cli) {
        Ok(code) => code,
        // The one place an error becomes a message and an exit code.
        Err(error) => {
            if serving && !matches!(error, Error::Start(_)) {
                error!("{error}");
            } else {
                eprintln!("error: {error}");
            }
            ExitCode::from(error.exit_code())
        }
    }
}
