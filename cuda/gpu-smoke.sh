#!/usr/bin/env bash
# GPU smoke test of mooncake4j-cuda, for a GPU host without Maven (only the NVIDIA driver and a Java 25
# runtime are needed; bench/stage-device.sh builds a small one).
#
#   gpu-smoke.sh JAR_DIR
#
# JAR_DIR must hold exactly these jars (the class path is JAR_DIR/*):
#   mooncake4j-cuda-<version>.jar   (built where nvcc was present, so it contains kernels.fatbin)
#   mooncake4j-core-<version>.jar
#   slf4j-api-2.0.17.jar, slf4j-simple-2.0.17.jar
# On the build machine, after `mvn -pl cuda install`:
#   mkdir -p jars && cp cuda/target/mooncake4j-cuda-*[0-9T].jar core/target/mooncake4j-core-*[0-9T].jar \
#     ~/.m2/repository/org/slf4j/slf4j-api/2.0.17/slf4j-api-2.0.17.jar \
#     ~/.m2/repository/org/slf4j/slf4j-simple/2.0.17/slf4j-simple-2.0.17.jar jars/
#
# Runs, each process under a timeout:
#   1. CudaSmoke on one GPU (the first visible one);
#   2. CudaSmoke on all visible GPUs (adds the peer matrix and cross-GPU writes over NVLink);
#   3. with 2+ GPUs: one CudaSmoke process per GPU in `ipc` mode (legacy IPC and cuMemCreate handles
#      exchanged through files, kernels writing the next GPU's buffer, flags waited on with a deadline).
# Logs go to $OUT (or a temporary folder). Exit status 0 when every run passed.
#
# Environment: JAVA (default /tmp/jre25/bin/java), TIMEOUT_S (per process, default 300).
set -uo pipefail

source "$(dirname "$0")/../bench/gpu-common.sh"
gpu_setup $# "${1:-}" 300 mooncake4j-cuda mooncake4j-core slf4j-api slf4j-simple
classpath="$jars/*"
logs=${OUT:-$(mktemp -d)}/gpu-smoke
mkdir -p "$logs"
echo "java: $java; class path: $classpath; GPUs: $ngpu (${visible[*]:-none}); logs: $logs"
if [[ $ngpu -eq 0 ]]; then
  echo "FAIL no GPU visible (nvidia-smi found none and CUDA_VISIBLE_DEVICES is unset)"
  exit 1
fi

smoke() {
  timeout --kill-after=10 "$limit" "$java" --enable-native-access=ALL-UNNAMED -cp "$classpath" \
    org.mooncake4j.cuda.CudaSmoke "$@"
}

echo "=== 1 GPU (CUDA_VISIBLE_DEVICES=${visible[0]})"
CUDA_VISIBLE_DEVICES=${visible[0]} smoke 2>&1 | tee "$logs/one-gpu.log"
note "one GPU" "${PIPESTATUS[0]}"

echo "=== all $ngpu GPU(s)"
CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${visible[*]}") smoke 2>&1 | tee "$logs/all-gpus.log"
note "all GPUs" "${PIPESTATUS[0]}"

if [[ $ngpu -ge 2 ]]; then
  echo "=== ipc: $ngpu processes, one per GPU"
  exchange=$(mktemp -d)
  pids=()
  for ((r = 0; r < ngpu; r++)); do
    CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${visible[*]}") RANK=$r WORLD_SIZE=$ngpu \
      smoke ipc "$exchange" > "$logs/ipc-rank$r.log" 2>&1 &
    pids+=($!)
  done
  for ((r = 0; r < ngpu; r++)); do
    wait "${pids[$r]}"
    rc=$?
    sed "s/^/[rank $r] /" "$logs/ipc-rank$r.log"
    note "ipc rank $r" "$rc"
  done
  rm -rf "$exchange"
else
  summary+=("ipc: SKIPPED (needs 2+ GPUs)")
fi

gpu_summary
