//! `cargo build --release -p pullwatch-aggregator -p pullwatch-agent && cargo bench -p pullwatch-testbench --bench faults [-- SCENARIO...]`
//!
//! The fault suite at full size: every scenario of `pullwatch_testbench::faults` against
//! the real binaries, a real docker-registry, real containerd nodes and the test API
//! server, printed as one table (see the README's "Fault suite"). Exits 1 when a zero
//! that is due is not a zero, a fault was not seen or a scenario did not recover.
//! Arguments, if any, pick scenarios whose name contains one of them.

use pullwatch_testbench::faults::{Figure, Scale, Scenario, table};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let scale = Scale::full();
    let mut rows = Vec::new();
    for scenario in Scenario::ALL {
        if !filters.is_empty() && !filters.iter().any(|f| scenario.name().contains(f.as_str())) {
            continue;
        }
        eprintln!("fault suite: {} ...", scenario.name());
        let row = scenario.run(scale).await?;
        rows.push(row);
    }
    println!(
        "fault suite: {} workloads, faults of {:?}, burst of {} changes\n",
        scale.workloads, scale.fault, scale.burst
    );
    print!("{}", table(&rows));
    let failed: Vec<_> = rows
        .iter()
        .filter(|r| {
            r.panics > 0
                || r.without_status > 0
                || r.wrong > 0
                || !r.seen
                || r.figure == Figure::NotRecovered
        })
        .collect();
    for row in &failed {
        eprintln!("\n{}:\n{}", row.scenario.name(), row.detail);
    }
    if !failed.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
