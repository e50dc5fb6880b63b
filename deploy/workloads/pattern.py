"""A real workload with a known memory state, for tests, the demo and benchmarks.

Fills <mib> MiB with a pattern derived from <seed>, then ticks forever, printing a counter that lives in
its memory. When it notices a gap in wall-clock time (it was frozen, dumped and restored) or gets SIGUSR1,
it re-hashes the whole buffer and prints whether the pattern is intact. After a restore the counter
continues from where it was, which is how callers tell that its state, not just its code, survived.
"""
import hashlib
import os
import signal
import sys
import time

mib = int(sys.argv[1]) if len(sys.argv) > 1 else 64
seed = sys.argv[2] if len(sys.argv) > 2 else "kybernate"
interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.2

block = hashlib.sha256(seed.encode()).digest() * (1 << 15)  # 1 MiB
buf = bytearray(block * mib)
expect = hashlib.sha256(buf).hexdigest()
print(f"start pid={os.getpid()} mib={mib} seed={seed} sha256={expect}", flush=True)

verify_now = False


def on_usr1(_sig, _frame):
    global verify_now
    verify_now = True


signal.signal(signal.SIGUSR1, on_usr1)

counter = 0
last = time.time()
while True:
    counter += 1
    now = time.time()
    gap = now - last
    last = now
    if verify_now or gap > interval + 1.5:
        verify_now = False
        ok = hashlib.sha256(buf).hexdigest() == expect
        print(f"verify counter={counter} gap={gap:.1f}s pid={os.getpid()} pattern_ok={ok}", flush=True)
        last = time.time()
    print(f"tick {counter}", flush=True)
    time.sleep(interval)
