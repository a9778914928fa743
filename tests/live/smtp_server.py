#!/usr/bin/env python3
"""A tiny line-based SMTP-ish server for the live tests: answers every line, and logs, per
connection, how it ended and how long after its last input. One thread per connection.
Usage: smtp_server.py ADDR PORT LOGFILE   (ADDR IPv4 or IPv6)"""
import socket, sys, threading, time

addr, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lock = threading.Lock()

def note(line):
    with lock, open(log, "a") as f:
        f.write(line + "\n")

def serve(conn, peer):
    last = time.monotonic()
    conn.sendall(b"220 test ESMTP\r\n")
    buf = b""
    try:
        conn.settimeout(60)
        while True:
            data = conn.recv(4096)
            if not data:
                note(f"{peer[0]} {peer[1]} closed {time.monotonic() - last:.3f}")
                return
            last = time.monotonic()
            buf += data
            while b"\r\n" in buf:
                line, buf = buf.split(b"\r\n", 1)
                conn.sendall(b"221 bye\r\n" if line.upper() == b"QUIT" else b"250 ok\r\n")
    except OSError as e:
        note(f"{peer[0]} {peer[1]} {type(e).__name__}:{e.errno} {time.monotonic() - last:.3f}")
    finally:
        conn.close()

srv = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((addr, port))
srv.listen(512)
while True:
    c, p = srv.accept()
    threading.Thread(target=serve, args=(c, p), daemon=True).start()
