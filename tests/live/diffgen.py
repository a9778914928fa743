#!/usr/bin/env python3
"""Differential test cases: writes CASE.rules.sh (an iptables/ip6tables script) and
CASE.packets.jsonl (the segments to send, in order) for each case into DIR, from a seed.

Usage: diffgen.py DIR SEED
Cases: recipe (the seed report's rules), strings (hex strings, icase with bytes >= 0x80, from/to
around the pattern's edges, invert), recent (set/rcheck/update/remove, hitcount, rttl, mask,
rdest, inverts, more sources than ip_list_tot), selftest (the kernel selftest's "foo bar baz"
at offsets 0-1600 against windows), random (random string rules, new each seed), timed
(recent with 1-second windows, hitcount, reap, ! --update, paced sequences). IPv4 from 127.1.0.0/24 sources, IPv6 from ::1."""
import json, os, random, sys

out_dir, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
IP_HDR4, TCP_HDR = 20, 20


def both(lines):
    """The same rules for iptables and ip6tables (recent masks only for IPv4)."""
    out = []
    for tool in ("iptables", "ip6tables"):
        for l in lines:
            if tool == "ip6tables" and "--mask" in l:
                continue
            out.append(tool + " " + l)
    return out


CASES = {}


def write(name, rules, packets):
    CASES[name] = (rules, packets)
    with open(os.path.join(out_dir, name + ".rules.sh"), "w") as f:
        f.write("#!/bin/sh\n# differential case %s, seed %d\n" % (name, seed))
        f.write("\n".join(rules) + "\n")
    with open(os.path.join(out_dir, name + ".packets.jsonl"), "w") as f:
        for i, p in enumerate(packets):
            p["id"] = i
            f.write(json.dumps(p) + "\n")


def packet(payload, src=None, v6=None, dport=25, ttl=64, sport=None):
    if v6 is None:
        v6 = rng.random() < 0.15
    if src is None:
        src = "::1" if v6 else "127.1.0.%d" % rng.randint(1, 60)
    return {"v6": v6, "src": src, "sport": sport or rng.randint(20000, 60000), "dport": dport,
            "ttl": ttl, "payload": payload.hex()}


ALPHA = b"abcdexyz @.EXAMPLEcom\xe9\xc9\xdf\xff\xfe\xf7\xd7"


def noise(n):
    return bytes(rng.choice(ALPHA) for _ in range(n))


def with_pattern(pat, n):
    body = bytearray(noise(n))
    if rng.random() < 0.5 and n >= len(pat):
        at = rng.randint(0, n - len(pat))
        p = bytes(pat)
        if rng.random() < 0.5:
            p = bytes(c ^ 0x20 if (0x41 <= (c & 0xDF) <= 0x5A) or (0xC0 <= (c & 0xDF) <= 0xDE and (c & 0xDF) != 0xD7) else c for c in p)
        body[at:at + len(p)] = p
    return bytes(body)


# 1. The seed report's recipe.
rules = ["iptables -N blackchain", "ip6tables -N blackchain"] + both([
    "-A INPUT -p tcp --dport 25 -m recent --name blacklist --update --seconds 86400 -j DROP",
    "-A INPUT -p tcp --dport 25 -m string --string \"example.com\" --algo bm -j blackchain",
    "-A blackchain -m recent --set --name blacklist -p tcp -j REJECT --reject-with tcp-reset",
])
packets = [packet(with_pattern(b"example.com", rng.randint(0, 120)), dport=rng.choice([25, 25, 25, 26]))
           for _ in range(2500)]
write("recipe", rules, packets)

# 2. String options.
rules = both([
    "-A INPUT -p tcp --dport 26 -j ACCEPT",
    "-A INPUT -p tcp -m string --hex-string \"|e9|ab|20|\" --algo bm -j DROP",
    "-A INPUT -p tcp -m string --string \"x@E\" --algo kmp --icase --from 45 --to 60 -j REJECT --reject-with tcp-reset",
    "-A INPUT -p tcp -m string --hex-string \"|c9e9|\" --algo bm --icase -j DROP",
    "-A INPUT -p tcp -m string ! --string \"a\" --algo bm -j REJECT --reject-with tcp-reset",
    "-A INPUT -p tcp -m multiport --dports 25,27:30 -m string --string \"com\" --algo bm --to 70 -j DROP",
])
packets = []
for _ in range(4000):
    n = rng.randint(0, 60)
    pat = rng.choice([b"\xe9ab ", b"x@E", b"X@e", b"\xc9\xe9", b"\xe9\xc9", b"com", b"a"])
    packets.append(packet(with_pattern(pat, n), dport=rng.choice([25, 25, 26, 28, 31])))
