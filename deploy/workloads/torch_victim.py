"""A PyTorch workload holding <gib> GiB in VRAM; every 0.5 s it checks its tensor against the expected sum.

After a checkpoint and restore (CUDA driver API + CRIU) its `tick` lines carry on from the dumped counter and
say sum_ok=True when the VRAM contents survived.
"""
import os
import sys
import time

import torch

gib = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
n = int(gib * (1 << 30) // 4)
t = torch.arange(n, dtype=torch.float32, device="cuda") * 0.5
expect = float(t.double().sum().item())
print(f"start pid={os.getpid()} gib={gib} expect={expect}", flush=True)
i = 0
while True:
    s = float(t.double().sum().item())
    print(f"tick {i} sum_ok={s == expect} t={time.time():.3f}", flush=True)
    i += 1
    time.sleep(0.5)
