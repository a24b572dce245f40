#!/usr/bin/env bash
# The cluster benchmarks of issue 10 in one run (BENCHMARKS.md, "Cluster
# mode: etcd writes"): the etcd write itself, then one node without etcd,
# one node with etcd (reservation writes not batched, batched — the default,
# one transaction in flight — and batched with 2 in flight, the default before
# 2026-12-07), three nodes with etcd (--mirror-ack 1, the default, and
# --mirror-ack 0); SubmitApplication at c=1 and c=64 each, and etcd's own
# counters around each gateway run (writes per application, WAL fsync time).
#
#   examples/bench-etcd.sh WORK_DIR
#
# For figures run it alone on the machine, e.g. under the build lock:
#   flock /tmp/cargo-build.lock examples/bench-etcd.sh /tmp/pg-etcd-bench
# PROOFGATE names the binary (default target/release/proofgate), ETCD_BIN
# etcd (default: etcd on PATH; Debian: apt-get install -y etcd-server),
# BENCH_SECONDS the seconds per phase (default 6), BENCH_MATTER the matter
# (default public-rental-housing). Ports (below Linux's ephemeral range, so
# no test's random port takes them): etcd 25379/26379/27379 (peers
# 25380/26380/27380) and a single-member etcd on 28379 (28380); nodes
# 29051-29053.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
PG=${PROOFGATE:-$here/target/release/proofgate}
ETCD_BIN=${ETCD_BIN:-etcd}
S=${BENCH_SECONDS:-6}
MATTER=${BENCH_MATTER:-public-rental-housing}
work=${1:?usage: examples/bench-etcd.sh WORK_DIR}
rm -rf "$work"
mkdir -p "$work"
cd "$work"
export RUST_LOG=${RUST_LOG:-warn}

pids=()
members_pids=()
node_pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop_all EXIT

E3=http://127.0.0.1:25379,http://127.0.0.1:26379,http://127.0.0.1:27379
E1=http://127.0.0.1:28379
members=m1=http://127.0.0.1:25380,m2=http://127.0.0.1:26380,m3=http://127.0.0.1:27380
for i in 1 2 3; do
  "$ETCD_BIN" --name m$i --data-dir etcd-m$i \
    --listen-client-urls http://127.0.0.1:2$((4 + i))379 --advertise-client-urls http://127.0.0.1:2$((4 + i))379 \
    --listen-peer-urls http://127.0.0.1:2$((4 + i))380 --initial-advertise-peer-urls http://127.0.0.1:2$((4 + i))380 \
    --initial-cluster $members --initial-cluster-token pg-bench-$$ --initial-cluster-state new 2> etcd-m$i.log &
  pids+=($!)
  members_pids+=($!)
done
"$ETCD_BIN" --name solo --data-dir etcd-solo \
  --listen-client-urls $E1 --advertise-client-urls $E1 \
  --listen-peer-urls http://127.0.0.1:28380 --initial-advertise-peer-urls http://127.0.0.1:28380 \
  --initial-cluster solo=http://127.0.0.1:28380 --initial-cluster-token pg-bench-solo-$$ \
  --initial-cluster-state new 2> etcd-solo.log &
pids+=($!)

