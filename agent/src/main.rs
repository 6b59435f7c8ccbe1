//! `pullwatch-agent`: see the crate docs of `pullwatch_agent`.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

use pullwatch_agent::Error;
use pullwatch_agent::flags::{CheckArgs, Cli, Command, OutputFormat, RunArgs, pull_secrets_for};
use pullwatch_agent::metrics::AgentMetrics;

/// Exit codes: 0 available, 1 checked and not available, 2 usage or setup error (a
/// configuration that can never work), 3 the check could not be made (the container
/// runtime did not answer): nothing is known about the image.
const EXIT_USAGE: u8 = 2;
const EXIT_NOT_CHECKED: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Check(_) => "warn",
        Command::Run(_) => "info",
    };
    let level = cli.log_level.as_deref().unwrap_or(default_level);
    let result = pullwatch::process::start(level, cli.log_format)
        .map_err(Error::from)
        .and_then(|runtime| {
            runtime.block_on(async {
                match cli.command {
                    Command::Check(args) => check(args).await,
                    Command::Run(args) => run(args).await,
                }
            })
        });
    result.unwrap_or_else(|error| fail(&error))
}

/// The one place an error becomes a message and an exit code. Every error of the
/// library is a setup that can never work (a bad flag, an unreadable file, a refused
/// plugin configuration): exit 2. What a check finds is not an error; `check` maps it
/// to 0, 1 or 3 itself.
fn fail(error: &Error) -> ExitCode {
    match error {
        // Found once logging runs: logged, in the operator's log format.
        Error::Session(error) => tracing::error!(%error, "invalid configuration"),
        _ => eprintln!("error: {error}"),
    }
    ExitCode::from(EXIT_USAGE)
}

async fn check(args: CheckArgs) -> pullwatch_agent::Result<ExitCode> {
    let checker = args.node.checker(None)?;
    let secrets = pull_secrets_for(&args.pull_secret_files, &args.image)?;
    let report = checker.check(&args.image, args.node.mode, &secrets).await;
    let printed = match args.output {
        OutputFormat::Json => serde_json::to_string(&report)?,
        OutputFormat::Text => {
            let via = if report.credential_source.is_empty() {
                String::new()
            } else {
                format!(" credential_source={}", report.credential_source)
            };
            if report.reason.is_empty() {
                format!(
                    "{} {} mode={}{via}",
                    report.image, report.status, report.mode
                )
            } else {
                format!(
                    "{} {} mode={}{via}: {}",
                    report.image, report.status, report.mode, report.reason
                )
            }
        }
    };
    pullwatch::terminal::write_stdout(&(printed + "\n")).map_err(Error::Output)?;
    Ok(if report.runtime_failure {
        ExitCode::from(EXIT_NOT_CHECKED)
    } else if report.is_available() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn run(args: RunArgs) -> pullwatch_agent::Result<ExitCode> {
    let session_config = args.session_config();
    session_config.validate()?;
    let metrics = Arc::new(AgentMetrics::new()?.with_series_ttl(args.metrics_series_ttl));
    let checker = args.node.checker(Some(metrics.clone()))?;
    metrics.set_providers(&checker.keyring().plugin_names());
    let listener = pullwatch_agent::metrics::bind(&args.metrics_address).await?;
    tracing::info!(address = %args.metrics_address, "serving /metrics");
    let server = tokio::spawn(pullwatch_agent::metrics::serve(
        listener,
        args.limits.for_listener(1),
        metrics.clone(),
    ));
    let session = pullwatch_agent::session::run(Arc::new(checker), metrics, session_config);
    tokio::select! {
        () = session => {}
        () = pullwatch::process::shutdown_signal() => tracing::info!("shutting down"),
    }
    server.abort();
    Ok(ExitCode::SUCCESS)
}
