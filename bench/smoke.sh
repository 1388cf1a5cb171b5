#!/usr/bin/env bash
# Smoke run of every benchmark scenario against Herald, the floor and the naive
# baseline (Herald alone where only it has the API): a few seconds and a few
# hundred connections each. Exits non-zero if a scenario fails (crash, failed
# connection, missing delivery where one is owed, a failed control command, a gap,
# duplicate or recovered:false after a reconnect storm).
# Expects `cargo build --release --workspace` to have run. Results go to
# bench/results/smoke/ (never to docs/).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH_BIN:-target/release/herald-bench}
export HERALD_BIN=${HERALD_BIN:-target/release/herald}
OUT=bench/results/smoke
mkdir -p "$OUT"
for bin in "$BENCH" "$HERALD_BIN"; do
  [[ -x $bin ]] || { echo "smoke: $bin not built (run cargo build --release --workspace)" >&2; exit 1; }
done
COMMON=(--out-dir "$OUT" --strict --busy-probe-ms 200)
run() {
  local name=$1; shift
  local t0=$SECONDS
  # A hung scenario is ended (SIGTERM makes it stop its child processes).
  if timeout -k 10 90 "$BENCH" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"; then
    echo "smoke: $name ok ($((SECONDS - t0)) s)"
  else
    echo "smoke: $name FAILED ($((SECONDS - t0)) s); last lines of its log:" >&2
    tail -n 20 "$OUT/$name.err" >&2
    exit 1
  fi
}
run fanout    fanout    "${COMMON[@]}" --conns 200,400 --rates 10 --duration 2 --drain 5 --plot "$OUT/latency-vs-connections.png"
run saturate  saturate  --out-dir "$OUT" --busy-probe-ms 200 --conns 300 --start-deliveries 3000 --factor 2 --step-duration 1 --max-steps 2
run targeted  targeted  "${COMMON[@]}" --conns 300 --rate 100 --duration 2
run ingest    ingest    --out-dir "$OUT" --busy-probe-ms 200 --duration 1 --unary-concurrency 16
run join      join      "${COMMON[@]}" --conns 200,400
run idle      idle      "${COMMON[@]}" --conns 500 --settle 1
run churn     churn     "${COMMON[@]}" --conns 200 --churn-rate 100 --duration 2
run slow      slow      "${COMMON[@]}" --conns 200 --duration 2 --slow 5 --slow-rate 20
run control   control   "${COMMON[@]}" --conns 200 --duration 2
run recover   recover   "${COMMON[@]}" --conns 200 --duration 2 --jitter-ms 500
run history   fanout    "${COMMON[@]}" --targets herald --conns 200 --rates 10 --duration 2 --drain 5 --history-size 100
# cluster needs nats-server (scripts/test exports HERALD_NATS_SERVER; else install the pinned one).
export HERALD_NATS_SERVER=${HERALD_NATS_SERVER:-$(scripts/install-nats-server)}
run cluster   cluster   "${COMMON[@]}" --nodes 3 --conns 300 --single-conns 100 --rate 10 --duration 2 --drain 5 \
                        --phases fanout,ingest,churn --ingest-duration 1 --churn-rate 50 --churn-duration 1 --linger-wait 7.5
run hostile   hostile   "${COMMON[@]}" --conns 100 --duration 2 --attack-rate 50 --slow-sockets 10
# sdk needs the Go driver and a virtualenv with the Python SDK.
(cd bench/sdk/go && go build -o ../../../target/sdk-bench/herald-sdk-bench-go .)
[[ -x sdk-python/.venv/bin/python ]] || { python3 -m venv sdk-python/.venv && sdk-python/.venv/bin/pip install --quiet -e sdk-python; }
run sdk       sdk       "${COMMON[@]}" --duration 1 --go-driver target/sdk-bench/herald-sdk-bench-go --python sdk-python/.venv/bin/python
[[ -s $OUT/latency-vs-connections.png ]] || { echo "smoke: no plot written" >&2; exit 1; }
echo "smoke: all scenarios ran; results in $OUT"
