#!/usr/bin/env bash
# Runs every fuzz target of core/fuzz for a bounded time, on the stable toolchain.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      # default: 60 s each, every target
#   FUZZ_RUNS=10000000 scripts/fuzz.sh 0 decode           # a number of executions instead
#   FUZZ_SANITIZER=none FUZZ_RUNS=10000000 scripts/fuzz.sh 0  # without AddressSanitizer
#
# FUZZ_SANITIZER (default address) is cargo-fuzz's --sanitizer: `none` runs several times
# faster, and shoal-core has no unsafe code for AddressSanitizer to watch (it still catches
# overflows through the debug assertions, and panics). FUZZ_MAX_LEN (default 65536) bounds an
# input's length.
#
# cargo-fuzz drives libFuzzer with AddressSanitizer and the sanitizer-coverage passes, which
# take `-Z` flags; RUSTC_BOOTSTRAP=1 lets the stable compiler accept them, so no nightly
# toolchain is needed. Installs cargo-fuzz (crates.io) and a C++ compiler (Debian's g++, for
# libFuzzer itself) when missing. Builds with optimizations and debug assertions (overflow
# checks on). Each target starts from its corpus (core/fuzz/corpus/<target>, kept between runs,
# ignored by git) plus the committed seeds (core/fuzz/seeds/<target>; the wire frames of
# core/tests/data for decode). Prints one line per target (executions, seconds, result) and
# exits non-zero if any target found a crash; the crashing input is in
# core/fuzz/artifacts/<target>/ (replay: see core/fuzz/README.md).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../core/fuzz"

CARGO_FUZZ_VERSION=0.13.2
secs=${1:-60}
shift || true
targets=("$@")

if ! command -v c++ >/dev/null; then
    echo "fuzz.sh: installing g++ (libFuzzer is built from source)"
    apt-get update -qq && apt-get install -y -qq g++ >/dev/null
fi
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --quiet
fi
export RUSTC_BOOTSTRAP=1

if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cargo fuzz list)
fi

flags=(-O --debug-assertions --sanitizer "${FUZZ_SANITIZER:-address}")
# Every target at once, so a build error stops here rather than reading as a crash.
cargo fuzz build "${flags[@]}"

limit=(-max_total_time="$secs")
if [[ -n ${FUZZ_RUNS:-} ]]; then
    limit=(-runs="$FUZZ_RUNS")
fi

failed=()
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    seeds=()
    if [[ -d "seeds/$t" ]]; then
        seeds+=("seeds/$t")
    fi
    if [[ $t == decode ]]; then
        seeds+=(../tests/data)
    fi
    log=$(mktemp)
    start=$(date +%s)
    echo "==> fuzz $t (${limit[*]})"
    status=ok
    if ! cargo fuzz run "${flags[@]}" "$t" "corpus/$t" "${seeds[@]}" -- \
        "${limit[@]}" -print_final_stats=1 -max_len="${FUZZ_MAX_LEN:-65536}" >"$log" 2>&1; then
        status=CRASH
        failed+=("$t")
        tail -n 40 "$log"
    fi
    end=$(date +%s)
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1 || true)
    summary+=("$(printf '%-12s %14s execs %6s s  %s' "$t" "${execs:-?}" "$((end - start))" "$status")")
    rm -f "$log"
done

echo
echo "fuzz summary (${limit[*]}, sanitizer ${FUZZ_SANITIZER:-address}):"
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "crashes in: ${failed[*]} (inputs under core/fuzz/artifacts/)" >&2
    exit 1
fi
