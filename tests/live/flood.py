#!/usr/bin/env python3
"""Live-test load: connect from many source addresses at once.
  flood.py spam  DST PREFIX FIRST COUNT   each source sends a spam RCPT; prints how many got reset
  flood.py probe DST PREFIX FIRST COUNT   one SYN each (1.5 s); prints how many could NOT connect
PREFIX FIRST COUNT name the sources PREFIX.(FIRST+i>>8).(FIRST+i&255), e.g. 198.19 256 2000.
Bounded: at most COUNT connections, 64 at a time (FLOOD_CONCURRENCY), each with a timeout.
A spam session counts as reset only if the server greeted it with 220 first."""
import os, selectors, socket, sys, threading, time
from concurrent.futures import ThreadPoolExecutor

# With FLOOD_PROGRESS=FILE, the number of finished sessions is written there twice a second.
progress_file = os.environ.get("FLOOD_PROGRESS")
done = 0
done_lock = threading.Lock()

mode, dst, prefix, first, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
srcs = [f"{prefix}.{(first + i) >> 8}.{(first + i) & 255}" for i in range(count)]

def spam(src):
    global done
    try:
        return spam_once(src)
    finally:
        with done_lock:
            done += 1

def spam_once(src):
    s = socket.socket(); s.settimeout(5); s.bind((src, 0))
    try:
        s.connect((dst, 25))
        if not s.recv(1024).startswith(b"220"):
            return False  # refused by the server (e.g. 421 at its session limit), not reset
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

def report():
    while progress_file:
        with open(progress_file + ".tmp", "w") as f:
            f.write(str(done))
        os.replace(progress_file + ".tmp", progress_file)
        time.sleep(0.5)

if mode == "spam":
    threading.Thread(target=report, daemon=True).start()
    started = time.monotonic()
    with ThreadPoolExecutor(int(os.environ.get("FLOOD_CONCURRENCY", "64"))) as pool:
        resets = sum(pool.map(spam, srcs))
    if progress_file:
        # The last word: every session done, and how long the whole flood took.
        with open(progress_file + ".tmp", "w") as f:
            f.write(str(done))
        os.replace(progress_file + ".tmp", progress_file)
        with open(progress_file + ".secs", "w") as f:
            f.write("%.1f" % (time.monotonic() - started))
    print(resets)
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
