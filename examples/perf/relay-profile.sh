#!/bin/bash
B=${B:-target/release/proofgate}
d=/tmp/r12/prof; rm -rf $d; mkdir -p $d
$B serve --data-dir $d/data --listen 127.0.0.1:50672 --metrics-listen off --mock-capacity-per-second 1000000 > $d/serve.log 2>&1 &
pid=$!
for i in $(seq 1 100); do grep -q "serving" $d/serve.log 2>/dev/null && break; sleep 0.2; done
sleep 1
$B bench --endpoint https://127.0.0.1:50672 --certs $d/data/certs --seconds 8 --concurrency 64 \
    --matter public-rental-housing --baseline health > $d/bench.txt 2>&1 &
bp=$!
sleep 10.5
perf record -o $d/perf.data -F 999 -g -p $pid -- sleep 4 2>/dev/null
wait $bp
cat $d/bench.txt | grep -E "health|Submit|ratio"
kill $pid; wait $pid
