#!/usr/bin/env python3
"""Bans many addresses through a daemon's control socket, paced: one connection, requests
written in batches and their answers read back (every answer must be ok).
Usage: bulk_add.py SOCKET COUNT RATE_PER_S FIRST_INDEX [TTL] [v4|v6]
Addresses: v4 198.18.0.0/15 from 198.18.128.0 + index (at most 32,768), v6 2001:db8:5b::INDEX.
Prints: added N in S s (R/s)."""
import json, socket, sys, time

path, count, rate, first = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
ttl = sys.argv[5] if len(sys.argv) > 5 else "1h"
family = sys.argv[6] if len(sys.argv) > 6 else "v6"
if family == "v4" and first + count > 32768:
    sys.exit("v4 addresses: at most 32,768 (198.18.128.0/17)")


def addr(i):
    if family == "v4":
        n = (198 << 24) | (18 << 16) | 0x8000 + i
        return "%d.%d.%d.%d" % (n >> 24, (n >> 16) & 255, (n >> 8) & 255, n & 255)
    return "2001:db8:5b::%x:%x" % (i >> 16, i & 0xFFFF)


s = socket.socket(socket.AF_UNIX)
s.connect(path)
f = s.makefile("rb")
batch = max(1, min(1000, int(rate / 100) or 1))
start = time.monotonic()
done = 0
while done < count:
    n = min(batch, count - done)
    lines = "".join(json.dumps({"cmd": "add", "addr": addr(first + done + i), "ttl": ttl}) + "\n" for i in range(n))
    s.sendall(lines.encode())
    for _ in range(n):
        a = json.loads(f.readline())
        if not a.get("ok"):
            sys.exit("add refused: %s" % a)
    done += n
    due = start + done / rate
    now = time.monotonic()
    if due > now:
        time.sleep(due - now)
secs = time.monotonic() - start
print("added %d in %.2f s (%.0f/s)" % (done, secs, done / secs))
