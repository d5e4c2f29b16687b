#!/usr/bin/env bash
# End-to-end test of the agent's Registry v2 API with real components, all started and stopped
# here, all on loopback:
#
#   scripts/e2e-registry.sh
#
# s3s-fs (an S3 server) holds a bucket that Debian's docker-registry writes with its
# filesystem driver (s3s-fs lacks ListMultipartUploads, so the registry's s3 driver cannot
# push to it; the filesystem layout is the same docker/distribution tree). One tracker, one
# origin (s3 backend, docker_registry layout, reading that bucket) and three agents on
# 127.0.77.x run from the debug binaries, with mutual TLS between them (a CA and a certificate
# per node made with openssl; the registry's notifications reach the origin over HTTPS too,
# trusting that CA). An OCI image (a 64 MiB random layer and a small one)
# and a linux/amd64 + linux/arm64 index are built by hand and pushed with skopeo; the
# registry's push notifications reach the origin, which must hold every pushed layer before
# anything pulls (preheat on push). The origin's preheat answers only an allowed certificate
# identity (checked with curl and the CA's certificates) or its token. Then:
# `shoal-agent configure` writes containerd's hosts.toml and a registries.conf drop-in;
# containerd (ctr), skopeo and podman pull through agent 1 and every digest is checked; the
# index pulls the right platform; three agents pull a second 64 MiB image at once and the
# origin's upload is compared with one copy per agent; a second origin with an empty bucket
# pulls through from the registry, and a fresh agent pulls again with the registry down and no
# new upstream request; with agent 1 down containerd falls back to the registry; with the registry and S3 down agent 1 still serves what it holds; bad
# requests get the spec's error codes. Pull times and origin bytes go to
# target/e2e-registry/summary.txt. Needs root (containerd, podman) and the packages that
# scripts/install-deps.sh installs. Exits non-zero on the first mismatch, with a FAIL line.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
OUT=$ROOT/target/e2e-registry
W=$OUT/run
SUMMARY=$OUT/summary.txt
# Bounds: seconds for a service to become ready, and for one pull.
START_TIMEOUT=${E2E_START_TIMEOUT:-30}
PULL_TIMEOUT=${E2E_PULL_TIMEOUT:-120}
BIG=$((64 * 1024 * 1024))
NET=127.0.77
TRACKER=$NET.1:7600
ORIGIN_HTTP=$NET.2:7800
ORIGIN_PEER=$NET.2:7801
AGENT_IPS=("$NET.11" "$NET.12" "$NET.13")
AGENT=("${AGENT_IPS[0]}:7700" "${AGENT_IPS[1]}:7700" "${AGENT_IPS[2]}:7700")
BUCKET=registry
NOTIFY_TOKEN=e2e-notify-token
NS=shoal-e2e

declare -A PIDS=()
SHORT_DIR=

