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
{{- printf "http://%s.%s.svc:%d" (include "shoal.trackerName" .) .Release.Namespace (int .Values.tracker.port) }}
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
  http: {{ printf "http://%s:%d" $host (int $.Values.origin.httpPort) | quote }}
  peer: {{ printf "%s:%d" $host (int $.Values.origin.peerPort) | quote }}
{{- end }}
{{- end }}

{{/* Prometheus scrape annotations for a pod serving /metrics on `port`. */}}
{{- define "shoal.scrapeAnnotations" -}}
{{- if .ctx.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* Liveness and readiness probes on the HTTP port named "http". */}}
{{- define "shoal.probes" -}}
startupProbe:
  httpGet: { path: /health, port: http }
  periodSeconds: 2
  failureThreshold: 30
livenessProbe:
  httpGet: { path: /health, port: http }
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet: { path: /ready, port: http }
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end }}
