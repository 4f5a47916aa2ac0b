#!/usr/bin/env python3
"""Memory the proxy holds per client connection, and after a burst.

Starts the built-in emulator and the proxy in front of it (127.0.0.1 only), then:
  1. idle: the proxy's RSS once it has logged in and served one request;
  2. open: N client connections, each having completed one request and held open (each has
     its own connection to Creatio too, since they were made concurrently);
  3. closed: the same N closed again, after the proxy has seen them go.
Prints RSS (total, anonymous, file-backed) at each step and the bytes per connection, from
/proc/<pid>/smaps_rollup. Stops what it starts by PID.

Usage: bench/connections.py [BINARY] [N]   (defaults: target/release/creatio-proxy 256)
Environment: any MIMALLOC_* variables are passed on to the proxy.
"""
import os
import socket
import subprocess
import sys
import tempfile
import time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/creatio-proxy"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 256
EMU, PROXY, ADMIN = 19381, 19380, 19390
REQUEST = b"GET /0/odata/Contact?$top=1 HTTP/1.1\r\nHost: localhost\r\n\r\n"


def rss(pid):
    """(total, anonymous, file) RSS in KiB."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":"):
                fields[parts[0][:-1]] = int(parts[1])
    anon = fields.get("Anonymous", 0)
    return fields.get("Rss", 0), anon, fields.get("Rss", 0) - anon


def wait_port(port, deadline=30.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def read_answer(sock):
    """Reads one answer with a Content-Length body; returns the status line."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("the proxy closed a connection")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        body += sock.recv(65536)
    return head.split(b"\r\n")[0].decode()


def connections(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def main():
    work = tempfile.mkdtemp()
    config = os.path.join(work, "config.toml")
    with open(config, "w") as f:
        f.write(
            f'[server]\nlisten = "127.0.0.1:{PROXY}"\n[admin]\nlisten = "127.0.0.1:{ADMIN}"\n'
            f'[creatio]\nurl = "http://127.0.0.1:{EMU}"\n'
            '[auth]\nusername = "Supervisor"\npassword = "Supervisor"\n[log]\nlevel = "warn"\n'
        )
    log = open(os.path.join(work, "log"), "w")
    emu = subprocess.Popen([BIN, "emulator", "--listen", f"127.0.0.1:{EMU}"], stdout=log, stderr=log)
    proxy = None
    try:
        wait_port(EMU)
        proxy = subprocess.Popen([BIN, "--config", config], stdout=log, stderr=log)
        wait_port(PROXY)
        with socket.create_connection(("127.0.0.1", PROXY)) as s:
            s.sendall(REQUEST)
            print("first request:", read_answer(s))
        idle = rss(proxy.pid)
        baseline = connections(proxy.pid)
        socks = [socket.create_connection(("127.0.0.1", PROXY)) for _ in range(N)]
        for s in socks:
            s.sendall(REQUEST)
        for s in socks:
            read_answer(s)
        opened = rss(proxy.pid)
        fds = connections(proxy.pid)
        print(f"file descriptors: {baseline} idle, {fds} with {N} clients")
        for s in socks:
            s.close()
        # Until the proxy has closed its side of every client connection (the pool keeps
        # its connections to Creatio).
        end = time.monotonic() + 30
        while connections(proxy.pid) > fds - N and time.monotonic() < end:
            time.sleep(0.05)
        closed = rss(proxy.pid)
        print(f"{'':8} {'RSS KiB':>9} {'anon KiB':>9} {'file KiB':>9}")
        for name, r in (("idle", idle), (f"open {N}", opened), ("closed", closed)):
            print(f"{name:8} {r[0]:9} {r[1]:9} {r[2]:9}")
        print(f"per client connection (and its Creatio connection): "
              f"{(opened[0] - idle[0]) * 1024 // N} bytes of RSS, "
              f"{(opened[1] - idle[1]) * 1024 // N} anonymous")
    finally:
        for p in (proxy, emu):
            if p is not None:
                p.terminate()
                p.wait()


if __name__ == "__main__":
    main()
