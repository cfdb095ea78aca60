#!/usr/bin/python3
"""A PyTorch CNN on Fashion-MNIST, trained through gradacc by N MPI ranks.

Two steps (deploy/quickstart.sh --torch does both, and starts the server):

    # 1. the job: the model, its optimizer and schedule -> job + initial weights
    /usr/bin/python3 fashion_mnist_cnn.py --write_job=run/job.textproto --workers=4 --epochs=3
    gradacc-server --job=run/job.textproto --listen=127.0.0.1:7070 --output=run/final.safetensors &
    # 2. the workers
    mpirun -np 4 /usr/bin/python3 fashion_mnist_cnn.py --server=127.0.0.1:7070

Each rank trains on its share of every window (gradacc.data.WindowPlan: the
same data order as gradacc-worker), rank 0 prints progress lines, evaluates
the test set after every epoch and reports it to the server, and at the end
prints the server's status and, last, the final test accuracy.

Data: Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist,
IDX files read with gzip + NumPy). Run with /usr/bin/python3 (Debian's
torch); PYTHONPATH must reach the gradacc package (build/python).
"""
import argparse
import gzip
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DATA_DIR = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530  # of the training images, for inputs near zero mean and unit variance


class FashionCNN(nn.Module):
    """Two 3x3 convolutions (16 and 32 channels, each 2x2 max-pool + ReLU), then 1568-128-10."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        # relu(max_pool(.)) = max_pool(relu(.)), with a quarter of the ReLU work.
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def read_idx(path):
    """An IDX file (gzip): big-endian magic 0x0000080<ndim>, the dimensions, then u8 data."""
    with gzip.open(path, "rb") as f:
        blob = f.read()
    if blob[:2] != b"\0\0" or blob[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    ndim = blob[3]
    dims = np.frombuffer(blob[4:4 + 4 * ndim], dtype=">u4").astype(np.int64)
    return np.frombuffer(blob[4 + 4 * ndim:], dtype=np.uint8).reshape(dims)


def load(data_dir, split):
    """(images [N,1,28,28] float32 normalised, labels [N] int64) of "train" or "t10k"."""
    images = read_idx(os.path.join(data_dir, f"{split}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, f"{split}-labels-idx1-ubyte.gz"))
    x = torch.from_numpy((images.astype(np.float32) / 255.0 - MEAN) / STD).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def make_model_and_optimizer(total_steps, lr, seed):
    """The model, its optimizer and schedule: what the job is made from."""
    torch.manual_seed(seed)
    model = FashionCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return model, optimizer, scheduler


def accuracy(model, x, y, batch=2000):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    model.train()
    return correct / len(x)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--server", help="HOST:PORT of gradacc-server (training)")
    p.add_argument("--write_job", metavar="PATH", help="write the job (and PATH's .safetensors) and exit")
    p.add_argument("--workers", type=int, default=4, help="ranks (--write_job)")
    p.add_argument("--micro_batches", type=int, default=2, help="micro-batches per rank and window (--write_job)")
    p.add_argument("--micro_batch_size", type=int, default=16, help="samples per micro-batch (--write_job)")
    p.add_argument("--epochs", type=int, default=3, help="(--write_job)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate, cosine schedule (--write_job)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--data_dir", default=DATA_DIR)
    p.add_argument("--train_limit", type=int, default=0, help="use only the first N training samples")
    p.add_argument("--test_limit", type=int, default=0, help="evaluate on the first N test samples only")
    p.add_argument("--log_every", type=int, default=0, help="progress line every N windows (0: ~20 lines)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--shared_memory", type=int, default=1, help="1: shared memory on the server's host")
    p.add_argument("--hierarchical", type=int, default=0, help="1: the ranks of a host push through one")
    p.add_argument("--status", type=int, default=1, help="1: print the server's status table at the end")
    return p.parse_args()


def write_job(args):
    import gradacc.torch
    x, _ = load(args.data_dir, "train")
    n = min(len(x), args.train_limit) if args.train_limit else len(x)
    window = args.workers * args.micro_batches * args.micro_batch_size
    total = args.epochs * -(-n // window)
    model, optimizer, scheduler = make_model_and_optimizer(total, args.lr, args.seed)
    job, weights = gradacc.torch.write_job(
        args.write_job, model, optimizer, scheduler, workers=args.workers, micro_batches=args.micro_batches,
        micro_batch_size=args.micro_batch_size, total_steps=total, train_samples=n, job_id="fashion-cnn",
        seed=args.seed, hints={"example": "worker/python/examples/fashion_mnist_cnn.py"})
    print(f"wrote {job} and {weights}: FashionCNN, {sum(p.numel() for p in model.parameters())} parameters, "
          f"Adam lr {args.lr} cosine, {args.workers} workers x {args.micro_batches} x {args.micro_batch_size}, "
          f"{total} windows ({args.epochs} epochs of {n})")


class Progress:
    """Rank 0's progress lines and per-epoch evaluations (reported to the server).

    Its clock (samples/s, the "trained ..." line) runs from the first window
    to the last and leaves out the time spent evaluating the test set."""

    def __init__(self, worker, model, plan, total, log_every, test):
        self.worker, self.model, self.plan = worker, model, plan
        self.total, self.log_every, self.test = total, log_every, test
        self.start = time.perf_counter()
        self.eval_seconds = 0.0
        self.seen = 0
        self.accuracy = None

    def training_seconds(self):
        return time.perf_counter() - self.start - self.eval_seconds

    def window_done(self, t, result):
        plan, step = self.plan, result.version
        self.seen += len(plan.window(t))
        if step % self.log_every == 0 or step == 1 or result.job_done:
            rate = self.seen / self.training_seconds()
            eta = (self.total - step) * plan.window_samples / rate
            print(f"step {step:5d}/{self.total} | epoch {t // plan.windows_per_epoch + 1} | loss {result.loss:.4f} | "
                  f"{rate:.0f} samples/s | ETA {int(eta // 60)}:{int(eta % 60):02d}", flush=True)
        if step % plan.windows_per_epoch == 0 or result.job_done:
            began = time.perf_counter()
            self.accuracy = accuracy(self.model, *self.test)
            self.worker.report_test_accuracy(self.accuracy, step)
            self.eval_seconds += time.perf_counter() - began
            print(f"epoch {-(-step // plan.windows_per_epoch)} (step {step}): test accuracy "
                  f"{100 * self.accuracy:.2f}%", flush=True)


def load_data(args, rank):
    """(x, y) of the training set and, on rank 0, (x, y) of the test set."""
    x, y = load(args.data_dir, "train")
    if args.train_limit:
        x, y = x[:args.train_limit], y[:args.train_limit]
    if rank != 0:
        return (x, y), None
    x_test, y_test = load(args.data_dir, "t10k")
    if args.test_limit:
        x_test, y_test = x_test[:args.test_limit], y_test[:args.test_limit]
    return (x, y), (x_test, y_test)


def train(args):
    import gradacc
    import gradacc.torch
    from gradacc.data import WindowPlan
    torch.set_num_threads(args.threads)
    rank, world = gradacc.env_rank(), gradacc.env_world_size()
    (x, y), test = load_data(args, rank)

    # The usual PyTorch set-up: the job was made from these (its total_steps
    # comes from the server; the local scheduler would only matter locally).
    model, optimizer, _ = make_model_and_optimizer(1, args.lr, args.seed)
    worker = gradacc.torch.connect(model, optimizer, server=args.server, rank=rank, world_size=world,
                                   shared_memory=bool(args.shared_memory), hierarchical=bool(args.hierarchical))
    job = worker.client.job
    w = job["window"]
    plan = WindowPlan(len(x), world, int(w["micro_batches"]), int(w["micro_batch_size"]), seed=int(job["seed"]))
    total = int(job["total_steps"])
    progress = None
    if rank == 0:
        print(f"training job '{job['job_id']}' (FashionCNN, {worker.client.num_elements} parameters) on "
              f"{world} ranks x {plan.micro_batches} micro-batches of {plan.micro_batch_size} = "
              f"{plan.window_samples} samples/window, {plan.windows_per_epoch} windows/epoch, {total} windows",
              flush=True)
        print(f"rank 0 moves data through {worker.client.transport}", flush=True)
        progress = Progress(worker, model, plan, total, args.log_every or max(1, total // 20), test)

    # The training loop: forward, loss and backward per micro-batch, then one
    # call that ends the window (instead of optimizer.step() and zero_grad()).
    while not worker.done:
        t = worker.version
        for idx in plan.micro_batches_of(t, rank):
            if len(idx):
                idx = torch.from_numpy(idx)
                loss = F.cross_entropy(model(x[idx]), y[idx])
                loss.backward()
        result = worker.step(allow_empty=worker.micro_batches == 0)  # this rank may have no sample in the last
        if progress:
            progress.window_done(t, result)

    if rank == 0:
        seconds = progress.training_seconds()
        print(f"trained {total} windows in {seconds:.1f} s ({progress.seen / seconds:.0f} samples/s, "
              f"evaluation excluded)", flush=True)
        if args.status:
            print()
            print(worker.status_text(), flush=True)
        print(f"final test accuracy: {100 * progress.accuracy:.2f}% after {total} windows", flush=True)
    worker.close()


def main():
    args = parse_args()
    if args.write_job:
        write_job(args)
    elif args.server:
        train(args)
    else:
        sys.exit("give --write_job=PATH or --server=HOST:PORT (see --help)")


if __name__ == "__main__":
    main()