log() { echo "==> $*"; }
fail() {
    echo "FAIL: $*" >&2
    exit 1
}
# fail_log LOG MESSAGE: fail, with the last lines of LOG in the output (CI keeps no files).
fail_log() {
    echo "--- last lines of $1:" >&2
    tail -15 "$1" >&2 || true
    fail "$2 (log: $1)"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

cleanup() {
    local rc=$?
    set +e
    local name
    for name in "${!PIDS[@]}"; do
        stop "$name"
    done
    [[ -d $W/s3 ]] && scripts/s3-server.sh stop "$W/s3" >/dev/null 2>&1
    [[ -n $SHORT_DIR ]] && rm -rf "$SHORT_DIR"
    if ((rc != 0)); then
        echo "e2e-registry: failed (exit $rc); logs are in $W/*.log" >&2
    elif [[ -z ${E2E_KEEP:-} ]]; then
        # About 2 GB of images, stores and buckets; E2E_KEEP=1 keeps them for a look.
        rm -rf "$W"
    fi
    exit "$rc"
}
trap cleanup EXIT

# stop NAME: SIGTERM the process started as NAME, SIGKILL after 10 s.
stop() {
    local name=$1 pid=${PIDS[$1]:-}
    [[ -n $pid ]] || return 0
    kill "$pid" 2>/dev/null || true
    local i
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "PIDS[$name]"
}

# start NAME CMD...: runs CMD in the background with its log in $W/NAME.log.
start() {
    local name=$1
    shift
    "$@" </dev/null >>"$W/$name.log" 2>&1 &
    PIDS[$name]=$!
}

# wait_http NAME URL: until URL answers 2xx, or FAIL after START_TIMEOUT.
wait_http() {
    local name=$1 url=$2 deadline=$((SECONDS + START_TIMEOUT))
    until curl -fsS --cacert "$W/tls/ca.crt" -o /dev/null --max-time 2 "$url" 2>/dev/null; do
        if [[ -n ${PIDS[$name]:-} ]] && ! kill -0 "${PIDS[$name]}" 2>/dev/null; then
            tail -20 "$W/$name.log" >&2
            fail "$name exited during startup (log above)"
        fi
        ((SECONDS < deadline)) || fail "$name did not answer $url within ${START_TIMEOUT}s"
        sleep 0.2
    done
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# metric URL NAME: the sum of a Prometheus counter's samples (0 if absent).
metric() {
    curl -fsS --cacert "$W/tls/ca.crt" --max-time 5 "$1/metrics" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%.0f", s }'
}

sha() { sha256sum "$1" | cut -c1-64; }

# tls_node NAME IP: a certificate for node NAME from the run's CA (URI SAN spiffe://shoal/e2e/NAME,
# and the node's IP for clients that check names, as the registry's notifications do), and the
# config's tls section naming it.
tls_node() {
    local name=$1 ip=$2 d=$W/tls
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
        -keyout "$d/$name.key" -out "$d/$name.csr" 2>/dev/null
    printf 'subjectAltName=URI:spiffe://shoal/e2e/%s,IP:%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$name" "$ip" >"$d/$name.ext"
    openssl x509 -req -in "$d/$name.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
        -extfile "$d/$name.ext" -out "$d/$name.crt" 2>/dev/null
    # Optional client certificates on the HTTP APIs: curl's probes and the registry's
    # notifications come without one; every node presents its own.
    printf 'tls:\n  ca_file: %s\n  cert_file: %s\n  key_file: %s\n  http_client_auth: optional\n  reload_interval: 1s\n' \
        "$d/ca.crt" "$d/$name.crt" "$d/$name.key"
}

# ---------------------------------------------------------------------------------------------
log "dependencies and binaries"
scripts/install-deps.sh
cargo build -q -p shoal-agent -p shoal-origin -p shoal-tracker
BIN=$ROOT/target/debug
for tool in docker-registry skopeo ctr containerd podman curl python3 gzip tar; do
    command -v "$tool" >/dev/null || fail "$tool is not installed (scripts/install-deps.sh)"
done
[[ $(id -u) -eq 0 ]] || fail "needs root (containerd and podman)"

T_START=$SECONDS
rm -rf "$W" "$W.s3s-fs.pid"
mkdir -p "$W"
: >"$SUMMARY.tmp"

REG_PORT=$(free_port)
S3_PORT=$(free_port)
REG=127.0.0.1:$REG_PORT

log "a CA for the nodes"
mkdir -p "$W/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=shoal e2e CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign \
    -keyout "$W/tls/ca.key" -out "$W/tls/ca.crt" 2>/dev/null

# ---------------------------------------------------------------------------------------------
log "S3 server and docker-registry"
scripts/s3-server.sh start "$W/s3" "$S3_PORT" "$BUCKET" >/dev/null
cat >"$W/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $W/s3/$BUCKET
  redirect:
    disable: true
  delete:
    enabled: true
http:
  addr: $REG
# Push notifications preheat what is pushed on the origin (queued until the origin is up).
notifications:
  endpoints:
    - name: shoal
      url: https://$ORIGIN_HTTP/notifications
      headers:
        Authorization: [Bearer $NOTIFY_TOKEN]
      timeout: 5s
      threshold: 3
      backoff: 1s
EOF
start registry env -u AWS_CA_BUNDLE SSL_CERT_FILE="$W/tls/ca.crt" docker-registry serve "$W/registry.yml"
wait_http registry "http://$REG/v2/"

# ---------------------------------------------------------------------------------------------
log "tracker, origin and three agents"
ORIGINS="origins:
  - { id: origin-0, http: \"https://$ORIGIN_HTTP\", peer: \"$ORIGIN_PEER\" }"
# Every node here connects to the tracker from 127.0.0.1, not from the 127.x address it
# announces: the tracker trusts loopback callers to announce any address.
cat >"$W/tracker.yaml" <<EOF
listen: $TRACKER
announce_interval: 1s
peer_ttl: 10s
trusted_networks: ["127.0.0.0/8"]
$ORIGINS
$(tls_node tracker "${TRACKER%:*}")
EOF
echo "$NOTIFY_TOKEN" >"$W/tokens"
cat >"$W/origin.yaml" <<EOF
listen: $ORIGIN_HTTP
peer_listen: $ORIGIN_PEER
id: origin-0
$ORIGINS
backend:
  type: s3
  bucket: $BUCKET
  layout: docker_registry
  endpoint_url: http://127.0.0.1:$S3_PORT
  region: us-east-1
  access_key_id: shoal
  secret_access_key: shoalsecret
auth:
  tokens_file: $W/tokens
  identities: ["spiffe://shoal/e2e/ops"]   # a client with this certificate needs no token
$(tls_node origin-0 "${ORIGIN_HTTP%:*}")
swarm:
  store_dir: $W/origin-store
  store: { min_free: 0 }   # no floor: the disk is shared with builds, whose fill is not the test's
  trackers: ["https://$TRACKER"]
EOF
write_agent_config() {
    local i=$1
    cat >"$W/agent$i.yaml" <<EOF
listen: ${AGENT[$i]}
peer_listen: ${AGENT_IPS[$i]}:7701
$ORIGINS
tag_ttl: 1s
$(tls_node "agent$i" "${AGENT_IPS[$i]}")
swarm:
  store_dir: $W/agent$i-store
  store: { min_free: 0 }   # no floor: the disk is shared with builds, whose fill is not the test's
  trackers: ["https://$TRACKER"]
  seed_announce_interval: 1s
EOF
}
start_agent() {
    local i=$1
    RUST_LOG=info,shoal_agent::registry=debug start "agent$i" "$BIN/shoal-agent" --config "$W/agent$i.yaml"
}
start tracker "$BIN/shoal-tracker" --config "$W/tracker.yaml"
start origin env -u AWS_CA_BUNDLE "$BIN/shoal-origin" --config "$W/origin.yaml"
wait_http tracker "https://$TRACKER/ready"
wait_http origin "https://$ORIGIN_HTTP/ready"
# TLS is on between the nodes: plain HTTP to the origin is refused at the handshake, and counted.
curl -fsS -o /dev/null --max-time 2 "http://$ORIGIN_HTTP/ready" 2>/dev/null && fail "the origin answered plain http"
[[ $(metric "https://$ORIGIN_HTTP" shoal_tls_handshakes_refused_total) -ge 1 ]] || fail "the origin did not count the plaintext handshake"
for i in 0 1 2; do
    write_agent_config "$i"
    start_agent "$i"
done
for i in 0 1 2; do
    wait_http "agent$i" "http://${AGENT[$i]}/ready"
done

# ---------------------------------------------------------------------------------------------
log "build the OCI images and push them"
OCI=$W/oci
mkdir -p "$OCI/blobs/sha256" "$W/build"
echo '{"imageLayoutVersion":"1.0.0"}' >"$OCI/oci-layout"
LAYER_MT=application/vnd.oci.image.layer.v1.tar+gzip
CONFIG_MT=application/vnd.oci.image.config.v1+json
MANIFEST_MT=application/vnd.oci.image.manifest.v1+json
INDEX_MT=application/vnd.oci.image.index.v1+json

# blob FILE: moves FILE into the layout; sets DIGEST and SIZE.
blob() {
    DIGEST=$(sha "$1")
    SIZE=$(stat -c %s "$1")
    mv "$1" "$OCI/blobs/sha256/$DIGEST"
}
# layer NAME BYTES: a gzip'd tar holding BYTES of random data; sets DIGEST, SIZE and DIFF_ID.
layer() {
    local dir=$W/build/$1
    mkdir -p "$dir/root"
    head -c "$2" /dev/urandom >"$dir/root/$1.bin"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$dir/root" -cf "$dir/layer.tar" .
    DIFF_ID=$(sha "$dir/layer.tar")
    gzip -n -1 -c "$dir/layer.tar" >"$dir/layer.tar.gz"
    rm -rf "$dir/root" "$dir/layer.tar"
    blob "$dir/layer.tar.gz"
}
# image NAME ARCH BIG_BYTES: config + manifest for a big and a small layer; sets MANIFEST
# (digest), MANIFEST_SIZE, LAYERS (digests), IMAGE_BYTES (blob bytes, manifest included).
image() {
    local name=$1 arch=$2 l1 l1s d1 l2 l2s d2 cfg cfgs
    layer "$name-big" "$3"
    l1=$DIGEST l1s=$SIZE d1=$DIFF_ID
    layer "$name-small" 4096
    l2=$DIGEST l2s=$SIZE d2=$DIFF_ID
    printf '{"architecture":"%s","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:%s","sha256:%s"]}}' \
        "$arch" "$d1" "$d2" >"$W/build/$name.config"
    blob "$W/build/$name.config"
    cfg=$DIGEST cfgs=$SIZE
    printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"%s","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"%s","digest":"sha256:%s","size":%s},{"mediaType":"%s","digest":"sha256:%s","size":%s}]}' \
        "$MANIFEST_MT" "$CONFIG_MT" "$cfg" "$cfgs" "$LAYER_MT" "$l1" "$l1s" "$LAYER_MT" "$l2" "$l2s" >"$W/build/$name.manifest"
    blob "$W/build/$name.manifest"
    MANIFEST=$DIGEST MANIFEST_SIZE=$SIZE
    LAYERS="$l1 $l2"
    CONFIG=$cfg
    IMAGE_BYTES=$((l1s + l2s + cfgs + SIZE))
}
ref() { printf '{"mediaType":"%s","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}' "$1" "$2" "$3" "$4"; }

image v1 amd64 "$BIG"
V1=$MANIFEST V1_SIZE=$MANIFEST_SIZE V1_LAYERS=$LAYERS V1_CONFIG=$CONFIG V1_BYTES=$IMAGE_BYTES
big=${V1_LAYERS%% *}
image v2 amd64 "$BIG"
V2=$MANIFEST V2_SIZE=$MANIFEST_SIZE V2_BYTES=$IMAGE_BYTES
image amd64 amd64 $((256 * 1024))
AMD=$MANIFEST AMD_SIZE=$MANIFEST_SIZE AMD_LAYERS=$LAYERS
image arm64 arm64 $((256 * 1024))
ARM=$MANIFEST ARM_SIZE=$MANIFEST_SIZE ARM_LAYERS=$LAYERS
printf '{"schemaVersion":2,"mediaType":"%s","manifests":[{"mediaType":"%s","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"}},{"mediaType":"%s","digest":"sha256:%s","size":%s,"platform":{"architecture":"arm64","os":"linux"}}]}' \
    "$INDEX_MT" "$MANIFEST_MT" "$AMD" "$AMD_SIZE" "$MANIFEST_MT" "$ARM" "$ARM_SIZE" >"$W/build/index"
blob "$W/build/index"
INDEX=$DIGEST INDEX_SIZE=$SIZE
printf '{"schemaVersion":2,"manifests":[%s,%s,%s]}\n' "$(ref "$MANIFEST_MT" "$V1" "$V1_SIZE" v1)" \
    "$(ref "$MANIFEST_MT" "$V2" "$V2_SIZE" v2)" "$(ref "$INDEX_MT" "$INDEX" "$INDEX_SIZE" multi)" >"$OCI/index.json"

push() {
    timeout "$PULL_TIMEOUT" skopeo copy -q --dest-tls-verify=false "$@" || fail "skopeo push $* failed"
}
push "oci:$OCI:v1" "docker://$REG/test/img:v1"
push "oci:$OCI:v2" "docker://$REG/test/img:v2"
push --all "oci:$OCI:multi" "docker://$REG/test/img:multi"
push --format v2s2 "oci:$OCI:v1" "docker://$REG/test/img:v1-docker"

# registry_digest TAG: the manifest digest the registry serves for TAG.
registry_digest() {
    curl -fsS -I --max-time 5 -H "Accept: $MANIFEST_MT, $INDEX_MT, application/vnd.docker.distribution.manifest.v2+json" \
        "http://$REG/v2/test/img/manifests/$1" | tr -d '\r' | awk 'tolower($1) == "docker-content-digest:" { print $2 }'
}
for tag in v1 v2 multi; do
    want=sha256:$(case $tag in v1) echo "$V1" ;; v2) echo "$V2" ;; multi) echo "$INDEX" ;; esac)
    got=$(registry_digest "$tag")
    [[ $got == "$want" ]] || fail "registry serves $tag as $got, pushed $want"
