import sys,re,collections
def load(p):
    d={}
    for line in open(p):
        if line.startswith('#') or ' ' not in line: continue
        parts=line.split()
        if len(parts)<3: continue
        m,name,val=parts[0],parts[1],parts[2]
        try: d[(m,name)]=float(val)
        except: pass
    return d
a,b=load(sys.argv[1]),load(sys.argv[2])
def delta(m,name):
    return b.get((m,name),0)-a.get((m,name),0)
for m in ['m1','m2','m3']:
    out=[]
    for label,base in [('wal_fsync','etcd_disk_wal_fsync_duration_seconds'),('backend_commit','etcd_disk_backend_commit_duration_seconds')]:
        c=delta(m,base+'_count'); s=delta(m,base+'_sum')
        out.append(f"{label} n={c:.0f} mean={1000*s/c if c else 0:.2f}ms")
    txn=[k for k in b if k[0]==m and k[1].startswith('grpc_server_handling_seconds_count') and 'Txn' in k[1]]
    for k in txn:
        c=delta(m,k[1]); s=delta(m,k[1].replace('_count','_sum'))
        if c: out.append(f"server Txn n={c:.0f} mean={1000*s/c:.2f}ms")
    lead=b.get((m,'etcd_server_is_leader'),0)
    print(f"  {m}{' (leader)' if lead else ''}: "+"; ".join(out))
