#!/usr/bin/env python3
"""Live-test load: connect from many source addresses at once.
  flood.py spam  DST PREFIX FIRST COUNT   each source sends a spam RCPT; prints how many got reset
  flood.py probe DST PREFIX FIRST COUNT   one SYN each (1.5 s); prints how many could NOT connect
PREFIX FIRST COUNT name the sources PREFIX.(FIRST+i>>8).(FIRST+i&255), e.g. 198.19 256 2000.
Bounded: at most COUNT connections, 64 at a time, each with a timeout."""
import selectors, socket, sys, time
from concurrent.futures import ThreadPoolExecutor

mode, dst, prefix, first, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
srcs = [f"{prefix}.{(first + i) >> 8}.{(first + i) & 255}" for i in range(count)]

def spam(src):
    s = socket.socket(); s.settimeout(5); s.bind((src, 0))
    try:
        s.connect((dst, 25)); s.recv(1024)
        s.sendall(b"EHLO bot\r\n"); s.recv(1024)
        s.sendall(b"MAIL FROM:<x@bot.test>\r\n"); s.recv(1024)
        s.sendall(b"RCPT TO:<victim@example.com>\r\n")
        return s.recv(1024) == b""
    except ConnectionResetError:
        return True
    except OSError:
        return False
    finally:
        s.close()

if mode == "spam":
    with ThreadPoolExecutor(64) as pool:
        print(sum(pool.map(spam, srcs)))
elif mode == "probe":
    sel = selectors.DefaultSelector(); socks = []
    for src in srcs:
        s = socket.socket(); s.setblocking(False); s.bind((src, 0)); s.connect_ex((dst, 25))
        sel.register(s, selectors.EVENT_WRITE); socks.append(s)
    connected = 0; deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline and connected < len(socks):
        for key, _ in sel.select(timeout=0.1):
            sel.unregister(key.fileobj)
            if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                connected += 1
    print(len(socks) - connected)