done
V1_DOCKER=$(registry_digest v1-docker)
[[ $V1_DOCKER == sha256:* && $V1_DOCKER != "sha256:$V1" ]] || fail "v1-docker is not a separate schema-2 manifest: $V1_DOCKER"
echo "pushed test/img v1 sha256:$V1, v2 sha256:$V2, multi sha256:$INDEX, v1-docker $V1_DOCKER"

# ---------------------------------------------------------------------------------------------
log "preheat on push: the registry's notifications put the pushed images in the origin's store before any pull"
deadline=$((SECONDS + PULL_TIMEOUT))
for d in $V1 $V1_CONFIG $V1_LAYERS $INDEX $AMD_LAYERS $ARM_LAYERS; do
    until [[ -f $W/origin-store/blobs/$d ]]; do
        ((SECONDS < deadline)) || fail_log "$W/origin.log" "the origin did not preheat sha256:$d within ${PULL_TIMEOUT}s of the push"
        sleep 0.2
    done
done
for i in 0 1 2; do
    [[ $(metric "http://${AGENT[$i]}" shoal_swarm_downloads_completed_total) == 0 ]] || fail "agent $i pulled during the preheat"
done
grep -q 'push notified; preheating' "$W/origin.log" || fail_log "$W/origin.log" "the origin logged no push notification"
echo "preheat on push: the origin stored test/img:v1 and the index's layers ($(metric "https://$ORIGIN_HTTP" shoal_origin_backend_bytes_total) backend bytes) before any pull"

