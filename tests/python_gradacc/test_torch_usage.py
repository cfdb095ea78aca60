"""gradacc.torch against the classic mistakes and bad use (issue 14, points 3 and 5).

* zero_grad: ``optimizer.zero_grad()`` and ``model.zero_grad()``, with and
  without ``set_to_none=True``, between ``backward()`` and the end of the
  window raise gradacc.UsageError at once, leave the window's gradients as
  they were and push nothing; ``.grad`` set to None or modified in place by
  hand is caught by ``step()`` before anything is pushed. A loop that never
  calls ``zero_grad()`` gets the one-big-batch result (not the leaking one a
  plain PyTorch loop without ``zero_grad()`` computes); ``zero_grad()`` at a
  window's start is harmless (same bits).
* Bad use: a model whose parameter names or shapes differ from the job's, a
  rank beyond the job's workers (or a world size that is not the job's), an
  unreachable server (bounded), a NaN in a gradient, ending a window twice:
  each raises a gradacc.Error carrying the gRPC code and the reason, and the
  server's step, accepted contributions and open window are unchanged
  (``gradacc status --json``); a correct worker afterwards ends bit-identical
  to a run that never saw the mistake.
"""
import socket
import time
import unittest

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import harness
import models

import gradacc
import gradacc.torch

OPTIMIZER = "sgd_momentum"
WINDOWS = 6
K = 3  # micro-batches per rank and window


def batch(t, rank, m):
    """Micro-batch m of `rank` in window t: uneven sizes, seeded."""
    g = torch.Generator().manual_seed(50_000 + 1000 * t + 10 * rank + m)
    n = 2 + (3 * t + rank + 2 * m) % 5
    return torch.randn((n, 20), generator=g), torch.randint(0, 5, (n,), generator=g)


def snapshot(server):
    """What a refused request must not change: the step, accepted contributions, the open window's count."""
    s = server.status()
    return (int(s.get("step", 0)), int(s.get("contributionsAccepted", 0)),
            int(s.get("window", {}).get("contributionsReceived", 0)))


def params_of(model):
    return {n: p.detach().numpy().copy() for n, p in model.named_parameters()}


def same_bits(a, b):
    return set(a) == set(b) and all(np.array_equal(a[n].view(np.uint32), b[n].view(np.uint32)) for n in a)


def nan_gradient_loss(model, x, y):
    """A finite loss whose gradient in fc2.weight is NaN: 0 * sqrt(u) at u = 0 (0 * inf)."""
    w = model.fc2.weight
    return F.cross_entropy(model(x), y) + 0.0 * torch.sqrt((w - w.detach()).pow(2).sum())


def big_batch_reference(leak=False):
    """One process, each window's samples as one batch; with `leak`, the classic bug (no zero_grad at all)."""
    torch.set_num_threads(1)
    m, opt = models.fresh("mlp", OPTIMIZER)
    for t in range(WINDOWS):
        xs, ys = zip(*(batch(t, 0, k) for k in range(K)))
        if not leak:
            opt.zero_grad()
        F.cross_entropy(m(torch.cat(xs)), torch.cat(ys)).backward()
        opt.step()
    return params_of(m)


class Job:
    """A server running the MLP job (1 worker unless told), started by a ServerTestCase."""

    def __init__(self, case, name, workers=1):
        self.folder = harness.temp_dir(name)
        job = models.write_job(self.folder, "mlp", OPTIMIZER, workers, K, total_steps=WINDOWS)
        self.final = f"{self.folder}/final.safetensors"
        self.server = case.start_server(self.folder, [f"--job={job}", f"--output={self.final}"])
        self.address = self.server.address

    def connect(self, model=None, rank=0, world_size=1, **options):
        torch.set_num_threads(1)
        if model is None:
            model, optimizer = models.fresh("mlp", OPTIMIZER, seed=99)  # the job's parameters replace these
        else:
            optimizer = None
        worker = gradacc.torch.connect(model, optimizer, server=self.address, rank=rank, world_size=world_size,
                                       connect_timeout_s=20, window_timeout_s=60, **options)
        return worker, model, optimizer

    def finish(self):
        """Stops the server; its final parameters."""
        code = self.server.stop()
        if code != 0:
            raise AssertionError(f"server exited with {code}:\n{self.server.log()}")
        return gradacc.load_safetensors(self.final)[0]


