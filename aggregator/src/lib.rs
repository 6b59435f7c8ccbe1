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
//! scheduler reaches the later ones through its `Downstream` trait, which
//! [`pipeline`] implements by wiring checker, agents, store and metrics together.
//! [`server`] serves the HTTP endpoints, [`report`] prints one-shot results and
//! [`cli`] holds the flags.

pub mod agents;
pub mod checker;
pub mod cli;
pub mod index;
pub mod inventory;
pub mod metrics;
pub mod mirrors;
pub mod pipeline;
pub mod report;
pub mod results;
pub mod scheduler;
pub mod server;
pub mod store;
