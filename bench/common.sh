# Shared by bench/gateway.sh and bench/ab.sh (sourced, not run; paths are
# relative to the repository root, where both scripts run): the client
# key the benchmark gateways accept, the plugin they bind, and how their
# config is rendered from bench/gateway.toml.in.

BENCH_KEY=tg_live_bench_4f1c2a9e7d3b5c60
BENCH_PLUGIN=target/plugins/wasm32-wasip2/plugin/support_desk.wasm

# render_gateway_config LISTEN DATA_DIR DURABILITY UPSTREAM_URL PLUGIN_PATH > gateway.toml
render_gateway_config() {
    sed -e "s|@LISTEN@|$1|" \
        -e "s|@DATA_DIR@|$2|" \
        -e "s|@DURABILITY@|$3|" \
        -e "s|@UPSTREAM@|$4|" \
        -e "s|@PLUGIN@|$5|" \
        -e "s|@KEY_SHA256@|$(printf '%s' "$BENCH_KEY" | sha256sum | cut -d' ' -f1)|" \
        "$(dirname "${BASH_SOURCE[0]}")/gateway.toml.in"
}
