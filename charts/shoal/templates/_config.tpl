{{/*
The three configs, rendered from typed values. Keys are the binaries' own (see README.md);
the binaries reject unknown keys and check the rest before binding a port.
*/}}

{{- define "shoal.trackerConfig" -}}
{{- $t := .Values.tracker -}}
listen: "0.0.0.0:{{ $t.port }}"
peer_ttl: {{ $t.peerTtl | quote }}
announce_interval: {{ $t.announceInterval | quote }}
max_peers: {{ $t.maxPeers }}
origin_replicas: {{ .Values.origin.ringReplicas }}
shutdown_grace: "{{ $t.shutdownGraceSeconds }}s"
origins:
  {{- include "shoal.origins" . | trim | nindent 2 }}
{{- end }}

{{/*
One origin's config: call with (dict "ctx" $ "index" i). Only `id` differs between origins.
*/}}
{{- define "shoal.originConfig" -}}
{{- $o := .ctx.Values.origin -}}
{{- $name := include "shoal.originName" .ctx -}}
listen: "0.0.0.0:{{ $o.httpPort }}"
peer_listen: "0.0.0.0:{{ $o.peerPort }}"
id: {{ printf "%s-%d" $name (int .index) }}
origins:
  {{- include "shoal.origins" .ctx | trim | nindent 2 }}
origin_replicas: {{ $o.ringReplicas }}
backend:
{{- if eq $o.backend.type "s3" }}
{{- $s3 := $o.backend.s3 }}
  type: s3
  bucket: {{ required "origin.backend.s3.bucket is required with backend type s3" $s3.bucket | quote }}
  layout: {{ $s3.layout }}
  prefix: {{ $s3.prefix | quote }}
  region: {{ $s3.region | quote }}
  {{- with $s3.endpointUrl }}
  endpoint_url: {{ . | quote }}
  {{- end }}
  {{- if not (kindIs "invalid" $s3.forcePathStyle) }}
  force_path_style: {{ $s3.forcePathStyle }}
  {{- end }}
  multipart_threshold: {{ $s3.multipartThreshold | quote }}
  part_size: {{ $s3.partSize | quote }}
{{- else if eq $o.backend.type "fs" }}
  type: fs
  root: /var/lib/shoal/backend
  layout: {{ $o.backend.fs.layout }}
  prefix: {{ $o.backend.fs.prefix | quote }}
{{- else }}
{{- fail (printf "origin.backend.type must be s3 or fs, not %q" $o.backend.type) }}
{{- end }}
max_concurrent_fetches: {{ $o.maxConcurrentFetches }}
metainfo_wait: {{ $o.metainfoWait | quote }}
failure_ttl: {{ $o.failureTtl | quote }}
max_upload: {{ $o.maxUpload | quote }}
preheat_concurrency: {{ $o.preheatConcurrency }}
shutdown_grace: "{{ $o.shutdownGraceSeconds }}s"
{{- with $o.pullThrough }}
{{- if .enabled }}
pull_through:
  {{- with .defaultUpstream }}
  default_upstream: {{ . | quote }}
  {{- end }}
  tag_ttl: {{ .tagTtl | quote }}
  connect_timeout: {{ .connectTimeout | quote }}
  read_timeout: {{ .readTimeout | quote }}
  upstreams:
  {{- range $i, $u := .upstreams }}
    - host: {{ $u.host | quote }}
      url: {{ $u.url | quote }}
      write_back: {{ $u.writeBack | default false }}
      {{- with $u.username }}
      username: {{ . | quote }}
      {{- end }}
      {{- if and $u.passwordSecret $u.passwordSecret.name }}
      password_file: /var/run/shoal/upstream-{{ $i }}/password
      {{- end }}
  {{- else }}
    []
  {{- end }}
{{- end }}
{{- end }}
swarm:
  store_dir: /var/lib/shoal/store
  trackers: [{{ include "shoal.trackerUrl" .ctx | quote }}]
  {{- with $o.swarm }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{- define "shoal.agentConfig" -}}
{{- $a := .Values.agent -}}
listen: "0.0.0.0:{{ $a.port }}"
peer_listen: "0.0.0.0:{{ $a.peerPort }}"
origins:
  {{- include "shoal.origins" . | trim | nindent 2 }}
origin_replicas: {{ .Values.origin.ringReplicas }}
origin_fetch_timeout: {{ $a.originFetchTimeout | quote }}
tag_ttl: {{ $a.tagTtl | quote }}
shutdown_grace: "{{ $a.shutdownGraceSeconds }}s"
swarm:
  store_dir: /var/lib/shoal/store
  trackers: [{{ include "shoal.trackerUrl" . | quote }}]
  # No advertise_addr: the DaemonSet sets SHOAL_AGENT_ADVERTISE_IP to the node's IP, and the
  # port is peer_listen's.
  {{- with $a.swarm }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
