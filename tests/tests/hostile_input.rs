//! Hostile input never panics: property tests over every parser that reads bytes
//! pullwatch does not control (see `tests/hostile/targets.rs` for the list and each
//! parser's entry point). Each runs 10,000 generated cases from a fixed seed, so a run
//! is reproducible; `cargo bench -p pullwatch-testbench --bench hostile_input` runs a
//! larger budget and counts panics instead of stopping at the first.

#[path = "../hostile/targets.rs"]
mod targets;

use proptest::test_runner::{Config, RngAlgorithm, RngSeed, TestRunner};
use targets::*;

const CASES: u32 = 10_000;

/// Runs `CASES` cases of `target` from `seed`; a panic fails with the minimal input.
fn check<T: Target>(target: T, seed: u64) {
    let config = Config {
        cases: CASES,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let strategy = target.strategy();
    let result = runner.run(&strategy, |input| {
        target.run(input);
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{}: {failure}", target.name());
    }
}

#[test]
fn image_references() {
    check(ImageReferences, 0x1001);
}

#[test]
fn docker_configs() {
    check(DockerConfigs, 0x1002);
}

#[test]
fn manifest_documents() {
    check(ManifestDocuments, 0x1003);
}

#[test]
fn containerd_config() {
    check(ContainerdConfig, 0x1004);
}

#[test]
fn hosts_toml() {
    check(HostsToml::new(), 0x1005);
}

#[test]
fn cri_errors() {
    check(CriErrors, 0x1006);
}

#[test]
fn www_authenticate() {
    check(WwwAuthenticate, 0x1007);
}

#[test]
fn ratelimit_headers() {
    check(RatelimitHeaders, 0x100e);
}

#[test]
fn registry_bodies() {
    check(RegistryBodies, 0x1008);
}

#[test]
fn registry_exchanges() {
    check(RegistryExchanges::new(), 0x1009);
}

#[test]
fn credential_provider_responses() {
    check(CredentialProviderResponses::new(), 0x100a);
}

#[test]
fn agent_messages() {
    check(AgentMessages::new(), 0x100b);
}

#[test]
fn aggregator_messages() {
    check(AggregatorMessages, 0x100c);
}

#[test]
fn cri_responses() {
    check(CriResponses, 0x100d);
}

#[test]
fn pull_path_documents() {
    check(PullPathDocuments, 0x100f);
}

#[test]
fn schema1_documents() {
    check(Schema1Documents, 0x1010);
}
