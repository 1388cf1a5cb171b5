#!/usr/bin/env bash
# Installs what the Python SDK needs into a virtualenv, then runs the generated-code
# check, ruff, mypy --strict and pytest against a real engine, then pytest again
# against a two-node cluster (HERALD_TEST_CLUSTER=1: a nats-server and two engines,
# gRPC to one node, WebSocket clients to the other; see tests/conftest.py).
#
# The engine is not built here: tests use $HERALD_BIN (default target/release/herald,
# relative to the repository root); build it first with
#   cargo build --release -p herald
#
# Environment:
#   PYTHON      interpreter to make the virtualenv with (default python3)
#   VENV        virtualenv directory (default sdk-python/.venv)
#   HERALD_BIN  engine binary (see above)
#   HERALD_NATS_SERVER  nats-server binary for the cluster run (default: installed
#               by ../scripts/install-nats-server into ../.tools/bin)
#   Extra arguments are passed to pytest.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
venv="${VENV:-$here/.venv}"

step() { printf '\n== %s\n' "$*"; }

step "virtualenv $venv"
if [[ ! -x "$venv/bin/python" ]]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
py="$venv/bin/python"
"$py" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$py" -m pip install --quiet --disable-pip-version-check -e "$here[dev]"

step "generated stubs are up to date"
PYTHON="$py" "$here/scripts/check-gen.sh"

step "ruff"
"$py" -m ruff check . ../examples/python ../bench/sdk/python
"$py" -m ruff format --check . ../examples/python ../bench/sdk/python

step "mypy --strict"
"$py" -m mypy --strict

step "pytest"
"$py" -m pytest -q "$@"

step "pytest against a two-node cluster"
if [[ -z "${HERALD_NATS_SERVER:-}" ]]; then
    HERALD_NATS_SERVER="$("$here/../scripts/install-nats-server")"
fi
HERALD_NATS_SERVER="$HERALD_NATS_SERVER" HERALD_TEST_CLUSTER=1 "$py" -m pytest -q -rs "$@"
