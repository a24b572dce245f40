#!/bin/bash
# start the node alone (own process, departments in their own processes) on a fresh folder
set -u
B=${B:-$PWD/target/release/proofgate}
W=/tmp/g12/mil; rm -rf $W; mkdir -p $W; cd $W
RUST_LOG=warn,proofgate::server=info $B serve --data-dir $W/data --listen 127.0.0.1:50701 --metrics-listen off --no-mock-departments > serve.log 2>&1 &
echo $! > serve.pid
for i in $(seq 200); do grep -q "gateway serving" serve.log && break; sleep 0.1; done
grep "gateway serving" serve.log
P=7300
for d in public-security natural-resources human-resources education; do P=$((P+1))
  RUST_LOG=warn $B mock-department $d --listen 127.0.0.1:$P --gateway https://127.0.0.1:50701 --certs $W/data/certs > mock-$d.log 2>&1 &
  echo $! >> mocks.pid
done
sleep 2
grep -E "^Vm(RSS|HWM)" /proc/$(cat serve.pid)/status
