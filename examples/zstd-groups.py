#!/usr/bin/env python3
"""Issue 12 (BENCHMARKS.md, 2026-12-07): zstd level 3 (as sled is configured) over the
entries of an `audit export` file, each entry alone vs several compressed together.
Usage: python3 examples/zstd-groups.py EXPORT_FILE  (needs the `zstandard` package)."""
import sys, zstandard
data = open(sys.argv[1], 'rb').read()
recs = []; i = 0
while i < len(data):
    n = 0; s = 0
    while True:
        b = data[i]; i += 1; n |= (b & 0x7f) << s; s += 7
        if b < 0x80: break
    recs.append(data[i:i+n]); i += n
sizes = sorted(len(r) for r in recs)
big = [r for r in recs if len(r) > 600]   # entries (checkpoints are small notes)
print(f"records {len(recs)}, of >600 B (entries): {len(big)}, mean {sum(map(len,big))/len(big):.0f} B")
c = zstandard.ZstdCompressor(level=3)
raw = sum(map(len, big))
for g in (1, 4, 16, 64, 256):
    tot = 0
    for k in range(0, len(big), g):
        tot += len(c.compress(b''.join(big[k:k+g])))
    print(f"group of {g:4}: {tot/len(big):7.0f} B/entry compressed ({tot/raw:.2f} of raw)")
