#!/usr/bin/env bash
# The attacker's live suite (root, network namespaces only). Usage: attack.sh STRINGBAN_BINARY
# A real Exim listens on 198.18.0.1:25 in a server namespace with the daemon in front of it; a
# client namespace (198.18.0.2, and 198.19.0.0/16 routed behind it) holds the legitimate
# clients and the forger, whose forged sources (198.19.200.0/21) are routed to it but not
# assigned, so the server's answers to them go nowhere. In every mode (packet, stream, smtp,
# and the kernel recipe through --iptables), each case is sent for real:
#   - one segment carrying the string, no connection behind it (from a forged address, and from
#     the legitimate client's own): the listener survives, a new client gets the banner, mail
#     flows, nobody is banned;
#   - a blind handshake (SYN, a guessed ACK, data): nobody banned;
#   - the string forged into a real session with a guessed sequence or acknowledgement number:
#     nobody banned, the session lives on (packet mode too: conntrack's window check; and,
#     with --no-window-check, packet mode's documented limitation: the forged segment convicts);
#   - the positive case: a real spam session is still reset and banned.
# Then, smtp mode: the eviction flood (a session held in DATA, 70,000 forged half-open flows,
# then 20,000 more forged from the session's own /24, beyond that network's share of the flow
# memory; a body line that reads like a RCPT command: delivered, nobody banned), and BDAT against Exim
# with CHUNKING off and on. Last, IPv6 on loopback (the only IPv6 the test rules allow).
set -uo pipefail
BIN=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
need ip iptables python3 exim4 swaks ss openssl

