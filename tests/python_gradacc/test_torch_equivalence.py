"""gradacc.torch equals one big batch in one process.

For the example's CNN and an MLP, 1x8, 2x4 and 4x2 ranks x micro-batches
with uneven micro-batch sizes (some empty) and a short last window (5
samples over 8 slots: some ranks have none), the parameters after 20
windows equal a single-process PyTorch run of the same torch.optim
optimizer on each window's samples as one batch: per-tensor
||p - ref|| / ||ref|| <= 1e-5 (SGD with momentum and dampening, SGD
Nesterov, Adam, AdamW, all with weight decay). Ranks run as threads of the
test (each its own model and gradacc client, on shared memory); the
server's final.safetensors and every rank's model hold the same result.

    GRADACC_EQUIV_MODELS=cnn GRADACC_EQUIV_OPTIMIZERS=adam python3 -m unittest test_torch_equivalence
"""
import os
import unittest

import numpy as np
import torch

import harness
import models

import gradacc

GEOMETRIES = [(1, 8), (2, 4), (4, 2)]
TOLERANCE = 1e-5


def selected(variable, known):
    names = [n for n in os.environ.get(variable, "").split(",") if n]
    return names or list(known)


class EquivalenceTest(harness.ServerTestCase):

    def check(self, model, optimizer):
        want = models.reference(model, optimizer)
        for world, k in GEOMETRIES:
            with self.subTest(model=model, optimizer=optimizer, geometry=f"{world}x{k}"):
                folder = harness.temp_dir(f"equiv-{model}-{optimizer}-{world}x{k}")
                job = models.write_job(folder, model, optimizer, world, k)
                server = self.start_server(folder, [f"--job={job}", f"--output={folder}/final.safetensors"])
                results = models.train_threads(server.address, model, optimizer, world, k)
                self.assertEqual(server.stop(), 0, server.log())
                final, _ = gradacc.load_safetensors(f"{folder}/final.safetensors")
                errors = harness.relative_errors(final, want)
                worst = max(errors.values())
                print(f"{model} {optimizer} {world}x{k}: worst per-tensor relative error {worst:.2e} "
                      f"({max(errors, key=errors.get)}); transport {results['transport0']}", flush=True)
                self.assertLessEqual(worst, TOLERANCE, errors)
                for rank in range(world):
                    for name, value in final.items():
                        np.testing.assert_array_equal(results[rank][name], value,
                                                      err_msg=f"rank {rank} holds other {name} than the server")

    def test_models_and_optimizers(self):
        for model in selected("GRADACC_EQUIV_MODELS", models.EQUIVALENCE_MODELS):
            for optimizer in selected("GRADACC_EQUIV_OPTIMIZERS", models.OPTIMIZERS):
                self.check(model, optimizer)


class DefaultEpsTest(harness.ServerTestCase):
    """Why the optimizers above use eps=1e-7, and what gradacc computes with the default 1e-8.

    An element whose window gradient is below float32's rounding noise of
    the summation (about 5e-9 in the CNN's fc1.weight here) holds noise in
    every summation order, the big batch's included; Adam divides it by
    sqrt(v) + eps, so with eps = 1e-8 and no history in v yet (the first
    windows) that noise becomes a step of a sizeable fraction of lr. Then
    gradacc and the big batch part by ~1.4e-5 on fc1.weight from one
    element (measured), while gradacc equals torch.optim.AdamW fed the
    gradient summed in gradacc's order, which this test holds.
    """

    def test_adamw_default_eps_equals_torch_on_the_same_sums(self):
        folder = harness.temp_dir("equiv-default-eps")
        adamw = lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01)  # noqa: E731
        models.OPTIMIZERS["adamw_default_eps"] = adamw
        try:
            job = models.write_job(folder, "cnn", "adamw_default_eps", 1, 8)
            server = self.start_server(folder, [f"--job={job}", f"--output={folder}/final.safetensors"])
            models.train_threads(server.address, "cnn", "adamw_default_eps", 1, 8)
            self.assertEqual(server.stop(), 0, server.log())
            final, _ = gradacc.load_safetensors(f"{folder}/final.safetensors")
            same = harness.relative_errors(final, models.same_sums("cnn", adamw))
            big = harness.relative_errors(final, models.reference("cnn", "adamw_default_eps"))
        finally:
            del models.OPTIMIZERS["adamw_default_eps"]
        print(f"cnn AdamW eps=1e-8 1x8: worst vs torch on the same sums {max(same.values()):.2e}, "
              f"vs one big batch {max(big.values()):.2e} ({max(big, key=big.get)})", flush=True)
        self.assertLessEqual(max(same.values()), 1e-6, same)


if __name__ == "__main__":
    unittest.main()
