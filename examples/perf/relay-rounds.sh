#!/bin/bash
# The rounds relay-inproc.sh and relay-separate.sh run against a serving node:
# relay-rounds.sh TAG ENDPOINT CERTS — relay baseline at c=64, c=1 and c=64 again, 4 s a phase.
B=${B:-target/release/proofgate}
for c in 64 1 64; do
  echo "== $1 c=$c"
  $B bench --endpoint $2 --certs $3 --seconds 4 --concurrency $c \
    --matter public-rental-housing --baseline relay 2>&1 | grep -E "relay|Submit|ratio|retr"
done
