#!/usr/bin/env bash
# Runs Shoal's tests: installs what they need, then `cargo test` over the whole workspace.
#
#   scripts/test.sh [CARGO TEST ARGS...]
#
# scripts/install-deps.sh installs what is missing: the s3s-fs S3 server that the real-S3 tests
# start (a `cargo install` of a few minutes the first time) and the Debian packages the
# registry end-to-end test runs (docker-registry, skopeo, containerd, podman, ...). Extra
# arguments go to `cargo test --workspace --all-targets`, e.g. `scripts/test.sh -p shoal-core`
# or `scripts/test.sh -- --nocapture`. `--all-targets` leaves out doc tests, so with no extra
# arguments they run afterwards, followed by scripts/e2e-registry.sh (real containerd, skopeo,
# podman and docker-registry; needs root) and scripts/check-chart.sh (the Helm chart).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh

cargo test --workspace --all-targets "$@"

if [[ $# -eq 0 ]]; then
    cargo test --workspace --doc
    scripts/e2e-registry.sh
    scripts/check-chart.sh
fi
