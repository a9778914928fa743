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
need ip iptables python3 exim4 swaks ss openssl

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
# Exim's ACL runs `stringban add ADDR --reset` as Debian-exim: a copy it can reach.
cp "$BIN" "$T/stringban" && chmod 755 "$T/stringban"
export SB_ACL_BIN=$T/stringban
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
check "smtp mode: plaintext sessions are read to their end, never bypassed (summary: $(grep -o 'bypassed [0-9]*' "$T/daemon.log" | tail -1))" \
    bash -c "grep -o 'bypassed [0-9]*' '$T/daemon.log' | tail -1 | awk '{ exit !(\$2 == 0) }'"

# count_queued IP: rules just before the chain's NFQUEUE rule count the packets of IP's sessions
# that reach the queue, both ways (a rule without a target only counts).
count_queued() {
    local n
    n=$(ins iptables -S STRINGBAN | grep -c '^-A')
    ins iptables -I STRINGBAN "$n" -s "$1" -p tcp
    ins iptables -I STRINGBAN "$n" -d "$1" -p tcp
}
queued_of() {
    ins iptables -L STRINGBAN -v -x -n | awk -v ip="$1" '($3 == "6" || $3 == "tcp") && $4 == "--" && ($7 == ip || $8 == ip) { n += $1 } END { print n + 0 }'
}
# exim_saw_rcpt IP: Exim's ACL refused a RCPT from IP (the packet path did not stop it first).
exim_saw_rcpt() { grep -F "[$1]" "$T/log/mainlog" | grep -q "rejected RCPT"; }

echo "== A3: packets queued for one legit plaintext session with a 10 KB body (smtp mode)"
python3 -c 'print("\r\n".join("Line %d of the quarterly report: figures and notes as discussed." % i for i in range(160)))' > "$T/body10k"
# Count every packet of the session both ways, as the kernel's string match would see them.
ins iptables -t raw -A PREROUTING -p tcp --dport 25 -s 198.19.2.12
ins iptables -t raw -A OUTPUT -p tcp --sport 25 -d 198.19.2.12
start_smtp || exit 1
count_queued 198.19.2.12
swaks_from 198.19.2.12 b@hosted.test Q1 "$T/body10k" > "$T/swaks.out"
sleep 0.5
queued=$(queued_of 198.19.2.12)
kill "$DPID"; wait "$DPID" 2>/dev/null; DPID=
check "the 10 KB mail is delivered" delivered Q1
total=$(( $(ins iptables -t raw -L PREROUTING -v -x -n | awk '/198.19.2.12/ { print $1 }') + $(ins iptables -t raw -L OUTPUT -v -x -n | awk '/198.19.2.12/ { print $1 }') ))
echo "  plaintext: the session had $total packets in all; $queued reached the queue (a plaintext session is read to its end)"
check "pure ACKs stay off the queue: fewer queued than sent ($queued of $total)" test "$queued" -lt "$total" -a "$queued" -gt 0
ins iptables -t raw -F PREROUTING; ins iptables -t raw -F OUTPUT

export -f exim_saw_rcpt; export T
echo "== A4: every transaction, one end of data, STARTTLS (smtp mode, control socket for Exim's ACL)"
rm -f "$T/pid"
ip netns exec "$S" "$BIN" run --string @example.com --mode smtp --install-rules --pidfile "$T/pid" --state-dir "$T/state4" \
    --control-socket "$T/ctl.sock" --control-group Debian-exim --summary-interval 1s 2> "$T/daemon4.log" & DPID=$!
for _ in $(seq 100); do [ -S "$T/ctl.sock" ] && break; sleep 0.05; done
ctl() { ip netns exec "$S" "$BIN" "$@" --control-socket "$T/ctl.sock"; }
check "the control socket is mode 0660, group Debian-exim" test "$(stat -c '%a %G' "$T/ctl.sock")" = "660 Debian-exim"
banned() { ctl list | grep "^$1 " > /dev/null; }
ENV1='EHLO raw.test\nMAIL FROM:<a@partner.test>\nRCPT TO:<b@hosted.test>\nDATA<UNTIL:354>'
out=$(raw 198.19.251.1 "$ENV1\nSubject: first<CRLF><CRLF>A clean first message.<CRLF>.<UNTIL:250>\nMAIL FROM:<x@bot.test>\nRCPT TO:<victim@example.com>" 5)
check "a spam RCPT in the second transaction, after a clean message, is reset ($out)" test "$out" = reset
check "... by stringban, before Exim saw it" bash -c "! exim_saw_rcpt 198.19.251.1"
check "... and its sender banned" banned 198.19.251.1
check "... while the first, clean message was delivered" delivered first
out=$(raw 198.19.251.2 "$ENV1\nSubject: piped<CRLF><CRLF>Clean text.<CRLF>.<CRLF>MAIL FROM:<x@bot.test><CRLF>RCPT TO:<victim@example.com><CRLF>DATA" 5)
check "a spam envelope pipelined in the segment that ends a clean message is reset ($out)" test "$out" = reset
check "... by stringban, before Exim saw it" bash -c "! exim_saw_rcpt 198.19.251.2"
check "... and its sender banned" banned 198.19.251.2
out=$(raw 198.19.251.3 "$ENV1\nSubject: next<CRLF><CRLF>Clean text.<CRLF>.<NOWAIT>\nMAIL FROM:<x@bot.test><CRLF>RCPT TO:<victim@example.com><UNTIL:550>" 5)
check "a spam envelope sent right after the end of data, before any reply, is reset ($out)" test "$out" = reset
check "... by stringban, before Exim saw it" bash -c "! exim_saw_rcpt 198.19.251.3"
check "... and its sender banned" banned 198.19.251.3

