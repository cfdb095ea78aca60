#!/usr/bin/env python3
"""PyTorch DDP peer of gradacc's training throughput (tests/bench/run.sh).

The main job's configuration (common/job_spec.cc DefaultJobSpec), trained
the way PyTorch users accumulate gradients: M ranks (torch.multiprocessing,
gloo over loopback, one thread each), the MLP 784-256-128-10 with ReLU,
summed softmax cross-entropy over a window's samples divided by the
samples per rank and window (DDP then averages over ranks: the mean over the
window's M*K*b samples, what gradacc's MEAN_OVER_SAMPLES reduction
computes), K micro-batches of b samples per rank and window with
`no_sync()` for all but the last, torch.optim.Adam (lr as the job, betas
0.9/0.999, eps 1e-8) with a cosine schedule over the run, Fashion-MNIST
from the Debian package's IDX files, scaled to [0, 1] per micro-batch.

Timed like gradacc-worker's progress line: from the start of the first
window (after a barrier) to the end of the last optimizer step, on rank 0;
startup and data loading are not timed. Prints

  RESULT train,ddp,<params>,<M>,<setting>,samples_per_s,<value>,samples/s

Environment the caller sets for a fair run: LD_LIBRARY_PATH=
/usr/lib/x86_64-linux-gnu/openblas-pthread (Debian's torch otherwise links
the reference BLAS), OMP_WAIT_POLICY=PASSIVE, GLOO_SOCKET_IFNAME=lo.
"""
import argparse
import contextlib
import datetime
import gzip
import os
import struct
import sys
import tempfile
import time

DATA_DIR = "/usr/share/datasets/fashion-mnist"  # worker/training/dataset.h kDefaultDataDir


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--m", type=int, default=2, help="ranks")
    p.add_argument("--k", type=int, default=2, help="micro-batches per rank and window")
    p.add_argument("--b", type=int, default=16, help="samples per micro-batch")
    p.add_argument("--steps", type=int, default=400, help="windows (optimizer steps)")
    p.add_argument("--hidden", default="256,128")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--data_dir", default=DATA_DIR)
    p.add_argument("--setting", default="", help="label for the RESULT lines")
    p.add_argument("--timeout_s", type=float, default=600)
    return p.parse_args()


def read_idx(path, magic):
    with gzip.open(path, "rb") as f:
        data = f.read()
    (got,) = struct.unpack(">I", data[:4])
    if got != magic:
        raise ValueError(f"{path}: magic {got:#x}, want {magic:#x}")
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return dims, data[4 + 4 * ndim:]


def load_train(data_dir):
    import torch
    dims, pixels = read_idx(os.path.join(data_dir, "train-images-idx3-ubyte.gz"), 0x803)
    _, labels = read_idx(os.path.join(data_dir, "train-labels-idx1-ubyte.gz"), 0x801)
    n = dims[0]
    x = torch.frombuffer(bytearray(pixels), dtype=torch.uint8).view(n, dims[1] * dims[2])
    y = torch.frombuffer(bytearray(labels), dtype=torch.uint8).to(torch.int64)
    return x, y


def blas_in_use():
    with open("/proc/self/maps") as f:
        libs = {line.split()[-1] for line in f if "libblas" in line or "openblas" in line}
    return ",".join(sorted(libs)) or "unknown"


def run(rank, args, store_path):
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    dist.init_process_group("gloo", init_method="file://" + store_path, rank=rank, world_size=args.m,
                            timeout=datetime.timedelta(seconds=args.timeout_s))
    images, labels = load_train(args.data_dir)
    n = images.shape[0]
    widths = [images.shape[1]] + [int(h) for h in args.hidden.split(",") if h] + [10]
    layers = []
    for i in range(len(widths) - 1):
        layers.append(torch.nn.Linear(widths[i], widths[i + 1]))
        if i + 2 < len(widths):
            layers.append(torch.nn.ReLU())
    model = DDP(torch.nn.Sequential(*layers))
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)
    K, b, M = args.k, args.b, args.m
    window = M * K * b
    per_epoch = (n + window - 1) // window
    gen = torch.Generator().manual_seed(args.seed)
    perm = None
    # Warm the BLAS and the allocator outside the timed loop, as gradacc's
    # worker has loaded its data and joined before its clock starts.
    with torch.no_grad():
        model.module(images[:b].float().div_(255))
    dist.barrier()
    start = time.perf_counter()
    for t in range(args.steps):
        j = t % per_epoch
        if j == 0:
            perm = torch.randperm(n, generator=gen)
        for k in range(K):
            s = rank * K + k
            idx = perm[j * window + s * b: j * window + (s + 1) * b]
            x = images[idx].float().div_(255)
            y = labels[idx]
            ctx = model.no_sync() if k < K - 1 else contextlib.nullcontext()
            with ctx:
                loss = F.cross_entropy(model(x), y, reduction="sum") / (K * b)
                loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    end = time.perf_counter()
    if rank == 0:
        rate = args.steps * window / (end - start)
        print(f"ddp_mlp: {args.steps} steps of {M} ranks x {K} micro-batches x {b} in {end - start:.2f} s, "
              f"{params} parameters, BLAS {blas_in_use()}, last micro-batch loss {loss.item() * K:.4f}", flush=True)
        print(f"RESULT train,ddp,{params},{M},{args.setting},samples_per_s,{rate:.6g},samples/s", flush=True)
        print(f"RESULT train,ddp,{params},{M},{args.setting},steps_per_s,{args.steps / (end - start):.6g},steps/s",
              flush=True)
    dist.destroy_process_group()


def main():
    args = parse_args()
    try:
        import torch.distributed as dist
        import torch.multiprocessing as mp
    except ImportError as e:
        print(f"ddp_mlp: PyTorch is not available ({e})", file=sys.stderr)
        return 77
    if not dist.is_gloo_available():
        print("ddp_mlp: this PyTorch has no gloo", file=sys.stderr)
        return 77
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with tempfile.TemporaryDirectory(prefix="gradacc-ddp-") as d:
        mp.spawn(run, args=(args, os.path.join(d, "store")), nprocs=args.m, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
