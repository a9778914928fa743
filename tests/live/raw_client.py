#!/usr/bin/env python3
"""Live-test client that speaks TCP itself over raw sockets, so each segment's bytes and order are
exactly what the test says (a kernel socket may merge, split or time writes differently).

From SRC (an address *not* assigned in this namespace, but routed to it: the kernel then ignores
the server's packets instead of resetting the connection it does not know), connect to DST:PORT
through interface IFACE, send LINES (\\n-separated, each \\r\\n-ended), wait for a reply to
each, and print one word for what happened: ok, reset, timeout, refused, closed.

In a line, <SPLIT> cuts it into separate TCP segments, sent back to back; <CRLF>, <LF> and <CR>
put those bytes inside the line (a whole pipelined group or message body in one line); a line
ending in <UNTIL:NNN> waits for a reply line with code NNN (not just the first reply bytes), and
one ending in <NOWAIT> waits for nothing. Options:
  --reorder     send the segments of a split line last first (out of order)
  --retransmit  send every data segment twice (a retransmission)
  --verbose     print the server's replies on stderr
Usage: raw_client.py IFACE SRC DST PORT 'EHLO x\\nRCPT TO:<a@example.com>' [TIMEOUT] [OPTIONS]"""
import os, random, select, socket, struct, sys, time

from inet import checksum

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


class Conn:
    def __init__(self, iface, src, dst, port, timeout):
        self.src, self.dst, self.port, self.timeout = src, dst, port, timeout
        self.sport = random.randint(40000, 60000)
        self.snd = random.getrandbits(32)
        self.rcv = 0
        self.out = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.inp = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
        self.inp.bind((iface, 0x0800))

    def send(self, flags, payload=b"", seq=None):
        seq = self.snd if seq is None else seq
        tcp = struct.pack("!HHIIBBHHH", self.sport, self.port, seq, self.rcv if flags & ACK else 0,
                          5 << 4, flags, 64240, 0, 0) + payload
        pseudo = socket.inet_aton(self.src) + socket.inet_aton(self.dst) + struct.pack("!BBH", 0, 6, len(tcp))
        tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), random.getrandbits(16), 0x4000, 64, 6, 0,
                         socket.inet_aton(self.src), socket.inet_aton(self.dst))
        ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
        self.out.sendto(ip + tcp, (self.dst, 0))

    def recv(self, until):
        """The next TCP segment from the server to us: (flags, seq, ack, payload), or None."""
        while True:
            left = until - time.monotonic()
            if left <= 0 or not select.select([self.inp], [], [], left)[0]:
                return None
            pkt, addr = self.inp.recvfrom(65535)
            if addr[2] == socket.PACKET_OUTGOING or len(pkt) < 40 or pkt[9] != 6:
                continue
            ihl = (pkt[0] & 15) * 4
            if pkt[12:16] != socket.inet_aton(self.dst) or pkt[16:20] != socket.inet_aton(self.src):
                continue
            sport, dport, seq, ack, off, flags = struct.unpack("!HHIIBB", pkt[ihl:ihl + 14])
            if sport != self.port or dport != self.sport:
                continue
            total = struct.unpack("!H", pkt[2:4])[0]
            return flags, seq, ack, pkt[ihl + (off >> 4) * 4:total]

    def connect(self):
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            self.send(SYN)
            seg = self.recv(min(deadline, time.monotonic() + 1.0))
            if seg is None:
                continue
            flags, seq, _, _ = seg
            if flags & RST:
                return "refused"
            if flags & SYN and flags & ACK:
                self.snd = (self.snd + 1) & 0xFFFFFFFF
                self.rcv = (seq + 1) & 0xFFFFFFFF
                self.send(ACK)
                return None
        return "timeout"

    def reply(self, until=None):
        """Waits for data from the server (with `until`, for a reply line with that code) and
        acknowledges it: None, or how the session ended."""
        deadline = time.monotonic() + self.timeout
        got = b""
        while True:
            seg = self.recv(deadline)
            if seg is None:
                return "timeout"
            flags, seq, _, payload = seg
            if flags & RST:
                return "reset"
            if payload and seq == self.rcv:
                self.rcv = (self.rcv + len(payload)) & 0xFFFFFFFF
            if flags & FIN:
                self.rcv = (self.rcv + 1) & 0xFFFFFFFF
                self.send(ACK)
                return "closed"
            if payload:
                self.send(ACK)
                got += payload
                if "--verbose" in sys.argv:
                    sys.stderr.write(payload.decode("latin-1"))
                if until is None or any(l.startswith(until.encode() + b" ") for l in got.split(b"\r\n")):
                    return None


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    opts = {a for a in sys.argv[1:] if a.startswith("--")}
    iface, src, dst, port, lines = args[0], args[1], args[2], int(args[3]), args[4].split("\\n")
    timeout = float(args[5]) if len(args) > 5 else 3.0
    c = Conn(iface, src, dst, port, timeout)
    outcome = c.connect() or c.reply()   # the greeting
    if outcome:
        print(outcome)
        return
    for line in lines:
        until, wait = None, True
        if line.endswith(">") and "<UNTIL:" in line:
            line, until = line[:line.rindex("<UNTIL:")], line[line.rindex("<UNTIL:") + 7:-1]
        if line.endswith("<NOWAIT>"):
            line, wait = line[:-len("<NOWAIT>")], False
        line = line.replace("<CRLF>", "\r\n").replace("<LF>", "\n").replace("<CR>", "\r")
        parts = [p.encode("latin-1") for p in (line + "\r\n").split("<SPLIT>")]
        segments, seq = [], c.snd
        for p in parts:
            segments.append((seq, p))
            seq = (seq + len(p)) & 0xFFFFFFFF
        if "--reorder" in opts:
            segments.reverse()
        for s, p in segments:
            for _ in range(2 if "--retransmit" in opts else 1):
                c.send(PSH | ACK, p, seq=s)
        c.snd = seq
        if not wait:
            time.sleep(0.05)
            continue
        outcome = c.reply(until)
        if outcome:
            print("ok" if outcome == "closed" and line.upper().startswith("QUIT") else outcome)
            return
    c.send(FIN | ACK)
    print("ok")


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("raw_client.py needs root (raw sockets)")
    main()