def train(worker, model, first_window=None, zero_grad_at_start=None):
    """Trains to the end: K micro-batches a window, no zero_grad unless `zero_grad_at_start` is a callable.

    `first_window(t)`, when given, runs instead of the first backward of window t if it returns True."""
    while not worker.done:
        t = worker.version
        if zero_grad_at_start is not None:
            zero_grad_at_start()
        for k in range(K):
            x, y = batch(t, 0, k)
            F.cross_entropy(model(x), y).backward()
            if first_window is not None and k == 0:
                first_window(t)
        worker.step()
    return params_of(model)


class ZeroGradTest(harness.ServerTestCase):

    def test_never_calling_zero_grad_gives_the_big_batch_result(self):
        job = Job(self, "never-zero-grad")
        worker, model, _ = job.connect()
        got = train(worker, model)
        worker.close()
        final = job.finish()
        self.assertTrue(same_bits(got, final), "the model holds other parameters than the server's result")
        want = big_batch_reference()
        errors = harness.relative_errors(final, want)
        self.assertLessEqual(max(errors.values()), 1e-6, errors)
        # A plain PyTorch loop that forgets zero_grad() computes something else.
        leaked = harness.relative_errors(big_batch_reference(leak=True), want)
        self.assertGreater(max(leaked.values()), 1e-2, leaked)

    def test_zero_grad_inside_a_window_raises_and_changes_nothing(self):
        undisturbed = Job(self, "zero-grad-undisturbed")
        worker, model, _ = undisturbed.connect()
        train(worker, model)
        worker.close()
        want = undisturbed.finish()

        job = Job(self, "zero-grad-mistakes")
        worker, model, optimizer = job.connect()
        calls = {
            "optimizer.zero_grad()": lambda: optimizer.zero_grad(),
            "optimizer.zero_grad(set_to_none=True)": lambda: optimizer.zero_grad(set_to_none=True),
            "model.zero_grad()": lambda: model.zero_grad(),
            "model.zero_grad(set_to_none=True)": lambda: model.zero_grad(set_to_none=True),
        }
        refused = []

        def mistakes(t):
            if t != 2:
                return
            before = snapshot(job.server)
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            for name, call in calls.items():
                with self.assertRaises(gradacc.UsageError, msg=name) as e:
                    call()
                self.assertIn("zero_grad(set_to_none=", str(e.exception))
                self.assertIn("Nothing was pushed", str(e.exception))
                self.assertEqual(e.exception.code, "FAILED_PRECONDITION")
                refused.append(name)
                for n, p in model.named_parameters():
                    self.assertIsNotNone(p.grad, f"{name} set {n}.grad to None")
                    self.assertTrue(torch.equal(p.grad, grads[n]), f"{name} changed {n}.grad")
            self.assertEqual(snapshot(job.server), before)

        # zero_grad() at every window's start (the usual loop) is harmless.
        got = train(worker, model, first_window=mistakes, zero_grad_at_start=optimizer.zero_grad)
        worker.close()
        self.assertEqual(refused, list(calls))
        self.assertTrue(same_bits(job.finish(), want), "the refused zero_grad calls changed the result")
        self.assertTrue(same_bits(got, want))

    def test_grad_cleared_by_hand_is_caught_before_the_push(self):
        for how in ("set_to_none", "zero_", "replaced"):
            with self.subTest(how=how):
                job = Job(self, f"grad-by-hand-{how}")
                worker, model, _ = job.connect()
                x, y = batch(0, 0, 0)
                F.cross_entropy(model(x), y).backward()
                for p in model.parameters():
                    if how == "set_to_none":
                        p.grad = None
                    elif how == "zero_":
                        p.grad.zero_()
                    else:
                        p.grad = torch.zeros_like(p)
                before = snapshot(job.server)
                with self.assertRaises(gradacc.UsageError) as e:
                    worker.step()
                self.assertIn("between backward() and the end of the window", str(e.exception))
                self.assertEqual(worker.version, 0)
                self.assertEqual(snapshot(job.server), before)
                self.assertEqual(before, (0, 0, 0))
                worker.close()
                job.server.stop()


