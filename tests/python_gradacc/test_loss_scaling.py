"""fp16 dynamic loss scaling: the server applies GradScaler's rules to each window, the same on every rank.

2 ranks x uneven micro-batches, AdamW, 12 windows, a job with
``loss_scaling`` (init 2^10, growth interval 3). Overflows are injected
(a micro-batch's loss times Inf, so its gradients are Inf/NaN) in chosen
windows: on one rank only, on both, in consecutive windows. Checked:

* every rank sees the same skip decisions and the same scale sequence, and
  they are those of a reference implementation of GradScaler's rules
  (``RefScaler`` below: torch's ``_amp_update_scale_`` in f32);
* the parameters equal, within TOLERANCE (relative), one PyTorch process
  that trains each window's samples as one batch and leaves out the skipped
  windows (no optimizer step: Adam's step count does not advance) — the
  scales are powers of two, so unscaling is exact;
* the step ledger marks the skipped windows and their scales;
* SIGKILLs of the server (mid-push, after a publish) and restarts from its
  checkpoints give the same bits and the same scale sequence;
* with a real ``torch.amp.GradScaler("cpu")`` (PyTorch >= 2.3: the Debian 13
  tier; skipped on 1.13, saying so): ``connect(..., scaler=)`` keeps the
  scaler's scale equal to the server's and the run equals one process using
  that GradScaler (``scaler.step``/``update``), skip for skip, scale for scale.
"""
import json
import os
import unittest

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import harness

import gradacc
import gradacc.torch

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loss_scaling_worker.py")
WINDOWS = 12
TOLERANCE = 1e-6
INIT_SCALE = 2.0 ** 10
GROWTH_INTERVAL = 3
# (window, rank, micro-batch) whose loss is multiplied by Inf.
INJECTED = {(1, 0, 0), (5, 1, 1), (6, 0, 0), (6, 1, 0), (7, 1, 0)}


def overflows(t):
    return any(w == t for w, _, _ in INJECTED)


class RefScaler:
    """GradScaler's rules (torch/aten _amp_update_scale_): f32 scale, double factors, growth kept only if finite."""

    def __init__(self, init_scale=INIT_SCALE, growth_factor=2.0, backoff_factor=0.5, growth_interval=GROWTH_INTERVAL):
        self.scale = np.float32(init_scale)
        self.tracker = 0
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval

    def update(self, found_inf):
        if found_inf:
            self.scale = np.float32(np.float64(self.scale) * self.backoff_factor)
            self.tracker = 0
            return
        self.tracker += 1
        if self.tracker == self.growth_interval:
            grown = np.float32(np.float64(self.scale) * self.growth_factor)
            if np.isfinite(grown):
                self.scale = grown
            self.tracker = 0


def reference_sequence(windows=WINDOWS):
    """[(scale the window is computed with, skipped)] per window, and the scale after the last."""
    ref, out = RefScaler(), []
    for t in range(windows):
        out.append((float(ref.scale), overflows(t)))
        ref.update(overflows(t))
    return out, float(ref.scale)


class Net(nn.Module):

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(10, 24)
        self.fc2 = nn.Linear(24, 5)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def micro_batches(t, rank):
    g = torch.Generator().manual_seed(7000 + 100 * t + rank)
    out = []
    for m in range(2 + (t + rank) % 2):
        n = 2 + (t + rank + m) % 3
        out.append((torch.randn((n, 10), generator=g), torch.randint(0, 5, (n,), generator=g)))
    return out


def make(seed=11):
    torch.manual_seed(seed)
    model = Net()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)


def params_of(model):
    return {n: p.detach().numpy().copy() for n, p in model.named_parameters()}


def same_bits(a, b):
    return set(a) == set(b) and all(np.array_equal(a[n].view(np.uint32), b[n].view(np.uint32)) for n in a)


def reference(world=2, windows=WINDOWS):
    """One process, each window as one batch; an overflowing window is left out (no step)."""
    torch.set_num_threads(1)
    model, opt = make()
    for t in range(windows):
        opt.zero_grad(set_to_none=True)
        if overflows(t):
            continue
        xs, ys = zip(*[b for rank in range(world) for b in micro_batches(t, rank)])
        F.cross_entropy(model(torch.cat(xs)), torch.cat(ys)).backward()
        opt.step()
    return params_of(model)


