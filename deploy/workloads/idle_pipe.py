"""An idle workload, for tests: blocks reading a pipe nobody writes, using no CPU at all.

It keeps a random token in memory, printed at start and again on SIGUSR1: after a restore the same token
proves that its state, not just its code, survived. Like a redis-server with no clients it never makes
"progress" while it waits, yet it is running. No sockets: the pinned CRIU 4.1.1 cannot dump them on 6.x
kernels that refuse its socket options.
"""
import os
import signal

token = os.urandom(8).hex()


def on_usr1(_sig, _frame):
    print(f"token={token}", flush=True)


signal.signal(signal.SIGUSR1, on_usr1)
r, w = os.pipe()
print(f"waiting pid={os.getpid()} token={token}", flush=True)
while True:
    os.read(r, 1)
