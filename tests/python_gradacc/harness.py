"""Test support for the Python package: real gradacc-server processes on port 0.

The tests run under ctest (tests/CMakeLists.txt), which sets
GRADACC_SERVER_BIN, GRADACC_CLI_BIN, GRADACC_TEST_CLIENT_BIN and
GRADACC_PYTHON_DIR (the build tree's python/ folder, which holds the
package); run by hand, the defaults point at build/. Every wait is bounded; servers are SIGKILLed when a test
leaves them running.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("GRADACC_BUILD_DIR", os.path.join(ROOT, "build"))
SERVER_BIN = os.environ.get("GRADACC_SERVER_BIN", os.path.join(BUILD, "server", "gradacc-server"))
CLI_BIN = os.environ.get("GRADACC_CLI_BIN", os.path.join(BUILD, "worker", "gradacc"))
TEST_CLIENT_BIN = os.environ.get("GRADACC_TEST_CLIENT_BIN", os.path.join(BUILD, "tests", "gradacc_test_client"))
MPIEXEC = os.environ.get("GRADACC_MPIEXEC", "mpirun")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
PACKAGE_DIR = os.environ.get("GRADACC_PYTHON_DIR", os.path.join(BUILD, "python"))  # holds gradacc/
if PACKAGE_DIR not in sys.path:
    sys.path.insert(0, PACKAGE_DIR)
PYTHONPATH = os.pathsep.join(p for p in (PACKAGE_DIR, os.path.dirname(os.path.abspath(__file__)),
                                         os.environ.get("PYTHONPATH", "")) if p)

# What a child Python or MPI process needs.
CHILD_ENV = dict(os.environ, PYTHONPATH=PYTHONPATH, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                 OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                 OMPI_MCA_rmaps_base_oversubscribe="1")


def _read(path):
    """A file's stripped text, or "" when it does not exist."""
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def temp_dir(name):
    """A fresh folder, removed at exit unless GRADACC_KEEP_TEST_DIRS is set."""
    d = tempfile.mkdtemp(prefix=f"gradacc-py-{name}-")
    if not os.environ.get("GRADACC_KEEP_TEST_DIRS"):
        import atexit
        atexit.register(shutil.rmtree, d, True)
    return d


class Server:
    """A gradacc-server child listening on 127.0.0.1 (port 0: the OS picks)."""

    def __init__(self, folder, flags, port=0, name="server"):
        self.folder = folder
        self.log_path = os.path.join(folder, f"{name}.log")
        port_file = os.path.join(folder, f"{name}.port")
        if os.path.exists(port_file):
            os.remove(port_file)
        argv = [SERVER_BIN, f"--listen=127.0.0.1:{port}", f"--port_file={port_file}", *flags]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if _read(port_file):
                break
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        else:
            self.kill()
            raise RuntimeError(f"gradacc-server did not start within 30 s:\n{self.log()}")
        if self.process.poll() is not None:
            raise RuntimeError(f"gradacc-server exited with {self.process.returncode}:\n{self.log()}")
        self.port = int(_read(port_file))
        self.address = f"127.0.0.1:{self.port}"

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait(self, timeout):
        """The exit code (negative: killed by that signal), or None after `timeout` seconds."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=30):
        """SIGTERM and wait (bounded); the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.wait(timeout)
        if code is None:
            self.kill()
        return code

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def status(self):
        """`gradacc status --json`, parsed."""
        out = subprocess.run([CLI_BIN, "status", f"--server={self.address}", "--json"], capture_output=True,
                             text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"gradacc status failed: {out.stderr}")
        return json.loads(out.stdout)


class ServerTestCase(unittest.TestCase):
    """A test case whose servers are killed if a test leaves them running."""

    def setUp(self):
        self._servers = []

    def tearDown(self):
        for s in self._servers:
            s.kill()

    def start_server(self, folder, flags, port=0, name="server"):
        server = Server(folder, flags, port=port, name=name)
        self._servers.append(server)
        return server

    def run_ranks_through_lives(self, folder, base, lives, world, rank_body):
        """Runs rank_body(address, rank) for `world` ranks (threads) against servers started with base + lives[i].

        Every life but the last must end by a failpoint's SIGKILL; the next
        server starts on the same port from the same folder. Returns the last
        server (stopped) and every life's log."""
        server = self.start_server(folder, base + list(lives[0]))
        address, errors = server.address, []

        def body(rank):
            try:
                rank_body(address, rank)
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=body, args=(r,)) for r in range(world)]
        for t in threads:
            t.start()
        port, logs = server.port, ""
        for i, flags in enumerate(lives[1:]):
            code = server.wait(120)
            logs += server.log()
            self.assertEqual(code, -9, f"expected the failpoint's SIGKILL:\n{server.log()}")
            server = self.start_server(folder, base + list(flags), port=port, name=f"server{i + 1}")
        for t in threads:
            t.join(300)
        self.assertFalse(any(t.is_alive() for t in threads), "ranks did not finish")
        if errors:
            raise errors[0]
        self.assertEqual(server.stop(), 0, server.log())
        return server, logs + server.log()


def run(argv, timeout, env=None, cwd=None):
    """Runs a child to completion within `timeout` seconds: (exit code, output)."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env or CHILD_ENV, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        return None, f"timed out after {timeout} s:\n{e.stdout or ''}{e.stderr or ''}"
    return out.returncode, out.stdout + out.stderr


def mpirun(np_, argv, timeout, extra=()):
    """`mpirun -np N argv` with root and oversubscription allowed (bounded)."""
    return run([MPIEXEC, "-np", str(np_), "--bind-to", "none", *extra, *argv], timeout)


def relative_errors(got, want):
    """{name: ||got - want|| / ||want||} over the tensors of `want` (dicts of NumPy arrays)."""
    import numpy as np
    out = {}
    for name, ref in want.items():
        a = np.asarray(got[name], dtype=np.float64)
        b = np.asarray(ref, dtype=np.float64)
        out[name] = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
    return out
