#!/bin/bash
# Every row of issue 12 in one run, each beside its baseline measured in the same run.
# From the repository, after `cargo build --release` and `cargo bench --bench audit_log --no-run`,
# under the build lock (-o: the servers it starts do not inherit the lock):
#   flock -o /tmp/cargo-build.lock examples/perf/every-row.sh 2>&1 | tee /tmp/every-row.log
# About 15 minutes on 2 cores; the 1 M part is run1m.sh (it writes /tmp/g12/mil).
set -u
export B=${B:-$PWD/target/release/proofgate}
REPO=$PWD
LIFT=1000000 # the mock departments' capacity, lifted so that they are not what is measured
W=/tmp/every; rm -rf $W; mkdir -p $W
wait_serving() { for _ in $(seq 300); do grep -q "gateway serving" "$1" 2>/dev/null && return; sleep 0.1; done; echo "no 'gateway serving' in $1"; exit 1; }
bench() { $B bench --seconds 4 --matter public-rental-housing "$@" 2>&1 | grep -vE "^\s*$|INFO|WARN"; }

echo "== $(date -u +%FT%TZ), commit $(git -C "$REPO" rev-parse --short HEAD), $(nproc) cores"

echo "== 1. latency and gateway / relay, in-process mock departments (capacity lifted), c = 1 4 16 64"
d=$W/inproc; mkdir -p $d
$B serve --data-dir $d/data --listen 127.0.0.1:50771 --metrics-listen off --mock-capacity-per-second $LIFT > $d/serve.log 2>&1 &
pid=$!; wait_serving $d/serve.log
for c in 1 4 16 64; do
  echo "-- c=$c, baseline health"
  bench --endpoint https://127.0.0.1:50771 --certs $d/data/certs --concurrency $c --baseline health
  echo "-- c=$c, baseline relay"
  bench --endpoint https://127.0.0.1:50771 --certs $d/data/certs --concurrency $c --baseline relay
done
kill $pid; wait $pid

echo "== 2. gateway / relay, each department its own process (capacity lifted), c = 1 64"
d=$W/separate; mkdir -p $d
$B serve --data-dir $d/data --listen 127.0.0.1:50781 --metrics-listen off --no-mock-departments > $d/serve.log 2>&1 &
pid=$!; wait_serving $d/serve.log
mocks=""
for dep in "public-security 7401" "natural-resources 7402" "human-resources 7403"; do set -- $dep
  RUST_LOG=warn $B mock-department $1 --listen 127.0.0.1:$2 --gateway https://127.0.0.1:50781 \
    --certs $d/data/certs --capacity-per-second $LIFT > $d/mock-$1.log 2>&1 &
  mocks="$mocks $!"
done
sleep 3
for c in 1 64; do
  echo "-- c=$c, baseline relay"
  bench --endpoint https://127.0.0.1:50781 --certs $d/data/certs --concurrency $c --baseline relay
done
kill $mocks $pid; wait

echo "== 3. disk per application at 100 k (node in the bench process, clean stop), verify of that folder"
$B bench --applications 100000 --concurrency 64 --matter public-rental-housing --data-dir $W/d100k 2>&1 | grep -v INFO
du -sb $W/d100k
$B audit usage --data-dir $W/d100k
$B audit verify --data-dir $W/d100k --timing
$B audit verify --data-dir $W/d100k --timing --sample-signatures

echo "== 4. policy load: the Jinhua-scale catalog (baseline: the sample catalog ./policies)"
$B policy generate-jinhua $W/jinhua > /dev/null
for i in 1 2 3 4 5; do /usr/bin/time -f "jinhua: %e s elapsed, %M KB max RSS" $B policy check $W/jinhua 2>&1 | tail -2; done
for i in 1 2 3; do /usr/bin/time -f "sample: %e s elapsed" $B policy check "$REPO/policies" 2>&1 | tail -1; done
echo "-- start-up: exec -> 'gateway serving' in the log, polled every 5 ms"
for cat in jinhua sample; do
  pol=$W/jinhua; [ $cat = sample ] && pol=$REPO/policies
  rm -rf $W/start
  for i in 1 2 3 4 5 6; do
    what="a second start on that folder"
    if [ $((i % 2)) = 1 ]; then rm -rf $W/start; what="a first start: keys and certificates generated"; fi
    log=$W/start-$cat-$i.log # a log of its own: never the previous start's line
    T0=$(date +%s%N)
    $B serve --data-dir $W/start --policies $pol --listen 127.0.0.1:50791 --metrics-listen off > $log 2>&1 &
    p=$!
    for _ in $(seq 6000); do grep -q "gateway serving" $log && break; kill -0 $p 2>/dev/null || break; sleep 0.005; done
    grep -q "gateway serving" $log || { echo "serve did not start: $log"; tail -3 $log; exit 1; }
    echo "start-up, $cat catalog: $(( ($(date +%s%N)-T0)/1000000 )) ms ($what)"
    kill $p; wait $p
  done
done

echo "== 5. audit writer vs raw sled group commit, 1 M entries"
( cd "$REPO" && cargo bench --bench audit_log -- 1000000 256 2>&1 | grep -vE "Compiling|Finished|Running" )

echo "== 6. 1 M applications + 10 k pending through serve (node, departments and load in separate processes): disk, RSS, verify"
bash "$REPO/examples/perf/run1m.sh"
$B audit verify --data-dir /tmp/g12/mil/data --timing --sample-signatures
echo "== done $(date -u +%FT%TZ)"
