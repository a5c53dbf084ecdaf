#!/usr/bin/env bash
# mooncake4j's CPU all_reduce (backend mooncake-cpu) against PyTorch's Gloo, side by side on this
# machine: for 2 and 4 ranks, `mooncake4j pgbench` and bench/gloo_allreduce.py run the same sizes
# (default -b 8 -e 64M -f 4, float32, SUM) with the same timing method; `mooncake4j plot` draws busbw of
# all four series into cpu-allreduce-vs-gloo.png and prints, per size, the time ratio gloo/ours
# and the busbw ratio ours/gloo (above 1: mooncake-cpu is faster).
#
# Usage: bench/cpu-vs-gloo.sh [-o OUT_DIR] [-n ITERS] [-w WARMUP] [-b MIN_BYTES] [-e MAX_BYTES] [-f FACTOR] [-g "2 4"] [-B auto|none] [-r ROUNDS]
#   OUT_DIR defaults to docs/bench; JSON results and the PNG are written there.
#   -r: rounds (default 1); each round runs both sides, one after the other. With more than one, each
#       round's JSON is kept (-r<k>.json), and the chart and ratio tables use per-size medians
#       (bench/cpu_rounds.py, which also prints the lowest and highest ratio of one round's pair).
#   -B: CPU binding for both sides (default auto: with one but fewer than two CPUs per rank, each rank's thread gets one of its own).
#   Env: PYTHON (a python with torch; default /usr/bin/python3), MOONCAKE4J (the CLI command),
#   PGBENCH_ARGS (more pgbench flags, e.g. "-R 0" for ordinary instead of registered buffers).
set -euo pipefail
set -f  # $CLI may hold a class-path wildcard that the shell must not expand

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$ROOT/docs/bench"
ITERS=20
WARMUP=5
MIN_BYTES=8
MAX_BYTES=64M
FACTOR=4
RANKS="2 4"
BIND=auto
ROUNDS=1
PYTHON=${PYTHON:-/usr/bin/python3}
# the CLI: bin/mooncake4j here; on a host without Maven, e.g. "java -cp 'jars/*' org.mooncake4j.cli.Main"
CLI=${MOONCAKE4J:-$ROOT/bin/mooncake4j}

while getopts "o:n:w:b:e:f:g:B:r:h" opt; do
  case "$opt" in
    o) OUT=$OPTARG ;;
    n) ITERS=$OPTARG ;;
    w) WARMUP=$OPTARG ;;
    b) MIN_BYTES=$OPTARG ;;
    e) MAX_BYTES=$OPTARG ;;
    f) FACTOR=$OPTARG ;;
    g) RANKS=$OPTARG ;;
    B) BIND=$OPTARG ;;
    r) ROUNDS=$OPTARG ;;
    h) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "usage: $0 [-o OUT_DIR] [-n ITERS] [-w WARMUP] [-b MIN_BYTES] [-e MAX_BYTES] [-f FACTOR] [-g \"2 4\"] [-B auto|none] [-r ROUNDS]" >&2; exit 2 ;;
  esac
done

if ! "$PYTHON" -c 'import torch.distributed' 2>/dev/null; then
  echo "cpu-vs-gloo: $PYTHON cannot import torch; install Debian's PyTorch with: apt-get install -y python3-torch" >&2
  exit 1
fi
mkdir -p "$OUT"
cd "$ROOT"

# CPU time a hypervisor gave to others while a side ran (the steal column of /proc/stat): on a shared
# VM it explains a slow row of either side, so each side's share is printed after it.
cpu_ticks() { awk '/^cpu /{t=0; for (i=2; i<=NF; i++) t+=$i; print $9, t}' /proc/stat 2>/dev/null || echo "0 0"; }
steal_report() { # $1 $2: steal and total ticks before
  read -r s1 t1 < <(cpu_ticks)
  if [ "$((t1 - $2))" -gt 0 ]; then
    awk -v s="$((s1 - $1))" -v t="$((t1 - $2))" 'BEGIN { printf "# cpu steal during this run: %.1f%% of the CPU time\n", 100 * s / t }'
  fi
}

SIZES=(-b "$MIN_BYTES" -e "$MAX_BYTES" -f "$FACTOR" -n "$ITERS" -w "$WARMUP" --cpu-bind "$BIND")
SERIES=()
for n in $RANKS; do
  for ((k = 1; k <= ROUNDS; k++)); do
    suffix=$([ "$ROUNDS" -gt 1 ] && echo "-r$k" || true)
    round=$([ "$ROUNDS" -gt 1 ] && echo " (round $k of $ROUNDS)" || true)
    echo "=== all_reduce float32 on $n ranks: mooncake-cpu$round ==="
    read -r s0 t0 < <(cpu_ticks)
    $CLI pgbench --collective all_reduce --backend mooncake-cpu --device cpu -d float32 -o sum -c 1 -g "$n" "${SIZES[@]}" ${PGBENCH_ARGS:-} \
      --json "$OUT/mooncake-cpu-allreduce-g$n$suffix.json"
    steal_report "$s0" "$t0"
    echo "=== all_reduce float32 on $n ranks: gloo$round ==="
    read -r s0 t0 < <(cpu_ticks)
    "$PYTHON" bench/gloo_allreduce.py -g "$n" -c 1 "${SIZES[@]}" --json "$OUT/gloo-allreduce-g$n$suffix.json"
    steal_report "$s0" "$t0"
  done
  if [ "$ROUNDS" -gt 1 ]; then
    echo "=== $n ranks: medians over $ROUNDS rounds ==="
    "$PYTHON" bench/cpu_rounds.py "$OUT" "$n" "$ROUNDS"
  fi
  SERIES+=(--series "mooncake-cpu $n ranks=$OUT/mooncake-cpu-allreduce-g$n.json" --series "gloo $n ranks=$OUT/gloo-allreduce-g$n.json")
done

echo "=== chart ==="
# the chart's own ratio table compares the first series with all others; the per-rank-count tables below are the ones to read
$CLI plot --out "$OUT/cpu-allreduce-vs-gloo.png" --metric busbw \
  --title "all_reduce float32 on $(nproc) cores: mooncake-cpu vs gloo (busbw)" "${SERIES[@]}" > /dev/null \
  && echo "chart: $OUT/cpu-allreduce-vs-gloo.png" \
  || echo "chart: not drawn (no fonts for Java here?); draw it elsewhere from the JSON files with mooncake4j plot"

for n in $RANKS; do
  echo
  echo "=== $n ranks: time ratio gloo/mooncake-cpu and busbw ratio mooncake-cpu/gloo per size$([ "$ROUNDS" -gt 1 ] && echo " (medians over $ROUNDS rounds)" || true) ==="
  $CLI plot --series "mooncake-cpu=$OUT/mooncake-cpu-allreduce-g$n.json" --series "gloo=$OUT/gloo-allreduce-g$n.json"
done
