#!/usr/bin/env bash
# Regenerates the Go code for proto/herald/v1/herald.proto into sdk-go/gen, or
# into the directory given as the first argument (used by check-gen.sh).
set -euo pipefail

SDK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROTO_DIR="$(cd "$SDK_DIR/../proto" && pwd)"
TOOLS_DIR="${HERALD_GO_TOOLS:-$SDK_DIR/.tools}"
OUT_DIR="${1:-$SDK_DIR/gen}"

"$SDK_DIR/scripts/tools.sh"

mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"

cd "$PROTO_DIR"
"$TOOLS_DIR/venv/bin/python" -m grpc_tools.protoc \
  --proto_path=. \
  --plugin=protoc-gen-go="$TOOLS_DIR/bin/protoc-gen-go" \
  --plugin=protoc-gen-go-grpc="$TOOLS_DIR/bin/protoc-gen-go-grpc" \
  --go_out="$OUT_DIR" --go_opt=paths=source_relative \
  --go-grpc_out="$OUT_DIR" --go-grpc_opt=paths=source_relative \
  herald/v1/herald.proto
