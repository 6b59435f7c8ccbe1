//! Generates the agent <-> aggregator protocol (proto/pullwatch/v1) and the CRI subset the
//! agent calls (proto/cri, package runtime.v1) with tonic-prost.
//! protoc comes from the protoc-bin-vendored crate, so no system protoc is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };

    let agent = PathBuf::from("proto/pullwatch/v1/agent.proto");
    let cri = PathBuf::from("proto/cri/api.proto");
    for proto in [&agent, &cri] {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    // Messages carrying registry secrets get a hand-written, redacting `Debug`
    // (src/redact.rs), so no `{:?}` of them can print a password or token.
    let redacted = [".pullwatch.v1.PullCredential", ".runtime.v1.AuthConfig"];
    let includes = [PathBuf::from("proto")];
    tonic_prost_build::configure()
        .skip_debug(redacted)
        // One long-lived stream per node: small buffers (src/codec.rs).
        .codec_path("crate::codec::AgentProtocolCodec")
        .build_client(true)
        .build_server(true)
        .compile_protos(&[agent], &includes)?;
    tonic_prost_build::configure()
        .skip_debug(redacted)
        .build_client(true)
        .build_server(true)
        .compile_protos(&[cri], &includes)?;
    Ok(())
}
