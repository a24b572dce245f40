#!/bin/bash
# usage: relay-inproc.sh TAG [serve flags...]  — one serve, relay baseline at c=64 and c=1, twice
B=${B:-target/release/proofgate}
tag=$1; shift
d=/tmp/r12/$tag; rm -rf $d; mkdir -p $d
$B serve --data-dir $d/data --listen 127.0.0.1:50671 --metrics-listen off "$@" > $d/serve.log 2>&1 &
pid=$!
for i in $(seq 1 100); do grep -q "serving" $d/serve.log 2>/dev/null && break; sleep 0.2; done
sleep 1
B=$B bash "$(dirname "$0")/relay-rounds.sh" $tag https://127.0.0.1:50671 $d/data/certs
kill $pid; wait $pid
