#!/usr/bin/env bash
# Profiles the simulator on one thread: where a seed's time goes.
#   perf/profile-sim.sh [SEEDS]
# Uses the cpu-clock event, which works on virtual machines without hardware counters. For a
# count that does not move with machine noise, use callgrind instead:
#   valgrind --tool=callgrind ./target/release/shardmesh sim --seeds 20 --threads 1
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="${1:-300}"
cargo build --release --quiet
out="$(mktemp -d)"
perf record -e cpu-clock -g -o "$out/perf.data" -- ./target/release/shardmesh sim --seeds "$seeds" --threads 1
perf report -i "$out/perf.data" --stdio --no-children --percent-limit 1.5 | grep -v '^$' | head -80
echo "profile data: $out/perf.data"