def reference_with_gradscaler(world=2, windows=WINDOWS):
    """One process with a real CPU GradScaler (PyTorch >= 2.3): the loop gradacc replaces."""
    torch.set_num_threads(1)
    model, opt = make()
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE, growth_interval=GROWTH_INTERVAL)
    sequence = []
    for t in range(windows):
        batches = [(rank, m, b) for rank in range(world) for m, b in enumerate(micro_batches(t, rank))]
        total = sum(len(b[1]) for _, _, b in batches)
        before = scaler.get_scale()
        for rank, m, (x, y) in batches:
            loss = F.cross_entropy(model(x), y) * (len(y) / total)  # the window's mean, as one batch
            if (t, rank, m) in INJECTED:
                loss = loss * float("inf")
            scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        sequence.append((before, scaler.get_scale() < before))  # an overflow always backs off
    return params_of(model), sequence, scaler.get_scale()


def train_rank(address, rank, world, results, use_scaler=False, options=None):
    torch.set_num_threads(1)
    model, opt = make(seed=90 + rank)  # the job's parameters replace these
    scaler = None
    if use_scaler:
        scaler = torch.amp.GradScaler("cpu", init_scale=1.0, growth_interval=GROWTH_INTERVAL)
    worker = gradacc.torch.connect(model, opt, server=address, rank=rank, world_size=world, connect_timeout_s=60,
                                   window_timeout_s=180, scaler=scaler, **(options or {}))
    seen = []
    while not worker.done:
        t = worker.version
        before = scaler.get_scale() if scaler is not None else worker.loss_scale
        for m, (x, y) in enumerate(micro_batches(t, rank)):
            loss = F.cross_entropy(model(x), y)
            if (t, rank, m) in INJECTED:
                loss = loss * float("inf")
            (scaler.scale(loss) if scaler is not None else worker.scale(loss)).backward()
        result = worker.step()
        seen.append((t, float(before), bool(result.skipped), float(result.loss_scale)))
    results[rank] = (params_of(model), seen, worker.loss_scale)
    worker.close()


