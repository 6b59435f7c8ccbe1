{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "pullwatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: fullnameOverride, else the release name (plus the chart name
unless the release name already contains it). Leaves room for "-aggregator". */}}
{{- define "pullwatch.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pullwatch.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "pullwatch.labels" -}}
helm.sh/chart: {{ include "pullwatch.chart" . }}
app.kubernetes.io/name: {{ include "pullwatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pullwatch
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: include "pullwatch.selectorLabels" (list . "aggregator") */}}
{{- define "pullwatch.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "pullwatch.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* All labels of one component. */}}
{{- define "pullwatch.componentLabels" -}}
{{ include "pullwatch.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "pullwatch.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "pullwatch.aggregatorName" -}}
{{- printf "%s-aggregator" (include "pullwatch.fullname" .) }}
{{- end }}

{{- define "pullwatch.agentName" -}}
{{- printf "%s-agent" (include "pullwatch.fullname" .) }}
{{- end }}

{{- /* Created or not, never the namespace's "default" account: the ClusterRole would go
to every pod of the namespace that names none, and any such pod's token would pass for
an agent's. */}}
{{- define "pullwatch.aggregatorServiceAccountName" -}}
{{- default (include "pullwatch.aggregatorName" .) .Values.serviceAccount.aggregator.name }}
{{- end }}

{{- define "pullwatch.agentServiceAccountName" -}}
{{- default (include "pullwatch.agentName" .) .Values.serviceAccount.agent.name }}
{{- end }}

{{/* The Secret with tls.crt, tls.key and ca.crt for the agent port. */}}
{{- define "pullwatch.tlsSecretName" -}}
{{- default (printf "%s-agent-tls" (include "pullwatch.fullname" .)) .Values.agent.tls.secretName }}
{{- end }}

{{/* The ConfigMap with the generated CA certificate (agents get the CA, never the key). */}}
{{- define "pullwatch.caConfigMapName" -}}
{{- printf "%s-agent-ca" (include "pullwatch.fullname" .) }}
{{- end }}

{{/* The aggregator Service's in-cluster DNS name. */}}
{{- define "pullwatch.serviceHost" -}}
{{- printf "%s.%s.svc" (include "pullwatch.fullname" .) .Release.Namespace }}
{{- end }}

{{/* Host path of the CRI socket: criSocketPath, else the runtime preset. */}}
{{- define "pullwatch.criSocketPath" -}}
{{- $presets := dict "containerd" "/run/containerd/containerd.sock" "k3s" "/run/k3s/containerd/containerd.sock" "crio" "/var/run/crio/crio.sock" }}
{{- if .Values.agent.criSocketPath }}
{{- .Values.agent.criSocketPath }}
{{- else if hasKey $presets .Values.agent.runtime }}
{{- get $presets .Values.agent.runtime }}
{{- else }}
{{- fail "agent.runtime=custom needs agent.criSocketPath (host path of the CRI socket)" }}
{{- end }}
{{- end }}

{{/* Host path of containerd's hosts.toml directory, or "" when not mounted. */}}
{{- define "pullwatch.containerdHostsDir" -}}
{{- $presets := dict "containerd" "/etc/containerd/certs.d" "k3s" "/var/lib/rancher/k3s/agent/etc/containerd/certs.d" "crio" "" "custom" "/etc/containerd/certs.d" }}
{{- if .Values.agent.mountContainerdHostsDir }}
{{- default (get $presets .Values.agent.runtime) .Values.agent.containerdHostsDir }}
{{- end }}
{{- end }}

{{/* The restricted container securityContext (Pod Security Standard "restricted"). */}}
{{- define "pullwatch.restrictedContainerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Host path of containerd's config.toml, or "" when not mounted. */}}
{{- define "pullwatch.containerdConfig" -}}
{{- $presets := dict "containerd" "/etc/containerd/config.toml" "k3s" "/var/lib/rancher/k3s/agent/etc/containerd/config.toml" "crio" "" "custom" "/etc/containerd/config.toml" }}
{{- if .Values.agent.mountContainerdConfig }}
{{- default (get $presets .Values.agent.runtime) .Values.agent.containerdConfig }}
{{- end }}
{{- end }}

{{/* The Secret with the agents' shared token (agent.auth.mode=sharedToken). */}}
{{- define "pullwatch.sharedTokenSecretName" -}}
{{- default (printf "%s-agent-token" (include "pullwatch.fullname" .)) .Values.agent.auth.sharedTokenSecret }}
{{- end }}

{{/* Whether agents authenticate with TokenReview. */}}
{{- define "pullwatch.tokenReview" -}}
{{- if and .Values.agent.enabled (eq .Values.agent.auth.mode "tokenReview") }}true{{- end }}
{{- end }}

{{/*
The kubelet's credential-provider paths the agent uses, as YAML (config, binDir, files):
a platform preset's (paths as its node image sets them; see values.yaml for the sources),
or agent.credentialProvider's own with preset=custom (empty config: none).
*/}}
{{- define "pullwatch.credentialProvider" -}}
{{- $cp := .Values.agent.credentialProvider -}}
{{- $preset := $cp.preset | default "custom" -}}
{{- if eq $preset "eks" -}}
config: /etc/eks/image-credential-provider/config.json
binDir: /etc/eks/image-credential-provider
files: []
{{- else if eq $preset "gke" -}}
config: /etc/srv/kubernetes/cri_auth_config.yaml
binDir: /home/kubernetes/bin
files: []
{{- else if eq $preset "aks" -}}
config: /var/lib/kubelet/credential-provider-config.yaml
binDir: /var/lib/kubelet/credential-provider
files: [/etc/kubernetes/azure.json]
{{- else if eq $preset "custom" -}}
config: {{ $cp.config | default "" | quote }}
binDir: {{ $cp.binDir | default "" | quote }}
files: {{ $cp.extraFiles | default list | toJson }}
{{- else -}}
config: ""
binDir: ""
files: []
{{- end -}}
{{- end }}
