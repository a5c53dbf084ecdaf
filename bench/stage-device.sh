#!/usr/bin/env bash
# Stages what bench/gpu-host.sh needs into .device/ (ignored by git, carried to the GPU host):
# a Java 25 runtime, the CLI's jars plus the cuda jar, and PyTorch's baseline script.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ -f .device/jre25.tar.xz ] || bash ../shared/tools/make-device-jre.sh
rm -rf .device/lib && mkdir -p .device/lib
cp cli/target/mooncake4j-cli-*.jar cli/target/lib/*.jar .device/lib/
cp cuda/target/mooncake4j-cuda-*[0-9T].jar .device/lib/
cp ../shared/bench/torch_baselines.py .device/
du -sh .device
