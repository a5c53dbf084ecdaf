#!/usr/bin/env python3
"""Gloo all_reduce baseline for `mooncake4j pgbench`: the same sizes, the same timing, the same rows.

Launches -g processes itself (no torchrun needed) that join a gloo process group on 127.0.0.1.
For each size, each rank allocates one float32 tensor, optionally checks one all_reduce(SUM)
against known inputs (-c 1, outside the timing), runs the warmup, meets the others at a barrier,
times `iters` back-to-back all_reduce(SUM) calls with perf_counter_ns, and the result is the max
over ranks of elapsed / iters (an all_reduce MAX of a float64 tensor) -- pgbench's method.
Rank 0 prints the nccl-tests table and writes JSON in pgbench's format:
{"machine": {...}, "date": ..., "rows": [{collective, bytes, count, dtype, op, root, ranks,
time_us, algbw, busbw, wrong}, ...]}.

Run with Debian's torch: /usr/bin/python3 bench/gloo_allreduce.py -g 4 -b 8 -e 64M -f 4 --json gloo.json
"""
import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
import time

HEADER = "#       size(B)    count    type   redop    root     time(us)  algbw(GB/s)  busbw(GB/s)  #wrong"


def parse_size(text):
    """nccl-tests sizes: 8, 1K, 64M, 1G (binary multiples; a trailing B is allowed)."""
    s = text.strip().upper()
    if s.endswith("B"):
        s = s[:-1]
    shift = {"K": 10, "M": 20, "G": 30}.get(s[-1:], 0)
    digits = s[:-1] if shift else s
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"invalid size '{text}': write a whole number with an optional K, M or G suffix, e.g. 8, 1K, 64M")
    return int(digits) << shift


def sweep(lo, hi, factor):
    sizes, s = [], lo
    while s <= hi:
        sizes.append(s)
        s *= factor
    return sizes


def fmt_time(us):
    return f"{us:.2f}" if us < 10_000 else f"{us:.0f}"


def fmt_bw(gbps):
    return f"{gbps:.4f}" if 0 < gbps < 0.01 else f"{gbps:.2f}"


def table_row(r):
    wrong = "N/A" if r["wrong"] is None else str(r["wrong"])
    return (f"{r['bytes']:15d} {r['count']:8d} {r['dtype']:>7} {r['op']:>7} {r['root']:7d} "
            f"{fmt_time(r['time_us']):>12} {fmt_bw(r['algbw']):>12} {fmt_bw(r['busbw']):>12} {wrong:>7}")


def bind_thread(mode, local_rank, local_ranks):
    """pgbench's --cpu-bind: with auto and one (but fewer than two) CPUs per rank, the calling (main) thread goes to the
    local_rank-th CPU it may run on; os.sched_setaffinity(0, ...) binds the calling thread only, so
    Gloo's own threads keep their masks. Returns the preamble's description."""
    if mode == "none":
        return "none (--cpu-bind none)"
    if not hasattr(os, "sched_getaffinity"):
        return "none (this platform reports no CPU affinity)"
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < local_ranks:
        return f"none ({local_ranks} ranks on {len(cpus)} CPUs: more ranks than CPUs)"
    if len(cpus) >= 2 * local_ranks:
        return f"none ({local_ranks} ranks on {len(cpus)} CPUs: two or more per rank, for its helper threads)"
    os.sched_setaffinity(0, {cpus[local_rank]})
    return f"each rank's thread on a CPU of its own (rank i on the i-th of CPUs {cpus})"


