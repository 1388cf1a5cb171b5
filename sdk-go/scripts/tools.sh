#!/usr/bin/env bash
# Installs the pinned code-generation and test tools into sdk-go/.tools (not
# committed). Safe to run again: tools already at the right version are kept.
# Needs Go and Python 3 with pip; everything else comes from the Go module proxy
# and PyPI.
set -euo pipefail

SDK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${HERALD_GO_TOOLS:-$SDK_DIR/.tools}"

PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2
GRPC_HEALTH_PROBE_VERSION=v0.4.61
GRPCIO_TOOLS_VERSION=1.85.1

mkdir -p "$TOOLS_DIR/bin"
stamp="$TOOLS_DIR/versions"
want="protoc-gen-go=$PROTOC_GEN_GO_VERSION protoc-gen-go-grpc=$PROTOC_GEN_GO_GRPC_VERSION grpc-health-probe=$GRPC_HEALTH_PROBE_VERSION grpcio-tools=$GRPCIO_TOOLS_VERSION"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" \
      && -x "$TOOLS_DIR/bin/protoc-gen-go" && -x "$TOOLS_DIR/bin/protoc-gen-go-grpc" \
      && -x "$TOOLS_DIR/bin/grpc-health-probe" && -x "$TOOLS_DIR/venv/bin/python" ]]; then
  exit 0
fi

echo "tools: installing into $TOOLS_DIR" >&2
GOBIN="$TOOLS_DIR/bin" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
GOBIN="$TOOLS_DIR/bin" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
GOBIN="$TOOLS_DIR/bin" go install "github.com/grpc-ecosystem/grpc-health-probe@$GRPC_HEALTH_PROBE_VERSION"

if [[ ! -x "$TOOLS_DIR/venv/bin/python" ]]; then
  python3 -m venv "$TOOLS_DIR/venv"
fi
"$TOOLS_DIR/venv/bin/python" -m pip install --quiet --disable-pip-version-check "grpcio-tools==$GRPCIO_TOOLS_VERSION"

echo "$want" > "$stamp"
