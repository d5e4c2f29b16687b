{{/*
The three configs, rendered from typed values. Keys are the binaries' own (see README.md);
the binaries reject unknown keys and check the rest before binding a port.
*/}}

{{- define "shoal.trackerConfig" -}}
{{- $t := .Values.tracker -}}
{{- if and (not .Values.agent.hostNetwork) (not $t.trustedNetworks) }}
{{- fail "tracker.trustedNetworks is required with agent.hostNetwork false: agents announce the node's address from their pod's" }}
{{- end }}
{{- $any := include "shoal.listenAddress" . -}}
listen: {{ include "shoal.hostPort" (dict "host" $any "port" $t.port) | quote }}
peer_ttl: {{ $t.peerTtl | quote }}
announce_interval: {{ $t.announceInterval | quote }}
max_peers: {{ $t.maxPeers }}
origin_replicas: {{ .Values.origin.ringReplicas }}
shutdown_grace: "{{ $t.shutdownGraceSeconds }}s"
trusted_networks: {{ $t.trustedNetworks | toJson }}
{{- if .Values.auth.enabled }}
auth:
  tokens_file: {{ include "shoal.authFile" . }}
{{- end }}
origins:
  {{- include "shoal.origins" . | trim | nindent 2 }}
{{- include "shoal.tlsConfig" . }}
{{- end }}

{{/*
One origin's config: call with (dict "ctx" $ "index" i). Only `id` differs between origins.
*/}}
{{- define "shoal.originConfig" -}}
{{- $o := .ctx.Values.origin -}}
{{- $name := include "shoal.originName" .ctx -}}
{{- $any := include "shoal.listenAddress" .ctx -}}
listen: {{ include "shoal.hostPort" (dict "host" $any "port" $o.httpPort) | quote }}
peer_listen: {{ include "shoal.hostPort" (dict "host" $any "port" $o.peerPort) | quote }}
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
  {{- if $s3.caBundle.configMap }}
  ca_file: /var/run/shoal/s3-ca/ca.pem
  {{- end }}
  {{- if not (kindIs "invalid" $s3.forcePathStyle) }}
  force_path_style: {{ $s3.forcePathStyle }}
  {{- end }}
  multipart_threshold: {{ include "shoal.bytes" $s3.multipartThreshold }}
  part_size: {{ include "shoal.bytes" $s3.partSize }}
  read_timeout: {{ $s3.readTimeout | quote }}
{{- else if eq $o.backend.type "fs" }}
  type: fs
  root: /var/lib/shoal/backend
  layout: {{ $o.backend.fs.layout }}
  prefix: {{ $o.backend.fs.prefix | quote }}
{{- else }}
{{- fail (printf "origin.backend.type must be s3 or fs, not %q" $o.backend.type) }}
{{- end }}
max_concurrent_fetches: {{ $o.maxConcurrentFetches }}
fetch_timeout: {{ $o.fetchTimeout | quote }}
metainfo_wait: {{ $o.metainfoWait | quote }}
failure_ttl: {{ $o.failureTtl | quote }}
max_upload: {{ include "shoal.bytes" $o.maxUpload }}
max_uploads: {{ $o.maxUploads }}
preheat_concurrency: {{ $o.preheatConcurrency }}
max_preheats: {{ $o.maxPreheats }}
shutdown_grace: "{{ $o.shutdownGraceSeconds }}s"
{{- if .ctx.Values.auth.enabled }}
auth:
  tokens_file: {{ include "shoal.authFile" .ctx }}
{{- end }}
{{- with $o.pullThrough }}
{{- if .enabled }}
pull_through:
  {{- with .defaultUpstream }}
  default_upstream: {{ . | quote }}
  {{- end }}
  tag_ttl: {{ .tagTtl | quote }}
  connect_timeout: {{ .connectTimeout | quote }}
  read_timeout: {{ .readTimeout | quote }}
  request_timeout: {{ .requestTimeout | quote }}
  {{- if .dockerConfigSecret }}
  docker_config_file: /var/run/shoal/dockerconfig/config.json
  {{- end }}
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
      {{- if and $u.caBundle $u.caBundle.configMap }}
      ca_file: /var/run/shoal/upstream-{{ $i }}-ca/ca.pem
      {{- end }}
      {{- if $u.clientCertSecret }}
      client_cert_file: /var/run/shoal/upstream-{{ $i }}-client/tls.crt
      client_key_file: /var/run/shoal/upstream-{{ $i }}-client/tls.key
      {{- end }}
      {{- with $u.repositories }}
      repositories: {{ . | toJson }}
      {{- end }}
      {{- with $u.authHosts }}
      auth_hosts: {{ . | toJson }}
      {{- end }}
      {{- if $u.plainHttpCredentials }}
      plain_http_credentials: true
      {{- end }}
  {{- else }}
    []
  {{- end }}
{{- end }}
{{- end }}
{{- include "shoal.tlsConfig" .ctx }}
swarm:
  store_dir: /var/lib/shoal/store
  trackers: [{{ include "shoal.trackerUrl" .ctx | quote }}]
  {{- if .ctx.Values.auth.enabled }}
  # The tracker trusts this token to announce the origin's Service address.
  tracker_token_file: {{ include "shoal.authFile" .ctx }}
  {{- end }}
  {{- /* The volume's size is the store's budget unless the fs backend lives on it too. */}}
  {{- $size := ternary $o.persistence.size "" (or (eq $o.backend.type "s3") (not (empty $o.backend.fs.volume))) }}
  {{- with include "shoal.swarmValues" (dict "swarm" $o.swarm "size" $size) }}
  {{- . | nindent 2 }}
  {{- end }}
{{- end }}