def worker(args):
    import torch
    import torch.distributed as dist

    rank, n = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=n, timeout=datetime.timedelta(seconds=args.timeout_s))
    binding = bind_thread(args.cpu_bind, int(os.environ.get("LOCAL_RANK", rank)), int(os.environ.get("LOCAL_WORLD_SIZE", n)))
    if rank == 0:
        print(f"# gloo_allreduce (torch {torch.__version__}): all_reduce, backend gloo, device cpu, {n} ranks")
        print(f"# minBytes {args.min_bytes} maxBytes {args.max_bytes} step: {args.step_factor}(factor) "
              f"warmup iters: {args.warmup} iters: {args.iters} validation: {args.check} dtype: float32")
        print(f"# cpu binding: {binding}")
        print("#")
        print(HEADER, flush=True)
    rows, total_wrong = [], 0
    timing = torch.zeros(1, dtype=torch.float64)
    wrong_count = torch.zeros(1, dtype=torch.int64)
    for size in sweep(args.min_bytes, args.max_bytes, args.step_factor):
        count = max(1, size // 4)
        x = torch.zeros(count, dtype=torch.float32)
        wrong = None
        if args.check:
            pattern = 1 + torch.arange(count, dtype=torch.int64) % 3
            x.copy_(pattern * (rank + 1))
            dist.all_reduce(x)
            wrong = int((x != pattern * (n * (n + 1) // 2)).sum())
        for _ in range(args.warmup):
            dist.all_reduce(x)
        dist.barrier()
        t0 = time.perf_counter_ns()
        for _ in range(args.iters):
            dist.all_reduce(x)
        timing[0] = (time.perf_counter_ns() - t0) / 1e3 / args.iters
        dist.all_reduce(timing, op=dist.ReduceOp.MAX)
        us = float(timing[0])
        if wrong is not None:
            wrong_count[0] = wrong
            dist.all_reduce(wrong_count)
            wrong = int(wrong_count[0])
            total_wrong += wrong
        nbytes = count * 4
        algbw = nbytes / us / 1e3
        row = {"collective": "all_reduce", "bytes": nbytes, "count": count, "dtype": "float32", "op": "sum", "root": -1,
               "ranks": n, "time_us": us, "algbw": algbw, "busbw": algbw * 2 * (n - 1) / n, "wrong": wrong}
        rows.append(row)
        if rank == 0:
            print(table_row(row), flush=True)
        del x
    if rank == 0:
        if args.check:
            print(f"# Out of bounds values : {total_wrong} {'OK' if total_wrong == 0 else 'FAILED'}")
        print(f"# Avg bus bandwidth    : {fmt_bw(sum(r['busbw'] for r in rows) / len(rows))}")
        print("#", flush=True)
        if args.json:
            doc = {"machine": {"hostname": socket.gethostname(), "cores": os.cpu_count()},
                   "date": datetime.datetime.now().astimezone().isoformat(), "backend": "gloo",
                   "torch": torch.__version__, "rows": rows}
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as f:
                json.dump(doc, f, indent=1)
                f.write("\n")
            print(f"# results written to {args.json}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 1 if rank == 0 and total_wrong else 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, argv):
    """Starts -g copies of this script as ranks; the first to fail stops the rest; every wait is bounded."""
    port = free_port()
    procs = []
    for rank in range(args.ranks):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(args.ranks), LOCAL_WORLD_SIZE=str(args.ranks),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"] + argv, env=env))
    deadline = time.monotonic() + args.timeout_s
    code = 0
    try:
        while any(p.poll() is None for p in procs):
            failed = [(r, p.returncode) for r, p in enumerate(procs) if p.returncode not in (None, 0)]
            if failed:
                code = failed[0][1]
                print(f"gloo_allreduce: rank {failed[0][0]} exited with code {code}; stopping the others", file=sys.stderr)
                break
            if time.monotonic() > deadline:
                code = 124
                print(f"gloo_allreduce: still running after {args.timeout_s} s; stopping (raise --timeout-s)", file=sys.stderr)
                break
            time.sleep(0.05)
        else:
            code = next((p.returncode for p in procs if p.returncode != 0), 0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
    return code


def main():
    ap = argparse.ArgumentParser(description="Gloo all_reduce baseline with pgbench's sizes, timing and JSON rows.")
    ap.add_argument("-g", "--ranks", type=int, default=2, help="number of processes to launch (default 2)")
    ap.add_argument("-b", "--min-bytes", type=parse_size, default=parse_size("32M"), help="smallest size, e.g. 8, 1K (default 32M)")
    ap.add_argument("-e", "--max-bytes", type=parse_size, default=parse_size("32M"), help="largest size (default 32M)")
    ap.add_argument("-f", "--step-factor", type=int, default=2, help="size multiplier per step (default 2)")
    ap.add_argument("-n", "--iters", type=int, default=20, help="timed iterations per size (default 20)")
    ap.add_argument("-w", "--warmup", type=int, default=5, help="untimed iterations per size (default 5)")
    ap.add_argument("-c", "--check", type=int, choices=(0, 1), default=1, help="check one result per size (default 1)")
    ap.add_argument("--cpu-bind", choices=("auto", "none"), default="auto",
                    help="auto: with one but fewer than two CPUs per rank, bind each rank's main thread to a CPU of its own, as pgbench does (default auto)")
    ap.add_argument("--json", help="write the rows here (rank 0)")
    ap.add_argument("--timeout-s", type=int, default=1800, help="stop after this many seconds (default 1800)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    args = ap.parse_args(argv)
    if args.ranks < 1 or args.iters < 1 or args.warmup < 0 or args.step_factor < 2 or not 0 < args.min_bytes <= args.max_bytes:
        ap.error("need -g >= 1, -n >= 1, -w >= 0, -f >= 2 and 0 < -b <= -e")
    if args.worker:
        sys.exit(worker(args))
    sys.exit(launch(args, argv))


if __name__ == "__main__":
    main()
