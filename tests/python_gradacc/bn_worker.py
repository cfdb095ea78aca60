#!/usr/bin/python3
"""A rank of test_mpi_torch.py's buffer test: a BatchNorm model trained through gradacc under mpirun.

Each rank trains on its own seeded data, so before a window ends the ranks'
BatchNorm running statistics differ. After every window it writes, to
OUT/rank<r>.npz: its buffers just before step() ("before<t>_<name>"), just
after ("after<t>_<name>") and its parameters at the end ("param_<name>").

    mpirun -np 2 /usr/bin/python3 bn_worker.py --server=HOST:PORT --out=DIR

The job comes from make_model() (the test writes it with gradacc.torch.write_job).
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import harness  # noqa: F401  (the build tree's gradacc on sys.path)

import gradacc
import gradacc.torch


def make_model():
    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(20, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 5))
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, optimizer = make_model()
    worker = gradacc.torch.connect(model, optimizer, server=args.server, connect_timeout_s=30, window_timeout_s=60)
    rank = worker.client.worker
    record = {}
    while not worker.done:
        t = worker.version
        for m in range(2):
            g = torch.Generator().manual_seed(1000 * rank + 10 * t + m)
            x = torch.randn((8, 20), generator=g) * (1 + rank) + rank  # ranks see other statistics
            y = torch.randint(0, 5, (8,), generator=g)
            F.cross_entropy(model(x), y).backward()
        for name, b in model.named_buffers():
            record[f"before{t}_{name}"] = b.numpy().copy()
        worker.step()
        for name, b in model.named_buffers():
            record[f"after{t}_{name}"] = b.numpy().copy()
    for name, p in model.named_parameters():
        record[f"param_{name}"] = p.detach().numpy().copy()
    np.savez(os.path.join(args.out, f"rank{rank}.npz"), **record)
    print(f"bn_worker {rank}: {len(record)} arrays written", flush=True)
    worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