write("strings", rules, packets)

# 3. recent, with more IPv4 sources (120) than the kernel's ip_list_tot (100).
rules = both([
    "-A INPUT -p tcp --dport 26 -m recent --name r1 --set -j ACCEPT",
    "-A INPUT -p tcp --dport 27 -m recent --name r1 --remove -j ACCEPT",
    "-A INPUT -p tcp --dport 25 -m recent --name r1 --rcheck --seconds 3600 --hitcount 3 -j DROP",
    "-A INPUT -p tcp --dport 25 -m recent --name r1 --update --seconds 3600 --rttl -j REJECT --reject-with tcp-reset",
    "-A INPUT -p tcp --dport 28 -m recent --name r2 --set --mask 255.255.255.248 -j ACCEPT",
    "-A INPUT -p tcp --dport 29 -m recent --name r2 ! --rcheck --seconds 3600 -j DROP",
    "-A INPUT -p tcp --dport 30 -m recent --name r3 --set --rdest -j ACCEPT",
    "-A INPUT -p tcp --dport 31 -m recent --name r3 ! --update --seconds 3600 --rdest -j REJECT --reject-with tcp-reset",
    "-A INPUT -p tcp --dport 32 -m recent --name r1 --rcheck --seconds 3600 --reap -j DROP",
])
packets = []
for _ in range(3500):
    v6 = rng.random() < 0.1
    src = "::1" if v6 else "127.1.0.%d" % rng.randint(1, 120)
    packets.append(packet(noise(rng.randint(0, 20)), src=src, v6=v6,
                          dport=rng.choice([25, 25, 25, 26, 26, 27, 28, 29, 30, 31, 32]),
                          ttl=rng.choice([64, 64, 63])))
write("recent", rules, packets)

# 4. The kernel selftest's vectors: "foo bar baz" at offsets 0-1600 of the packet, windows.
rules = both([
    "-A INPUT -p tcp --dport 25 -m string --string \"foo bar baz\" --algo bm --to 1000 -j DROP",
    "-A INPUT -p tcp --dport 26 -m string --string \"foo bar baz\" --algo kmp --from 1000 --to 1400 -j DROP",
    "-A INPUT -p tcp --dport 27 -m string --string \"foo bar baz\" --algo bm --from 1400 -j DROP",
    "-A INPUT -p tcp --dport 28 -m string --string \"foo bar baz\" --algo kmp --from 200 --to 1200 -j REJECT --reject-with tcp-reset",
])
packets = []
for off in range(0, 1601, 50):
    for dport in (25, 26, 27, 28):
        for shift in (-12, -11, -10, 0, 1):
            o = max(0, off + shift)
            payload = b"x" * o + b"foo bar baz" + b"y" * 40
            packets.append(packet(payload, v6=False, dport=dport))
write("selftest", rules, packets)
selftest_n = len(packets)

# 5. Random string rules (patterns, hex, icase with bytes >= 0x80, from/to near the patterns,
#    invert, algos, targets), new each seed, and packets carrying their patterns.
PAT_BYTES = b"abez@.XE\xe9\xc9\xdf\xff"
pats, rules = [], []
for _ in range(8):
    pat = bytes(rng.choice(PAT_BYTES) for _ in range(rng.randint(1, 5)))
    pats.append(pat)
    if all(c in b"abez@." for c in pat) and rng.random() < 0.5:
        m = '--string "%s"' % pat.decode()
    else:
        m = '--hex-string "|%s|"' % pat.hex()
    icase = rng.random() < 0.5
    # The documented divergence: the kernel's bm with --icase misses matches involving bytes
    # that fold specially (0xDF, 0xFF, 0xBF); stringban finds them, as kernel kmp does. Such
    # rules use kmp here, so that every other verdict must be equal.
    bm_ok = not (icase and any(c in pat for c in b"\xdf\xff\xbf"))
    opts = " --algo " + rng.choice(["bm", "kmp"] if bm_ok else ["kmp"])
    if rng.random() < 0.4:
        f = rng.randint(30, 90)
        opts += " --from %d" % f
        if rng.random() < 0.7:
            opts += " --to %d" % rng.randint(f, 130)
    elif rng.random() < 0.3:
        opts += " --to %d" % rng.randint(40, 130)
    if icase:
        opts += " --icase"
    neg = "! " if rng.random() < 0.15 else ""
    port = " --dport %d" % rng.choice([25, 26]) if rng.random() < 0.3 else ""
    target = rng.choice(["DROP", "ACCEPT", "REJECT --reject-with tcp-reset"])
    rules.append("-A INPUT -p tcp%s -m string %s%s%s -j %s" % (port, neg, m, opts, target))
