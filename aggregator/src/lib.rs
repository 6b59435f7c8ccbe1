//! The pullwatch aggregator, one module per stage of the data flow:
//!
//! inventory -> index -> scheduler -> checker -> store -> metrics
//!
//! [`inventory`] reads what runs, [`index`] turns it into distinct checks,
//! [`scheduler`] decides when each runs, [`checker`] asks registries,
//! [`store`] keeps the latest outcome per container reference, and [`metrics`]
//! exports it. [`server`] serves the HTTP endpoints and [`report`] prints one-shot
//! results; [`cli`] holds the flags.

pub mod agents;
pub mod checker;
pub mod cli;
pub mod index;
pub mod inventory;
pub mod metrics;
pub mod mirrors;
pub mod report;
pub mod results;
pub mod scheduler;
pub mod server;
pub mod store;
