"""gradacc.Client: NumPy views without copies, their lifetime, errors, threads, TLS and tokens."""
import os
import socket
import subprocess
import threading
import time
import unittest

import numpy as np

import harness
import synthetic

import gradacc

JOB = """
job_id: "py-client"
model {
  tensors { name: "w" shape: [4, 3] init { uniform { low: -1 high: 1 } } }
  tensors { name: "b" shape: [3] }
}
optimizer { kind: KIND_SGD lr: 0.5 }
window { num_workers: %d micro_batches: 1 }
total_steps: %d
seed: 3
"""


def write_job(folder, workers=1, steps=4):
    path = os.path.join(folder, "job.textproto")
    with open(path, "w") as f:
        f.write(JOB % (workers, steps))
    return path


def wait_for(predicate, timeout=30, what="condition"):
    """Polls `predicate` until true (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached within {timeout} s")


class ViewsTest(harness.ServerTestCase):

    def start(self, shared_memory, workers=1, steps=4, flags=()):
        folder = harness.temp_dir("views")
        server = self.start_server(folder, [f"--job={write_job(folder, workers, steps)}", *flags])
        return server, gradacc.connect(server.address, 0, shared_memory=shared_memory, connect_timeout_s=20)

    def test_views_share_memory_and_go_stale_after_step(self):
        for shared_memory in (True, False):
            with self.subTest(shared_memory=shared_memory):
                server, c = self.start(shared_memory)
                self.assertEqual(c.transport.startswith("shared memory"), shared_memory, c.transport)
                self.assertEqual([(t.name, t.shape) for t in c.tensors], [("w", (4, 3)), ("b", (3,))])
                g, w, b = c.grad(), c.grad("w"), c.grads()["b"]
                self.assertEqual((g.dtype, g.shape, w.shape, b.shape), (np.float32, (15,), (4, 3), (3,)))
                # Views, not copies: a write through one shows in the others.
                w[1, 2] = 7.0
                b[:] = 1.5
                self.assertEqual(g[5], 7.0)
                np.testing.assert_array_equal(g[12:], [1.5] * 3)
                self.assertIs(c.grad("w"), w)  # the same view within a window
                # Parameters are read-only (on shared memory, the server's segment).
                p = c.param("w")
                before = p.copy()
                with self.assertRaises(ValueError):
                    p[0, 0] = 1.0
                c.add_micro_batch(2, 1.0)
                result = c.step()
                self.assertEqual((result.window, result.version), (0, 1))
                # The old gradient views are read-only now; the new ones are zeroed.
                with self.assertRaises(ValueError):
                    w[0, 0] = 1.0
                with self.assertRaises(ValueError):
                    g += 1
                np.testing.assert_array_equal(c.grad(), np.zeros(15, np.float32))
                # SGD lr 0.5 on the mean gradient (sum / 2 samples).
                want = before.copy()
                want[1, 2] -= np.float32(0.5) * (np.float32(7.0) / np.float32(2))
                np.testing.assert_array_equal(c.param("w"), want)
                np.testing.assert_array_equal(c.param("b"), np.float32(-0.5 * 1.5 / 2) * np.ones(3, np.float32))
                c.close()
                # A view alive keeps the client (and its idle channel, which a
                # stopping server waits for up to 5 s): let them go first.
                del g, w, b, p
                self.assertEqual(server.stop(), 0)

    def test_stale_views_stay_readable_across_a_server_restart(self):
        # A view kept across a step in which shared memory was attached again
        # (the server restarted) points at memory the client retired, never
        # at freed or unmapped memory.
        folder = harness.temp_dir("restart")
        job = write_job(folder, 1, 6)
        flags = [f"--job={job}", f"--checkpoint_dir={folder}/ckpt"]
        server = self.start_server(folder, flags)
        c = gradacc.connect(server.address, 0, connect_timeout_s=20, window_timeout_s=60)
        self.assertTrue(c.transport.startswith("shared memory"), c.transport)
        c.grad()[:] = 1.0
        c.add_micro_batch(1, 0.5)
        c.step()
        stale_grad, stale_param = c.grad(), c.param()
        kept = stale_param.copy()
        server.kill()
        server = self.start_server(folder, flags, port=server.port, name="restarted")
        # The client has not seen the restart yet: still this window's view.
        self.assertIs(c.grad(), stale_grad)
        stale_grad[:] = 2.0
        c.add_micro_batch(1, 0.5)
        result = c.step()
        self.assertGreaterEqual(result.reconnects, 1)
        self.assertTrue(c.transport.startswith("shared memory"), c.transport)
        # Readable (no crash), read-only, and the values they held when the
        # window ended (the client moved to the new server's segments; the
        # window's new gradient buffer is zeroed, the retired one is not).
        np.testing.assert_array_equal(stale_param, kept)
        np.testing.assert_array_equal(stale_grad, np.full(15, 2.0, np.float32))
        np.testing.assert_array_equal(c.grad(), np.zeros(15, np.float32))
        with self.assertRaises(ValueError):
            stale_grad[0] = 1.0
        c.close()
        del stale_grad, stale_param
        self.assertEqual(server.stop(), 0)

    def test_errors_carry_code_reason_and_action(self):
        server, c = self.start(True)
        # Ending a window with nothing in it (or twice): refused by the client library.
        with self.assertRaises(gradacc.Error) as e:
            c.step()
        self.assertEqual((e.exception.code, e.exception.reason, e.exception.action),
                         ("FAILED_PRECONDITION", "ERROR_REASON_NOTHING_TO_PUSH", "CLIENT_ACTION_FIX_REQUEST"))
        self.assertEqual(e.exception.metadata.get("window"), "0")
        # A NaN gradient: refused by the server, the window stays open.
        c.grad()[3] = np.nan
        c.add_micro_batch(1, 0.0)
        with self.assertRaises(gradacc.Error) as e:
            c.step()
        self.assertEqual((e.exception.code, e.exception.reason), ("INVALID_ARGUMENT", "ERROR_REASON_NOT_FINITE"))
        self.assertEqual(c.version, 0)
        status = server.status()
        self.assertEqual(int(status.get("step", 0)), 0)
        self.assertEqual(int(status.get("contributionsAccepted", 0)), 0)
        # A worker beyond the job's.
        with self.assertRaises(gradacc.Error) as e:
            gradacc.connect(server.address, 5, connect_timeout_s=20)
        self.assertEqual((e.exception.code, e.exception.reason, e.exception.action),
                         ("INVALID_ARGUMENT", "ERROR_REASON_UNKNOWN_WORKER", "CLIENT_ACTION_FIX_REQUEST"))
        self.assertIn("UNKNOWN_WORKER", str(e.exception))
        c.close()
        with self.assertRaises(gradacc.Error):
            c.step()

    def test_unreachable_server_fails_within_the_connect_timeout(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed again at once: nothing listens there
        start = time.monotonic()
        with self.assertRaises(gradacc.Error) as e:
            gradacc.connect(f"127.0.0.1:{port}", 0, connect_timeout_s=2)
        self.assertLess(time.monotonic() - start, 30)
        self.assertEqual((e.exception.code, e.exception.action), ("UNAVAILABLE", "CLIENT_ACTION_RETRY"))
        self.assertIn("cannot reach", e.exception.message)

    def test_step_releases_the_gil_and_refuses_a_second_thread(self):
        folder = harness.temp_dir("threads")
        server = self.start_server(folder, [f"--job={write_job(folder, 2, 2)}"])
        c0 = gradacc.connect(server.address, 0, connect_timeout_s=20)
        c1 = gradacc.connect(server.address, 1, connect_timeout_s=20)
        c0.grad()[:] = 1.0
        c0.add_micro_batch(1)
        done = {}
        t = threading.Thread(target=lambda: done.setdefault("result", c0.step()))
        t.start()
        # Worker 0's step waits for worker 1: this thread keeps running
        # Python (the GIL is free) and sees the push arrive.
        wait_for(lambda: int(server.status()["window"].get("contributionsReceived", 0)) == 1, what="worker 0's push")
        with self.assertRaises(gradacc.Error) as e:
            c0.add_micro_batch(1)
        self.assertIn("another thread", e.exception.message)
        c1.grad()[:] = 3.0
        c1.add_micro_batch(1)
        c1.step()
        t.join(60)
        self.assertEqual(done["result"].version, 1)
        self.assertEqual(c0.version, 1)
        c0.close()
        c1.close()

    def test_status_and_reports(self):
        server, c = self.start(True, steps=2)
        synthetic.run(c, micro_batches=1, max_windows=1)
        c.report_test_accuracy(0.75)
        status = c.status()
        self.assertEqual((status["job_id"], int(status["step"])), ("py-client", 1))
        self.assertAlmostEqual(status["test_accuracy"], 0.75)
        self.assertIn("py-client", c.status_text())
        self.assertEqual(c.job["window"]["num_workers"], 1)


class TlsTokenTest(harness.ServerTestCase):

    def test_tls_and_tokens(self):
        folder = harness.temp_dir("pki")

        def sh(cmd):
            subprocess.run(["/bin/sh", "-c", cmd], cwd=folder, check=True, capture_output=True, timeout=60)

        ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
        sh(f"openssl req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=ca")
        with open(f"{folder}/server.ext", "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        with open(f"{folder}/client.ext", "w") as f:
            f.write("extendedKeyUsage=clientAuth\n")
        for name in ("server", "client"):
            sh(f"openssl req {ec} -keyout {name}.key -out {name}.csr -subj /CN={name}")
            sh(f"openssl x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {name}.pem "
               f"-days 2 -extfile {name}.ext")
        token = "wkr-3e9b1f7a0c5d48e2b6a9f1c0d3e7b254"
        with open(f"{folder}/worker.token", "w") as f:
            f.write(token + "\n")
        server = self.start_server(folder, [f"--job={write_job(folder, 1, 2)}", f"--tls_cert={folder}/server.pem",
                                            f"--tls_key={folder}/server.key", f"--tls_client_ca={folder}/ca.pem",
                                            f"--worker_token_file={folder}/worker.token"])
        tls = dict(tls_ca=f"{folder}/ca.pem", tls_cert=f"{folder}/client.pem", tls_key=f"{folder}/client.key")
        with self.assertRaises(gradacc.Error) as e:
            gradacc.connect(server.address, 0, connect_timeout_s=10, **tls)
        self.assertEqual(e.exception.code, "UNAUTHENTICATED")
        with self.assertRaises(gradacc.Error):
            gradacc.connect(server.address, 0, connect_timeout_s=3, token=token)  # plaintext to a TLS port
        c = gradacc.connect(server.address, 0, connect_timeout_s=10, token_file=f"{folder}/worker.token", **tls)
        self.assertEqual(synthetic.run(c, micro_batches=1), 2)
        self.assertTrue(c.done)
        c.close()
        self.assertEqual(server.stop(), 0)


if __name__ == "__main__":
    unittest.main()