rules = both(rules)
packets = [packet(with_pattern(rng.choice(pats), rng.randint(0, 90)), dport=rng.choice([25, 26]))
           for _ in range(2500)]
write("random", rules, packets)
# 6. Timed recent sequences: 1-second windows, hitcount and reap, with pauses of 0 or 0.3 s, so
#    that no check falls within 0.1 s of a window's edge (stamps are 0.9 or 1.2 s apart).
rules = both([
    "-A INPUT -p tcp --dport 25 -m recent --name t --set -j ACCEPT",
    "-A INPUT -p tcp --dport 26 -m recent --name t --rcheck --seconds 1 -j DROP",
    "-A INPUT -p tcp --dport 27 -m recent --name t --update --seconds 1 --hitcount 2 -j REJECT --reject-with tcp-reset",
    "-A INPUT -p tcp --dport 28 -m recent --name t --rcheck --seconds 1 --reap -j DROP",
    "-A INPUT -p tcp --dport 29 -m recent --name t ! --update --seconds 1 -j DROP",
])
packets = []
for _ in range(60):
    p = packet(b"", src="127.1.0.%d" % rng.randint(1, 5), v6=False, dport=rng.choice([25, 25, 26, 27, 28, 29]))
    p["pause"] = rng.choice([0, 0, 0.3])
    packets.append(p)
write("timed", rules, packets)

# 7. A gateway's: the IPv4 rules of cases 1, 2, 3 and 5 in FORWARD (a rule without a target
#    first, counting), the packets from 198.19.0.N, routed through the namespace (diffsend.py
#    --forward). Written as fwd_CASE.
def forward(name):
    rules, packets = CASES[name]
    rules = [r.replace(" -A INPUT ", " -A FORWARD ") for r in rules if r.startswith("iptables ")]
    rules.insert(next(i for i, r in enumerate(rules) if " -A " in r), "iptables -A FORWARD -p tcp --dport 25")
    out = []
    for p in packets:
        if p["v6"]:
            continue
        q = dict(p)
        q["src"] = p["src"].replace("127.1.0.", "198.19.0.")
        out.append(q)
    write("fwd_" + name, rules, out)
    return len(out)


fwd_total = sum(forward(n) for n in ("recipe", "strings", "recent", "random"))

# 8. An ip6tables-save file (the header says IPv6): the recipe with a /64 mask, string options,
#    a rule without a target; IPv6 packets only (from ::1).
save = [
    "# Generated by ip6tables-save v1.8.9 (nf_tables) on Sat Nov 28 12:00:00 2026", "*filter",
    ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":blackchain - [0:0]",
    "-A INPUT -p tcp -m tcp --dport 25",
    "-A INPUT -p tcp -m tcp --dport 25 -m recent --update --seconds 86400 --name bl6 --mask ffff:ffff:ffff:ffff:: --rsource -j DROP",
    "-A INPUT -p tcp -m tcp --dport 25 -m string --string \"example.com\" --algo bm --to 90 -j blackchain",
    "-A INPUT -p tcp -m tcp --dport 26 -m string --hex-string \"|c9e9|\" --algo kmp --icase -j REJECT --reject-with tcp-reset",
    "-A INPUT -p tcp -m tcp --dport 26 -m recent --rcheck --name bl6 --mask ffff:ffff:ffff:ffff:: --rsource -j DROP",
    "-A INPUT -p tcp -m multiport --dports 27,28 -m string ! --string \"a\" --algo bm -j REJECT --reject-with tcp-reset",
    "-A blackchain -p tcp -m recent --set --name bl6 --mask ffff:ffff:ffff:ffff:: --rsource -j REJECT --reject-with tcp-reset",
    "COMMIT", "# Completed on Sat Nov 28 12:00:00 2026",
]
packets = []
for i in range(1500):
    pat = rng.choice([b"example.com", b"\xc9\xe9", b"\xe9\xc9", b"a", b"zz"])
    # The recipe bans ::1 at its first match: that comes late, so most packets are judged
    # by the other rules first.
    if pat == b"example.com" and i < 1200:
        pat = b"zz"
    packets.append(packet(with_pattern(pat, rng.randint(0, 90)), v6=True,
                          dport=rng.choice([25, 26, 26, 27, 28])))
write("v6save", [], packets)
with open(os.path.join(out_dir, "v6save.rules.save6"), "w") as f:
    f.write("\n".join(save) + "\n")
print(sum(1 for _ in open(os.path.join(out_dir, "recipe.packets.jsonl"))) + 4000 + 3500 + selftest_n + 2500 + 60 + fwd_total + 1500)
