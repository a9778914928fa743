#!/usr/bin/env python3
"""One spam session against Exim, timing the Exim process that serves it.
Connects from SRC, sends EHLO and MAIL FROM, finds the Exim child serving this connection
(ss -tnp in SERVER_NS), sends a RCPT for example.com, and prints:
  <client outcome> <seconds until the Exim child exited, or 'alive' after WAIT s>
With --tls, the session switches to TLS (STARTTLS) after the first EHLO: the RCPT is then
invisible to any packet filter.
Usage: exim_session.py SRC DST SERVER_NS [WAIT] [--tls]"""
import os, re, socket, ssl, subprocess, sys, time

args = [a for a in sys.argv[1:] if not a.startswith("--")]
tls = "--tls" in sys.argv
src, dst, ns = args[0], args[1], args[2]
wait = float(args[3]) if len(args) > 3 else 3.0
s = socket.socket(); s.settimeout(5); s.bind((src, 0)); s.connect((dst, 25))
port = s.getsockname()[1]
if not s.recv(1024).startswith(b"220"):
    print("refused -"); sys.exit(0)  # e.g. 421: the server is at its session limit
s.sendall(b"EHLO bot.test\r\n"); s.recv(4096)
if tls:
    s.sendall(b"STARTTLS\r\n")
    if not s.recv(1024).startswith(b"220"):
        print("no-starttls -"); sys.exit(0)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = ctx.wrap_socket(s)
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
except (ConnectionResetError, ssl.SSLError, ssl.SSLEOFError):
    outcome = "reset"
except (socket.timeout, TimeoutError):
    outcome = "timeout"
while time.monotonic() - t0 < wait:
    if not os.path.exists(f"/proc/{pid}"):
        print(outcome, f"{time.monotonic() - t0:.3f}"); sys.exit(0)
    time.sleep(0.01)
print(outcome, "alive")
