#!/usr/bin/env python3
"""Request/response latency over the filter: N round trips of one SMTP line on one connection.
Prints p50 and p99 in microseconds. Usage: rtt.py DST N"""
import socket, sys, time
dst, n = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((dst, 25), timeout=5)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.recv(1024)
rtts = []
for _ in range(n):
    t = time.perf_counter_ns()
    s.sendall(b"NOOP\r\n")
    s.recv(1024)
    rtts.append((time.perf_counter_ns() - t) / 1000)
rtts.sort()
print(f"{rtts[len(rtts) // 2]:.0f} {rtts[int(len(rtts) * 0.99)]:.0f}")
