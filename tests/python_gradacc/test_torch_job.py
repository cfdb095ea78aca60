"""gradacc.torch.write_job / job_spec: torch.optim's optimizers as users construct them, on this torch.

* SGD (momentum, Nesterov, weight decay), Adam and AdamW made as a user
  makes them give a job, whatever implementation keys this torch puts into
  their parameter groups (PyTorch 2 adds ``fused``, ``foreach``,
  ``differentiable``, ``capturable``, ... at their defaults); each key of
  the table in gradacc/torch_job.py at a value the server cannot honour is
  refused naming it, and so is a key gradacc does not know.
* ``foreach`` is accepted at any value because torch's multi-tensor and
  per-tensor loops compute the same bits: held here against torch itself.
* Frozen parameters (``requires_grad=False``) in the optimizer are accepted,
  as torch accepts them, and the rest trains to torch's numbers (1e-6);
  missing or foreign tensors and groups with other options are refused
  naming the tensors.
* The files write_job writes are 0600; UsageError carries ERROR_REASON_MISUSE.
"""
import os
import stat
import unittest

import numpy as np
import torch
import torch.nn.functional as F

import harness
import models

import gradacc
import gradacc.torch
from gradacc.torch_job import _EXACT_VALUES

USER_OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-4),
    "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-3),
    "adam_amsgrad": lambda ps: torch.optim.Adam(ps, lr=1e-3, amsgrad=True, weight_decay=1e-2),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01),
}


def mlp():
    torch.manual_seed(1)
    return models.MLP()


class OptionKeysTest(unittest.TestCase):

    def test_optimizers_as_users_construct_them(self):
        for name, make in USER_OPTIMIZERS.items():
            with self.subTest(optimizer=name, torch=torch.__version__):
                opt = make(mlp().parameters())
                spec = gradacc.torch.optimizer_spec(opt)
                group = opt.param_groups[0]
                self.assertEqual(spec["lr"], group["lr"])
                if name.startswith("sgd"):
                    self.assertEqual(spec["kind"], "KIND_SGD")
                    self.assertEqual(spec["sgd"]["nesterov"], group["nesterov"])
                    self.assertEqual(spec["sgd"]["momentum"], group["momentum"])
                else:
                    self.assertEqual(spec["kind"], "KIND_ADAMW" if name == "adamw" else "KIND_ADAM")
                    self.assertEqual(spec["adam"]["amsgrad"], group["amsgrad"])
                implementation = sorted(k for k in group if k in _EXACT_VALUES)
                print(f"torch {torch.__version__} {name}: implementation keys {implementation}", flush=True)

    def test_values_the_server_cannot_honour_are_refused_by_name(self):
        for name in ("sgd_momentum", "adam", "adamw"):
            for key, value in (("fused", True), ("maximize", True), ("differentiable", True),
                               ("capturable", True), ("frobnicate", 1)):
                if name.startswith("sgd") and key == "capturable":
                    continue
                with self.subTest(optimizer=name, key=key):
                    opt = USER_OPTIMIZERS[name](mlp().parameters())
                    opt.param_groups[0][key] = value
                    with self.assertRaises(gradacc.UsageError) as e:
                        gradacc.torch.optimizer_spec(opt)
                    self.assertEqual(e.exception.reason, "ERROR_REASON_UNSUPPORTED")
                    self.assertIn(f"{key}=", str(e.exception))

    def test_implementation_values_that_compute_the_same_are_accepted(self):
        for name in ("sgd_momentum", "adam", "adamw"):
            for key, value in (("foreach", True), ("foreach", False), ("foreach", None), ("fused", None),
                               ("fused", False), ("maximize", False), ("differentiable", False)):
                with self.subTest(optimizer=name, key=key, value=value):
                    opt = USER_OPTIMIZERS[name](mlp().parameters())
                    opt.param_groups[0][key] = value
                    gradacc.torch.optimizer_spec(opt)

    def test_adam_with_decoupled_weight_decay_is_adamw(self):
        opt = torch.optim.Adam(mlp().parameters(), lr=1e-3, weight_decay=0.1)
        opt.param_groups[0]["decoupled_weight_decay"] = True  # torch >= 2.7 has the option
        self.assertEqual(gradacc.torch.optimizer_spec(opt)["kind"], "KIND_ADAMW")
        opt.param_groups[0]["decoupled_weight_decay"] = False
        self.assertEqual(gradacc.torch.optimizer_spec(opt)["kind"], "KIND_ADAM")

    def test_foreach_computes_the_bits_of_the_per_tensor_loop(self):
        for name in ("sgd_momentum", "sgd_nesterov", "adam", "adam_amsgrad", "adamw"):
            with self.subTest(optimizer=name):
                results = []
                for foreach in (False, True):
                    model = mlp()
                    opt = USER_OPTIMIZERS[name](model.parameters())
                    for g in opt.param_groups:
                        g["foreach"] = foreach
                    gen = torch.Generator().manual_seed(4)
                    for _ in range(5):
                        for p in model.parameters():
                            p.grad = torch.randn(p.shape, generator=gen)
                        opt.step()
                    results.append({n: p.detach().numpy().copy() for n, p in model.named_parameters()})
                for n in results[0]:
                    np.testing.assert_array_equal(results[0][n].view(np.uint32), results[1][n].view(np.uint32),
                                                  err_msg=f"{name}: foreach=True and False differ on {n}")


