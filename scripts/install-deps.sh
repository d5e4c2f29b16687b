#!/usr/bin/env bash
# Installs the third-party programs Shoal's tests run for real, when they are missing:
#
#   scripts/install-deps.sh
#
# - Debian packages docker-registry, skopeo, umoci, containerd, runc and podman (for
#   scripts/e2e-registry.sh) and openssl (its certificates, and scripts/check-chart.sh's),
#   with apt-get, which needs root;
# - the s3s-fs S3 server (scripts/s3-server.sh install: a `cargo install` of a few minutes the
#   first time).
# Nothing is done for what is already there, so a second run costs a second.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Package name and a program it installs.
PACKAGES=(
    "docker-registry docker-registry"
    "skopeo skopeo"
    "umoci umoci"
    "containerd containerd"
    "containerd ctr"
    "runc runc"
    "podman podman"
    "openssl openssl"
)

missing=()
for entry in "${PACKAGES[@]}"; do
    read -r pkg prog <<<"$entry"
    if ! command -v "$prog" >/dev/null 2>&1 && [[ ! -x /usr/sbin/$prog ]]; then
        [[ " ${missing[*]} " == *" $pkg "* ]] || missing+=("$pkg")
    fi
done

if ((${#missing[@]} > 0)); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-deps.sh: missing ${missing[*]}; installing them needs root (apt-get)" >&2
        exit 1
    fi
    if ! command -v apt-get >/dev/null; then
        echo "install-deps.sh: missing ${missing[*]} and no apt-get to install them" >&2
        exit 1
    fi
    echo "installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

scripts/s3-server.sh install
