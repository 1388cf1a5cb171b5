#!/usr/bin/env bash
# Runs the ticker example: an engine (from $HERALD_BIN, unless START_ENGINE=0), the Go
# producer examples/go/ticker publishing a price to broadcast:global every 100 ms, and
# the page at http://127.0.0.1:${PORT:-8001}/ . Ctrl-C stops all.
#
# Environment:
#   HERALD_BIN        engine binary (default target/release/herald from the repository root)
#   START_ENGINE=0    use an engine that is already running instead of starting one
#   HERALD_WS_ADDR    the engine's WebSocket address (default 127.0.0.1:8080)
#   HERALD_GRPC_ADDR  the engine's gRPC address (default 127.0.0.1:50051)
#   PORT              the page's HTTP port (default 8001)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export HERALD_WS_ADDR="${HERALD_WS_ADDR:-127.0.0.1:8080}"
export HERALD_GRPC_ADDR="${HERALD_GRPC_ADDR:-127.0.0.1:50051}"
port="${PORT:-8001}"

# The page loads the JavaScript SDK bundle.
if [[ ! -f "$root/sdk-js/dist/herald.min.js" ]]; then
    (cd "$root/sdk-js" && npm ci --ignore-scripts --no-audit --no-fund && npm run --silent build)
fi

# The producer, built from examples/go.
bin_dir="$(mktemp -d)"
(cd "$root/examples/go" && go build -o "$bin_dir/ticker" ./ticker)

pids=()
cleanup() {
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$bin_dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ "${START_ENGINE:-1}" != 0 ]]; then
    bin="${HERALD_BIN:-$root/target/release/herald}"
    [[ -x "$bin" ]] || { echo "no engine binary at $bin: run cargo build --release -p herald, or set HERALD_BIN" >&2; exit 1; }
    "$bin" --log warn &  # reads HERALD_WS_ADDR and HERALD_GRPC_ADDR
    pids+=($!)
fi

# The ticker keeps going while the engine is away (it logs and retries on the next tick).
"$bin_dir/ticker" -addr "$HERALD_GRPC_ADDR" -topic broadcast:global -interval 100ms >/dev/null &
pids+=($!)

python3 "$here/serve.py" --listen "127.0.0.1:$port" --ws-port "${HERALD_WS_ADDR##*:}" --topic broadcast:global &
pids+=($!)

# Stop everything as soon as one of them stops.
wait -n