{{- define "shoal.agentConfig" -}}
{{- $a := .Values.agent -}}
{{- $any := include "shoal.listenAddress" . -}}
listen: {{ include "shoal.hostPort" (dict "host" (include "shoal.agentApiAddress" .) "port" $a.port) | quote }}
metrics_listen: {{ include "shoal.hostPort" (dict "host" $any "port" $a.metricsPort) | quote }}
peer_listen: {{ include "shoal.hostPort" (dict "host" $any "port" $a.peerPort) | quote }}
origins:
  {{- include "shoal.origins" . | trim | nindent 2 }}
origin_replicas: {{ .Values.origin.ringReplicas }}
origin_fetch_timeout: {{ $a.originFetchTimeout | quote }}
tag_ttl: {{ $a.tagTtl | quote }}
max_prefetches: {{ $a.maxPrefetches }}
shutdown_grace: "{{ $a.shutdownGraceSeconds }}s"
{{- if and (not $a.hostNetwork) (not $a.apiNetworks) }}
{{- fail "agent.apiNetworks is required with agent.hostNetwork false: the runtime reaches the agent's API through the hostPort from the node's address" }}
{{- end }}
api_networks: {{ concat (list "127.0.0.0/8" "::1") $a.apiNetworks | toJson }}
{{- if .Values.auth.enabled }}
auth:
  tokens_file: {{ include "shoal.authFile" . }}
{{- end }}
{{- include "shoal.tlsConfig" . }}
swarm:
  store_dir: /var/lib/shoal/store
  trackers: [{{ include "shoal.trackerUrl" . | quote }}]
  # No advertise_addr: the DaemonSet sets SHOAL_AGENT_ADVERTISE_IP to the node's IP, and the
  # port is peer_listen's. The store's budget is agent.store.size.
  {{- with include "shoal.swarmValues" (dict "swarm" $a.swarm "size" $a.store.size) }}
  {{- . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* The address the agent's registry API binds (agent.apiAddress; see values.yaml). */}}
{{- define "shoal.agentApiAddress" -}}
{{- if .Values.agent.apiAddress }}
{{- .Values.agent.apiAddress | trimPrefix "[" | trimSuffix "]" }}
{{- else if .Values.agent.hostNetwork }}
{{- "127.0.0.1" }}
{{- else }}
{{- include "shoal.listenAddress" . }}
{{- end }}
{{- end }}
