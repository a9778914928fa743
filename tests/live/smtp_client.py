#!/usr/bin/env python3
"""Live-test client: from SRC, connect to DST:25, send LINES (\\n-separated, each \\r\\n-ended),
and print one word for what happened: ok, reset, timeout, refused. A line containing <SPLIT> is
sent as two TCP segments (TCP_NODELAY, 50 ms apart), cut there.
Usage: smtp_client.py SRC DST 'EHLO x\\nRCPT TO:<a@example.com>' [TIMEOUT]"""
import socket, sys, time

src, dst, lines = sys.argv[1], sys.argv[2], sys.argv[3].split("\\n")
timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 3.0
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.settimeout(timeout)
s.bind((src, 0))
try:
    s.connect((dst, 25))
    s.recv(1024)
    for line in lines:
        parts = (line + "\r\n").split("<SPLIT>")
        for i, part in enumerate(parts):
            if i:
                time.sleep(0.05)
            s.sendall(part.encode())
        if not s.recv(1024):
            print("closed"); sys.exit(0)
    print("ok")
except ConnectionResetError:
    print("reset")
except (socket.timeout, TimeoutError):
    print("timeout")
except ConnectionRefusedError:
    print("refused")
