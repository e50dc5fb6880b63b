"""A real workload with network sockets, for tests and provisioning's socket check.

Listens on TCP <host>:<port> (port 0: the kernel picks one; the line `listening port=N` names it) and answers
every line a client sends with `n=<count> <line>`, where count is the number of requests served so far by the
whole process, across all connections. Clients may keep their connection open between requests. After a
checkpoint and restore, the same port answering with a count that continues from where it was proves that
the listening socket, the process's memory and (when restored on the same host with --tcp-established) an
already established connection all survived.

Single-threaded with select(), so the process tree is one task with a listening and some established sockets.
Once a second it prints `alive n=<count>`, so its log shows when it ran; the restore's Verifying step does not
need it (an idle server counts as Running; `--ready-tcp <port>` makes the restore wait until the port answers).
"""
import os
import select
import socket
import sys
import time

port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"

server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
# A restore on the same host binds the port again while the original's connections may linger in TIME_WAIT.
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((host, port))
server.listen(16)
print(f"listening port={server.getsockname()[1]} pid={os.getpid()}", flush=True)

count = 0
buffers = {}
last_alive = time.monotonic()
while True:
    readable, _, _ = select.select([server, *buffers], [], [], 1.0)
    if time.monotonic() - last_alive >= 1.0:
        last_alive = time.monotonic()
        print(f"alive n={count}", flush=True)
    for s in readable:
        if s is server:
            conn, _ = server.accept()
            buffers[conn] = b""
            continue
        try:
            data = s.recv(4096)
        except OSError:
            data = b""
        if not data:
            del buffers[s]
            s.close()
            continue
        buffers[s] += data
        while b"\n" in buffers[s]:
            line, buffers[s] = buffers[s].split(b"\n", 1)
            count += 1
            s.sendall(b"n=%d %s\n" % (count, line))
            print(f"served n={count}", flush=True)
