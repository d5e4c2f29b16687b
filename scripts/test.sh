#!/usr/bin/env bash
# Runs Shoal's tests: installs what they need, then `cargo test` over the whole workspace.
#
#   scripts/test.sh [CARGO TEST ARGS...]
#
# The only install is the s3s-fs S3 server that the real-S3 tests start
# (`scripts/s3-server.sh install`: a `cargo install` of a few minutes the first time, nothing
# once it is there). Extra arguments go to `cargo test --workspace --all-targets`, e.g.
# `scripts/test.sh -p shoal-core` or `scripts/test.sh -- --nocapture`. `--all-targets` leaves
# out doc tests, so with no extra arguments they run afterwards.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/s3-server.sh install

cargo test --workspace --all-targets "$@"

if [[ $# -eq 0 ]]; then
    cargo test --workspace --doc
fi
