#!/usr/bin/env bash
# The process group's CUDA backend ('mooncake') on a GPU host without Maven: correctness, failures and
# speed beside NCCL. Needs a Java 25 runtime ($JAVA, default /tmp/jre25/bin/java), the CLI's jars in
# JAR_DIR (bench/stage-device.sh puts them in .device/lib, built where nvcc was present so the cuda
# jar holds the kernels), and for the bench part PyTorch's torchrun.
#
#   gpu-pg.sh check JAR_DIR   for N in $WORLDS (default "2 <all GPUs>"), one process per GPU (ranks
#                             beyond the GPU count share GPUs, rank % GPUs; N = 1 runs grid only):
#                             GpuCheckWorker grid (every collective x dtype x op x size on device
#                             tensors, checked; 1 GiB all_reduce; async), kill (the last rank exits
#                             abruptly as the others enter an all_reduce) and hang (it sleeps past the
#                             timeout and must be fenced), stop (it is stopped with SIGSTOP mid
#                             all_reduce loop, continued later, and must be fenced), killsync (it
#                             completes an all_reduce's data phase, skips the kernel's final sync step
#                             and exits: the survivors commit the result over all ranks), killqueued (it
#                             exits with asynchronous all_reduces still queued: the survivors' queued
#                             operations switch from all ranks to the survivors at one operation); MODES picks some
#   gpu-pg.sh bench JAR_DIR   pgbench --backend mooncake --device cuda (all_reduce 8 B..1 GiB,
#                             all_gather, reduce_scatter, alltoall 1 MiB..1 GiB) and, in the same run,
#                             NCCL through torch_baselines.py and torch_nccl_more.py, then ratio tables;
#                             MORE_COLLECTIVES="" times all_reduce only
#
# Output under $OUT (default a new temporary folder). Exit status 0 when every check passed.
# NVLink multicast stays off (NCCL_NVLS_ENABLE=0); mooncake4j never creates multicast objects.
set -uo pipefail
if [[ $# -ne 2 || ! -d "$2" || ( "$1" != check && "$1" != bench ) ]]; then
  echo "usage: $0 check|bench JAR_DIR" >&2
  exit 2
fi
mode=$1
jars=$(cd "$2" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
java=${JAVA:-/tmp/jre25/bin/java}
[[ -x "$java" ]] || { echo "no Java 25 runtime at $java (set JAVA=...)" >&2; exit 2; }
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
ngpu=$(nvidia-smi -L 2>/dev/null | wc -l)
worlds=${WORLDS:-"2 $ngpu"}
[[ "$ngpu" -le 2 ]] && worlds=${WORLDS:-2}
mc() { "$java" --enable-native-access=ALL-UNNAMED -cp "$jars/*" org.mooncake4j.cli.Main "$@"; }
status=0

if [[ $mode == check ]]; then
  for n in $worlds; do
    for m in ${MODES:-grid kill killsync killqueued hang stop}; do
      if [[ $n -lt 2 && $m != grid ]]; then echo "=== $m on $n GPU: skipped (a rank must fail and others go on: needs 2 ranks)"; continue; fi
      log="$out/check_${m}_ws$n.log"
      extra=""; [[ $m == grid ]] && extra="--big"
      t=${MOONCAKE_TIMEOUT_MS:-5000}; [[ $m == grid ]] && t=60000
      echo "=== $m on $n GPUs ==="
      MOONCAKE_TIMEOUT_MS=$t timeout "${TIMEOUT_S:-300}" \
        "$java" --enable-native-access=ALL-UNNAMED -cp "$jars/*" org.mooncake4j.cli.Main run --nproc-per-node "$n" --timeout-s "${TIMEOUT_S:-300}" \
        org.mooncake4j.cli.GpuCheckWorker $m $extra > "$log" 2>&1
      rc=$?
      grep -E "FAIL|SUMMARY|exits abruptly|committed|skipped its final|queued|switch|stops responding|finished over|fenced|within the bound|dropped ranks|stopped|agree|activeRanks|grid finished|Exception" "$log" | head -40
      echo "passes: $(grep -c 'PASS ' "$log")  failures: $(grep -c 'FAIL ' "$log")  exit: $rc"
      [[ $rc -eq 0 ]] && ! grep -q 'FAIL ' "$log" || status=1
    done
  done
  exit $status
fi

tb=${TORCH_BASELINES:-$root/.device/torch_baselines.py}
more=${TORCH_NCCL_MORE:-$root/bench/torch_nccl_more.py}
for n in $worlds; do
  echo "=== pgbench --backend mooncake on $n GPUs ==="
  # every row times as many calls as PyTorch's scripts time NCCL's at that size (--torch-iters: 200 / 50 / 10)
  MOONCAKE_TIMEOUT_MS=60000 mc pgbench --backend mooncake --device cuda --ranks "$n" -b 8 -e 512K -f 4 -w 200 --torch-iters -c 0 \
      --json "$out/mooncake_all_reduce_small_ws$n.json" 2>&1 | grep -v '^\[' | tee "$out/pgbench_all_reduce_small_ws$n.txt" | tail -10
  MOONCAKE_TIMEOUT_MS=60000 mc pgbench --backend mooncake --device cuda --ranks "$n" -b 2M -e 1G -f 4 -w 5 --torch-iters -c 0 \
      --json "$out/mooncake_all_reduce_ws$n.json" 2>&1 | grep -v '^\[' | tee "$out/pgbench_all_reduce_ws$n.txt" | tail -10
  # the full-tensor sizes of torch_nccl_more.py: 4^k x 8 B per rank x N
  lo=1M; hi=1G; [[ $((n % 4)) -eq 0 ]] && { lo=2M; hi=2G; }
  for c in ${MORE_COLLECTIVES-all_gather reduce_scatter alltoall}; do
    MOONCAKE_TIMEOUT_MS=60000 mc pgbench --backend mooncake --device cuda --ranks "$n" --collective $c -b $lo -e $hi -f 4 -w 5 --torch-iters -c 0 \
        --json "$out/mooncake_${c}_ws$n.json" 2>&1 | grep -v '^\[' | tee "$out/pgbench_${c}_ws$n.txt" | tail -8
  done
  echo "=== NCCL (torch) on $n GPUs ==="
  (cd "$out" && OUT="$out" timeout 400 torchrun --nproc-per-node="$n" "$tb" > "torch_baselines_ws$n.log" 2>&1) || status=1
  if [[ -f "$more" && -n "${MORE_COLLECTIVES-x}" ]]; then
    (cd "$out" && OUT="$out" timeout 400 torchrun --nproc-per-node="$n" "$more" > "torch_nccl_more_ws$n.log" 2>&1) || status=1
  fi
  python3 "$root/bench/gpu_pg_ratios.py" "$out" "$n" | tee "$out/ratios_ws$n.txt"
done
exit $status
