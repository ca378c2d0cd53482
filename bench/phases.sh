#!/usr/bin/env bash
# The whole OTA enrollment, stage by stage: phase 1, phase 2, SCEP PKCSReq and phase 3 against
# otad's release build, each beside its RSA-2048 bound, then otad's memory, the state size per
# 1,000 devices and the cost as the inventory grows. Loopback only; bounded counts; nothing is
# asserted. See bench/README.md.
#
#   bench/phases.sh                         # 500 devices a level at concurrency 1, 8, 64,
#                                           # then grow to 10,000 devices (CURVE's default)
#   REQUESTS=100 LEVELS=1,8 CURVE= bench/phases.sh   # smaller, and no curve
#   CURVE=1000,2000 bench/phases.sh         # a shorter curve
#   KEEP_WORK=1 bench/phases.sh             # keep the state and log
#   CONFIGURE='http.workers=16' bench/phases.sh   # other settings (bench/configure.py)
#
# Needs a Rust toolchain and python3.
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

REQUESTS=${REQUESTS:-500}
LEVELS=${LEVELS:-1,8,64}
CURVE=${CURVE-1000,2000,5000,10000}
CURVE_CONCURRENCY=${CURVE_CONCURRENCY:-8}
SIGNATURES=${SIGNATURES:-5000}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OTAD=${OTAD:-$TARGET/release/otad}
DRIVER=$TARGET/release/otad-bench

echo "bench: building otad and otad-bench (release)" >&2
cargo build --release --locked --bin otad
cargo build --release --manifest-path bench/Cargo.toml --target-dir "$TARGET"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/otad-phases.XXXXXX")
OTAD_PID=
cleanup() {
    if [[ -n $OTAD_PID ]]; then
        kill "$OTAD_PID" 2>/dev/null || true
        wait "$OTAD_PID" 2>/dev/null || true
    fi
    if [[ -n "${KEEP_WORK:-}" ]]; then
        echo "bench: kept $WORK (state and log)" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

PORT=$(free_port)
URL="http://127.0.0.1:$PORT"
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# A fresh state that trusts a simulated device CA (what `otad simulate` uses), everything
# else at its defaults: one-time challenges, the MDM profile in phase 3, events logged.
"$DRIVER" device-ca --dir "$WORK/device-ca"
"$OTAD" init --state "$WORK/otad" --url "$URL" >/dev/null
python3 bench/configure.py "$WORK/otad/otad.toml" "http.listen=\"127.0.0.1:$PORT\"" \
    "ota.extra_device_ca=[\"$WORK/device-ca/device-ca.pem\"]" ${CONFIGURE:-}
"$OTAD" serve --config "$WORK/otad/otad.toml" 2>"$WORK/otad.log" &
OTAD_PID=$!
wait_port "$PORT"
# Idle RSS is read by the driver before its first request, after a second of rest.
sleep 1

echo "bench: $REQUESTS devices a level at concurrency $LEVELS; curve to ${CURVE:-none}" >&2
"$DRIVER" phases --url "$URL" --device-ca "$WORK/device-ca" --state "$WORK/otad" \
    --server-pid "$OTAD_PID" --requests "$REQUESTS" --concurrency "$LEVELS" \
    ${CURVE:+--curve "$CURVE" --curve-concurrency "$CURVE_CONCURRENCY"} |
    tee -a "$RESULTS"
grep -E ' WARN ' "$WORK/otad.log" | sed -E 's/^[^ ]* //; s/remote=[^ ]*//' | cut -c 1-160 |
    sort | uniq -c | sort -rn | head -5 | sed 's|^|bench: otad.log:|' >&2 || true

# The crypto bound, after the load (the server idle): RSA-2048 signatures on 1 and 2 threads.
echo "bench: RSA-2048 signatures, $SIGNATURES per thread" >&2
"$DRIVER" rsa --signatures "$SIGNATURES" --threads 1,2 | tee -a "$RESULTS"

python3 bench/phases_summary.py "$RESULTS" "$(df -T "$WORK" | awk 'NR == 2 { print $2 }')" \
    "$LOAD_BEFORE"
