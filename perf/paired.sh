#!/usr/bin/env bash
# Two builds side by side at the same moment: each round runs both at once, one pinned to each of
# two CPUs, on one core each (the CPUs swapped every round), so whatever else the machine does
# falls on both. Compared: the work a tick (the sum of the stages' mean milliseconds after the
# warm-up), NEW over OLD, its median over the rounds. Sequential trials on a shared machine
# differ by 20-30% from one to the next; pairs of one build against itself differ by about 5%.
#   perf/paired.sh OLD_BIN NEW_BIN [PLAYERS] [ROUNDS] [SEED] [DEMO_ARGS...]
#   e.g. perf/paired.sh ../shardmesh-before/target/release/shardmesh target/release/shardmesh 16000 6 7 --static
# Scenario: $SCENARIO (default tavern); seconds a run: $SECONDS_PER_RUN (default 16); JSON to
# $OUT (default paired.json). Exits non-zero if a run fails (no ticks, an audit error, an entity
# lost or duplicated) or the machine has fewer than two CPUs.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,12p' "$0"
  exit 2
fi
old="$1"; new="$2"; players="${3:-16000}"; rounds="${4:-6}"; seed="${5:-7}"
shift $(( $# < 5 ? $# : 5 ))
scenario="${SCENARIO:-tavern}"; secs="${SECONDS_PER_RUN:-16}"; out="${OUT:-paired.json}"
if [ "$(nproc)" -lt 2 ]; then
  echo "paired.sh needs two CPUs, this machine has $(nproc)" >&2
  exit 1
fi
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
for ((r = 1; r <= rounds; r++)); do
  if (( r % 2 )); then cpu_old=0; cpu_new=1; else cpu_old=1; cpu_new=0; fi
  taskset -c "$cpu_old" "$old" demo --scenario "$scenario" --players "$players" --cores 1 --duration "$secs" \
    --seed "$seed" "$@" --json "$dir/old-$r.json" > "$dir/old-$r.txt" 2>&1 &
  a=$!
  taskset -c "$cpu_new" "$new" demo --scenario "$scenario" --players "$players" --cores 1 --duration "$secs" \
    --seed "$seed" "$@" --json "$dir/new-$r.json" > "$dir/new-$r.txt" 2>&1 &
  b=$!
  wait "$a" || { echo "round $r: OLD exited non-zero:"; tail -5 "$dir/old-$r.txt"; exit 1; } >&2
  wait "$b" || { echo "round $r: NEW exited non-zero:"; tail -5 "$dir/new-$r.txt"; exit 1; } >&2
done
python3 - "$dir" "$rounds" "$out" "$old" "$new" "$players" "$seed" "$scenario" "$secs" "$*" <<'EOF'
import json, statistics, sys
d, rounds, out, old, new, players, seed, scenario, secs, extra = sys.argv[1:]
rows, bad = [], []
for r in range(1, int(rounds) + 1):
    row = {"round": r, "cpu_old": (r + 1) % 2, "cpu_new": r % 2}
    for side in ("old", "new"):
        s = json.load(open(f"{d}/{side}-{r}.json"))
        if s["ticks"] == 0 or s["audit_error"] or s["lost_entities"] or s["duplicate_entities"]:
            bad.append(f"round {r} {side}: ticks {s['ticks']}, audit {s['audit_error']}, "
                       f"lost {s['lost_entities']}, duplicated {s['duplicate_entities']}")
        row[f"work_ms_{side}"] = sum(map(sum, s["stage_ms_per_core"]))
        row[f"tick_p99_ms_{side}"] = max(s["tick_p99_ms_per_core"])
    row["ratio"] = row["work_ms_new"] / row["work_ms_old"] if row["work_ms_old"] > 0 else None
    rows.append(row)
    print(f"round {r}: old {row['work_ms_old']:.2f} ms (CPU {row['cpu_old']}), new {row['work_ms_new']:.2f} ms "
          f"(CPU {row['cpu_new']}), new/old {row['ratio']:.3f}; tick p99 {row['tick_p99_ms_old']:.1f} / "
          f"{row['tick_p99_ms_new']:.1f} ms")
ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
median = statistics.median(ratios) if ratios else None
command = f"SCENARIO={scenario} SECONDS_PER_RUN={secs} perf/paired.sh {old} {new} {players} {rounds} {seed} {extra}".strip()
json.dump({"old": old, "new": new, "scenario": scenario, "players": int(players), "seed": int(seed),
           "seconds": float(secs), "demo_args": extra, "rounds": rows, "median_ratio": median,
           "failures": bad, "command": command}, open(out, "w"), indent=1)
print(f"median work a tick, new/old: {median:.3f} over {len(ratios)} rounds" if median else "no rounds measured")
print(f"JSON: {out}")
print(f"reproduce: {command}")
for b in bad:
    print(f"FAILED: {b}", file=sys.stderr)
sys.exit(1 if bad or median is None else 0)
EOF
