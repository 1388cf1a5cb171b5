#!/usr/bin/env bash
# Interleaved A/B of Herald's fan-out: every round runs `herald-bench fanout
# --targets herald` once per variant, in turn, so that load that drifts during the
# run hits every variant alike; then prints one table of CPU per delivery, p99 and
# peak RSS per variant, round and connection count, with each variant's median.
#
#   bench/ab.sh OUT_DIR ROUNDS 'name|herald-binary|extra fanout args' ...
#
# Example (the previous revision against this one, and this one with tokens):
#   bench/ab.sh /tmp/ab 3 "base|/tmp/herald-base|" "head|target/release/herald|" \
#     "head-hs256|target/release/herald|--auth hs256"
#
# ROUNDS 0 only prints the table of runs already in OUT_DIR.
#
# A variant whose extra args hold `--herald-arg=--admin-addr=HOST:PORT` also has
# http://HOST:PORT/metrics scraped once a second while it runs. FANOUT_ARGS sets the
# points (default: --conns 5000,19000 --rates 10,2 --duration 10).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH_BIN:-target/release/herald-bench}
out=$1 rounds=$2
shift 2
read -r -a points <<<"${FANOUT_ARGS:---conns 5000,19000 --rates 10,2 --duration 10}"
mkdir -p "$out"
[[ $rounds -gt 0 ]] && uptime | tee "$out/uptime-start"
for round in $(seq 1 "$rounds"); do
    for variant in "$@"; do
        IFS='|' read -r name bin extra <<<"$variant"
        read -r -a args <<<"$extra"
        scraper=
        for a in "${args[@]}"; do
            if [[ $a == --herald-arg=--admin-addr=* ]]; then
                addr=${a#--herald-arg=--admin-addr=}
                (for _ in $(seq 1 600); do
                    curl -s -o /dev/null "http://$addr/metrics" || true
                    sleep 1
                done) &
                scraper=$!
            fi
        done
        echo "== round $round: $name"
        "$BENCH" fanout --targets herald --herald-bin "$bin" "${points[@]}" "${args[@]}" \
            --out-dir "$out/$name-$round" 2>&1 | grep -E '^\[herald\] C=' || true
        [[ -n $scraper ]] && kill "$scraper" 2>/dev/null || true
    done
done
[[ $rounds -gt 0 ]] && uptime | tee "$out/uptime-end"
python3 - "$out" "$@" <<'PYEOF'
import glob, json, statistics, sys
out, variants = sys.argv[1], [v.split("|")[0] for v in sys.argv[2:]]
rows = {}
for name in variants:
    for path in sorted(glob.glob(f"{out}/{name}-[0-9]*/fanout-*.json")):
        rnd = path.split(f"{name}-")[-1].split("/")[0]
        for r in json.load(open(path))["rows"]:
            if r["phase"].startswith("fanout run"):
                rows.setdefault((name, r["conns"]), []).append(
                    (rnd, r["cpu_s_per_m"], r["lat"]["p99_ms"], r["peak_rss_mib"], r["delivered_frac"]))
print("| variant | C | rounds: CPU µs/delivery | median CPU | rounds: p99 ms | median p99 | peak RSS MiB | delivered |")
print("|---|---|---|---|---|---|---|---|")
for (name, conns), rs in sorted(rows.items(), key=lambda kv: (kv[0][1], variants.index(kv[0][0]))):
    cpu = [r[1] for r in rs]; p99 = [r[2] for r in rs]
    print(f"| {name} | {conns} | {' / '.join(f'{c:.2f}' for c in cpu)} | {statistics.median(cpu):.2f} "
          f"| {' / '.join(f'{p:.1f}' for p in p99)} | {statistics.median(p99):.1f} "
          f"| {max(r[3] for r in rs):.1f} | {min(r[4] for r in rs)*100:.4f}% |")
PYEOF
