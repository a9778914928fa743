#!/usr/bin/env bash
# Differential tests (root, throwaway network namespaces): the same segments go through (a) the
# kernel's own iptables rules and (b) `stringban run --iptables` with the same script; the
# per-segment verdicts (accept / drop / reset) must be equal. INPUT cases over loopback (one
# of them an ip6tables-save file, loaded with ip6tables-restore); FORWARD cases (fwd_*) through
# a router namespace: an edge namespace sends from 198.19.0.0/24 out of vE1 to 198.18.12.1,
# the router forwards it back in on vE2.
# Usage: [DIFF_SEED=N] diff.sh STRINGBAN_BINARY   (a new random seed each run unless DIFF_SEED)
set -uo pipefail
BIN=$(realpath "$1")
SEED=${DIFF_SEED:-$(date +%s)}
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
need ip iptables ip6tables python3
list_tot=$(cat /sys/module/xt_recent/parameters/ip_list_tot 2>/dev/null || echo 100)
loopback_ns sbQ || exit 1
total=$(python3 "$HERE/diffgen.py" "$T" "$SEED") || { echo "FAIL: diffgen.py"; exit 1; }
echo "== $total segments in 11 cases, seed $SEED (rerun: DIFF_SEED=$SEED diff.sh BIN); the kernel's ip_list_tot: $list_tot"

E=sbQe$$
trap 'loopback_ns_cleanup; ip netns del "$E" 2>/dev/null' EXIT
fresh() {
    ip netns del "$S" 2>/dev/null; ip netns del "$E" 2>/dev/null
    ip netns add "$S"; ip -n "$S" link set lo up
    case $1 in fwd_*)
        # S routes 198.18.12.0/24 to E's vE2 and 198.19.0.0/16 back to E's vE1.
        ip netns add "$E"; ip -n "$E" link set lo up
        ip link add vE1 netns "$E" type veth peer name vR1 netns "$S"
        ip link add vE2 netns "$E" type veth peer name vR2 netns "$S"
        ip -n "$E" addr add 198.18.10.2/24 dev vE1; ip -n "$S" addr add 198.18.10.1/24 dev vR1
        ip -n "$E" addr add 198.18.11.2/24 dev vE2; ip -n "$S" addr add 198.18.11.1/24 dev vR2
        for l in vE1 vE2; do ip -n "$E" link set "$l" up; done
        for l in vR1 vR2; do ip -n "$S" link set "$l" up; done
        ip -n "$E" route add 198.18.12.0/24 via 198.18.10.1
        ip -n "$S" route add 198.18.12.0/24 via 198.18.11.2
        ip -n "$S" route add 198.19.0.0/16 via 198.18.10.2
        ip netns exec "$S" sysctl -qw net.ipv4.ip_forward=1
        ;;
    esac
}
send() {   # send CASE OUT: the case's segments, from the namespace its filter is seen from
    case $1 in
        fwd_*) ip netns exec "$E" python3 "$HERE/diffsend.py" "$T/$1.packets.jsonl" "$2" --forward vE1 vE2 198.18.12.1 ;;
        *) ip netns exec "$S" python3 "$HERE/diffsend.py" "$T/$1.packets.jsonl" "$2" ;;
    esac
}
for case in recipe strings recent selftest random timed v6save fwd_recipe fwd_strings fwd_recent fwd_random; do
    fresh "$case"
    rules=$T/$case.rules.sh
    if [ "$case" = v6save ]; then
        rules=$T/$case.rules.save6
        ip netns exec "$S" ip6tables-restore < "$rules" > "$T/k.out" 2>&1 || { no "$case: ip6tables-restore refused the file: $(cat "$T/k.out")"; continue; }
    elif ! ip netns exec "$S" sh "$rules" > "$T/k.out" 2>&1; then
        no "$case: the kernel refused the rules: $(cat "$T/k.out")"; continue
    fi
    send "$case" "$T/$case.kernel"
    fresh "$case"
    rm -f "$T/pid"
    ip netns exec "$S" "$BIN" run --iptables "$rules" --compat-list-tot "$list_tot" --install-rules \
        --no-state --no-control --pidfile "$T/pid" 2> "$T/$case.daemon.log" & DPID=$!
    for _ in $(seq 100); do [ -s "$T/pid" ] && break; sleep 0.05; done
    send "$case" "$T/$case.ours"
    kill "$DPID"; wait "$DPID" 2>/dev/null; DPID=
    n=$(wc -l < "$T/$case.kernel")
    differ=$(paste -d' ' "$T/$case.kernel" "$T/$case.ours" | awk '$2 != $4' | wc -l)
    counts=$(awk '{ c[$2]++ } END { for (v in c) printf "%s %d ", v, c[v] }' "$T/$case.kernel")
    check "$case: $n segments, every verdict equal to the kernel's ($counts; $differ differ)" test "$differ" = 0
    if [ "$differ" != 0 ]; then
        paste -d' ' "$T/$case.kernel" "$T/$case.ours" | awk '$2 != $4' | head -5 | while read -r id k _ s; do
            echo "    segment $id: kernel $k, stringban $s: $(sed -n "$((id + 1))p" "$T/$case.packets.jsonl")"
        done
    fi
done

echo
echo "diff: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
