#!/usr/bin/env python3
"""Splits a `perf record -a -g` profile of a processes-mode run by cost, in ns per delivered byte.

    perf record -a -F 999 -g -o perf.data -- ./target/release/shoal-loadtest local --mode processes
    loadtest/perf-costs.py perf.data 2684354560            # the node: agents, origins, tracker
    loadtest/perf-costs.py --harness perf.data 2684354560  # the harness alone

The second argument is the bytes delivered to the agents (10 agents x 256 MiB in the main job).
The processes are found by the exec events perf recorded, so the profile must cover the
harness's start. Each sample is counted once, under the first cost (in the order below) that
any frame of its stack names; a sample is 1/F seconds of one CPU, so the figures include the
run's setup (the origin's import of the blob), not only the pull.
"""

import argparse
import collections
import re
import subprocess
import sys

# (cost, frames that mark it), first match wins: the hashes before the syscalls, so a hash
# run inside a read's completion is still the hash.
COSTS = [
    ("sha256 (whole blob)", ["sha256", "sha2::"]),
    ("BLAKE3 (each piece)", ["blake3"]),
    ("store writes (pwrite64)", ["__x64_sys_pwrite64"]),
    ("store reads (pread64: HTTP answer, digest read-back)", ["__x64_sys_pread64"]),
    ("piece uploads (sendfile)", ["__x64_sys_sendfile64", "do_sendfile"]),
    ("TCP receive (recvfrom, read)", ["__x64_sys_recvfrom", "__x64_sys_read", "__x64_sys_readv"]),
    ("TCP send (writev, sendto, write)", ["do_writev", "__x64_sys_writev", "__x64_sys_sendto", "__x64_sys_write"]),
    ("page faults", ["asm_exc_page_fault"]),
    ("epoll, futex, scheduling", ["__x64_sys_epoll_wait", "__x64_sys_futex", "__x64_sys_sched_yield"]),
    ("interrupts outside syscalls", ["handle_softirqs", "asm_sysvec", "__irq_exit_rcu"]),
    ("allocator", ["malloc", "_int_free", "realloc", "cfree"]),
    ("other syscalls", ["entry_SYSCALL_64"]),
]
REST = "user code, the rest"
NODE = re.compile(r"PERF_RECORD_COMM exec: shoal-(agent|origin|tracker):(\d+)/")
HARNESS = re.compile(r"PERF_RECORD_COMM exec: shoal-loadtest:(\d+)/")


def pids(data, harness):
    out = subprocess.run(
        ["perf", "script", "-i", data, "--show-task-events", "-F", "pid"],
        capture_output=True, text=True, errors="replace", check=True,
    ).stdout
    if harness:
        return {m.group(1) for m in HARNESS.finditer(out)}
    return {m.group(2) for m in NODE.finditer(out)}


def samples(data):
    """Yields (pid, frames, in the kernel) per sample."""
    p = subprocess.Popen(
        ["perf", "script", "-i", data, "-F", "pid,ip,sym"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, errors="replace",
    )
    pid, frames, kernel = None, [], False
    for line in p.stdout:
        parts = line.split()
        if len(parts) == 1 and parts[0].isdigit():
            pid, frames = parts[0], []
        elif not parts:
            if pid is not None:
                yield pid, frames, kernel
            pid = None
        elif len(parts) >= 2:
            if not frames:
                kernel = parts[0].startswith("ffffffff")
            frames.append(parts[1])
    if pid is not None:
        yield pid, frames, kernel


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("bytes", type=int, help="bytes delivered to the agents")
    ap.add_argument("--harness", action="store_true", help="the harness's process instead of the node's")
    ap.add_argument("--freq", type=int, default=999, help="perf record's -F")
    a = ap.parse_args()
    want = pids(a.data, a.harness)
    if not want:
        sys.exit("no shoal processes were started inside this profile (record with -a over the whole run)")
    counts, total, kernel = collections.Counter(), 0, 0
    for pid, frames, in_kernel in samples(a.data):
        if pid not in want:
            continue
        total += 1
        kernel += in_kernel
        cost = next((c for c, keys in COSTS if any(k in f for f in frames for k in keys)), REST)
        counts[cost] += 1
    if total == 0:
        sys.exit("no samples of those processes")
    ns = lambda n: n / a.freq * 1e9 / a.bytes  # noqa: E731
    print(f"{'cost':55} {'share':>6} {'ns/B':>6}")
    for cost in [c for c, _ in COSTS] + [REST]:
        print(f"{cost:55} {100 * counts[cost] / total:5.1f}% {ns(counts[cost]):6.3f}")
    writes = counts["store writes (pwrite64)"]
    print(f"{'all':55} {100.0:5.1f}% {ns(total):6.3f}")
    print(f"{'all but the store writes':55} {100 * (total - writes) / total:5.1f}% {ns(total - writes):6.3f}")
    print(f"{'of all, in the kernel':55} {100 * kernel / total:5.1f}% {ns(kernel):6.3f}")


if __name__ == "__main__":
    main()
