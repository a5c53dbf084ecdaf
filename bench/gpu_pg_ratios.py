"""Ratio tables of bench/gpu-pg.sh: pgbench --backend mooncake (mooncake_<collective>_ws<N>.json) beside
NCCL measured in the same run (torch_baselines_ws<N>.json: all_reduce; torch_nccl_more_ws<N>.json:
all_gather, reduce_scatter, all_to_all). Usage: gpu_pg_ratios.py OUT_DIR N
busbw ratio = ours / NCCL (>= 1 is at or ahead of NCCL); time ratio = ours / NCCL (<= 0.7 is the small-message target)."""
import json, os, sys

out, n = sys.argv[1], int(sys.argv[2])

def load(name):
    p = os.path.join(out, name)
    return json.load(open(p)) if os.path.exists(p) else None

tb = load(f"torch_baselines_ws{n}.json") or {}
more = load(f"torch_nccl_more_ws{n}.json") or {}
pairs = [("all_reduce", tb.get("nccl_allreduce")), ("all_gather", more.get("nccl_allgather")),
         ("reduce_scatter", more.get("nccl_reducescatter")), ("alltoall", more.get("nccl_alltoall"))]
for coll, nccl in pairs:
    ours = load(f"mooncake_{coll}_ws{n}.json")
    small = load(f"mooncake_{coll}_small_ws{n}.json")   # gpu-pg.sh times small all_reduces separately
    if ours and small:
        ours = dict(ours, rows=small["rows"] + [r for r in ours["rows"] if r["bytes"] not in {s["bytes"] for s in small["rows"]}])
    if not ours or not nccl:
        print(f"# {coll} on {n} GPUs: missing {'ours' if not ours else 'NCCL'} results")
        continue
    ref = {int(b): (us, bw) for b, us, bw in nccl}
    print(f"# {coll}, {n} GPUs: mooncake (pgbench) vs NCCL (torch), same sizes")
    print(f"{'bytes':>12} {'ours us':>10} {'nccl us':>10} {'time ratio':>10} {'ours busbw':>11} {'nccl busbw':>11} {'busbw ratio':>11} wrong")
    for r in ours["rows"]:
        b = int(r["bytes"])
        if b not in ref:
            continue
        us, bw = ref[b]
        print(f"{b:>12} {r['time_us']:>10.1f} {us:>10.1f} {r['time_us'] / us:>10.2f} {r['busbw']:>11.2f} {bw:>11.2f} "
              f"{(r['busbw'] / bw if bw else 0):>11.2f} {r['wrong']}")
