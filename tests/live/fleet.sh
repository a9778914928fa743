#!/usr/bin/env bash
# Live test of the fleet: bans shared through Redis (root, network namespaces only).
# Usage: fleet.sh STRINGBAN_BINARY
# Namespace R holds a bridge, a real redis-server (AOF on) on 198.18.9.1 and the SMTP clients
# (198.19.1.0-9 on its loopback); hosts A, B, C, D (198.18.9.11-14) each run the line-based SMTP
# stand-in on port 25 and a daemon sharing the list "spam" through Redis. Checks: a session reset
# on A is blocked on B and C, `del` on B lifts it everywhere, expiry is the same everywhere; Redis
# killed -9 and restarted while two hosts ban: nothing lost, every host converges; C stopped and
# restarted applies exactly what it missed, without the snapshot, and after more changes than the
# log keeps loads the snapshot; peers' bans reach B's offload ipset; bans made while Redis is away by
# a host that then crashes are published when both are back; a new host D loads it; an ACL
# user over TLS works, a wrong password or an unknown CA is a clear error at start.
set -uo pipefail
BIN=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
need ip iptables ipset python3 redis-server redis-cli openssl

. "$HERE/fleet_lib.sh"
# A short log (Redis trims it to about 1,000 entries), so that a host away long enough must load
# the snapshot instead.
printf '\n[share]\nmaxlen = 1000\n' >> "$T/sb.toml"

SPAM='EHLO bot\nMAIL FROM:<x@bot.test>\nRCPT TO:<victim@example.com>'
LEGIT='EHLO mx\nMAIL FROM:<a@partner.test>\nRCPT TO:<b@hosted.test>\nQUIT'

redis_start "$T/redis" --port 6379; redis_wait || exit 1
start_host A || exit 1
start_host B "${SHARE[@]}" --offload || exit 1
start_host C || exit 1

echo "== a spam session reset on A is blocked on B and C; del on B lifts it everywhere"
check "198.19.1.1 spam to A is reset" test "$(client 198.19.1.1 "${ADDR[A]}" "$SPAM")" = reset
for h in B C; do
    check "$h has the ban within 2 s, made by node A" until_eq 2 A field "$h" 198.19.1.1 node
    check "198.19.1.1's mail to $h times out (dropped)" test "$(client 198.19.1.1 "${ADDR[$h]}" "$LEGIT" 1)" = timeout
done
check "A lists its own ban as node A, rule \"@example.com\"" test "$(field A 198.19.1.1 node) $(field A 198.19.1.1 rule_name)" = "A @example.com"
inset() { ip netns exec "$(ns B)" ipset list stringban-v4 2>/dev/null | grep -c "^$1 timeout"; }
check "B's offload set holds the peer's ban" until_eq 3 1 inset 198.19.1.1
check "del --fleet on B" test "$(ctl B del 198.19.1.1 --fleet --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["removed"])')" = 1
for h in A C; do check "... lifted on $h within 2 s (A's own ban too)" until_eq 2 "" field "$h" 198.19.1.1 key; done
check "... and out of B's offload set" until_eq 3 0 inset 198.19.1.1
check "198.19.1.1's mail to A flows again" test "$(client 198.19.1.1 "${ADDR[A]}" "$LEGIT")" = ok
ctl A add 198.19.1.9 > /dev/null
check "a ban by hand on A reaches C" until_eq 3 A field C 198.19.1.9 node
ctl B del 198.19.1.9 > /dev/null
check "a plain del on B lifts the fleet's copy on C" until_eq 3 "" field C 198.19.1.9 key
check "... but a peer's lift never takes A's own ban" bash -c "sleep 1; [ \"\$(ip netns exec $(ns A) '$BIN' list --json --control-socket '$T/A/ctl.sock' | grep -c '\"198.19.1.9\"')\" = 1 ]"
ctl A del 198.19.1.9 --fleet > /dev/null
ctl C add 198.19.1.2 --ttl 4s > /dev/null
exp=$(field C 198.19.1.2 expires_at)
for h in A B; do check "a 4 s ban by hand on C ends at the same second on $h ($exp)" until_eq 2 "$exp" field "$h" 198.19.1.2 expires_at; done
# Past the expiry second itself (the add may have come up to a second before it).
for _ in $(seq 80); do [ "$(date +%s)" -gt "$exp" ] && break; sleep 0.1; done; sleep 0.2
for h in A B C; do check "... and has ended on $h" test -z "$(field "$h" 198.19.1.2 key)"; done

