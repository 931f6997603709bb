import os, time, shutil, sys
base = sys.argv[1]
def run(tag):
    d = os.path.join(base, 'd'); os.makedirs(d)
    t = time.perf_counter(); c0 = time.process_time()
    for i in range(6800):
        fd = os.open(os.path.join(d, 'f%d' % i), os.O_CREAT | os.O_WRONLY, 0o644); os.write(fd, b'x'); os.close(fd)
    print(tag, 'create 6800: %.3f s wall, %.3f s cpu' % (time.perf_counter() - t, time.process_time() - c0))
    shutil.rmtree(d)
os.makedirs(base, exist_ok=True)
run('first'); run('after delete'); run('after 2 deletes')
time.sleep(35); run('after 35 s')
