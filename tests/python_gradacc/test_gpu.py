"""gradacc.torch on a CUDA device (tests/gpu/run.sh runs this on a GPU machine; without one every test skips, saying so).

* fp32: the CNN and the transformer on the GPU, 2 ranks sharing it (threads
  of this process) x uneven micro-batches, equal to one PyTorch process on
  the same GPU summing the same micro-batches (models.same_sums' arithmetic)
  within FP32_TOLERANCE per tensor.
* Mixed precision: bf16 autocast, and fp16 autocast with a
  ``torch.amp.GradScaler("cuda")`` driven by injected overflows, equal to
  one process with the same autocast and scaler within AMP_TOLERANCE, with
  the identical sequence of skipped windows and scales.
* The copy: with ``worker.last_micro_batch()`` each window's device-to-host
  copy runs during its last backward pass; what ``step()`` still waits for
  (``copy_wait_ms``, the copy time not hidden) is printed per window
  (median) against the copy without overlap.
* Throughput: samples/s of gradacc (2 ranks) against one process that
  accumulates the same windows, as a ratio (printed: a measurement, never
  a gate).
The CPU side of all of this (staging, overlapped bucket copies, bf16
autocast, loss scaling) runs in the default tier: test_torch_staging.py,
test_loss_scaling.py.
"""
import contextlib
import statistics
import threading
import time
import unittest

import numpy as np
import torch
import torch.nn.functional as F

import harness
import models

import gradacc
import gradacc.torch

CUDA = torch.cuda.is_available()
FP32_TOLERANCE = 1e-5
AMP_TOLERANCE = 1e-4
WINDOWS = 10
INIT_SCALE = 2.0 ** 10
INJECTED = {(2, 0, 0), (5, 1, 1), (6, 0, 0)}  # (window, rank, micro-batch) whose loss is multiplied by Inf


def autocast_of(dtype):
    return torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def rank_slots(t, rank, k):
    return [idx for idx in models.window_slots(t)[rank * k:(rank + 1) * k] if len(idx)]


def train_rank(address, model, rank, world, k, results, dtype=None, scaler=False, mark_last=True):
    device = torch.device("cuda")
    m, opt = models.fresh(model, "adamw", seed=100 + rank)
    m.to(device)
    x, y = (v.to(device) for v in models.dataset(model))
    sc = torch.amp.GradScaler("cuda", init_scale=1.0, growth_interval=3) if scaler else None
    worker = gradacc.torch.connect(m, opt, server=address, rank=rank, world_size=world, connect_timeout_s=60,
                                   window_timeout_s=300, scaler=sc)
    waits, sequence, samples = [], [], 0
    start = time.perf_counter()
    while not worker.done:
        t = worker.version
        slots = rank_slots(t, rank, k)
        before = sc.get_scale() if sc is not None else None
        for j, idx in enumerate(slots):
            if mark_last and j == len(slots) - 1:
                worker.last_micro_batch()
            i = torch.from_numpy(idx).to(device)
            with autocast_of(dtype):
                loss = F.cross_entropy(m(x[i]), y[i])
            if (t, rank, j) in INJECTED and scaler:
                loss = loss * float("inf")
            (sc.scale(loss) if sc is not None else loss).backward()
            samples += len(idx)
        result = worker.step(allow_empty=worker.micro_batches == 0)
        waits.append(worker.copy_wait_ms)
        sequence.append((before, bool(result.skipped)))
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    results[rank] = {"params": {n: p.detach().cpu().numpy().copy() for n, p in m.named_parameters()},
                     "waits": waits, "sequence": sequence, "samples": samples, "seconds": elapsed}
    worker.close()


def one_process(model, windows, dtype=None, scaler=False, world=2, k=4):
    """One process on the GPU, each window's gradient summed as gradacc sums it (n_k x each micro-batch's)."""
    device = torch.device("cuda")
    m, opt = models.fresh(model, "adamw")
    m.to(device)
    x, y = (v.to(device) for v in models.dataset(model))
    sc = torch.amp.GradScaler("cuda", init_scale=INIT_SCALE, growth_interval=3) if scaler else None
    sequence, samples = [], 0
    start = time.perf_counter()
    for t in range(windows):
        acc = [torch.zeros_like(p) for p in m.parameters()]
        total = 0
        before = sc.get_scale() if sc is not None else None
        for rank in range(world):
            for j, idx in enumerate(rank_slots(t, rank, k)):
                m.zero_grad(set_to_none=True)
                i = torch.from_numpy(idx).to(device)
                with autocast_of(dtype):
                    loss = F.cross_entropy(m(x[i]), y[i])
                if (t, rank, j) in INJECTED and scaler:
                    loss = loss * float("inf")
                (sc.scale(loss) if sc is not None else loss).backward()
                for a, p in zip(acc, m.parameters()):
                    a += p.grad * len(idx)
                total += len(idx)
        for a, p in zip(acc, m.parameters()):
            p.grad = a / total
        samples += total
        if sc is not None:
            sc.step(opt)
            sc.update()
            sequence.append((before, sc.get_scale() < before))
        else:
            opt.step()
            sequence.append((None, False))
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {n: p.detach().cpu().numpy().copy() for n, p in m.named_parameters()}, sequence, samples / elapsed


