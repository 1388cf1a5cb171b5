#!/usr/bin/env bash
# Runs the chat example: an engine (from $HERALD_BIN, unless START_ENGINE=0), the
# Python backend, and the page at http://127.0.0.1:${PORT:-8000}/ . Ctrl-C stops all.
#
# Environment:
#   HERALD_BIN        engine binary (default target/release/herald from the repository root)
#   START_ENGINE=0    use an engine that is already running instead of starting one
#   HERALD_WS_ADDR    the engine's WebSocket address (default 127.0.0.1:8080)
#   HERALD_GRPC_ADDR  the engine's gRPC address (default 127.0.0.1:50051)
#   PORT              the page's HTTP port (default 8000)
#   VENV              virtualenv for the backend (default examples/chat/.venv)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export HERALD_WS_ADDR="${HERALD_WS_ADDR:-127.0.0.1:8080}"
export HERALD_GRPC_ADDR="${HERALD_GRPC_ADDR:-127.0.0.1:50051}"
port="${PORT:-8000}"

# The page loads the JavaScript SDK bundle.
if [[ ! -f "$root/sdk-js/dist/herald.min.js" ]]; then
    (cd "$root/sdk-js" && npm ci --ignore-scripts --no-audit --no-fund && npm run --silent build)
fi

# The backend uses the Python SDK.
venv="${VENV:-$here/.venv}"
[[ -x "$venv/bin/python" ]] || "${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$root/sdk-python"

pids=()
cleanup() {
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
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

"$venv/bin/python" "$here/server.py" --listen "127.0.0.1:$port" --grpc "$HERALD_GRPC_ADDR" \
    --ws-port "${HERALD_WS_ADDR##*:}" &
pids+=($!)

# Stop everything as soon as one of them stops.
wait -n
