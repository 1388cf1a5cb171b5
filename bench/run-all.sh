#!/usr/bin/env bash
# Full benchmark runs: every scenario at the sizes of docs/benchmarks.md, each
# measuring the floor, the naive baseline and Herald in one command (`control`,
# `recover`: Herald only). Appends a section per scenario to docs/benchmarks.md, redraws
# docs/img/latency-vs-connections.png and keeps JSON under bench/results/.
# Takes about 15-20 minutes on 2 cores. Run it on an otherwise idle machine
# (check `uptime`): the load generator shares the cores with the engine.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH_BIN:-target/release/herald-bench}
export HERALD_BIN=${HERALD_BIN:-target/release/herald}
MD=${BENCH_MARKDOWN:-docs/benchmarks.md}
ONLY=${1:-all}
COMMON=(--markdown "$MD")
want() { [[ $ONLY == all || ,$ONLY, == *,$1,* ]]; }
uptime
want fanout   && "$BENCH" fanout   "${COMMON[@]}" --conns 1000,5000,19000 --rates 10,10,2 --duration 10 --repeat 3 \
                   --plot "${BENCH_PLOT:-docs/img/latency-vs-connections.png}"
want saturate && "$BENCH" saturate "${COMMON[@]}" --conns 5000,19000 --start-deliveries 20000 --factor 1.25 --step-duration 5
want targeted && "$BENCH" targeted "${COMMON[@]}" --conns 5000 --rate 2000 --duration 10
want ingest   && "$BENCH" ingest   "${COMMON[@]}" --duration 5
want join     && "$BENCH" join     "${COMMON[@]}" --conns 5000,10000,19000
want idle     && "$BENCH" idle     "${COMMON[@]}" --conns 19000
want churn    && "$BENCH" churn    "${COMMON[@]}" --conns 5000 --rate 10 --churn-rate 500 --duration 10
want slow     && "$BENCH" slow     "${COMMON[@]}" --conns 5000 --rate 10 --duration 10 --slow 20
want control  && "$BENCH" control  "${COMMON[@]}" --conns 5000 --duration 5
want recover  && "$BENCH" recover  "${COMMON[@]}" --conns 5000 --rate 10 --duration 10 --jitter-ms 1000
want hostile  && "$BENCH" hostile  "${COMMON[@]}" --conns 300 --duration 10 --attack-rate 100 --slow-sockets 100
uptime
