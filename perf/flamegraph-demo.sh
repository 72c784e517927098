#!/usr/bin/env bash
# A flamegraph of the live mesh's ticks: perf samples the shards (cpu-clock, which works where
# hardware counters do not) and inferno draws them.
#   perf/flamegraph-demo.sh [PLAYERS] [CORES] [SECONDS] [OUT.svg]
# Installs inferno (cargo install inferno) if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
players="${1:-32000}"; cores="${2:-2}"; secs="${3:-8}"; out="${4:-perf/demo-${cores}cores-${players}.svg}"
command -v inferno-flamegraph >/dev/null || cargo install inferno --locked
# Frame pointers, so perf's call graphs reach past inlined frames; a target dir of its own so the
# normal release build is left alone.
RUSTFLAGS="-C force-frame-pointers=yes" cargo build --release --quiet --target-dir target/profiling
data="$(mktemp -d)"
perf record -e cpu-clock -F 999 -g -o "$data/perf.data" -- \
  ./target/profiling/release/shardmesh demo --players "$players" --cores "$cores" --duration "$secs" > /dev/null
# Only the shards' threads: the tick, not start-up on the main thread.
perf script -i "$data/perf.data" --comm "$(printf 'shard-%s-%s,' $(seq 0 $((cores - 1))) $(seq 1 "$cores") | sed 's/,$//')" 2>/dev/null \
  | inferno-collapse-perf | inferno-flamegraph --title "shardmesh demo: $players players, $cores cores" > "$out"
echo "flamegraph: $out"