# ---------------------------------------------------------------------------------------------
log "who may write: the identity a client's certificate proves at the TLS handshake, or a token"
tls_node ops 127.0.0.1 >/dev/null
preheat_as() {
    curl -sS --cacert "$W/tls/ca.crt" --max-time 30 -o "$W/preheat-as.json" -w '%{http_code}' \
        -H 'Content-Type: application/json' -d '{"name": "test/img", "reference": "v1"}' "$@" \
        "https://$ORIGIN_HTTP/preheat"
}
code=$(preheat_as)
[[ $code == 401 ]] || fail "a preheat without a certificate or a token got $code, not 401"
code=$(preheat_as --cert "$W/tls/agent1.crt" --key "$W/tls/agent1.key")
[[ $code == 403 ]] && grep -q 'spiffe://shoal/e2e/agent1' "$W/preheat-as.json" \
    || fail "a preheat with a certificate not in auth.identities got $code: $(cat "$W/preheat-as.json")"
code=$(preheat_as --cert "$W/tls/ops.crt" --key "$W/tls/ops.key")
[[ $code == 202 ]] || fail "a preheat with the allowed certificate got $code: $(cat "$W/preheat-as.json")"
code=$(preheat_as -H "Authorization: Bearer $NOTIFY_TOKEN")
[[ $code == 202 ]] || fail "a preheat with the token got $code: $(cat "$W/preheat-as.json")"
echo "the origin's preheat: 401 without credentials, 403 for another node's certificate, 202 for the allowed identity or the token"

