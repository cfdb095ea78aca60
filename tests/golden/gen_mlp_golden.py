#!/usr/bin/python3
"""Golden data for gradacc's PyTorch-equivalence test (tests/training_test.cc).

Trains an MLP 784-32-10 on the first 2000 Fashion-MNIST training samples with
PyTorch itself, following gradacc's documented contract to the letter:
  * initial parameters from job.proto's seeded fan-in-uniform initialiser;
  * the sample order of worker/data_order.h (seeded Fisher-Yates per epoch,
    windows of M*K*b samples, slot s = r*K + k gets an even share);
  * 2 workers x 3 micro-batches of 50 per window, summed cross-entropy,
    loss.backward() per micro-batch (gradients add up), the window's gradient
    divided by its sample count (REDUCTION_MEAN_OVER_SAMPLES), then
    torch.optim.Adam.step() and zero_grad(); 20 windows.
Writes tests/golden/mlp_golden.json (protobuf JSON of gradacc.test.MlpGolden).
Needs Debian's python3-torch; run with /usr/bin/python3:

    /usr/bin/python3 tests/golden/gen_mlp_golden.py
"""
import gzip
import json
import math
import os
import struct

import torch
import torch.nn.functional as F

MASK = (1 << 64) - 1
DATA = "/usr/share/datasets/fashion-mnist"
HERE = os.path.dirname(os.path.abspath(__file__))

SEED = 7
TRAIN_LIMIT = 2000
HIDDEN = [32]
WORKERS, MICRO_BATCHES, MICRO_BATCH = 2, 3, 50
WINDOWS = 20
LR = 1e-3


def splitmix64(z):
    z &= MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def uniform_at(seed, j):
    return (splitmix64(seed + j * 0x9E3779B97F4A7C15) >> 40) * (1.0 / 16777216.0)


def read_idx(path, magic, dims):
    with gzip.open(path, "rb") as f:
        blob = f.read()
    header = struct.unpack(">" + "I" * (dims + 1), blob[:4 * (dims + 1)])
    assert header[0] == magic, path
    return header[1:], blob[4 * (dims + 1):]


def permutation(seed, epoch, n):
    perm = list(range(n))
    key = splitmix64(seed ^ splitmix64(epoch + 1))
    for i in range(n - 1, 0, -1):
        j = splitmix64((key + i) & MASK) % (i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def main():
    (n_all, rows, cols), images = read_idx(f"{DATA}/train-images-idx3-ubyte.gz", 0x803, 3)
    (_,), labels = read_idx(f"{DATA}/train-labels-idx1-ubyte.gz", 0x801, 1)
    n = min(TRAIN_LIMIT, n_all)
    feat = rows * cols
    x_all = torch.tensor(list(images[:n * feat]), dtype=torch.float32).reshape(n, feat) / 255.0
    y_all = torch.tensor(list(labels[:n]), dtype=torch.long)

    widths = [feat] + HIDDEN + [10]
    tensors = []  # (name, shape, fan_in)
    for l in range(1, len(widths)):
        tensors.append((f"fc{l}.weight", [widths[l], widths[l - 1]], widths[l - 1]))
        tensors.append((f"fc{l}.bias", [widths[l]], widths[l - 1]))
    params = []
    for i, (name, shape, fan_in) in enumerate(tensors):
        s = SEED + 1000003 * (i + 1)
        bound = 1.0 / math.sqrt(fan_in)
        count = math.prod(shape)
        values = [-bound + (bound - (-bound)) * uniform_at(s, j) for j in range(count)]
        params.append(torch.tensor(values, dtype=torch.float32).reshape(shape).requires_grad_())
    initial = torch.cat([p.detach().flatten() for p in params]).tolist()

    def forward(x):
        a = x
        for l in range(len(widths) - 1):
            a = a @ params[2 * l].t() + params[2 * l + 1]
            if l < len(widths) - 2:
                a = torch.relu(a)
        return a

    opt = torch.optim.Adam(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, foreach=False)
    big = WORKERS * MICRO_BATCHES * MICRO_BATCH
    per_epoch = (n + big - 1) // big
    slots = WORKERS * MICRO_BATCHES
    losses, after_first = [], None
    perm, perm_epoch = None, None
    for t in range(WINDOWS):
        epoch, j = divmod(t, per_epoch)
        if epoch != perm_epoch:
            perm, perm_epoch = permutation(SEED, epoch, n), epoch
        base = j * big
        r_size = min(big, n - base)
        opt.zero_grad()
        loss_sum = 0.0
        for r in range(WORKERS):
            for k in range(MICRO_BATCHES):
                s = r * MICRO_BATCHES + k
                idx = perm[base + s * r_size // slots: base + (s + 1) * r_size // slots]
                if not idx:
                    continue
                loss = F.cross_entropy(forward(x_all[idx]), y_all[idx], reduction="sum")
                loss.backward()
                loss_sum += loss.item()
        for p in params:
            p.grad /= r_size
        opt.step()
        losses.append(loss_sum / r_size)
        if t == 0:
            after_first = torch.cat([p.detach().flatten() for p in params]).tolist()
        print(f"window {t:2d}: loss {losses[-1]:.6f}")
    final = torch.cat([p.detach().flatten() for p in params]).tolist()
    print("perm epoch 0:", permutation(SEED, 0, n)[:5], "epoch 1:", permutation(SEED, 1, n)[:5])
    print("fc1.weight[:3]:", initial[:3])

    job = {
        "jobId": "mlp_golden",
        "model": {"tensors": [{"name": name, "shape": shape, "init": {"fanInUniform": {"fanIn": fan_in}}}
                              for name, shape, fan_in in tensors]},
        "optimizer": {"kind": "KIND_ADAM", "lr": LR, "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}},
        "window": {"numWorkers": WORKERS, "microBatches": MICRO_BATCHES, "microBatchSize": MICRO_BATCH},
        "reduction": "REDUCTION_MEAN_OVER_SAMPLES",
        "totalSteps": WINDOWS,
        "seed": SEED,
        "workerHints": {"model": "mlp", "hidden": ",".join(map(str, HIDDEN)), "dataset": "fashion-mnist",
                        "train_limit": str(TRAIN_LIMIT)},
    }
    out = {
        "generator": f"torch {torch.__version__[:4]} tests/golden/gen_mlp_golden.py",
        "job": job,
        "hidden": HIDDEN,
        "trainLimit": TRAIN_LIMIT,
        "initialParams": initial,
        "windowLoss": losses,
        "params": final,
        "paramsAfterFirst": after_first,
    }
    with open(os.path.join(HERE, "mlp_golden.json"), "w") as f:
        json.dump(out, f, indent=0)
        f.write("\n")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
