#!/usr/bin/env bash
# Gateway load benchmark: direct-to-upstream vs through Tollgate (support-desk
# plugin bound, ledger recording on), in both ledger durability modes, in one
# interleaved run, beside a floor: a pass-through proxy on the gateway's own
# stack (bench/floor-proxy) that shows what any proxy hop costs on this
# machine. Not part of CI. Loopback addresses only.
#
#   bench/gateway.sh            # full run (~6 min of measuring after the builds), writes
#                               # the ## Gateway section of BENCHMARKS.md
#   bench/gateway.sh --quick    # smoke run (~30 s), writes nothing but target/
#   bench/gateway.sh --no-write # full run, leaves BENCHMARKS.md alone
#   bench/gateway.sh --skip-build  # use the binaries already in target/
#
# What it does:
#  1. installs the load generator, oha, into target/bench-tools (skipped when
#     that version is already there);
#  2. builds the release binaries (tollgate, mock-upstream, floor-proxy) and
#     the support-desk plugin;
#  3. starts the mock upstream, the floor proxy and two gateways (durability
#     `sync` and `batched`, each with a fresh data dir), the floor and the
#     gateways pinned to core 1 and the mock (and later oha and the stream
#     timer) to core 0;
#  4. runs bench/gateway_bench.py: idle CPU, closed-loop throughput with CPU
#     per request, open-loop latency at a fixed rate, time to first token of
#     streams, ledger record count, peak RSS; every phase rotates direct /
#     floor / sync / batched round by round;
#  5. prints the summary and writes it into BENCHMARKS.md; stops everything it
#     started on exit.
#
# Environment: MOCK_ADDR, SYNC_ADDR, BATCHED_ADDR, FLOOR_ADDR (loopback
# host:port, defaults 127.0.0.1:19100/19181/19182/19183), OHA_VERSION
# (default 1.16.0).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=bench/common.sh
. bench/common.sh

QUICK=0
WRITE=1
BUILD=1
ARGS=("$@")
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1; WRITE=0 ;;
        --no-write) WRITE=0 ;;
        --skip-build) BUILD=0 ;;
        -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

MOCK_ADDR=${MOCK_ADDR:-127.0.0.1:19100}
SYNC_ADDR=${SYNC_ADDR:-127.0.0.1:19181}
BATCHED_ADDR=${BATCHED_ADDR:-127.0.0.1:19182}
FLOOR_ADDR=${FLOOR_ADDR:-127.0.0.1:19183}
OHA_VERSION=${OHA_VERSION:-1.16.0}
TOOLS=$ROOT/target/bench-tools
OHA=$TOOLS/bin/oha
RUN_DIR=$ROOT/target/bench-gateway/$(date +%Y%m%d-%H%M%S)
KEY=$BENCH_KEY
PLUGIN=$ROOT/$BENCH_PLUGIN

log() { printf '\n==> %s\n' "$*"; }
die() { echo "gateway.sh: $*" >&2; exit 1; }

for addr in "$MOCK_ADDR" "$SYNC_ADDR" "$BATCHED_ADDR" "$FLOOR_ADDR"; do
    case "$addr" in
        127.*:*|localhost:*) ;;
        *) die "$addr is not a loopback address; this benchmark only uses 127.0.0.0/8" ;;
    esac
done
[ "$(nproc)" -ge 2 ] || die "needs 2 cores (core 0: load generator and mock, core 1: gateway)"
for tool in taskset python3 curl sha256sum; do
    command -v "$tool" >/dev/null || die "$tool is required"
done

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_busy() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }

wait_http() { # url, what, pid
    for _ in $(seq 300); do
        curl -sf -o /dev/null "$1" && return 0
        kill -0 "$3" 2>/dev/null || die "$2 exited at start; see $RUN_DIR/$2.log"
        sleep 0.2
    done
    die "$2 did not answer $1 within 60 s"
}

log "load generator: oha $OHA_VERSION in $TOOLS"
if [ -x "$OHA" ] && "$OHA" --version 2>/dev/null | grep -q " $OHA_VERSION\$"; then
    echo "already installed"
else
    cargo install --locked oha --version "$OHA_VERSION" --root "$TOOLS"
fi

if [ "$BUILD" = 1 ]; then
    log "release binaries (shared target dir; may take a while on a busy machine)"
    cargo build --release -p tollgate -p mock-upstream -p floor-proxy
    log "support-desk plugin"
    cargo build --target wasm32-wasip2 --profile plugin -p support-desk --target-dir target/plugins
fi
for f in target/release/tollgate target/release/mock-upstream target/release/floor-proxy "$PLUGIN"; do
    [ -f "$f" ] || die "$f is missing (run without --skip-build)"
done

# The binaries and the plugin are linked into the run directory, so a build
# by someone else on the shared target dir cannot swap them mid-run.
mkdir -p "$RUN_DIR/bin"
echo "run directory: $RUN_DIR"
for f in target/release/tollgate target/release/mock-upstream target/release/floor-proxy "$PLUGIN"; do
    ln "$f" "$RUN_DIR/bin/" 2>/dev/null || cp "$f" "$RUN_DIR/bin/"
