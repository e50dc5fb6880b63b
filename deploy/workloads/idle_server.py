"""An idle TCP server, for tests: listens on 127.0.0.1:<port> and blocks in accept(), using no CPU at all.

Each connection gets one line with a counter that lives in the process's memory, then is closed, so a
checkpoint never holds an established connection. After a restore the counter goes on from where it was:
that is how a test tells that the state, not just the code, survived. Like a redis-server with no clients,
it never makes "progress" while idle, yet it is running and ready.
"""
import os
import socket
import sys

port = int(sys.argv[1])
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(16)
print(f"listening pid={os.getpid()} port={port}", flush=True)
served = 0
while True:
    conn, _ = srv.accept()
    served += 1
    try:
        conn.sendall(f"served={served}\n".encode())
    except OSError:
        pass
    conn.close()
