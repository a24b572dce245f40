#!/usr/bin/env bash
# c=64, one node without and with etcd (3 members on loopback): applications/s
# and the CPU ticks of the node, the etcd members and the bench over the submit
# phase (BENCHMARKS.md 2026-12-07, "CPU split at c=64"). PERF=1 also records a
# perf profile of the node. With a build carrying examples/perf/node-timing.patch
# (git apply) and NODE_LOG=warn,pg_timing=info, it prints the node's timing
# split per step (examples/perf/node-timing-stats.py).
#   flock -o /tmp/cargo-build.lock examples/perf/etcd-cpu-split.sh WORK_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
PG=${PROOFGATE:-$here/target/release/proofgate}
S=${BENCH_SECONDS:-5}
C=${C:-64}
work=${1:?work}; shift
rm -rf "$work"; mkdir -p "$work"; cd "$work"
pids=(); epids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
E3=http://127.0.0.1:25379,http://127.0.0.1:26379,http://127.0.0.1:27379
members=m1=http://127.0.0.1:25380,m2=http://127.0.0.1:26380,m3=http://127.0.0.1:27380
for i in 1 2 3; do
  etcd --name m$i --data-dir etcd-m$i \
    --listen-client-urls http://127.0.0.1:2$((4 + i))379 --advertise-client-urls http://127.0.0.1:2$((4 + i))379 \
    --listen-peer-urls http://127.0.0.1:2$((4 + i))380 --initial-advertise-peer-urls http://127.0.0.1:2$((4 + i))380 \
    --initial-cluster $members --initial-cluster-token pg-trial-$$ --initial-cluster-state new 2> etcd-m$i.log &
  pids+=($!); epids+=($!)
done
$PG dev-certs --dir pki >/dev/null
$PG keygen --data-dir one --node-id node-1 >/dev/null
$PG keygen --data-dir solo --node-id node-1 >/dev/null
for _ in $(seq 1 60); do curl -sf http://127.0.0.1:25379/health >/dev/null && break; sleep 0.5; done
cpu() { local t=0 p; for p in "$@"; do [ -r /proc/$p/stat ] && t=$((t + $(awk '{print $14 + $15}' /proc/$p/stat))); done; echo $t; }
idle() { awk '/^cpu /{print $5+$6}' /proc/stat; }
allt() { awk '/^cpu /{s=0; for(i=2;i<=9;i++) s+=$i; print s}' /proc/stat; }
run() { # label node-pid
  echo "== $1 c=$C"
  $PG bench --endpoint https://127.0.0.1:29051 --certs pki --matter public-rental-housing --seconds $S --concurrency $C > bench-out.txt &
  local bp=$!
  sleep $((S + 1))
  local e0=$(cpu "${epids[@]}") n0=$(cpu $2) b0=$(cpu $bp) i0=$(idle) a0=$(allt)
  if [ -n "${PERF:-}" ]; then perf record -q -F 499 -g -p $2 -o perf-$1.data -- sleep $((S - 2)) 2>/dev/null; else sleep $((S - 2)); fi
  local e1=$(cpu "${epids[@]}") n1=$(cpu $2) b1=$(cpu $bp) i1=$(idle) a1=$(allt)
  wait $bp
  grep SubmitApplication bench-out.txt
  echo "cpu over $((S - 2)) s of the submit phase (ticks of 1/100 s): etcd members $((e1 - e0))  node $((n1 - n0))  bench $((b1 - b0))  machine idle $((i1 - i0)) of $((a1 - a0))"
}
if [ -z "${SKIP_SOLO:-}" ]; then
RUST_LOG=${NODE_LOG:-warn} $PG serve --data-dir solo --node-id node-1 --certs pki --listen 127.0.0.1:29051 --metrics-listen off > solo.log 2>&1 &
sp=$!; pids+=($sp)
for _ in $(seq 1 120); do grep -q "proofgate serving on" solo.log && break; sleep 0.25; done
run noetcd $sp
kill -INT $sp; wait $sp || true
fi
RUST_LOG=${NODE_LOG:-warn} $PG serve --data-dir one --node-id node-1 --certs pki --listen 127.0.0.1:29051 --metrics-listen off --etcd $E3 --etcd-prefix /t/ --mock-departments --mirror-ack 0 "$@" > one.log 2>&1 &
np=$!; pids+=($np)
for _ in $(seq 1 120); do grep -q "proofgate serving on" one.log && break; sleep 0.25; done
run etcd $np
kill -INT $np; wait $np || true
for f in solo one; do [ -f $f.log ] && { echo "== $f"; python3 "$here/examples/perf/node-timing-stats.py" $f.log; }; done