"$PG" dev-certs --dir pki >/dev/null
for d in solo:node-1 one:node-1 one-nobatch:node-1 one-2:node-1 three-1:node-1 three-2:node-2 three-3:node-3 three0-1:node-1 three0-2:node-2 three0-3:node-3; do
  "$PG" keygen --data-dir ${d%:*} --node-id ${d#*:} >/dev/null
  [ ${d%:*} = solo ] || cp solo/keys/pseudonym.key ${d%:*}/keys/pseudonym.key
done
for _ in $(seq 1 60); do
  curl -sf http://127.0.0.1:25379/health >/dev/null && curl -sf $E1/health >/dev/null && break
  sleep 0.5
done

# etcd's own counters (member 1): raft proposals committed, keys put, txns.
counters() {
  curl -s http://127.0.0.1:25379/metrics |
    awk '/^etcd_server_proposals_committed_total |^etcd_mvcc_put_total |^etcd_mvcc_txn_total /{printf "%s %.0f\n", $1, $2}'
}
# mean WAL fsync of member 1 between two `fsyncs` readings (sum count)
fsyncs() {
  curl -s http://127.0.0.1:25379/metrics |
    awk '/^etcd_disk_wal_fsync_duration_seconds_sum /{s=$2} /^etcd_disk_wal_fsync_duration_seconds_count /{c=$2} END{print s, c}'
}
fsync_mean() { # before after
  echo "$1 $2" | awk '{n = $4 - $2; printf "%d fsyncs, mean %.3f ms", n, n ? 1000 * ($3 - $1) / n : 0}'
}
delta() { # before after
  join <(echo "$1") <(echo "$2") | awk '{printf "%s +%d  ", $1, $3 - $2}'
  echo
}

# serve DIR NODE-ID PORT [args…]: starts a node, waits until it serves.
serve() {
  local dir=$1 id=$2 port=$3
  shift 3
  "$PG" serve --data-dir "$dir" --node-id "$id" --certs pki --listen 127.0.0.1:$port \
    --metrics-listen off "$@" > "$dir.log" 2>&1 &
  pids+=($!)
  node_pids+=($!)
  for _ in $(seq 1 120); do
    grep -q "proofgate serving on" "$dir.log" && return 0
    sleep 0.25
  done
  echo "node in $dir did not start:" >&2
  cat "$dir.log" >&2
  exit 1
}
# CPU seconds (user + system) used so far by these processes.
cpu() {
  local ticks=0 p
  for p in "$@"; do
    [ -r /proc/$p/stat ] && ticks=$((ticks + $(awk '{print $14 + $15}' /proc/$p/stat)))
  done
  awk -v t=$ticks -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.2f", t / hz}'
}
stop_nodes() {
  for pid in "${pids[@]}"; do
    case " $(ps -o args= -p "$pid" 2>/dev/null)" in
      *" serve "*) kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true ;;
    esac
  done
  node_pids=()
}

bench() { # LABEL ENDPOINTS
  for c in 1 64; do
    local before after e0 n0
    before=$(counters)
    f0=$(fsyncs)
    e0=$(cpu "${members_pids[@]}")
    n0=$(cpu "${node_pids[@]}")
    echo "== $1, c=$c"
    echo "\$ proofgate bench --endpoint $2 --certs pki --matter $MATTER --seconds $S --concurrency $c"
    "$PG" bench --endpoint "$2" --certs pki --matter "$MATTER" --seconds "$S" --concurrency $c
    after=$(counters)
    echo "etcd counters: $(delta "$before" "$after")"
    echo "etcd member 1 WAL: $(fsync_mean "$f0" "$(fsyncs)")"
    echo "cpu seconds over both phases: etcd members $(awk -v a="$e0" -v b="$(cpu "${members_pids[@]}")" 'BEGIN{printf "%.2f", b - a}')  node(s) $(awk -v a="$n0" -v b="$(cpu "${node_pids[@]}")" 'BEGIN{printf "%.2f", b - a}')"
  done
}

echo "== date $(date -u +%FT%TZ), $(nproc) cores, $("$ETCD_BIN" --version | head -1)"
echo "== etcd write (create-if-absent txn, sequential)"
for args in "$E1 --etcd-txn 500" "$E3 --etcd-txn 500" "$E3 --etcd-txn 500 --etcd-pause-us 1000" "$E3 --etcd-txn 100 --etcd-batch 64"; do
  echo "\$ proofgate bench --etcd $args"
  f0=$(fsyncs)
  # shellcheck disable=SC2086
  "$PG" bench --etcd $args
  echo "etcd member 1 WAL: $(fsync_mean "$f0" "$(fsyncs)")"
