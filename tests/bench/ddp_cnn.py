#!/usr/bin/env python3
"""PyTorch DDP peer of gradacc's Python workers (tests/bench/run.sh, part torch).

The model and data of worker/python/examples/fashion_mnist_cnn.py (the
FashionCNN, Fashion-MNIST normalised the same way, imported from the
example), trained the way PyTorch users accumulate gradients: M ranks
(torch.multiprocessing, gloo over loopback, one thread each), K
micro-batches of b samples per rank and window with ``no_sync()`` for all
but the last, the summed cross-entropy over a micro-batch divided by K*b
(DDP then averages over ranks: the mean over the window's M*K*b samples, what
gradacc's MEAN_OVER_SAMPLES reduction computes), torch.optim.Adam with the
example's learning rate and a cosine schedule over the run.

Timed like the example's "trained ... samples/s" line: from the start of the
first window (after a barrier) to the end of the last optimizer step, on
rank 0; startup and data loading are not timed. Prints

  RESULT train_torch,ddp,<params>,<M>,<setting>,samples_per_s,<value>,samples/s
"""
import argparse
import contextlib
import datetime
import os
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "worker", "python", "examples"))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--m", type=int, default=2, help="ranks")
    p.add_argument("--k", type=int, default=2, help="micro-batches per rank and window")
    p.add_argument("--b", type=int, default=16, help="samples per micro-batch")
    p.add_argument("--steps", type=int, default=150, help="windows (optimizer steps)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--setting", default="", help="label for the RESULT lines")
    p.add_argument("--timeout_s", type=float, default=600)
    return p.parse_args()


def run(rank, args, store_path):
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP
    from fashion_mnist_cnn import DATA_DIR, FashionCNN, load
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    dist.init_process_group("gloo", init_method="file://" + store_path, rank=rank, world_size=args.m,
                            timeout=datetime.timedelta(seconds=args.timeout_s))
    x, y = load(DATA_DIR, "train")
    model = DDP(FashionCNN())
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)
    K, b, M = args.k, args.b, args.m
    window = M * K * b
    per_epoch = len(x) // window
    gen = torch.Generator().manual_seed(args.seed)
    perm = None
    with torch.no_grad():  # warm up outside the clock, as the gradacc workers have joined before theirs starts
        model.module(x[:b])
    dist.barrier()
    start = time.perf_counter()
    for t in range(args.steps):
        j = t % per_epoch
        if j == 0:
            perm = torch.randperm(len(x), generator=gen)
        for k in range(K):
            s = rank * K + k
            idx = perm[j * window + s * b: j * window + (s + 1) * b]
            ctx = model.no_sync() if k < K - 1 else contextlib.nullcontext()
            with ctx:
                loss = F.cross_entropy(model(x[idx]), y[idx], reduction="sum") / (K * b)
                loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    end = time.perf_counter()
    if rank == 0:
        rate = args.steps * window / (end - start)
        print(f"ddp_cnn: {args.steps} steps of {M} ranks x {K} micro-batches x {b} in {end - start:.2f} s, "
              f"{params} parameters, last micro-batch loss {loss.item() * K:.4f}", flush=True)
        print(f"RESULT train_torch,ddp,{params},{M},{args.setting},samples_per_s,{rate:.6g},samples/s", flush=True)
    dist.destroy_process_group()


def main():
    args = parse_args()
    try:
        import torch.distributed as dist
        import torch.multiprocessing as mp
    except ImportError as e:
        print(f"ddp_cnn: PyTorch is not available ({e})", file=sys.stderr)
        return 77
    if not dist.is_gloo_available():
        print("ddp_cnn: this PyTorch has no gloo", file=sys.stderr)
        return 77
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with tempfile.TemporaryDirectory(prefix="gradacc-ddp-") as d:
        mp.spawn(run, args=(args, os.path.join(d, "store")), nprocs=args.m, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
