#!/usr/bin/env bash
# Runs on the GPU host (no Java, no Maven there): the CPU all_reduce comparison against Gloo on its
# many cores, PyTorch's NCCL/Gloo/all_to_all anchors (torch_baselines.py), and the CUDA smoke test.
# Expects, carried in .device/: jre25.tar.xz (shared/tools/make-device-jre.sh), lib/ (the CLI's jars
# plus the cuda jar: bench/stage-device.sh) and torch_baselines.py. Writes everything under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
tar xJf .device/jre25.tar.xz -C /tmp
JAVA=/tmp/jre25/bin/java
export MOONCAKE4J="$JAVA --enable-native-access=ALL-UNNAMED -cp $PWD/.device/lib/* org.mooncake4j.cli.Main"
RANKS=${RANKS:-"2 4"}
{
  echo "host: $(hostname) cores=$(nproc) date=$(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  lscpu | grep -E 'Model name|^CPU\(s\)'
} | tee "$OUT/host.txt"

if [ "${SKIP_SMOKE:-0}" != 1 ] && nvidia-smi >/dev/null 2>&1; then
  echo "=== CUDA smoke ==="
  mkdir -p "$OUT/smoke"
  JAVA=$JAVA OUT="$OUT/smoke" TIMEOUT_S=120 timeout 300 bash cuda/gpu-smoke.sh .device/lib 2>&1 | tail -60 | tee "$OUT/smoke.txt"
fi

echo "=== CPU all_reduce: mooncake-cpu vs gloo ==="
PYTHON=python3 timeout 420 bash bench/cpu-vs-gloo.sh -o "$OUT/cpu" -g "$RANKS" -n 20 -w 5 2>&1 | grep -v '^\[' | tee "$OUT/cpu-vs-gloo.txt"

if [ "${SKIP_TORCH:-0}" != 1 ]; then
  ngpu=$(nvidia-smi -L 2>/dev/null | wc -l)
  for n in $RANKS; do
    [ "$n" -le "$ngpu" ] || continue
    echo "=== torch_baselines.py on $n GPUs ==="
    (cd "$OUT" && timeout 300 torchrun --nproc-per-node="$n" "$OLDPWD/.device/torch_baselines.py" > "torch_baselines_ws$n.log" 2>&1; tail -c 600 "torch_baselines_ws$n.log")
  done
fi
ls -la "$OUT" "$OUT/cpu"
