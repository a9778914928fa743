#!/usr/bin/env python3
"""Differential test driver: sends a sequence of TCP segments over loopback and reports, per
segment, what the filter in this namespace did: accept (delivered to the local stack), reset
(not delivered, answered with a RST), drop (neither). A segment's seq is its identity and its
ack that plus one, so a RST answering it (REJECT's: seq = the segment's ack) is told from
stringban's crafted RST toward the local side (seq = the segment's seq), which is ignored.

Usage: diffsend.py PACKETS.jsonl OUT.txt [--forward OUT_IF IN_IF DST]
With --forward (IPv4 only), the filter is a router's FORWARD chain: segments go to DST (not an
address of this namespace) out of OUT_IF, routed through the router's namespace back in on
IN_IF; delivered means seen arriving on IN_IF, reset means a RST arriving on OUT_IF (both read
with packet sockets: this namespace neither forwards nor answers them).
Each input line: {"id": N, "v6": bool, "src": "127.1.0.7", "sport": P, "dport": 25, "ttl": 64,
"payload": "<hex>", optional "pause": seconds to wait before sending it}. Destination: 127.0.0.1 or ::1. A segment carries seq = ack = a number made
from its id, so that a RST (whose seq is the offending segment's ack) names it. Packets are sent
in order, 300 us apart; the verdicts are read after the last one."""
import json, os, select, socket, struct, sys, time

from inet import checksum


def tcp(src, dst, sport, dport, seq, ack, payload, v6):
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, 0x18, 65535, 0, 0) + payload
    if v6:
        pseudo = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + struct.pack("!IxxxB", len(hdr), 6)
    else:
        pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(hdr))
    return hdr[:16] + struct.pack("!H", checksum(pseudo + hdr)) + hdr[18:]


def ident(i):
    return (0x10000000 + i * 4096) & 0xFFFFFFFF


def main():
    packets = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    if "--forward" in sys.argv:
        at = sys.argv.index("--forward")
        out_if, in_if, fdst = sys.argv[at + 1:at + 4]
        return forward(packets, out_if, in_if, fdst)
    s4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    # Delivered TCP segments (raw sockets see a segment once the stack accepts it, past INPUT).
    r4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    r6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_TCP)
    for r in (r4, r6):
        r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        r.setblocking(False)
    by_ident = {ident(p["id"]): p["id"] for p in packets}
    delivered, reset = set(), set()

    def drain(deadline):
        while True:
            left = deadline - time.monotonic()
            ready = select.select([r4, r6], [], [], max(0, left))[0]
            if not ready:
                return
            for r in ready:
                while True:
                    try:
                        data = r.recv(70000)
                    except BlockingIOError:
                        break
                    if r is r4:
                        ihl = (data[0] & 15) * 4
                        seg = data[ihl:]
                    else:
                        seg = data  # IPv6 raw sockets hand the transport header
                    if len(seg) < 20:
                        continue
                    sport, dport, seq, ack, off, flags = struct.unpack("!HHIIBB", seg[:14])
                    if flags & 0x04:  # RST: REJECT's names the segment it answers by seq - 1
                        if (seq - 1) & 0xFFFFFFFF in by_ident:
                            reset.add(by_ident[(seq - 1) & 0xFFFFFFFF])
                        continue
                    if seq in by_ident:
                        delivered.add(by_ident[seq])

    for p in packets:
        if p.get("pause"):
            # A timed sequence: wait, reading what arrives meanwhile.
            drain(time.monotonic() + p["pause"])
        payload = bytes.fromhex(p["payload"])
        if p["v6"]:
            dst = "::1"
            seg = tcp(p["src"], dst, p["sport"], p["dport"], ident(p["id"]), ident(p["id"]) + 1, payload, True)
            ip = struct.pack("!IHBB16s16s", 0x60000000, len(seg), 6, p["ttl"],
                             socket.inet_pton(socket.AF_INET6, p["src"]), socket.inet_pton(socket.AF_INET6, dst))
            s6.sendto(ip + seg, (dst, 0))
        else:
            s4.sendto(ipv4(p, "127.0.0.1", payload), ("127.0.0.1", 0))
        drain(time.monotonic() + 0.0003)
    drain(time.monotonic() + 1.0)
    with open(sys.argv[2], "w") as out:
        for p in packets:
            i = p["id"]
            out.write("%d %s\n" % (i, "accept" if i in delivered else "reset" if i in reset else "drop"))


def ipv4(p, dst, payload):
    seg = tcp(p["src"], dst, p["sport"], p["dport"], ident(p["id"]), ident(p["id"]) + 1, payload, False)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), p["id"] & 0xFFFF, 0x4000, p["ttl"], 6, 0,
                     socket.inet_aton(p["src"]), socket.inet_aton(dst))
    return ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:] + seg


def forward(packets, out_if, in_if, dst):
    s4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    ETH_P_IP = 0x0800
    taps = {}
    for name in (out_if, in_if):
        t = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        t.bind((name, ETH_P_IP))
        t.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        t.setblocking(False)
        taps[t] = name
    by_ident = {ident(p["id"]): p["id"] for p in packets}
    delivered, reset = set(), set()

    def drain(deadline):
        while True:
            ready = select.select(list(taps), [], [], max(0, deadline - time.monotonic()))[0]
            if not ready:
                return
            for t in ready:
                while True:
                    try:
                        data, addr = t.recvfrom(70000)
                    except BlockingIOError:
                        break
                    if addr[2] == socket.PACKET_OUTGOING or len(data) < 40 or data[9] != 6:
                        continue
                    seg = data[(data[0] & 15) * 4:]
                    seq, flags = struct.unpack("!I", seg[4:8])[0], seg[13]
                    if flags & 0x04:
                        # The router's RST to the client (REJECT: seq = the segment's ack).
                        if taps[t] == out_if and (seq - 1) & 0xFFFFFFFF in by_ident:
                            reset.add(by_ident[(seq - 1) & 0xFFFFFFFF])
                        continue
                    if taps[t] == in_if and seq in by_ident:
                        delivered.add(by_ident[seq])

    for p in packets:
        if p.get("pause"):
            drain(time.monotonic() + p["pause"])
        s4.sendto(ipv4(p, dst, bytes.fromhex(p["payload"])), (dst, 0))
        drain(time.monotonic() + 0.0003)
    drain(time.monotonic() + 1.0)
    with open(sys.argv[2], "w") as out:
        for p in packets:
            i = p["id"]
            out.write("%d %s\n" % (i, "accept" if i in delivered else "reset" if i in reset else "drop"))


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("diffsend.py needs root")
    main()
