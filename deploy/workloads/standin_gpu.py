"""A workload that holds a context in Kybernate's STAND-IN CUDA driver (deploy/native/standin-cuda), for tests.

Loads libcuda.so.1 (the stand-in, found through LD_LIBRARY_PATH as the real one would be), calls cuInit and
the stand-in's test-only standinAlloc(<mib> MiB, <seed>), so the agent sees a process holding CUDA. Then ticks
forever; every <verify_every> ticks, and after a gap in wall-clock time (it was frozen, dumped and restored),
it reads its "VRAM" back (standinVerify, which waits while the driver has the process locked) and prints
whether the pattern is intact and which device-memory file holds it now.
"""
import ctypes
import os
import sys
import time

mib = int(sys.argv[1]) if len(sys.argv) > 1 else 16
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 7
interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.2
verify_every = int(sys.argv[4]) if len(sys.argv) > 4 else 10

cuda = ctypes.CDLL("libcuda.so.1")
cuda.standinAlloc.argtypes = [ctypes.c_uint64, ctypes.c_uint32]
cuda.standinVramPath.restype = ctypes.c_char_p
rc = cuda.cuInit(0)
if rc != 0:
    sys.exit(f"cuInit failed: CUresult {rc}")
rc = cuda.standinAlloc(mib << 20, seed)
if rc != 0:
    sys.exit(f"standinAlloc failed: CUresult {rc}")
print(f"start pid={os.getpid()} mib={mib} seed={seed} vram={cuda.standinVramPath().decode()}", flush=True)

counter = 0
last = time.time()
while True:
    counter += 1
    now = time.time()
    gap = now - last
    if counter % verify_every == 0 or gap > interval + 1.5:
        ok = cuda.standinVerify()
        print(f"verify counter={counter} gap={gap:.1f}s vram_ok={ok == 1} vram={cuda.standinVramPath().decode()}", flush=True)
    last = time.time()
    print(f"tick {counter}", flush=True)
    time.sleep(interval)
