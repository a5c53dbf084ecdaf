#!/usr/bin/env bash
# EpBuffer dispatch + combine on GPUs beside PyTorch's all_to_all_single MoE baseline, on a GPU host
# without Maven (only the NVIDIA driver, a Java 25 runtime, and PyTorch for the baseline).
#
#   ep-vs-alltoall.sh JAR_DIR
#
# JAR_DIR holds the CLI's class path (JAR_DIR/*): mooncake4j-cli, mooncake4j-ep, mooncake4j-cuda (with
# kernels.fatbin) and the rest of cli/target/lib; bench/stage-device.sh stages them into .device/lib.
#
# For 2 GPUs and for all visible GPUs (when more than 2):
#   1. mooncake4j epbench --device cuda -g N --tokens 128 --hidden 7168 --topk 8 --experts 288 --fp8
#      (one process per GPU, tensors on cuda:LOCAL_RANK; per phase the median over iterations of the
#      slowest rank's time, a barrier before each iteration);
#   2. torchrun --nproc-per-node=N torch_baselines.py, whose "ep" entry times the same shape (128 tokens,
#      hidden 7168, top-8 of 288 experts) as bf16 all_to_all_single dispatch + combine: us per dispatch+combine;
# then, per N: ratio timed the same way = baseline us / epbench's back-to-back loop us per iteration (one
# barrier, ITERS dispatch + combine calls, one host timer, like the baseline), and ratio = baseline us /
# (our dispatch median + combine median us) (> 1: EpBuffer is faster).
# Results go to $OUT (default: a new temporary folder): epbench_ws<N>.json/.log, torch_baselines_ws<N>.json/.log,
# ratio_ws<N>.txt. Exit status 0 when every run passed.
#
# Environment: JAVA (default /tmp/jre25/bin/java), TIMEOUT_S (per run, default 900), TORCH_BASELINES
# (default .device/torch_baselines.py), WORLDS (default "2 <all GPUs>"), ITERS (default 200), WARMUP (default 1000: enough
# calls for the JIT to compile the host path).
# NVLink multicast stays off (NCCL_NVLS_ENABLE=0 and friends).
set -uo pipefail

source "$(dirname "$0")/gpu-common.sh"
gpu_setup $# "${1:-}" 900 mooncake4j-cli mooncake4j-ep mooncake4j-cuda mooncake4j-core picocli
gpu_out
baselines=$(torch_script "${TORCH_BASELINES:-.device/torch_baselines.py}")
echo "java: $java; class path: $jars/*; GPUs: $ngpu (${visible[*]:-none}); torch baselines: $baselines; results: $out"
if [[ $ngpu -lt 2 ]]; then
  echo "FAIL the EP benchmark needs 2+ GPUs, this host shows $ngpu"
  exit 1
fi

for n in $worlds; do
  if [[ $n -gt $ngpu ]]; then summary+=("epbench ws$n: SKIPPED (only $ngpu GPUs)"); continue; fi
  gpus=$(gpus_of "$n")
  echo "=== mooncake4j epbench --device cuda: $n processes on GPUs $gpus"
  CUDA_VISIBLE_DEVICES=$gpus timeout --kill-after=10 "$limit" "$java" --enable-native-access=ALL-UNNAMED -XX:+UseSerialGC -cp "$jars/*" \
    org.mooncake4j.cli.Main epbench --device cuda -g "$n" --tokens 128 --hidden 7168 --topk 8 --experts 288 --fp8 \
    --iters "${ITERS:-200}" --warmup "${WARMUP:-1000}" --timeout-s "$limit" --json "$out/epbench_ws$n.json" 2>&1 | tee "$out/epbench_ws$n.log"
  note "epbench ws$n" "${PIPESTATUS[0]}"
done

run_torch all_to_all "$baselines"

for n in $worlds; do
  ours="$out/epbench_ws$n.json"
  base="$out/torch_baselines_ws$n.json"
  if [[ ! -f "$ours" || ! -f "$base" ]]; then
    echo "=== ratio ws$n: missing $( [[ -f "$ours" ]] || echo "$ours " )$( [[ -f "$base" ]] || echo "$base" )"
    continue
  fi
  echo "=== EP dispatch + combine, $n GPUs: EpBuffer (FP8 dispatch) vs all_to_all_single (bf16), 128 tokens, hidden 7168, top-8 of 288 experts"
  python3 - "$ours" "$base" <<'EOF' | tee "$out/ratio_ws$n.txt"
import json, sys
ours = json.load(open(sys.argv[1]))
base = [e for e in json.load(open(sys.argv[2]))["ep"] if (e["tokens"], e["hidden"], e["topk"], e["experts"]) ==
        (ours["tokens"], ours["hidden"], ours["topk"], ours["experts"])]
d, c = ours["dispatch"], ours["combine"]
print("# ours: epbench medians over %d iterations (slowest rank per iteration, barrier between iterations, device synchronize"
      " after each phase); baseline: torch_baselines.py (host timer over 200 iterations)" % ours["iters"])
print("  dispatch  %10.2f us  %8.2f GB/s (%d B per selection)" % (d["median_us"], d["gbps_median"], d["bytes_per_selection"]))
print("  combine   %10.2f us  %8.2f GB/s (%d B per selection)" % (c["median_us"], c["gbps_median"], c["bytes_per_selection"]))
ours_us = d["median_us"] + c["median_us"]
print("  ours dispatch + combine (sum of the phase medians): %.2f us" % ours_us)
loop = ours.get("loop_us_per_iteration")
if loop is not None:
    print("  ours back-to-back loop (timed like the baseline: one barrier, %d iterations, one host timer; slowest rank): %.2f us per iteration"
          % (ours["iters"], loop))
if not base:
    print("  baseline: no ep entry with this shape in %s" % sys.argv[2])
    sys.exit(0)
b = base[0]["us_per_dispatch_combine"]
print("  all_to_all dispatch + combine: %.2f us" % b)
if loop is not None:
    print("  ratio timed the same way = baseline us / our loop us = %.3f" % (b / loop))
print("  ratio = baseline us / (our dispatch + combine medians us) = %.3f" % (b / ours_us))
EOF
done

gpu_summary "results in $out"
