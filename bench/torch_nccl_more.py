"""NCCL all_gather_into_tensor, reduce_scatter_tensor and all_to_all_single through torch.distributed,
timed the way torch_baselines.py times all_reduce (same warm-up, barrier, loop, synchronize, iteration
counts and sizes), as the anchor for mooncake4j's CollectiveBench (mooncake_more_ws<N>.json).
Run: torchrun --nproc-per-node=N torch_nccl_more.py   (writes $OUT/torch_nccl_more_ws<N>.json)

Per size p (8 B .. 512 MiB float32 by 4x, as torch_baselines.py) every rank holds a piece of n floats;
the full tensor (all_gather's output, reduce_scatter's input, all_to_all's input and output) holds
ws * n. Rows are [bytes of the full tensor, time_us, busbw_GBps] with busbw = algbw * (ws-1)/ws
(nccl-tests), algbw = full-tensor bytes / time; nccl_alltoall rows match torch_baselines.py's nccl_a2a."""
import os, time, json, torch, torch.distributed as dist


def bench(fn, iters, warm=5, sync=None):
    for _ in range(warm): fn()
    if sync: sync()
    dist.barrier()
    if sync: sync()
    t = time.perf_counter()
    for _ in range(iters): fn()
    if sync: sync()
    return (time.perf_counter() - t) / iters


def main():
    rank = int(os.environ["RANK"]); ws = int(os.environ["WORLD_SIZE"]); lr = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(lr)
    dist.init_process_group("nccl", device_id=torch.device("cuda", lr))
    out = {"world": ws, "dtype": "float32", "size": "bytes of the full tensor: world x per-rank piece",
           "nccl_allgather": [], "nccl_reducescatter": [], "nccl_alltoall": []}
    sync = torch.cuda.synchronize
    for p in range(3, 31, 2):  # the sizes of torch_baselines.py
        n = max(1, (1 << p) // 4)
        iters = 200 if p < 20 else (50 if p < 26 else 10)
        total = n * 4 * ws
        piece = torch.randn(n, device="cuda")
        full = torch.empty(n * ws, device="cuda")
        t = bench(lambda: dist.all_gather_into_tensor(full, piece), iters, sync=sync)
        out["nccl_allgather"].append((total, t * 1e6, total / t / 1e9 * (ws - 1) / ws))
        x = torch.randn(n * ws, device="cuda"); y = torch.empty(n, device="cuda")
        t = bench(lambda: dist.reduce_scatter_tensor(y, x), iters, sync=sync)
        out["nccl_reducescatter"].append((total, t * 1e6, total / t / 1e9 * (ws - 1) / ws))
        z = torch.empty_like(x)
        t = bench(lambda: dist.all_to_all_single(z, x), iters, sync=sync)
        out["nccl_alltoall"].append((total, t * 1e6, total / t / 1e9 * (ws - 1) / ws))
        del piece, full, x, y, z
    if rank == 0:
        print(json.dumps(out))
        with open(os.path.join(os.environ.get("OUT", "."), f"torch_nccl_more_ws{ws}.json"), "w") as f: json.dump(out, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
