#!/usr/bin/python3
"""Generate tests/golden/clip_golden.json: global-norm clipping on large tensors.

Each case is a JobSpec with clipping (tensors of 120300, 4099 and 10
elements), 3 workers and 6 windows.  Gradients and initial parameters come
from job.proto's counter-based generator as golden.proto's ClipCase says, so
the file stays small.  Per window the script does what gradacc's server must
do, in float32 with torch:

  g = ((c0 + c1) + c2) / (sum of the sample counts)     per tensor
  total = torch.nn.utils.clip_grad_norm_(params, max_norm)
  optimizer.step()                                      torch.optim, foreach=False

and records the total norm's bits and whether it clipped; at the end the
SHA-256 of the final flat parameters.  tests/server/optimizer_golden_test.cc
replays the cases through the Trainer and must match bit for bit.

    /usr/bin/python3 tests/golden/gen_clip_golden.py           # writes the file
    /usr/bin/python3 tests/golden/gen_clip_golden.py --check   # compare only
"""

import hashlib
import json
import os
import struct
import sys

import numpy as np
import torch

from seeded import f32_bits, uniform

OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip_golden.json")
TENSORS = [("big", [300, 401]), ("mid", [4099]), ("small", [10])]
WORKERS = 3
WINDOWS = 6


CASES = [
    ("large_sgd_momentum", {"kind": "KIND_SGD", "lr": 0.05, "sgd": {"momentum": 0.9}}, 0.3, 1, 0.01),
    ("large_adam", {"kind": "KIND_ADAM", "lr": 0.001, "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}},
     0.2, 2, 0.01),
    ("large_adamw_sometimes", {"kind": "KIND_ADAMW", "lr": 0.001,
                               "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01}},
     0.6345, 3, 0.01),
]


def run(name, optimizer, max_norm, init_seed, grad_scale):
    sizes = [int(np.prod(s)) for _, s in TENSORS]
    n = sum(sizes)
    flat = ((uniform(init_seed, n) - 0.5) * 2).astype(np.float32)
    params, off = [], 0
    for (_, shape), size in zip(TENSORS, sizes):
        params.append(torch.tensor(flat[off:off + size]).reshape(shape).requires_grad_(True))
        off += size
    o = optimizer
    if o["kind"] == "KIND_SGD":
        opt = torch.optim.SGD(params, lr=o["lr"], momentum=o["sgd"]["momentum"], foreach=False)
    else:
        a = o["adam"]
        cls = torch.optim.Adam if o["kind"] == "KIND_ADAM" else torch.optim.AdamW
        opt = cls(params, lr=o["lr"], betas=(a["beta1"], a["beta2"]), eps=a["eps"],
                  weight_decay=a.get("weight_decay", 0.0), foreach=False)
    norms, clipped = [], []
    for w in range(WINDOWS):
        grads = [((uniform(init_seed * 1000003 + w * 1009 + k + 1, n) - 0.5) * grad_scale * (k + 1))
                 .astype(np.float32) for k in range(WORKERS)]
        samples = sum(1 + (w + k) % 3 for k in range(WORKERS))
        off = 0
        for p, size in zip(params, sizes):
            total = torch.tensor(grads[0][off:off + size])
            for k in range(1, WORKERS):
                total = total + torch.tensor(grads[k][off:off + size])
            p.grad = (total / float(samples)).reshape(p.shape)
            off += size
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        norms.append(f32_bits(norm.item()))
        clipped.append(bool(max_norm / (norm.item() + 1e-6) < 1.0))
        opt.step()
    final = np.concatenate([p.detach().numpy().reshape(-1) for p in params]).astype("<f4")
    job = {
        "job_id": name,
        "model": {"tensors": [{"name": t, "shape": s} for t, s in TENSORS]},
        "optimizer": optimizer,
        "window": {"num_workers": WORKERS, "micro_batches": 1},
        "reduction": "REDUCTION_MEAN_OVER_SAMPLES",
        "clipping": {"max_norm": max_norm},
        "total_steps": WINDOWS,
    }
    return {"name": name, "job": job, "init_seed": str(init_seed), "grad_scale": grad_scale, "norm_bits": norms,
            "clipped": clipped, "params_sha256": hashlib.sha256(final.tobytes()).hexdigest(),
            "head": [float(x) for x in final[:8]]}


def main():
    assert torch.__version__.startswith("1.13"), torch.__version__
    doc = {"generator": "torch " + torch.__version__ + " tests/golden/gen_clip_golden.py",
           "cases": [run(*c) for c in CASES]}
    for c in doc["cases"]:
        print(c["name"], "clipped", sum(c["clipped"]), "of", WINDOWS,
              [round(struct.unpack("<f", struct.pack("<I", b))[0], 4) for b in c["norm_bits"]])
    text = json.dumps(doc, indent=1) + "\n"
    if "--check" in sys.argv:
        with open(OUT_PATH) as f:
            if f.read() != text:
                sys.exit("clip_golden.json differs from what torch computes now")
        print("clip_golden.json matches")
        return
    with open(OUT_PATH, "w") as f:
        f.write(text)
    print("wrote", OUT_PATH)


if __name__ == "__main__":
    main()
