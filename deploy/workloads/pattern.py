"""A real workload with a known memory state, for tests, the demo and benchmarks.

Fills <mib> MiB with a pattern derived from <seed>, every 4 KiB page of it different (its index is in its
first 8 bytes, so no two pages are the same, like real memory and unlike a repeated block, which content-
addressed storage would keep once), then ticks forever, printing a counter that lives in its memory. When
it notices a gap in wall-clock time (it was frozen, dumped and restored) or gets SIGUSR1, it re-hashes the
whole buffer and prints whether the pattern is intact. After a restore the counter continues from where it
was, which is how callers tell that its state, not just its code, survived.

SIGUSR2 rewrites <churn> percent (default 5) of the buffer, one contiguous run of pages (the next run at each
signal), as a training step rewrites some tensors: the memory a second checkpoint finds changed. It prints
"churned generation=<n>" once done; the pattern it verifies against from then on includes the change.
"""
import hashlib
import os
import signal
import sys
import time

mib = int(sys.argv[1]) if len(sys.argv) > 1 else 64
seed = sys.argv[2] if len(sys.argv) > 2 else "kybernate"
interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.2
churn = float(sys.argv[4]) if len(sys.argv) > 4 else 5.0

PAGE = 4096
block = hashlib.sha256(seed.encode()).digest() * (1 << 15)  # 1 MiB
buf = bytearray(block * mib)
pages = len(buf) // PAGE
for p in range(pages):
    buf[p * PAGE : p * PAGE + 8] = p.to_bytes(8, "little")
expect = hashlib.sha256(buf).hexdigest()
generation = 0
print(f"start pid={os.getpid()} mib={mib} seed={seed} sha256={expect}", flush=True)

verify_now = False
churn_now = False


def on_usr1(_sig, _frame):
    global verify_now
    verify_now = True


def on_usr2(_sig, _frame):
    global churn_now
    churn_now = True


signal.signal(signal.SIGUSR1, on_usr1)
signal.signal(signal.SIGUSR2, on_usr2)

counter = 0
last = time.time()
while True:
    counter += 1
    now = time.time()
    gap = now - last
    last = now
    if churn_now:
        churn_now = False
        generation += 1
        run = max(1, int(pages * churn / 100))
        start = ((generation - 1) * run) % max(1, pages - run + 1)
        stamp = generation.to_bytes(8, "little")
        for p in range(start, start + run):
            buf[p * PAGE + 8 : p * PAGE + 16] = stamp
        expect = hashlib.sha256(buf).hexdigest()
        print(f"churned generation={generation} pages={run} from={start}", flush=True)
        last = time.time()
    if verify_now or gap > interval + 1.5:
        verify_now = False
        ok = hashlib.sha256(buf).hexdigest() == expect
        print(f"verify counter={counter} gap={gap:.1f}s pid={os.getpid()} pattern_ok={ok}", flush=True)
        last = time.time()
    print(f"tick {counter}", flush=True)
    time.sleep(interval)
