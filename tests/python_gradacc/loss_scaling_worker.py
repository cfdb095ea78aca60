#!/usr/bin/python3
"""A rank of test_loss_scaling.py's hierarchical run (the group's leader pushes for both ranks).

    mpirun -np 2 /usr/bin/python3 loss_scaling_worker.py --server=HOST:PORT --out=DIR

Writes DIR/rank-R.json: the (window, scale, skipped, next scale) sequence and the final scale.
"""
import argparse
import json
import sys

import harness  # noqa: F401  (the build tree's gradacc on sys.path)
import test_loss_scaling

import gradacc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    results = {}
    rank, world = gradacc.env_rank(), gradacc.env_world_size()
    test_loss_scaling.train_rank(args.server, rank, world, results, options={"hierarchical": True})
    _, seen, final_scale = results[rank]
    with open(f"{args.out}/rank-{rank}.json", "w") as f:
        json.dump({"seen": seen, "final_scale": final_scale}, f)
    print(f"loss_scaling_worker {rank}: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
