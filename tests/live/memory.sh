#!/usr/bin/env bash
# Live memory test of `stringban run` (root, one network namespace, loopback only): a million
# sources in 127.1.0.0 on each send one segment carrying the pattern to 127.0.0.1:25; the daemon
# must hold all million bans in at most 150 MB of resident memory (the issue's bar), losing none
# to kernel queue drops. Usage: memory.sh STRINGBAN_BINARY [BLAST_BINARY]
# The load generator (stringban-blast) forges its sources: --no-proof lets its one-segment
# "sessions" convict, as this test measures bans, not proof of address (tests/live/attack.sh does).
set -uo pipefail
BIN=$(realpath "$1")
BLAST=$(realpath "${2:-$(dirname "$BIN")/stringban-blast}")
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
need ip iptables
[ -x "$BLAST" ] || { echo "FAIL: $BLAST not built (cargo build --bin stringban-blast)" >&2; exit 1; }

N=${BANS:-1000000}
loopback_ns sbM || exit 1

echo "== memory: $N bans"
ip netns exec "$S" "$BIN" run --no-proof --string @example.com --action drop --ttl 24h --no-default-allow --state-dir "$T/state" --control-socket "$T/ctl.sock" --install-rules \
    --pidfile "$T/pid" --summary-interval 1s 2> "$T/daemon.log" & DPID=$!
for _ in $(seq 100); do [ -s "$T/pid" ] && break; sleep 0.05; done
[ -s "$T/pid" ] || { echo "daemon did not start:"; cat "$T/daemon.log"; exit 1; }
idle=$(awk '/^VmRSS/ { print $2 }' "/proc/$DPID/status")
# 150,000 segments/s: well within what one queue drains on a small machine (with the journal
# written beside it), so none is lost.
sent=$(ip netns exec "$S" "$BLAST" 127.0.0.1 "$N" 60 --sources "$N" --share 1000 --size 64 --pps 150000 | awk '{ print $2 }')
check "the generator sent $N segments (sent ${sent:-0})" test "${sent:-0}" = "$N"
banned=0
for _ in $(seq 40); do
    sleep 0.5
    banned=$(grep -o 'banned-now [0-9]*' "$T/daemon.log" | tail -1 | awk '{ print $2 }')
    [ "${banned:-0}" = "$N" ] && break
done
check "the daemon holds $N bans (summary: banned-now ${banned:-?})" test "${banned:-0}" = "$N"
read -r qd ud < <(ip netns exec "$S" awk '{ q += $6; u += $7 } END { print q + 0, u + 0 }' /proc/net/netfilter/nfnetlink_queue)
check "no packet lost to the queue (queue_dropped $qd, user_dropped $ud)" test "$qd" = 0 -a "$ud" = 0
rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$DPID/status")
hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$DPID/status")
echo "  daemon resident memory: idle $((idle / 1024)) MB; with $N bans $((rss / 1024)) MB, peak $((hwm / 1024)) MB"
check "peak resident memory ≤ 150 MB with $N bans ($((hwm / 1024)) MB)" test "$hwm" -le $((150 * 1024))
kill "$DPID"; wait "$DPID"; rc=$?; DPID=
check "the daemon exits cleanly (status $rc)" test "$rc" = 0

echo
echo "memory: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
