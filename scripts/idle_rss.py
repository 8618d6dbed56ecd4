#!/usr/bin/env python3
"""Server memory per idle connection: opens N connections to a running ringcast server
on loopback, reads each welcome line, waits a second, and reports the growth of the
server's resident memory (VmRSS) per connection.

usage: scripts/idle_rss.py PORT N SERVER_PID
"""
import resource
import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


def main():
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    port, n, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if n + 16 > hard:
        raise SystemExit(f"{n} connections do not fit the open-files limit {hard}")
    base = rss_kib(pid)
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    for s in socks:
        if not s.recv(200).startswith(b"* you are"):
            raise SystemExit("unexpected welcome line")
    time.sleep(1)
    after = rss_kib(pid)
    print(f"base {base} KiB, with {n} idle: {after} KiB, per connection {(after - base) * 1024 / n:.0f} B")


if __name__ == "__main__":
    main()
