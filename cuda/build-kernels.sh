#!/usr/bin/env bash
# Compiles the CUDA kernels of mooncake4j-cuda (src/main/cuda/*.cu) into one fatbin resource, loaded at
# run time with cuModuleLoadData. Maven runs this in the generate-resources phase.
#
#   build-kernels.sh [CLASSES_DIR [WORK_DIR]]
#     CLASSES_DIR  where the resources go (default: target/classes next to this script)
#     WORK_DIR     scratch folder for the generated umbrella source (default: target/cuda)
#
# Writes CLASSES_DIR/org/mooncake4j/cuda/kernels.fatbin and kernels.properties (the architectures built,
# read by CudaModule.coversComputeCapability). Without nvcc it writes nothing, removes stale outputs,
# prints a note and succeeds, so the module still builds on machines without the CUDA toolkit.
# NVCC=/path/to/nvcc picks a compiler explicitly.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src="$here/src/main/cuda"
classes=${1:-"$here/target/classes"}
work=${2:-"$here/target/cuda"}
out="$classes/org/mooncake4j/cuda"
fatbin="$out/kernels.fatbin"
props="$out/kernels.properties"

nvcc=${NVCC:-}
if [[ -z "$nvcc" ]]; then
  for candidate in "$(command -v nvcc || true)" /usr/local/cuda/bin/nvcc /usr/local/bin/nvcc; do
    if [[ -n "$candidate" && -x "$candidate" ]]; then nvcc=$candidate; break; fi
  done
fi
if [[ -z "$nvcc" ]]; then
  rm -f "$fatbin" "$props"
  echo "[mooncake4j-cuda] NOTE: nvcc was not found (PATH, /usr/local/cuda/bin, /usr/local/bin): the CUDA kernels"
  echo "[mooncake4j-cuda]       are NOT built. The module builds, but the 'mooncake' (CUDA) backend will refuse to"
  echo "[mooncake4j-cuda]       start. Install CUDA 12.4+ (or set NVCC=...) and rebuild to include them."
  exit 0
fi

sources=("$src"/*.cu)
if [[ -f "$fatbin" && -f "$props" ]]; then
  stale=0
  for f in "${sources[@]}" "$src"/*.cuh "$0"; do
    [[ "$f" -nt "$fatbin" ]] && stale=1
  done
  if [[ $stale -eq 0 ]]; then
    echo "[mooncake4j-cuda] kernels are up to date: $fatbin"
    exit 0
  fi
fi

# Hopper (sm_90) and Blackwell (sm_100) machine code, plus compute_90 PTX that the driver can JIT for
# newer GPUs. sm_100 needs CUDA 12.8+; an older nvcc builds the rest.
supported=$("$nvcc" --list-gpu-code 2>/dev/null | tr '\n' ' ')
gencode=(-gencode arch=compute_90,code=sm_90)
archs="sm_90"
if [[ " $supported " == *" sm_100 "* ]]; then
  gencode+=(-gencode arch=compute_100,code=sm_100)
  archs="$archs,sm_100"
else
  echo "[mooncake4j-cuda] NOTE: $nvcc cannot build sm_100 (needs CUDA 12.8+); Blackwell GPUs will JIT the compute_90 PTX."
fi
gencode+=(-gencode arch=compute_90,code=compute_90)
archs="$archs,compute_90"

# nvcc compiles one translation unit per fatbin, so the kernel files are included into one umbrella file.
mkdir -p "$work" "$out"
umbrella="$work/kernels_all.cu"
: > "$umbrella"
for f in "${sources[@]}"; do printf '#include "%s"\n' "$f" >> "$umbrella"; done

version=$("$nvcc" --version | sed -n 's/.*release [0-9.]*, V\([0-9.]*\).*/\1/p')
echo "[mooncake4j-cuda] $nvcc (CUDA $version): building $archs"
"$nvcc" -fatbin "${gencode[@]}" -O3 -std=c++17 --threads 0 -I"$src" -o "$fatbin.tmp" "$umbrella"
mv "$fatbin.tmp" "$fatbin"
{
  echo "# Written by build-kernels.sh: what kernels.fatbin contains."
  echo "architectures=$archs"
  echo "nvcc.version=$version"
} > "$props"
echo "[mooncake4j-cuda] wrote $fatbin ($(stat -c %s "$fatbin") bytes)"
