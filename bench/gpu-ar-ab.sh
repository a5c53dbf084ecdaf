#!/usr/bin/env bash
# A/B of all_reduce settings through the process group, beside NCCL in the same run: for each round, pgbench
# --backend mooncake --device cuda once per setting (interleaved: A B C, A B C, ...), then NCCL through
# torch_baselines.py; finally the median per setting and size over the rounds and its busbw ratio to NCCL's
# median. Timed as bench/gpu-pg.sh times (--torch-iters, queued calls, in place with the kernel's backup).
#
#   gpu-ar-ab.sh JAR_DIR
#
# VARIANTS: space-separated settings, each "default" or VAR=VALUE[,VAR=VALUE...] for every rank, e.g.
#   "default MOONCAKE_CUDA_AR_PIPE_COPY_LAG=0 MOONCAKE_TWOSHOT=push" (default: "default")
# WORLDS (default: all GPUs), ROUNDS (default 2), SIZES (pgbench's, default "-b 8M -e 512M -f 4"),
# TORCH_BASELINES (default .device/torch_baselines.py). Output and JSON under $OUT.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/gpu-common.sh"
gpu_setup $# "${1:-}" 600 mooncake4j-cli mooncake4j-cuda mooncake4j-pg
gpu_out
worlds=${WORLDS:-$ngpu}
rounds=${ROUNDS:-2}
read -r -a sizes <<< "${SIZES:--b 8M -e 512M -f 4}"
read -r -a variants <<< "${VARIANTS:-default}"
tb=$(torch_script "${TORCH_BASELINES:-.device/torch_baselines.py}")
for n in $worlds; do
  for ((r = 1; r <= rounds; r++)); do
    for ((v = 0; v < ${#variants[@]}; v++)); do
      setting=${variants[$v]}
      env_args=()
      [[ $setting == default ]] || IFS=, read -r -a env_args <<< "$setting"
      json="$out/ab_ws${n}_v${v}_r$r.json"
      env ${env_args[@]+"${env_args[@]}"} MOONCAKE_TIMEOUT_MS=60000 CUDA_VISIBLE_DEVICES="$(gpus_of "$n")" \
        timeout --kill-after=10 "$limit" "$java" --enable-native-access=ALL-UNNAMED -cp "$jars/*" org.mooncake4j.cli.Main \
        pgbench --backend mooncake --device cuda --ranks "$n" "${sizes[@]}" -w 5 --torch-iters -c 0 --json "$json" \
        > "$out/ab_ws${n}_v${v}_r$r.txt" 2>&1
      note "ws$n round $r $setting" $?
    done
    # NCCL on these n GPUs (run_torch, gpu-common.sh); each round's log and JSON kept under the round's name
    worlds=$n run_torch "round $r NCCL" "$tb"
    for f in "$out/$(basename "$tb" .py)_ws$n.log" "$out/torch_baselines_ws$n.json"; do
      [[ -f $f ]] && mv "$f" "${f%.*}_r$r.${f##*.}"
    done
  done
  python3 "$root/bench/gpu_ab_table.py" "$out" "$n" "$rounds" "${variants[@]}" | tee "$out/ab_ws$n.txt"
done
gpu_summary "all_reduce A/B"