class BadUseTest(harness.ServerTestCase):

    def reference_run(self):
        job = Job(self, "bad-use-reference")
        worker, model, _ = job.connect()
        train(worker, model)
        worker.close()
        return job.finish()

    def assert_unchanged_then_trains(self, job, before, want):
        """The server is where it was; a correct worker then ends with the undisturbed bits."""
        self.assertEqual(snapshot(job.server), before)
        worker, model, _ = job.connect()
        train(worker, model)
        worker.close()
        self.assertTrue(same_bits(job.finish(), want), "the refused request changed the result")

    def test_model_that_differs_from_the_job(self):
        want = self.reference_run()

        class Renamed(models.MLP):
            def __init__(self):
                super().__init__()
                self.head = self.out  # named_parameters() order and names change
                del self.out

            def forward(self, x):
                return self.head(torch.tanh(self.fc2(F.relu(self.fc1(x)))))

        class Wider(models.MLP):
            def __init__(self):
                super().__init__()
                self.fc1, self.fc2 = nn.Linear(20, 48), nn.Linear(48, 16)

        job = Job(self, "bad-model")
        before = snapshot(job.server)
        for cls, expect in ((Renamed, "head.weight"), (Wider, "fc1.weight[48, 20]")):
            with self.subTest(model=cls.__name__):
                model = cls()
                kept = params_of(model)
                with self.assertRaises(gradacc.UsageError) as e:
                    job.connect(model)
                self.assertEqual(e.exception.reason, "ERROR_REASON_MANIFEST")
                self.assertIn("differ from the job's tensors", str(e.exception))
                self.assertIn(expect, str(e.exception))
                self.assertTrue(same_bits(params_of(model), kept), "the job's parameters were installed anyway")
                # The hooks and patches are gone: plain PyTorch works again.
                x, y = batch(0, 0, 0)
                F.cross_entropy(model(x), y).backward()
                model.zero_grad(set_to_none=True)
        self.assert_unchanged_then_trains(job, before, want)

    def test_rank_beyond_the_jobs_workers(self):
        job = Job(self, "bad-rank", workers=2)
        before = snapshot(job.server)
        # Refused by the server: gRPC code and reason from the join.
        with self.assertRaises(gradacc.Error) as e:
            job.connect(rank=2, world_size=3)
        self.assertEqual((e.exception.code, e.exception.reason, e.exception.action),
                         ("INVALID_ARGUMENT", "ERROR_REASON_UNKNOWN_WORKER", "CLIENT_ACTION_FIX_REQUEST"))
        self.assertIn("INVALID_ARGUMENT [ERROR_REASON_UNKNOWN_WORKER", str(e.exception))
        # A world size that is not the job's: refused before any training.
        with self.assertRaises(gradacc.UsageError) as e:
            job.connect(rank=0, world_size=3)
        self.assertIn("the job has 2 workers but this run has 3 ranks", str(e.exception))
        # A rank outside the given world size: refused before the server is asked.
        with self.assertRaises(gradacc.UsageError) as e:
            job.connect(rank=2, world_size=2)
        self.assertEqual(e.exception.reason, "ERROR_REASON_UNKNOWN_WORKER")
        self.assertEqual(snapshot(job.server), before)

    def test_unreachable_server_fails_within_the_connect_timeout(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed again: nothing listens there
        model, optimizer = models.fresh("mlp", OPTIMIZER)
        start = time.monotonic()
        with self.assertRaises(gradacc.Error) as e:
            gradacc.torch.connect(model, optimizer, server=f"127.0.0.1:{port}", rank=0, world_size=1,
                                  connect_timeout_s=2)
        self.assertLess(time.monotonic() - start, 20)
        self.assertEqual((e.exception.code, e.exception.grpc_code, e.exception.action),
                         ("UNAVAILABLE", 14, "CLIENT_ACTION_RETRY"))
        # Nothing of gradacc is left on the model and the optimizer.
        x, y = batch(0, 0, 0)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def test_nan_in_a_gradient(self):
        want = self.reference_run()
        job = Job(self, "bad-nan")
        worker, model, _ = job.connect()
        x, y = batch(0, 0, 0)
        loss = nan_gradient_loss(model, x, y)
        self.assertTrue(torch.isfinite(loss))
        loss.backward()
        w = model.fc2.weight
        self.assertTrue(torch.isnan(w.grad).all())
        before = snapshot(job.server)
        with self.assertRaises(gradacc.Error) as e:
            worker.step()
        self.assertEqual((e.exception.code, e.exception.reason), ("INVALID_ARGUMENT", "ERROR_REASON_NOT_FINITE"))
        self.assertEqual(e.exception.metadata.get("tensor"), "fc2.weight")
        self.assertEqual(worker.version, 0)
        self.assertEqual(int(job.server.status().get("contributionsRejected", 0)), 1)
        worker.close()
        self.assert_unchanged_then_trains(job, before, want)

    def test_the_last_close_puts_tensor_backward_back(self):
        original = torch.Tensor.backward
        job = Job(self, "probe", workers=2)
        first, _, _ = job.connect(rank=0, world_size=2)
        second, _, _ = job.connect(rank=1, world_size=2)
        self.assertIsNot(torch.Tensor.backward, original, "gradacc.torch notes the loss through Tensor.backward")
        first.close(leave=False)
        self.assertIsNot(torch.Tensor.backward, original, "another worker is still attached")
        second.close(leave=False)
        self.assertIs(torch.Tensor.backward, original)
        job.server.stop()

    def test_ending_a_window_twice(self):
        want = self.reference_run()
        job = Job(self, "bad-twice")
        worker, model, _ = job.connect()
        for k in range(K):
            x, y = batch(0, 0, k)
            F.cross_entropy(model(x), y).backward()
        self.assertEqual(worker.step().version, 1)
        before = snapshot(job.server)
        kept = params_of(model)
        with self.assertRaises(gradacc.Error) as e:
            worker.step()
        self.assertEqual((e.exception.code, e.exception.reason), ("FAILED_PRECONDITION",
                                                                  "ERROR_REASON_NOTHING_TO_PUSH"))
        self.assertEqual(e.exception.metadata.get("window"), "1")
        self.assertEqual(worker.version, 1)
        self.assertTrue(same_bits(params_of(model), kept))
        self.assertEqual(snapshot(job.server), before)
        # The same worker carries on to the undisturbed result.
        got = train(worker, model)
        worker.close()
        self.assertTrue(same_bits(got, want))
        self.assertTrue(same_bits(job.finish(), want))


class DiscardTest(harness.ServerTestCase):
    """worker.discard(): the way out after a refusal, bit-identical to a run that never erred."""

    def reference_run(self, workers=1):
        job = Job(self, f"discard-reference-{workers}", workers=workers)
        if workers == 1:
            worker, model, _ = job.connect()
            train(worker, model)
            worker.close()
        else:
            self.train_ranks(job, workers)
        return job.finish()

    def train_ranks(self, job, workers, mistake=None):
        """Every rank in a thread, K micro-batches of batch(t, rank, k) a window; `mistake(rank, t, worker,
        model)` runs after the first backward of each window and may make that window go wrong."""
        errors = []

        def body(rank):
            try:
                worker, model, _ = job.connect(rank=rank, world_size=workers)
                while not worker.done:
                    t = worker.version
                    for k in range(K):
                        x, y = batch(t, rank, k)
                        F.cross_entropy(model(x), y).backward()
                        if k == 0 and mistake is not None:
                            mistake(rank, t, worker, model)
                    worker.step()
                worker.close()
            except BaseException as e:  # reported below
                errors.append(e)

        import threading
        threads = [threading.Thread(target=body, args=(r,)) for r in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertFalse(any(t.is_alive() for t in threads), "ranks did not finish")
        if errors:
            raise errors[0]

    def redo(self, worker, model, t):
        """Discards the open window and computes it again, correctly."""
        worker.discard()
        self.assertEqual((worker.version, worker.micro_batches, worker.samples), (t, 0, 0))
        for p in model.parameters():
            self.assertEqual(int(torch.count_nonzero(p.grad)), 0)
        for k in range(K):
            x, y = batch(t, 0, k)
            F.cross_entropy(model(x), y).backward()

    def test_after_a_nan_refusal(self):
        want = self.reference_run()
        job = Job(self, "discard-nan")
        worker, model, _ = job.connect()
        x, y = batch(0, 0, 0)
        nan_gradient_loss(model, x, y).backward()
        with self.assertRaises(gradacc.Error) as e:
            worker.step()
        self.assertEqual(e.exception.reason, "ERROR_REASON_NOT_FINITE")
        with self.assertRaises(gradacc.Error):
            worker.step()  # the window's gradients are still NaN: refused again until discarded
        self.redo(worker, model, 0)
        worker.step()
        got = train(worker, model)
        worker.close()
        self.assertTrue(same_bits(got, want))
        status = job.server.status()
        self.assertTrue(same_bits(job.finish(), want), "discard() after a NaN refusal changed the result")
        self.assertEqual(int(status.get("contributionsAccepted", 0)), WINDOWS)
        self.assertEqual(int(status.get("contributionsRejected", 0)), 2)

    def test_after_a_caught_grad_change(self):
        want = self.reference_run()
        for how in ("zero_", "set_to_none", "clip"):
            with self.subTest(how=how):
                job = Job(self, f"discard-{how}")
                worker, model, _ = job.connect()
                x, y = batch(0, 0, 0)
                F.cross_entropy(model(x), y).backward()
                if how == "zero_":
                    model.fc1.weight.grad.zero_()
                elif how == "set_to_none":
                    model.fc1.weight.grad = None
                else:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
                with self.assertRaises(gradacc.UsageError) as e:
                    worker.step()
                self.assertEqual(e.exception.reason, "ERROR_REASON_MISUSE")
                self.redo(worker, model, 0)
                worker.step()
                got = train(worker, model)
                worker.close()
                self.assertTrue(same_bits(got, want))
                self.assertTrue(same_bits(job.finish(), want), f"discard() after {how} changed the result")

    def test_a_nan_loss_is_named_and_nothing_is_pushed(self):
        want = self.reference_run()
        job = Job(self, "discard-nan-loss")
        worker, model, _ = job.connect()
        x, y = batch(0, 0, 0)
        F.cross_entropy(model(x), y).backward()
        x, y = batch(0, 0, 1)
        (F.cross_entropy(model(x), y) * float("nan")).backward()
        before = snapshot(job.server)
        with self.assertRaises(gradacc.Error) as e:
            worker.step()
        self.assertEqual((e.exception.code, e.exception.reason), ("INVALID_ARGUMENT", "ERROR_REASON_NOT_FINITE"))
        self.assertEqual((e.exception.metadata.get("tensor"), e.exception.metadata.get("micro_batch")), ("loss", "1"))
        self.assertIn("the loss of micro-batch 1 of window 0 is nan", str(e.exception))
        self.assertEqual(snapshot(job.server), before)
        self.redo(worker, model, 0)
        worker.step()
        train(worker, model)
        worker.close()
        self.assertTrue(same_bits(job.finish(), want))

    def test_exactly_once_while_another_rank_discards(self):
        want = self.reference_run(workers=2)
        job = Job(self, "discard-two-ranks", workers=2)
        discarded = []

        def mistake(rank, t, worker, model):
            # Rank 1 spoils its first micro-batch of windows 1 and 3, while
            # rank 0's push of the window is in (or on its way): it discards
            # and computes the window again.
            if rank == 1 and t in (1, 3):
                for p in model.parameters():
                    p.grad.mul_(3.0)
                with self.assertRaises(gradacc.UsageError):
                    worker.step()
                worker.discard()
                x, y = batch(t, rank, 0)
                F.cross_entropy(model(x), y).backward()
                discarded.append(t)

        self.train_ranks(job, 2, mistake)
        status = job.server.status()
        self.assertEqual(discarded, [1, 3])
        self.assertEqual(int(status.get("contributionsAccepted", 0)), 2 * WINDOWS)
        self.assertEqual(int(status.get("duplicates", 0) or 0), 0)
        self.assertTrue(same_bits(job.finish(), want), "a discard on one rank changed the two-rank result")


if __name__ == "__main__":
    unittest.main()
