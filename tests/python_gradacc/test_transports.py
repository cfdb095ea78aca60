"""Every transport from Python gives the bits the C++ client gives, and survives a server restart.

* gRPC, shared memory and hierarchical (the C++ GroupClient under mpirun):
  Python workers (synthetic.py: tests/test_client.cc's problem in NumPy)
  end with parameters bit-identical to gradacc_test_client's (C++).
* A server SIGKILLed three times mid-run (mid-push, mid-broadcast, between
  windows: its --kill_at failpoints) and restarted on the same port with
  --checkpoint_dir ends, with gradacc.torch workers, bit-identical to an
  undisturbed run, on shared memory and on gRPC.
"""
import os
import threading
import unittest

import numpy as np
import torch
import torch.nn.functional as F

import harness
import models

import gradacc
import gradacc.torch

SYNTHETIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "synthetic.py")

JOB = """
job_id: "py-transports"
model {
  tensors { name: "w" shape: [300, 41] init { uniform { low: -0.5 high: 0.5 } } }
  tensors { name: "b" shape: [41] }
}
optimizer { kind: KIND_ADAM lr: 0.01 }
window { num_workers: 2 micro_batches: 2 }
total_steps: 12
seed: 5
"""


def same_bits(a, b):
    return set(a) == set(b) and all(
        np.array_equal(np.ascontiguousarray(a[n]).view(np.uint32), np.ascontiguousarray(b[n]).view(np.uint32))
        for n in a)


