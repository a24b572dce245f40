#!/bin/bash
# usage: EXTRA="mock-department flags" relay-separate.sh TAG [mock-department flags...]
B=${B:-target/release/proofgate}
tag=$1; shift
d=/tmp/r12/$tag; rm -rf $d; mkdir -p $d
$B serve --data-dir $d/data --listen 127.0.0.1:50681 --metrics-listen off --no-mock-departments > $d/serve.log 2>&1 &
pid=$!
for i in $(seq 1 100); do grep -q "serving" $d/serve.log 2>/dev/null && break; sleep 0.2; done
pids=""
for dep in "public-security 7301" "natural-resources 7302" "human-resources 7303"; do set -- $dep
  RUST_LOG=warn $B mock-department $1 --listen 127.0.0.1:$2 --gateway https://127.0.0.1:50681 --certs $d/data/certs "${@:3}" $EXTRA > $d/mock-$1.log 2>&1 &
  pids="$pids $!"
done
sleep 3
B=$B bash "$(dirname "$0")/relay-rounds.sh" $tag https://127.0.0.1:50681 $d/data/certs
kill $pids $pid; wait
