"""Models, data and the reference run shared by the Python tests."""
import os
import sys
import threading

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import harness  # noqa: F401  (puts the build tree's gradacc on sys.path)

sys.path.insert(0, os.path.join(harness.ROOT, "worker", "python", "examples"))
from fashion_mnist_cnn import FashionCNN  # noqa: E402

import gradacc.torch  # noqa: E402


class MLP(nn.Module):
    """20-32-16-5 with ReLU and tanh."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 32)
        self.fc2 = nn.Linear(32, 16)
        self.out = nn.Linear(16, 5)

    def forward(self, x):
        return self.out(torch.tanh(self.fc2(F.relu(self.fc1(x)))))


class TinyTransformer(nn.Module):
    """A transformer encoder layer (2 heads, no dropout) over 6 tokens of 16 features, mean-pooled, 5 classes."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(16, 16)
        self.encoder = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, dropout=0.0,
                                                  batch_first=True)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


MODELS = {"mlp": (MLP, (20,), 5), "cnn": (FashionCNN, (1, 28, 28), 10), "transformer": (TinyTransformer, (6, 16), 5)}
EQUIVALENCE_MODELS = ("mlp", "cnn")  # test_torch_equivalence's matrix

OPTIMIZERS = {
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3),
    "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-3, betas=(0.9, 0.99), eps=1e-7, weight_decay=1e-3),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, eps=1e-7),
}

SLOTS = 8         # ranks x micro-batches of every geometry
WINDOW = 24       # samples of a full window
WINDOWS = 20      # the last one short
LAST_WINDOW = 5   # samples of the short last window (fewer than the slots: some are empty)


def dataset(model, seed=7):
    """(x, y): WINDOWS windows of seeded standard-normal inputs and random labels for `model`.

    Random inputs rather than Fashion-MNIST images on purpose: the images'
    constant backgrounds make many ReLU and max-pool inputs exactly equal,
    and an optimizer step that moves such a tie by one rounding error
    reroutes the gradient of thousands of positions at once; the
    trajectories of two summation orders (even two torch runs) then part
    by more than rounding (measured: SGD, 2x4, 2.7e-5 after 20 windows).
    """
    _, shape, classes = MODELS[model]
    n = (WINDOWS - 1) * WINDOW + LAST_WINDOW
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=g), torch.randint(0, classes, (n,), generator=g)


def window_slots(t):
    """Window t's samples split into SLOTS micro-batches of uneven (sometimes zero) sizes."""
    size = LAST_WINDOW if t == WINDOWS - 1 else WINDOW
    base = t * WINDOW
    rng = np.random.default_rng(1000 + t)
    cuts = np.sort(rng.integers(0, size + 1, SLOTS - 1))
    bounds = [0, *cuts.tolist(), size]
    return [np.arange(base + bounds[s], base + bounds[s + 1]) for s in range(SLOTS)]


def fresh(model, optimizer, seed=3):
    torch.manual_seed(seed)
    m = MODELS[model][0]()
    return m, OPTIMIZERS[optimizer](m.parameters())


def reference(model, optimizer, windows=WINDOWS):
    """One process, each window's samples as one batch (mean loss), the same torch.optim optimizer."""
    torch.set_num_threads(1)
    m, opt = fresh(model, optimizer)
    x, y = dataset(model)
    for t in range(windows):
        idx = torch.from_numpy(np.concatenate(window_slots(t)))
        opt.zero_grad()
        F.cross_entropy(m(x[idx]), y[idx]).backward()
        opt.step()
    return {n: p.detach().numpy().copy() for n, p in m.named_parameters()}


def same_sums(model, optimizer_fn, windows=WINDOWS, autocast=None):
    """One process, torch.optim, but each window's gradient summed as a 1x8 gradacc worker sums it:
    n_k times each micro-batch's mean-loss gradient, in slot order, divided by the window's samples.
    `autocast`: a dtype to run each forward under CPU torch.autocast with."""
    import contextlib
    torch.set_num_threads(1)
    torch.manual_seed(3)
    m = MODELS[model][0]()
    opt = optimizer_fn(m.parameters())
    x, y = dataset(model)
    for t in range(windows):
        slots = window_slots(t)
        acc = [torch.zeros_like(p) for p in m.parameters()]
        for idx in slots:
            if len(idx) == 0:
                continue
            m.zero_grad(set_to_none=True)
            i = torch.from_numpy(idx)
            with torch.autocast("cpu", dtype=autocast) if autocast is not None else contextlib.nullcontext():
                loss = F.cross_entropy(m(x[i]), y[i])
            loss.backward()
            for a, p in zip(acc, m.parameters()):
                a += p.grad * len(idx)
        samples = sum(len(idx) for idx in slots)
        for a, p in zip(acc, m.parameters()):
            p.grad = a / samples
        opt.step()
    return {n: p.detach().numpy().copy() for n, p in m.named_parameters()}


def write_job(folder, model, optimizer, workers, micro_batches, total_steps=WINDOWS, **extra):
    m, opt = fresh(model, optimizer)
    job, _ = gradacc.torch.write_job(os.path.join(folder, "job.textproto"), m, opt, workers=workers,
                                     micro_batches=micro_batches, micro_batch_size=WINDOW // SLOTS,
                                     total_steps=total_steps, job_id=f"{model}-{optimizer}", **extra)
    return job


def train_rank(address, model, optimizer, rank, world, micro_batches, results, options=None, windows=None):
    """One worker's training loop: its slots of every window; the final parameters into results[rank]."""
    options = dict(options or {})
    mark_last = options.pop("mark_last", False)  # worker.last_micro_batch() before each window's last backward
    m, opt = fresh(model, optimizer, seed=100 + rank)  # the job's parameters replace these
    x, y = dataset(model)
    worker = gradacc.torch.connect(m, opt, server=address, rank=rank, world_size=world, connect_timeout_s=30,
                                   window_timeout_s=120, **options)
    early = overlapped = 0
    try:
        while not worker.done and (windows is None or worker.version < windows):
            t = worker.version
            slots = [idx for idx in window_slots(t)[rank * micro_batches:(rank + 1) * micro_batches] if len(idx)]
            for j, idx in enumerate(slots):
                if mark_last and j == len(slots) - 1:
                    worker.last_micro_batch()
                F.cross_entropy(m(x[torch.from_numpy(idx)]), y[torch.from_numpy(idx)]).backward()
            if worker._stage is not None:
                early += worker._stage.early_copies if worker._stage.marks is not None else 0
            worker.step(allow_empty=worker.micro_batches == 0)
            overlapped += int(worker.copy_overlapped)
        results[rank] = {n: p.detach().numpy().copy() for n, p in m.named_parameters()}
        results[f"overlap{rank}"] = {"early_copies": early, "overlapped_windows": overlapped,
                                     "buckets": len(worker._stage.buckets) if worker._stage else 0}
        results[f"transport{rank}"] = worker.client.transport
    finally:
        worker.close()


def train_threads(address, model, optimizer, world, micro_batches, options=None, timeout=300):
    """`world` workers as threads of this process; their final parameters by rank."""
    torch.set_num_threads(1)
    results, errors = {}, []

    def body(rank):
        try:
            train_rank(address, model, optimizer, rank, world, micro_batches, results, options)
        except BaseException as e:  # reported by the caller
            errors.append((rank, e))

    threads = [threading.Thread(target=body, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    alive = [i for i, t in enumerate(threads) if t.is_alive()]
    if alive:
        raise RuntimeError(f"workers {alive} did not finish within {timeout} s")
    if errors:
        raise errors[0][1]
    return results
