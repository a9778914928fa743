#!/usr/bin/env python3
"""A legitimate session held in DATA: from SRC, EHLO, MAIL, RCPT and DATA to DST:25 (a real
MTA), then waits (at most WAIT s) for the file GO to exist, sends LINE as a body line, ends the
message and prints the server's reply code to it (or how the session ended).
Usage: hold_session.py SRC DST GO 'LINE' [WAIT]"""
import os, socket, sys, time

src, dst, go, line = sys.argv[1:5]
wait = float(sys.argv[5]) if len(sys.argv) > 5 else 120
s = socket.socket(); s.settimeout(10); s.bind((src, 0))
try:
    s.connect((dst, 25))
    s.recv(1024)
    for cmd in ["EHLO legit.test", "MAIL FROM:<a@partner.test>", "RCPT TO:<b@hosted.test>", "DATA"]:
        s.sendall(cmd.encode() + b"\r\n")
        reply = s.recv(4096)
        if not reply[:1] in (b"2", b"3"):
            print("refused:" + reply[:3].decode(errors="replace")); sys.exit(0)
    print("in-data", flush=True)
    deadline = time.monotonic() + wait
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.1)
    s.sendall(b"Subject: eviction test\r\n\r\n" + line.encode() + b"\r\nThe rest of the body.\r\n.\r\n")
    print(s.recv(1024)[:3].decode(errors="replace"))
    s.sendall(b"QUIT\r\n")
except ConnectionResetError:
    print("reset")
except (socket.timeout, TimeoutError):
    print("timeout")
