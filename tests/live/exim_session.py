#!/usr/bin/env python3
"""One spam session against Exim, timing the Exim process that serves it.
Connects from SRC, sends EHLO and MAIL FROM, finds the Exim child serving this connection
(ss -tnp in SERVER_NS), sends a RCPT for example.com, and prints:
  <client outcome> <seconds until the Exim child exited, or 'alive' after WAIT s>
Usage: exim_session.py SRC DST SERVER_NS [WAIT]"""
import os, re, socket, subprocess, sys, time

src, dst, ns = sys.argv[1], sys.argv[2], sys.argv[3]
wait = float(sys.argv[4]) if len(sys.argv) > 4 else 3.0
s = socket.socket(); s.settimeout(5); s.bind((src, 0)); s.connect((dst, 25))
port = s.getsockname()[1]
if not s.recv(1024).startswith(b"220"):
    print("refused -"); sys.exit(0)  # e.g. 421: the server is at its session limit
s.sendall(b"EHLO bot.test\r\n"); s.recv(4096)
s.sendall(b"MAIL FROM:<x@bot.test>\r\n"); s.recv(1024)
out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-tnpH", "state", "established",
                      f"( sport = :25 and dport = :{port} )"], capture_output=True, text=True).stdout
m = re.search(r"pid=(\d+)", out)
if not m:
    print("no-exim-child -"); sys.exit(0)
pid = int(m.group(1))
t0 = time.monotonic()
s.sendall(b"RCPT TO:<victim@example.com>\r\n")
try:
    outcome = "reset" if s.recv(1024) == b"" else "answered"
except ConnectionResetError:
    outcome = "reset"
except (socket.timeout, TimeoutError):
    outcome = "timeout"
while time.monotonic() - t0 < wait:
    if not os.path.exists(f"/proc/{pid}"):
        print(outcome, f"{time.monotonic() - t0:.3f}"); sys.exit(0)
    time.sleep(0.01)
print(outcome, "alive")
