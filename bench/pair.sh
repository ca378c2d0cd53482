#!/usr/bin/env bash
# Paired CPU comparison of two otad builds: both are served and loaded at the same time, by one
# otad-bench each, so both see the same contention from whatever else the machine runs. Prints
# server CPU per issuance, driver CPU per request and server system calls and context switches
# per request (the last two need `perf`). Loopback only; both servers are stopped on exit.
#
#   bench/pair.sh OLD_OTAD NEW_OTAD                 # 3 rounds, 2000 PKCSReqs each, concurrency 4
#   ROUNDS=5 REQUESTS=1000 CONCURRENCY=8 bench/pair.sh A B
#   CONNECTIONS=close bench/pair.sh A B             # a new connection per request (default: reuse)
#
# Build the driver first: cargo build --release --manifest-path bench/Cargo.toml
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
ROOT=$PWD

if [[ $# -ne 2 ]]; then
    sed -n '2,10p' "$0" >&2
    exit 2
fi
ROUNDS=${ROUNDS:-3}
REQUESTS=${REQUESTS:-2000}
CONCURRENCY=${CONCURRENCY:-4}
CONNECTIONS=${CONNECTIONS:-reuse}
CHALLENGE=bench-static-challenge
DRIVER=${CARGO_TARGET_DIR:-$ROOT/target}/release/otad-bench

WORK=$(mktemp -d "${TMPDIR:-/tmp}/otad-pair.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# Starts `$1` on a fresh state in `$2`; prints "PID PORT".
start() {
    local otad=$1 dir=$2 port
    port=$(free_port)
    "$otad" init --state "$dir/otad" --url "http://127.0.0.1:$port" >/dev/null
    # http.listen and scep.challenge, as scep.sh sets them.
    python3 bench/configure.py "$dir/otad/otad.toml" "http.listen=\"127.0.0.1:$port\"" \
        "scep.challenge=\"$CHALLENGE\""
    "$otad" serve --config "$dir/otad/otad.toml" 2>"$dir/otad.log" &
    echo "$! $port"
}

for round in $(seq "$ROUNDS"); do
    declare -A pid port stat result
    for side in A B; do
        binary=$1
        [[ $side == B ]] && binary=$2
        mkdir -p "$WORK/$round$side"
        read -r pid[$side] port[$side] < <(start "$binary" "$WORK/$round$side")
        PIDS+=("${pid[$side]}")
    done
    for side in A B; do
        wait_port "${port[$side]}"
    done

    perf_pids=()
    if command -v perf >/dev/null; then
        for side in A B; do
            perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "${pid[$side]}" \
                -o "$WORK/$round$side/perf" 2>/dev/null &
            perf_pids+=($!)
        done
    fi
    drivers=()
    for side in A B; do
        "$DRIVER" load --label "otad-$side" --url "http://127.0.0.1:${port[$side]}/scep" \
            --challenge "$CHALLENGE" --requests "$REQUESTS" --concurrency "$CONCURRENCY" \
            --server-pid "${pid[$side]}" --connections "$CONNECTIONS" --caps-per-request 0 \
            >"$WORK/$round$side/result" &
        drivers+=($!)
    done
    wait "${drivers[@]}"
    for p in "${perf_pids[@]}"; do
        kill -INT "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done

    for side in A B; do
        binary=$1
        [[ $side == B ]] && binary=$2
        python3 - "$WORK/$round$side" "$REQUESTS" "$round" "$side" "$binary" <<'EOF'
import json, os, sys
dir, requests, round_, side, binary = sys.argv[1:]
r = json.load(open(os.path.join(dir, "result")))
counts = {}
path = os.path.join(dir, "perf")
if os.path.exists(path):
    for line in open(path):
        fields = line.strip().split(",")
        if len(fields) > 2 and fields[0].isdigit():
            counts[fields[2]] = int(fields[0])
answered = int(requests) + 8  # the driver's warm-up requests reach the server too
per = lambda name: f"{counts[name] / answered:.1f}" if name in counts else "n/a"
print(f"round {round_} {side} {binary}: {r['issued_per_second']:.1f} issued/s, "
      f"failures {r['failures']}, server CPU {r['server_cpu_ms_per_issued']:.3f} ms/issued, "
      f"driver CPU {r['driver_cpu_ms_per_request']:.3f} ms/request, "
      f"syscalls/request {per('raw_syscalls:sys_enter')}, "
      f"context switches/request {per('context-switches')}")
EOF
        kill "${pid[$side]}" 2>/dev/null || true
        wait "${pid[$side]}" 2>/dev/null || true
    done
done
