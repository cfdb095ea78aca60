#!/usr/bin/python3
"""Generate tests/golden/optimizer_golden.json: PyTorch reference trajectories.

What it produces
----------------
A JSON document in protobuf's JSON mapping of ``gradacc.test.GoldenSet``
(tests/golden/golden.proto).  Each ``GoldenCase`` is one JobSpec
configuration (optimizer / LR schedule / reduction / clipping) run for
NUM_WINDOWS windows on a tiny model of two float32 tensors, "w" [3, 4] and
"b" [4] (16 floats, flattened in that order).  For every window it records
each worker's contribution (gradient SUM, sample count, loss sum), the
learning rate PyTorch used for that window's step, and the flattened
parameters after the step.

Per window the script does exactly what gradacc's server must do, in float32:

  total = c0 + c1 + c2                    (summed in worker order)
  MEAN_OVER_SAMPLES:       g = total / (sum of the sample counts)
  MEAN_OVER_CONTRIBUTIONS: g = total / (number of contributions)
  SUM:                     g = total
  if max_norm > 0: torch.nn.utils.clip_grad_norm_([w, b], max_norm)
  lr = optimizer.param_groups[0]['lr']    (recorded, read BEFORE the step)
  optimizer.step()                        (real torch.optim SGD / Adam / AdamW,
                                           foreach=False: single-tensor path)
  scheduler.step()                        (real torch.optim.lr_scheduler)

Schedules: constant = no scheduler; STEP = StepLR; COSINE = CosineAnnealingLR;
warmup = LinearLR(start_factor, 1.0, total_iters=warmup_steps), alone for a
constant kind, else SequentialLR([LinearLR, StepLR|CosineAnnealingLR],
milestones=[warmup_steps]).

Everything is seeded (torch.Generator, seed = crc32 of the case name), so
re-running produces byte-identical output.

How to run
----------
Needs Debian's torch 1.13.1, which only the system interpreter sees::

    /usr/bin/python3 tests/golden/gen_optimizer_golden.py            # writes the file
    /usr/bin/python3 tests/golden/gen_optimizer_golden.py --check    # compare only

Run from anywhere; the output path is relative to this script.  The script
also prints, per case, how many steps clipped and the largest relative
difference between torch's LR and the closed form in job.proto.
"""

import json
import math
import os
import sys
import warnings
import zlib

import torch

OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "optimizer_golden.json")
# Debian's python3-torch 1.13.1+dfsg reports torch.__version__ == "1.13.0a0".
assert torch.__version__.startswith("1.13"), "expected torch 1.13.1, got " + torch.__version__
GENERATOR = "torch 1.13.1 tests/golden/gen_optimizer_golden.py"

NUM_WORKERS = 3
NUM_WINDOWS = 24
TENSORS = [("w", [3, 4]), ("b", [4])]
NUMEL = sum(math.prod(s) for _, s in TENSORS)

ADAM_DEFAULTS = dict(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False)
SGD_DEFAULTS = dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0)


def sgd(lr, **kw):
    o = dict(SGD_DEFAULTS)
    o.update(kw)
    return ("KIND_SGD", lr, o)


def adam(lr, kind="KIND_ADAM", **kw):
    o = dict(ADAM_DEFAULTS)
    o.update(kw)
    return (kind, lr, o)


def adamw(lr, **kw):
    return adam(lr, kind="KIND_ADAMW", **kw)


def sched(kind="KIND_CONSTANT", step_size=0, gamma=0.0, t_max=0, eta_min=0.0,
          warmup_steps=0, warmup_start_factor=0.0):
    return dict(kind=kind, step_size=step_size, gamma=gamma, t_max=t_max,
                eta_min=eta_min, warmup_steps=warmup_steps,
                warmup_start_factor=warmup_start_factor)


MOS = "REDUCTION_MEAN_OVER_SAMPLES"
MOC = "REDUCTION_MEAN_OVER_CONTRIBUTIONS"
SUM = "REDUCTION_SUM"

