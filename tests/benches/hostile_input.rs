//! The hostile-input targets of `tests/tests/hostile_input.rs` with a larger budget:
//! every case runs (a panic is counted, not the end), and each target prints the cases
//! it tried and the panics it found, then the run exits non-zero if any panicked.
//!
//! ```sh
//! cargo bench -p pullwatch-testbench --bench hostile_input            # 100,000 cases per target
//! cargo bench -p pullwatch-testbench --bench hostile_input -- 1000000 # or any budget
//! HOSTILE_SEED=7 cargo bench ...                                      # another seed
//! ```
//! Targets that start a process or a network exchange per case get a tenth of it.

#[path = "../hostile/targets.rs"]
mod targets;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, RngSeed, TestRunner};
use targets::*;

/// Runs `budget` cases; returns (tried, panics).
fn bench<T: Target>(target: T, budget: u64, seed: u64) -> (u64, u64) {
    let config = Config {
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let strategy = target.strategy();
    let tried = AtomicU64::new(0);
    let mut panics = 0u64;
    let started = Instant::now();
    for _ in 0..budget {
        let Ok(tree) = strategy.new_tree(&mut runner) else {
            continue;
        };
        let input = tree.current();
        tried.fetch_add(1, Ordering::Relaxed);
        let kept = if panics < 3 {
            Some(input.clone())
        } else {
            None
        };
        if catch_unwind(AssertUnwindSafe(|| target.run(input))).is_err() {
            panics += 1;
            if let Some(input) = kept {
                eprintln!("{}: panic #{panics} on input {input:?}", target.name());
            }
        }
    }
    let tried = tried.load(Ordering::Relaxed);
    println!(
        "{:<32} cases tried {:>9}  panics found {:>4}  ({:.1}s)",
        target.name(),
        tried,
        panics,
        started.elapsed().as_secs_f64()
    );
    (tried, panics)
}

fn main() {
    let budget: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.replace('_', "").parse().ok())
        .unwrap_or(100_000);
    let seed: u64 = std::env::var("HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let slow = (budget / 10).max(1);
    // Panics are counted and reported by input; the default hook would print each.
    std::panic::set_hook(Box::new(|_| {}));
    let results = [
        bench(ImageReferences, budget, seed),
        bench(DockerConfigs, budget, seed + 1),
        bench(ManifestDocuments, budget, seed + 2),
        bench(ContainerdConfig, budget, seed + 3),
        bench(HostsToml::new(), budget, seed + 4),
        bench(CriErrors, budget, seed + 5),
        bench(WwwAuthenticate, budget, seed + 6),
        bench(RegistryBodies, budget, seed + 7),
        bench(RegistryExchanges::new(), slow, seed + 8),
        bench(CredentialProviderResponses::new(), slow, seed + 9),
        bench(AgentMessages::new(), budget, seed + 10),
        bench(AggregatorMessages, budget, seed + 11),
        bench(CriResponses, budget, seed + 12),
        bench(RatelimitHeaders, budget, seed + 13),
        bench(PullPathDocuments, budget, seed + 14),
        bench(Schema1Documents, budget, seed + 15),
    ];
    let tried: u64 = results.iter().map(|r| r.0).sum();
    let panics: u64 = results.iter().map(|r| r.1).sum();
    println!("total: cases tried {tried}, panics found {panics}");
    if panics > 0 {
        std::process::exit(1);
    }
}
