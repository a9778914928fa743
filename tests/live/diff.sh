#!/usr/bin/env bash
# Differential tests (root, throwaway network namespaces, loopback only): the same segments go
# through (a) the kernel's own iptables rules and (b) `stringban run --iptables` with the same
# script; the per-segment verdicts (accept / drop / reset) must be equal.
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
echo "== $total segments in 6 cases, seed $SEED (rerun: DIFF_SEED=$SEED diff.sh BIN); the kernel's ip_list_tot: $list_tot"

fresh() { ip netns del "$S" 2>/dev/null; ip netns add "$S"; ip -n "$S" link set lo up; }
for case in recipe strings recent selftest random timed; do
    fresh
    if ! ip netns exec "$S" sh "$T/$case.rules.sh" > "$T/k.out" 2>&1; then
        no "$case: the kernel refused the rules: $(cat "$T/k.out")"; continue
    fi
    ip netns exec "$S" python3 "$HERE/diffsend.py" "$T/$case.packets.jsonl" "$T/$case.kernel"
    fresh
    rm -f "$T/pid"
    ip netns exec "$S" "$BIN" run --iptables "$T/$case.rules.sh" --compat-list-tot "$list_tot" --install-rules \
        --no-state --no-control --pidfile "$T/pid" 2> "$T/$case.daemon.log" & DPID=$!
    for _ in $(seq 100); do [ -s "$T/pid" ] && break; sleep 0.05; done
    ip netns exec "$S" python3 "$HERE/diffsend.py" "$T/$case.packets.jsonl" "$T/$case.ours"
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
