//! The fault suite, small: each scenario of `pullwatch_testbench::faults` against the
//! real `pullwatch-aggregator` and `pullwatch-agent` binaries (built by `cargo test
//! --workspace`, or `cargo build -p pullwatch-aggregator -p pullwatch-agent`), a real
//! docker-registry, real containerd nodes and the test API server, on loopback. Each
//! asserts no panic, no reference without a status after recovery, no wrong status
//! during the fault, that the fault was seen, and recovery within a bound. Timing
//! ratios are the bench's (`cargo bench -p pullwatch-testbench --bench faults`).

use std::time::Duration;

use pullwatch_testbench::faults::{Scale, Scenario, table};

/// Bound of one scenario, setup included.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(120);

async fn healthy(scenario: Scenario) {
    let row = tokio::time::timeout(SCENARIO_TIMEOUT, scenario.run(Scale::small()))
        .await
        .unwrap_or_else(|_| panic!("{} did not finish in {SCENARIO_TIMEOUT:?}", scenario.name()))
        .unwrap();
    eprintln!("{}", table(std::slice::from_ref(&row)));
    row.assert_healthy();
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_down_then_up() {
    healthy(Scenario::RegistryDown).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_5xx_then_healthy() {
    healthy(Scenario::Registry5xx).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_restart_under_an_agent() {
    healthy(Scenario::ContainerdRestart).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_killed_mid_check() {
    healthy(Scenario::AgentKilledMidCheck).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn aggregator_restarted() {
    healthy(Scenario::AggregatorRestart).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn api_server_down_then_up() {
    healthy(Scenario::ApiServerDown).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_410_gone() {
    healthy(Scenario::Watch410).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_forbidden_mid_run() {
    healthy(Scenario::SecretsForbidden).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn burst_of_workload_changes() {
    healthy(Scenario::Burst).await;
}
