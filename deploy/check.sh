#!/usr/bin/env bash
# Checks the deployment files in deploy/: the Dockerfile (parsed and linted), the
# compose file (Compose specification schema), the Kubernetes manifests (Kubernetes
# schemas, strict), the systemd unit (systemd-analyze verify and security), and the
# engine itself run with the shipped configuration and probed the way the image,
# compose and Kubernetes probe it. deploy/check.py says what each check covers.
#
# Installs what it needs itself: the pinned Python tools of deploy/requirements.txt
# into deploy/.venv and, when no grpc-health-probe is at hand ($HEALTH_PROBE or the
# Go SDK's sdk-go/.tools), the version the image ships into deploy/.tools with Go,
# and, when no nats-server is at hand ($HERALD_NATS_SERVER or .tools/bin), the pinned
# one with scripts/install-nats-server (Go too).
# Needs Python 3.11+, the engine binary ($HERALD_BIN, default target/release/herald)
# and, for the unit file, systemd-analyze (Debian package systemd).
# No Docker engine is needed: the image is not built here.
set -euo pipefail

DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$DEPLOY/.venv"

if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
fi
stamp="$VENV/requirements.installed"
if ! cmp -s "$DEPLOY/requirements.txt" "$stamp"; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$DEPLOY/requirements.txt"
  cp "$DEPLOY/requirements.txt" "$stamp"
fi

probe_version="$(sed -n 's/^ARG GRPC_HEALTH_PROBE_VERSION=//p' "$DEPLOY/docker/Dockerfile")"
sdk_probe="$DEPLOY/../sdk-go/.tools/bin/grpc-health-probe"
own_probe="$DEPLOY/.tools/bin/grpc-health-probe"
if [[ -z "${HEALTH_PROBE:-}" && ! -x "$sdk_probe" && ! -x "$own_probe" ]]; then
  if command -v go >/dev/null; then
    echo "deploy: installing grpc-health-probe $probe_version into deploy/.tools" >&2
    CGO_ENABLED=0 GOBIN="$DEPLOY/.tools/bin" go install \
      "github.com/grpc-ecosystem/grpc-health-probe@$probe_version"
  else
    echo "deploy: no Go to install grpc-health-probe; the probe commands will not be run" >&2
  fi
fi

if [[ -z "${HERALD_NATS_SERVER:-}" && ! -x "$DEPLOY/../.tools/bin/nats-server" ]]; then
  if command -v go >/dev/null; then
    HERALD_NATS_SERVER="$("$DEPLOY/../scripts/install-nats-server")"
    export HERALD_NATS_SERVER
  else
    echo "deploy: no Go to install nats-server; the cluster checks will not be run" >&2
  fi
fi

exec "$VENV/bin/python" "$DEPLOY/check.py" "$@"
