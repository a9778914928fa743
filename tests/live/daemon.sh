#!/usr/bin/env bash
# Live tests of `stringban run` (root, network namespaces only). Usage: daemon.sh STRINGBAN_BINARY
# A server namespace runs a line-based SMTP stand-in on 198.18.0.1:25 and the daemon; a client
# namespace holds 198.18.0.2 and, behind it, 2,100 addresses in 198.19.0.0/16. Nothing touches the
# root namespace's rules; everything is torn down by the trap, and only our own PIDs are killed.
set -uo pipefail
BIN=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
need ip iptables python3

S=sbS$$; C=sbC$$; F=sbF$$; T=$(mktemp -d); PIDS=(); DPID=; HOLD=
cleanup() {
    for p in $DPID $HOLD "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    sleep 0.3
    for p in $DPID $HOLD "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    ip netns del "$S" 2>/dev/null; ip netns del "$C" 2>/dev/null; ip netns del "$F" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
ins() { ip netns exec "$S" "$@"; }
inc() { ip netns exec "$C" "$@"; }
client() { inc python3 "$HERE/smtp_client.py" "$@"; }
# raw SRC LINES [TIMEOUT] [--reorder|--retransmit]: our own TCP over raw sockets, exact segments,
# from 198.19.250.0/24 (routed to the client namespace, not assigned there).
raw() { local src=$1; shift; inc python3 "$HERE/raw_client.py" vC "$src" 198.18.0.1 25 "$@"; }

netns_pair "$S" "$C" 2100 "$T" || exit 1
ip netns exec "$S" python3 "$HERE/smtp_server.py" 198.18.0.1 25 "$T/server.log" & PIDS+=($!)
sleep 0.5

start_daemon() {   # start_daemon EXTRA_ARGS... ; waits for the pidfile
    rm -f "$T/pid"
    # Started directly, not through a shell function, so that $! is the daemon itself
    # (`ip netns exec` execs the command in place).
    ip netns exec "$S" "$BIN" run --install-rules --pidfile "$T/pid" --state-dir "$T/state" --control-socket "$T/ctl.sock" --summary-interval 1s "$@" 2>> "$T/daemon.log" & DPID=$!
    for _ in $(seq 100); do [ -s "$T/pid" ] && return 0; sleep 0.05; done
    echo "daemon did not start:"; cat "$T/daemon.log"; return 1
}
chain_count() { ins iptables -S INPUT | grep -c -- '-j STRINGBAN'; }
# session_ended SRC ERROR WHAT: the server logged SRC's session ending with ERROR (e.g.
# ConnectionAbortedError), within 1 s of its last line.
session_ended() {
    local how secs
    sleep 0.3
    read -r _ _ how secs < <(grep "^$1 " "$T/server.log" | tail -1)
    check "the server's session was $3: $how" test "${how%%:*}" = "$2"
    check "... within 1 s of the spam line (took ${secs:-?} s)" python3 -c "import sys; sys.exit(0 if float('${secs:-9}') <= 1.0 else 1)"
}
SPAM='EHLO bot\nMAIL FROM:<x@bot.test>\nRCPT TO:<victim@example.com>'
LEGIT='EHLO mx\nMAIL FROM:<a@partner.test>\nRCPT TO:<b@hosted.test>\nQUIT'

echo "== daemon: reset both ways, bans"
# Listen as systemd would for Type=notify.
python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sys.argv[1]); s.settimeout(10)
try: print(s.recv(256).decode())
except OSError: print("nothing")' "$T/notify" > "$T/notify.out" & PIDS+=($!)
sleep 0.3
export NOTIFY_SOCKET=$T/notify
start_daemon --string @example.com || exit 1
unset NOTIFY_SOCKET
sleep 0.2
check "systemd was told READY=1 once bound ($(cat "$T/notify.out"))" grep -qx "READY=1" "$T/notify.out"
check "rules installed once" test "$(chain_count)" = 1
check "pidfile holds the daemon's pid" test "$(cat "$T/pid")" = "$DPID"
check "legit mail from a clean IP goes through" test "$(client 198.18.0.2 198.18.0.1 "$LEGIT")" = ok
: > "$T/server.log"
check "a spam session gets a RST" test "$(client 198.19.1.0 198.18.0.1 "$SPAM")" = reset
session_ended 198.19.1.0 ConnectionAbortedError "aborted (ECONNABORTED), not left open"
check "a new connection from the banned IP is dropped at the SYN" test "$(client 198.19.1.0 198.18.0.1 'EHLO x' 1.5)" = timeout

