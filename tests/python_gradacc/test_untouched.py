"""Parameters without gradients follow torch.optim: a tensor no micro-batch of any rank reached is not stepped.

A model with a branch no forward uses (``never``) and one that only rank 1
uses, only in windows t % 3 == 1 (``sometimes``); 2 ranks x uneven
micro-batches (2-4 samples, 2 or 3 a window), 10 windows, SGD (momentum,
weight decay) and AdamW (weight decay): every tensor within TOLERANCE
(relative) of one PyTorch process that trains each window's samples as one
batch and zeroes with ``set_to_none=True`` (so torch skips what got no
gradient, advancing neither momentum, Adam's moments nor the tensor's own
step count). ``never`` does not move at all. The same run with the server
SIGKILLed twice (mid-push, after a publish) and restarted from its
checkpoints is bit-identical to the undisturbed one (each tensor's step
count is in the checkpoint). The issue's repro: one rank, AdamW(lr=0.01,
weight_decay=0.1), ``never`` unused, 2 windows: 0 movement.
"""
import threading
import unittest

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import json
import os

import harness

import gradacc
import gradacc.torch

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "untouched_worker.py")
WINDOWS = 10
TOLERANCE = 1e-6
OPTIMIZERS = {
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-2),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, eps=1e-7),
}


class Branchy(nn.Module):

    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(12, 16)
        self.sometimes = nn.Linear(16, 16)
        self.never = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x, use_sometimes=False):
        h = torch.tanh(self.trunk(x))
        if use_sometimes:
            h = h + torch.relu(self.sometimes(h))
        return self.head(h)


def uses_sometimes(t, rank):
    return rank == 1 and t % 3 == 1


def micro_batches(t, rank):
    g = torch.Generator().manual_seed(3000 + 100 * t + rank)
    out = []
    for m in range(2 + (t + rank) % 2):
        n = 2 + (t + rank + m) % 3
        out.append((torch.randn((n, 12), generator=g), torch.randint(0, 4, (n,), generator=g)))
    return out


def make(optimizer, seed=5):
    torch.manual_seed(seed)
    model = Branchy()
    return model, OPTIMIZERS[optimizer](model.parameters())


def params_of(model):
    return {n: p.detach().numpy().copy() for n, p in model.named_parameters()}


def same_bits(a, b):
    return set(a) == set(b) and all(np.array_equal(a[n].view(np.uint32), b[n].view(np.uint32)) for n in a)


def reference(optimizer, world=2, windows=WINDOWS):
    torch.set_num_threads(1)
    model, opt = make(optimizer)
    for t in range(windows):
        opt.zero_grad(set_to_none=True)
        outs, ys = [], []
        for rank in range(world):
            for x, y in micro_batches(t, rank):
                outs.append(model(x, use_sometimes=uses_sometimes(t, rank)))
                ys.append(y)
        F.cross_entropy(torch.cat(outs), torch.cat(ys)).backward()
        opt.step()
    return params_of(model)


def train_rank(address, optimizer, rank, world, results, windows=None, options=None):
    torch.set_num_threads(1)
    model, opt = make(optimizer, seed=60 + rank)  # the job's parameters replace these
    worker = gradacc.torch.connect(model, opt, server=address, rank=rank, world_size=world, connect_timeout_s=60,
                                   window_timeout_s=180, **(options or {}))
    while not worker.done and (windows is None or worker.version < windows):
        t = worker.version
        for x, y in micro_batches(t, rank):
            F.cross_entropy(model(x, use_sometimes=uses_sometimes(t, rank)), y).backward()
        worker.step()
    results[rank] = params_of(model)
    worker.close()


