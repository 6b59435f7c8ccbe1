//! Generates the agent <-> aggregator protocol (proto/pullwatch/v1) and the CRI subset the
//! agent calls (proto/cri, package runtime.v1) with tonic-prost.
//! protoc comes from the protoc-bin-vendored crate, so no system protoc is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };

    let protos: Vec<PathBuf> = ["proto/pullwatch/v1/agent.proto", "proto/cri/api.proto"]
        .iter()
        .map(PathBuf::from)
        .collect();
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    tonic_prost_build::configure()
        // Messages carrying registry secrets get a hand-written, redacting `Debug`
        // (src/redact.rs), so no `{:?}` of them can print a password or token.
        .skip_debug([".pullwatch.v1.PullCredential", ".runtime.v1.AuthConfig"])
        .build_client(true)
        .build_server(true)
        .compile_protos(&protos, &[PathBuf::from("proto")])?;
    Ok(())
}