@unittest.skipUnless(CUDA, "no CUDA device here (torch.cuda.is_available() is False): the GPU checks run on a GPU "
                     "machine through tests/gpu/run.sh; their CPU side runs in test_torch_staging and "
                     "test_loss_scaling")
class GpuTest(harness.ServerTestCase):

    @classmethod
    def setUpClass(cls):
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        print(f"gpu: {torch.cuda.get_device_name(0)}, PyTorch {torch.__version__}, CUDA {torch.version.cuda}",
              flush=True)

    def run_job(self, model, windows, scaler=False, **options):
        folder = harness.temp_dir(f"gpu-{model}")
        extra = {"scaler": {"init_scale": INIT_SCALE, "growth_interval": 3}} if scaler else {}
        job = models.write_job(folder, model, "adamw", 2, 4, total_steps=windows, **extra)
        server = self.start_server(folder, [f"--job={job}", f"--output={folder}/final.safetensors"])
        results, errors = {}, []

        def body(rank):
            try:
                train_rank(server.address, model, rank, 2, 4, results, scaler=scaler, **options)
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=body, args=(r,)) for r in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        if errors:
            raise errors[0]
        self.assertEqual(server.stop(), 0, server.log())
        return results

    def check(self, got, want, tolerance, what):
        errors = harness.relative_errors(got, want)
        worst = max(errors, key=errors.get)
        print(f"gpu {what}: worst per-tensor relative error {errors[worst]:.2e} ({worst})", flush=True)
        self.assertLessEqual(errors[worst], tolerance, errors)

    def test_fp32_models_equal_one_process_on_the_gpu(self):
        for model in ("cnn", "transformer"):
            with self.subTest(model=model):
                results = self.run_job(model, WINDOWS)
                want, _, _ = one_process(model, WINDOWS)
                self.check(results[0]["params"], want, FP32_TOLERANCE, f"fp32 {model}")
                waits = [w for r in (0, 1) for w in results[r]["waits"][1:]]
                print(f"gpu fp32 {model}: copy not hidden {statistics.median(waits):.3f} ms per window (median)",
                      flush=True)

    def test_bf16_autocast(self):
        results = self.run_job("cnn", WINDOWS, dtype=torch.bfloat16)
        want, _, _ = one_process("cnn", WINDOWS, dtype=torch.bfloat16)
        self.check(results[0]["params"], want, AMP_TOLERANCE, "bf16 autocast cnn")

    def test_fp16_gradscaler_skips_and_scales(self):
        results = self.run_job("cnn", WINDOWS, dtype=torch.float16, scaler=True)
        want, sequence, _ = one_process("cnn", WINDOWS, dtype=torch.float16, scaler=True)
        for rank in (0, 1):
            got = [(s, k) for s, k in results[rank]["sequence"]]
            self.assertEqual(got, sequence, f"rank {rank}")
        self.assertTrue(any(k for _, k in sequence), "the test must skip windows")
        self.check(results[0]["params"], want, AMP_TOLERANCE, "fp16 + GradScaler cnn")

    def test_copy_overlap_and_throughput(self):
        windows = 30
        overlapped = self.run_job("cnn", windows)
        at_end = self.run_job("cnn", windows, mark_last=False)
        _, _, single = one_process("cnn", windows)
        hidden = statistics.median(w for r in (0, 1) for w in overlapped[r]["waits"][1:])
        plain = statistics.median(w for r in (0, 1) for w in at_end[r]["waits"][1:])
        rate = sum(overlapped[r]["samples"] for r in (0, 1)) / max(overlapped[r]["seconds"] for r in (0, 1))
        print(f"gpu copy: not hidden {hidden:.3f} ms per window with last_micro_batch(), {plain:.3f} ms copied "
              f"at the window's end; samples/s gradacc 2 ranks {rate:.0f} vs one process {single:.0f} "
              f"(ratio {rate / single:.2f})", flush=True)


if __name__ == "__main__":
    unittest.main()