S=sbAS$$; C=sbAC$$; L=sbAL$$; T=$(mktemp -d); DPID=; EPID=; SPID=; HOLD=
cleanup() {
    set +e
    for p in $DPID $SPID $HOLD; do kill "$p" 2>/dev/null; done
    exim_stop
    sleep 0.3
    for p in $DPID $SPID $HOLD; do kill -9 "$p" 2>/dev/null; done
    ip netns del "$S" 2>/dev/null; ip netns del "$C" 2>/dev/null; ip netns del "$L" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
inc() { ip netns exec "$C" "$@"; }
ins() { ip netns exec "$S" "$@"; }
forge() { inc python3 "$HERE/forge.py" "$@"; }

netns_pair "$S" "$C" 64 "$T" || exit 1
exim_start "$S" "$T" || exit 1

start() {   # start NAME ARGS...: the daemon in the server namespace, waits for its pidfile
    rm -f "$T/pid"
    ip netns exec "$S" "$BIN" run --install-rules --pidfile "$T/pid" --state-dir "$T/state-$1" \
        --control-socket "$T/ctl.sock" --summary-interval 1s "${@:2}" 2>> "$T/daemon-$1.log" & DPID=$!
    for _ in $(seq 100); do [ -s "$T/pid" ] && return 0; sleep 0.05; done
    echo "daemon did not start:"; cat "$T/daemon-$1.log"; return 1
}
stop() { kill "$DPID"; wait "$DPID" 2>/dev/null; DPID=; }
ctl() { "$BIN" "$@" --control-socket "$T/ctl.sock"; }
stat_of() { ctl stats | python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
banned() { ctl list 2>/dev/null | grep -qF "$1"; }
not_banned() { ! banned "$1"; }
listening() { ins ss -Hltn 'sport = :25' | grep -q LISTEN; }
banner() { [ "$(inc python3 "$HERE/smtp_client.py" "$1" 198.18.0.1 'NOOP' 3)" = ok ]; }
accept_failures() { grep -c 'accept() failure' "$T/log/mainlog" 2>/dev/null || true; }
legit() {   # legit SRC SUBJECT: one mail with swaks; true when it is in the inbox
    inc swaks --to b@hosted.test --from a@partner.test --server 198.18.0.1 --local-interface "$1" \
        --timeout 10 --header "Subject: $2" --body "Minutes of the planning meeting." > /dev/null 2>&1
    sleep 0.3
    grep -q "^Subject: $2\$" "$T/mail/inbox" 2>/dev/null
}
RCPT='RCPT TO:<victim@example.com>'
n=0

attacks() {   # attacks NAME FLOWMODE(yes|no): the cases every mode gets
    local name=$1 flow=$2 f before
    n=$((n + 1))
    before=$(accept_failures)
    forge one 198.19.200.$n 198.18.0.1 25 "$RCPT"
    forge one 198.18.0.2 198.18.0.1 25 "$RCPT"
    sleep 0.3
    check "$name: one forged segment, no connection: Exim still listens" listening
    check "$name: ... a new client gets the banner" banner 198.19.1.$n
    check "$name: ... Exim logs no accept() failure ($(accept_failures) after, $before before)" test "$(accept_failures)" = "$before"
    check "$name: ... legit mail is delivered from the address it was forged from" legit 198.18.0.2 "$name-legit-$n"
    check "$name: ... the forged source is not banned" not_banned 198.19.200.$n
    check "$name: ... nor the legitimate client" not_banned 198.18.0.2
    forge blind 198.19.201.$n 198.18.0.1 25 "$RCPT"
    sleep 0.3
    check "$name: a blind handshake (guessed ACK, then the string) bans nobody" not_banned 198.19.201.$n
    out=$(forge guess vC 198.19.202.$n 198.18.0.1 25 "$RCPT")
    check "$name: the string forged into a real session (guessed ack, guessed seq) bans nobody" not_banned 198.19.202.$n
    check "$name: ... and the real session lives on ($out)" test "$out" = alive
    read -r outcome secs < <(inc python3 "$HERE/exim_session.py" 198.19.1.$((n + 20)) 198.18.0.1 "$S" 3)
    check "$name: a real spam session is still reset ($outcome, Exim child gone after ${secs} s)" test "$outcome" = reset
    check "$name: ... and its sender banned" banned 198.19.1.$((n + 20))
    check "$name: Exim still listens at the end" listening
}

for mode in packet stream smtp; do
    echo "== $mode mode"
    start "$mode" --string @example.com --mode "$mode" || exit 1
    flow=yes; [ "$mode" = packet ] && flow=no
    attacks "$mode" "$flow"
    un=$(stat_of '["unproven"]')
    echo "   unproven: $un · reset_no_socket $(stat_of '["reset_no_socket"]') · out_of_window $(stat_of '["out_of_window_segments"]')"
    check "$mode: the refused convictions are counted" python3 -c "import sys; d=$un; sys.exit(0 if sum(d.values()) >= 2 else 1)"
    check "$mode: ... and logged" grep -q 'did not prove' "$T/daemon-$mode.log"
    check "$mode: status shows them" bash -c "'$BIN' status --control-socket '$T/ctl.sock' | grep -q 'proof of address: '"
    check "$mode: ... and the kernel's window check" bash -c "'$BIN' status --control-socket '$T/ctl.sock' | grep -q 'window check: on'"
    sleep 2.2   # the rule counters are read every 2 s
    check "$mode: what the window check dropped is counted ($(stat_of '["window_dropped"]'))" test "$(stat_of '["window_dropped"]')" -ge 2
    stop
done

echo "== packet mode without the kernel's window check (--no-window-check): the documented limitation"
start nowindow --string @example.com --mode packet --no-window-check || exit 1
check "nowindow: no conntrack rule in the chain" bash -c "! ip netns exec '$S' iptables -S STRINGBAN | grep -q ctstate"
check "nowindow: status says so" bash -c "'$BIN' status --control-socket '$T/ctl.sock' | grep -q 'window check: off (--no-window-check)'"
out=$(forge guess vC 198.19.202.99 198.18.0.1 25 "$RCPT")
check "nowindow: the string forged into a real session with a bad ack convicts its client ($out): packet mode checks no window without conntrack" banned 198.19.202.99
stop

echo "== the kernel recipe through --iptables (kernel-exact: a forged source is banned, as by the kernel)"
cat > "$T/recipe.sh" <<'EOF'
iptables -N blackchain
iptables -A INPUT -p tcp --dport 25 -m recent --name blacklist --update --seconds 86400 -j DROP
iptables -A INPUT -p tcp --dport 25 -m string --string "example.com" --algo bm -j blackchain
iptables -A blackchain -m recent --set --name blacklist -p tcp -j REJECT --reject-with tcp-reset
EOF
start iptables --iptables "$T/recipe.sh" || exit 1
before=$(accept_failures)
forge one 198.19.203.1 198.18.0.1 25 "$RCPT"
sleep 0.3
check "iptables: one forged segment: the reset finds no session and destroys nothing ($(stat_of '["reset_no_socket"]') without a session)" test "$(stat_of '["reset_no_socket"]')" -ge 1
check "iptables: ... Exim still listens" listening
check "iptables: ... a new client gets the banner" banner 198.19.1.40
check "iptables: ... Exim logs no accept() failure" test "$(accept_failures)" = "$before"
check "iptables: ... the sockets destroyed: none ($(stat_of '["sockets_destroyed"]'))" test "$(stat_of '["sockets_destroyed"]')" = 0
stop

echo "== smtp mode: the eviction flood"
start evict --string @example.com --mode smtp || exit 1
rm -f "$T/go"
inc python3 "$HERE/hold_session.py" 198.19.1.50 198.18.0.1 "$T/go" 'RCPT TO:<quoted@example.com> is just text' 120 > "$T/hold.out" & HOLD=$!
for _ in $(seq 50); do grep -q in-data "$T/hold.out" && break; sleep 0.1; done
check "a legitimate session is in DATA" grep -q in-data "$T/hold.out"
# Half-open flows (forged SYNs: the SYN-ACKs go nowhere) stay in the table, unlike forged data,
# which the server's stack answers with a RST that ends the flow. 198.19.64.0-198.19.255.255.
t0=$(date +%s.%N)
forge flood 198.19.64.0 49152 198.18.0.1 25 70000
t1=$(date +%s.%N)
sleep 1
evicted=$(stat_of '["flows_evicted"]'); proven=$(stat_of '["flows_proven_evicted"]')
echo "   70,000 forged SYNs sent in $(python3 -c "print(round($t1-$t0,1))") s; flows followed: $(stat_of '["flows_new"]')"
check "the flood filled the flow table: $evicted flows evicted" test "$evicted" -gt 0
check "... none of them proven ($proven)" test "$proven" = 0
# Now the forger spoofs the held session's own network (198.19.1.64-255: the SYN-ACKs go
# nowhere): 20,000 half-open flows, more than the /24's share of the budget (4 MiB).
forge flood 198.19.1.64 192 198.18.0.1 25 20000
sleep 1
share=$(stat_of '["flows_share_evicted"]'); proven=$(stat_of '["flows_proven_evicted"]')
check "a flood forged from the session's own /24 is pushed out by its own newer flows ($share evicted for the network's share)" test "$share" -gt 0
check "... none of them proven ($proven)" test "$proven" = 0
check "... nothing refused: a forger cannot lock the network out ($(stat_of '["flows_share_refused"]'))" test "$(stat_of '["flows_share_refused"]')" = 0
check "... a real client of that /24 gets its mail through" legit 198.19.1.51 "share-legit"
check "status shows the share" bash -c "'$BIN' status --control-socket '$T/ctl.sock' | grep -q 'KiB per network and worker'"
touch "$T/go"; wait "$HOLD"; HOLD=
code=$(tail -1 "$T/hold.out")
check "after the flood, the body line 'RCPT TO:<quoted@example.com> is just text' is body: the message is accepted ($code)" test "$code" = 250
check "... and its sender is not banned" not_banned 198.19.1.50
stop

echo "== flow floods: peak RSS with the default budget (64 MiB), two queues"
for mode in smtp stream; do
    start "mem-$mode" --string @example.com --mode "$mode" --queues 0:1 || exit 1
    rss0=$(awk '/VmRSS/ { print $2 }' "/proc/$DPID/status")
    t0=$(date +%s.%N)
    forge hold 198.19.64.0 49152 198.18.0.1 25 32768
    t1=$(date +%s.%N)
    sleep 1
    hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$DPID/status")
    used=$(stat_of '["flow_memory"]["peak_bytes"]')
    echo "   $mode: 163,840 forged packets (32,768 flows) in $(python3 -c "print(round($t1-$t0,1))") s; RSS $((rss0 / 1024)) MB before, peak $((hwm / 1024)) MB; budget peak $((used >> 20)) MiB; flows evicted $(stat_of '["flows_budget_evicted"]') for the budget"
    check "$mode: peak RSS under the flood is at most 200 MB ($((hwm / 1024)) MB)" test "$hwm" -le 204800
    check "$mode: ... flow state stayed within its budget (peak $((used >> 20)) MiB of 64)" test "$used" -le $((64 << 20))
    check "$mode: ... and legit mail still flows" legit 198.18.0.2 "mem-$mode"
    stop
done

echo "== smtp mode: BDAT against Exim without CHUNKING, then with it"
bdat() {   # bdat SRC LINES: a raw session; prints how it ended
    inc python3 "$HERE/raw_client.py" vC "$1" 198.18.0.1 25 "$2" 5
}
exim_stop; EXIM_CHUNKING= exim_start "$S" "$T" || exit 1
start bdat --string @example.com --mode smtp || exit 1
out=$(bdat 198.19.204.1 'EHLO x<UNTIL:250>\nMAIL FROM:<a@partner.test>\nBDAT 999999999999999999<UNTIL:503>\nRCPT TO:<victim@example.com>')
check "CHUNKING not offered: BDAT is refused, the RCPT after it is read and reset ($out)" test "$out" = reset
check "... and its sender banned" banned 198.19.204.1
out=$(bdat 198.19.204.2 'EHLO x<UNTIL:250>\nMAIL FROM:<a@partner.test>\nBDAT 20<CRLF>RCPT TO:<victim@example.com><NOWAIT>\nQUIT')
check "... also when the RCPT shares BDAT's segment ($out)" banned 198.19.204.2
stop
exim_stop; exim_start "$S" "$T" || exit 1
start bdat2 --string @example.com --mode smtp || exit 1
chunk='To: b@hosted.test<CRLF>RCPT TO:<victim@example.com><CRLF>'
out=$(bdat 198.19.204.3 "EHLO x<UNTIL:250>\nMAIL FROM:<a@partner.test>\nRCPT TO:<b@hosted.test>\nBDAT 51 LAST<CRLF>$chunk<UNTIL:250>\nQUIT")
check "CHUNKING offered: a chunk that reads like a RCPT is data, not a command ($out)" test "$out" = ok
check "... and its sender is not banned" not_banned 198.19.204.3
out=$(bdat 198.19.204.4 "EHLO x<UNTIL:250>\nMAIL FROM:<a@partner.test>\nRCPT TO:<b@hosted.test>\nBDAT 10<CRLF>0123456789RCPT TO:<victim@example.com>")
check "... pipelined: the command after a chunk in the same segment is read and reset ($out)" test "$out" = reset
stop

echo "== fail-open is not ban-open: with the daemon gone, the kernel still drops banned sources"
start offload --string @example.com || exit 1
check "status says the kernel drops banned sources (the default)" bash -c "'$BIN' status --control-socket '$T/ctl.sock' | grep -q 'offload: on'"
read -r outcome _ < <(inc python3 "$HERE/exim_session.py" 198.19.1.60 198.18.0.1 "$S" 3)
check "a spam session is reset ($outcome) and banned" banned 198.19.1.60
inset() { ins ipset test stringban-v4 198.19.1.60 2> /dev/null; }
for _ in $(seq 40); do inset && break; sleep 0.05; done
check "... and its ban is in the kernel's set" inset
kill -9 "$DPID"; wait "$DPID" 2>/dev/null; DPID=
check "daemon killed -9, the queue bypassed: a clean client still gets the banner" banner 198.19.1.61
check "... and the banned source's SYN is still dropped, by the kernel" test "$(inc python3 "$HERE/smtp_client.py" 198.19.1.60 198.18.0.1 'NOOP' 2)" = timeout
exim_stop

echo "== IPv6 on loopback"
ip netns add "$L" && ip -n "$L" link set lo up
sleep 1   # ::1 leaves the tentative state
ip netns exec "$L" python3 "$HERE/smtp_server.py" ::1 25 "$T/server6.log" & SPID=$!
sleep 0.5
banner6() { ip netns exec "$L" python3 -c '
import socket, sys
s = socket.socket(socket.AF_INET6); s.settimeout(3)
try:
    s.connect(("::1", 25)); sys.exit(0 if s.recv(64).startswith(b"220") else 1)
except OSError:
    sys.exit(1)'; }
spam6() { ip netns exec "$L" python3 -c '
import socket, sys
s = socket.socket(socket.AF_INET6); s.settimeout(3); s.connect(("::1", 25)); s.recv(64)
try:
    s.sendall(b"EHLO x\r\nRCPT TO:<victim@example.com>\r\n"); s.recv(64); s.recv(64); print("ok")
except ConnectionResetError:
    print("reset")
except OSError as e:
    print(type(e).__name__)'; }
for mode in packet stream smtp; do
    rm -f "$T/pid"
    ip netns exec "$L" "$BIN" run --install-rules --pidfile "$T/pid" --state-dir "$T/state6-$mode" --control-socket "$T/ctl.sock" \
        --no-default-allow --string @example.com --mode "$mode" 2>> "$T/daemon6.log" & DPID=$!
    for _ in $(seq 100); do [ -s "$T/pid" ] && break; sleep 0.05; done
    ip netns exec "$L" python3 "$HERE/forge.py" one ::1 ::1 25 "$RCPT"
    sleep 0.3
    check "IPv6 $mode: one forged segment from ::1, no connection: the listener survives" banner6
    check "IPv6 $mode: ... ::1 is not banned" not_banned "::"
    out=$(spam6)
    check "IPv6 $mode: a real session sending the string is reset ($out)" test "$out" = reset
    check "IPv6 $mode: ... and banned (::/64)" banned "::/64"
    stop
done

echo "attack: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
