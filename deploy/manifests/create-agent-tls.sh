#!/bin/sh
# Prints the TLS Secret that deploy/manifests/pullwatch.yaml expects for the agent <-> aggregator
# connection: a fresh CA (its key is discarded) and a serving certificate for the aggregator
# Service, in a kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt.
#
#   deploy/manifests/create-agent-tls.sh | kubectl apply -f -
#
# Arguments (all optional): NAMESPACE (pullwatch) SERVICE (pullwatch) CLUSTER_DOMAIN (cluster.local).
# DAYS in the environment sets the validity (3650). Needs openssl 1.1.1 or later.
# The Helm chart generates the same Secret itself (agent.tls.mode=generate); the plain
# manifests cannot, since a key committed to the repository would be everyone's key.
set -eu

ns=${1:-pullwatch}
svc=${2:-pullwatch}
domain=${3:-cluster.local}
days=${DAYS:-3650}

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT INT TERM

openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" \
  -keyout "$dir/ca.key" -out "$dir/ca.crt" -subj "/CN=${svc}-agent-ca" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

openssl req -newkey rsa:2048 -nodes -sha256 \
  -keyout "$dir/tls.key" -out "$dir/tls.csr" -subj "/CN=${svc}.${ns}.svc" 2>/dev/null

cat >"$dir/ext" <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:${svc},DNS:${svc}.${ns},DNS:${svc}.${ns}.svc,DNS:${svc}.${ns}.svc.${domain}
EXT

openssl x509 -req -sha256 -days "$days" -in "$dir/tls.csr" \
  -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
  -extfile "$dir/ext" -out "$dir/tls.crt" 2>/dev/null

b64() { base64 <"$1" | tr -d '\n'; }

cat <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: ${svc}-agent-tls
  namespace: ${ns}
  labels:
    app.kubernetes.io/name: pullwatch
    app.kubernetes.io/component: aggregator
type: kubernetes.io/tls
data:
  tls.crt: $(b64 "$dir/tls.crt")
  tls.key: $(b64 "$dir/tls.key")
  ca.crt: $(b64 "$dir/ca.crt")
YAML