echo "== Redis killed -9 and restarted while A and B ban (2 x 3,000 at 2,000/s): nothing lost"
python3 "$HERE/bulk_add.py" "$T/A/ctl.sock" 3000 2000 0 > "$T/bulkA.out" 2>&1 & BA=$!
python3 "$HERE/bulk_add.py" "$T/B/ctl.sock" 3000 2000 100000 > "$T/bulkB.out" 2>&1 & BB=$!
sleep 0.5
kill -9 "$RPID"; wait "$RPID" 2>/dev/null
sleep 1
redis_start "$T/redis" --port 6379; redis_wait || exit 1
wait "$BA"; wait "$BB"
check "both hosts made their bans while Redis was away ($(cat "$T/bulkA.out") / $(cat "$T/bulkB.out"))" grep -q "added 3000" "$T/bulkA.out" "$T/bulkB.out"
for h in A B C; do check "$h converges to 6,000 bans" until_eq 20 6000 count "$h"; done
check "A shows the fault (errors $(share A errors), reconnects $(share A reconnects)) and is connected again" \
    bash -c "[ $(share A errors) -ge 1 ] && [ $(share A reconnects) -ge 1 ] && [ $(share A connected) = True ]"
check "nothing waits, nothing dropped on A (pending $(share A pending), dropped $(share A dropped))" \
    test "$(share A pending) $(share A dropped)" = "0 0"

echo "== A crashes (kill -9) with bans made while Redis was away: published when both are back"
kill -9 "$RPID"; wait "$RPID" 2>/dev/null
python3 "$HERE/bulk_add.py" "$T/A/ctl.sock" 50 1000 20000 1h v4 > /dev/null || no "bulk add on A"
check "A keeps filtering and holds them (6,050), 50 waiting for Redis ($(share A pending))" \
    bash -c "[ \"\$(ip netns exec $(ns A) '$BIN' count --json --control-socket '$T/A/ctl.sock' | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"count\"])')\" = 6050 ] && [ $(share A pending) = 50 ]"
sleep 0.3
kill -9 "${DPID[A]}"; wait "${DPID[A]}" 2>/dev/null; DPID[A]=
start_host A || exit 1
check "A restarts while Redis is down, with its 6,050 bans" until_eq 3 6050 count A
redis_start "$T/redis" --port 6379; redis_wait || exit 1
for h in B C; do check "$h gets A's 50 once Redis is back (6,050)" until_eq 15 6050 count "$h"; done

echo "== C stopped while A bans 500 more, then restarted: it applies exactly what it missed"
stop_host C
before=$(share B applied)
python3 "$HERE/bulk_add.py" "$T/A/ctl.sock" 500 1000 200000 > /dev/null || no "bulk add on A"
check "B has them (6,550)" until_eq 10 6550 count B
start_host C || exit 1
check "C converges to 6,550 bans" until_eq 10 6550 count C
check "C applied exactly 500 from its cursor ($(share C applied)), no snapshot loaded ($(share C bootstraps))" \
    test "$(share C applied) $(share C bootstraps)" = "500 0"
check "C's log says it caught up ($(grep -o 'caught up.*' "$T/C/daemon.log" | tail -1))" until_eq 3 1 bash -c "grep -c 'entries=500.*caught up\|caught up.*entries=500' '$T/C/daemon.log'"
check "B applied the 500 too ($((  $(share B applied) - before )))" test $(( $(share B applied) - before )) -eq 500

echo "== C away while A makes more changes than the log keeps: it loads the snapshot"
stop_host C
python3 "$HERE/bulk_add.py" "$T/A/ctl.sock" 2000 2000 300000 > /dev/null || no "bulk add on A"
start_host C || exit 1
check "C converges to 8,550 bans" until_eq 15 8550 count C
check "C loaded the snapshot, saying why ($(grep -o 'loaded the fleet.*' "$T/C/daemon.log" | tail -1 | cut -c1-120))" \
    bash -c "grep -q 'the cursor points before what the log still holds' '$T/C/daemon.log'"

