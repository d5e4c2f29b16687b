#!/usr/bin/env bash
# Installs and runs s3s-fs, a small S3-compatible server that keeps a bucket as a directory,
# for tests and local clusters. Everything binds 127.0.0.1.
#
#   scripts/s3-server.sh install                           install s3s-fs if it is missing
#   scripts/s3-server.sh start DATA_DIR PORT [BUCKET...]   start it in the background
#   scripts/s3-server.sh stop DATA_DIR                     stop the server started for DATA_DIR
#
# `start` creates DATA_DIR and one directory per BUCKET (to s3s-fs a bucket is a directory,
# an object a file below it), writes the pid to DATA_DIR.s3s-fs.pid and the log to
# DATA_DIR.s3s-fs.log (beside the data directory, so they never show up as buckets), waits
# until the port answers, and prints the endpoint URL. Credentials: access key "shoal",
# secret "shoalsecret" (override with SHOAL_S3_ACCESS_KEY / SHOAL_S3_SECRET_KEY).
# The binary is $SHOAL_S3S_FS if set, else ${CARGO_HOME:-~/.cargo}/bin/s3s-fs, else the PATH.
set -euo pipefail

# s3s-fs 0.15 and later need a newer rustc than the workspace's.
S3S_FS_VERSION=0.14.1
ACCESS_KEY=${SHOAL_S3_ACCESS_KEY:-shoal}
SECRET_KEY=${SHOAL_S3_SECRET_KEY:-shoalsecret}
# Seconds to wait for the port to answer after starting.
START_TIMEOUT=${SHOAL_S3_START_TIMEOUT:-20}
CARGO_BIN_DIR=${CARGO_HOME:-$HOME/.cargo}/bin

die() {
    echo "s3-server.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '5,7p' "$0" | sed 's/^# *//' >&2
    exit 64
}

find_bin() {
    if [[ -n ${SHOAL_S3S_FS:-} ]]; then
        [[ -x $SHOAL_S3S_FS ]] || return 1
        echo "$SHOAL_S3S_FS"
    elif [[ -x $CARGO_BIN_DIR/s3s-fs ]]; then
        echo "$CARGO_BIN_DIR/s3s-fs"
    else
        command -v s3s-fs
    fi
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

cmd_install() {
    [[ $# -eq 0 ]] || usage
    local bin
    if bin=$(find_bin); then
        echo "s3s-fs is installed: $bin"
        return
    fi
    mkdir -p "$CARGO_BIN_DIR"
    # Serialise concurrent installs (parallel CI jobs on one runner); flock is optional.
    if command -v flock >/dev/null; then
        exec 9>"$CARGO_BIN_DIR/.s3s-fs-install.lock"
        flock 9
        if bin=$(find_bin); then
            echo "s3s-fs is installed: $bin"
            return
        fi
    fi
    echo "installing s3s-fs $S3S_FS_VERSION (a few minutes)" >&2
    cargo install "s3s-fs@$S3S_FS_VERSION" --features binary --locked
}

cmd_start() {
    [[ $# -ge 2 ]] || usage
    local data_dir=${1%/} port=$2
    shift 2
    [[ $port =~ ^[0-9]+$ ]] || die "port must be a number, got '$port'"
    local pid_file=$data_dir.s3s-fs.pid log_file=$data_dir.s3s-fs.log bin
    bin=$(find_bin) || die "s3s-fs not found; run: $0 install"

    if [[ -f $pid_file ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
        die "already running for $data_dir (pid $(cat "$pid_file"))"
    fi
    if port_open "$port"; then
        die "port $port is already in use"
    fi
    mkdir -p "$data_dir"
    local bucket
    for bucket in "$@"; do
        mkdir -p "$data_dir/$bucket"
    done

    "$bin" --host 127.0.0.1 --port "$port" --access-key "$ACCESS_KEY" --secret-key "$SECRET_KEY" \
        "$data_dir" </dev/null >"$log_file" 2>&1 &
    local pid=$!
    echo "$pid" >"$pid_file"

    local deadline=$((SECONDS + START_TIMEOUT))
    until port_open "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$pid_file"
            cat "$log_file" >&2
            die "s3s-fs exited during startup (log above)"
        fi
        if ((SECONDS >= deadline)); then
            kill "$pid" 2>/dev/null || true
            rm -f "$pid_file"
            die "s3s-fs did not answer on port $port within ${START_TIMEOUT}s (log: $log_file)"
        fi
        sleep 0.1
    done
    echo "http://127.0.0.1:$port"
}

cmd_stop() {
    [[ $# -eq 1 ]] || usage
    local data_dir=${1%/}
    local pid_file=$data_dir.s3s-fs.pid pid
    if [[ ! -f $pid_file ]]; then
        echo "s3s-fs is not running for $data_dir (no $pid_file)" >&2
        return
    fi
    pid=$(cat "$pid_file")
    # Only signal the pid if it is still s3s-fs: pids are reused.
    if [[ $(ps -p "$pid" -o comm= 2>/dev/null || true) == s3s-fs* ]]; then
        kill "$pid"
        local i
        for i in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid"
        fi
    fi
    rm -f "$pid_file"
}

[[ $# -ge 1 ]] || usage
cmd=$1
shift
case $cmd in
install) cmd_install "$@" ;;
start) cmd_start "$@" ;;
stop) cmd_stop "$@" ;;
*) usage ;;
esac
