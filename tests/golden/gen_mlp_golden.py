#!/usr/bin/python3
"""Generate tests/golden/mlp_golden.json: a PyTorch MLP run on Fashion-MNIST.

What it produces
----------------
A JSON document in protobuf's JSON mapping of ``gradacc.test.MlpGolden``
(tests/golden/golden.proto), replayed by tests/worker/training_test.cc
(TrainingTest.MatchesPyTorch).  PyTorch trains an MLP 784 -> 32 -> 10 (ReLU)
on the first TRAIN_LIMIT = 2000 Fashion-MNIST training samples for 20 windows,
following gradacc's documented contract to the letter:

* Data: Debian's ``/usr/share/datasets/fashion-mnist/train-*.gz`` (gzip IDX,
  big-endian header), samples 0..TRAIN_LIMIT-1 of the file; pixels
  ``float32(u8) / 255``, flattened row-major to 784.
* Model: real ``nn.Linear`` layers, tensors (the JobSpec's order, the order
  of every flat vector in the file) fc1.weight [32,784], fc1.bias [32],
  fc2.weight [10,32], fc2.bias [10]; logits = fc2(relu(fc1(x))).
* Initial parameters: job.proto's seeded ``fan_in_uniform`` initialiser
  (``Initializer``), computed here with exact uint64 arithmetic: tensor i has
  effective seed s = SEED + 1000003 * (i + 1); element j (row-major) is
  float32(-bound + 2 * bound * u(j)) computed in double, bound =
  1/sqrt(fan_in), fan_in = 784 for fc1.*, 32 for fc2.*,
  u(j) = (splitmix64(s + j * 0x9E3779B97F4A7C15) >> 40) * 2^-24.
  The JobSpec carries ``init { fan_in_uniform { fan_in } }`` per tensor so
  gradacc derives the same values (the test checks them bit for bit).
* Data order: worker/training/data_order.h.  Epoch e: key = splitmix64(SEED ^
  splitmix64(e + 1)); Fisher-Yates over 0..N-1, for i = N-1 down to 1 swap
  positions i and splitmix64(key + i) mod (i + 1).  B = M*K*b = 2*3*50 = 300
  samples per window, W = ceil(N / B) = 7 windows per epoch (the last one
  holds 200); global window t is window j = t mod W of epoch t div W, holding
  perm[j*B, j*B + R), R = min(B, N - j*B); slot s = r*K + k (micro-batch k
  of worker r) gets perm[j*B + floor(s*R/(M*K)), j*B + floor((s+1)*R/(M*K))).

Per window the script does what gradacc's workers and server do together::

  zero_grad()
  for r in 0..M-1, k in 0..K-1:           (empty slots skipped)
      loss = F.cross_entropy(model(x_slot), y_slot, reduction="sum")
      loss.backward()                      (gradients add up)
  p.grad /= R for every p                  (REDUCTION_MEAN_OVER_SAMPLES)
  Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
       foreach=False).step()
  window_loss[t] = (sum over slots of float(loss)) / R, in double

and records the parameters after window 0 and after the last window.

Everything is deterministic (no RNG, one thread), so re-running produces
byte-identical output.  Floats are written with Python's repr of the float32
value widened to double, which is exact.

How to run
----------
Needs Debian's torch 1.13.1 and the Fashion-MNIST files (package
fashion-mnist); only the system interpreter sees torch::

    /usr/bin/python3 tests/golden/gen_mlp_golden.py            # writes the file
    /usr/bin/python3 tests/golden/gen_mlp_golden.py --check    # compare only

Run from anywhere; the output path is relative to this script.  The script
prints the loss of every window and, for cross-checking an implementation,
the first entries of the epoch-0 and epoch-1 permutations and of the initial
fc1.weight and fc2.bias.
"""

import gzip
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mlp_golden.json")
DATA_DIR = "/usr/share/datasets/fashion-mnist"
# Debian's python3-torch 1.13.1+dfsg reports torch.__version__ == "1.13.0a0".
assert torch.__version__.startswith("1.13"), "expected torch 1.13.1, got " + torch.__version__
GENERATOR = "torch 1.13.1 tests/golden/gen_mlp_golden.py"

