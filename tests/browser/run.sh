#!/usr/bin/env bash
# Headless Chromium tests of the example pages (examples/chat, examples/ticker,
# examples/notifications), each started with its own run.sh against a real engine.
# Installs what it needs: Debian's chromium (apt-get, when missing), the pinned npm
# packages (playwright-core, used only to drive that chromium: no browser is
# downloaded), sdk-js and its bundle; the examples' run.sh install their backends
# (virtualenvs with the Python SDK, the Go producer). Screenshots: tests/browser/output/.
#
# Uses $HERALD_BIN (default target/release/herald); build it first with
#   cargo build --release -p herald
# Extra arguments go to node --test.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export HERALD_BIN="${HERALD_BIN:-$root/target/release/herald}"
[[ -x "$HERALD_BIN" ]] || { echo "no engine binary at $HERALD_BIN; run: cargo build --release -p herald" >&2; exit 1; }

step() { printf '\n== %s\n' "$*"; }

if [[ -z "${CHROMIUM:-}" ]]; then
    if ! command -v chromium >/dev/null; then
        step "apt-get install chromium"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
    fi
    CHROMIUM="$(command -v chromium)"
fi
export CHROMIUM
"$CHROMIUM" --version

export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 PUPPETEER_SKIP_DOWNLOAD=1

step "sdk-js: npm ci and build (the pages load its bundle; the tests use its engine helper)"
(cd "$root/sdk-js" && npm ci --ignore-scripts --no-audit --no-fund && npm run --silent build)

step "tests/browser: npm ci"
(cd "$here" && npm ci --ignore-scripts --no-audit --no-fund)

step "node --test"
mkdir -p "$here/output"
cd "$here"
node --test --test-concurrency=1 "$@" browser.test.mjs
