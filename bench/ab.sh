#!/usr/bin/env bash
# Alternated A/B pairs of two gateway binaries, for a change too small for
# bench/gateway.sh to tell from this machine's noise. Each run starts a fresh
# gateway (its own data dir) pinned to core 1, with the mock upstream and oha
# on core 0, loads it for SECONDS and stops it; the order within a pair
# alternates, so a slow phase of the machine hits both binaries alike. Not
# part of CI. Loopback addresses only.
#
#   bench/ab.sh BINARY_A BINARY_B            # 4 pairs, open loop at 200 req/s
#   PAIRS=8 RATE=200 SECONDS_PER_RUN=8 DURABILITY=batched bench/ab.sh A B
#   RATE=closed bench/ab.sh A B             # closed loop, -c 64: CPU per request, req/s
#
# Prints one line per run: p50, p99 (open loop, --latency-correction), the
# gateway's CPU per request, context switches per request and peak RSS.
# Needs what bench/gateway.sh builds: target/release/mock-upstream, the
# support-desk plugin and oha in target/bench-tools (run gateway.sh once).
set -euo pipefail
[ $# -eq 2 ] || { sed -n '2,16p' "$0"; exit 2; }
# Resolved before the cd below, so relative paths mean what the caller meant.
A=$(realpath "$1")
B=$(realpath "$2")
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=bench/common.sh
. bench/common.sh

PAIRS=${PAIRS:-4}
RATE=${RATE:-200}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
DURABILITY=${DURABILITY:-batched}
MOCK_ADDR=${MOCK_ADDR:-127.0.0.1:19100}
GW_ADDR=${GW_ADDR:-127.0.0.1:19185}
OHA=$ROOT/target/bench-tools/bin/oha
MOCK_BIN=$ROOT/target/release/mock-upstream
PLUGIN=$ROOT/$BENCH_PLUGIN
KEY=$BENCH_KEY

die() { echo "ab.sh: $*" >&2; exit 1; }
for f in "$A" "$B" "$OHA" "$MOCK_BIN" "$PLUGIN"; do
    [ -x "$f" ] || [ -f "$f" ] || die "$f is missing (bench/gateway.sh builds what is needed)"
done
[ "$(nproc)" -ge 2 ] || die "needs 2 cores"
case "$DURABILITY" in sync|batched) ;; *) die "DURABILITY must be sync or batched" ;; esac

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-ab.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

taskset -c 0 "$MOCK_BIN" --listen "$MOCK_ADDR" > "$WORK/mock.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do curl -sf -o /dev/null "http://$MOCK_ADDR/v1/models" && break; sleep 0.1; done

body='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello! How do I reset the password of my account?"}],"max_tokens":32}'
hdrs=(-H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -H 'x-tollgate-tag-ticket: T-1')

one_run() { # label binary
    local label=$1 bin=$2 run=$WORK/run-$RANDOM
    mkdir -p "$run"
    render_gateway_config "$GW_ADDR" "$run/data" "$DURABILITY" "http://$MOCK_ADDR/v1" "$PLUGIN" \
        > "$run/gateway.toml"
    taskset -c 1 "$bin" serve --config "$run/gateway.toml" > "$run/gateway.log" 2>&1 &
    local gp=$!
    for _ in $(seq 100); do curl -sf -o /dev/null "http://$GW_ADDR/readyz" && break; sleep 0.1; done
    kill -0 "$gp" 2>/dev/null || die "$label did not start; see $run/gateway.log"
    # Warm-up: the plugin cache, the pool's slots, the connections.
    taskset -c 0 "$OHA" -n 1000 -c 8 --no-tui -m POST "${hdrs[@]}" -d "$body" \
        "http://$GW_ADDR/v1/chat/completions" > /dev/null
    local ctx0 cpu0 ctx1 cpu1 load
    ctx0=$(cat /proc/"$gp"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}')
    cpu0=$(awk '{print $14 + $15}' /proc/"$gp"/stat)
    if [ "$RATE" = closed ]; then
        load=(-c 64 -z "${SECONDS_PER_RUN}s")
    else
        load=(-c 16 -q "$RATE" -z "${SECONDS_PER_RUN}s" --latency-correction)
    fi
    taskset -c 0 "$OHA" "${load[@]}" --no-tui --output-format json -m POST "${hdrs[@]}" -d "$body" \
        "http://$GW_ADDR/v1/chat/completions" > "$run/oha.json"
    ctx1=$(cat /proc/"$gp"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}')
    cpu1=$(awk '{print $14 + $15}' /proc/"$gp"/stat)
    local hwm
    hwm=$(awk '/VmHWM/ {print $2}' /proc/"$gp"/status)
    kill "$gp"
    wait "$gp" 2>/dev/null || true
    python3 - "$run/oha.json" "$label" "$((cpu1 - cpu0))" "$((ctx1 - ctx0))" "$hwm" <<'PY'
import json, os, sys
path, label, ticks, ctx, hwm = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
doc = json.load(open(path))
codes = doc.get("statusCodeDistribution", {})
n = sum(codes.values()) or 1
# `-z` ends a closed loop by aborting the requests in flight; those are not errors.
errors = {k: v for k, v in doc.get("errorDistribution", {}).items() if "deadline" not in k}
bad = n - codes.get("200", 0) + sum(errors.values())
lp = doc["latencyPercentiles"]
print(f"{label}  p50 {lp['p50'] * 1000:7.3f} ms  p99 {lp['p99'] * 1000:7.3f} ms  "
      f"req/s {doc['summary']['requestsPerSec']:8.0f}  cpu/req {ticks / os.sysconf('SC_CLK_TCK') * 1000 / n:6.3f} ms  "
      f"ctx/req {ctx / n:5.1f}  peak {hwm / 1024:5.1f} MB  non-200 {bad}", flush=True)
PY
}

echo "A = $A"
echo "B = $B"
echo "$PAIRS pairs, rate $RATE, ${SECONDS_PER_RUN}s per run, durability $DURABILITY"
for i in $(seq "$PAIRS"); do
    if [ $((i % 2)) = 1 ]; then
        one_run "pair $i A" "$A"; one_run "pair $i B" "$B"
    else
        one_run "pair $i B" "$B"; one_run "pair $i A" "$A"
    fi
done
