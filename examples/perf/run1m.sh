#!/bin/bash
# The 1 M row of BENCHMARKS 2026-12-07 (entry groups): run from the repository,
# under the build lock: flock -o /tmp/cargo-build.lock examples/perf/run1m.sh
export B=${B:-$PWD/target/release/proofgate}
cd "$(dirname "$0")"
bash mil-start.sh
bash mil-chunk.sh 0 1000000
bash mil-stop.sh
