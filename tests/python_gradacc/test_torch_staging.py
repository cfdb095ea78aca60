"""gradacc.torch's staging mode and CPU bf16 autocast.

* Staging (``connect(..., staging=True)``: each ``.grad`` a tensor of
  gradacc.torch's own, one flat buffer, copied into the window's buffer at
  the window's end: what CUDA parameters always get, run here on CPU
  tensors) gives the bits of the view mode (each ``.grad`` a view of the
  window's buffer), for the CNN and a transformer, 2 ranks x 4 uneven
  micro-batches on shared memory and 1 x 8 on gRPC.
* CPU ``torch.autocast(dtype=torch.bfloat16)`` with float32 parameters
  equals one PyTorch process running the same micro-batches under the same
  autocast, each micro-batch's gradient weighted by its samples and summed
  in gradacc's order (models.same_sums' arithmetic): per tensor relative
  error <= BF16_TOLERANCE (the server's division and the optimizer are
  float32 operations in another order than torch's: rounding, not bf16, is
  the floor).
"""
import unittest

import numpy as np
import torch
import torch.nn.functional as F

import harness
import models

import gradacc
import gradacc.torch

WINDOWS = 6
BF16_TOLERANCE = 1e-6


def same_bits(a, b):
    return set(a) == set(b) and all(np.array_equal(a[n].view(np.uint32), b[n].view(np.uint32)) for n in a)


class StagingTest(harness.ServerTestCase):

    def run_job(self, model, world, k, options):
        folder = harness.temp_dir(f"staging-{model}-{world}x{k}")
        job = models.write_job(folder, model, "adamw", world, k, total_steps=WINDOWS)
        server = self.start_server(folder, [f"--job={job}", f"--output={folder}/final.safetensors"])
        results = models.train_threads(server.address, model, "adamw", world, k, options=options)
        self.assertEqual(server.stop(), 0, server.log())
        final, _ = gradacc.load_safetensors(f"{folder}/final.safetensors")
        for rank in range(world):
            self.assertTrue(same_bits(results[rank], final), f"rank {rank} differs from the server")
        self.results = results
        return final

    def test_staging_gives_the_bits_of_views(self):
        for model in ("cnn", "transformer"):
            for world, k, shm in ((2, 4, True), (1, 8, False)):
                with self.subTest(model=model, geometry=f"{world}x{k}", shared_memory=shm):
                    view = self.run_job(model, world, k, {"shared_memory": shm})
                    staged = self.run_job(model, world, k, {"shared_memory": shm, "staging": True})
                    self.assertTrue(same_bits(view, staged), f"{model}: staging and views give other bits")


    def test_copies_overlapped_with_the_last_backward_give_the_same_bits(self):
        """worker.last_micro_batch(): buckets copied by post-accumulate-grad hooks during the last pass."""
        from gradacc.torch_staging import _OVERLAP
        for model in ("cnn", "transformer"):
            with self.subTest(model=model):
                view = self.run_job(model, 2, 4, {"shared_memory": True})
                staged = self.run_job(model, 2, 4, {"shared_memory": True, "staging": True, "mark_last": True,
                                                    "bucket_mb": 0.004})
                self.assertTrue(same_bits(view, staged), f"{model}: overlapped copies give other bits")
                for rank in range(2):
                    o = self.results[f"overlap{rank}"]
                    self.assertGreater(o["buckets"], 2, "the test must cut the model into several buckets")
                    if _OVERLAP:
                        # Every window's copy ran during its last backward
                        # pass, most buckets before that pass ended.
                        self.assertEqual(o["overlapped_windows"], WINDOWS, o)
                        self.assertGreater(o["early_copies"], WINDOWS, o)
                    else:
                        self.assertEqual(o["overlapped_windows"], 0, o)
                if not _OVERLAP:
                    print(f"PyTorch {torch.__version__} has no post-accumulate-grad hooks: the copy runs at the "
                          "window's end (the same bits); the Debian 13 tier runs the overlapped copies", flush=True)


class AutocastTest(harness.ServerTestCase):

    def test_cpu_bf16_autocast_equals_one_process(self):
        torch.set_num_threads(1)
        folder = harness.temp_dir("autocast")
        job = models.write_job(folder, "mlp", "adamw", 1, 8, total_steps=WINDOWS)
        server = self.start_server(folder, [f"--job={job}", f"--output={folder}/final.safetensors"])
        m, opt = models.fresh("mlp", "adamw", seed=77)
        x, y = models.dataset("mlp")
        worker = gradacc.torch.connect(m, opt, server=server.address, rank=0, world_size=1, connect_timeout_s=20,
                                       window_timeout_s=60)
        while not worker.done:
            for idx in models.window_slots(worker.version):
                if len(idx):
                    i = torch.from_numpy(idx)
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        loss = F.cross_entropy(m(x[i]), y[i])
                    self.assertEqual(loss.dtype, torch.float32)
                    loss.backward()
            worker.step()
        worker.close()
        self.assertEqual(server.stop(), 0, server.log())
        final, _ = gradacc.load_safetensors(f"{folder}/final.safetensors")
        want = models.same_sums("mlp", models.OPTIMIZERS["adamw"], windows=WINDOWS, autocast=torch.bfloat16)
        errors = harness.relative_errors(final, want)
        print(f"bf16 autocast: worst per-tensor relative error {max(errors.values()):.2e}", flush=True)
        self.assertLessEqual(max(errors.values()), BF16_TOLERANCE, errors)
        # The autocast really computed in bf16: float32 gives other numbers.
        self.assertGreater(max(harness.relative_errors(final, models.same_sums(
            "mlp", models.OPTIMIZERS["adamw"], windows=WINDOWS)).values()), 1e-4)


if __name__ == "__main__":
    unittest.main()
