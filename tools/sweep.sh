#!/usr/bin/env bash
# A long simulator sweep in chunks, for a nightly run: every failing seed is appended to a file,
# so each can be replayed with `shardmesh sim --seed S` and become a named regression test.
#   tools/sweep.sh [START] [COUNT] [CHUNK] [FAILURES_FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
start="${1:-0}"; count="${2:-100000}"; chunk="${3:-10000}"; failures="${4:-sweep-failures.txt}"
cargo build --release --quiet
chunk_out="$(mktemp)"
trap 'rm -f "$chunk_out"' EXIT
for ((s = start; s < start + count; s += chunk)); do
  n=$(( chunk < start + count - s ? chunk : start + count - s ))
  ./target/release/shardmesh sim --start "$s" --seeds "$n" > "$chunk_out" || true
  cat "$chunk_out"
  grep '^FAIL' "$chunk_out" >> "$failures" || true
done
if [ -s "$failures" ]; then
  echo "failures recorded in $failures"
  exit 1
fi
