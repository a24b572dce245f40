import re,sys,collections
d=collections.defaultdict(list)
for line in open(sys.argv[1]):
    line=re.sub(r"\x1b\[[0-9;]*m","",line)
    if "pg_timing" not in line: continue
    m=re.search(r'step="?([a-z_]+)"?\s+us=(\d+)',line)
    if m: d[m.group(1)].append(int(m.group(2)))
for k,v in sorted(d.items()):
    v.sort(); n=len(v)
    print(f"{k:16s} n={n:6d} p50={v[n//2]/1000:.2f}ms p90={v[int(n*0.9)]/1000:.2f}ms mean={sum(v)/n/1000:.2f}ms")
