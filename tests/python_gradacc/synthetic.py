#!/usr/bin/python3
"""tests/test_client.cc's synthetic worker, through the Python package.

The same least-squares problem as gradacc_test_client, computed with NumPy
in float32 with the same operations in the same order (one rounding per
operation, no fused multiply-add: the C++ build uses -std=c++17, so GCC
does not contract), so a run of these workers and a run of the C++ ones
push the same bytes and end with bit-identical parameters:

  micro-batch m of window v on worker k has s = 1 + (k + v + m) % 3 samples
  and adds, for every element i,
    grad[i] += s * (p[i] - target(i)) + offset(k, v, m, i)
  target(i)       = ((i % 13) - 6) * 0.1
  offset(k,v,m,i) = (((i * 7 + k * 5 + v * 3 + m) % 9) - 4) * 0.01
  loss_sum        = s * 0.5

    /usr/bin/python3 synthetic.py --server=HOST:PORT --worker=K [--micro_batches=2] [--shared_memory=1]
        [--hierarchical=1 under mpirun]
"""
import argparse
import sys

import numpy as np

import harness  # noqa: F401  (the build tree's gradacc on sys.path)

import gradacc


def target(n):
    i = np.arange(n, dtype=np.int64)
    return (i % 13 - 6).astype(np.float32) * np.float32(0.1)


def offset(n, k, v, m):
    i = np.arange(n, dtype=np.int64)
    return ((i * 7 + k * 5 + v * 3 + m) % 9 - 4).astype(np.float32) * np.float32(0.01)


def run(client, micro_batches=2, first_window_micro_batches=0, max_windows=None):
    """Trains until the job is done (or max_windows); returns the windows this call ended."""
    k = client.worker
    n = client.num_elements
    tgt = target(n)
    first = True
    ended = 0
    while not client.done and (max_windows is None or ended < max_windows):
        v = client.version
        count = first_window_micro_batches if first and first_window_micro_batches else micro_batches
        first = False
        for m in range(count):
            s = 1 + (k + v + m) % 3
            p = client.param()
            g = client.grad()
            g += np.float32(s) * (p - tgt) + offset(n, k, v, m)
            client.add_micro_batch(s, s * 0.5)
        client.step()
        ended += 1
    return ended


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--worker", type=int, default=None)
    ap.add_argument("--micro_batches", type=int, default=2)
    ap.add_argument("--shared_memory", type=int, default=1)
    ap.add_argument("--hierarchical", type=int, default=0)
    ap.add_argument("--wire_format", default="f32")
    args = ap.parse_args()
    client = gradacc.connect(args.server, args.worker, shared_memory=bool(args.shared_memory),
                             hierarchical=bool(args.hierarchical), wire_format=args.wire_format,
                             connect_timeout_s=30, window_timeout_s=120)
    print(f"synthetic {client.worker}: transport {client.transport}", flush=True)
    run(client, args.micro_batches)
    print(f"synthetic {client.worker}: done at version {client.version}", flush=True)
    if client.leader:
        client.leave()
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
