#!/usr/bin/env python3
"""PyTorch gloo peer of gradacc's window (tests/bench/run.sh runs it).

M processes (torch.multiprocessing, no mpirun), one thread each, joined by
torch.distributed with gloo over loopback (a file store). Each holds P f32
gradients (allocated once) and a P-float parameter with torch.optim.Adam, as
DDP does after backward: per window, untimed: fill the gradients; timed:
barrier, t0, all_reduce (SUM), divide by M, Adam step, barrier, t1. A
window's time is the largest t1 - t0 over the ranks; rank 0 prints medians
as RESULT lines:

  RESULT window,gloo,<P>,<M>,<setting>,<metric>,<value>,<unit>

Environment the caller sets: GLOO_SOCKET_IFNAME=lo, and for a fair peer
LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread (Debian's torch
otherwise uses the reference BLAS; irrelevant for this element-wise work but
kept the same as the training benchmark).
"""
import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--p", type=int, required=True, help="f32 elements")
    p.add_argument("--m", type=int, required=True, help="ranks")
    p.add_argument("--reps", type=int, default=7, help="timed windows")
    p.add_argument("--warmup", type=int, default=2, help="untimed windows first")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--setting", default="", help="label for the RESULT lines")
    p.add_argument("--timeout_s", type=float, default=600)
    p.add_argument("--rank", type=int, default=None,
                   help="run only this rank (one process per simulated host, tests/bench/multihost.sh); "
                        "with --store")
    p.add_argument("--store", default=None, help="file store path shared by the ranks (with --rank)")
    p.add_argument("--phase_file", default=None,
                   help="rank 0 appends the timed windows' start and end times (unix seconds) here")
    return p.parse_args()


def fill(g, rank, window, pattern_cache={}):
    # The same period-1024 pattern as tests/bench/bench_util.h FillGradient.
    import torch
    key = (rank, window % 1000)
    if key not in pattern_cache:
        i = torch.arange(1024, dtype=torch.int64)
        pattern_cache[key] = (((i * 7 + rank * 5 + (window % 1000) * 3) % 9) - 4).to(torch.float32) * 1e-3
    pat = pattern_cache[key]
    n = g.numel()
    full = n // 1024
    if full:
        g[: full * 1024].view(full, 1024).copy_(pat.expand(full, 1024))
    if n % 1024:
        g[full * 1024:].copy_(pat[: n % 1024])


def mark(path, what):
    if path:
        with open(path, "a") as f:
            f.write(f"{what} {time.time():.6f}\n")


def run(rank, args, store_path):
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="file://" + store_path, rank=rank, world_size=args.m,
                            timeout=datetime.timedelta(seconds=args.timeout_s))
    param = torch.nn.Parameter(torch.zeros(args.p))
    opt = torch.optim.Adam([param], lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    grad = torch.empty(args.p)
    times = []
    coll = []
    for w in range(args.warmup + args.reps):
        fill(grad, rank, w)
        dist.barrier()
        if rank == 0 and w == args.warmup:
            mark(args.phase_file, "start")
        t0 = time.perf_counter()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        tc = time.perf_counter()
        grad.div_(args.m)
        param.grad = grad
        opt.step()
        dist.barrier()
        t1 = time.perf_counter()
        slowest = torch.tensor([t1 - t0, tc - t0], dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        if w >= args.warmup:
            times.append(slowest[0].item())
            coll.append(slowest[1].item())
    if rank == 0:
        mark(args.phase_file, "end")

        def out(metric, value, unit):
            print(f"RESULT window,gloo,{args.p},{args.m},{args.setting},{metric},{value:.6g},{unit}", flush=True)
        out("window_median", statistics.median(times) * 1e3, "ms")
        out("window_min", min(times) * 1e3, "ms")
        out("window_max", max(times) * 1e3, "ms")
        out("collective_median", statistics.median(coll) * 1e3, "ms")
    dist.destroy_process_group()


def main():
    args = parse_args()
    try:
        import torch
        import torch.distributed as dist
        import torch.multiprocessing as mp
    except ImportError as e:
        print(f"torch_peer: PyTorch is not available ({e})", file=sys.stderr)
        return 77
    if not dist.is_gloo_available():
        print("torch_peer: this PyTorch has no gloo", file=sys.stderr)
        return 77
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if args.rank is not None:
        if not args.store:
            print("torch_peer: --rank needs --store", file=sys.stderr)
            return 2
        run(args.rank, args, args.store)
        return 0
    with tempfile.TemporaryDirectory(prefix="gradacc-gloo-") as d:
        mp.spawn(run, args=(args, os.path.join(d, "store")), nprocs=args.m, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