echo "== a brand-new host D loads the snapshot"
start_host D || exit 1
check "D converges to 8,550 bans" until_eq 10 8550 count D
check "D loaded one snapshot of 8,550 bans ($(share D bootstraps), $(share D bootstrap_bans))" test "$(share D bootstraps) $(share D bootstrap_bans)" = "1 8550"
nodes=$(ctl D list --json | python3 -c 'import json,sys; print(" ".join(sorted(set(str(json.loads(l).get("node")) for l in sys.stdin))))')
check "D names the banning nodes ($nodes)" test "$nodes" = "A B"
ctl D status > "$T/status.txt"
check "status shows the fleet ($(grep fleet: "$T/status.txt"))" grep -q "^fleet: test as node D through redis://198.18.9.1:6379 — connected; lag 0 entries" "$T/status.txt"
ctl D list > "$T/list.txt"
check "list shows the rule and node of each ban" bash -c "grep -q '^SOURCE .*RULE@NODE' '$T/list.txt' && grep -q '(by hand)@A' '$T/list.txt'"
ip netns exec "$(ns D)" python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9325/metrics").read().decode())' > "$T/metrics.txt"
check "metrics show the share state" bash -c "grep -q '^stringban_share_connected 1' '$T/metrics.txt' && grep -q '^stringban_share_lag_entries 0' '$T/metrics.txt' && grep -q '^stringban_share_applied_total' '$T/metrics.txt'"

echo "== flush --fleet on A empties the list everywhere"
ctl A flush --fleet > /dev/null
for h in B C D; do check "$h empty" until_eq 5 0 count "$h"; done

echo "== a peer gets a peer's share (an unsigned fleet: entries written straight into Redis)"
tlog='stringban:{test}:log'; t=$(($(date +%s) * 1000000))
ip netns exec "$R" redis-cli -h 198.18.9.1 XADD "$tlog" '*' m "b spam 198.19.1.40/32 4102444800 Z $t year-2100" > /dev/null
ip netns exec "$R" redis-cli -h 198.18.9.1 XADD "$tlog" '*' m "b spam 198.19.1.41/32 4102444800 $(printf 'Z\n2099-01-01T00:00:00Z forged') $t r" > /dev/null
ip netns exec "$R" redis-cli -h 198.18.9.1 XADD "$tlog" '*' m "b spam 198.19.1.42/32 4102444800 Z $t $(printf 'r\033]0;x\a')" > /dev/null
python3 -c "import sys; sys.stdout.write('b spam 198.19.1.43/32 4102444800 Z $t ' + 'N' * 65536)" | ip netns exec "$R" redis-cli -h 198.18.9.1 -x XADD "$tlog" '*' m > /dev/null
check "a peer's ban until 2100 lasts at most the list's TTL (1 h) on B" until_eq 3 Z field B 198.19.1.40 node
exp=$(field B 198.19.1.40 expires_at); now=$(date +%s)
check "... it expires at $exp, within an hour of now ($now)" test "$exp" -le $((now + 3601))
bad=$(ctl B stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["share"]["refused"]["bad_name"])')
check "a node name with a newline, a rule name with an escape, a 64 KiB rule name: refused ($bad bad_name)" test "$bad" -ge 3
for a in 41 42 43; do check "... 198.19.1.$a is not banned on B" test -z "$(field B 198.19.1.$a key)"; done
check "... and no log line was forged" bash -c "! grep -q '^2099-01-01T00:00:00Z' '$T/B/daemon.log'"
ctl A flush --fleet > /dev/null
for h in A B C D; do stop_host "$h"; done