# ---------------------------------------------------------------------------------------------
log "runtime configs from shoal-agent configure"
HOSTS_DIR=$W/containerd/certs.d
REGCONF=$W/registries.conf
mkdir -p "$W/containerd"
# Short paths, whatever the checkout's path: Unix socket paths must stay under 108 bytes and
# podman refuses a runroot longer than 50 characters.
SHORT_DIR=$(mktemp -d /tmp/shoal-e2e.XXXXXX)
cat >"$W/containerd/config.toml" <<EOF
version = 2
root = "$W/containerd/root"
state = "$W/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SHORT_DIR/containerd.sock"
[ttrpc]
  address = "$SHORT_DIR/containerd.sock.ttrpc"
[debug]
  address = ""
EOF
configure() {
    "$BIN/shoal-agent" configure "$@" --agent "${AGENT[0]}" --registry "$REG" --upstream "$REG=http://$REG"
}
configure containerd --hosts-dir "$HOSTS_DIR" --containerd-config "$W/containerd/config.toml" >"$W/configure-containerd.out"
grep -q 'config_path' "$W/configure-containerd.out" || fail "configure containerd did not print the config_path line"
configure podman --file "$REGCONF" >"$W/configure-podman.out"
[[ -f $HOSTS_DIR/$REG/hosts.toml && -f $HOSTS_DIR/_default/hosts.toml && -f $REGCONF ]] ||
    fail "configure did not write $HOSTS_DIR/$REG/hosts.toml, _default/hosts.toml and $REGCONF"
before=$(cat "$HOSTS_DIR/$REG/hosts.toml" "$HOSTS_DIR/_default/hosts.toml" "$REGCONF" | sha256sum)
again=$(configure containerd --hosts-dir "$HOSTS_DIR" --containerd-config "$W/containerd/config.toml")
[[ $(grep -c "^unchanged " <<<"$again") == 2 ]] || fail "a second configure containerd rewrote its files: $again"
again=$(configure podman --file "$REGCONF")
[[ $again == unchanged* ]] || fail "a second configure podman rewrote its file: $again"
[[ $(cat "$HOSTS_DIR/$REG/hosts.toml" "$HOSTS_DIR/_default/hosts.toml" "$REGCONF" | sha256sum) == "$before" ]] ||
    fail "configure is not idempotent"
echo "hosts.toml:"
sed 's/^/    /' "$HOSTS_DIR/$REG/hosts.toml"

# ---------------------------------------------------------------------------------------------
# requests AGENT_INDEX: how many manifest requests the agent has logged.
requests() { grep -c 'registry manifest' "$W/agent$1.log" || true; }

