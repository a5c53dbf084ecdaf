#!/usr/bin/env bash
# Stages what bench/gpu-host.sh needs into .device/ (ignored by git, carried to the GPU host):
# a Java 25 runtime, the CLI's jars plus the cuda jar, and PyTorch's baseline script.
set -euo pipefail
mkdir -p "$(dirname "$0")/../.device"
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# a small Java 25 runtime; beyond the usual modules: jdk.net (TCP socket options of the transfer
# engine) and java.desktop (PNG charts of pgbench/plot)
if [ ! -f .device/jre25.tar.xz ]; then
  jdk=${JAVA_HOME:-/usr/lib/jvm/temurin-25-jdk-amd64}
  tmp=$(mktemp -d)
  "$jdk/bin/jlink" --add-modules java.base,jdk.unsupported,java.logging,java.management,jdk.management,java.naming,java.net.http,jdk.crypto.ec,jdk.jfr,jdk.net,java.desktop,java.xml \
    --strip-debug --no-man-pages --no-header-files --compress=zip-9 --output "$tmp/jre25"
  tar cJf .device/jre25.tar.xz -C "$tmp" jre25
  rm -rf "$tmp"
fi
rm -rf .device/lib && mkdir -p .device/lib
cp cli/target/mooncake4j-cli-*.jar cli/target/lib/*.jar .device/lib/
cp cuda/target/mooncake4j-cuda-*[0-9T].jar .device/lib/
cp "${TORCH_BASELINES:-../shared/bench/torch_baselines.py}" .device/  # PyTorch NCCL/Gloo/all_to_all baseline script
du -sh .device
