#!/usr/bin/env python3
"""Share of CPU samples by class of symbol, from `perf report --no-children --sort sym --stdio`
on standard input: python3 perf-classes.py < report.txt"""
import re, sys
CLASSES = [  # first match wins
    ("Ed25519 (ring: verify's double scalar mult, sign's base mult, field arithmetic)",
     r"curve25519|x25519|ed25519|(?<![A-Za-z_])(ge|fe4?|sc)_|^slide$"),
    ("malloc/free", r"malloc|free|_int_|unlink_chunk|realloc|__rdl_|__rust_alloc|__rust_dealloc|consolidate"),
    ("memcpy/memmove/memset/memcmp", r"mem(move|cpy|set|cmp)"),
    ("zstd (inside sled, and the log's groups)", r"ZSTD|HUF_|FSE_|zstd"),
    ("SHA-256/512", r"sha256|sha512"),
    ("h2/hyper/tonic/tower", r"h2::|hyper|tonic|tower"),
    ("tokio", r"tokio"),
    ("sled", r"sled"),
    ("rustls/TLS record crypto", r"rustls|aes|gcm|chacha|poly1305"),
    ("prost", r"prost"),
]
totals = {name: 0.0 for name, _ in CLASSES}
kernel = 0.0
other = 0.0
for line in sys.stdin:
    m = re.match(r"\s*([0-9.]+)%\s+(\[.\])\s+(.*)", line)
    if not m:
        continue
    pct, kind, sym = float(m.group(1)), m.group(2), m.group(3)
    if kind == "[k]":  # every kernel sample is the kernel's, whatever its name
        kernel += pct
        continue
    for name, pattern in CLASSES:
        if re.search(pattern, sym):
            totals[name] += pct
            break
    else:
        other += pct
for name, _ in CLASSES:
    print(f"{totals[name]:5.1f} %  {name}")
print(f"{kernel:5.1f} %  kernel")
print(f"{other:5.1f} %  everything else")
