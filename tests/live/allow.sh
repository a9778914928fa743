#!/usr/bin/env bash
# Live test of the allowlist, thresholds and escalation (root, network namespaces only).
# Usage: allow.sh STRINGBAN_BINARY
# A server namespace runs the line-based SMTP stand-in on 198.18.0.1:25 and the daemon; a client
# namespace holds 198.18.0.2 and 198.19.1.0-9. An allowlisted source sends the spam string and is
# never banned (nor reset); `add` refuses allowlisted addresses (the configured ones, the host's
# own, loopback); a list bans at the second conviction, and a repeat offender's TTL triples, across
# restarts; a reload that adds to the allowlist file takes effect, and a refused one says so. Last,
# offload with prefix_v4 = 24 and prefix_v6 = 64: a ban of a neighbour puts the /24 (the ::/64 on
# loopback) in the kernel's set, and the allowlisted host inside it still connects.
set -uo pipefail
BIN=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
need ip iptables ipset python3

S=sbAS$$; C=sbAC$$; T=$(mktemp -d); PIDS=(); DPID=
cleanup() {
    for p in $DPID "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    sleep 0.3
    for p in $DPID "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    ip netns del "$S" 2>/dev/null; ip netns del "$C" 2>/dev/null; ip netns del "sbAL$$" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
inc() { ip netns exec "$C" "$@"; }
client() { inc python3 "$HERE/smtp_client.py" "$@"; }
ctl() { ip netns exec "$S" "$BIN" "$@" --control-socket "$T/ctl.sock"; }

netns_pair "$S" "$C" 10 "$T" || exit 1
ip netns exec "$S" python3 "$HERE/smtp_server.py" 198.18.0.1 25 "$T/server.log" & PIDS+=($!)
sleep 0.5

echo "198.19.1.5   # a customer's smarthost" > "$T/allow.txt"
cat > "$T/sb.toml" <<TOML
[allow]
cidrs = ["198.19.1.0/31"]
files = ["$T/allow.txt"]

[[list]]
name = "spam"
ttl = "3s"
threshold = 2
window = "1m"
escalate = 3
max_ttl = "1h"

[[rule]]
string = "@example.com"
list = "spam"
TOML

start_daemon() {
    rm -f "$T/pid"
    ip netns exec "$S" "$BIN" run --config "$T/sb.toml" --install-rules --pidfile "$T/pid" --state-dir "$T/state" \
        --control-socket "$T/ctl.sock" 2>> "$T/daemon.log" & DPID=$!
    for _ in $(seq 100); do [ -S "$T/ctl.sock" ] && [ -s "$T/pid" ] && return 0; sleep 0.05; done
    echo "daemon did not start:"; cat "$T/daemon.log"; return 1
}
stop_daemon() { kill "$DPID"; wait "$DPID" 2>/dev/null; DPID=; }
SPAM='EHLO bot\nMAIL FROM:<x@bot.test>\nRCPT TO:<victim@example.com>'
LEGIT='EHLO mx\nMAIL FROM:<a@partner.test>\nRCPT TO:<b@hosted.test>\nQUIT'
# ban_of ADDR FIELD: a field of ADDR's ban in `list --json` (empty: not banned).
ban_of() { ctl list --json | python3 -c 'import json,sys
for l in sys.stdin:
    b = json.loads(l)
    if b["key"] == sys.argv[1]: print(b[sys.argv[2]])' "$1" "$2"; }

start_daemon || exit 1

echo "== allowlisted sources send the spam string: accepted, never banned"
for src in 198.19.1.0 198.19.1.1 198.19.1.5; do
    for i in 1 2 3; do
        check "$src spam #$i goes through (allowlisted: no reset)" test "$(client $src 198.18.0.1 "$SPAM")" = ok
    done
    check "$src is not banned" test -z "$(ban_of $src key)"
done
# Workers publish their counters every 500 ms: poll (at most 5 s) rather than read once.
for _ in $(seq 50); do
    ctl stats > "$T/stats.json"
    python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["allowlisted_convictions"] >= 9 else 1)' "$T/stats.json" && break
    sleep 0.1
done
check "stats count 9 allowlisted convictions and no ban ($(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["allowlisted_convictions"], s["bans_new"], s["allowlisted_packets"])' "$T/stats.json"))" python3 -c '
import json,sys; s=json.load(open(sys.argv[1]))
sys.exit(0 if s["allowlisted_convictions"] == 9 and s["bans_new"] == 0 and s["allowlisted_packets"] >= 9 else 1)' "$T/stats.json"

echo "== add refuses allowlisted addresses"
for a in 198.19.1.1 198.19.1.5 198.18.0.1 127.0.0.1; do
    out=$(ctl add "$a" 2>&1); code=$?
    check "add $a refused (exit $code: $out)" bash -c "[ $code -eq 2 ] && grep -q allowlisted <<< '$out'"
done
check "add 198.19.1.9 (not allowlisted) works" ctl add 198.19.1.9 --ttl 1h
ctl del 198.19.1.9 > /dev/null

echo "== threshold 2: the first conviction resets the session, the second bans"
check "198.19.1.2 spam #1 reset" test "$(client 198.19.1.2 198.18.0.1 "$SPAM")" = reset
check "... and it is not banned (one strike)" test "$(client 198.19.1.2 198.18.0.1 "$LEGIT")" = ok
check "198.19.1.2 spam #2 reset" test "$(client 198.19.1.2 198.18.0.1 "$SPAM")" = reset
check "... now banned (its mail times out)" test "$(client 198.19.1.2 198.18.0.1 "$LEGIT" 1)" = timeout
off=$(ban_of 198.19.1.2 offences); left=$(ban_of 198.19.1.2 ttl_left)
check "first offence: ${left:-?} s left (want 1-3, 1 s after the ban)" bash -c "[ '$off' = 1 ] && [ '${left:-0}' -ge 1 ] && [ '${left:-0}' -le 3 ]"

echo "== escalation across restarts: 3 s, then 9 s, then 27 s"
for round in 2 3; do
    sleep 4
    check "offence $((round - 1)) served: mail goes through" test "$(client 198.19.1.2 198.18.0.1 "$LEGIT")" = ok
    stop_daemon; start_daemon || exit 1
    client 198.19.1.2 198.18.0.1 "$SPAM" > /dev/null
    check "after a restart, one conviction is a strike again" test -z "$(ban_of 198.19.1.2 key)"
    client 198.19.1.2 198.18.0.1 "$SPAM" > /dev/null
    want=$(( round == 2 ? 9 : 27 ))
    off=$(ban_of 198.19.1.2 offences); left=$(ban_of 198.19.1.2 ttl_left)
    check "offence $round after a restart: ${left:-?} s left (want $((want - 1))-$want)" bash -c "[ '$off' = $round ] && [ '${left:-0}' -ge $((want - 1)) ] && [ '${left:-0}' -le $want ]"
    [ "$round" = 2 ] && sleep 6
done

echo "== reload: the allowlist file is read again; a refused reload says why"
ctl add 198.19.1.4 --ttl 1h > /dev/null
check "198.19.1.4 banned by hand: its mail times out" test "$(client 198.19.1.4 198.18.0.1 "$LEGIT" 1)" = timeout
printf '198.19.1.3\n198.19.1.4\n' >> "$T/allow.txt"
out=$(ctl reload 2>&1)
check "reload reports what it loaded ($out)" grep -q "allowlist entries.*(1 of allowlisted sources lifted)" <<< "$out"
check "the ban of 198.19.1.4, now allowlisted, is lifted" test -z "$(ban_of 198.19.1.4 key)"
check "... and its mail flows" test "$(client 198.19.1.4 198.18.0.1 "$LEGIT")" = ok
check "198.19.1.3 (just allowlisted) spam goes through" test "$(client 198.19.1.3 198.18.0.1 "$SPAM")" = ok
check "... twice, never banned" bash -c "[ \"\$(ip netns exec '$C' python3 '$HERE/smtp_client.py' 198.19.1.3 198.18.0.1 '$SPAM')\" = ok ] && [ -z \"\$(ip netns exec '$S' '$BIN' list --json --control-socket '$T/ctl.sock' | grep 198.19.1.3)\" ]"
echo "not-a-cidr" >> "$T/allow.txt"
out=$(ctl reload 2>&1); code=$?
check "a bad allowlist file refuses the reload (exit $code): $out" bash -c "[ $code -eq 2 ] && grep -q 'allow.txt:4' <<< '$out'"
check "... and the old allowlist stays" test "$(client 198.19.1.3 198.18.0.1 "$SPAM")" = ok

echo "== status, list and the log"
ctl status > "$T/status.txt"
check "status shows the allowlist, the list's threshold and escalation" bash -c "grep -q 'allowlist: .*198.19.1.0/31' '$T/status.txt' && grep -q '2/1m' '$T/status.txt' && grep -q 'x3≤1h' '$T/status.txt'" || cat "$T/status.txt"
check "status shows the banned source" grep -q "198.19.1.2" "$T/status.txt"
check "list shows the rule and a header" bash -c "ctl() { ip netns exec '$S' '$BIN' \"\$@\" --control-socket '$T/ctl.sock'; }; ctl list | grep -q '^SOURCE' && ctl list | grep 198.19.1.2 | grep -q '\"@example.com\"'"
check "count, status, add and del answer JSON with --json" bash -c "ctl() { ip netns exec '$S' '$BIN' \"\$@\" --control-socket '$T/ctl.sock'; }
    ctl count --json | python3 -c 'import json,sys; assert json.load(sys.stdin)[\"lists\"][\"spam\"] >= 1' &&
    ctl status --json | python3 -c 'import json,sys; s=json.load(sys.stdin); assert s[\"lists\"][0][\"name\"] == \"spam\"' &&
    ctl add 198.19.1.7 --ttl 1h --json | python3 -c 'import json,sys; assert json.load(sys.stdin)[\"new\"] is True' &&
    ctl del 198.19.1.7 --json | python3 -c 'import json,sys; assert json.load(sys.stdin)[\"removed\"] == 1'"
check "the log has a line per ban" grep -q "ban 198.19.1.2 list=spam rule=\"@example.com\" for" "$T/daemon.log"
ctl add 198.19.1.8 --ttl 2s > /dev/null
sleep 13   # the sweep that logs ended bans runs every 10 s
check "... and per ended ban" grep -q "unban 198.19.1.8 list=spam rule=by-hand (ended after" "$T/daemon.log"
grep -E " (un)?ban " "$T/daemon.log" | tail -4
stop_daemon

echo "== offload with prefixes: the kernel drops a banned /24, never an allowlisted host in it"
cat > "$T/sb24.toml" <<TOML
[allow]
cidrs = ["198.19.1.5/32"]

[[list]]
name = "spam"
ttl = "1h"
prefix_v4 = 24
prefix_v6 = 64

[[rule]]
string = "@example.com"
list = "spam"
TOML
rm -f "$T/pid"
ip netns exec "$S" "$BIN" run --config "$T/sb24.toml" --install-rules --offload --pidfile "$T/pid" --state-dir "$T/state24" \
    --control-socket "$T/ctl.sock" 2>> "$T/daemon24.log" & DPID=$!
for _ in $(seq 100); do [ -S "$T/ctl.sock" ] && [ -s "$T/pid" ] && break; sleep 0.05; done
ctl add 198.19.1.6 > /dev/null
inset() { for _ in $(seq 40); do ip netns exec "$1" ipset test "$2" "$3" 2> /dev/null && return 0; sleep 0.05; done; return 1; }
check "a ban of 198.19.1.6 puts its /24 in the kernel's set" inset "$S" stringban-v4 198.19.1.7
check "... the allowlisted 198.19.1.5 in it is in the allow set" bash -c "ip netns exec '$S' ipset test stringban-v4-allow 198.19.1.5 2> /dev/null"
check "... and still gets its mail through" test "$(client 198.19.1.5 198.18.0.1 "$LEGIT")" = ok
check "... while 198.19.1.7 of the same /24 is dropped" test "$(client 198.19.1.7 198.18.0.1 "$LEGIT" 1.5)" = timeout
stop_daemon
L=sbAL$$
ip netns add "$L" && ip -n "$L" link set lo up
sleep 1   # ::1 leaves the tentative state
ip netns exec "$L" python3 "$HERE/smtp_server.py" ::1 25 "$T/server6.log" & PIDS+=($!)
rm -f "$T/pid"
ip netns exec "$L" "$BIN" run --config "$T/sb24.toml" --install-rules --offload --pidfile "$T/pid" --state-dir "$T/state6" \
    --control-socket "$T/ctl6.sock" 2>> "$T/daemon6.log" & DPID=$!
for _ in $(seq 100); do [ -S "$T/ctl6.sock" ] && [ -s "$T/pid" ] && break; sleep 0.05; done
ip netns exec "$L" "$BIN" add ::2 --control-socket "$T/ctl6.sock" > /dev/null
check "IPv6: a ban of ::2 puts ::/64 in the kernel's set" inset "$L" stringban-v6 ::3
check "... ::1 (loopback, allowlisted by default) is in the allow set" bash -c "ip netns exec '$L' ipset test stringban-v6-allow ::1 2> /dev/null"
check "... and ::1 still connects to ::1:25" ip netns exec "$L" python3 -c '
import socket, sys
s = socket.socket(socket.AF_INET6); s.settimeout(3)
s.connect(("::1", 25)); sys.exit(0 if s.recv(64).startswith(b"220") else 1)'
stop_daemon
ip netns del "$L"

echo "allow: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
