#!/usr/bin/env bash
# Checks on a GPU that the dispatch's hardware FP8 e4m3 conversion (ep.cu's e4m3x2) equals the host
# path's FloatFormats.floatToE4m3 for all 2^32 floats (src/test/cuda/e4m3_check.cu). Needs nvcc and a
# GPU of compute capability 9.0+.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
nvcc=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
bin=$(mktemp -d)/e4m3_check
"$nvcc" -std=c++17 -O3 -arch=sm_90 -I"$here/src/main/cuda" -o "$bin" "$here/src/test/cuda/e4m3_check.cu"
"$bin"
