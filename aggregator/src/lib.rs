//! The pullwatch aggregator, one module per stage of the data flow:
//!
//! ```text
//! inventory/ -> index -> scheduler -> checker/ | agents/ -> store -> metrics, results
//! ```
//!
//! [`inventory`] reads what runs (watches or manifest files), [`index`] turns it into
//! distinct checks (rewritten by [`mirrors`]), [`scheduler`] decides when each runs,
//! [`checker`] asks registries from the aggregator and [`agents`] from the nodes,
//! [`store`] keeps the latest outcome per container reference, and [`metrics`] and
//! [`results`] export it. A stage imports only from the stages before it: the
//! scheduler reaches the later ones through its two traits, `CheckRunner` (where
//! checks are made) and `OutcomeSink` (where outcomes go), which [`pipeline`]
//! implements by wiring checker, agents, store and metrics together; what checks
//! answered ([`answers`]) is shared by the stages from the scheduler on.
//! [`commands`] starts and wires the stages for `check` and `serve`; [`endpoints`]
//! serves the HTTP endpoints, [`report`] prints one-shot results (with [`progress`] on
//! stderr while `check` runs) and [`flags`] holds the command line's flags (the agent
//! listener's are [`agents::flags`]). Items are `pub(crate)` unless the binary, the
//! integration tests or the test bench reach them.

// The crate is the aggregator binary's, its items crate-private unless a test reaches
// them: its documentation is read with `--document-private-items`, and links into
// crate-private modules are meant.
#![allow(rustdoc::private_intra_doc_links)]

pub mod agents;
pub(crate) mod answers;
pub mod checker;
pub mod commands;
pub(crate) mod endpoints;
pub mod flags;
pub mod heap;
pub mod index;
pub mod inventory;
pub mod metrics;
pub mod mirrors;
pub mod pipeline;
pub(crate) mod progress;
pub(crate) mod report;
pub(crate) mod results;
pub(crate) mod scheduler;
pub(crate) mod scrape;
pub mod store;

/// Why the aggregator could not start or finish, by what failed. The binary turns each
/// into one log line and an exit code in one place ([`Error::exit_code`]); the stages
/// keep their own detailed errors, which these variants carry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Logging or the async runtime could not start.
    #[error(transparent)]
    Start(#[from] pullwatch::Error),
    #[error(transparent)]
    Flags(#[from] flags::FlagError),
    #[error(transparent)]
    Manifests(#[from] inventory::manifests::ManifestError),
    #[error(transparent)]
    Cluster(#[from] inventory::cluster::ClusterError),
    #[error(transparent)]
    Checker(#[from] checker::CheckerError),
    #[error(transparent)]
    Listen(#[from] pullwatch::serve::BindError),
    #[error(transparent)]
    AgentServer(#[from] agents::server::AgentServerError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error("cannot encode results: {0}")]
    Report(String),
    #[error("cannot write the results to stdout: {0}")]
    Output(std::io::Error),
    #[error("HTTP server task failed: {0}")]
    ServerTask(String),
}

/// The aggregator's result.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The process exit code: 2 for what the user can fix in flags, files or
    /// configuration (as clap exits on usage errors), 1 for failures at run time.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Start(pullwatch::Error::Logging(_))
            | Error::Flags(_)
            | Error::Manifests(_)
            | Error::Cluster(_)
            | Error::Checker(_)
            | Error::Listen(_)
            | Error::AgentServer(_) => 2,
            Error::Start(_)
            | Error::Metrics(_)
            | Error::Report(_)
            | Error::Output(_)
            | Error::ServerTask(_) => 1,
        }
    }
}