echo "== packet mode is the kernel's xt_string (stream and smtp modes close these: below, and exim.sh)"
check "a RCPT split across two TCP segments is not caught, as with the kernel" \
    test "$(client 198.19.9.10 198.18.0.1 'EHLO bot\nRCPT TO:<victim@exam<SPLIT>ple.com>')" = ok
check "@EXAMPLE.COM is not caught by a case-sensitive rule, as with the kernel" \
    test "$(client 198.19.9.11 198.18.0.1 'EHLO bot\nRCPT TO:<VICTIM@EXAMPLE.COM>')" = ok

echo "== a raw-socket client: exact segments, out of order, retransmitted"
check "raw client: legit mail goes through" test "$(raw 198.19.250.1 "$LEGIT")" = ok
check "raw client: a spam session gets a RST" test "$(raw 198.19.250.2 "$SPAM")" = reset
check "raw client: ... and the banned IP's next SYN is dropped" test "$(raw 198.19.250.2 'EHLO x' 1.5)" = timeout
check "raw client: a retransmitted spam segment gets a RST" test "$(raw 198.19.250.3 "$SPAM" 3 --retransmit)" = reset
check "raw client: a RCPT in two exact segments is not caught in packet mode, as with the kernel" \
    test "$(raw 198.19.250.4 'EHLO bot\nRCPT TO:<victim@exam<SPLIT>ple.com>\nQUIT')" = ok
check "raw client: ... nor sent out of order" \
    test "$(raw 198.19.250.5 'EHLO bot\nRCPT TO:<victim@exam<SPLIT>ple.com>\nQUIT' 3 --reorder)" = ok

echo "== 2,000 spam sources, legit mail during the flood"
ip netns exec "$C" python3 "$HERE/flood.py" spam 198.18.0.1 198.19 257 2000 > "$T/flood.out" & FLOOD=$!
sleep 0.5
check "legit mail during the flood" test "$(client 198.18.0.2 198.18.0.1 "$LEGIT")" = ok
wait $FLOOD
check "all 2,000 spam sessions were reset ($(cat "$T/flood.out"))" test "$(cat "$T/flood.out")" = 2000
blocked=$(inc python3 "$HERE/flood.py" probe 198.18.0.1 198.19 257 2000)
check "all 2,000 spam IPs still banned (blocked: $blocked)" test "$blocked" = 2000
check "legit mail after the flood" test "$(client 198.18.0.2 198.18.0.1 "$LEGIT")" = ok

echo "== life cycle"
ins "$BIN" run --string @example.com --install-rules --pidfile "$T/pid" --state-dir "$T/state" --no-control > "$T/second.out" 2>&1; code=$?
check "a second daemon exits 2 ($(tail -1 "$T/second.out"))" test "$code" = 2
check "... saying the first is running" grep -q "already running (pid $DPID" "$T/second.out"
check "... and the first keeps working" test "$(client 198.19.9.1 198.18.0.1 "$SPAM")" = reset
check "... with its rules in place" test "$(chain_count)" = 1
# One owner of the kernel rules: another instance (other queue, pidfile, state, socket) that
# would install rules is refused before it touches them; one that does not install rules runs
# beside the first, and its stop leaves the first's rules alone.
ins "$BIN" run --string @example.com --install-rules --queues 3 --pidfile "$T/pid3" --state-dir "$T/state3" \
    --control-socket "$T/ctl3.sock" > "$T/third.out" 2>&1; code=$?
