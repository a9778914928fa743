#!/usr/bin/env bash
# Live tests of `stringban import --print` against the kernel's own iptables (root, throwaway
# network namespaces only). Usage: import.sh STRINGBAN_BINARY
# Each script in tests/live/import/ runs in a fresh namespace with the real iptables; its
# `iptables -S` (or ip6tables) must equal `stringban import --print` byte for byte. Then option
# combinations iptables refuses must be refused by stringban too.
set -uo pipefail
BIN=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
need ip iptables ip6tables
T=$(mktemp -d); N=sbI$$
trap 'ip netns del "$N" 2>/dev/null; rm -rf "$T"' EXIT

fresh() { ip netns del "$N" 2>/dev/null; ip netns add "$N"; }

echo "== save form equals the kernel's iptables -S"
for f in "$HERE"/import/*.sh; do
    fresh
    ip netns exec "$N" sh "$f" > "$T/run.out" 2>&1 || { no "$(basename "$f"): the kernel refused it: $(cat "$T/run.out")"; continue; }
    tool=iptables; grep -q '^ip6tables' "$f" && tool=ip6tables
    ip netns exec "$N" "$tool" -S > "$T/kernel.txt"
    "$BIN" import --print "$f" > "$T/ours.txt" 2>&1
    if diff -u "$T/kernel.txt" "$T/ours.txt" > "$T/diff.txt"; then
        ok "$(basename "$f"): $(wc -l < "$T/ours.txt") lines identical to $tool -S"
    else
        no "$(basename "$f") differs from $tool -S:"; cat "$T/diff.txt"
    fi
done

echo "== save files (iptables-save / ip6tables-save) equal the kernel's -S once restored"
for f in "$HERE"/import/*.save4 "$HERE"/import/*.save6; do
    fresh
    tool=iptables; case $f in *.save6) tool=ip6tables ;; esac
    ip netns exec "$N" "$tool-restore" < "$f" > "$T/run.out" 2>&1 || { no "$(basename "$f"): $tool-restore refused it: $(cat "$T/run.out")"; continue; }
    ip netns exec "$N" "$tool" -S > "$T/kernel.txt"
    "$BIN" import --print "$f" > "$T/ours.txt" 2>&1
    if diff -u "$T/kernel.txt" "$T/ours.txt" > "$T/diff.txt"; then
        ok "$(basename "$f"): $(wc -l < "$T/ours.txt") lines identical to $tool -S (the header says the family)"
    else
        no "$(basename "$f") differs from $tool -S:"; cat "$T/diff.txt"
    fi
    if [ "$tool" = ip6tables ]; then
        grep -v '^#' "$f" > "$T/headerless"
        "$BIN" import --print --family 6 "$T/headerless" > "$T/ours6.txt" 2>&1
        check "$(basename "$f") without its header, read with --family 6: identical too" diff -q "$T/kernel.txt" "$T/ours6.txt"
        "$BIN" import --print "$T/headerless" > /dev/null 2>&1; rc=$?
        check "... and without --family 6 it is refused (IPv6 masks in an IPv4 file: exit $rc)" test "$rc" = 2
    fi
done

echo "== what iptables refuses, stringban refuses (exit 2, naming the line)"
while IFS= read -r rule; do
    [ -z "$rule" ] && continue
    fresh
    printf '#!/bin/sh\n%s\n' "$rule" > "$T/bad.sh"
    ip netns exec "$N" sh "$T/bad.sh" > /dev/null 2>&1; k=$?
    "$BIN" import --print "$T/bad.sh" > "$T/ours.out" 2>&1; s=$?
    check "refused by both (iptables $k, stringban $s: $(tail -c 90 "$T/ours.out" | tr -d '\n')): $rule" test "$k" -ne 0 -a "$s" = 2
done <<'RULES'
iptables -A INPUT -m string --algo bm -j DROP
iptables -A INPUT -m string --string x -j DROP
iptables -A INPUT -m string --string x --algo bm --from 9 --to 5 -j DROP
iptables -A INPUT -m recent --name x -j DROP
iptables -A INPUT -m recent --set --seconds 5 -j DROP
iptables -A INPUT -m recent --rcheck --reap -j DROP
iptables -A INPUT -m recent --rcheck --seconds 0 -j DROP
iptables -A INPUT -m recent --set --update -j DROP
iptables -A INPUT --dport 25 -j DROP
iptables -A INPUT -m multiport --dports 25 -j DROP
iptables -A INPUT -p tcp -m multiport --dports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16 -j DROP
iptables -A INPUT -j REJECT --reject-with tcp-reset
iptables -A INPUT -p tcp -j NOSUCHCHAIN
iptables -A NOSUCHCHAIN -p tcp -j DROP
iptables -A FORWARD -m string --string "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" --algo bm
iptables -A FORWARD -m string --algo wrong
iptables -A OUTPUT -m recent --set --rttl
iptables -A INPUT -m recent --rcheck --hitcount 65536 --name foo
ip6tables -A FORWARD -m recent --rcheck --hitcount 65536 --name foo --mask ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff --rsource
RULES

echo
echo "import: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
