#!/usr/bin/env bash
# A/B of the etcd batcher's batches in flight (2, then 1), alternating, two
# rounds, one node with etcd at c=64 (BENCHMARKS.md 2026-12-07, "CPU split").
#   flock -o /tmp/cargo-build.lock examples/perf/etcd-in-flight-ab.sh
for round in 1 2; do
  for f in 2 1; do
    echo "## round $round in_flight=$f"
    SKIP_SOLO=1 PROOFGATE_ETCD_IN_FLIGHT=$f BENCH_SECONDS=6 "$(dirname "$0")/etcd-cpu-split.sh" /tmp/pgp-ab 2>&1 | grep -A2 "== etcd" | tail -2
  done
done
