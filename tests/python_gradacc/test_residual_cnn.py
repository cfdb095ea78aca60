"""A residual CNN with BatchNorm on shared memory: finite gradients, PyTorch's numbers, gRPC's bits.

The model of the PyTorch 2 report (residual_cnn.py: conv + BatchNorm
stem, a residual block of two conv + BatchNorm layers, pooling, a linear
head; AdamW with a LinearLR warm-up then cosine), 3 ranks under mpirun with
micro-batches 5,7 / 3 / 6,2,4, 15 windows, with 1 and with 2 torch threads
per rank:

* no .grad is ever non-finite on any rank (each rank checks after every
  backward);
* the server's final parameters equal one PyTorch process on the same
  micro-batches (BatchNorm statistics per micro-batch) within
  TOLERANCE per tensor;
* the shared-memory run is bit-identical to the same run over gRPC, and
  every rank holds the server's result.

GRADACC_RESIDUAL_REPEATS=N repeats every configuration N times (default 1;
the note of the fix ran 20).
"""
import os
import unittest

import numpy as np

import harness
import residual_cnn

import gradacc
import gradacc.torch

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "residual_worker.py")
TOLERANCE = 1e-5
REPEATS = int(os.environ.get("GRADACC_RESIDUAL_REPEATS", "1"))


def same_bits(a, b):
    return set(a) == set(b) and all(np.array_equal(a[n].view(np.uint32), b[n].view(np.uint32)) for n in a)


class ResidualCnnTest(harness.ServerTestCase):

    def run_job(self, threads, shared_memory, repeat):
        folder = harness.temp_dir(f"residual-{threads}-{shared_memory}-{repeat}")
        job = residual_cnn.write_job(f"{folder}/job.textproto")
        server = self.start_server(folder, [f"--job={job}", f"--output={folder}/final.safetensors"])
        code, out = harness.mpirun(len(residual_cnn.MICRO_BATCHES),
                                   [harness.PYTHON, WORKER, f"--server={server.address}", f"--out={folder}",
                                    f"--threads={threads}", f"--shared_memory={int(shared_memory)}"], 300,
                                   extra=["-x", f"OMP_NUM_THREADS={threads}"])
        self.assertEqual(code, 0, f"{out}\n{server.log()}")
        want_transport = "shared memory" if shared_memory else "gRPC"
        self.assertEqual(out.count(f": {want_transport}"), len(residual_cnn.MICRO_BATCHES), out)
        self.assertEqual(server.stop(), 0, server.log())
        final, _ = gradacc.load_safetensors(f"{folder}/final.safetensors")
        for rank in range(len(residual_cnn.MICRO_BATCHES)):
            got = np.load(f"{folder}/rank{rank}.npz", allow_pickle=True)
            self.assertEqual(list(got["not_finite"]), [], f"rank {rank}, {threads} threads, {want_transport}")
            params = {k[len("param_"):]: got[k] for k in got.files if k.startswith("param_")}
            self.assertTrue(same_bits(params, final), f"rank {rank} holds other parameters than the server")
        return final

    def test_shared_memory_equals_torch_and_grpc(self):
        want = residual_cnn.reference()
        for threads in (1, 2):
            for repeat in range(REPEATS):
                with self.subTest(threads=threads, repeat=repeat):
                    shm = self.run_job(threads, True, repeat)
                    grpc = self.run_job(threads, False, repeat)
                    errors = harness.relative_errors(shm, want)
                    worst = max(errors.values())
                    print(f"residual CNN, {threads} thread(s), run {repeat}: worst per-tensor relative error "
                          f"{worst:.2e} ({max(errors, key=errors.get)}); shared memory == gRPC: "
                          f"{same_bits(shm, grpc)}", flush=True)
                    self.assertLessEqual(worst, TOLERANCE, errors)
                    self.assertTrue(same_bits(shm, grpc), "shared memory and gRPC give other bits")


if __name__ == "__main__":
    unittest.main()
