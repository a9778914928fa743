#!/usr/bin/env bash
# Live tests of durable bans and the control socket (root, one network namespace, loopback only).
# Usage: state.sh STRINGBAN_BINARY [BLAST_BINARY]
# The daemon runs with --state-dir and --control-socket in a temporary directory; loopback
# sources (127.1.0.0 on) send pattern-carrying segments to 127.0.0.1:25 to make bans.
# The load generator (stringban-blast) forges its sources: --no-proof lets its one-segment
# "sessions" convict, as this test measures bans, not proof of address (tests/live/attack.sh does).
set -uo pipefail
BIN=$(realpath "$1")
BLAST=$(realpath "${2:-$(dirname "$BIN")/stringban-blast}")
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
need ip iptables ipset python3

loopback_ns sbD || exit 1
CTL=(--control-socket "$T/ctl.sock")
sb() { "$BIN" "$@" "${CTL[@]}"; }
start() {   # start [ARGS]: without --offload among ARGS, offload is off, so that the daemon
    # itself sees (and counts) what banned sources send
    local off=--no-offload
    [[ " $* " == *" --offload "* ]] && off=
    rm -f "$T/pid"
    ip netns exec "$S" "$BIN" run $off --no-proof --string @example.com --action drop --ttl 24h --install-rules --no-default-allow \
        --pidfile "$T/pid" --state-dir "$T/state" "${CTL[@]}" --metrics 127.0.0.1:9325 --summary-interval 1s "$@" 2>> "$T/daemon.log" & DPID=$!
    for _ in $(seq 200); do [ -s "$T/pid" ] && [ -S "$T/ctl.sock" ] && return 0; sleep 0.05; done
    echo "daemon did not start:"; tail -20 "$T/daemon.log"; return 1
}
count() { sb count 2>/dev/null || echo -1; }
blast() { ip netns exec "$S" "$BLAST" 127.0.0.1 "$1" 30 --sources "$1" --share 1000 --size 64 --pps "$2" > /dev/null; }

echo "== control socket"
start || exit 1
check "the socket is root-only (mode $(stat -c %a "$T/ctl.sock"))" test "$(stat -c %a "$T/ctl.sock")" = 600
out=$(sb add 198.18.9.9 --ttl 1h)
check "add: $out" test "$out" = "banned 198.18.9.9 in list default (new)"
check "count: 1" test "$(count)" = 1
check "list shows it" bash -c "'$BIN' list --control-socket '$T/ctl.sock' | grep -q '^198.18.9.9 '"
check "list --json" bash -c "'$BIN' list --json --control-socket '$T/ctl.sock' | python3 -c 'import json,sys; b=json.loads(sys.stdin.readline()); sys.exit(0 if b[\"key\"]==\"198.18.9.9\" and 3500 < b[\"ttl_left\"] <= 3600 else 1)'"
check "list --format xt-recent" bash -c "'$BIN' list --format xt-recent --control-socket '$T/ctl.sock' | grep -qE '^src=198.18.9.9 ttl: 0 last_seen: [0-9]+ oldest_pkt: 1 [0-9]+$'"
out=$(sb add 300.1.1.1 2>&1); code=$?
check "a bad request is refused with an error (exit $code: $out)" test "$code" = 2
check "... and the daemon keeps answering" test "$(count)" = 1
check "del: $(sb del 198.18.9.9)" test "$(count)" = 0
printf 'src=198.18.7.1 ttl: 52 last_seen: 4295312345 oldest_pkt: 2 4295300000, 4295312345\nsrc=198.18.7.2 ttl: 0 last_seen: 1 oldest_pkt: 1 1\nsrc=2001:0db8:0000:0000:0000:0000:0000:0001 ttl: 0 last_seen: 1 oldest_pkt: 1 1\n' > "$T/recent"
check "import-recent: $(sb import-recent "$T/recent" 2>&1)" test "$(count)" = 3
check "stats answers with the counters" bash -c "'$BIN' stats --control-socket '$T/ctl.sock' | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if \"packets\" in s and s[\"lists\"][0][\"name\"]==\"default\" else 1)'"
check "reload: $(sb reload)" bash -c "sleep 0.5; grep -q 'reloaded the rules' '$T/daemon.log'"
check "flush: $(sb flush)" test "$(count)" = 0
# Many idle connections exhaust nothing: a fixed pool serves, the rest are refused and counted,
# idle ones are closed after 10 s, and the daemon answers again.
python3 - "$T/ctl.sock" > "$T/idle.out" <<'PY' &
import socket, sys, time
socks = []
for _ in range(300):
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); socks.append(s)
time.sleep(12)
refused = sum(1 for s in socks if s.recv(200, socket.MSG_DONTWAIT if False else 0).find(b"too many") >= 0)
print(refused)
PY
IDLE=$!
sleep 1
out=$(timeout 15 "$BIN" count --control-socket "$T/ctl.sock" 2>&1)
check "300 idle connections: a new request is answered within the idle timeout, or refused with the reason ($out)" \
    bash -c "[[ '$out' == 0 || '$out' == *'too many control connections'* ]]"
