#!/usr/bin/env bash
# Live tests with a real MTA (root, network namespaces only). Usage: exim.sh STRINGBAN_BINARY
# Exim (exim4-daemon-light, started by hand with a generated config, smtp_accept_max 20,
# smtp_receive_timeout 60s) listens on 198.18.0.1:25 in a server namespace; swaks and Python
# clients connect from a client namespace (198.18.0.2, and 198.19.0.0/16 behind it).
# Part A: stringban in front of Exim. Part B: the kernel recipe in front of the same Exim.
set -uo pipefail
BIN=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
[ "$(id -u)" -eq 0 ] || { echo "FAIL: live tests need root" >&2; exit 1; }
for t in ip iptables python3 exim4 swaks ss; do command -v "$t" >/dev/null || { echo "FAIL: $t not installed" >&2; exit 1; }; done

S=sbX$$; C=sbY$$; T=$(mktemp -d); DPID=; EPID=
cleanup() {
    set +e
    [ -n "$DPID" ] && kill "$DPID" 2>/dev/null
    exim_stop
    sleep 0.3
    ip netns del "$S" 2>/dev/null; ip netns del "$C" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
inc() { ip netns exec "$C" "$@"; }
ins() { ip netns exec "$S" "$@"; }

netns_pair "$S" "$C" 400 "$T" || exit 1
exim_start "$S" "$T" || exit 1

legit() {   # legit SUBJECT: one mail with swaks from the clean IP; prints swaks' last reply code
    inc swaks --to b@hosted.test --from a@partner.test --server 198.18.0.1 --local-interface 198.18.0.2 \
        --timeout 10 --header "Subject: $1" --body "Minutes of the planning meeting." 2>&1 |
        awk '/^<[-* ]+ [0-9][0-9][0-9]/ { code = $2 } END { print code }'
}
delivered() { sleep 0.5; grep -q "^Subject: $1\$" "$T/mail/inbox" 2>/dev/null; }
children() { pgrep -P "$EPID" | wc -l; }

echo "== A: stringban in front of Exim"
rm -f "$T/pid"
ip netns exec "$S" "$BIN" run --string @example.com --install-rules --pidfile "$T/pid" 2> "$T/daemon.log" & DPID=$!
for _ in $(seq 100); do [ -s "$T/pid" ] && break; sleep 0.05; done
check "legit mail (swaks) is accepted: $(legit A1)" delivered A1
read -r outcome secs < <(inc python3 "$HERE/exim_session.py" 198.19.1.1 198.18.0.1 "$S" 3)
check "a spam session gets a RST ($outcome)" test "$outcome" = reset
check "... and the Exim process serving it exits within 1 s (${secs} s)" python3 -c "import sys; sys.exit(0 if '$secs' != 'alive' and float('$secs') <= 1.0 else 1)"
check "a new connection from that IP is dropped at the SYN" test "$(inc python3 "$HERE/smtp_client.py" 198.19.1.1 198.18.0.1 'EHLO x' 1.5)" = timeout
# Fewer clients at once than Exim's 20 sessions, so that only a filter can exhaust them.
export FLOOD_CONCURRENCY=8
resets=$(inc python3 "$HERE/flood.py" spam 198.18.0.1 198.19 300 25)
check "25 spam sessions are reset ($resets)" test "$resets" = 25
sleep 0.3
check "... and leave no Exim session behind ($(children) children)" test "$(children)" -le 1
code=$(legit A2)
check "legit mail right after them is accepted (swaks: $code)" delivered A2
inc python3 "$HERE/flood.py" spam 198.18.0.1 198.19 330 60 > "$T/flood.out" & FLOOD=$!
code=$(legit A3)
wait "$FLOOD"
check "legit mail during a flood of 60 spam sessions is accepted (swaks: $code; flood resets: $(cat "$T/flood.out"))" delivered A3
kill "$DPID"; wait "$DPID" 2>/dev/null; DPID=

echo "== B: the kernel recipe in front of the same Exim"
ins iptables -A INPUT -p tcp --dport 25 -m recent --name sbexim --update --seconds 86400 -j DROP
ins iptables -A INPUT -p tcp --dport 25 -m string --string @example.com --algo bm -m recent --name sbexim --set -j REJECT --reject-with tcp-reset
read -r outcome secs < <(inc python3 "$HERE/exim_session.py" 198.19.2.1 198.18.0.1 "$S" 3)
check "kernel recipe: the spam client gets a RST ($outcome)" test "$outcome" = reset
check "kernel recipe: ... but the Exim process is still there 3 s later ($secs)" test "$secs" = alive
inc python3 "$HERE/flood.py" spam 198.18.0.1 198.19 600 25 > /dev/null
sleep 0.3
check "kernel recipe: 25 spam sessions leave Exim at its 20-session limit ($(children) children)" test "$(children)" -ge 20
code=$(legit B1)
check "kernel recipe: legit mail is refused with 421 meanwhile (swaks: $code)" test "$code" = 421
check "kernel recipe: ... and not delivered" bash -c "! grep -q '^Subject: B1\$' '$T/mail/inbox'"

echo
echo "exim: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
