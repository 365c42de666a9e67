{{/*
Chart name, overridable with nameOverride.
*/}}
{{- define "hyperbytedb-proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: release name + chart name (63 characters at most),
or just the release name when it already contains the chart name.
*/}}
{{- define "hyperbytedb-proxy.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "hyperbytedb-proxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select this release's pods. Never change them: a Deployment's
selector is immutable.
*/}}
{{- define "hyperbytedb-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hyperbytedb-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Common labels of every object.
*/}}
{{- define "hyperbytedb-proxy.labels" -}}
helm.sh/chart: {{ include "hyperbytedb-proxy.chart" . }}
{{ include "hyperbytedb-proxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: proxy
app.kubernetes.io/part-of: hyperbytedb
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Name of the ServiceAccount the pods run as.
*/}}
{{- define "hyperbytedb-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hyperbytedb-proxy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Container image reference: repository:tag or repository@digest.
*/}}
{{- define "hyperbytedb-proxy.image" -}}
{{- $repo := required "image.repository is required" .Values.image.repository }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/*
A number as the proxy expects it in its environment: whole numbers without a
fraction or exponent (values files give Helm float64s, which would print as
1e+06), fractions as they are. Accepts numeric strings (from --set) too.
*/}}
{{- define "hyperbytedb-proxy.number" -}}
{{- $f := float64 . }}
{{- if eq $f (float64 (int64 $f)) }}
{{- int64 $f }}
{{- else }}
{{- $f }}
{{- end }}
{{- end }}

{{/*
HYPERBYTEDB_PROXY_LISTEN from server.host and server.port; IPv6 hosts are
bracketed ("[::]:8086").
*/}}
{{- define "hyperbytedb-proxy.listen" -}}
{{- $host := .Values.server.host | toString | trimPrefix "[" | trimSuffix "]" }}
{{- if contains ":" $host }}
{{- printf "[%s]:%d" $host (int .Values.server.port) }}
{{- else }}
{{- printf "%s:%d" $host (int .Values.server.port) }}
{{- end }}
{{- end }}

{{/*
HYPERBYTEDB_PROXY_ADMIN_LISTEN: server.host and server.adminPort, or "" (no
admin listener) when adminPort is 0.
*/}}
{{- define "hyperbytedb-proxy.adminListen" -}}
{{- if gt (int .Values.server.adminPort) 0 }}
{{- $host := .Values.server.host | toString | trimPrefix "[" | trimSuffix "]" }}
{{- if contains ":" $host }}
{{- printf "[%s]:%d" $host (int .Values.server.adminPort) }}
{{- else }}
{{- printf "%s:%d" $host (int .Values.server.adminPort) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The named port serving /healthz, /readyz and /metrics: "admin" or "http".
*/}}
{{- define "hyperbytedb-proxy.adminPortName" -}}
{{- if gt (int .Values.server.adminPort) 0 }}admin{{ else }}http{{ end }}
{{- end }}

{{/*
Is the proxy served by gunicorn with several workers?
Renders "true" or "" (usable in `if`).
*/}}
{{- define "hyperbytedb-proxy.multiWorker" -}}
{{- if gt (int .Values.server.workers) 1 }}true{{ end }}
{{- end }}

{{/*
Secret holding the admin token: the existing one, or the one the chart
creates. Empty when no token is configured.
*/}}
{{- define "hyperbytedb-proxy.adminSecretName" -}}
{{- if .Values.admin.existingSecret }}
{{- .Values.admin.existingSecret }}
{{- else if .Values.admin.token }}
{{- printf "%s-admin" (include "hyperbytedb-proxy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "hyperbytedb-proxy.adminSecretKey" -}}
{{- if .Values.admin.existingSecret }}
{{- required "admin.existingSecretKey is required with admin.existingSecret" .Values.admin.existingSecretKey }}
{{- else }}admin-token{{ end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the preStop sleep, then the proxy's own drain,
then a margin for the process to exit, unless set explicitly (and then it must
still cover preStop + drain).
*/}}
{{- define "hyperbytedb-proxy.terminationGracePeriodSeconds" -}}
{{- $preStop := int .Values.shutdown.preStopSleepSecs }}
{{- $grace := int (ceil (float64 .Values.shutdown.graceSecs)) }}
{{- $needed := add $preStop $grace }}
{{- if kindIs "invalid" .Values.shutdown.terminationGracePeriodSeconds }}
{{- add $needed (int .Values.shutdown.terminationMarginSecs) }}
{{- else }}
{{- $set := int .Values.shutdown.terminationGracePeriodSeconds }}
{{- if le $set $needed }}
{{- fail (printf "shutdown.terminationGracePeriodSeconds=%d must be larger than shutdown.preStopSleepSecs + shutdown.graceSecs (%d)" $set $needed) }}
{{- end }}
{{- $set }}
{{- end }}
{{- end }}

{{/*
Replicas the release wants at least (for the PDB decision).
*/}}
{{- define "hyperbytedb-proxy.minReplicas" -}}
{{- if .Values.autoscaling.enabled }}
{{- int .Values.autoscaling.minReplicas }}
{{- else }}
{{- int .Values.replicaCount }}
{{- end }}
{{- end }}

{{/*
PromQL label matchers of this release's series (see
metrics.prometheusRule.selector).
*/}}
{{- define "hyperbytedb-proxy.promSelector" -}}
{{- if .Values.metrics.prometheusRule.selector }}
{{- .Values.metrics.prometheusRule.selector }}
{{- else }}
{{- printf "namespace=%q,job=%q" .Release.Namespace (include "hyperbytedb-proxy.fullname" .) }}
{{- end }}
{{- end }}

{{/*
"true" when the chart creates the peers' headless Service: sharing is on and
more than one replica can run (replicaCount > 1 or the HPA).
*/}}
{{- define "hyperbytedb-proxy.peerServiceCreated" -}}
{{- if and .Values.peers.enabled (not .Values.peers.service) (or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1)) }}true{{ end }}
{{- end }}

{{/*
HYPERBYTEDB_PROXY_PEER_SERVICE: the configured name, else the chart's headless
Service when it is created, else empty (off).
*/}}
{{- define "hyperbytedb-proxy.peerService" -}}
{{- if and .Values.peers.enabled .Values.peers.service }}
{{- .Values.peers.service }}
{{- else if include "hyperbytedb-proxy.peerServiceCreated" . }}
{{- printf "%s-peers.%s.svc" (include "hyperbytedb-proxy.fullname" .) .Release.Namespace }}
{{- end }}
{{- end }}
