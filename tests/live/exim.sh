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
need ip iptables python3 exim4 swaks ss

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
ip netns exec "$S" "$BIN" run --string @example.com --install-rules --pidfile "$T/pid" --state-dir "$T/state" --no-control 2> "$T/daemon.log" & DPID=$!
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

echo "== A2: smtp mode in front of Exim (envelope commands only, any case, across segments; bypass)"
start_smtp() {
    rm -f "$T/pid"
    ip netns exec "$S" "$BIN" run --string @example.com --mode smtp --install-rules --pidfile "$T/pid" --state-dir "$T/state" --no-control \
        --summary-interval 1s 2> "$T/daemon.log" & DPID=$!
    for _ in $(seq 100); do [ -s "$T/pid" ] && return 0; sleep 0.05; done
    echo "daemon did not start:"; cat "$T/daemon.log"; return 1
}
swaks_from() {   # swaks_from SRC TO BODY: prints swaks' whole output
    inc swaks --to "$2" --from a@partner.test --server 198.18.0.1 --local-interface "$1" --timeout 5 \
        --header "Subject: $3" --body "$4" 2>&1
}
raw() { local src=$1; shift; inc python3 "$HERE/raw_client.py" vC "$src" 198.18.0.1 25 "$@"; }
start_smtp || exit 1
check "smtp mode: the OUTPUT rule queues the server's replies" bash -c "ip netns exec '$S' iptables -S OUTPUT | grep -q -- '--sports 25 -j STRINGBAN'"
out=$(swaks_from 198.19.2.10 VICTIM@EXAMPLE.COM U1 "hello")
check "smtp mode: RCPT TO:<VICTIM@EXAMPLE.COM> from swaks is reset" bash -c "grep -qiE 'reset|lost|closed|EOF' <<< '$out'"
check "... and banned: its next SYN is dropped" test "$(inc python3 "$HERE/smtp_client.py" 198.19.2.10 198.18.0.1 'EHLO x' 1.5)" = timeout
check "smtp mode: a RCPT split inside the domain across two segments (raw client) is reset" \
    test "$(raw 198.19.250.1 'EHLO bot\nMAIL FROM:<x@bot.test>\nRCPT TO:<victim@exam<SPLIT>ple.com>')" = reset
check "... and banned" test "$(raw 198.19.250.1 'EHLO x' 1.5)" = timeout
check "smtp mode: ... also when its segments arrive out of order" \
    test "$(raw 198.19.250.2 'EHLO bot\nMAIL FROM:<x@bot.test>\nRCPT TO:<victim@exam<SPLIT>ple.com>' 3 --reorder)" = reset
check "smtp mode: ... and when retransmitted" \
    test "$(raw 198.19.250.3 'EHLO bot\nMAIL FROM:<x@bot.test>\nRCPT TO:<victim@ex<SPLIT>ample.com>' 3 --retransmit)" = reset
swaks_from 198.19.2.11 b@hosted.test M1 "The invoice from billing@example.com arrived twice; write to BILLING@EXAMPLE.COM." > /dev/null
check "smtp mode: legit mail whose body mentions @example.com is delivered" delivered M1
swaks_from 198.19.2.11 b@hosted.test M2 "Second mail from the same sender." > /dev/null
check "... and its sender is not banned (a second mail is delivered)" delivered M2
kill "$DPID"; wait "$DPID" 2>/dev/null; DPID=
check "smtp mode: the legit sessions bypassed the queue (summary: $(grep -o 'bypassed [0-9]*' "$T/daemon.log" | tail -1))" \
    bash -c "grep -o 'bypassed [0-9]*' '$T/daemon.log' | tail -1 | awk '{ exit !(\$2 >= 2) }'"

echo "== A3: packets queued for one legit session with a 10 KB body (smtp mode with bypass)"
python3 -c 'print("\r\n".join("Line %d of the quarterly report: figures and notes as discussed." % i for i in range(160)))' > "$T/body10k"
# Count every packet of the session both ways, as the kernel's string match would see them.
ins iptables -t raw -A PREROUTING -p tcp --dport 25 -s 198.19.2.12
ins iptables -t raw -A OUTPUT -p tcp --sport 25 -d 198.19.2.12
start_smtp || exit 1
swaks_from 198.19.2.12 b@hosted.test Q1 "$T/body10k" > "$T/swaks.out"
sleep 0.5
kill "$DPID"; wait "$DPID" 2>/dev/null; DPID=
check "the 10 KB mail is delivered" delivered Q1
total=$(( $(ins iptables -t raw -L PREROUTING -v -x -n | awk '/198.19.2.12/ { print $1 }') + $(ins iptables -t raw -L OUTPUT -v -x -n | awk '/198.19.2.12/ { print $1 }') ))
queued=$(grep -o 'packets/session mean [0-9.]* max [0-9]*' "$T/daemon.log" | tail -1 | awk '{ print $5 }')
echo "  the session had $total packets in all; stringban queued ${queued:-?} of them"
check "at most 12 packets queued for the session (${queued:-?} of $total)" test "${queued:-99}" -le 12
ins iptables -t raw -F PREROUTING; ins iptables -t raw -F OUTPUT

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