check "a second instance with its own queue and files is refused (exit $code)" test "$code" = 2
check "... saying another stringban manages the rules" grep -q "manages the kernel rules in this network namespace" "$T/third.out"
check "... the first's rules untouched (queue 0, no queue 3)" bash -c "ins() { ip netns exec '$S' \"\$@\"; }; ins iptables -S STRINGBAN | grep -q -- '--queue-num 0' && ! ins iptables -S STRINGBAN | grep -q -- '--queue-num 3'"
ins "$BIN" run --string @example.com --install-rules --fail-closed --queues 3 --pidfile "$T/pid3" --no-state --no-control > "$T/third.out" 2>&1; code=$?
check "... also with --no-state --no-control --fail-closed (exit $code)" test "$code" = 2
check "... and the first keeps deciding: spam reset" test "$(client 198.19.9.33 198.18.0.1 "$SPAM")" = reset
# The lock is a flock on the namespace itself, not a file: nothing a package purge or a unit's
# runtime-directory cleanup removes can take it (package.sh purges with a daemon running).
check "the rules lock is a flock on the network namespace, held by the first ($(grep -c " $DPID 00:04:$(stat -L -c %i /proc/$DPID/ns/net) " /proc/locks))" \
    grep -q "FLOCK .* $DPID 00:04:$(stat -L -c %i "/proc/$DPID/ns/net") " /proc/locks
check "... and the refusal names the holder" grep -q "another stringban (pid $DPID)" "$T/third.out"
# The pidfile is never opened through a link: one planted there truncates nothing.
echo keep > "$T/victim"; ln -sf "$T/victim" "$T/pid-link"
ins "$BIN" run --string @example.com --queues 4 --pidfile "$T/pid-link" --no-state --no-control > "$T/link.out" 2>&1; code=$?
check "a pidfile that is a symbolic link is refused (exit $code: $(tail -1 "$T/link.out" | cut -c1-90))" \
    bash -c "[ $code = 2 ] && grep -q 'symbolic link' '$T/link.out'"
check "... and the file it points to is untouched" test "$(cat "$T/victim")" = keep
rm -f "$T/pid3"
ins "$BIN" run --string @example.com --queues 3 --pidfile "$T/pid3" --no-state --no-control 2> "$T/third.log" & P3=$!
for _ in $(seq 100); do [ -s "$T/pid3" ] && break; sleep 0.05; done
kill "$(cat "$T/pid3")"; wait "$P3"; code=$?
check "an instance without --install-rules runs beside it and stops cleanly (exit $code)" test "$code" = 0
check "... leaving the first's rules in place" test "$(chain_count)" = 1
check "... and the first still resets spam" test "$(client 198.19.9.34 198.18.0.1 "$SPAM")" = reset
# A start that fails (the metrics port is taken) leaves no rule behind, even fail-closed.
ip netns add "$F"; ip -n "$F" link set lo up
ip netns exec "$F" python3 -c 'import socket,time; s=socket.socket(); s.bind(("127.0.0.1",9399)); s.listen(); time.sleep(30)' & HOLD=$!
# Wait until the port is taken (a busy machine starts python slowly), at most 10 s.
for _ in $(seq 100); do ip netns exec "$F" ss -Hltn 'sport = :9399' | grep -q . && break; sleep 0.1; done
ip netns exec "$F" "$BIN" run --string @example.com --install-rules --fail-closed --no-state --no-control \
    --pidfile "$T/pidF" --metrics 127.0.0.1:9399 > "$T/failed.out" 2>&1; code=$?
check "a start that fails (metrics port taken, fail-closed) exits 2 ($code: $(tail -1 "$T/failed.out"))" test "$code" = 2
check "... and leaves no rule behind" bash -c "! ip netns exec '$F' iptables -S | grep -q 'STRINGBAN\|NFQUEUE'"
kill "$HOLD" 2>/dev/null; wait "$HOLD" 2>/dev/null; ip netns del "$F"
kill -9 "$DPID"; wait "$DPID" 2>/dev/null; DPID=
check "daemon killed: mail still flows (--queue-bypass)" test "$(client 198.18.0.2 198.18.0.1 "$LEGIT")" = ok
start_daemon --string @example.com
check "restart reinstalls the rules (once)" test "$(chain_count)" = 1
check "... and resets spam again" test "$(client 198.19.9.2 198.18.0.1 "$SPAM")" = reset

