#!/usr/bin/env bash
# GPU collectives of mooncake4j-cuda beside NCCL, on a GPU host without Maven (only the NVIDIA driver, a
# Java 25 runtime, and PyTorch for the NCCL side).
#
#   gpu-collectives.sh JAR_DIR
#
# JAR_DIR holds the jars of the class path (JAR_DIR/*): at least mooncake4j-cuda-<version>.jar (built
# where nvcc was present, so it contains kernels.fatbin), mooncake4j-core-<version>.jar and slf4j-api
# (slf4j-simple optional); bench/stage-device.sh stages them into .device/lib.
#
# For 2 GPUs and for all visible GPUs (when more than 2), one process per GPU:
#   1. CollectiveBench (RANK, WORLD_SIZE, RDV_DIR): correctness of all_reduce float32/bfloat16,
#      all_gather, reduce_scatter float32/bfloat16 and all_to_all against host references, the
#      all_reduce float32 timing table (8 B .. 512 MiB), the all_gather / reduce_scatter / all_to_all
#      timing table (per-rank pieces of the same sizes), and the fault check (the last rank exits
#      without calling all_reduce; the others must time out naming it);
#   2. torchrun --nproc-per-node=N torch_baselines.py: NCCL's all_reduce over the same sizes;
#   3. torchrun --nproc-per-node=N torch_nccl_more.py: NCCL's all_gather_into_tensor,
#      reduce_scatter_tensor and all_to_all_single, timed the same way, over the same sizes;
# then, per N and collective, a table of ratios: mooncake busbw / NCCL busbw and NCCL time / mooncake time.
# Results go to $OUT (default: a new temporary folder): ws<N>/rank<r>.log, ws<N>/mooncake_allreduce_ws<N>.json,
# ws<N>/mooncake_more_ws<N>.json, torch_baselines_ws<N>.json/.log, torch_nccl_more_ws<N>.json/.log,
# ratios_ws<N>.txt (all_reduce) and ratios_more_ws<N>.txt (the others). Exit status 0 when every process passed.
#
# Environment: JAVA (default /tmp/jre25/bin/java), TIMEOUT_S (per process, default 900),
# TORCH_BASELINES (default .device/torch_baselines.py), TORCH_NCCL_MORE (default
# bench/torch_nccl_more.py of this repository), WORLDS (default "2 <all GPUs>"), and any
# CollectiveBench setting (PHASES, HEAP_MIB, SHARING, CHECK_MAX_MIB, TIME_MAX_MIB, ONESHOT_MAX_BYTES, ...), and
# MOONCAKE_TWOSHOT=auto|pull|push|pipe (the two-shot variant of the automatic choice; all are checked and timed anyway).
# NVLink multicast stays off everywhere (NCCL_NVLS_ENABLE=0 and friends); mooncake4j never creates
# multicast objects.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/gpu-common.sh"
gpu_setup $# "${1:-}" 900 mooncake4j-cuda mooncake4j-core slf4j-api
gpu_out
baselines=$(torch_script "${TORCH_BASELINES:-.device/torch_baselines.py}")
more=$(torch_script "${TORCH_NCCL_MORE:-bench/torch_nccl_more.py}")
echo "java: $java; class path: $jars/*; GPUs: $ngpu (${visible[*]:-none}); torch baselines: $baselines, $more; results: $out"
if [[ $ngpu -lt 2 ]]; then
  echo "FAIL the GPU collectives need 2+ GPUs, this host shows $ngpu"
  exit 1
fi

for n in $worlds; do
  if [[ $n -gt $ngpu ]]; then summary+=("mooncake ws$n: SKIPPED (only $ngpu GPUs)"); continue; fi
  logs="$out/ws$n"
  echo "=== mooncake CollectiveBench: $n processes on GPUs $(gpus_of "$n")"
  collective_bench "$n" "$logs" "mooncake ws$n"
  for ((r = 0; r < n; r++)); do sed "s/^/[ws$n rank $r] /" "$logs/rank$r.log"; done
done

run_torch NCCL "$baselines"
run_torch "NCCL more" "$more"

for n in $worlds; do
  ours="$out/ws$n/mooncake_allreduce_ws$n.json"
  nccl="$out/torch_baselines_ws$n.json"
  if [[ ! -f "$ours" || ! -f "$nccl" ]]; then
    echo "=== ratios ws$n: missing $( [[ -f "$ours" ]] || echo "$ours " )$( [[ -f "$nccl" ]] || echo "$nccl" )"
    continue
  fi
  echo "=== all_reduce float32, $n GPUs: mooncake vs NCCL (NCCL_NVLS_ENABLE=0)"
  python3 - "$ours" "$nccl" <<'EOF' | tee "$out/ratios_ws$n.txt"
