#!/bin/bash
# The 100 k disk rows of BENCHMARKS 2026-12-07 (entry groups): COMPS="true false" B=... TAG=...
set -x
B=${B:-./target/release/proofgate}
for comp in ${COMPS:-true false}; do
  D=/tmp/g12/d100k-$comp$TAG; rm -rf $D
  $B bench --applications 100000 --concurrency 64 --matter public-rental-housing --data-dir $D --store-compression $comp
  du -sb $D
  $B audit usage --data-dir $D
  $B audit verify --data-dir $D --timing
done