echo "== without SOCK_DESTROY: a crafted RST resets the local side"
kill "$DPID"; wait "$DPID"; DPID=
start_daemon --string @example.com --no-sock-destroy
: > "$T/server.log"
check "a spam session gets a RST (from the kernel's REJECT)" test "$(client 198.19.9.20 198.18.0.1 "$SPAM")" = reset
session_ended 198.19.9.20 ConnectionResetError "reset by the crafted RST (ECONNRESET)"
check "... and the ban holds" test "$(client 198.19.9.20 198.18.0.1 'EHLO x' 1.5)" = timeout

echo "== stream mode (--icase): the byte stream across segments"
kill "$DPID"; wait "$DPID"; DPID=
start_daemon --string @example.com --mode stream --icase
check "stream: a RCPT split across two segments is reset" \
    test "$(client 198.19.9.12 198.18.0.1 'EHLO bot\nRCPT TO:<victim@exam<SPLIT>ple.com>')" = reset
check "stream: @EXAMPLE.COM is reset" test "$(client 198.19.9.13 198.18.0.1 'EHLO bot\nRCPT TO:<VICTIM@EXAMPLE.COM>')" = reset
check "stream: a split sent out of order (raw client) is reset" \
    test "$(raw 198.19.250.6 'EHLO bot\nRCPT TO:<victim@exam<SPLIT>ple.com>' 3 --reorder)" = reset
check "stream: legit mail passes" test "$(client 198.18.0.2 198.18.0.1 "$LEGIT")" = ok
check "stream: pure ACKs are not queued (u32 rule installed)" bash -c "ip netns exec '$S' iptables -S STRINGBAN | grep -q -- '-m u32'"

echo "== --iptables: the kernel recipe's own script, run by stringban"
kill "$DPID"; wait "$DPID"; DPID=
cat > "$T/recipe.sh" <<'RECIPE'
#!/bin/sh
IPTABLES=iptables
$IPTABLES -N blackchain
$IPTABLES -A INPUT -p tcp --dport 25 -m recent --name blacklist --update --seconds 86400 -j DROP
$IPTABLES -A INPUT -p tcp --dport 25 -m string --string "example.com" --algo bm -j blackchain
$IPTABLES -A blackchain -m recent --set --name blacklist -p tcp -j REJECT --reject-with tcp-reset
RECIPE
start_daemon --iptables "$T/recipe.sh" --queues 0:1
check "iptables recipe (2 queues): legit mail passes" test "$(client 198.18.0.2 198.18.0.1 "$LEGIT")" = ok
check "iptables recipe: a spam session gets a RST" test "$(client 198.19.9.50 198.18.0.1 "$SPAM")" = reset
check "iptables recipe: ... and -m recent --update drops its next SYN" test "$(client 198.19.9.50 198.18.0.1 'EHLO x' 1.5)" = timeout
kill -HUP "$DPID"; sleep 0.5
check "iptables recipe: the reload happened" test "$(grep -c 'reloaded the rules' "$T/daemon.log")" = 1
check "iptables recipe: ... and kept the recent tables (still dropped)" test "$(client 198.19.9.50 198.18.0.1 'EHLO x' 1.5)" = timeout

echo "== SIGHUP reload keeps bans"
kill "$DPID"; wait "$DPID"; DPID=
printf '[[rule]]\nstring = "@example.com"\n' > "$T/sb.toml"
start_daemon --config "$T/sb.toml"
check "spam (rule from the file) is reset" test "$(client 198.19.9.3 198.18.0.1 "$SPAM")" = reset
printf '[[rule]]\nstring = "@example.org"\n' > "$T/sb.toml"
kill -HUP "$DPID"; sleep 0.5
check "after reload the new rule convicts" test "$(client 198.19.9.4 198.18.0.1 'EHLO x\nRCPT TO:<v@example.org>')" = reset
check "... the old one no longer does" test "$(client 198.19.9.5 198.18.0.1 "$SPAM")" = ok
check "... and bans made before the reload hold" test "$(client 198.19.9.3 198.18.0.1 'EHLO x' 1.5)" = timeout
check "the reload was logged (the second in this log)" test "$(grep -c "reloaded the rules; bans kept" "$T/daemon.log")" = 2

