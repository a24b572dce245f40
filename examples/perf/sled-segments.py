import sys
f=open(sys.argv[1],'rb'); seg=int(sys.argv[2]) if len(sys.argv)>2 else 256*1024
n=0; zero_tail=0; used=0; empty=0
while True:
    b=f.read(seg)
    if not b: break
    n+=1
    s=b.rstrip(b'\0')
    used+=len(s); zero_tail+=len(b)-len(s)
    if len(s)<64: empty+=1
print(f"segments {n}, bytes up to the last nonzero {used/1e6:.1f} MB, zero tails {zero_tail/1e6:.1f} MB, near-empty segments {empty}")