# SMTP smuggling: a bare-LF dot line, then envelope-looking lines, in a clean body.
resyncs() { ctl stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["smtp"]["resyncs"])'; }
before=$(resyncs)
out=$(raw 198.19.251.4 "$ENV1\nSubject: smuggle<CRLF><CRLF>Hello<LF>.<LF>MAIL FROM:<a@partner.test><CRLF>RCPT TO:<victim@example.com><CRLF>DATA<CRLF>bye<CRLF>.<UNTIL:250>\nQUIT" 5 --verbose 2> "$T/smuggle.txt")
sleep 0.5
if grep -q '^RCPT TO:<victim@example.com>' "$T/mail/inbox"; then
    echo "  Exim took the bare-LF dot line as body text (the RCPT line is in the delivered mail)"
    check "bare-LF dot line: the mail is delivered with it as body text ($out)" delivered smuggle
    check "... and its sender is not banned" bash -c "! ip netns exec '$S' '$BIN' list --control-socket '$T/ctl.sock' | grep '^198.19.251.4 ' > /dev/null"
    check "... and stringban read it as body too (no resync: $before -> $(resyncs))" test "$(resyncs)" = "$before"
else
    echo "  Exim ended DATA at the bare-LF dot line; its replies: $(tr '\r\n' '  ' < "$T/smuggle.txt")"
    check "bare-LF dot line: stringban followed Exim's replies back to commands (resyncs $before -> $(resyncs))" test "$(resyncs)" -gt "$before"
fi
bare=$(ctl stats | python3 -c 'import json,sys; s=json.load(sys.stdin)["smtp"]; print(s["bare_newlines"], " ".join(x["source"] for x in s["bare_newline_sources"]))')
check "bare newlines are counted, per source ($bare)" bash -c "[[ '$bare' == *198.19.251.4* ]] && [ '${bare%% *}' -ge 2 ]"

# STARTTLS: delivered, and only its cleartext start is queued.
count_queued 198.19.2.21
out=$(inc swaks --tls --to b@hosted.test --from a@partner.test --server 198.18.0.1 --local-interface 198.19.2.21 \
    --timeout 10 --header "Subject: T1" --body "$T/body10k" 2>&1)
sleep 0.5
tlsq=$(queued_of 198.19.2.21)
check "a STARTTLS session with a 10 KB body is delivered" delivered T1
echo "  STARTTLS: $tlsq packets of the session reached the queue"
check "... with at most 14 of its packets queued ($tlsq)" test "$tlsq" -le 14 -a "$tlsq" -gt 0
# A spam RCPT inside STARTTLS: Exim's ACL bans and resets through the control socket.
read -r outcome secs < <(inc python3 "$HERE/exim_session.py" 198.19.2.22 198.18.0.1 "$S" 3 --tls)
check "a spam RCPT inside STARTTLS is reset through Exim's ACL ($outcome)" test "$outcome" = reset
check "... the Exim process serving it exits within 1 s (${secs} s)" python3 -c "import sys; sys.exit(0 if '$secs' != 'alive' and float('$secs') <= 1.0 else 1)"
check "... by Exim's ACL (Exim saw the RCPT)" exim_saw_rcpt 198.19.2.22
check "... and its sender is banned" banned 198.19.2.22
check "... so its next SYN is dropped" test "$(inc python3 "$HERE/smtp_client.py" 198.19.2.22 198.18.0.1 'EHLO x' 1.5)" = timeout
reqs=$(ctl stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["sessions_reset_on_request"])')
check "stats count the sessions reset on request ($reqs)" test "$reqs" -ge 1
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