wait "$IDLE"
check "... and answered once the idle ones were closed" test "$(count)" = 0
refused=$(cat "$T/idle.out")
check "... the ones past the pool were told so ($refused refused)" test "${refused:-0}" -ge 200
n=$(sb stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["control_refused"])')
check "... and counted in stats (control_refused $n)" test "$n" -ge 200
check "the socket replaced nothing: a regular file at the path is refused and kept" bash -c "
    echo keep > '$T/not-a-socket'
    ! ip netns exec '$S' '$BIN' run --string x --queues 7 --pidfile '$T/pid2' --no-state --control-socket '$T/not-a-socket' 2> '$T/ns.err' &&
    grep -q keep '$T/not-a-socket' && grep -q 'not a socket' '$T/ns.err'"

echo "== the state directory is private whatever the umask"
( umask 000; exec ip netns exec "$S" "$BIN" run --string x --queues 5 --pidfile "$T/pid-u" --state-dir "$T/state-umask" \
    --no-control --snapshot-interval 1s 2> "$T/umask.log" ) & UPID=$!
for _ in $(seq 100); do [ -s "$T/state-umask/bans.journal" ] && break; sleep 0.05; done
sleep 1.5
kill "$UPID"; wait "$UPID"
check "state directory 0700 under umask 000 ($(stat -c %a "$T/state-umask"))" test "$(stat -c %a "$T/state-umask")" = 700
modes=$(stat -c %a "$T/state-umask"/* | sort -u | tr '\n' ' ')
check "... and its files 0600 ($modes)" test "$modes" = "600 "

echo "== bans survive a clean restart with their remaining TTL"
sb add 198.18.9.10 --ttl 1h > /dev/null
blast 3000 50000
sleep 1
before=$(count)
check "3,001 bans before the restart ($before)" test "$before" = 3001
kill "$DPID"; wait "$DPID"; DPID=
start || exit 1
check "all of them after it ($(count))" test "$(count)" = "$before"
ttl=$(sb list --json | python3 -c 'import json,sys
for l in sys.stdin:
    b=json.loads(l)
    if b.get("key")=="198.18.9.10": print(b["ttl_left"])')
check "... the hand-made ban with its remaining TTL (${ttl:-none} s of 3600)" python3 -c "import sys; sys.exit(0 if 3500 < int('${ttl:-0}') <= 3600 else 1)"
check "the restart logged what it restored" grep -q "bans restored.*restored=3001\|restored=3001.*bans restored" "$T/daemon.log"

echo "== Prometheus metrics, scraped over HTTP"
blast 2000 50000   # the first 2,000 sources again: banned, so dropped (and timed)
sleep 1.2
ip netns exec "$S" python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9325/metrics", timeout=5).read().decode())' > "$T/metrics" 2>&1
metric() { awk -v m="$1" '$1 == m { print $2 }' "$T/metrics"; }
check "the exposition answers (text format: $(head -c 60 "$T/metrics" | head -1))" grep -q '^# TYPE stringban_packets_total counter' "$T/metrics"
check "stringban_bans{list=\"default\"} = the count ($(metric 'stringban_bans{list="default"}') = $(count))" test "$(metric 'stringban_bans{list="default"}')" = "$(count)"
check "packets and drops counted ($(metric stringban_packets_total) packets, $(metric 'stringban_verdicts_total{verdict="drop"}') dropped)" test "$(metric 'stringban_verdicts_total{verdict="drop"}')" -ge 2000
check "... as banned ($(metric 'stringban_decisions_total{reason="banned"}'))" test "$(metric 'stringban_decisions_total{reason="banned"}')" -ge 2000
check "decide latency histogram has observations ($(metric stringban_decide_seconds_count))" test "$(metric stringban_decide_seconds_count)" -gt 0
check "no kernel queue drops ($(metric 'stringban_queue_dropped_total{queue="0"}'))" test "$(metric 'stringban_queue_dropped_total{queue="0"}')" = 0

echo "== kernel offload (--offload): banned sources are dropped before the queue"
kill "$DPID"; wait "$DPID"; DPID=
start --offload || exit 1
check "the sets exist and hold every ban ($(ip netns exec "$S" ipset list stringban-v4 -terse | grep -o 'entries: [0-9]*'), $(count) bans)" \
    test "$(ip netns exec "$S" ipset list stringban-v4 -terse | awk '/entries/ { print $4 }')" -ge "$(count)"
check "the chain drops set members first" bash -c "ip netns exec '$S' iptables -S STRINGBAN | grep -q -- '-m set --match-set stringban-v4 src -m set ! --match-set stringban-v4-allow src -j DROP'"
blast 2000 50000 > /dev/null   # banned sources: with offload none of it is queued
sleep 1.2
ip netns exec "$S" python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9325/metrics", timeout=5).read().decode())' > "$T/metrics" 2>&1
check "0 packets from banned sources reached the queue (decided: $(metric stringban_packets_total); without offload, above: 2000)" \
    test "$(metric stringban_packets_total)" = 0
before=$(count)
ip netns exec "$S" "$BLAST" 127.0.0.1 500 30 --sources 500 --share 1000 --size 64 --pps 50000 > /dev/null
ip netns exec "$S" ipset flush stringban-v4
for _ in $(seq 30); do
    sleep 0.5
    have=$(ip netns exec "$S" ipset list stringban-v4 -terse | awk '/entries/ { print $4 }')
    [ "${have:-0}" -ge "$(count)" ] && break
done
check "a set flushed by hand is resynced (${have:-0} entries, $(count) bans)" test "${have:-0}" -ge "$(count)"
kill "$DPID"; wait "$DPID"; DPID=
check "the sets are destroyed at exit" bash -c "! ip netns exec '$S' ipset list stringban-v4 > /dev/null 2>&1"
start || exit 1

echo "== kill -9 during a flood loses no ban older than the fsync interval (100 ms)"
sb flush > /dev/null
blast 100000 40000 & BL=$!
sleep 1.2
seen=$(count)
sleep 0.3
kill -9 "$DPID"; wait "$DPID" 2>/dev/null; DPID=
wait "$BL"
start || exit 1
after=$(count)
echo "  $seen bans counted 300 ms before the kill; $after restored"
check "every ban counted 300 ms before the kill is restored ($after ≥ $seen)" test "$after" -ge "$seen"
check "... and the flood had made plenty ($seen > 10000)" test "$seen" -gt 10000
check "... and nothing made up (at most 100,000)" test "$after" -le 100000

echo "== a damaged snapshot: what is valid is recovered, the rest reported, the daemon starts"
kill "$DPID"; wait "$DPID"; DPID=
python3 - "$T/state/bans.snapshot" <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
b[len(b) // 2] ^= 0xFF
open(p, "wb").write(bytes(b))
PY
: > "$T/daemon.log"
start || exit 1
left=$(count)
check "the daemon starts on a damaged snapshot and keeps the valid blocks ($left of $after)" test "$left" -gt 0 -a "$left" -lt "$after"
check "... reporting the damaged block" grep -q "damaged block(s) skipped" "$T/daemon.log"
check "... and keeping the damaged file" test -s "$T/state/bans.snapshot.damaged"
kill "$DPID"; wait "$DPID"; code=$?; DPID=
check "SIGTERM exits 0 and removes the socket" test "$code" = 0 -a ! -e "$T/ctl.sock"

echo "== a reload applies list settings to the live bans, or refuses them whole"
rm -rf "$T/state"
printf '[[list]]\nname = "default"\nttl = "1h"\n' > "$T/sb.toml"
: > "$T/daemon.log"
# The rule from the file too: the flags' --ttl would override the file's list.
printf '[[rule]]\nstring = "@example.com"\n' >> "$T/sb.toml"
ip netns exec "$S" "$BIN" run --config "$T/sb.toml" --pidfile "$T/pid" --state-dir "$T/state" "${CTL[@]}" 2>> "$T/daemon.log" & DPID=$!
for _ in $(seq 200); do [ -S "$T/ctl.sock" ] && break; sleep 0.05; done
ttl_of() { sb list --json | python3 -c "import json,sys
for l in sys.stdin:
    b=json.loads(l)
    if b.get('key')=='$1': print(b['ttl_left'])"; }
sb add 198.18.9.20 > /dev/null
check "a ban with the file's TTL of 1h ($(ttl_of 198.18.9.20) s)" python3 -c "import sys; sys.exit(0 if 3500 < int('$(ttl_of 198.18.9.20)') <= 3600 else 1)"
printf '[[list]]\nname = "default"\nttl = "2h"\ncapacity = 5000\n[[rule]]\nstring = "@example.com"\n' > "$T/sb.toml"
sb reload > /dev/null; sleep 0.5
check "a reload with ttl 2h and a capacity says what changed" grep -q "lists=default: ttl 1h -> 2h, default: capacity 10000000 -> 5000" "$T/daemon.log"
sb add 198.18.9.21 > /dev/null
check "... and a new ban gets 2h ($(ttl_of 198.18.9.21) s), the old one kept" python3 -c "import sys; sys.exit(0 if 7100 < int('$(ttl_of 198.18.9.21)') <= 7200 and int('$(ttl_of 198.18.9.20)') > 3500 else 1)"
printf '[[list]]\nname = "default"\nttl = "3h"\nprefix_v4 = 24\n[[rule]]\nstring = "@example.com"\n' > "$T/sb.toml"
sb reload > /dev/null; sleep 0.5
check "a reload that changes a prefix is refused, saying why" grep -q "reload refused.*prefix_v4 32 -> 24 needs a restart" "$T/daemon.log"
sb add 198.18.9.22 > /dev/null
check "... and nothing of it applied: the TTL is still 2h ($(ttl_of 198.18.9.22) s)" python3 -c "import sys; sys.exit(0 if 7100 < int('$(ttl_of 198.18.9.22)') <= 7200 else 1)"
kill "$DPID"; wait "$DPID"; DPID=

echo
echo "state: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