class FrozenParametersTest(harness.ServerTestCase):
    """A frozen first layer in the optimizer: the job holds the rest, which trains to torch's numbers."""

    WINDOWS = 5

    def make(self):
        torch.manual_seed(21)
        model = models.MLP()
        model.fc1.weight.requires_grad_(False)
        model.fc1.bias.requires_grad_(False)
        return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)

    def batches(self, t):
        g = torch.Generator().manual_seed(800 + t)
        return [(torch.randn((n, 20), generator=g), torch.randint(0, 5, (n,), generator=g)) for n in (3, 6)]

    def test_frozen_parameters_in_the_optimizer(self):
        torch.set_num_threads(1)
        model, opt = self.make()
        folder = harness.temp_dir("frozen")
        job, weights = gradacc.torch.write_job(f"{folder}/job.textproto", model, opt, workers=1, micro_batches=2,
                                               micro_batch_size=4, total_steps=self.WINDOWS, job_id="frozen")
        for path in (job, weights):
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)
        server = self.start_server(folder, [f"--job={job}", f"--output={folder}/final.safetensors"])
        trained, topt = self.make()
        worker = gradacc.torch.connect(trained, topt, server=server.address, rank=0, world_size=1,
                                       connect_timeout_s=20, window_timeout_s=60)
        while not worker.done:
            for x, y in self.batches(worker.version):
                F.cross_entropy(trained(x), y).backward()
            worker.step()
        worker.close()
        self.assertEqual(server.stop(), 0, server.log())
        final, _ = gradacc.load_safetensors(f"{folder}/final.safetensors")
        self.assertEqual(sorted(final), ["fc2.bias", "fc2.weight", "out.bias", "out.weight"])

        ref, ropt = self.make()
        for t in range(self.WINDOWS):
            xs, ys = zip(*self.batches(t))
            ropt.zero_grad()
            F.cross_entropy(ref(torch.cat(xs)), torch.cat(ys)).backward()
            ropt.step()
        want = {n: p.detach().numpy() for n, p in ref.named_parameters() if p.requires_grad}
        errors = harness.relative_errors(final, want)
        self.assertLessEqual(max(errors.values()), 1e-6, errors)
        np.testing.assert_array_equal(trained.fc1.weight.detach().numpy(), ref.fc1.weight.detach().numpy())

    def test_refusals_name_the_tensors(self):
        model, _ = self.make()
        missing = torch.optim.SGD([model.fc2.weight, model.out.weight, model.out.bias], lr=0.1)
        with self.assertRaises(gradacc.UsageError) as e:
            gradacc.torch.job_spec(model, missing, workers=1, micro_batches=1, micro_batch_size=1, total_steps=1)
        self.assertIn("fc2.bias", str(e.exception))
        self.assertIn("requires_grad", str(e.exception))
        foreign = torch.optim.SGD(list(model.parameters()) + [torch.nn.Parameter(torch.zeros(7, 3))], lr=0.1)
        with self.assertRaises(gradacc.UsageError) as e:
            gradacc.torch.job_spec(model, foreign, workers=1, micro_batches=1, micro_batch_size=1, total_steps=1)
        self.assertIn("(7, 3)", str(e.exception))
        groups = torch.optim.SGD([{"params": [model.fc2.weight, model.fc2.bias]},
                                  {"params": [model.out.weight, model.out.bias], "lr": 0.5}], lr=0.1)
        with self.assertRaises(gradacc.UsageError) as e:
            gradacc.torch.job_spec(model, groups, workers=1, micro_batches=1, micro_batch_size=1, total_steps=1)
        self.assertIn("out.weight", str(e.exception))
        self.assertIn("['lr']", str(e.exception))
        # A group of frozen parameters only may have any options: torch never steps it.
        frozen_group = torch.optim.SGD([{"params": [model.fc1.weight, model.fc1.bias], "lr": 0.5},
                                        {"params": [p for p in model.parameters() if p.requires_grad]}], lr=0.1)
        spec = gradacc.torch.job_spec(model, frozen_group, workers=1, micro_batches=1, micro_batch_size=1,
                                      total_steps=1)
        self.assertEqual(spec["optimizer"]["lr"], 0.1)

    def test_usage_error_has_its_own_reason(self):
        e = gradacc.UsageError("x")
        self.assertEqual((e.reason, e.code, e.action), ("ERROR_REASON_MISUSE", "FAILED_PRECONDITION",
                                                        "CLIENT_ACTION_FIX_REQUEST"))


if __name__ == "__main__":
    unittest.main()