echo "== SIGTERM"
kill "$DPID"; wait "$DPID"; code=$?; DPID=
check "exit code 0 on SIGTERM" test "$code" = 0
check "rules removed" test "$(chain_count)" = 0
check "pidfile removed" test ! -e "$T/pid"
check "the periodic summary was logged" grep -q "packets .* accept .* reset .*sockets destroyed" "$T/daemon.log"
check "... counting the crafted local RSTs" grep -q "with [1-9][0-9]* crafted local RSTs" "$T/daemon.log"
check "no kernel queue drops" bash -c "! grep -E 'queue_dropped [1-9]' '$T/daemon.log'"

echo "== the nft backend (--firewall nft: one table inet stringban, where the kernel has nft queue)"
if ! command -v nft > /dev/null; then
    no "nft not installed (scripts/test installs nftables)"
elif ins "$BIN" rules install --firewall nft > "$T/nft.out" 2>&1; then
    ins "$BIN" rules remove --firewall nft > /dev/null 2>&1
    start_daemon --firewall nft --string @example.com
    check "nft: the daemon installed table inet stringban" ins nft list table inet stringban
    check "nft: ... and no iptables chain" test "$(chain_count)" = 0
    check "nft: legit mail goes through" test "$(client 198.18.0.2 198.18.0.1 "$LEGIT")" = ok
    check "nft: a spam session gets a RST" test "$(client 198.19.9.40 198.18.0.1 "$SPAM")" = reset
    check "nft: ... and the banned IP's next SYN is dropped" test "$(client 198.19.9.40 198.18.0.1 'EHLO x' 1.5)" = timeout
    kill "$DPID"; wait "$DPID"; DPID=
    check "nft: the table is removed at exit" bash -c "! ip netns exec '$S' nft list table inet stringban > /dev/null 2>&1"
else
    echo "  (this kernel lacks the nft queue statement: $(tr -d '\n' < "$T/nft.out" | cut -c1-120))"
    check "nft: --firewall nft is refused with a clear error" grep -q "kernel lacks the nft queue statement" "$T/nft.out"
    ins "$BIN" run --firewall nft --no-state --no-control --install-rules --string @example.com > "$T/nft.out" 2>&1; code=$?
    check "nft: so is run --firewall nft (status $code)" test "$code" -ne 0
    check "nft: the kernel accepts the table without its queue statement (nft -c)" \
        bash -c "'$BIN' rules print --firewall nft | grep -v 'queue num' | ip netns exec '$S' nft -c -f -"
    check "nft: auto picks iptables here" bash -c "ip netns exec '$S' '$BIN' rules install | grep -q 'with iptables'"
    ins "$BIN" rules remove > /dev/null
fi

echo "== the kernel recipe, same flood, for contrast (-m string + -m recent + REJECT)"
if ins iptables -A INPUT -p tcp --dport 25 -m recent --name sbtest --update --seconds 86400 -j DROP 2>/dev/null &&
   ins iptables -A INPUT -p tcp --dport 25 -m string --string @example.com --algo bm -m recent --name sbtest --set -j REJECT --reject-with tcp-reset; then
    : > "$T/server.log"
    check "kernel recipe: the spam session gets a RST" test "$(client 198.19.9.30 198.18.0.1 "$SPAM")" = reset
    sleep 1.5
    check "kernel recipe: ... but the server's session is left open" bash -c "! grep -q '^198.19.9.30 ' '$T/server.log'"
    ip netns exec "$C" python3 "$HERE/flood.py" spam 198.18.0.1 198.19 257 2000 > /dev/null
    listed=$(ins cat /proc/net/xt_recent/sbtest | wc -l)
    check "kernel recipe: its table remembers only $listed of 2,000 spam IPs" test "$listed" -le 100
    free=$(( 100 - $(inc python3 "$HERE/flood.py" probe 198.18.0.1 198.19 257 100) ))
    check "kernel recipe: the first 100 spam IPs are free to come back ($free of 100 connect)" test "$free" = 100
else
    no "kernel recipe rules could not be added (xt_string/xt_recent missing?)"
fi

echo
echo "live: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
