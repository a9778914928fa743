#!/usr/bin/env bash
# Fault injection (root, one network namespace, loopback only): the store under a full disk, out
# of file descriptors, and bit flips in its files; the daemon keeps deciding and says so at once.
# Usage: faults.sh STRINGBAN_BINARY [BLAST_BINARY]
# The state directory is a small tmpfs mounted here (unmounted by the trap); loopback sources
# (127.1.0.0 on) send pattern-carrying segments to 127.0.0.1:25 to make bans.
# The load generator (stringban-blast) forges its sources: --no-proof lets its one-segment
# "sessions" convict, as this test measures bans, not proof of address (tests/live/attack.sh does).
set -uo pipefail
# A mount namespace of its own: the tmpfs below is never seen outside this test.
if [ -z "${SB_FAULTS_UNSHARED:-}" ]; then
    SB_FAULTS_UNSHARED=1 exec unshare -m --propagation private bash "$0" "$@"
fi
BIN=$(realpath "$1")
BLAST=$(realpath "${2:-$(dirname "$BIN")/stringban-blast}")
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
need ip iptables python3 prlimit mount unshare

loopback_ns sbF || exit 1
MNT="$T/state"
mkdir -p "$MNT"
trap 'umount -l "$MNT" 2>/dev/null; loopback_ns_cleanup' EXIT
mount -t tmpfs -o size=64m,mode=0700 sbfaults "$MNT" || { echo "FAIL: mounting a tmpfs"; exit 1; }
CTL=(--control-socket "$T/ctl.sock")
sb() { "$BIN" "$@" "${CTL[@]}"; }
start() {
    rm -f "$T/pid"
    ip netns exec "$S" "$BIN" run --no-proof --string @example.com --action drop --ttl 24h --install-rules --no-default-allow \
        --pidfile "$T/pid" --state-dir "$MNT" "${CTL[@]}" --metrics 127.0.0.1:9326 "$@" 2>> "$T/daemon.log" & DPID=$!
    for _ in $(seq 200); do [ -s "$T/pid" ] && [ -S "$T/ctl.sock" ] && return 0; sleep 0.05; done
    echo "daemon did not start:"; tail -20 "$T/daemon.log"; return 1
}
count() { sb count 2>/dev/null || echo -1; }
# store FIELD — a field of stats' "store" object.
store() { sb stats | python3 -c "import json,sys; v=json.load(sys.stdin)['store']['$1']; print(str(v).lower() if isinstance(v,bool) else v)"; }
metric() {
    ip netns exec "$S" python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9326/metrics", timeout=5).read().decode())' |
        awk -v m="$1" '$1 == m { print $2 }'
}
# blast N PPS SECONDS — one segment from each of N sources (127.1.0.0 on; the first ones again
# each time: already banned, so only sources past the last flood make new bans).
blast() { ip netns exec "$S" "$BLAST" 127.0.0.1 "$1" "$3" --sources "$1" --share 1000 --size 64 --pps "$2" > /dev/null; }
kill9() { kill -9 "$DPID"; wait "$DPID" 2>/dev/null; DPID=; }
# starve — lowers the daemon's descriptor limit to its lowest free descriptor: every open fails.
starve() {
    local free
    free=$(ls "/proc/$DPID/fd" | sort -n | awk 'BEGIN { n = 0 } $1 == n { n++ } END { print n }')
    prlimit --pid "$DPID" --nofile="$free:${nofile#*:}"
}

echo "== disk full for 30 s during a flood of new bans, space freed, then kill -9"
start --snapshot-interval 5s || exit 1
blast 20000 40000 5
sleep 0.5
before=$(count)
check "20,000 bans before the fault ($before), store healthy ($(store healthy))" test "$before" = 20000 -a "$(store healthy)" = true
# Fill the tmpfs (the filler sits in the state directory's file system, as a log would).
dd if=/dev/zero of="$MNT/filler" bs=64k 2> /dev/null
dd if=/dev/zero of="$MNT/filler2" bs=4k 2> /dev/null
blast 200000 6000 34 & BL=$!
# The flood's first 20,000 sources are banned already: time from its first new ban.
for _ in $(seq 200); do [ "$(count)" -gt 20000 ] && break; sleep 0.02; done
full_at=$(date +%s.%N)
for _ in $(seq 40); do [ "$(store healthy)" = false ] && break; sleep 0.02; done
seen_at=$(date +%s.%N)
delay=$(python3 -c "print(round($seen_at - $full_at, 2))")
check "the fault is in stats within 1 s of the first ban that cannot be written ($delay s): $(store last_error)" \
    python3 -c "import sys; sys.exit(0 if $delay < 1 else 1)"
check "... logged at error level at once" grep -q "ERROR.*store: .*No space left on device" "$T/daemon.log"
sleep 10
p1=$(store pending_records)
check "... the metrics say so: stringban_store_healthy $(metric stringban_store_healthy), errors $(metric stringban_store_errors_total), pending $(metric stringban_store_pending_records)" \
    test "$(metric stringban_store_healthy)" = 0 -a "$(metric stringban_store_errors_total)" -gt 0