MASK = (1 << 64) - 1
SEED = 7
TRAIN_LIMIT = 2000
HIDDEN = [32]
CLASSES = 10
WORKERS, MICRO_BATCHES, MICRO_BATCH = 2, 3, 50   # M, K, b
WINDOWS = 20
LR, BETA1, BETA2, EPS = 1e-3, 0.9, 0.999, 1e-8


# --- job.proto's counter-based generator, exact uint64 arithmetic ----------

def splitmix64(z):
    """job.proto's splitmix64 finaliser (mod 2^64)."""
    z &= MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def uniform_at(seed, j):
    """u(j) in [0, 1): (splitmix64(s + j * golden) >> 40) * 2^-24."""
    return (splitmix64((seed + j * 0x9E3779B97F4A7C15) & MASK) >> 40) * (1.0 / 16777216.0)


def fan_in_uniform(seed, count, fan_in):
    """Initializer.FanInUniform: float32(low + (high - low) * u(j)) in double."""
    bound = 1.0 / math.sqrt(fan_in)
    low, high = -bound, bound
    values = [low + (high - low) * uniform_at(seed, j) for j in range(count)]
    return np.array(values, dtype=np.float64).astype(np.float32)  # round to nearest


def epoch_permutation(seed, epoch, n):
    """worker/training/data_order.h EpochPermutation."""
    perm = list(range(n))
    key = splitmix64(seed ^ splitmix64(epoch + 1))
    for i in range(n - 1, 0, -1):
        j = splitmix64((key + i) & MASK) % (i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def slot_range(t, r, k, n):
    """worker/training/data_order.h WindowGeometry::Slot: [begin, end) in the epoch's perm."""
    big = WORKERS * MICRO_BATCHES * MICRO_BATCH
    per_epoch = (n + big - 1) // big
    base = (t % per_epoch) * big
    size = min(big, n - base)
    slots = WORKERS * MICRO_BATCHES
    s = r * MICRO_BATCHES + k
    return base + s * size // slots, base + (s + 1) * size // slots


# --- data ------------------------------------------------------------------

def read_idx(path, magic, dims):
    with gzip.open(path, "rb") as f:
        blob = f.read()
    header = struct.unpack(">" + "I" * (dims + 1), blob[:4 * (dims + 1)])
    assert header[0] == magic, "%s: magic 0x%08x, want 0x%08x" % (path, header[0], magic)
    return header[1:], blob[4 * (dims + 1):]


def load_train(limit):
    (count, rows, cols), images = read_idx(os.path.join(DATA_DIR, "train-images-idx3-ubyte.gz"),
                                           0x00000803, 3)
    (label_count,), labels = read_idx(os.path.join(DATA_DIR, "train-labels-idx1-ubyte.gz"),
                                      0x00000801, 1)
    assert count == label_count and rows == 28 and cols == 28, (count, label_count, rows, cols)
    n = min(limit, count)
    feat = rows * cols
    pixels = np.frombuffer(images, dtype=np.uint8, count=n * feat).reshape(n, feat)
    x = torch.tensor(pixels, dtype=torch.float32) / 255.0
    y = torch.tensor(np.frombuffer(labels, dtype=np.uint8, count=n), dtype=torch.long)
    assert int(y.max()) < CLASSES
    return x, y


# --- the run ---------------------------------------------------------------

def floats(values):
    vals = [float(v) for v in values]
    for v in vals:
        assert math.isfinite(v), "non-finite value"
    return vals


def flat(model):
    return floats(torch.cat([p.detach().flatten() for p in model.parameters()]).tolist())


def main():
    torch.set_num_threads(1)
    x_all, y_all = load_train(TRAIN_LIMIT)
    n = x_all.shape[0]
    assert n == TRAIN_LIMIT

    widths = [x_all.shape[1]] + HIDDEN + [CLASSES]
    layers = []
    tensors = []  # (name, shape, fan_in), JobSpec order
    for l in range(1, len(widths)):
        layers.append(torch.nn.Linear(widths[l - 1], widths[l]))
        if l < len(widths) - 1:
            layers.append(torch.nn.ReLU())
        tensors.append(("fc%d.weight" % l, [widths[l], widths[l - 1]], widths[l - 1]))
        tensors.append(("fc%d.bias" % l, [widths[l]], widths[l - 1]))
    model = torch.nn.Sequential(*layers)
    params = list(model.parameters())
    assert [list(p.shape) for p in params] == [shape for _, shape, _ in tensors]

    with torch.no_grad():
        for i, (p, (name, shape, fan_in)) in enumerate(zip(params, tensors)):
            seed = SEED + 1000003 * (i + 1)
            p.copy_(torch.from_numpy(fan_in_uniform(seed, math.prod(shape), fan_in)).view(*shape))
    initial = flat(model)

    optimizer = torch.optim.Adam(params, lr=LR, betas=(BETA1, BETA2), eps=EPS,
                                 weight_decay=0, foreach=False)
    big = WORKERS * MICRO_BATCHES * MICRO_BATCH
    per_epoch = (n + big - 1) // big
    losses = []
    after_first = None
    perms = {}
    for t in range(WINDOWS):
        epoch = t // per_epoch
        if epoch not in perms:
            perms[epoch] = epoch_permutation(SEED, epoch, n)
        perm = perms[epoch]
        optimizer.zero_grad()
        window_samples = 0
        loss_sum = 0.0
        for r in range(WORKERS):
            for k in range(MICRO_BATCHES):
                begin, end = slot_range(t, r, k, n)
                if begin == end:
                    continue
                idx = torch.tensor(perm[begin:end], dtype=torch.long)
                loss = F.cross_entropy(model(x_all[idx]), y_all[idx], reduction="sum")
                loss.backward()
                loss_sum += float(loss.item())
                window_samples += end - begin
        for p in params:
            p.grad /= window_samples
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss_sum / window_samples)
        if t == 0:
            after_first = flat(model)
        print("window %2d (epoch %d, %3d samples): loss %.6f"
              % (t, epoch, window_samples, losses[-1]), file=sys.stderr)
    final = flat(model)

    for e in (0, 1):
        print("perm epoch %d [:5]: %s" % (e, epoch_permutation(SEED, e, n)[:5]), file=sys.stderr)
    offset = 0
    for name, shape, _ in tensors:
        if name in ("fc1.weight", "fc2.bias"):
            print("initial %s[:5]: %s" % (name, [repr(v) for v in initial[offset:offset + 5]]),
                  file=sys.stderr)
        offset += math.prod(shape)

    job = {
        "jobId": "mlp_golden",
        "model": {"tensors": [{"name": name, "shape": shape,
                               "init": {"fanInUniform": {"fanIn": fan_in}}}
                              for name, shape, fan_in in tensors]},
        "optimizer": {"kind": "KIND_ADAM", "lr": LR,
                      "adam": {"beta1": BETA1, "beta2": BETA2, "eps": EPS}},
        "window": {"numWorkers": WORKERS, "microBatches": MICRO_BATCHES,
                   "microBatchSize": MICRO_BATCH},
        "reduction": "REDUCTION_MEAN_OVER_SAMPLES",
        "totalSteps": WINDOWS,
        "seed": SEED,
        "workerHints": {"model": "mlp", "hidden": ",".join(map(str, HIDDEN)),
                        "dataset": "fashion-mnist", "train_limit": str(TRAIN_LIMIT)},
    }
    golden = {
        "generator": GENERATOR,
        "job": job,
        "hidden": HIDDEN,
        "trainLimit": TRAIN_LIMIT,
        "initialParams": initial,
        "windowLoss": floats(losses),
        "params": final,
        "paramsAfterFirst": after_first,
    }
    text = json.dumps(golden, indent=1) + "\n"
    if "--check" in sys.argv[1:]:
        with open(OUT_PATH) as f:
            same = f.read() == text
        print("identical" if same else "DIFFERENT", file=sys.stderr)
        return 0 if same else 1
    with open(OUT_PATH, "w") as f:
        f.write(text)
    print("wrote %s (%d parameters, %d windows)" % (OUT_PATH, len(final), WINDOWS), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
