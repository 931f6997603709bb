import os, time, shutil, sys
base = sys.argv[1]; mode = sys.argv[2]
os.makedirs(base, exist_ok=True)
d = os.path.join(base, 'd'); os.makedirs(d)
if mode == 'sub':
    for k in range(256): os.makedirs(os.path.join(d, '%02x' % k))
t = time.perf_counter(); c0 = time.process_time()
for i in range(6800):
    p = os.path.join(d, '%02x' % (i % 256), 'f%d' % i) if mode == 'sub' else os.path.join(d, 'f%d' % i)
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644); os.write(fd, b'x'); os.close(fd)
print(mode, 'create 6800: %.3f s wall, %.3f s cpu' % (time.perf_counter() - t, time.process_time() - c0))
shutil.rmtree(d)