echo "== a signed fleet: what Redis alone writes is refused, a key rotation loses nothing"
K1="k1-$(head -c 24 /dev/urandom | base64)"; K2="k2-$(head -c 24 /dev/urandom | base64)"
key() { local f="$T/key-$1"; shift; printf '%s\n' "$@" > "$f"; chmod 600 "$f"; echo "$f"; }
SIGNED=(--share "$URL" --share-fleet signed)
LOG='stringban:{signed}:log'
rcli() { ip netns exec "$R" redis-cli -h 198.18.9.1 "$@"; }
refused() { ctl "$1" stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["share"]["refused"][sys.argv[1]])' "$2"; }
start_host A "${SIGNED[@]}" --share-key "$(key A1 "$K1")" || exit 1
start_host B "${SIGNED[@]}" --share-key "$(key B1 "$K1")" || exit 1
ctl A add 198.19.1.20 > /dev/null
check "a ban on A, signed, is applied on B" until_eq 3 A field B 198.19.1.20 node
far=4102444800; t=$(($(date +%s) * 1000000))
rcli XADD "$LOG" '*' m "b spam 198.19.1.21/32 $far A $t forged" > /dev/null
rcli XADD "$LOG" '*' m "b spam 198.19.1.22/32 $far A $t forged" s "$((t / 1000)):$(printf '%064d' 0)" > /dev/null
rcli XADD "$LOG" '*' m "u spam 198.19.1.20/32 - A $t " > /dev/null
rcli XADD "$LOG" '*' m "f spam - - A $t " > /dev/null
rcli XADD "$LOG" '*' m "b spam 198.19.1.23/32 $far $(printf 'A\n2099-01-01T00:00:00Z forged\033]0;x\a') $t r" > /dev/null
python3 -c "import sys; sys.stdout.write('b spam 198.19.1.24/32 $far ' + 'N' * 10_000_000 + ' $t r')" | rcli -x XADD "$LOG" '*' m > /dev/null
sleep 1.5
check "unsigned entries written straight into Redis are refused on B ($(refused B unsigned))" test "$(refused B unsigned)" -ge 5
check "... and one with a forged signature ($(refused B bad_signature))" test "$(refused B bad_signature)" -ge 1
for a in 21 22 23 24; do check "... 198.19.1.$a is not banned on B" test -z "$(field B 198.19.1.$a key)"; done
check "... the forged lift and flush lifted nothing: A's ban holds on B" test "$(field B 198.19.1.20 node)" = A
check "the fleet's files in the state directory are private (cursor $(stat -c %a "$T/B/state/share.cursor"), origins $(stat -c %a "$T/B/state/share.origins"))" \
    bash -c "[ \"\$(stat -c %a '$T/B/state/share.cursor') \$(stat -c %a '$T/B/state/share.origins')\" = '600 600' ]"
