"""Table of bench/gpu-ar-ab.sh: per setting and size, our all_reduce time in every round (pgbench JSON
ab_ws<N>_v<V>_r<R>.json), the median, and busbw ratio = NCCL's median time / ours (>= 1: at or ahead of
NCCL; NCCL from torch_baselines_ws<N>_r<R>.json of the same rounds).
Usage: gpu_ab_table.py OUT_DIR N ROUNDS SETTING..."""
import json, os, statistics, sys

out, n, rounds, settings = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]


def load(name):
    p = os.path.join(out, name)
    return json.load(open(p)) if os.path.exists(p) else None


nccl = {}
for r in range(1, rounds + 1):
    tb = load(f"torch_baselines_ws{n}_r{r}.json") or {}
    for b, us, _ in tb.get("nccl_allreduce", []):
        nccl.setdefault(int(b), []).append(us)
ours = []
for v in range(len(settings)):
    times = {}
    for r in range(1, rounds + 1):
        d = load(f"ab_ws{n}_v{v}_r{r}.json")
        for row in (d or {}).get("rows", []):
            times.setdefault(int(row["bytes"]), []).append(row["time_us"])
    ours.append(times)
sizes = sorted({b for t in ours for b in t})
w = max([len("setting"), len("NCCL")] + [len(x) for x in settings])
print(f"# all_reduce A/B, {n} GPUs, {rounds} rounds: µs per round, median, busbw ratio to NCCL's median")
print(f"{'setting':<{w}} {'bytes':>10} {'µs per round':<28} {'median':>9} {'ratio':>6}")
for b in sizes:
    if b in nccl:
        m = statistics.median(nccl[b])
        print(f"{'NCCL':<{w}} {b:>10} {' '.join(f'{x:.1f}' for x in nccl[b]):<28} {m:>9.1f} {'':>6}")
    for s, times in zip(settings, ours):
        if b not in times:
            print(f"{s:<{w}} {b:>10} missing")
            continue
        m = statistics.median(times[b])
        ratio = f"{statistics.median(nccl[b]) / m:6.3f}" if b in nccl else "     -"
        print(f"{s:<{w}} {b:>10} {' '.join(f'{x:.1f}' for x in times[b]):<28} {m:>9.1f} {ratio}")
