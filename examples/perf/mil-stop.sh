#!/bin/bash
# stop the node cleanly, then size and verify the folder: flock ... bash mil-stop.sh
set -u
B=${B:-$PWD/target/release/proofgate}
W=/tmp/g12/mil; cd $W
# Waits for "gateway serving" in LOG while PID lives (at most 60 s); fails loudly otherwise.
serving() { for _ in $(seq 6000); do grep -q "gateway serving" $1 && return; kill -0 $2 2>/dev/null || break; sleep 0.01; done
  echo "serve did not start: $1"; tail -3 $1; exit 1; }
SP=$(cat serve.pid)
echo "node before stop:"; grep -E "^Vm(RSS|HWM)" /proc/$SP/status
kill -TERM $SP; while kill -0 $SP 2>/dev/null; do sleep 0.2; done
kill -TERM $(cat mocks.pid)
echo "data folder: $(du -sb data | cut -f1) bytes (du -sb), log: $(du -sb data/log | cut -f1)"
$B audit usage --data-dir $W/data
$B audit verify --data-dir $W/data --timing
echo "--- memory of opening the 1 M store (audit usage, /usr/bin/time)"
/usr/bin/time -f "audit usage: %e s, max RSS %M KB" $B audit usage --data-dir $W/data > /dev/null
echo "--- restart serve on the 1 M folder (departments off): RSS once serving"
rm -f serve2.log; RUST_LOG=info $B serve --data-dir $W/data --listen 127.0.0.1:50702 --metrics-listen off --no-mock-departments > serve2.log 2>&1 &
P=$!
T0=$(date +%s%N)
serving serve2.log $P
echo "restart: $(( ($(date +%s%N)-T0)/1000000 )) ms to gateway serving"
sleep 2; grep -E "^Vm(RSS|HWM)" /proc/$P/status
kill -TERM $P; wait $P
echo "--- audit compact, then size, verify and restart RSS"
/usr/bin/time -f "audit compact: %e s, max RSS %M KB" $B audit compact --data-dir $W/data
echo "data folder after compact: $(du -sb data | cut -f1) bytes (du -sb)"
$B audit verify --data-dir $W/data --timing
rm -f serve3.log; RUST_LOG=info $B serve --data-dir $W/data --listen 127.0.0.1:50703 --metrics-listen off --no-mock-departments > serve3.log 2>&1 &
P=$!
serving serve3.log $P
sleep 2; echo "restart after compact:"; grep -E "^Vm(RSS|HWM)" /proc/$P/status
kill -TERM $P; wait $P