check "... the forged node name forged no log line" bash -c "! grep -q '^2099-01-01T00:00:00Z' '$T/B/daemon.log'"
check "... B's memory stayed small after a 10 MB entry ($(awk '/VmHWM/ {print $2}' /proc/${DPID[B]}/status) kB)" test "$(awk '/VmHWM/ {print $2}' /proc/${DPID[B]}/status)" -lt 120000
# A valid entry copied into the log again: a replay, refused (B lifted the ban meanwhile).
entry=$(rcli --raw XRANGE "$LOG" - + | python3 -c '
import sys
v = sys.stdin.read().split("\n")
for i in range(len(v) - 3):
    if v[i] == "m" and v[i + 1].startswith("b spam 198.19.1.20/32 ") and v[i + 2] == "s":
        print(v[i + 1]); print(v[i + 3]); break
')
m=$(sed -n 1p <<< "$entry"); sig=$(sed -n 2p <<< "$entry")
check "A's entry in Redis carries its signature" test -n "$sig"
oldval=$(rcli HGET 'stringban:{signed}:ban:spam' 198.19.1.20/32)
ctl B del 198.19.1.20 --fleet > /dev/null
check "del --fleet on B lifts it on A" until_eq 3 "" field A 198.19.1.20 key
before=$(refused A stale)
rcli XADD "$LOG" '*' m "$m" s "$sig" > /dev/null
sleep 1
check "the same signed ban written into the log again is refused as a replay on A ($(refused A stale) stale)" test "$(refused A stale)" -gt "$before"
check "... and 198.19.1.20 stays lifted on A" test -z "$(field A 198.19.1.20 key)"
# Freshly restarted, A has read nothing yet: it learns the signatures just before its cursor.
stop_host A; start_host A "${SIGNED[@]}" --share-key "$(key A1 "$K1")" || exit 1
before=$(refused A stale)
rcli XADD "$LOG" '*' m "$m" s "$sig" > /dev/null
sleep 1
check "... refused as a replay by A freshly restarted too ($(refused A stale) stale)" test "$(refused A stale)" -gt "$before"
check "... 198.19.1.20 still lifted on A" test -z "$(field A 198.19.1.20 key)"
# The lifted ban's own signed snapshot value, written back by someone without the key.
rcli HSET 'stringban:{signed}:ban:spam' 198.19.1.20/32 "$oldval" > /dev/null
ctl A add 198.19.1.29 > /dev/null
rcli HSET 'stringban:{signed}:ban:spam' 198.19.1.25/32 "$far A forged" > /dev/null
start_host D "${SIGNED[@]}" --share-key "$(key D1 "$K1")" || exit 1
check "a new host D loads the signed snapshot (A's ban)" until_eq 5 A field D 198.19.1.29 node
check "... but not a value written straight into the snapshot ($(refused D unsigned) refused)" test "$(refused D unsigned)" -ge 1
check "... 198.19.1.25 is not banned on D" test -z "$(field D 198.19.1.25 key)"
check "... nor the lifted ban whose old signed value was written back (the log has its lift; $(refused D stale) stale)" \
    bash -c "[ -n '$oldval' ] && [ -z '$(field D 198.19.1.20 key)' ] && [ '$(refused D stale)' -ge 1 ]"
check "status says the fleet is signed" bash -c "ip netns exec $(ns D) '$BIN' status --control-socket '$T/D/ctl.sock' | grep -q 'signed (key '"
stop_host D
# Rotation: A accepts K2 too; B signs with K2 and accepts K1; then A signs with K2 alone.
stop_host A; start_host A "${SIGNED[@]}" --share-key "$(key A2 "$K1" "$K2")" || exit 1
stop_host B; start_host B "${SIGNED[@]}" --share-key "$(key B2 "$K2" "$K1")" || exit 1
ctl A add 198.19.1.26 > /dev/null; ctl B add 198.19.1.27 > /dev/null
check "mid-rotation: A's ban (old key) reaches B" until_eq 3 A field B 198.19.1.26 node
check "... B's ban (new key) reaches A" until_eq 3 B field A 198.19.1.27 node
stop_host A; start_host A "${SIGNED[@]}" --share-key "$(key A3 "$K2")" || exit 1
ctl A add 198.19.1.28 > /dev/null
check "after it: A's ban (new key only) reaches B" until_eq 3 A field B 198.19.1.28 node
check "... and nothing was refused on the way (B: $(refused B bad_signature) forged)" test "$(refused B bad_signature)" = 0
start_host C "${SIGNED[@]}" || exit 1
check "a host with no key says plainly that it checks nothing" bash -c "grep -q 'no fleet key' '$T/C/daemon.log' && ip netns exec $(ns C) '$BIN' status --control-socket '$T/C/ctl.sock' | grep -q UNSIGNED"
ip netns exec "$(ns C)" "$BIN" run --config "$T/sb.toml" --no-control --state-dir "$T/C/state3" \
    --share "$URL" --share-key "$T/nokey" > "$T/nokey.out" 2>&1
code=$?
check "a missing key file: exit 2, naming it" bash -c "[ $code -eq 2 ] && grep -q nokey '$T/nokey.out'"
printf '%s\n' "$K1" > "$T/openkey"; chmod 644 "$T/openkey"
ip netns exec "$(ns C)" "$BIN" run --config "$T/sb.toml" --no-control --state-dir "$T/C/state3" \
    --share "$URL" --share-key "$T/openkey" > "$T/openkey.out" 2>&1
code=$?
check "a key file others may read: exit 2, saying chmod 600" bash -c "[ $code -eq 2 ] && grep -q 'chmod 600' '$T/openkey.out'"
for h in A B C; do stop_host "$h"; done

echo "== node ids: two hosts with one host name share bans; a deliberate duplicate id is reported"
IDS=(--share "$URL" --share-fleet ids)
NONODE=1 STATE=state-ids start_host A "${IDS[@]}" || exit 1
NONODE=1 STATE=state-ids start_host B "${IDS[@]}" || exit 1
idA=$(cat "$T/A/state-ids/share.node"); idB=$(cat "$T/B/state-ids/share.node")
labelA=${idA%-*}; labelB=${idB%-*}
check "with no --share-node, each node made its own id from the host name ($idA, $idB)" \
    bash -c "[ '$idA' != '$idB' ] && [ '$labelA' = '$labelB' ] && [ '$labelA' = '$(hostname | tr -c 'A-Za-z0-9._:\n-' - | cut -c1-55)' ]"
check "... kept in the state directory, private ($(stat -c %a "$T/A/state-ids/share.node"))" test "$(stat -c %a "$T/A/state-ids/share.node")" = 600
ctl A add 198.19.1.50 > /dev/null
check "a ban on A reaches B although both hosts have one host name" until_eq 3 "$idA" field B 198.19.1.50 node
stop_host A; NONODE=1 STATE=state-ids start_host A "${IDS[@]}" || exit 1
check "A keeps its id across a restart" test "$(share A node)" = "$idA"
stop_host A; stop_host B
NONODE=1 start_host A "${IDS[@]}" --share-node twin || exit 1
NONODE=1 start_host B "${IDS[@]}" --share-node twin || exit 1
ctl A add 198.19.1.51 > /dev/null
check "two daemons given one id: B reports the other at once" until_eq 3 1 bash -c "grep -c 'another node publishes under this node.s id' '$T/B/daemon.log'"
check "... and counts it ($(share B duplicate_node))" test "$(share B duplicate_node)" -ge 1
check "... and status shows it" bash -c "ip netns exec $(ns B) '$BIN' status --control-socket '$T/B/ctl.sock' | grep -q 'DUPLICATE NODE ID'"
check "a fleet that is only a few entries behind logs no catch-up lines ($(grep -c 'caught up' "$T/B/daemon.log"))" \
    bash -c "! grep -q 'caught up.*entries=[1-9] \|caught up.*entries=[1-9][0-9] ' '$T/B/daemon.log'"
stop_host A; stop_host B

echo "== an ACL user over TLS; a wrong password and an unknown CA are errors at start"
mkdir -p "$T/tls" && cd "$T/tls" || exit 1
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=stringban-test-ca -keyout ca.key -out ca.pem 2> openssl.out &&
openssl req -newkey rsa:2048 -nodes -subj /CN=redis -keyout redis.key -out redis.csr 2>> openssl.out &&
printf 'subjectAltName=IP:198.18.9.1\n' > san.ext &&
openssl x509 -req -in redis.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out redis.pem 2>> openssl.out || { cat openssl.out; exit 1; }
cd - > /dev/null || exit 1
R1PID=$RPID
redis_start "$T/redis2" --port 0 --tls-port 6380 --tls-cert-file "$T/tls/redis.pem" --tls-key-file "$T/tls/redis.key" \
    --tls-ca-cert-file "$T/tls/ca.pem" --tls-auth-clients no --user default off --user sb on '>s3cret' '~stringban:*' '+@all'
R2PID=$RPID; RPID=$R1PID
redis_wait --tls --cacert "$T/tls/ca.pem" -p 6380 --user sb --pass s3cret || exit 1
TLS=(--share "rediss://sb:s3cret@198.18.9.1:6380" --share-ca "$T/tls/ca.pem" --share-fleet tls)
start_host A "${TLS[@]}" || exit 1
start_host B "${TLS[@]}" || exit 1
ctl A add 198.19.1.3 > /dev/null
check "a ban on A reaches B over TLS as ACL user sb" until_eq 3 A field B 198.19.1.3 node || tail -n 5 "$T/A/daemon.log" "$T/B/daemon.log"
check "B's status shows the URL without the password" bash -c "ip netns exec $(ns B) '$BIN' status --json --control-socket '$T/B/ctl.sock' | grep -q 'rediss://sb:\*\*\*@198.18.9.1:6380' && ! ip netns exec $(ns B) '$BIN' status --json --control-socket '$T/B/ctl.sock' | grep -q s3cret"
t0=$(date +%s%N)
ip netns exec "$(ns C)" "$BIN" run --config "$T/sb.toml" --install-rules --state-dir "$T/C/state2" --no-control \
    --share "rediss://sb:wrong@198.18.9.1:6380" --share-ca "$T/tls/ca.pem" > "$T/wrong.out" 2>&1
code=$?; ms=$(( ($(date +%s%N) - t0) / 1000000 ))
check "a wrong password: exit 2 in $ms ms, naming the cause ($(tail -1 "$T/wrong.out" | cut -c1-160))" \
    bash -c "[ $code -eq 2 ] && [ $ms -lt 10000 ] && grep -qiE 'WRONGPASS|invalid username-password|auth' '$T/wrong.out'"
check "... and it left no rules behind" bash -c "! ip netns exec $(ns C) iptables-save | grep -q STRINGBAN"
ip netns exec "$(ns C)" "$BIN" run --config "$T/sb.toml" --install-rules --state-dir "$T/C/state2" --no-control \
    --share "rediss://sb:s3cret@198.18.9.1:6380" > "$T/noca.out" 2>&1
code=$?
check "an unknown CA: exit 2, naming the certificate ($(tail -1 "$T/noca.out" | cut -c1-160))" \
    bash -c "[ $code -eq 2 ] && grep -qi 'certificate' '$T/noca.out'"
ip netns exec "$(ns C)" "$BIN" run --config "$T/sb.toml" --state-dir "$T/C/state2" --no-control \
    --share "rediss://sb:s3cret@198.18.9.1:6380" --share-ca "$T/nope.pem" > "$T/ca-missing.out" 2>&1
code=$?
check "a missing CA file: exit 2, naming it" bash -c "[ $code -eq 2 ] && grep -q 'nope.pem' '$T/ca-missing.out'"

echo "fleet: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
