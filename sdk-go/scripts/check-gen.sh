#!/usr/bin/env bash
# Fails when the committed code in sdk-go/gen differs from what gen.sh produces
# from the current proto files.
set -euo pipefail

SDK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

"$SDK_DIR/scripts/gen.sh" "$tmp"

if ! diff -ru "$SDK_DIR/gen" "$tmp"; then
  echo "check-gen: sdk-go/gen is out of date; run sdk-go/scripts/gen.sh and commit the result" >&2
  exit 1
fi
echo "check-gen: sdk-go/gen is up to date"
