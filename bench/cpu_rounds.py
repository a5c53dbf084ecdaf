"""Medians over rounds of bench/cpu-vs-gloo.sh -r R: reads OUT/<side>-allreduce-g<N>-r<k>.json for k = 1..R
(side: mooncake-cpu, gloo), writes OUT/<side>-allreduce-g<N>.json with each size's median row (the row
of the round whose time is the median, as measured; #wrong the largest of all rounds), and prints per size both
medians, the ratio of the medians and the lowest and highest ratio of one round's pair (ours and Gloo
run one after the other). Ratio = time(gloo) / time(mooncake-cpu) = busbw(mooncake-cpu) / busbw(gloo).
Usage: cpu_rounds.py OUT_DIR N ROUNDS"""
import json, os, sys

out, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


def load(side, k):
    with open(os.path.join(out, f"{side}-allreduce-g{n}-r{k}.json")) as f:
        return json.load(f)


def median_file(side):
    runs = [load(side, k) for k in range(1, rounds + 1)]
    by_size = {}
    for run in runs:
        for row in run["rows"]:
            by_size.setdefault(int(row["bytes"]), []).append(row)
    rows = []
    for size in sorted(by_size):
        rs = sorted(by_size[size], key=lambda r: r["time_us"])
        # the lower median for an even count: a row that was measured, not an average of two
        rows.append(dict(rs[(len(rs) - 1) // 2], rounds=len(rs), wrong=max(r["wrong"] for r in rs)))
    merged = dict(runs[0], rows=rows, rounds=rounds, note=f"median over {rounds} rounds per size")
    with open(os.path.join(out, f"{side}-allreduce-g{n}.json"), "w") as f:
        json.dump(merged, f, indent=1)
    return {int(r["bytes"]): [x["time_us"] for x in by_size[int(r["bytes"])]] for r in rows}, {int(r["bytes"]): r for r in rows}


ours_all, ours = median_file("mooncake-cpu")
gloo_all, gloo = median_file("gloo")
print(f"# all_reduce float32 on {n} ranks, {rounds} rounds (each: mooncake-cpu, then gloo): median time per size and ratio")
print(f"# ratio = time(gloo)/time(mooncake-cpu) = busbw ratio; min/max: the lowest and highest ratio of one round's pair")
print(f"{'size(B)':>12} {'ours med(us)':>13} {'gloo med(us)':>13} {'ratio':>7} {'min':>7} {'max':>7}  ours per round (us)")
for size in sorted(ours):
    if size not in gloo:
        continue
    pair = [g / o for o, g in zip(ours_all[size], gloo_all[size]) if o > 0]
    o, g = ours[size]["time_us"], gloo[size]["time_us"]
    print(f"{size:>12} {o:>13.2f} {g:>13.2f} {g / o:>7.2f} {min(pair):>7.2f} {max(pair):>7.2f}  "
          + " ".join(f"{t:.0f}" for t in ours_all[size]))
