#!/usr/bin/env python3
"""Live-test client: from SRC, connect to DST:25, send LINES (\\n-separated, each \\r\\n-ended),
and print one word for what happened: ok, reset, timeout, refused.
Usage: smtp_client.py SRC DST 'EHLO x\\nRCPT TO:<a@example.com>' [TIMEOUT]"""
import socket, sys

src, dst, lines = sys.argv[1], sys.argv[2], sys.argv[3].split("\\n")
timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 3.0
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(timeout)
s.bind((src, 0))
try:
    s.connect((dst, 25))
    s.recv(1024)
    for line in lines:
        s.sendall(line.encode() + b"\r\n")
        if not s.recv(1024):
            print("closed"); sys.exit(0)
    print("ok")
except ConnectionResetError:
    print("reset")
except (socket.timeout, TimeoutError):
    print("timeout")
except ConnectionRefusedError:
    print("refused")
