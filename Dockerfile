# syntax=docker/dockerfile:1
#
# pullwatch: one image carrying both binaries.
#   /usr/local/bin/pullwatch-aggregator   (the Deployment; the image's entrypoint)
#   /usr/local/bin/pullwatch-agent        (the DaemonSet; the chart sets `command:`)
#
#   docker build -t pullwatch:dev .
#   docker run --rm pullwatch:dev --help
#   docker run --rm --entrypoint /usr/local/bin/pullwatch-agent pullwatch:dev --help
#
# The runtime image runs as the distroless `nonroot` user (65532). The agent needs to open
# the node's CRI socket (root-owned, mode 0660), so the chart runs the agent container as
# UID 0 with every capability dropped, no privilege escalation and a read-only root
# filesystem; the aggregator stays non-root.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# protoc comes from the protoc-bin-vendored crate and TLS from rustls/ring, so the stock
# rust image has everything needed (gcc for ring, gcc and make for jemalloc); no apt-get.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin pullwatch-aggregator --bin pullwatch-agent \
 && mkdir -p /out \
 && cp target/release/pullwatch-aggregator target/release/pullwatch-agent /out/ \
 && /out/pullwatch-aggregator --version

# distroless/cc: glibc, libgcc, CA certificates and tzdata from Debian 12, no shell, no
# package manager; the same Debian release as the builder, so the glibc matches.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="pullwatch" \
      org.opencontainers.image.description="Tells you, before a pod restart does, that an image can no longer be pulled" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=builder /out/pullwatch-aggregator /out/pullwatch-agent /usr/local/bin/
USER 65532:65532
# Aggregator: /metrics, /healthz, /readyz. Agent gRPC listener and agent metrics are set by
# flags (--agent-listen, --metrics-address); the chart uses 8443 and 9102.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/pullwatch-aggregator"]
CMD ["serve"]
