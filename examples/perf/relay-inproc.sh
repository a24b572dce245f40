#!/bin/bash
# usage: relay-inproc.sh TAG [serve flags...]  — one serve, relay baseline at c=64 and c=1, twice
B=${B:-target/release/proofgate}
tag=$1; shift
d=/tmp/r12/$tag; rm -rf $d; mkdir -p $d
$B serve --data-dir $d/data --listen 127.0.0.1:50671 --metrics-listen off "$@" > $d/serve.log 2>&1 &
pid=$!
for i in $(seq 1 100); do grep -q "serving" $d/serve.log 2>/dev/null && break; sleep 0.2; done
sleep 1
for c in 64 1 64; do
  echo "== $tag c=$c"
  $B bench --endpoint https://127.0.0.1:50671 --certs $d/data/certs --seconds 4 --concurrency $c \
    --matter public-rental-housing --baseline relay 2>&1 | grep -E "relay|Submit|ratio|retr"
done
kill $pid; wait $pid