import json, sys
ours = {int(b): (t, bw) for b, t, bw in json.load(open(sys.argv[1]))["mooncake_allreduce"]}
nccl = {int(b): (t, bw) for b, t, bw in json.load(open(sys.argv[2]))["nccl_allreduce"]}
mine = json.load(open(sys.argv[1]))
detail = {int(d["bytes"]): d for d in mine["mooncake_allreduce_detail"]}
pull = {int(b): bw for b, t, bw in mine.get("mooncake_allreduce_pull", [])}
push = {int(b): bw for b, t, bw in mine.get("mooncake_allreduce_push", [])}
pipe = {int(b): bw for b, t, bw in mine.get("mooncake_allreduce_pipe", [])}
print("# mooncake: CUDA events around 20 iterations, max over ranks; NCCL: torch_baselines.py (host timer, torch.distributed)")
print("# busbw ratio: the automatic choice (algo) / NCCL; pull, push, pipe ratio: each two-shot variant / NCCL")
print("# %12s %9s %13s %11s %15s %13s %12s %11s %11s %11s %7s %14s" % ("size(B)", "algo", "mooncake(us)", "NCCL(us)",
      "mooncake busbw", "NCCL busbw", "busbw ratio", "pull ratio", "push ratio", "pipe ratio", "faster", "NCCL/ours time"))
nan = float("nan")
def r(x, y):
    return x / y if x and y else nan
for b in sorted(set(ours) & set(nccl)):
    (t, bw), (tn, bwn) = ours[b], nccl[b]
    d = detail.get(b, {})
    print("  %12d %9s %13.2f %11.2f %15.2f %13.2f %12.3f %11.3f %11.3f %11.3f %7s %14.3f" % (b, d.get("algorithm", "?"),
          t if t is not None else nan, tn, bw if bw is not None else nan, bwn, r(bw, bwn), r(pull.get(b), bwn),
          r(push.get(b), bwn), r(pipe.get(b), bwn), d.get("faster_two_shot", "?"), r(tn, t)))
EOF
done

for n in $worlds; do
  ours="$out/ws$n/mooncake_more_ws$n.json"
  nccl="$out/torch_nccl_more_ws$n.json"
  if [[ ! -f "$ours" || ! -f "$nccl" ]]; then
    echo "=== ratios (all_gather, reduce_scatter, all_to_all) ws$n: missing $( [[ -f "$ours" ]] || echo "$ours " )$( [[ -f "$nccl" ]] || echo "$nccl" )"
    continue
  fi
  echo "=== all_gather, reduce_scatter, all_to_all (float32), $n GPUs: mooncake vs NCCL (NCCL_NVLS_ENABLE=0)"
  python3 - "$ours" "$nccl" <<'EOF' | tee "$out/ratios_more_ws$n.txt"
import json, sys
mine, theirs = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
nan = float("nan")
def r(x, y):
    return x / y if x and y else nan
print("# mooncake: CUDA events around 20 iterations, max over ranks; NCCL: torch_nccl_more.py (host timer, torch.distributed)")
print("# size: bytes of the full tensor (world x per-rank piece); busbw = algbw * (n-1)/n")
for c, name in (("allgather", "all_gather"), ("reducescatter", "reduce_scatter (sum)"), ("alltoall", "all_to_all")):
    ours = {int(b): (t, bw) for b, t, bw in mine.get("mooncake_" + c, [])}
    nccl = {int(b): (t, bw) for b, t, bw in theirs.get("nccl_" + c, [])}
    print("## %s" % name)
    print("# %12s %13s %11s %15s %13s %12s %14s" % ("size(B)", "mooncake(us)", "NCCL(us)", "mooncake busbw", "NCCL busbw",
          "busbw ratio", "NCCL/ours time"))
    for b in sorted(set(ours) & set(nccl)):
        (t, bw), (tn, bwn) = ours[b], nccl[b]
        print("  %12d %13.2f %11.2f %15.2f %13.2f %12.3f %14.3f" % (b, t if t is not None else nan, tn,
              bw if bw is not None else nan, bwn, r(bw, bwn), r(tn, t)))
EOF
done

gpu_summary "results in $out"