class LossScalingTest(harness.ServerTestCase):

    def run_job(self, world=2, lives=([],), name="loss-scaling", use_scaler=False, mpirun=False):
        folder = harness.temp_dir(name)
        self.folder = folder
        model, opt = make()
        job, _ = gradacc.torch.write_job(
            f"{folder}/job.textproto", model, opt, workers=world, micro_batches=2, micro_batch_size=3,
            total_steps=WINDOWS, job_id="loss-scaling",
            scaler={"init_scale": INIT_SCALE, "growth_interval": GROWTH_INTERVAL})
        base = [f"--job={job}", f"--output={folder}/final.safetensors", f"--checkpoint_dir={folder}/ckpt"]
        if mpirun:
            server = self.start_server(folder, base + list(lives[0]))
            code, out = harness.mpirun(world, [harness.PYTHON, WORKER, f"--server={server.address}",
                                               f"--out={folder}"], 300)
            self.assertEqual(code, 0, f"{out}\n{server.log()}")
            self.assertEqual(server.stop(), 0, server.log())
            results = {}
            for rank in range(world):
                with open(f"{folder}/rank-{rank}.json") as f:
                    r = json.load(f)
                results[rank] = (None, [tuple(s) for s in r["seen"]], r["final_scale"])
            return gradacc.load_safetensors(f"{folder}/final.safetensors")[0], results, server.log()
        results = {}
        _, logs = self.run_ranks_through_lives(
            folder, base, lives, world,
            lambda address, rank: train_rank(address, rank, world, results, use_scaler=use_scaler))
        final, _ = gradacc.load_safetensors(f"{folder}/final.safetensors")
        for rank in range(world):
            self.assertTrue(same_bits(results[rank][0], final), f"rank {rank} differs from the server")
        return final, results, logs

    def check_sequence(self, results, world=2):
        want, last = reference_sequence()
        for rank in range(world):
            _, seen, final_scale = results[rank]
            # (window, its scale, skipped, next window's scale)
            got = [(t, scale, skipped) for t, scale, skipped, _ in seen]
            self.assertEqual(got, [(t, s, k) for t, (s, k) in enumerate(want)], f"rank {rank}")
            nexts = [n for _, _, _, n in seen]
            self.assertEqual(nexts, [s for s, _ in want[1:]] + [last], f"rank {rank}")
            self.assertEqual(final_scale, last)

    def test_skips_and_scales_follow_gradscaler_on_every_rank(self):
        got, results, _ = self.run_job()
        self.check_sequence(results)
        errors = harness.relative_errors(got, reference())
        print(f"loss scaling: {sum(overflows(t) for t in range(WINDOWS))} of {WINDOWS} windows skipped; worst "
              f"per-tensor relative error vs one process {max(errors.values()):.2e}", flush=True)
        self.assertLessEqual(max(errors.values()), TOLERANCE, errors)
        records = {}
        with open(f"{self.folder}/ckpt/ledger.jsonl") as f:
            for line in f:
                r = json.loads(line)
                records[int(r["step"])] = r
        want, _ = reference_sequence()
        for t, (scale, skipped) in enumerate(want):
            r = records[t + 1]
            self.assertEqual(bool(r.get("skipped", False)), skipped, f"window {t}: {r}")
            self.assertEqual(float(r.get("lossScale", r.get("loss_scale"))), scale, f"window {t}")

    def test_bit_identical_across_server_kills(self):
        want, _, _ = self.run_job(name="loss-scaling-undisturbed")
        got, results, logs = self.run_job(lives=(["--kill_at=push:5:1"], ["--kill_at=after_publish:7"], []),
                                          name="loss-scaling-killed")
        for point in ("push:5:1", "after_publish:7"):
            self.assertIn(f"failpoint {point} reached", logs)
        self.assertTrue(same_bits(got, want), "the killed run differs from the undisturbed one")
        self.check_sequence(results)

    def test_a_hierarchical_group_shares_skips_and_scales(self):
        # Rank 0 pushes the group's sum; rank 1 learns the outcome over MPI.
        flat, _, _ = self.run_job(name="loss-scaling-flat")
        grouped, results, _ = self.run_job(name="loss-scaling-hierarchical", mpirun=True)
        self.check_sequence(results)
        self.assertTrue(same_bits(grouped, flat), "the hierarchical run differs from the flat one")

    def test_a_real_gradscaler_kept_in_step(self):
        if not (hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler")):
            self.skipTest(f"PyTorch {torch.__version__} has no CPU GradScaler (torch.amp.GradScaler needs >= 2.3): "
                          "the Debian 13 tier (tests/run.sh --torch2) runs this")
        want, want_sequence, want_last = reference_with_gradscaler()
        got, results, _ = self.run_job(name="loss-scaling-gradscaler", use_scaler=True)
        for rank in range(2):
            _, seen, final_scale = results[rank]
            self.assertEqual([(s, k) for _, s, k, _ in seen], want_sequence, f"rank {rank}")
            self.assertEqual(final_scale, want_last)
        errors = harness.relative_errors(got, want)
        print(f"loss scaling vs a real GradScaler: worst per-tensor relative error {max(errors.values()):.2e}",
              flush=True)
        self.assertLessEqual(max(errors.values()), TOLERANCE, errors)

    def test_a_disabled_or_foreign_scaler_is_refused(self):
        folder = harness.temp_dir("loss-scaling-refusals")
        model, opt = make()
        job, _ = gradacc.torch.write_job(f"{folder}/job.textproto", model, opt, workers=1, micro_batches=1,
                                         micro_batch_size=3, total_steps=2, job_id="loss-scaling",
                                         scaler={"init_scale": INIT_SCALE, "growth_interval": GROWTH_INTERVAL})
        server = self.start_server(folder, [f"--job={job}"])

        class Disabled:
            def is_enabled(self):
                return False

        class Other:
            _init_scale, _scale = INIT_SCALE, None

            def is_enabled(self):
                return True

            def get_growth_factor(self):
                return 2.0

            def get_backoff_factor(self):
                return 0.25

            def get_growth_interval(self):
                return GROWTH_INTERVAL

        for scaler, words in ((Disabled(), "disabled"), (Other(), "backoff_factor")):
            with self.assertRaises(gradacc.UsageError) as e:
                gradacc.torch.connect(model, opt, server=server.address, rank=0, world_size=1, connect_timeout_s=20,
                                      scaler=scaler)
            self.assertIn(words, str(e.exception))
        # Without a scaler: worker.scale(loss) and the server's scale.
        worker = gradacc.torch.connect(model, opt, server=server.address, rank=0, world_size=1, connect_timeout_s=20)
        self.assertEqual(worker.loss_scale, INIT_SCALE)
        x, y = micro_batches(0, 0)[0]
        loss = F.cross_entropy(model(x), y)
        self.assertEqual(float(worker.scale(loss)), float(loss) * INIT_SCALE)
        with self.assertRaises(gradacc.UsageError) as e:
            opt.step()
        self.assertIn("scaler.step", str(e.exception))
        worker.close()
        self.assertEqual(server.stop(), 0, server.log())


if __name__ == "__main__":
    unittest.main()
