#!/bin/bash
# one chunk of the 1 M run: flock /tmp/cargo-build.lock bash mil-chunk.sh FIRST N
set -u
B=${B:-$PWD/target/release/proofgate}
W=/tmp/g12/mil; cd $W
SP=$(cat serve.pid)
( while kill -0 $SP 2>/dev/null; do echo "$(date -u +%T) du=$(du -sb data/log | cut -f1) $(grep -E '^VmRSS' /proc/$SP/status | tr -s ' ')"; sleep 30; done ) >> sample.log &
S=$!
date -u
$B bench --applications $2 --first $1 --external --pending 10000 --concurrency 64 --matter public-rental-housing \
  --endpoint https://127.0.0.1:50701 --certs $W/data/certs --node-pid $SP 2>&1
kill $S
date -u
