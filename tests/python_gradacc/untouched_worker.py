#!/usr/bin/python3
"""A rank of test_untouched.py's hierarchical run: test_untouched.Branchy under mpirun.

    mpirun -np 2 /usr/bin/python3 untouched_worker.py --server=HOST:PORT --optimizer=adamw --hierarchical=1
"""
import argparse
import sys

import harness  # noqa: F401  (the build tree's gradacc on sys.path)
import test_untouched

import gradacc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--hierarchical", type=int, default=1)
    args = ap.parse_args()
    results = {}
    rank, world = gradacc.env_rank(), gradacc.env_world_size()
    test_untouched.train_rank(args.server, args.optimizer, rank, world, results,
                              options={"hierarchical": bool(args.hierarchical)})
    print(f"untouched_worker {rank}: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