class TransportTest(harness.ServerTestCase):

    def run_job(self, name, start_workers):
        folder = harness.temp_dir(f"transport-{name}")
        with open(f"{folder}/job.textproto", "w") as f:
            f.write(JOB)
        server = self.start_server(folder, [f"--job={folder}/job.textproto",
                                            f"--output={folder}/final.safetensors"])
        outputs = start_workers(server.address)
        status = server.status()
        self.assertEqual(server.stop(), 0, server.log())
        final, _ = gradacc.load_safetensors(f"{folder}/final.safetensors")
        return final, status, outputs

    def python_workers(self, shared_memory):
        def start(address):
            results, threads = {}, []

            def body(k):
                results[k] = harness.run([harness.PYTHON, SYNTHETIC, f"--server={address}", f"--worker={k}",
                                          f"--shared_memory={shared_memory}"], 120)

            # Both at once: each waits for the other's contribution.
            for k in range(2):
                threads.append(threading.Thread(target=body, args=(k,)))
                threads[-1].start()
            for t in threads:
                t.join(180)
            return [results.get(k, (None, "did not finish")) for k in range(2)]
        return start

    def test_python_transports_give_the_cpp_bits(self):
        # Sequential C++ workers would deadlock (each waits for the other):
        # run them in threads too.
        def cpp(address):
            out = {}

            def body(k):
                out[k] = harness.run([harness.TEST_CLIENT_BIN, f"--server={address}", f"--worker={k}",
                                      "--micro_batches=2", "--shared_memory=false"], 120)
            threads = [threading.Thread(target=body, args=(k,)) for k in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(180)
            return [out.get(k, (None, "did not finish")) for k in range(2)]

        want, _, outputs = self.run_job("cpp", cpp)
        for code, output in outputs:
            self.assertEqual(code, 0, output)

        runs = {
            "grpc": self.python_workers(0),
            "shm": self.python_workers(1),
            "hierarchical-shm": lambda a: [harness.mpirun(2, [harness.PYTHON, SYNTHETIC, f"--server={a}",
                                                              "--hierarchical=1", "--shared_memory=1"], 180)],
            "hierarchical-grpc": lambda a: [harness.mpirun(2, [harness.PYTHON, SYNTHETIC, f"--server={a}",
                                                               "--hierarchical=1", "--shared_memory=0"], 180)],
        }
        # Per the server's status (gradacc status --json), by worker.
        expected_transport = {"grpc": ["TRANSPORT_GRPC", "TRANSPORT_GRPC"],
                              "shm": ["TRANSPORT_SHARED_MEMORY", "TRANSPORT_SHARED_MEMORY"],
                              "hierarchical-shm": ["TRANSPORT_SHARED_MEMORY", "TRANSPORT_HIERARCHICAL"],
                              "hierarchical-grpc": ["TRANSPORT_GRPC", "TRANSPORT_HIERARCHICAL"]}
        for name, start in runs.items():
            with self.subTest(transport=name):
                got, status, outputs = self.run_job(name, start)
                for code, output in outputs:
                    self.assertEqual(code, 0, output)
                transports = [w.get("transport", "") for w in sorted(status["workers"], key=lambda w: w["worker"])]
                print(f"{name}: transports per the server: {transports}", flush=True)
                self.assertEqual(transports, expected_transport[name])
                self.assertTrue(same_bits(got, want), f"{name}: parameters differ from the C++ workers'")

KILL_JOB_WORKERS = 3


def kill_batches(t, rank):
    """Worker `rank`'s two micro-batches of window t (uneven, seeded) for the MLP."""
    g = torch.Generator().manual_seed(10_000 + 100 * t + rank)
    out = []
    for m in range(2):
        n = 2 + (t + rank + m) % 4
        out.append((torch.randn((n, 20), generator=g), torch.randint(0, 5, (n,), generator=g)))
    return out


def kill_worker(address, rank, shared_memory, results):
    torch.set_num_threads(1)
    m, opt = models.fresh("mlp", "adam", seed=50 + rank)
    worker = gradacc.torch.connect(m, opt, server=address, rank=rank, world_size=KILL_JOB_WORKERS,
                                   shared_memory=shared_memory, connect_timeout_s=60, window_timeout_s=180)
    recoveries = 0  # rejoins and pushes tried again
    while not worker.done:
        for x, y in kill_batches(worker.version, rank):
            F.cross_entropy(m(x), y).backward()
        result = worker.step()
        recoveries += result.reconnects + result.push_attempts - 1
    results[rank] = ({n: p.detach().numpy().copy() for n, p in m.named_parameters()}, recoveries)
    worker.close()


class ServerKillTest(harness.ServerTestCase):

    def train(self, folder, flags_per_life, shared_memory):
        """Runs the job through the server lives in `flags_per_life` (each but the last ends by a
        failpoint's SIGKILL; the next life starts on the same port)."""
        job = models.write_job(folder, "mlp", "adam", KILL_JOB_WORKERS, 2, total_steps=12)
        base = [f"--job={job}", f"--checkpoint_dir={folder}/ckpt", f"--output={folder}/final.safetensors"]
        server = self.start_server(folder, base + flags_per_life[0])
        results, errors = {}, []

        def body(rank):
            try:
                kill_worker(server.address, rank, shared_memory, results)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=body, args=(r,)) for r in range(KILL_JOB_WORKERS)]
        for t in threads:
            t.start()
        logs = ""
        port = server.port
        for flags in flags_per_life[1:]:
            code = server.wait(120)
            logs += server.log()
            self.assertEqual(code, -9, f"expected the failpoint's SIGKILL:\n{server.log()}")
            server = self.start_server(folder, base + flags, port=port, name=f"server{len(logs)}")
        for t in threads:
            t.join(300)
        self.assertFalse(any(t.is_alive() for t in threads), "workers did not finish")
        if errors:
            raise errors[0]
        status = server.status()
        self.assertEqual(server.stop(), 0, server.log())
        final, _ = gradacc.load_safetensors(f"{folder}/final.safetensors")
        return final, logs + server.log(), status, results

    def test_killed_three_times_gives_the_undisturbed_bits(self):
        for shared_memory in (True, False):
            with self.subTest(shared_memory=shared_memory):
                want, _, _, _ = self.train(harness.temp_dir("undisturbed"), [[]], shared_memory)
                got, logs, status, results = self.train(
                    harness.temp_dir("killed"),
                    [["--kill_at=push:3:2"], ["--kill_at=mid_broadcast:6"], ["--kill_at=after_publish:9"], []],
                    shared_memory)
                for point in ("push:3:2", "mid_broadcast:6", "after_publish:9"):
                    self.assertIn(f"failpoint {point} reached", logs)
                self.assertEqual(int(status.get("serverRestarts", 0)), 3)
                self.assertGreater(sum(r for _, r in results.values()), 0, "no worker rejoined or pushed again")
                self.assertTrue(same_bits(got, want), "parameters after three SIGKILLs differ from the undisturbed run")
                for rank, (params, _) in results.items():
                    self.assertTrue(same_bits(params, want), f"rank {rank}'s model differs from the server's result")


if __name__ == "__main__":
    unittest.main()
