"""gradacc.torch under mpirun: BatchNorm buffers follow rank 0, and the Fashion-MNIST example runs.

* Buffers (``named_buffers()``: BatchNorm running statistics) are not
  gradients: at the end of every window every rank takes rank 0's values
  (MPI broadcast, DDP's ``broadcast_buffers`` once per window). Two ranks
  trained on data with other statistics hold other buffers before
  ``step()`` and rank 0's after it, and the same parameters.
* Without mpirun, a model with buffers and more than one rank is refused
  (there is no way to broadcast them) with a clear error.
* worker/python/examples/fashion_mnist_cnn.py: --write_job, then 2 ranks
  under mpirun on 1024 training samples for one epoch: progress lines, the
  server's status table, and the test accuracy on the last line.
"""
import os
import re
import unittest

import numpy as np
import torch

import harness
import gradacc
import gradacc.torch

HERE = os.path.dirname(os.path.abspath(__file__))
BN_WORKER = os.path.join(HERE, "bn_worker.py")
EXAMPLE = os.path.join(harness.ROOT, "worker", "python", "examples", "fashion_mnist_cnn.py")
WINDOWS = 4


class BuffersTest(harness.ServerTestCase):

    def test_batchnorm_buffers_follow_rank_0(self):
        import bn_worker
        folder = harness.temp_dir("bn")
        job = f"{folder}/job.textproto"
        model, optimizer = bn_worker.make_model()
        gradacc.torch.write_job(job, model, optimizer, workers=2, micro_batches=2, micro_batch_size=8,
                                total_steps=WINDOWS, job_id="bn")
        server = self.start_server(folder, [f"--job={job}"])
        code, out = harness.mpirun(2, [harness.PYTHON, BN_WORKER, f"--server={server.address}", f"--out={folder}"],
                                   180)
        self.assertEqual(code, 0, out)
        self.assertEqual(server.stop(), 0, server.log())
        r0, r1 = (np.load(f"{folder}/rank{r}.npz") for r in range(2))
        names = sorted({k.split("_", 1)[1] for k in r0.files if k.startswith("before0_")})
        self.assertEqual(names, ["1.num_batches_tracked", "1.running_mean", "1.running_var"])
        for t in range(WINDOWS):
            for name in names:
                want = r0[f"before{t}_{name}"]
                np.testing.assert_array_equal(r0[f"after{t}_{name}"], want, err_msg=f"rank 0 {name} window {t}")
                np.testing.assert_array_equal(r1[f"after{t}_{name}"], want, err_msg=f"rank 1 {name} window {t}")
            # The ranks' own statistics differed: the broadcast is what made them equal.
            self.assertFalse(np.allclose(r0[f"before{t}_1.running_mean"], r1[f"before{t}_1.running_mean"]))
        for key in (k for k in r0.files if k.startswith("param_")):
            np.testing.assert_array_equal(r0[key], r1[key], err_msg=key)

    def test_buffers_without_mpirun_are_refused(self):
        import bn_worker
        folder = harness.temp_dir("bn-no-mpi")
        job = f"{folder}/job.textproto"
        model, optimizer = bn_worker.make_model()
        gradacc.torch.write_job(job, model, optimizer, workers=2, micro_batches=2, micro_batch_size=8,
                                total_steps=WINDOWS, job_id="bn")
        server = self.start_server(folder, [f"--job={job}"])
        before = {n: b.clone() for n, b in model.named_buffers()}
        env = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith(("OMPI_COMM_WORLD", "PMI_", "PMIX_"))}
        try:
            with self.assertRaises(gradacc.UsageError) as e:
                gradacc.torch.connect(model, optimizer, server=server.address, rank=0, world_size=2,
                                      connect_timeout_s=20)
        finally:
            os.environ.update(env)
        self.assertIn("launch it with mpirun", str(e.exception))
        self.assertIn("broadcast_buffers=False", str(e.exception))
        for n, b in model.named_buffers():
            self.assertTrue(torch.equal(b, before[n]), n)
        self.assertEqual(int(server.status().get("step", 0)), 0)


class ExampleTest(harness.ServerTestCase):

    def test_fashion_mnist_example_under_mpirun(self):
        folder = harness.temp_dir("example")
        job = f"{folder}/job.textproto"
        geometry = ["--workers=2", "--micro_batches=2", "--micro_batch_size=16", "--epochs=1", "--train_limit=1024"]
        code, out = harness.run([harness.PYTHON, EXAMPLE, f"--write_job={job}", *geometry], 120)
        self.assertEqual(code, 0, out)
        self.assertIn("16 windows (1 epochs of 1024)", out)
        server = self.start_server(folder, [f"--job={job}", f"--output={folder}/final.safetensors"])
        code, out = harness.mpirun(2, [harness.PYTHON, EXAMPLE, f"--server={server.address}", "--train_limit=1024",
                                       "--test_limit=2000", "--log_every=4"], 300)
        self.assertEqual(code, 0, out)
        self.assertEqual(server.stop(), 0, server.log())
        lines = [l for l in out.splitlines() if l.strip()]
        self.assertIn("training job 'fashion-cnn'", out)
        self.assertRegex(out, r"step +16/16 \| epoch 1 \| loss [0-9.]+ \| [0-9]+ samples/s")
        self.assertIn("epoch 1 (step 16): test accuracy", out)
        self.assertIn("fashion-cnn", out[out.index("trained 16 windows"):])  # the status table
        last = re.fullmatch(r"final test accuracy: ([0-9.]+)% after 16 windows", lines[-1])
        self.assertIsNotNone(last, lines[-1])
        self.assertGreater(float(last.group(1)), 40.0)  # 10% is chance
        final, _ = gradacc.load_safetensors(f"{folder}/final.safetensors")
        self.assertEqual(sorted(final), ["conv1.bias", "conv1.weight", "conv2.bias", "conv2.weight", "fc1.bias",
                                         "fc1.weight", "fc2.bias", "fc2.weight"])


if __name__ == "__main__":
    unittest.main()