# (name, optimizer, schedule, reduction, max_norm)
CASES = [
    ("sgd_plain", sgd(0.1), sched(), MOS, 0.0),
    ("sgd_momentum", sgd(0.05, momentum=0.9), sched(), MOS, 0.0),
    ("sgd_momentum_dampening", sgd(0.05, momentum=0.9, dampening=0.3), sched(), MOS, 0.0),
    ("sgd_nesterov", sgd(0.05, momentum=0.9, dampening=0.0, nesterov=True), sched(), MOS, 0.0),
    ("sgd_weight_decay", sgd(0.05, momentum=0.9, weight_decay=0.01), sched(), MOS, 0.0),
    ("adam", adam(0.01), sched(), MOS, 0.0),
    ("adam_weight_decay", adam(0.01, weight_decay=0.05), sched(), MOS, 0.0),
    ("adam_amsgrad", adam(0.01, amsgrad=True), sched(), MOS, 0.0),
    ("adam_betas_eps", adam(0.01, beta1=0.8, beta2=0.99, eps=1e-6), sched(), MOS, 0.0),
    ("adamw", adamw(0.01, weight_decay=0.01), sched(), MOS, 0.0),
    ("adamw_amsgrad", adamw(0.01, weight_decay=0.01, amsgrad=True), sched(), MOS, 0.0),
    ("clip_sgd_momentum", sgd(0.05, momentum=0.9), sched(), MOS, 0.5),
    ("clip_adam", adam(0.01), sched(), MOS, 0.5),
    ("clip_never", sgd(0.05, momentum=0.9), sched(), MOS, 1000.0),
    # max_norm near the median reduced-gradient norm: clips on some steps only.
    ("clip_sometimes", sgd(0.05, momentum=0.9), sched(), MOS, 4.0),
    ("sched_step_sgd_momentum", sgd(0.1, momentum=0.9),
     sched("KIND_STEP", step_size=5, gamma=0.5), MOS, 0.0),
    ("sched_cosine_adam", adam(0.01),
     sched("KIND_COSINE", t_max=24, eta_min=0.001), MOS, 0.0),
    ("sched_warmup_sgd", sgd(0.1),
     sched("KIND_CONSTANT", warmup_steps=6, warmup_start_factor=0.1), MOS, 0.0),
    ("sched_warmup_cosine_adamw", adamw(0.01, weight_decay=0.01),
     sched("KIND_COSINE", t_max=19, eta_min=0.001, warmup_steps=5,
           warmup_start_factor=0.1), MOS, 0.0),
    ("sched_warmup_step_adam", adam(0.01),
     sched("KIND_STEP", step_size=5, gamma=0.5, warmup_steps=5,
           warmup_start_factor=0.2), MOS, 0.0),
    ("reduction_mean_over_contributions", sgd(0.01, momentum=0.9), sched(), MOC, 0.0),
    ("reduction_sum", sgd(0.002, momentum=0.9), sched(), SUM, 0.0),
]


def closed_form_lr(lr, s, t):
    """job.proto's LrSchedule formula, in double."""
    w = s["warmup_steps"]
    if t < w:
        sf = s["warmup_start_factor"]
        return lr * (sf + (1.0 - sf) * t / w)
    tp = t - w
    if s["kind"] == "KIND_STEP":
        return lr * s["gamma"] ** (tp // s["step_size"])
    if s["kind"] == "KIND_COSINE":
        r = s["eta_min"] / lr
        return lr * (r + (1.0 - r) * (1.0 + math.cos(math.pi * tp / s["t_max"])) / 2.0)
    return lr


def make_optimizer(params, opt):
    kind, lr, o = opt
    if kind == "KIND_SGD":
        return torch.optim.SGD(params, lr=lr, momentum=o["momentum"],
                               dampening=o["dampening"], nesterov=o["nesterov"],
                               weight_decay=o["weight_decay"], foreach=False)
    cls = torch.optim.Adam if kind == "KIND_ADAM" else torch.optim.AdamW
    return cls(params, lr=lr, betas=(o["beta1"], o["beta2"]), eps=o["eps"],
               weight_decay=o["weight_decay"], amsgrad=o["amsgrad"], foreach=False)


def make_scheduler(optimizer, s):
    """torch's own schedulers; None for a constant schedule without warmup."""
    def main_scheduler():
        if s["kind"] == "KIND_STEP":
            return torch.optim.lr_scheduler.StepLR(optimizer, step_size=s["step_size"],
                                                   gamma=s["gamma"])
        if s["kind"] == "KIND_COSINE":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=s["t_max"],
                                                              eta_min=s["eta_min"])
        return None

    if s["warmup_steps"] == 0:
        return main_scheduler()
    warm = torch.optim.lr_scheduler.LinearLR(optimizer,
                                             start_factor=s["warmup_start_factor"],
                                             end_factor=1.0,
                                             total_iters=s["warmup_steps"])
    main = main_scheduler()
    if main is None:
        return warm
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, main],
                                                 milestones=[s["warmup_steps"]])


def floats(t):
    vals = t.detach().to(torch.float32).flatten().tolist()
    for v in vals:
        assert math.isfinite(v), "non-finite value"
    return vals


