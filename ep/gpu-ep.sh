#!/usr/bin/env bash
# EpBuffer's CUDA path on a GPU host without Maven (only the NVIDIA driver and a Java 25 runtime).
#
#   gpu-ep.sh JAR_DIR
#
# JAR_DIR holds the jars of the class path (JAR_DIR/*): mooncake4j-ep, -pg, -cuda (built where nvcc was
# present, so it contains kernels.fatbin), -core, -transfer and slf4j-api (slf4j-simple optional).
#
# For 2 GPUs and for all visible GPUs (when more than 2), one JVM per GPU (RANK, WORLD_SIZE, LOCAL_RANK,
# MASTER_ADDR, MASTER_PORT), runs org.mooncake4j.ep.gpu.EpGpuCheck in three modes:
#   check   the grid fp8 x zero-copy x async x hook, all ranks active and the last rank inactive
#   fail    the last rank exits before dispatch; the others must mark it 0 within timeoutUs = 1 s
#   failrows  the same, but the last rank fails mid-dispatch (its counts and rows sent, their flags not)
#   timing  FP8 dispatch + BF16 combine, 128 tokens/rank, hidden 7168, top-8, 288 experts (JSON line)
# Logs go to $OUT (default: a new temporary folder): ws<N>/<mode>.rank<r>.log. Prints every PASS/FAIL
# line, the timing JSON lines and a summary; exit status 0 only when every process passed.
#
# A process still running at TIMEOUT_S gets SIGQUIT first (the JVM prints every thread's stack into its log),
# then SIGKILL 10 s later.
# Environment: JAVA (default /tmp/jre25/bin/java), JAVA_OPTS (extra JVM flags, e.g. -Dmooncake4j.ep.profile=true
# for per-kernel times and times to points inside each kernel in timing mode, or -Dmooncake4j.ep.profile=pdl
# for the points with the kernels queued as in production, and each phase's kernel span: its send's
# first block to its receive's end), OVERSUBSCRIBE=1 (more ranks than GPUs: rank r on GPU r mod N), TIMEOUT_S (per process, default 600), WORLDS
# (default "2 <all GPUs>"), MODES (default "check fail failrows timing"), ITERS (timing iterations, default 200), WARMUP
# (untimed iterations first, default 2000),
# MASTER_ADDR (default 127.0.0.1), PORT_BASE (default 29600).
set -uo pipefail

source "$(dirname "$0")/../bench/gpu-common.sh"
gpu_setup $# "${1:-}" 600 mooncake4j-ep mooncake4j-pg mooncake4j-cuda mooncake4j-core mooncake4j-transfer slf4j-api
gpu_out
echo "java: $java; class path: $jars/*; GPUs: $ngpu (${visible[*]:-none}); results: $out"
if [[ $ngpu -lt 2 ]]; then
  echo "FAIL EpBuffer's CUDA path needs 2+ GPUs, this host shows $ngpu"
  exit 1
fi
modes=${MODES:-check fail failrows timing}
port=${PORT_BASE:-29600}

for n in $worlds; do
  if [[ $n -gt $ngpu && -z "${OVERSUBSCRIBE:-}" ]]; then summary+=("ws$n: SKIPPED (only $ngpu GPUs; OVERSUBSCRIBE=1 shares them)"); continue; fi
  gpus=$(gpus_of "$n")
  logs="$out/ws$n"
  mkdir -p "$logs"
  for mode in $modes; do
    port=$((port + 1))
    echo "=== EpGpuCheck $mode: $n processes on GPUs $gpus (port $port)"
    pids=()
    for ((r = 0; r < n; r++)); do
      CUDA_VISIBLE_DEVICES=$gpus RANK=$r WORLD_SIZE=$n LOCAL_RANK=$r MASTER_ADDR=${MASTER_ADDR:-127.0.0.1} MASTER_PORT=$port \
        ITERS=${ITERS:-200} WARMUP=${WARMUP:-2000} timeout --signal=QUIT --kill-after=10 "$limit" "$java" ${JAVA_OPTS:-} --enable-native-access=ALL-UNNAMED -cp "$jars/*" \
        org.mooncake4j.ep.gpu.EpGpuCheck "$mode" > "$logs/$mode.rank$r.log" 2>&1 &
      pids+=($!)
    done
    for ((r = 0; r < n; r++)); do
      wait "${pids[$r]}"
      note "ws$n $mode rank $r" "$?"
    done
    for ((r = 0; r < n; r++)); do
      grep -E '^(PASS|FAIL|NOTE|ALL PASSED|SOME FAILED|\{)' "$logs/$mode.rank$r.log" | sed "s/^/[ws$n $mode rank $r] /"
      if ! grep -q '^ALL PASSED' "$logs/$mode.rank$r.log"; then
        echo "[ws$n $mode rank $r] --- log tail:"
        tail -30 "$logs/$mode.rank$r.log" | sed "s/^/[ws$n $mode rank $r] /"
      fi
    done
  done
done

gpu_summary "results in $out"