done

serve solo node-1 29051
bench "one node, no etcd" https://127.0.0.1:29051
stop_nodes

# one node with etcd: batching off, then on (default), then 2 batches in flight
export PROOFGATE_ETCD_BATCH=1
serve one-nobatch node-1 29051 --etcd $E3 --etcd-prefix /bench-one-nobatch/ --mock-departments --mirror-ack 0
unset PROOFGATE_ETCD_BATCH
bench "one node, etcd (3 members), PROOFGATE_ETCD_BATCH=1 (each write alone, no batching)" https://127.0.0.1:29051
stop_nodes

serve one node-1 29051 --etcd $E3 --etcd-prefix /bench-one/ --mock-departments --mirror-ack 0
bench "one node, etcd (3 members), batched writes (default: <= 64 per txn, 1 txn in flight)" https://127.0.0.1:29051
stop_nodes

export PROOFGATE_ETCD_IN_FLIGHT=2
serve one-2 node-1 29051 --etcd $E3 --etcd-prefix /bench-one-2/ --mock-departments --mirror-ack 0
unset PROOFGATE_ETCD_IN_FLIGHT
bench "one node, etcd (3 members), batched writes, PROOFGATE_ETCD_IN_FLIGHT=2 (the default before 2026-12-07)" https://127.0.0.1:29051
stop_nodes

# three nodes: each mirrors the other two and answers once one of them holds
# the decision (--mirror-ack 1, the cluster default); then with --mirror-ack 0
serve three-1 node-1 29051 --etcd $E3 --etcd-prefix /bench-three/ --mock-departments
serve three-2 node-2 29052 --etcd $E3 --etcd-prefix /bench-three/
serve three-3 node-3 29053 --etcd $E3 --etcd-prefix /bench-three/
bench "three nodes, etcd (3 members), --mirror-ack 1 (default), departments in node-1" https://127.0.0.1:29051,https://127.0.0.1:29052,https://127.0.0.1:29053
stop_nodes

serve three0-1 node-1 29051 --etcd $E3 --etcd-prefix /bench-three0/ --mock-departments --mirror-ack 0
serve three0-2 node-2 29052 --etcd $E3 --etcd-prefix /bench-three0/ --mirror-ack 0
serve three0-3 node-3 29053 --etcd $E3 --etcd-prefix /bench-three0/ --mirror-ack 0
bench "three nodes, etcd (3 members), --mirror-ack 0, departments in node-1" https://127.0.0.1:29051,https://127.0.0.1:29052,https://127.0.0.1:29053
stop_nodes

echo "== etcd write again, after the gateway runs"
"$PG" bench --etcd $E3 --etcd-txn 500

echo "== one reservation as etcd holds it (key + value bytes), from the one-node run"
range=$(curl -s http://127.0.0.1:25379/v3/kv/range \
  -d "{\"key\":\"$(printf /bench-one/requests/ | base64 -w0)\",\"range_end\":\"$(printf /bench-one/requests0 | base64 -w0)\",\"limit\":1}")
k=$(echo "$range" | grep -o '"key":"[^"]*"' | head -1 | cut -d'"' -f4 | base64 -d)
v=$(echo "$range" | grep -o '"value":"[^"]*"' | head -1 | cut -d'"' -f4 | base64 -d)
echo "reservations under /bench-one/: $(echo "$range" | grep -o '"count":"[0-9]*"' | cut -d'"' -f4)"
echo "key ${#k} B + value ${#v} B: $k = $v"
echo "etcd member 1 database: $(curl -s http://127.0.0.1:25379/metrics | awk '/^etcd_mvcc_db_total_size_in_bytes /{printf "%.0f B", $2} /^etcd_mvcc_db_total_size_in_use_in_bytes /{printf " (in use %.0f B)", $2}')"
