#!/usr/bin/env bash
# A short trial of the c=1 latency etcd adds (BENCHMARKS.md 2026-12-07):
# a 3-member etcd on loopback with its data under ETCD_ROOT (default: the
# work dir; e.g. ETCD_ROOT=/dev/shm/pg-etcd for tmpfs, as a diagnostic of
# etcd's fsync), the etcd write back to back and after 1 ms idle, then
# SubmitApplication at c=1 against a node without etcd and a node with etcd
# (--mirror-ack 0), then the etcd write again.
#
#   flock /tmp/cargo-build.lock examples/etcd-c1-trial.sh WORK_DIR [serve args…]
#
# PROOFGATE names the binary (default target/release/proofgate),
# BENCH_SECONDS the seconds per phase (default 5). Same ports as
# examples/bench-etcd.sh: do not run both at once.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
PG=${PROOFGATE:-$here/target/release/proofgate}
S=${BENCH_SECONDS:-5}
work=${1:?usage: examples/etcd-c1-trial.sh WORK_DIR [serve args…]}
shift
etcd_root=${ETCD_ROOT:-$work}
rm -rf "$work"
mkdir -p "$work"
cd "$work"
export RUST_LOG=${RUST_LOG:-warn}
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -z "${ETCD_ROOT:-}" ] || rm -rf "$etcd_root"' EXIT
E3=http://127.0.0.1:25379,http://127.0.0.1:26379,http://127.0.0.1:27379
members=m1=http://127.0.0.1:25380,m2=http://127.0.0.1:26380,m3=http://127.0.0.1:27380
mkdir -p "$etcd_root"
for i in 1 2 3; do
  etcd --name m$i --data-dir "$etcd_root/etcd-m$i" \
    --listen-client-urls http://127.0.0.1:2$((4 + i))379 --advertise-client-urls http://127.0.0.1:2$((4 + i))379 \
    --listen-peer-urls http://127.0.0.1:2$((4 + i))380 --initial-advertise-peer-urls http://127.0.0.1:2$((4 + i))380 \
    --initial-cluster $members --initial-cluster-token pg-trial-$$ --initial-cluster-state new 2> etcd-m$i.log &
  pids+=($!)
done
"$PG" dev-certs --dir pki >/dev/null
"$PG" keygen --data-dir one --node-id node-1 >/dev/null
"$PG" keygen --data-dir solo --node-id node-1 >/dev/null
for _ in $(seq 1 60); do curl -sf http://127.0.0.1:25379/health >/dev/null && break; sleep 0.5; done

serve() { # DIR [args…]: starts a node on 29051 (pid in $node), waits until it serves
  local dir=$1
  shift
  "$PG" serve --data-dir "$dir" --node-id node-1 --certs pki --listen 127.0.0.1:29051 \
    --metrics-listen off "$@" > "$dir.log" 2>&1 &
  node=$!
  pids+=("$node")
  for _ in $(seq 1 120); do grep -q "proofgate serving on" "$dir.log" && return 0; sleep 0.25; done
  echo "node in $dir did not start:" >&2
  cat "$dir.log" >&2
  exit 1
}
bench() {
  "$PG" bench --endpoint https://127.0.0.1:29051 --certs pki --matter public-rental-housing \
    --seconds "$S" --concurrency 1 | grep SubmitApplication
}

echo "== etcd data under $etcd_root"
echo "== etcd write, back to back";    "$PG" bench --etcd $E3 --etcd-txn 300
echo "== etcd write, after 1 ms idle"; "$PG" bench --etcd $E3 --etcd-txn 300 --etcd-pause-us 1000
serve solo
echo "== one node, no etcd, c=1"; bench
kill -INT "$node"; wait "$node" || true
serve one --etcd $E3 --etcd-prefix /trial/ --mock-departments --mirror-ack 0 "$@"
echo "== one node, etcd, c=1"; bench
kill -INT "$node"; wait "$node" || true
echo "== etcd write, back to back, again"; "$PG" bench --etcd $E3 --etcd-txn 300
