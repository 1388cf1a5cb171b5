#!/usr/bin/env bash
# Installs the pinned dev dependencies (npm ci), typechecks, builds (tsc + the esbuild
# bundle) and runs the tests with node's test runner against the real engine binary:
# $HERALD_BIN, default target/release/herald relative to the repository root (build
# it first with `cargo build --release -p herald`). Extra arguments go to node --test.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$here"
export HERALD_BIN="${HERALD_BIN:-$root/target/release/herald}"
[[ -x "$HERALD_BIN" ]] || { echo "no engine binary at $HERALD_BIN; run: cargo build --release -p herald" >&2; exit 1; }

step() { printf '\n== %s\n' "$*"; }

step "npm ci"
npm ci --no-audit --no-fund --ignore-scripts

step "typecheck"
npm run --silent typecheck

step "build"
npm run --silent build
node scripts/size.mjs

step "node --test"
node --test --test-concurrency=1 "$@" test/*.test.mjs
