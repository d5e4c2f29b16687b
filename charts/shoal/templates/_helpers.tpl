{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "shoal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects. It is kept to 40 characters so that
"<fullname>-origin-<i>" stays a valid Service name and the StatefulSet's pod label
(controller-revision-hash) fits.
*/}}
{{- define "shoal.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "shoal.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "shoal.labels" -}}
helm.sh/chart: {{ include "shoal.chart" . }}
app.kubernetes.io/name: {{ include "shoal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: call with (dict "ctx" $ "component" "agent"). */}}
{{- define "shoal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shoal.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "shoal.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "shoal.trackerName" -}}
{{- printf "%s-tracker" (include "shoal.fullname" .) }}
{{- end }}

{{- define "shoal.originName" -}}
{{- printf "%s-origin" (include "shoal.fullname" .) }}
{{- end }}

{{- define "shoal.agentName" -}}
{{- printf "%s-agent" (include "shoal.fullname" .) }}
{{- end }}

{{/* The tracker's URL, as agents and origins announce to it. */}}
{{- define "shoal.trackerUrl" -}}
{{- printf "%s://%s.%s.svc:%d" (include "shoal.scheme" .) (include "shoal.trackerName" .) .Release.Namespace (int .Values.tracker.port) }}
{{- end }}

{{/*
The origins list, the same in the tracker's, every origin's and every agent's config. Each
origin is named by its own ClusterIP Service ("<fullname>-origin-<i>"), whose address stays
when the pod is rescheduled; the binaries resolve the peer names once at startup.
*/}}
{{- define "shoal.origins" -}}
{{- $name := include "shoal.originName" . }}
{{- range $i := until (int .Values.origin.replicas) }}
{{- $host := printf "%s-%d.%s.svc" $name $i $.Release.Namespace }}
- id: {{ printf "%s-%d" $name $i }}
  http: {{ printf "%s://%s:%d" (include "shoal.scheme" $) $host (int $.Values.origin.httpPort) | quote }}
  peer: {{ printf "%s:%d" $host (int $.Values.origin.peerPort) | quote }}
{{- end }}
{{- end }}

{{/* Prometheus scrape annotations for a pod serving /metrics on `port` (over TLS with `https`). */}}
{{- define "shoal.scrapeAnnotations" -}}
{{- if .ctx.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- if .https }}
prometheus.io/scheme: https
{{- end }}
{{- end }}
{{- end }}

{{/*
Liveness and readiness probes on a named port: call with (dict "port" "http" "https" true).
Over TLS the kubelet presents no certificate: tls.httpClientAuth "optional" lets it in.
*/}}
{{- define "shoal.probes" -}}
{{- $get := printf "{ path: %%s, port: %s%s }" .port (ternary ", scheme: HTTPS" "" (eq .https true)) }}
startupProbe:
  httpGet: {{ printf $get "/health" }}
  periodSeconds: 2
  failureThreshold: 30
livenessProbe:
  httpGet: {{ printf $get "/health" }}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet: {{ printf $get "/ready" }}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end }}

{{/*
"host:port" for a listener on `host` (an IPv4 or IPv6 address): call with
(dict "host" "::" "port" 7700). IPv6 addresses get their brackets.
*/}}
{{- define "shoal.hostPort" -}}
{{- if contains ":" .host }}{{ printf "[%s]:%d" .host (int .port) }}{{ else }}{{ printf "%s:%d" .host (int .port) }}{{ end }}
{{- end }}

{{/* The address every listener binds: listenAddress, validated. */}}
{{- define "shoal.listenAddress" -}}
{{- $a := .Values.listenAddress | trimPrefix "[" | trimSuffix "]" }}
{{- if not (has $a (list "0.0.0.0" "::")) }}
{{- fail (printf "listenAddress must be 0.0.0.0 or ::, not %q" .Values.listenAddress) }}
{{- end }}
{{- $a }}
{{- end }}

{{/*
A byte size as the binaries read it: an integer stays an integer (printed in full, not as the
float Helm parses it into), a string such as 64MiB is quoted.
*/}}
{{- define "shoal.bytes" -}}
{{- if or (kindIs "float64" .) (kindIs "int64" .) (kindIs "int" .) }}{{ int64 . }}{{ else }}{{ . | quote }}{{ end }}
{{- end }}

{{/*
A Kubernetes quantity of bytes (50Gi, 500G, 1.5Ti, an integer) as a whole number of bytes: a
volume's size turned into the store budget (`swarm.store.max_size`) of the binary using it.
*/}}
{{- define "shoal.quantityBytes" -}}
{{- if or (kindIs "float64" .) (kindIs "int64" .) (kindIs "int" .) }}
{{- int64 . }}
{{- else }}
{{- $q := toString . }}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $q }}
{{- $units := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "P" 1000000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "Pi" 1125899906842624 }}
{{- $unit := trimPrefix $num $q }}
{{- if or (not $num) (not (hasKey $units $unit)) }}
{{- fail (printf "%q cannot be a store budget: give bytes with one of k, M, G, T, P, Ki, Mi, Gi, Ti, Pi" $q) }}
{{- end }}
{{- if contains "." $num }}{{ mulf (float64 $num) (get $units $unit) | int64 }}{{ else }}{{ mul (int64 $num) (get $units $unit) }}{{ end }}
{{- end }}
{{- end }}

