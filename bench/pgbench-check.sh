#!/usr/bin/env bash
# Runs pgbench with -c 1 (results checked each size) for every collective at the given rank counts
# and fails unless every row reports #wrong 0. Usage: bench/pgbench-check.sh [RANKS...] (default 2 4)
set -uo pipefail
set -f  # $MOONCAKE4J may hold a class-path wildcard
root=$(cd "$(dirname "$0")/.." && pwd)
CLI=${MOONCAKE4J:-$root/bin/mooncake4j}
ranks=("$@")
[ ${#ranks[@]} -gt 0 ] || ranks=(2 4)
status=0
for n in "${ranks[@]}"; do
  for coll in all_reduce all_gather broadcast reduce_scatter alltoall sendrecv; do
    out=$($CLI pgbench --collective "$coll" -g "$n" -b 8 -e 16M -f 16 -n 3 -w 1 -c 1 2>&1)
    rows=$(printf '%s\n' "$out" | grep -E '^ +[0-9]+ ')
    wrong=$(printf '%s\n' "$rows" | awk '{s += $NF} END {print s + 0}')
    count=$(printf '%s\n' "$rows" | grep -c .)
    echo "$coll on $n ranks: $count sizes, #wrong total $wrong"
    if [ "$count" -eq 0 ] || [ "$wrong" != 0 ]; then status=1; printf '%s\n' "$out" | tail -20; fi
  done
done
exit $status
