#!/usr/bin/python3
"""A rank of test_residual_cnn.py: the residual CNN with BatchNorm trained through gradacc under mpirun.

Rank r's micro-batches of window t are MICRO_BATCHES[r] samples of the
window's seeded data (residual_cnn.window_data). At the end it writes its
parameters to OUT/rank<r>.npz and whether every .grad was finite before
each step ("finite" in the file).

    mpirun -np 3 /usr/bin/python3 residual_worker.py --server=HOST:PORT --out=DIR --threads=2 --shared_memory=1
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

import harness  # noqa: F401  (the build tree's gradacc on sys.path)
import residual_cnn

import gradacc.torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shared_memory", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, optimizer, _ = residual_cnn.make(seed=90)  # the job's parameters replace these
    worker = gradacc.torch.connect(model, optimizer, server=args.server, shared_memory=bool(args.shared_memory),
                                   connect_timeout_s=30, window_timeout_s=120)
    rank = worker.client.worker
    not_finite = []
    while not worker.done:
        t = worker.version
        for x, y in residual_cnn.micro_batches(t, rank):
            F.cross_entropy(model(x), y).backward()
            for name, p in model.named_parameters():
                if not torch.isfinite(p.grad).all():
                    not_finite.append(f"window {t} after a backward of {len(x)}: {name}")
        worker.step()
    out = {f"param_{n}": p.detach().numpy().copy() for n, p in model.named_parameters()}
    out["not_finite"] = np.array(not_finite, dtype=object)
    np.savez(os.path.join(args.out, f"rank{rank}.npz"), **out)
    print(f"residual_worker {rank}: {worker.client.transport}; {len(not_finite)} non-finite gradients",
          flush=True)
    worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