class UntouchedTest(harness.ServerTestCase):

    def run_job(self, optimizer, world=2, windows=WINDOWS, lives=([],), name="untouched", mpirun=False):
        """Trains the job through the server lives in `lives` (all but the last end by a failpoint's SIGKILL)."""
        folder = harness.temp_dir(f"{name}-{optimizer}")
        self.folder = folder
        model, opt = make(optimizer)
        job, _ = gradacc.torch.write_job(f"{folder}/job.textproto", model, opt, workers=world, micro_batches=2,
                                         micro_batch_size=3, total_steps=windows, job_id="untouched")
        base = [f"--job={job}", f"--output={folder}/final.safetensors", f"--checkpoint_dir={folder}/ckpt"]
        if mpirun:
            server = self.start_server(folder, base + list(lives[0]))
            code, out = harness.mpirun(world, [harness.PYTHON, WORKER, f"--server={server.address}",
                                               f"--optimizer={optimizer}", "--hierarchical=1"], 300)
            self.assertEqual(code, 0, f"{out}\n{server.log()}")
            self.assertEqual(server.stop(), 0, server.log())
            return gradacc.load_safetensors(f"{folder}/final.safetensors")[0], server.log()
        results = {}
        _, logs = self.run_ranks_through_lives(
            folder, base, lives, world, lambda address, rank: train_rank(address, optimizer, rank, world, results))
        final, _ = gradacc.load_safetensors(f"{folder}/final.safetensors")
        for rank in range(world):
            self.assertTrue(same_bits(results[rank], final), f"rank {rank} differs from the server")
        return final, logs

    def test_untouched_tensors_follow_torch_optim(self):
        for optimizer in OPTIMIZERS:
            with self.subTest(optimizer=optimizer):
                got, _ = self.run_job(optimizer)
                want = reference(optimizer)
                errors = harness.relative_errors(got, want)
                print(f"untouched, {optimizer}: worst per-tensor relative error {max(errors.values()):.2e} "
                      f"({max(errors, key=errors.get)})", flush=True)
                self.assertLessEqual(max(errors.values()), TOLERANCE, errors)
                initial = params_of(make(optimizer)[0])
                for name in ("never.weight", "never.bias"):
                    np.testing.assert_array_equal(got[name], initial[name], err_msg=f"{name} moved")
                self.assertFalse(np.array_equal(got["sometimes.weight"], initial["sometimes.weight"]))
                # The step ledger names what each step left alone.
                unstepped = {}
                with open(f"{self.folder}/ckpt/ledger.jsonl") as f:
                    for line in f:
                        record = json.loads(line)
                        names = record.get("unstepped_tensors", record.get("unsteppedTensors", []))
                        unstepped[int(record["step"])] = sorted(names)
                for step in range(1, WINDOWS + 1):
                    t = step - 1
                    want_names = ["never.bias", "never.weight"]
                    if not any(uses_sometimes(t, r) for r in range(2)):
                        want_names = sorted(want_names + ["sometimes.bias", "sometimes.weight"])
                    self.assertEqual(unstepped.get(step), want_names, f"step {step}")

    def test_bit_identical_across_server_kills(self):
        want, _ = self.run_job("adamw", name="untouched-undisturbed")
        got, logs = self.run_job("adamw", lives=(["--kill_at=push:4:1"], ["--kill_at=after_publish:7"], []),
                                 name="untouched-killed")
        for point in ("push:4:1", "after_publish:7"):
            self.assertIn(f"failpoint {point} reached", logs)
        self.assertTrue(same_bits(got, want), "the killed run differs from the undisturbed one")

    def test_a_hierarchical_group_pushes_what_any_of_its_ranks_touched(self):
        # Only rank 1 uses `sometimes`; rank 0 pushes for both: the group's
        # list must leave `sometimes` touched in those windows.
        flat, _ = self.run_job("adamw", name="untouched-flat")
        grouped, _ = self.run_job("adamw", name="untouched-hierarchical", mpirun=True)
        self.assertTrue(same_bits(grouped, flat), "the hierarchical run differs from the flat one")

    def test_never_used_layer_does_not_move(self):
        """The issue's repro: AdamW(lr=0.01, weight_decay=0.1), 1 rank, 2 windows, `never` unused."""
        folder = harness.temp_dir("never")
        torch.manual_seed(8)
        model = Branchy()
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
        before = params_of(model)
        job, _ = gradacc.torch.write_job(f"{folder}/job.textproto", model, opt, workers=1, micro_batches=2,
                                         micro_batch_size=3, total_steps=2, job_id="never")
        server = self.start_server(folder, [f"--job={job}", f"--output={folder}/final.safetensors"])
        worker = gradacc.torch.connect(model, opt, server=server.address, rank=0, world_size=1,
                                       connect_timeout_s=20, window_timeout_s=60)
        while not worker.done:
            for x, y in micro_batches(worker.version, 0):
                F.cross_entropy(model(x), y).backward()
            worker.step()
        worker.close()
        self.assertEqual(server.stop(), 0, server.log())
        after = params_of(model)
        for name in ("never.weight", "never.bias", "sometimes.weight", "sometimes.bias"):
            self.assertEqual(float(np.abs(after[name] - before[name]).max()), 0.0, name)
        self.assertGreater(float(np.abs(after["trunk.weight"] - before["trunk.weight"]).max()), 0.0)

    def test_cpp_test_clients_that_never_touch_a_tensor(self):
        """gradacc_test_client --untouched=1 (C++ Client::SetUntouched) on both of its workers: with AdamW's
        weight decay every stepped tensor moves, the untouched one keeps its initial bits (read by a third,
        Python worker that contributes nothing and touches nothing)."""
        folder = harness.temp_dir("untouched-cpp")
        with open(f"{folder}/job.textproto", "w") as f:
            f.write("""
job_id: "untouched-cpp"
model {
  tensors { name: "w" shape: [30, 7] init { uniform { low: -0.5 high: 0.5 } } }
  tensors { name: "b" shape: [7] init { uniform { low: -0.5 high: 0.5 } } }
}
optimizer { kind: KIND_ADAMW lr: 0.01 adam { weight_decay: 0.1 } }
window { num_workers: 3 micro_batches: 2 }
total_steps: 6
seed: 9
""")
        server = self.start_server(folder, [f"--job={folder}/job.textproto", f"--output={folder}/final.safetensors"])
        outputs = {}

        def cpp(k):
            outputs[k] = harness.run([harness.TEST_CLIENT_BIN, f"--server={server.address}", f"--worker={k}",
                                      "--untouched=1", f"--shared_memory={'true' if k else 'false'}"], 120)

        threads = [threading.Thread(target=cpp, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        observer = gradacc.connect(server.address, 2, connect_timeout_s=20, window_timeout_s=60)
        initial = {name: np.array(observer.param(name), copy=True) for name in ("w", "b")}
        while not observer.done:
            observer.add_micro_batch(0, 0.0)
            observer.set_untouched(["w", "b"])
            observer.step()
        observer.close()
        for t in threads:
            t.join(120)
        for k in range(2):
            self.assertEqual(outputs.get(k, (None, ""))[0], 0, outputs.get(k))
        self.assertEqual(server.stop(), 0, server.log())
        final, _ = gradacc.load_safetensors(f"{folder}/final.safetensors")
        np.testing.assert_array_equal(final["b"].view(np.uint32), initial["b"].view(np.uint32))
        self.assertFalse(np.array_equal(final["w"], initial["w"]))

    def test_untouched_list_is_validated(self):
        folder = harness.temp_dir("untouched-bad")
        model, opt = make("sgd_momentum")
        job, _ = gradacc.torch.write_job(f"{folder}/job.textproto", model, opt, workers=1, micro_batches=1,
                                         micro_batch_size=3, total_steps=2, job_id="untouched-bad")
        server = self.start_server(folder, [f"--job={job}"])
        client = gradacc.connect(server.address, 0, connect_timeout_s=20)
        with self.assertRaises(gradacc.UsageError) as e:
            client.set_untouched([99])
        self.assertEqual(e.exception.reason, "ERROR_REASON_TENSOR_INDEX")
        client.set_untouched(["never.weight", "never.bias", 1])  # names or indices, any order
        client.close()
        server.stop()


if __name__ == "__main__":
    unittest.main()
