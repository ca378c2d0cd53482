#!/usr/bin/env bash
# SCEP PKCSReq issuance benchmark: otad (release build) and micromdm's scepserver side by side,
# driven by the same request generator (bench/src/main.rs, otad's own client code), beside the
# machine's RSA-2048 bound, all in one run. Loopback only; bounded counts; nothing is asserted.
#
#   bench/scep.sh                      # N=500 requests at concurrency 1, 8 and 64
#   REQUESTS=50 LEVELS=1,8 bench/scep.sh
#   KEEP_WORK=1 bench/scep.sh          # keep the servers' states and logs afterwards
#   SCEPSERVER=0 bench/scep.sh         # otad alone
#   CONNECTIONS=close bench/scep.sh    # a new connection per request (default: reuse)
#
# Needs: a Rust toolchain, python3, and Debian's `scep` package for scepserver (without it,
# otad is measured alone). scepserver listens on every interface (`-port` takes a port
# only), so the measurement runs in a private network namespace (`unshare --net`, root)
# where loopback is the only interface; where that is impossible scepserver is skipped.
set -euo pipefail
# Settings come from the environment only: any argument prints this header and runs nothing.
if [[ $# -gt 0 ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    [[ $1 == --help || $1 == -h ]] && exit 0
    exit 2
fi
cd "$(dirname "$0")/.."
ROOT=$PWD
source bench/lib.sh

# 500 a level: server CPU is read from /proc in 10 ms ticks, so a level needs about a second
# of CPU time to give CPU per issuance to about 2%.
REQUESTS=${REQUESTS:-500}
LEVELS=${LEVELS:-1,8,64}
SIGNATURES=${SIGNATURES:-5000}
# reuse: each posting thread keeps its connection (HTTP keep-alive, as SCEP clients do);
# close: one connection per request. Both servers are driven the same way.
CONNECTIONS=${CONNECTIONS:-reuse}
CHALLENGE=${CHALLENGE:-bench-static-challenge}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OTAD=${OTAD:-$TARGET/release/otad}     # OTAD=path/to/otad measures another build
DRIVER=$TARGET/release/otad-bench

# Stage 1, in the ordinary namespace: build (cargo may need the network), then re-run the
# script in a private network namespace for the measurement.
if [[ -z "${OTAD_BENCH_STAGE:-}" ]]; then
    echo "bench: building otad and otad-bench (release)" >&2
    cargo build --release --locked --bin otad
    cargo build --release --manifest-path bench/Cargo.toml --target-dir "$TARGET"
    if unshare --net true 2>/dev/null; then
        exec env OTAD_BENCH_STAGE=netns unshare --net "$ROOT/bench/scep.sh" "$@"
    fi
    echo "bench: no private network namespace (unshare --net needs root): scepserver," \
        "which listens on every interface, is skipped" >&2
    export OTAD_BENCH_STAGE=shared
fi
if [[ $OTAD_BENCH_STAGE == netns ]]; then
    ip link set lo up
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/otad-bench.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n "${KEEP_WORK:-}" ]]; then
        echo "bench: kept $WORK (server states and logs)" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

RESULTS=$WORK/results.jsonl
: >"$RESULTS"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# otad: a fresh state (RSA-2048 CA and RA from `otad init`), the static SCEP challenge.
OTAD_PORT=$(free_port)
"$OTAD" init --state "$WORK/otad" --url "http://127.0.0.1:$OTAD_PORT" >/dev/null
python3 bench/configure.py "$WORK/otad/otad.toml" "http.listen=\"127.0.0.1:$OTAD_PORT\"" \
    "scep.challenge=\"$CHALLENGE\""
"$OTAD" serve --config "$WORK/otad/otad.toml" 2>"$WORK/otad.log" &
OTAD_PID=$!
PIDS+=("$OTAD_PID")
wait_port "$OTAD_PORT"

echo "bench: otad, $REQUESTS requests at concurrency $LEVELS" >&2
"$DRIVER" load --label otad --url "http://127.0.0.1:$OTAD_PORT/scep" --challenge "$CHALLENGE" \
    --requests "$REQUESTS" --concurrency "$LEVELS" --server-pid "$OTAD_PID" \
    --connections "$CONNECTIONS" |
    tee -a "$RESULTS"

# scepserver: its own depot (`scepserver ca -init`, RSA-2048), the same static challenge.
SCEPSERVER_VERSION=absent
if [[ ${SCEPSERVER:-1} == 0 ]]; then
    echo "bench: SCEPSERVER=0: scepserver skipped" >&2
elif [[ $OTAD_BENCH_STAGE == netns ]] && command -v scepserver >/dev/null; then
    SCEPSERVER_VERSION=$(scepserver -version 2>&1 | head -1)
    SCEP_PORT=$(free_port)
    (cd "$WORK" && scepserver ca -init -keySize 2048 -depot depot >/dev/null 2>&1)
    scepserver -depot "$WORK/depot" -port "$SCEP_PORT" -challenge "$CHALLENGE" \
        -allowrenew 0 2>"$WORK/scepserver.log" &
    SCEP_PID=$!
    PIDS+=("$SCEP_PID")
    wait_port "$SCEP_PORT"
    echo "bench: scepserver, $REQUESTS requests at concurrency $LEVELS" >&2
    "$DRIVER" load --label scepserver --url "http://127.0.0.1:$SCEP_PORT/scep" \
        --challenge "$CHALLENGE" --requests "$REQUESTS" --concurrency "$LEVELS" \
        --server-pid "$SCEP_PID" --connections "$CONNECTIONS" |
        tee -a "$RESULTS"
elif ! command -v scepserver >/dev/null; then
    echo "bench: scepserver is not installed (apt-get install scep): skipped" >&2
fi

# Why a server refused what it refused, in its own words (otad: "WARN  scep:" lines; scepserver:
# msg="failed ..." lines), counted.
for log in "$WORK/otad.log" "$WORK/scepserver.log"; do
    [[ -f $log ]] || continue
    grep -E ' WARN  scep|msg="failed' "$log" | sed -E 's/^[^ ]*(ts=[^ ]* )?//; s/remote=[^ ]*//' |
        sort | uniq -c | sort -rn | head -5 | sed "s|^|bench: $(basename "$log"):|" >&2 || true
done

echo "bench: RSA-2048 signatures, $SIGNATURES per thread" >&2
"$DRIVER" rsa --signatures "$SIGNATURES" --threads 1,2 | tee -a "$RESULTS"

# The summary table.
python3 bench/summary.py "$RESULTS" "$SCEPSERVER_VERSION" \
    "$(df -T "$WORK" | awk 'NR == 2 { print $2 }')" "$LOAD_BEFORE"