sleep 10
p2=$(store pending_records)
check "... bans pending in memory grow during the flood ($p1 -> $p2)" test "$p2" -gt "$p1" -a "$p1" -gt 0
check "... the retries back off (errors $(store errors) in 20 s, not hundreds)" test "$(store errors)" -lt 40
check "... the daemon keeps deciding: $(count) bans" test "$(count)" -gt 80000
check "... and no temporary file is left eating the space" test ! -e "$MNT/bans.snapshot.tmp"
sleep 10
rm -f "$MNT/filler" "$MNT/filler2"
freed_at=$(date +%s.%N)
for _ in $(seq 100); do [ "$(store healthy)" = true ] && break; sleep 0.1; done
rec=$(python3 -c "print(round($(date +%s.%N) - $freed_at, 2))")
check "space freed: the store recovers by itself in $rec s (retries at most 4 s apart)" test "$(store healthy)" = true
check "... logged ($(grep -o 'store recovered.*' "$T/daemon.log" | head -1 | cut -c1-90))" grep -q "store recovered" "$T/daemon.log"
check "... pending back to 0 ($(store pending_records)), recoveries $(store recoveries)" test "$(store pending_records)" = 0 -a "$(store recoveries)" -ge 1
wait "$BL"
sleep 0.3
seen=$(count)
sleep 0.3   # older than the fsync interval (100 ms) by far
kill9
start --snapshot-interval 5s || exit 1
after=$(count)
echo "  disk full for 30 s; $seen bans counted 300 ms before the kill -9; $after restored"
check "every ban counted before the kill is restored ($after ≥ $seen)" test "$after" -ge "$seen"
check "... including the ones made while the disk was full ($seen > 150000)" test "$seen" -gt 150000

echo "== out of file descriptors: snapshots fail, the journal goes on, nothing is lost"
nofile=$(prlimit --pid "$DPID" --nofile --noheadings --output SOFT,HARD | awk '{ print $1 ":" $2 }')
: > "$T/daemon.log"
kill9
start --snapshot-interval 1s || exit 1
starve
out=$(timeout 3 "$BIN" count "${CTL[@]}" 2>&1); code=$?
check "while out of descriptors the control socket refuses or waits, never hangs the client (exit $code)" test "$code" != 0
sleep 2.5
check "a snapshot without a free descriptor fails, logged ($(grep -o 'store: writing a snapshot.*' "$T/daemon.log" | head -1 | cut -c1-70))" \
    grep -q "store: writing a snapshot.*Too many open files" "$T/daemon.log"
blast 260000 60000 6   # 60,000 new sources, journaled while the snapshots fail
sleep 0.5
prlimit --pid "$DPID" --nofile="$nofile"
for _ in $(seq 60); do [ "$(store healthy 2>/dev/null)" = true ] && break; sleep 0.1; done
check "descriptors back: the store recovers ($(store recoveries) recoveries, $(store errors) errors)" test "$(store healthy)" = true
seen=$(count)
check "... every new ban kept meanwhile ($seen ≥ 250000)" test "$seen" -ge 250000
sleep 0.3
kill9
start || exit 1
check "kill -9 after it: every ban restored ($(count) ≥ $seen)" test "$(count)" -ge "$seen"
# Only 3 descriptors: even those the stopping workers free do not bring the limit back.
prlimit --pid "$DPID" --nofile="3:${nofile#*:}"
sleep 0.3
kill "$DPID"; wait "$DPID"; code=$?; DPID=
check "a clean stop while out of descriptors: no snapshot, the journal kept, said so (exit $code)" grep -q "no snapshot at exit.*journal" "$T/daemon.log"
start || exit 1
check "... and the next start restores every ban ($(count) ≥ $seen)" test "$(count)" -ge "$seen"
kill "$DPID"; wait "$DPID"; DPID=

echo "== one bit flipped in the snapshot or the journal header: at most one block lost, never worse"
start || exit 1
total=$(count)
kill "$DPID"; wait "$DPID"; DPID=
sizes=$(stat -c %s "$MNT/bans.snapshot")
cp "$MNT/bans.snapshot" "$T/good.snapshot"
worst=$total; runs=0; worse=0
for at in 0 9 21 30 40 60 $((sizes / 3)) $((sizes / 2)) $((sizes - 60)) $((sizes - 10)) $((sizes - 5)); do
    python3 - "$T/good.snapshot" "$MNT/bans.snapshot" "$at" <<'PY'
import sys
b = bytearray(open(sys.argv[1], "rb").read())
at = int(sys.argv[3]); b[at] ^= 1 << (at % 8)
open(sys.argv[2], "wb").write(bytes(b))
PY
    : > "$T/daemon.log"
    start || exit 1
    got=$(count)
    kill "$DPID"; wait "$DPID"; DPID=
    start || exit 1
    again=$(count)
    kill "$DPID"; wait "$DPID"; DPID=
    runs=$((runs + 1))
    [ "$got" -lt "$worst" ] && worst=$got
    [ "$again" -lt "$got" ] && worse=$((worse + 1))
    cp "$T/good.snapshot" "$MNT/bans.snapshot"
done
echo "  $runs flips across header, blocks and trailer of a $total-ban snapshot: worst $worst restored"
check "never more than one block (1,024 bans) lost ($((total - worst)) lost at worst)" test $((total - worst)) -le 1024
check "... and the file written by that start never loads fewer ($worse made worse)" test "$worse" = 0

echo
echo "faults: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
