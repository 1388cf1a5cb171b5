#!/usr/bin/env bash
# End-to-end tests across the pieces: the real engine binary, the Python SDK, the
# Go SDK (through tests/e2e/heraldctl and examples/go/ticker) and real WebSocket
# clients, in one scenario each. Installs what it needs: a virtualenv with the
# Python SDK and the test tools, and the Go modules.
#
# Then the cluster tests (tests/cluster): real nats-server processes
# ($HERALD_NATS_SERVER, installed by scripts/install-nats-server when unset) and
# several engine nodes joined to them.
#
# Extra arguments are passed to both pytest runs.
#
# Uses $HERALD_BIN (default target/release/herald); build it first with
#   cargo build --release -p herald
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
export HERALD_BIN="${HERALD_BIN:-$root/target/release/herald}"
[[ -x "$HERALD_BIN" ]] || { echo "no engine binary at $HERALD_BIN; run: cargo build --release -p herald" >&2; exit 1; }

venv="${E2E_VENV:-$here/.venv}"
if [[ ! -x "$venv/bin/python" ]]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$root/sdk-python" -r "$here/requirements.txt"

bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT
(cd "$here/e2e" && go build -o "$bin/heraldctl" ./heraldctl)
(cd "$root/examples/go" && go build -o "$bin/ticker" ./ticker)
export HERALDCTL="$bin/heraldctl" TICKER="$bin/ticker"

if [[ -z "${HERALD_NATS_SERVER:-}" ]]; then
    HERALD_NATS_SERVER="$("$root/scripts/install-nats-server")"
fi
export HERALD_NATS_SERVER

printf '\n== end-to-end (one node)\n'
(cd "$here/e2e" && "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@")
printf '\n== end-to-end (cluster over NATS)\n'
(cd "$here/cluster" && "$venv/bin/python" -m pytest -q -p no:cacheprovider -rs "$@")
