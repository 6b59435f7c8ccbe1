//! `pullwatch-aggregator`: `check` once, or `serve` metrics continuously
//! ([`pullwatch_aggregator::commands`]).

use std::process::ExitCode;

use clap::Parser;
use pullwatch_aggregator::Error;
use pullwatch_aggregator::commands;
use pullwatch_aggregator::flags::{Cli, Command};
use tracing::error;

fn main() -> ExitCode {
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