# check_dir DIR MANIFEST_DIGEST LAYERS...: a skopeo dir: copy holds the manifest and every
# blob, each file's sha256 equal to its name.
check_dir() {
    local dir=$1 manifest=$2 f name
    shift 2
    [[ $(sha "$dir/manifest.json") == "$manifest" ]] || fail "$dir/manifest.json is not sha256:$manifest"
    for f in "$dir"/*; do
        name=$(basename "$f")
        [[ $name == manifest.json || $name == version ]] && continue
        [[ $(sha "$f") == "$name" ]] || fail "$f: sha256 $(sha "$f") does not match its name"
    done
    for name in "$@"; do
        [[ -f $dir/$name ]] || fail "$dir lacks layer sha256:$name"
    done
}

# pull_dir NAME SRC [SKOPEO GLOBAL ARGS...]: skopeo copy SRC to $W/pull/NAME; sets TOOK
# (seconds).
pull_dir() {
    local name=$1 src=$2 t
    shift 2
    rm -rf "$W/pull/$name"
    mkdir -p "$W/pull"
    t=$(now)
    timeout "$PULL_TIMEOUT" skopeo "$@" copy -q --src-tls-verify=false "$src" "dir:$W/pull/$name" ||
        fail "skopeo copy $src failed"
    TOOK=$(elapsed "$t")
}

log "skopeo: direct from the registry, then through agent 1 cold and warm"
pull_dir direct "docker://$REG/test/img:v1"
T_DIRECT=$TOOK
check_dir "$W/pull/direct" "$V1" $V1_LAYERS
o0=$(metric "https://$ORIGIN_HTTP" shoal_swarm_piece_bytes_sent_total)
pull_dir cold "docker://${AGENT[0]}/test/img:v1"
T_COLD=$TOOK
o1=$(metric "https://$ORIGIN_HTTP" shoal_swarm_piece_bytes_sent_total)
check_dir "$W/pull/cold" "$V1" $V1_LAYERS
pull_dir warm "docker://${AGENT[0]}/test/img:v1"
T_WARM=$TOOK
check_dir "$W/pull/warm" "$V1" $V1_LAYERS
COLD_RATIO=$(awk -v b="$((o1 - o0))" -v s="$V1_BYTES" 'BEGIN { printf "%.2f", b / s }')
echo "test/img:v1 ($V1_BYTES bytes): direct ${T_DIRECT}s, agent cold ${T_COLD}s, agent warm ${T_WARM}s; origin sent $((o1 - o0)) bytes for the cold pull (${COLD_RATIO} copies)"

log "skopeo: schema-2 tag and the registries.conf mirror"
pull_dir docker "docker://${AGENT[0]}/test/img:v1-docker"
check_dir "$W/pull/docker" "${V1_DOCKER#sha256:}" $V1_LAYERS
n=$(requests 0)
# skopeo ignores CONTAINERS_REGISTRIES_CONF; its (hidden) global flag names the file.
pull_dir mirror "docker://$REG/test/img:v1" --registries-conf "$REGCONF"
check_dir "$W/pull/mirror" "$V1" $V1_LAYERS
(($(requests 0) > n)) || fail "skopeo with $REGCONF did not go through the agent"

log "skopeo: the index pulls the arm64 manifest"
pull_dir arm "docker://${AGENT[0]}/test/img:multi" --override-arch arm64 --override-os linux
check_dir "$W/pull/arm" "$ARM" $ARM_LAYERS
for l in $AMD_LAYERS; do
    [[ ! -f $W/pull/arm/$l ]] || fail "the arm64 pull holds the amd64 layer $l"
done

# ---------------------------------------------------------------------------------------------
log "containerd through agent 1 (hosts.toml)"
CTR_SOCK=$SHORT_DIR/containerd.sock
start containerd containerd --config "$W/containerd/config.toml"
deadline=$((SECONDS + START_TIMEOUT))
until ctr -a "$CTR_SOCK" version >/dev/null 2>&1; do
    kill -0 "${PIDS[containerd]}" 2>/dev/null || fail_log "$W/containerd.log" "containerd exited"
    ((SECONDS < deadline)) || fail "containerd did not answer within ${START_TIMEOUT}s"
    sleep 0.2
done
ctr_() { timeout "$PULL_TIMEOUT" ctr -a "$CTR_SOCK" -n "$NS" "$@"; }
ctr_pull() { ctr_ images pull --hosts-dir "$HOSTS_DIR" --snapshotter native "$@" >>"$W/ctr.log" 2>&1; }
# ctr_check REF MANIFEST BLOBS...: the image's digest, and every blob in the content store.
ctr_check() {
    local ref=$1 want=$2 got d
    shift 2
    got=$(ctr_ images ls 2>/dev/null | awk -v r="$ref" '$1 == r { print $3 }')
    [[ $got == "sha256:$want" ]] || fail "containerd has $ref as '$got', pushed sha256:$want"
    local content
    content=$(ctr_ content ls -q)
    for d in "$@"; do
        grep -qx "sha256:$d" <<<"$content" || fail "containerd's content store lacks sha256:$d"
    done
}
n=$(requests 0)
t=$(now)
ctr_pull "$REG/test/img:v1" || fail_log "$W/ctr.log" "ctr pull $REG/test/img:v1 through the agent failed"
T_CTR=$(elapsed "$t")
ctr_check "$REG/test/img:v1" "$V1" "$V1_CONFIG" $V1_LAYERS
(($(requests 0) > n)) || fail "containerd did not go through the agent"
ctr_pull --platform linux/arm64 "$REG/test/img:multi" || fail "ctr pull --platform linux/arm64 failed"
ctr_check "$REG/test/img:multi" "$INDEX" "$ARM" $ARM_LAYERS
for l in $AMD_LAYERS; do
    ! ctr_ content ls -q | grep -qx "sha256:$l" || fail "containerd fetched the amd64 layer $l for linux/arm64"
done
echo "containerd: test/img:v1 in ${T_CTR}s, multi for linux/arm64 with the arm64 layers only"

# ---------------------------------------------------------------------------------------------
log "podman through agent 1 (registries.conf drop-in)"
PODMAN=(podman --events-backend file --storage-driver vfs --root "$W/podman/root" --runroot "$SHORT_DIR/podman")
n=$(requests 0)
t=$(now)
CONTAINERS_REGISTRIES_CONF=$REGCONF timeout "$PULL_TIMEOUT" "${PODMAN[@]}" pull -q "$REG/test/img:v1" >>"$W/podman.log" 2>&1 ||
    fail_log "$W/podman.log" "podman pull failed"
T_PODMAN=$(elapsed "$t")
got=$("${PODMAN[@]}" image inspect --format '{{.Digest}}' "$REG/test/img:v1")
[[ $got == "sha256:$V1" ]] || fail "podman has test/img:v1 as $got, pushed sha256:$V1"
(($(requests 0) > n)) || fail "podman did not go through the agent"
echo "podman: test/img:v1 in ${T_PODMAN}s"

# ---------------------------------------------------------------------------------------------
log "three agents pull test/img:v2 at once"
o0=$(metric "https://$ORIGIN_HTTP" shoal_swarm_piece_bytes_sent_total)
t=$(now)
cpids=()
for i in 0 1 2; do
    rm -rf "$W/pull/c$i"
    timeout "$PULL_TIMEOUT" skopeo copy -q --src-tls-verify=false "docker://${AGENT[$i]}/test/img:v2" "dir:$W/pull/c$i" \
        >"$W/concurrent$i.log" 2>&1 &
    cpids+=($!)
done
for i in 0 1 2; do
    wait "${cpids[$i]}" || fail_log "$W/concurrent$i.log" "concurrent pull through agent $((i + 1)) failed"
done
T_CONC=$(elapsed "$t")
o1=$(metric "https://$ORIGIN_HTTP" shoal_swarm_piece_bytes_sent_total)
for i in 0 1 2; do
    check_dir "$W/pull/c$i" "$V2"
done
PER_AGENT=$(awk -v b="$((o1 - o0))" -v s="$V2_BYTES" 'BEGIN { printf "%.2f", b / s / 3 }')
echo "3 agents x $V2_BYTES bytes in ${T_CONC}s; origin sent $((o1 - o0)) bytes: $PER_AGENT copies per agent"
awk -v r="$PER_AGENT" 'BEGIN { exit !(r < 1.0) }' || fail "origin sent $PER_AGENT copies per agent, expected < 1.0"

# ---------------------------------------------------------------------------------------------
log "bad requests get the spec's errors"
A=http://${AGENT[0]}
# expect STATUS CODES PATH [CURL ARGS...]: the answer's status, and an error code among CODES
# (`A|B`) in its body.
expect() {
    local status=$1 code=$2 path=$3 body got
    shift 3
    got=$(curl -sS --max-time 10 --path-as-is -o "$W/err.json" -w '%{http_code}' "$@" "$A$path") ||
        fail "no answer for $path"
    body=$(cat "$W/err.json")
    [[ $got == "$status" ]] || fail "$path: status $got, expected $status ($body)"
    if [[ -n $code ]]; then
        [[ $body =~ \"code\":\"($code)\" ]] || fail "$path: body $body, expected code $code"
    fi
}
zero=$(printf '0%.0s' $(seq 64))
expect 404 MANIFEST_UNKNOWN /v2/test/img/manifests/no-such-tag
# The spec allows either for a repository the registry does not know.
expect 404 'NAME_UNKNOWN|MANIFEST_UNKNOWN' /v2/no/such-repo/manifests/v1
expect 404 MANIFEST_UNKNOWN "/v2/test/img/manifests/sha256:$zero"
expect 404 BLOB_UNKNOWN "/v2/test/img/blobs/sha256:$zero"
expect 400 DIGEST_INVALID /v2/test/img/blobs/sha256:xyz
expect 400 DIGEST_INVALID /v2/test/img/blobs/sha256:abc
expect 416 "" "/v2/test/img/blobs/sha256:$big" -H 'Range: bytes=999999999999-'
expect 400 NAME_INVALID "/v2/test/../img/manifests/v1"
expect 400 NAME_INVALID "/v2/test%2Fimg/manifests/v1"
expect 400 NAME_INVALID "/v2/Test/img/manifests/v1"
curl -fsS --max-time 5 -o /dev/null "$A/v2/" || fail "agent 1 stopped answering after the bad requests"
code=$(curl -sS --max-time 10 -o "$W/range.bin" -w '%{http_code}' -H 'Range: bytes=0-99' "$A/v2/test/img/blobs/sha256:$big")
[[ $code == 206 && $(stat -c %s "$W/range.bin") == 100 ]] || fail "a good range got $code with $(stat -c %s "$W/range.bin") bytes"
echo "bad requests answered as the spec says; agent 1 still answers"

# ---------------------------------------------------------------------------------------------
log "pull-through: an origin with an empty bucket and the registry as its upstream"
PT=127.0.78
PT_ORIGINS="origins:
  - { id: origin-pt, http: \"http://$PT.2:7800\", peer: \"$PT.2:7801\" }"
mkdir -p "$W/s3/empty"
cat >"$W/tracker-pt.yaml" <<EOF
listen: $PT.1:7600
announce_interval: 1s
peer_ttl: 10s
trusted_networks: ["127.0.0.0/8"]
$PT_ORIGINS
EOF
cat >"$W/origin-pt.yaml" <<EOF
listen: $PT.2:7800
peer_listen: $PT.2:7801
id: origin-pt
$PT_ORIGINS
backend:
  type: s3
  bucket: empty
  layout: docker_registry
  endpoint_url: http://127.0.0.1:$S3_PORT
  region: us-east-1
  access_key_id: shoal
  secret_access_key: shoalsecret
pull_through:
  default_upstream: "$REG"
  upstreams:
    - host: "$REG"
      url: http://$REG
      write_back: false
swarm:
  store_dir: $W/origin-pt-store
  store: { min_free: 0 }   # no floor: the disk is shared with builds, whose fill is not the test's
  trackers: ["http://$PT.1:7600"]
EOF
for i in 1 2; do
    cat >"$W/agent-pt$i.yaml" <<EOF
listen: $PT.1$i:7700
peer_listen: $PT.1$i:7701
$PT_ORIGINS
swarm:
  store_dir: $W/agent-pt$i-store
  store: { min_free: 0 }   # no floor: the disk is shared with builds, whose fill is not the test's
  trackers: ["http://$PT.1:7600"]
EOF
done
start tracker-pt "$BIN/shoal-tracker" --config "$W/tracker-pt.yaml"
start origin-pt env -u AWS_CA_BUNDLE "$BIN/shoal-origin" --config "$W/origin-pt.yaml"
start agent-pt1 "$BIN/shoal-agent" --config "$W/agent-pt1.yaml"
start agent-pt2 "$BIN/shoal-agent" --config "$W/agent-pt2.yaml"
wait_http tracker-pt "http://$PT.1:7600/ready"
wait_http origin-pt "http://$PT.2:7800/ready"
wait_http agent-pt1 "http://$PT.11:7700/ready"
wait_http agent-pt2 "http://$PT.12:7700/ready"
[[ -z $(ls -A "$W/s3/empty") ]] || fail "the pull-through bucket is not empty"
pull_dir pt1 "docker://$PT.11:7700/test/img:v1"
T_PT=$TOOK
check_dir "$W/pull/pt1" "$V1" $V1_LAYERS
up1=$(metric "http://$PT.2:7800" shoal_origin_upstream_requests_total)
((up1 > 0)) || fail "the pull-through origin made no upstream requests"
# The second pull, from a fresh agent, must not need the registry at all.
stop registry
pull_dir pt2 "docker://$PT.12:7700/test/img:v1"
check_dir "$W/pull/pt2" "$V1" $V1_LAYERS
up2=$(metric "http://$PT.2:7800" shoal_origin_upstream_requests_total)
((up2 == up1)) || fail "the second pull-through pull made $((up2 - up1)) upstream requests"
for name in agent-pt1 agent-pt2 origin-pt tracker-pt; do
    stop "$name"
done
start registry env -u AWS_CA_BUNDLE SSL_CERT_FILE="$W/tls/ca.crt" docker-registry serve "$W/registry.yml"
wait_http registry "http://$REG/v2/"
echo "pull-through: test/img:v1 from an empty bucket in ${T_PT}s ($up1 upstream requests); a fresh agent pulled it again with the registry down"

# ---------------------------------------------------------------------------------------------
log "agent 1 down: containerd falls back to the registry"
stop agent0
ctr_ images rm --sync "$REG/test/img:v1" >/dev/null
for d in "$V1" "$V1_CONFIG" $V1_LAYERS; do
    ctr_ content rm "sha256:$d" >/dev/null 2>&1 || true
done
! ctr_ content ls -q | grep -qx "sha256:${V1_LAYERS%% *}" || fail "containerd still holds the big layer after removal"
ctr_pull "$REG/test/img:v1" || fail_log "$W/ctr.log" "ctr pull with agent 1 down did not fall back to the registry"
ctr_check "$REG/test/img:v1" "$V1" "$V1_CONFIG" $V1_LAYERS
echo "containerd pulled test/img:v1 from the registry with agent 1 down"

log "registry and S3 down: agent 1 serves what it holds"
start_agent 0
wait_http agent0 "http://${AGENT[0]}/ready"
stop registry
scripts/s3-server.sh stop "$W/s3"
curl -fsS --max-time 30 -o "$W/offline.blob" "http://${AGENT[0]}/v2/test/img/blobs/sha256:$big" ||
    fail "agent 1 did not serve sha256:$big with the registry and S3 down"
[[ $(sha "$W/offline.blob") == "$big" ]] || fail "agent 1 served bytes that do not hash to sha256:$big"
pull_dir offline "docker://${AGENT[0]}/test/img@sha256:$V1"
check_dir "$W/pull/offline" "$V1" $V1_LAYERS
echo "agent 1 served test/img@sha256:$V1 and its layers with the registry and S3 down"

# ---------------------------------------------------------------------------------------------
{
    echo "e2e-registry $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "test/img:v1 ($V1_BYTES bytes, skopeo copy to dir:)"
    echo "  direct from the registry: ${T_DIRECT}s"
    echo "  through agent 1, cold:    ${T_COLD}s (origin sent ${COLD_RATIO} copies)"
    echo "  through agent 1, warm:    ${T_WARM}s"
    echo "  containerd via hosts.toml: ${T_CTR}s; podman via registries.conf: ${T_PODMAN}s"
    echo "test/img:v2 ($V2_BYTES bytes) through 3 agents at once: ${T_CONC}s"
    echo "  origin bytes per agent: $PER_AGENT copies"
    echo "pull-through from an empty bucket, first pull: ${T_PT}s ($up1 upstream requests; none for the second)"
    echo "whole run after the build: $((SECONDS - T_START))s"
} | tee "$SUMMARY.tmp"
mv "$SUMMARY.tmp" "$SUMMARY"
log "e2e-registry: all checks passed (summary: $SUMMARY)"
