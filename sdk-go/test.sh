#!/usr/bin/env bash
# The Go SDK's whole check, self-contained on a machine with Go 1.26 and
# Python 3 with pip:
#   1. installs the pinned tools (protoc via grpcio-tools, protoc-gen-go,
#      protoc-gen-go-grpc, grpc-health-probe) into sdk-go/.tools,
#   2. checks that the committed generated code matches the proto,
#   3. gofmt, go vet for the SDK, examples/go, tests/e2e/heraldctl and the
#      benchmark driver bench/sdk/go, and builds them,
#   4. go test -race for the SDK (README.md included: readme_test.go) and the
#      examples against a real engine,
#   5. go test -race for the SDK again against a two-node cluster
#      (HERALD_TEST_CLUSTER=1: a nats-server and two engines, SDK calls to one
#      node, WebSocket clients to the other; see engine_test.go). The
#      nats-server is $HERALD_NATS_SERVER, else the one
#      ../scripts/install-nats-server installs.
#
# It does not build the engine: set HERALD_BIN to the engine binary, or build
# ../target/release/herald first (cargo build --release -p herald).
set -euo pipefail

SDK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
EXAMPLES_DIR="$(cd "$SDK_DIR/../examples/go" && pwd)"
E2E_DIR="$(cd "$SDK_DIR/../tests/e2e" && pwd)"
BENCH_DIR="$(cd "$SDK_DIR/../bench/sdk/go" && pwd)"
cd "$SDK_DIR"

step() { printf '\n==> %s\n' "$*"; }

step "tools"
scripts/tools.sh
export HEALTH_PROBE="${HEALTH_PROBE:-$SDK_DIR/.tools/bin/grpc-health-probe}"

step "go modules"
go mod download
(cd "$EXAMPLES_DIR" && go mod download)
(cd "$E2E_DIR" && go mod download)
(cd "$BENCH_DIR" && go mod download)

step "generated code"
scripts/check-gen.sh

step "gofmt"
unformatted="$(gofmt -l "$SDK_DIR" "$EXAMPLES_DIR" "$E2E_DIR/heraldctl" "$BENCH_DIR" | grep -v '/\.tools/' || true)"
if [[ -n "$unformatted" ]]; then
  echo "not gofmt-ed:" >&2
  echo "$unformatted" >&2
  exit 1
fi

step "go vet"
go vet ./...
(cd "$EXAMPLES_DIR" && go vet ./... && go build -o /dev/null ./...)
(cd "$E2E_DIR" && go vet ./heraldctl && go build -o /dev/null ./heraldctl)
(cd "$BENCH_DIR" && go vet ./... && go build -o /dev/null .)

step "engine"
HERALD_BIN="${HERALD_BIN:-$SDK_DIR/../target/release/herald}"
if [[ ! -x "$HERALD_BIN" ]]; then
  echo "no engine binary at $HERALD_BIN: build it with 'cargo build --release -p herald' at the repository root, or set HERALD_BIN" >&2
  exit 1
fi
export HERALD_BIN="$(cd "$(dirname "$HERALD_BIN")" && pwd)/$(basename "$HERALD_BIN")"
echo "using $HERALD_BIN"

step "go test -race"
# shellcheck disable=SC2086 # GO_TEST_FLAGS is a list of flags
go test -race -count=1 -timeout 10m ${GO_TEST_FLAGS:-} ./...
# shellcheck disable=SC2086
(cd "$EXAMPLES_DIR" && go test -race -count=1 -timeout 5m ${GO_TEST_FLAGS:-} ./...)

step "go test -race against a two-node cluster"
if [[ -z "${HERALD_NATS_SERVER:-}" ]]; then
  HERALD_NATS_SERVER="$("$SDK_DIR/../scripts/install-nats-server")"
fi
# shellcheck disable=SC2086
HERALD_NATS_SERVER="$HERALD_NATS_SERVER" HERALD_TEST_CLUSTER=1 go test -race -count=1 -timeout 10m ${GO_TEST_FLAGS:-} .