done
TOLLGATE=$RUN_DIR/bin/tollgate
MOCK=$RUN_DIR/bin/mock-upstream
FLOOR=$RUN_DIR/bin/floor-proxy
PLUGIN=$RUN_DIR/bin/$(basename "$PLUGIN")
for mode in sync batched; do
    if [ "$mode" = sync ]; then listen=$SYNC_ADDR; else listen=$BATCHED_ADDR; fi
    render_gateway_config "$listen" "$RUN_DIR/data-$mode" "$mode" "http://$MOCK_ADDR/v1" "$PLUGIN" \
        > "$RUN_DIR/gateway-$mode.toml"
    "$TOLLGATE" config check "$RUN_DIR/gateway-$mode.toml"
done

for addr in "$MOCK_ADDR" "$SYNC_ADDR" "$BATCHED_ADDR" "$FLOOR_ADDR"; do
    port_busy "$addr" && die "$addr is already in use (set MOCK_ADDR/SYNC_ADDR/BATCHED_ADDR/FLOOR_ADDR)"
done

log "starting the mock upstream on core 0, the floor proxy and the gateways on core 1"
taskset -c 0 "$MOCK" --listen "$MOCK_ADDR" > "$RUN_DIR/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
taskset -c 1 "$FLOOR" --listen "$FLOOR_ADDR" --upstream "http://$MOCK_ADDR" \
    > "$RUN_DIR/floor.log" 2>&1 &
FLOOR_PID=$!
PIDS+=("$FLOOR_PID")
taskset -c 1 "$TOLLGATE" serve --config "$RUN_DIR/gateway-sync.toml" \
    > "$RUN_DIR/gateway-sync.log" 2>&1 &
SYNC_PID=$!
PIDS+=("$SYNC_PID")
taskset -c 1 "$TOLLGATE" serve --config "$RUN_DIR/gateway-batched.toml" \
    > "$RUN_DIR/gateway-batched.log" 2>&1 &
BATCHED_PID=$!
PIDS+=("$BATCHED_PID")
wait_http "http://$MOCK_ADDR/v1/models" mock "$MOCK_PID"
wait_http "http://$FLOOR_ADDR/v1/models" floor "$FLOOR_PID"
wait_http "http://$SYNC_ADDR/readyz" gateway-sync "$SYNC_PID"
wait_http "http://$BATCHED_ADDR/readyz" gateway-batched "$BATCHED_PID"
for pid in "$MOCK_PID" "$FLOOR_PID" "$SYNC_PID" "$BATCHED_PID"; do
    echo "pid $pid: $(tr '\0' ' ' < "/proc/$pid/cmdline" | cut -c1-90) — $(taskset -cp "$pid" | sed 's/.*: //')"
done

# One request each way, to fail early on a wrong config.
body='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"ping"}],"max_tokens":4}'
for url in "http://$MOCK_ADDR/v1" "http://$FLOOR_ADDR/v1" "http://$SYNC_ADDR/v1" "http://$BATCHED_ADDR/v1"; do
    code=$(curl -s -o "$RUN_DIR/probe.json" -w '%{http_code}' "$url/chat/completions" \
        -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
        -H 'x-tollgate-tag-ticket: T-1' -d "$body")
    [ "$code" = 200 ] || die "$url/chat/completions answered $code: $(cat "$RUN_DIR/probe.json")"
done

if [ "$QUICK" = 1 ]; then
    PHASES=(--reps 1 --warmup-seconds 1 --tp-seconds 2 --lat-seconds 3 --ttft-n 50)
else
    PHASES=(--reps 3 --warmup-seconds 3 --tp-seconds 8 --lat-seconds 15 --ttft-n 400)
fi
BENCH_ARGS=()
[ "$WRITE" = 1 ] && BENCH_ARGS+=(--benchmarks "$ROOT/BENCHMARKS.md")
cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
mem_gib=$(awk '/MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)

SOURCE="$(git rev-parse --short HEAD)"
dirty=$(git diff --name-only HEAD -- host ledger plugin-sdk plugin-types plugins tests/mock-upstream bench/floor-proxy \
    Cargo.toml Cargo.lock | sed 's|/src/|/|; s|\.rs$||' | tr '\n' ' ' | sed 's/ $//')
[ -z "$dirty" ] || SOURCE+=" + uncommitted changes of the shared work tree in: $dirty"
[ "$BUILD" = 1 ] || SOURCE+=" (--skip-build: tollgate binary built $(date -u -r "$TOLLGATE" '+%Y-%m-%d %H:%M UTC'))"

log "measuring"
python3 bench/gateway_bench.py \
    --oha "$OHA" --out "$RUN_DIR" --key "$KEY" \
    --direct-url "http://$MOCK_ADDR/v1" \
    --floor-url "http://$FLOOR_ADDR/v1" \
    --sync-url "http://$SYNC_ADDR/v1" \
    --batched-url "http://$BATCHED_ADDR/v1" \
    --mock-pid "$MOCK_PID" --floor-pid "$FLOOR_PID" --sync-pid "$SYNC_PID" --batched-pid "$BATCHED_PID" --probes 1 \
    "${PHASES[@]}" "${BENCH_ARGS[@]}" \
    --command "bench/gateway.sh${ARGS[*]:+ ${ARGS[*]}}" \
    --machine "$(nproc) vCPU ($cpu_model), $mem_gib GiB, Linux $(uname -r), oha $OHA_VERSION" \
    --commit "$SOURCE"

echo "raw results: $RUN_DIR"
