#!/usr/bin/env bash
# Regenerates the herald.v1 Python stubs (messages, service and their .pyi) from
# proto/herald/v1/herald.proto into src/herald/v1/ (or into the directory given as
# the first argument, which receives herald/v1/...).
#
# Needs the pinned generators from the [dev] extra (grpcio-tools ships its own
# protoc, so no system protoc is required):
#   pip install -e './sdk-python[dev]'
# PYTHON selects the interpreter (default: python3 on PATH).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
proto_root="$(cd "$here/../proto" && pwd)"
out="${1:-$here/src}"
python="${PYTHON:-python3}"

# The generated code depends on the generator versions; keep them pinned so the
# committed files are reproducible (see the [dev] extra in pyproject.toml).
want_grpc_tools="1.85.1"
want_mypy_protobuf="5.1.0"
have="$("$python" - <<'PY'
from importlib.metadata import version
print(version("grpcio-tools"), version("mypy-protobuf"))
PY
)"
if [[ "$have" != "$want_grpc_tools $want_mypy_protobuf" ]]; then
    echo "gen.sh: need grpcio-tools==$want_grpc_tools and mypy-protobuf==$want_mypy_protobuf, found: $have" >&2
    exit 1
fi

bindir="$("$python" -c 'import os, sys; print(os.path.dirname(sys.executable))')"
mkdir -p "$out/herald/v1"
"$python" -m grpc_tools.protoc \
    -I "$proto_root" \
    --plugin=protoc-gen-mypy="$bindir/protoc-gen-mypy" \
    --plugin=protoc-gen-mypy_grpc="$bindir/protoc-gen-mypy_grpc" \
    --python_out="$out" \
    --grpc_python_out="$out" \
    --mypy_out="$out" \
    --mypy_grpc_out="$out" \
    herald/v1/herald.proto
