#!/usr/bin/env bash
# Live tests of gateway mode (root, network namespaces only): a real Exim BEHIND a router that
# runs stringban in its FORWARD chain. Usage: gateway.sh STRINGBAN_BINARY
#   client 198.18.1.2/24 (+ 198.19.0.0/16 on lo) --vC/vGc-- gateway 198.18.1.1 | 198.18.0.254
#   --vGs/vS-- server 198.18.0.1/24 (Exim, default route via the gateway)
# Part A: the seed's recipe, unchanged but in FORWARD, through `run --iptables`.
# Part B: `run --chain forward --protect 198.18.0.0/24` with stringban's own smtp mode.
set -uo pipefail
BIN=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
need ip iptables python3 exim4 swaks ss openssl

S=sbGs$$; G=sbGg$$; C=sbGc$$; T=$(mktemp -d); DPID=; EPID=
cleanup() {
    set +e
    [ -n "$DPID" ] && kill "$DPID" 2>/dev/null
    exim_stop
    sleep 0.3
    ip netns del "$S" 2>/dev/null; ip netns del "$G" 2>/dev/null; ip netns del "$C" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
inc() { ip netns exec "$C" "$@"; }
ing() { ip netns exec "$G" "$@"; }

# Three namespaces, two veth pairs; 400 client addresses 198.19.1.0 on, behind the client.
ip netns add "$S" && ip netns add "$G" && ip netns add "$C" || exit 1
ip link add vS netns "$S" type veth peer name vGs netns "$G" || exit 1
ip link add vC netns "$C" type veth peer name vGc netns "$G" || exit 1
ip -n "$S" addr add 198.18.0.1/24 dev vS
ip -n "$G" addr add 198.18.0.254/24 dev vGs
ip -n "$G" addr add 198.18.1.1/24 dev vGc
ip -n "$C" addr add 198.18.1.2/24 dev vC
for ns in "$S" "$G" "$C"; do ip -n "$ns" link set lo up; done
ip -n "$S" link set vS up; ip -n "$G" link set vGs up; ip -n "$G" link set vGc up; ip -n "$C" link set vC up
for i in $(seq 0 399); do echo "addr add 198.19.$(( (256 + i) >> 8 )).$(( (256 + i) & 255 ))/32 dev lo"; done > "$T/addrs"
ip -n "$C" -batch "$T/addrs" || exit 1
ip -n "$S" route add default via 198.18.0.254
ip -n "$C" route add 198.18.0.0/24 via 198.18.1.1
ip -n "$G" route add 198.19.0.0/16 via 198.18.1.2
ing sysctl -qw net.ipv4.ip_forward=1
exim_start "$S" "$T" || exit 1

legit() {   # legit SUBJECT [BODY]: one mail with swaks from the clean IP, through the gateway
    inc swaks --to b@hosted.test --from a@partner.test --server 198.18.0.1 --local-interface 198.18.1.2 \
        --timeout 10 --header "Subject: $1" --body "${2:-Minutes of the planning meeting.}" 2>&1 |
        awk '/^<[-* ]+ [0-9][0-9][0-9]/ { code = $2 } END { print code }'
}
delivered() { sleep 0.5; grep -q "^Subject: $1\$" "$T/mail/inbox" 2>/dev/null; }
children() { pgrep -P "$EPID" | wc -l; }
within_1s() { python3 -c "import sys; sys.exit(0 if '$1' != 'alive' and float('$1') <= 1.0 else 1)"; }
start() {   # start STATE ARGS...: the daemon in the gateway, state dir $T/STATE, control socket $T/ctl.sock
    local state=$1; shift
    rm -f "$T/pid" "$T/ctl.sock"
    ip netns exec "$G" "$BIN" run "$@" --install-rules --pidfile "$T/pid" --state-dir "$T/$state" --control-socket "$T/ctl.sock" \
        --summary-interval 1s 2> "$T/daemon.log" & DPID=$!
    for _ in $(seq 100); do [ -s "$T/pid" ] && [ -S "$T/ctl.sock" ] && return 0; sleep 0.05; done
    echo "daemon did not start:"; cat "$T/daemon.log"; return 1
}
stop() { kill "$DPID"; wait "$DPID" 2>/dev/null; DPID=; }
stat_of() { ing "$BIN" stats --control-socket "$T/ctl.sock" | python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

check "the router forwards: legit mail through it without stringban is delivered ($(legit G0))" delivered G0

echo "== A: the seed's recipe in FORWARD, run by stringban (run --iptables)"
cat > "$T/recipe.sh" <<'RULES'
#!/bin/sh
iptables -N blackchain
iptables -A FORWARD -p tcp --dport 25 -m recent --name blacklist --update --seconds 86400 -j DROP
iptables -A FORWARD -p tcp --dport 25 -m string --string "example.com" --algo bm -j blackchain
iptables -A blackchain -m recent --set --name blacklist -p tcp -j REJECT --reject-with tcp-reset
RULES
start stateA --iptables "$T/recipe.sh" || exit 1
check "the queue rule is in FORWARD (the file has FORWARD rules only), none in INPUT" \
    bash -c "ip netns exec '$G' iptables -S FORWARD | grep -q -- '-A FORWARD -p tcp -j STRINGBAN' && ! ip netns exec '$G' iptables -S INPUT | grep -q STRINGBAN"
check "legit mail through the gateway is delivered ($(legit A1))" delivered A1
read -r outcome secs < <(inc python3 "$HERE/exim_session.py" 198.19.1.1 198.18.0.1 "$S" 3)
echo "  measured: the Exim session process behind the gateway exited ${secs} s after the RCPT"
check "a spam session through the gateway: the client gets a RST ($outcome)" test "$outcome" = reset
check "... and Exim's session process behind the gateway exits within 1 s (${secs} s)" within_1s "$secs"
check "... the source is blocked on return (its next SYN is dropped)" \
    test "$(inc python3 "$HERE/smtp_client.py" 198.19.1.1 198.18.0.1 'EHLO x' 1.5)" = timeout
export FLOOD_CONCURRENCY=8
resets=$(inc python3 "$HERE/flood.py" spam 198.18.0.1 198.19 300 300)
check "300 spam sessions from 300 sources through the gateway are reset ($resets)" test "$resets" = 300
sleep 0.5
check "... and leave no Exim session behind ($(children) children)" test "$(children)" -le 1
blocked=$(inc python3 "$HERE/flood.py" probe 198.18.0.1 198.19 300 300)
check "300 of 300 spam sources still blocked on return ($blocked)" test "$blocked" = 300
check "legit mail after the flood is delivered ($(legit A2))" delivered A2
fwd=$(stat_of '["forwarded_packets"]'); fres=$(stat_of '["forwarded_resets"]'); crafted=$(stat_of '["crafted_local_rsts"]')
check "stats: forwarded packets $fwd, forwarded resets $fres, crafted RSTs to the server $crafted" \
    test "$fwd" -gt 0 -a "$fres" -ge 301 -a "$crafted" -ge 301
counts=$(stat_of '["iptables_rules"]' | python3 -c 'import ast,sys; print(" ".join("line %d: %d" % (r["line"], r["packets"]) for r in ast.literal_eval(sys.stdin.read())))')
check "stats count each imported rule's packets ($counts)" test "$counts" = "line 3: 602 line 4: 301 line 5: 301"
ing "$BIN" status --control-socket "$T/ctl.sock" > "$T/status.txt"
check "status shows the chain queued from FORWARD and the rules' packet counts" \
    bash -c "grep -q 'chain STRINGBAN from FORWARD' '$T/status.txt' && grep -qE '301  line 4 +-A FORWARD -p tcp -m tcp --dport 25 -m string' '$T/status.txt'"
cp "$T/recipe.sh" "$T/recipe.orig"
echo 'iptables -A INPUT -p tcp --dport 22 -j ACCEPT' >> "$T/recipe.sh"
out=$(ing "$BIN" reload --control-socket "$T/ctl.sock" 2>&1); rc=$?
check "a reload whose file adds INPUT rules (not queued) is refused, exit $rc: $out" bash -c "test $rc = 2 && grep -q 'not queued' <<< \"\$1\"" _ "$out"
cp "$T/recipe.orig" "$T/recipe.sh"
check "... and the old rules still run: the banned source stays blocked" \
    test "$(inc python3 "$HERE/smtp_client.py" 198.19.1.1 198.18.0.1 'EHLO x' 1.5)" = timeout
stop
check "the queue rule is removed at exit" bash -c "! ip netns exec '$G' iptables -S FORWARD | grep -q STRINGBAN"

echo "== B: run --chain forward --protect 198.18.0.0/24, smtp mode"
start stateB --string @example.com --mode smtp --chain forward --protect 198.18.0.0/24 || exit 1
check "queued: FORWARD to and from the protected network, port 25" \
    bash -c "ip netns exec '$G' iptables -S FORWARD | grep -q -- '-A FORWARD -d 198.18.0.0/24 -p tcp -m multiport --dports 25 -j STRINGBAN' && ip netns exec '$G' iptables -S FORWARD | grep -q -- '-A FORWARD -s 198.18.0.0/24 -p tcp -m multiport --sports 25 -j STRINGBAN'"
raw() { local src=$1; shift; inc python3 "$HERE/raw_client.py" vC "$src" 198.18.0.1 25 "$@"; }
check "smtp mode across the router: a RCPT split inside the domain across two segments is reset" \
    test "$(raw 198.19.250.1 'EHLO bot\nMAIL FROM:<x@bot.test>\nRCPT TO:<victim@exam<SPLIT>ple.com>')" = reset
check "... and its source banned (next SYN dropped)" test "$(raw 198.19.250.1 'EHLO x' 1.5)" = timeout
read -r outcome secs < <(inc python3 "$HERE/exim_session.py" 198.19.1.200 198.18.0.1 "$S" 3)
echo "  measured (smtp mode): the Exim session process exited ${secs} s after the RCPT"
check "smtp mode: a spam session is reset ($outcome), Exim's session process gone within 1 s (${secs} s)" \
    bash -c "test '$outcome' = reset && python3 -c \"import sys; sys.exit(0 if '$secs' != 'alive' and float('$secs') <= 1.0 else 1)\""
check "smtp mode: legit mail whose body mentions @example.com is delivered ($(legit B1 'Write to billing@example.com.'))" delivered B1
replies=$(ing iptables -L FORWARD -v -x -n | awk '/STRINGBAN/ && /198.18.0.0\/24 +0.0.0.0\/0/ && /sports/ { print $1 }')
check "smtp mode: the server's replies are queued on their way back through FORWARD ($replies packets)" test "${replies:-0}" -gt 10
stop

echo "== refusals"
out=$(ing "$BIN" run --string x --protect 198.18.0.0/24 --no-state --no-control 2>&1); rc=$?
check "--protect without --chain forward: exit 2 ($rc: $out)" test "$rc" = 2
out=$(ing "$BIN" run --iptables "$T/recipe.sh" --chain input --no-state --no-control 2>&1); rc=$?
check "--chain input with a FORWARD-only file: exit 2 ($rc: $out)" test "$rc" = 2

echo
echo "gateway: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
