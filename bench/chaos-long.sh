#!/usr/bin/env bash
# Long chaos runs (docs/RELIABILITY.md): many ChaosTest trials in several side-by-side streams, from a
# frozen copy of the built classes, then one merged summary.
#
#   bench/chaos-long.sh stage DIR
#       copies pg's classes, test classes and every test-scope jar into DIR (needs a built tree:
#       `mvn -o -q -B install -DskipTests`); DIR can then be carried to another host with a JDK 25.
#   bench/chaos-long.sh run DIR [-j STREAMS] [-k NETCUT_STREAMS] [-c CORES_PER_STREAM] [-m MINUTES] [-s SEED] [-o OUT]
#       starts STREAMS test JVMs (default 1), the first NETCUT_STREAMS of them (default a third)
#       running network-cut trials and the rest kill -9 / SIGSTOP trials, stream k with master seed
#       SEED+k; each stops starting trials after MINUTES (default 60). With -c, stream k and its
#       workers are pinned to CPUs [k*C, (k+1)*C) (taskset), so streams do not compete for cores and
#       each behaves like a C-core machine. Logs: OUT/stream-K/ (default ./chaos-out); the merged
#       table is printed and written to OUT/summary.txt.
#   Env: JAVA (default $JAVA_HOME/bin/java, else /usr/lib/jvm/temurin-25-jdk-amd64/bin/java), PYTHON (python3).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { sed -n '2,17p' "$0"; exit 2; }
shift 2

JDK25=/usr/lib/jvm/temurin-25-jdk-amd64
case "$cmd" in
stage)
  # Maven must run on JDK 25 (the build's JVM options need it)
  if [ -z "${JAVA_HOME:-}" ] || ! "$JAVA_HOME/bin/java" -version 2>&1 | grep -q '"25'; then
    [ -x "$JDK25/bin/java" ] || { echo "chaos-long: set JAVA_HOME to a JDK 25 (none at $JDK25)" >&2; exit 1; }
    export JAVA_HOME=$JDK25
  fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  rm -rf "$dir/classes" "$dir/test-classes" "$dir/lib"
  cp -r "$ROOT/pg/target/classes" "$dir/classes"
  cp -r "$ROOT/pg/target/test-classes" "$dir/test-classes"
  mkdir -p "$dir/lib"
  cpfile=$(mktemp)
  (cd "$ROOT" && mvn -o -q -B -pl pg dependency:build-classpath -Dmdep.includeScope=test -Dmdep.outputFile="$cpfile" >/dev/null)
  # the etcd client stack is only for ElasticTest's etcd runs, not the chaos trials
  tr ':' '\n' < "$cpfile" | grep -v -E 'jetcd|grpc|netty|vertx|protobuf|proto-google|guava|failureaccess|listenablefuture|checker-qual|jackson|perfmark|javax.annotation|failsafe|transfer-etcd' \
    | while read -r j; do cp "$j" "$dir/lib/"; done
  rm -f "$cpfile"
  du -sh "$dir"
  ;;
run)
  streams=1; netcut=""; cores=""; minutes=60; seed=$RANDOM$RANDOM; out=chaos-out
  while getopts "j:k:c:m:s:o:" opt; do
    case "$opt" in
      j) streams=$OPTARG ;; k) netcut=$OPTARG ;; c) cores=$OPTARG ;; m) minutes=$OPTARG ;; s) seed=$OPTARG ;; o) out=$OPTARG ;;
      *) exit 2 ;;
    esac
  done
  netcut=${netcut:-$((streams / 3))}
  JAVA=${JAVA:-${JAVA_HOME:+$JAVA_HOME/bin/java}}
  JAVA=${JAVA:-$JDK25/bin/java}
  "$JAVA" -version 2>&1 | grep -q '"25' || { echo "chaos-long: $JAVA is not a Java 25 runtime; set JAVA or JAVA_HOME" >&2; exit 1; }
  dir=$(cd "$dir" && pwd)
  mkdir -p "$out"; out=$(cd "$out" && pwd)
  cp="$dir/test-classes:$dir/classes:$dir/lib/*"
  echo "chaos-long: $streams streams ($netcut network-cut), ${cores:-all} cores each, $minutes min, seeds $seed+k, $(nproc) CPUs, $(uname -r)"
  pids=()
  for ((k = 0; k < streams; k++)); do
    kind=kill-stop; [ "$k" -lt "$netcut" ] && kind=netcut
    mkdir -p "$out/stream-$k"
    pin=()
    [ -n "$cores" ] && pin=(taskset -c "$((k * cores))-$((k * cores + cores - 1))")
    (cd "$out/stream-$k" && exec "${pin[@]}" "$JAVA" --enable-native-access=ALL-UNNAMED -Xmx512m -cp "$cp" \
        -Dchaos.trials=1000000 -Dchaos.maxMinutes="$minutes" -Dchaos.seed=$((seed + k)) \
        org.mooncake4j.pg.chaos.ChaosMain "$kind" > out.txt 2>&1) &
    pids+=($!)
  done
  rc=0
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  "${PYTHON:-python3}" "$ROOT/bench/chaos_merge.py" "$out"/stream-*/out.txt | tee "$out/summary.txt"
  exit $rc
  ;;
*) sed -n '2,17p' "$0"; exit 2 ;;
esac
