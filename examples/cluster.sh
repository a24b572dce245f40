#!/usr/bin/env bash
# A proofgate cluster on loopback: three etcd members (Debian's etcd-server),
# one dev PKI, three gateway nodes sharing one pseudonym key (each mirrors
# the next two, and answers once one holds the decision), the eight mock departments as their own processes, then
# `cluster status` and a bench over all three nodes. Ctrl-C stops all of it.
#
#   examples/cluster.sh [WORK_DIR]        (default: a new temporary folder)
#
# PROOFGATE names the binary (default: target/release/proofgate of this
# checkout, built with `cargo build --release` if missing); ETCD_BIN the etcd
# binary (default: etcd on PATH). Ports: etcd 12379/22379/32379 (peers
# 12380/22380/32380), nodes 50051-50053, metrics and console 9464-9466.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
PROOFGATE=${PROOFGATE:-$here/target/release/proofgate}
ETCD_BIN=${ETCD_BIN:-etcd}
if [ ! -x "$PROOFGATE" ]; then
  (cd "$here" && cargo build --release --locked)
fi
command -v "$ETCD_BIN" >/dev/null || {
  echo "no etcd: apt-get install -y etcd-server (or set ETCD_BIN)" >&2
  exit 69
}
work=${1:-$(mktemp -d -t proofgate-cluster.XXXXXX)}
mkdir -p "$work"
cd "$work"
echo "working in $work (logs: *.log)"

pids=()
ETCD=http://127.0.0.1:12379,http://127.0.0.1:22379,http://127.0.0.1:32379
stop() {
  trap - INT TERM EXIT
  echo "stopping ${#pids[@]} processes"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # The nodes run under their retry loops: stop them by their command line.
  pkill -f -- "--etcd $ETCD --certs pki" 2>/dev/null || true
  wait 2>/dev/null || true
  exit 0
}
trap stop INT TERM EXIT

# Three etcd members.
cluster=m1=http://127.0.0.1:12380,m2=http://127.0.0.1:22380,m3=http://127.0.0.1:32380
for i in 1 2 3; do
  "$ETCD_BIN" --name m$i --data-dir etcd-m$i \
    --listen-client-urls http://127.0.0.1:${i}2379 --advertise-client-urls http://127.0.0.1:${i}2379 \
    --listen-peer-urls http://127.0.0.1:${i}2380 --initial-advertise-peer-urls http://127.0.0.1:${i}2380 \
    --initial-cluster $cluster --initial-cluster-token proofgate-example \
    --initial-cluster-state new 2> etcd-m$i.log &
  pids+=($!)
done

# One PKI; each node its own log key, one pseudonym key for all.
[ -f pki/ca.pem ] || "$PROOFGATE" dev-certs --dir pki >/dev/null
for i in 1 2 3; do
  [ -f data-$i/keys/pseudonym.key ] || "$PROOFGATE" keygen --data-dir data-$i --node-id node-$i >/dev/null
done
for i in 2 3; do cp data-1/keys/pseudonym.key data-$i/keys/pseudonym.key; done

# Three nodes; each waits for etcd by retrying its start.
for i in 1 2 3; do
  (
    for _ in $(seq 1 30); do
      "$PROOFGATE" serve --etcd $ETCD --certs pki --node-id node-$i --data-dir data-$i \
        --listen 127.0.0.1:5005$i --metrics-listen 127.0.0.1:946$((3 + i)) && exit 0
      code=$?
      [ $code = 69 ] || exit $code   # 69: etcd not up yet (or the port is taken)
      sleep 1
    done
  ) >> node-$i.log 2>&1 &
  pids+=($!)
done
NODES=https://127.0.0.1:50051,https://127.0.0.1:50052,https://127.0.0.1:50053
for i in 1 2 3; do
  for _ in $(seq 1 60); do
    grep -q "proofgate serving on" node-$i.log 2>/dev/null && break
    sleep 1
  done
  grep -q "proofgate serving on" node-$i.log || { echo "node-$i did not start; see $work/node-$i.log" >&2; exit 1; }
done

# The departments, as their own processes, registered through any live node.
for d in public-security civil-affairs human-resources provident-fund \
         market-regulation natural-resources health education; do
  "$PROOFGATE" mock-department $d --gateway $NODES --certs pki > dept-$d.log 2>&1 &
  pids+=($!)
done
sleep 2

"$PROOFGATE" cluster status --etcd $ETCD
"$PROOFGATE" bench --certs pki --matter elderly-subsidy --seconds 5 --concurrency 8 --endpoint $NODES
"$PROOFGATE" audit verify --cluster --etcd $ETCD --certs pki || true
echo "running; consoles at http://127.0.0.1:9464/ :9465 :9466. Ctrl-C stops everything."
wait