{{/*
A component's `swarm:` section (call with (dict "swarm" <values' swarm map> "size" <volume size>
"ctx" $)): the values' keys, with `store.max_size` set to the volume's size in bytes unless the
values give one. Rendered after the keys the chart sets itself.
*/}}
{{- define "shoal.swarmValues" -}}
{{- $swarm := deepCopy (.swarm | default dict) }}
{{- if .size }}
{{- $store := deepCopy (get $swarm "store" | default dict) }}
{{- if not (hasKey $store "max_size") }}
{{- $_ := set $store "max_size" (include "shoal.quantityBytes" .size | int64) }}
{{- end }}
{{- $_ := set $swarm "store" $store }}
{{- end }}
{{- with $swarm }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/*
The ServiceAccount name of a component: call with (dict "ctx" $ "component" "agent").
*/}}
{{- define "shoal.serviceAccountName" -}}
{{- $sa := (index .ctx.Values .component).serviceAccount }}
{{- if $sa.create }}
{{- default (printf "%s-%s" (include "shoal.fullname" .ctx) .component) $sa.name }}
{{- else }}
{{- required (printf "%s.serviceAccount.name is required with create false" .component) $sa.name }}
{{- end }}
{{- end }}

{{/* The ServiceAccount of a component, when the chart creates it. */}}
{{- define "shoal.serviceAccount" -}}
{{- $sa := (index .ctx.Values .component).serviceAccount }}
{{- if $sa.create }}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "shoal.serviceAccountName" . }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "shoal.labels" .ctx | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
  {{- with $sa.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
# The pods mount no API token (automountServiceAccountToken: false); identity webhooks (IRSA,
# EKS Pod Identity) project their own.
automountServiceAccountToken: false
---
{{- end }}
{{- end }}

{{/*
A checksum of the Secrets a pod reads, as the cluster holds them at install or upgrade time
(`lookup`; empty under `helm template`): call with (dict "ctx" $ "names" (list ...)). A changed
Secret rolls the pods on the next `helm upgrade`, as a changed config does.
*/}}
{{- define "shoal.secretsChecksum" -}}
{{- $data := list }}
{{- range $name := .names | uniq | sortAlpha }}
{{- $s := lookup "v1" "Secret" $.ctx.Release.Namespace $name }}
{{- $data = append $data (printf "%s=%s" $name (toJson (default dict $s.data))) }}
{{- end }}
{{- join "\n" $data | sha256sum | trunc 16 }}
{{- end }}

{{/*
The auth Secret's name (auth.existingSecret, else the one the chart makes).
*/}}
{{- define "shoal.authSecret" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "shoal.fullname" .)) }}
{{- end }}

{{/* Where every pod mounts the auth tokens. */}}
{{- define "shoal.authFile" -}}
/var/run/shoal/auth/tokens
{{- end }}

{{/* The auth volume of a pod, when auth is on. */}}
{{- define "shoal.authVolume" -}}
{{- if .Values.auth.enabled }}
- name: auth
  secret:
    secretName: {{ include "shoal.authSecret" . }}
    # Readable by the unprivileged user whatever the pod's fsGroup.
    defaultMode: 0444
    items:
      - key: {{ .Values.auth.key }}
        path: tokens
{{- end }}
{{- end }}

{{/* The auth mount of a container, when auth is on. */}}
{{- define "shoal.authMount" -}}
{{- if .Values.auth.enabled }}
- name: auth
  mountPath: /var/run/shoal/auth
  readOnly: true
{{- end }}
{{- end }}

{{/* "https" with tls.enabled, else "http": the scheme of the origins' and tracker's URLs. */}}
{{- define "shoal.scheme" -}}
{{- if .Values.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{/* The Secret holding a component's certificate: call with (dict "ctx" $ "component" "origin"). */}}
{{- define "shoal.tlsSecret" -}}
{{- if eq .ctx.Values.tls.source "secret" }}
{{- required (printf "tls.secrets.%s is required with tls.source secret" .component) (index .ctx.Values.tls.secrets .component) }}
{{- else }}
{{- printf "%s-%s-tls" (include "shoal.fullname" .ctx) .component }}
{{- end }}
{{- end }}

{{/* A config's `tls:` section, with the files where shoal.tlsVolume mounts them. */}}
{{- define "shoal.tlsConfig" -}}
{{- if .Values.tls.enabled }}
tls:
  ca_file: /var/run/shoal/tls/ca.crt
  cert_file: /var/run/shoal/tls/tls.crt
  key_file: /var/run/shoal/tls/tls.key
  http_client_auth: {{ .Values.tls.httpClientAuth }}
  reload_interval: {{ .Values.tls.reloadInterval | quote }}
{{- end }}
{{- end }}

{{/* The certificate's mount (no subPath, so the kubelet's updates of a rotated Secret show). */}}
{{- define "shoal.tlsMount" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /var/run/shoal/tls
  readOnly: true
{{- end }}
{{- end }}

{{/* The certificate's volume: call with (dict "ctx" $ "component" "origin"). */}}
{{- define "shoal.tlsVolume" -}}
{{- if .ctx.Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "shoal.tlsSecret" . }}
    items:
      - { key: ca.crt, path: ca.crt }
      - { key: tls.crt, path: tls.crt }
      - { key: tls.key, path: tls.key }
{{- end }}
{{- end }}