def job_json(name, opt, s, reduction, max_norm):
    kind, lr, o = opt
    optimizer = {"kind": kind, "lr": lr}
    if kind == "KIND_SGD":
        optimizer["sgd"] = {"momentum": o["momentum"], "dampening": o["dampening"],
                            "nesterov": o["nesterov"], "weightDecay": o["weight_decay"]}
    else:
        optimizer["adam"] = {"beta1": o["beta1"], "beta2": o["beta2"], "eps": o["eps"],
                             "weightDecay": o["weight_decay"], "amsgrad": o["amsgrad"]}
    return {
        "jobId": name,
        "model": {"tensors": [{"name": n, "shape": list(sh)} for n, sh in TENSORS]},
        "optimizer": optimizer,
        "schedule": {"kind": s["kind"], "stepSize": s["step_size"], "gamma": s["gamma"],
                     "tMax": s["t_max"], "etaMin": s["eta_min"],
                     "warmupSteps": s["warmup_steps"],
                     "warmupStartFactor": s["warmup_start_factor"]},
        "window": {"numWorkers": NUM_WORKERS},
        "reduction": reduction,
        "clipping": {"maxNorm": max_norm},
        "totalSteps": NUM_WINDOWS,
    }


def run_case(name, opt, s, reduction, max_norm):
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    init = (torch.randn(NUMEL, generator=gen, dtype=torch.float32) * 0.5).to(torch.float32)
    params = []
    off = 0
    for _, shape in TENSORS:
        n = math.prod(shape)
        params.append(torch.nn.Parameter(init[off:off + n].clone().view(*shape)))
        off += n
    optimizer = make_optimizer(params, opt)
    scheduler = make_scheduler(optimizer, s)

    windows = []
    clipped = 0
    max_lr_rel = 0.0
    for t in range(NUM_WINDOWS):
        # A per-window "true" per-sample gradient plus per-sample noise; each
        # worker pushes the SUM over its samples.
        base = torch.randn(NUMEL, generator=gen, dtype=torch.float32)
        samples = torch.randint(1, 10, (NUM_WORKERS,), generator=gen).tolist()
        contribs = []
        grads = []
        for k in range(NUM_WORKERS):
            n = samples[k]
            noise = torch.randn(n, NUMEL, generator=gen, dtype=torch.float32) * 0.5
            c = (base * float(n) + noise.sum(dim=0)).to(torch.float32)
            loss = torch.rand(n, generator=gen, dtype=torch.float32).add(0.5).sum()
            grads.append(c)
            contribs.append({"worker": k, "samples": n, "lossSum": float(loss.item()),
                             "grad": floats(c)})

        total = grads[0].clone()
        for c in grads[1:]:
            total = total + c
        if reduction == MOS:
            g = total / sum(samples)
        elif reduction == MOC:
            g = total / len(grads)
        else:
            g = total
        assert g.dtype == torch.float32

        off = 0
        for p, (_, shape) in zip(params, TENSORS):
            n = math.prod(shape)
            p.grad = g[off:off + n].clone().view(*shape)
            off += n
        if max_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            if float(norm) + 1e-6 > max_norm:
                clipped += 1

        lr = optimizer.param_groups[0]["lr"]
        ref = closed_form_lr(opt[1], s, t)
        max_lr_rel = max(max_lr_rel, abs(lr - ref) / abs(ref))
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        windows.append({
            "contributions": contribs,
            "lr": float(lr),
            "params": floats(torch.cat([p.detach().flatten() for p in params])),
        })

    case = {
        "name": name,
        "job": job_json(name, opt, s, reduction, max_norm),
        "initialParams": floats(init),
        "windows": windows,
    }
    stats = {"clipped": clipped, "max_lr_rel": max_lr_rel,
             "final_abs_max": max(abs(v) for v in windows[-1]["params"])}
    return case, stats


def main():
    torch.set_num_threads(1)
    # SequentialLR calls scheduler.step(0) at the milestone, which warns.
    warnings.filterwarnings("ignore", category=UserWarning,
                            module="torch.optim.lr_scheduler")
    cases = []
    for spec in CASES:
        case, st = run_case(*spec)
        cases.append(case)
        print("%-36s clipped=%2d/%d  max|lr-closed|/lr=%.3g  max|param|=%.3f"
              % (spec[0], st["clipped"], NUM_WINDOWS, st["max_lr_rel"],
                 st["final_abs_max"]), file=sys.stderr)
    text = json.dumps({"generator": GENERATOR, "cases": cases}, indent=1) + "\n"
    if "--check" in sys.argv[1:]:
        with open(OUT_PATH) as f:
            same = f.read() == text
        print("identical" if same else "DIFFERENT", file=sys.stderr)
        return 0 if same else 1
    with open(OUT_PATH, "w") as f:
        f.write(text)
    print("wrote %s (%d cases)" % (OUT_PATH, len(cases)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
