# Shared by the GPU-host scripts (cuda/gpu-smoke.sh, cuda/gpu-collectives.sh, ep/gpu-ep.sh,
# bench/ep-vs-alltoall.sh): sourced, not run. The hosts have only the NVIDIA driver, a Java 25 runtime
# (bench/stage-device.sh builds one) and PyTorch.
#
# A script calls `gpu_setup $# "${1:-}" DEFAULT_TIMEOUT_S JAR_PREFIX...` with its own arguments (one:
# JAR_DIR; anything else prints the usage and exits 2). Afterwards it has:
#   jars      the absolute JAR_DIR (class path "$jars/*"), checked to hold every JAR_PREFIX-*.jar
#   java      $JAVA or /tmp/jre25/bin/java, checked to be executable
#   limit     $TIMEOUT_S or DEFAULT_TIMEOUT_S: seconds each process may run
#   visible   the GPU indices ($CUDA_VISIBLE_DEVICES, else nvidia-smi's), ngpu their count
#   worlds    $WORLDS, or "2 <all GPUs>"
#   status    0 until `note` records a failure; summary: the lines `gpu_summary` prints
# NVLink multicast stays off for every process (NCCL_NVLS_ENABLE=0 and friends). Usage errors exit 2.

gpu_setup() {  # gpu_setup ARGC JAR_DIR DEFAULT_TIMEOUT_S JAR_PREFIX...
  local argc=$1 dir=$2 j
  limit=${TIMEOUT_S:-$3}
  shift 3
  if [[ $argc -ne 1 || ! -d "$dir" ]]; then
    echo "usage: $0 JAR_DIR   (a folder with the $* jars and their dependencies)" >&2
    exit 2
  fi
  jars=$(cd "$dir" && pwd)
  for j in "$@"; do
    if ! compgen -G "$jars/$j-*.jar" > /dev/null; then
      echo "missing $j-*.jar in $jars" >&2
      exit 2
    fi
  done
  java=${JAVA:-/tmp/jre25/bin/java}
  if [[ ! -x "$java" ]]; then
    echo "no Java runtime at $java (set JAVA=..., or unpack one: tar xJf .device/jre25.tar.xz -C /tmp)" >&2
    exit 2
  fi
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
  if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    IFS=, read -r -a visible <<< "$CUDA_VISIBLE_DEVICES"
  else
    mapfile -t visible < <(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null)
  fi
  ngpu=${#visible[@]}
  worlds=${WORLDS:-$( (echo 2; echo "$ngpu") | sort -un | tr '\n' ' ')}
  status=0
  summary=()
}

gpu_out() {  # gpu_out: sets out to $OUT (or a new temporary folder), created, absolute
  out=${OUT:-$(mktemp -d)}
  mkdir -p "$out"
  out=$(cd "$out" && pwd)
}

gpus_of() {  # gpus_of N: the first N visible GPUs, comma-separated
  (IFS=,; echo "${visible[*]:0:$1}")
}

note() {  # note NAME RC: records PASSED, TIMED OUT (124/137 from timeout) or FAILED
  local verdict=PASSED
  if [[ $2 -eq 124 || $2 -eq 137 ]]; then verdict="TIMED OUT after ${limit}s"; elif [[ $2 -ne 0 ]]; then verdict="FAILED (exit $2)"; fi
  [[ $2 -ne 0 ]] && status=1
  summary+=("$1: $verdict")
}

gpu_summary() {  # gpu_summary [WHERE]: prints the summary and exits with the status
  echo "=== summary${1:+ ($1)}"
  printf '%s\n' "${summary[@]}"
  exit $status
}

torch_script() {  # torch_script PATH: PATH made absolute, looked up under the repository root too
  local p=$1 root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [[ ! -f "$p" && -f "$root/$p" ]]; then p="$root/$p"; fi
  (cd "$(dirname "$p")" 2>/dev/null && echo "${PWD%/}/$(basename "$p")")
}

run_torch() {  # run_torch NAME SCRIPT: torchrun SCRIPT on each world size of $worlds, logs and JSON in $out
  local name=$1 script=$2 n gpus rc base
  local -a torchrun
  if command -v torchrun > /dev/null; then torchrun=(torchrun); else torchrun=(python3 -m torch.distributed.run); fi
  base=$(basename "$script" .py)
  for n in $worlds; do
    [[ $n -le $ngpu ]] || continue
    if [[ ! -f "$script" ]]; then summary+=("$name ws$n: SKIPPED (no $base.py at $script)"); continue; fi
    gpus=$(gpus_of "$n")
    echo "=== $name ($base.py): $n processes on GPUs $gpus"
    (cd "$out" && CUDA_VISIBLE_DEVICES=$gpus OUT=$out timeout --kill-after=10 "$limit" "${torchrun[@]}" --nproc-per-node="$n" \
      "$script" > "$out/${base}_ws$n.log" 2>&1)
    rc=$?
    note "$name ws$n" "$rc"
    [[ $rc -eq 0 ]] || tail -20 "$out/${base}_ws$n.log"
  done
}

collective_bench() {  # collective_bench N LOGS NAME [VAR=VALUE...]: N CollectiveBench ranks on the first N GPUs with
  # the extra environment, logs in LOGS/rank<r>.log; waits for all and records "NAME rank <r>" with note
  local n=$1 logs=$2 name=$3 gpus rdv r
  shift 3
  gpus=$(gpus_of "$n")
  rdv=$(mktemp -d)
  mkdir -p "$logs"
  local -a pids=()
  for ((r = 0; r < n; r++)); do
    env CUDA_VISIBLE_DEVICES="$gpus" RANK=$r WORLD_SIZE="$n" RDV_DIR="$rdv" OUT="$logs" "$@" \
      timeout --kill-after=10 "$limit" "$java" --enable-native-access=ALL-UNNAMED -cp "$jars/*" \
      org.mooncake4j.cuda.CollectiveBench > "$logs/rank$r.log" 2>&1 &
    pids+=($!)
  done
  for ((r = 0; r < n; r++)); do
    wait "${pids[$r]}"
    note "$name rank $r" $?
  done
  rm -rf "$rdv"
}
