#!/usr/bin/env bash
# Tuning sweep of the two-shot (push and pipe) all-reduce on a GPU host: CollectiveBench's timing phase
# (kernels back to back, CUDA events, max over ranks) for large messages under several settings of
# MOONCAKE_CUDA_AR_CHUNKS / MOONCAKE_CUDA_AR_MIN_CHUNK_KIB / MOONCAKE_CUDA_AR_MAX_BLOCKS (push) and
# MOONCAKE_CUDA_AR_TILE_KIB, MOONCAKE_CUDA_AR_PIPE_COPY_LAG and MOONCAKE_CUDA_AR_PIPE_SCATTER_WARPS (pipe;
# MAX_BLOCKS applies to it too).
#
#   gpu-ar-sweep.sh JAR_DIR
#
# CONFIGS: space-separated CHUNKS:MIN_CHUNK_KIB:MAX_BLOCKS[:TILE_KIB[:COPY_LAG[:SCATTER_WARPS]]] settings,
# 0 blocks = the default (one per SM), a missing or empty TILE_KIB, COPY_LAG or SCATTER_WARPS = the default;
# default "4:4096:0 8:1024:0 16:1024:0 4:4096:64 8:1024:64 8:1024:256". WORLDS (default "2 <all GPUs>"),
# TIME_MIN_BYTES (default 32 MiB), TIME_MAX_MIB (default 512). Prints, per world and setting, the
# all-reduce table rows (size, chosen algorithm, microseconds, busbw of every variant).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/gpu-common.sh"
gpu_setup $# "${1:-}" 300 mooncake4j-cuda mooncake4j-core
gpu_out
configs=${CONFIGS:-"4:4096:0 8:1024:0 16:1024:0 4:4096:64 8:1024:64 8:1024:256"}
for n in $worlds; do
  [[ $n -le $ngpu ]] || continue
  for cfg in $configs; do
    IFS=: read -r chunks minkib blocks tile lag warps <<< "$cfg"
    logs="$out/ws$n-$chunks-$minkib-$blocks${tile:+-$tile}${lag:+-lag$lag}${warps:+-w$warps}"
    extra=(PHASES=time TIME_MORE=0 TIME_MIN_BYTES="${TIME_MIN_BYTES:-33554432}" TIME_MAX_MIB="${TIME_MAX_MIB:-512}"
           MOONCAKE_CUDA_AR_CHUNKS="$chunks" MOONCAKE_CUDA_AR_MIN_CHUNK_KIB="$minkib")
    [[ $blocks -gt 0 ]] && extra+=(MOONCAKE_CUDA_AR_MAX_BLOCKS="$blocks")
    [[ -n $tile ]] && extra+=(MOONCAKE_CUDA_AR_TILE_KIB="$tile")
    [[ -n $lag ]] && extra+=(MOONCAKE_CUDA_AR_PIPE_COPY_LAG="$lag")
    [[ -n $warps ]] && extra+=(MOONCAKE_CUDA_AR_PIPE_SCATTER_WARPS="$warps")
    collective_bench "$n" "$logs" "ws$n $cfg" "${extra[@]}"
    echo "=== $n GPUs, chunks $chunks, min chunk $minkib KiB, max blocks ${blocks/#0/default}, pipe tile ${tile:-default} KiB, copy lag ${lag:-default}, scatter warps ${warps:-default}"
    grep -E '^ *[0-9]+ ' "$logs/mooncake_allreduce_ws$n.txt" 2>/dev/null || grep -E 'FAIL|Exception' "$logs/rank0.log" | head -5
  done
done
gpu_summary "all-reduce sweep"
