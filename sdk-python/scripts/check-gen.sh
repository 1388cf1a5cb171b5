#!/usr/bin/env bash
# Fails when the committed stubs in src/herald/v1/ differ from what gen.sh produces
# from proto/ right now (run scripts/gen.sh and commit the result to fix).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

if ! "$here/scripts/gen.sh" "$tmp" >"$tmp/gen.log" 2>&1; then
    cat "$tmp/gen.log" >&2
    exit 1
fi
status=0
for f in herald_pb2.py herald_pb2.pyi herald_pb2_grpc.py herald_pb2_grpc.pyi; do
    if ! diff -u "$here/src/herald/v1/$f" "$tmp/herald/v1/$f"; then
        echo "check-gen: src/herald/v1/$f is out of date; run sdk-python/scripts/gen.sh" >&2
        status=1
    fi
done
if [[ $status -eq 0 ]]; then
    echo "check-gen: generated stubs are up to date"
fi
exit $status
