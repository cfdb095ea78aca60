#!/usr/bin/python3
"""Soak test: a sharded training job under a seeded random schedule of faults.

    tests/soak/soak.py --build=build [--minutes=10] [--seed=1]

Two server shards (each with its checkpoints on a small tmpfs of its own when
run as root) and three workers (tests/test_client.cc) that reach the shards
through TCP proxies able to cut every connection. For --minutes, one fault
every 1.5-4 s, drawn from a seeded RNG:

  kill_shard    SIGKILL a random shard, restart it with the same flags
  kill_worker   SIGKILL a random worker, restart it with the same rank
  stop_worker   SIGSTOP a random worker for 0.5-3 s, then SIGCONT
  cut           cut every connection through the proxies
  full_disk     fill a shard's checkpoint tmpfs for 3-6 s, then free it

Every second it samples each process's RSS and open file descriptors. Then
the job must finish (faults stop at the deadline), and:
  * the parameters are bit-identical to the undisturbed run (WAIT policy);
  * every contribution is accounted for: each shard accepted exactly
    steps x workers contributions, and every step's ledger record on every
    shard holds every worker; duplicates and stale pushes are reported;
  * the servers' RSS and descriptors stay bounded (maxima reported; the last
    half's RSS within 1.5x + 32 MiB of the first half's, descriptors < 512);
  * nothing is left running.
Writes soak.json (the report) in --out. Exit 0 on success, 1 on a failed
check, 77 when a prerequisite is missing.
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

WORKERS = 3
SHARDS = 2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_text(steps):
    return f"""
job_id: "soak"
model {{
  tensors {{ name: "w" shape: [150, 33] init {{ uniform {{ low: -0.5 high: 0.5 }} }} }}
  tensors {{ name: "b" shape: [33] init {{ constant: 0.1 }} }}
}}
optimizer {{ kind: KIND_ADAM lr: 0.001 }}
window {{ num_workers: {WORKERS} micro_batches: 2 }}
clipping {{ max_norm: 1.0 }}
total_steps: {steps}
seed: 5
"""


class Proxy:
    """A TCP forwarder to one shard; cut() closes every connection."""

    def __init__(self, target_port):
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.conns = []
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=2)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        with self.lock:
            conns, self.conns = self.conns, []
            self.cuts += 1
        for pair in conns:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass

    def close(self):
        self.cut()
        self.listener.close()


class Soak:
    def __init__(self, args):
        self.args = args
        self.bin = {
            "server": os.path.join(args.build, "server/gradacc-server"),
            "client": os.path.join(args.build, "tests/gradacc_test_client"),
        }
        self.out = args.out
        self.rng = random.Random(args.seed)
        self.ports = [free_port() for _ in range(SHARDS)]
        self.peers = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        self.shards = [None] * SHARDS
        self.workers = [None] * WORKERS
        self.events = []
        self.samples = {"server": [], "worker": []}
        self.mounted = []
        self.disk_use = []  # [time, shard, bytes used before a full_disk fault]

    # --- processes -------------------------------------------------------
    def shard_dir(self, i):
        return os.path.join(self.out, f"shard{i}")

    def start_shard(self, i, folder=None, extra=()):
        folder = folder or self.shard_dir(i)
        os.makedirs(folder, exist_ok=True)
        log = open(os.path.join(folder, "server.log"), "ab")
        argv = [self.bin["server"], f"--listen=127.0.0.1:{self.ports[i]}", f"--job={self.out}/job.textproto",
                f"--shard={i}", f"--num_shards={SHARDS}", f"--shard_peers={self.peers}",
                f"--output={folder}/final.safetensors", "--worker_timeout_s=30", *extra]
        self.shards[i] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def start_worker(self, k, servers, folder):
        log = open(os.path.join(folder, f"worker{k}.log"), "ab")
        argv = [self.bin["client"], f"--server={servers}", f"--worker={k}", "--micro_batches=2",
                "--chunk_elements=400", f"--step_delay_ms={self.args.step_delay_ms}", "--window_timeout_s=600"]
        self.workers[k] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def all_processes(self):
        return [("server", p) for p in self.shards if p] + [("worker", p) for p in self.workers if p]

    def stop_all(self):
        for _, p in self.all_processes():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
        for _, p in self.all_processes():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    # --- the undisturbed run --------------------------------------------
    def reference(self):
        folder = os.path.join(self.out, "reference")
        os.makedirs(folder, exist_ok=True)
        for i in range(SHARDS):
            self.start_shard(i, folder=os.path.join(folder, f"shard{i}"))
        for k in range(WORKERS):
            log = open(os.path.join(folder, f"worker{k}.log"), "ab")
            self.workers[k] = subprocess.Popen(
                [self.bin["client"], f"--server={self.peers}", f"--worker={k}", "--micro_batches=2",
                 "--chunk_elements=400", "--window_timeout_s=600"], stdout=log, stderr=subprocess.STDOUT)
            log.close()
        ok = all(w.wait(timeout=1200) == 0 for w in self.workers)
        for p in self.shards:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=30)
        self.shards = [None] * SHARDS
        self.workers = [None] * WORKERS
        if not ok:
            raise RuntimeError(f"the undisturbed run failed; see {folder}")
        return [read_part(os.path.join(folder, f"shard{i}", "final.safetensors")) for i in range(SHARDS)]

    # --- faults ------------------------------------------------------------
    def mount_checkpoint_tmpfs(self, i):
        path = os.path.join(self.shard_dir(i), "ckpt")
        os.makedirs(path, exist_ok=True)
        if os.geteuid() != 0:
            return path
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", path], capture_output=True)
        if r.returncode == 0:
            self.mounted.append(path)
        return path

    def full_disk(self, i):
        path = os.path.join(self.shard_dir(i), "ckpt")
        if path not in self.mounted:
            return False
        filler = os.path.join(path, "filler")
        used = disk_used(path)
        try:
            with open(filler, "wb") as f:
                chunk = b"\0" * (1 << 16)
                while True:
                    f.write(chunk)
                    f.flush()
        except OSError:
            pass  # full (or full already: then only the wait)
        time.sleep(self.rng.uniform(3, 6))
        if os.path.exists(filler):
            os.unlink(filler)
        self.disk_use.append([round(time.monotonic() - self.t0, 1), i, used])
        return True

    def fault(self, proxies, worker_servers):
        kind = self.rng.choice(["kill_shard", "kill_worker", "stop_worker", "cut", "full_disk"])
        t = time.monotonic() - self.t0
        if kind == "kill_shard":
            i = self.rng.randrange(SHARDS)
            self.shards[i].kill()
            self.shards[i].wait()
            self.start_shard(i, extra=[f"--checkpoint_dir={self.shard_dir(i)}/ckpt"])
            self.events.append([t, kind, i])
        elif kind == "kill_worker":
            k = self.rng.randrange(WORKERS)
            if self.workers[k].poll() is None:
                self.workers[k].kill()
                self.workers[k].wait()
                self.start_worker(k, worker_servers, self.out)
                self.events.append([t, kind, k])
        elif kind == "stop_worker":
            k = self.rng.randrange(WORKERS)
            pause = self.rng.uniform(0.5, 3)
            if self.workers[k].poll() is None:
                self.workers[k].send_signal(signal.SIGSTOP)
                time.sleep(pause)
                self.workers[k].send_signal(signal.SIGCONT)
                self.events.append([t, kind, k, round(pause, 2)])
        elif kind == "cut":
            for p in proxies:
                p.cut()
            self.events.append([t, kind])
        else:
            i = self.rng.randrange(SHARDS)
            if self.full_disk(i):
                self.events.append([t, kind, i])

    # --- sampling ----------------------------------------------------------
    def sample_loop(self, stop):
        while not stop.wait(1.0):
            now = time.monotonic() - self.t0
            for role, p in self.all_processes():
                stats = proc_stats(p.pid)
                if stats:
                    self.samples[role].append([round(now, 1), p.pid, *stats])

    # --- the run -----------------------------------------------------------
    def run(self):
        steps = self.args.steps
        with open(os.path.join(self.out, "job.textproto"), "w") as f:
            f.write(job_text(steps))
        print(f"soak: undisturbed run of {steps} steps ...", flush=True)
        reference = self.reference()
        for i in range(SHARDS):
            self.mount_checkpoint_tmpfs(i)
        for i in range(SHARDS):
            self.start_shard(i, extra=[f"--checkpoint_dir={self.shard_dir(i)}/ckpt"])
        time.sleep(0.5)
        proxies = [Proxy(p) for p in self.ports]
        worker_servers = ",".join(f"127.0.0.1:{p.port}" for p in proxies)
        self.t0 = time.monotonic()
        for k in range(WORKERS):
            self.start_worker(k, worker_servers, self.out)
        stop = threading.Event()
        sampler = threading.Thread(target=self.sample_loop, args=(stop,), daemon=True)
        sampler.start()
        deadline = self.t0 + self.args.minutes * 60
        print(f"soak: faults for {self.args.minutes} min (seed {self.args.seed}) ...", flush=True)
        while time.monotonic() < deadline and any(w.poll() is None for w in self.workers):
            time.sleep(self.rng.uniform(1.5, 4))
            if time.monotonic() >= deadline or all(w.poll() is not None for w in self.workers):
                break
            self.fault(proxies, worker_servers)
        fault_end = time.monotonic() - self.t0
        print(f"soak: {len(self.events)} faults; waiting for the job to finish ...", flush=True)
        finish_by = time.monotonic() + self.args.finish_minutes * 60
        codes = []
        for w in self.workers:
            try:
                codes.append(w.wait(timeout=max(1, finish_by - time.monotonic())))
            except subprocess.TimeoutExpired:
                codes.append(None)
        finished = time.monotonic() - self.t0
        statuses = [self.status(i) for i in range(SHARDS)]
        for p in self.shards:
            p.send_signal(signal.SIGTERM)
        for p in self.shards:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        stop.set()
        sampler.join()
        for p in proxies:
            p.close()
        self.stop_all()
        return self.check(reference, codes, statuses, fault_end, finished)

    def status(self, i):
        cli = os.path.join(self.args.build, "worker/gradacc")
        r = subprocess.run([cli, "status", "--json", f"--server=127.0.0.1:{self.ports[i]}", "--timeout_s=10"],
                           capture_output=True, text=True, timeout=30)
        try:
            return json.loads(r.stdout)
        except ValueError:
            return {}

    def check(self, reference, codes, statuses, fault_end, finished):
        steps = self.args.steps
        failures = []
        if codes != [0] * WORKERS:
            failures.append(f"workers exited with {codes} (logs in {self.out})")
        parts = []
        for i in range(SHARDS):
            try:
                parts.append(read_part(os.path.join(self.shard_dir(i), "final.safetensors")))
            except OSError as e:
                failures.append(f"shard {i} wrote no final parameters: {e}")
        identical = parts == reference
        if not identical:
            failures.append("final parameters differ from the undisturbed run")
        accounting = []
        for i, s in enumerate(statuses):
            acc = {k: int(s.get(f"contributions{k}", 0) or 0) for k in ("Accepted", "Duplicate", "Stale", "Rejected")}
            acc["step"] = int(s.get("step", 0) or 0)
            acc["restarts"] = int(s.get("serverRestarts", 0) or 0)
            ledger_path = os.path.join(self.shard_dir(i), "ckpt", "ledger.jsonl")
            if os.path.exists(ledger_path):  # kept beside the logs (the tmpfs goes away)
                shutil.copy(ledger_path, os.path.join(self.shard_dir(i), "ledger.jsonl"))
            ledger = read_ledger(ledger_path)
            complete = [st for st, n in ledger.items() if n == WORKERS]
            acc["ledger_steps"] = len(ledger)
            acc["ledger_steps_with_every_worker"] = len(complete)
            accounting.append(acc)
            if acc["step"] != steps:
                failures.append(f"shard {i} ended at step {acc['step']}, not {steps}")
            if acc["Accepted"] != steps * WORKERS:
                failures.append(f"shard {i} accepted {acc['Accepted']} contributions, not {steps * WORKERS}")
            if len(ledger) != steps or len(complete) != steps:
                failures.append(f"shard {i}'s ledger has {len(ledger)} steps, {len(complete)} with every worker")
        bounds = {}
        for role, rows in self.samples.items():
            if not rows:
                continue
            half = rows[-1][0] / 2
            first = [r for r in rows if r[0] <= half] or rows
            last = [r for r in rows if r[0] > half] or rows
            bounds[role] = {
                "max_rss_mib": round(max(r[2] for r in rows) / 1024, 1),
                "max_rss_mib_first_half": round(max(r[2] for r in first) / 1024, 1),
                "max_rss_mib_second_half": round(max(r[2] for r in last) / 1024, 1),
                "max_fds": max(r[3] for r in rows),
                "samples": len(rows),
            }
        server = bounds.get("server", {})
        if server:
            if server["max_rss_mib_second_half"] > 1.5 * server["max_rss_mib_first_half"] + 32:
                failures.append(f"server RSS grew: {server}")
            if server["max_fds"] >= 512:
                failures.append(f"server descriptors: {server['max_fds']}")
        leftovers = [p.pid for _, p in self.all_processes() if p.poll() is None]
        if leftovers:
            failures.append(f"still running: {leftovers}")
        kinds = {}
        for e in self.events:
            kinds[e[1]] = kinds.get(e[1], 0) + 1
        report = {
            "seed": self.args.seed, "minutes": self.args.minutes, "steps": steps,
            "faults": kinds, "fault_phase_seconds": round(fault_end, 1), "finished_seconds": round(finished, 1),
            "bit_identical": identical, "accounting": accounting, "resources": bounds,
            "disk_faults_possible": bool(self.mounted), "checkpoint_disk_use": self.disk_use[-4:],
            "events": self.events, "failures": failures,
        }
        with open(os.path.join(self.out, "soak.json"), "w") as f:
            json.dump(report, f, indent=1)
        print(json.dumps({k: v for k, v in report.items() if k != "events"}, indent=1))
        print("soak: PASS" if not failures else "soak: FAIL\n  " + "\n  ".join(failures), flush=True)
        return 0 if not failures else 1

    def cleanup(self):
        self.stop_all()
        for path in self.mounted:
            subprocess.run(["umount", "-l", path], capture_output=True)


def disk_used(path):
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def proc_stats(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return [rss, len(os.listdir(f"/proc/{pid}/fd"))]
    except (OSError, StopIteration):
        return None


def read_part(path):
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    return data[8 + n:]


def read_ledger(path):
    """step -> number of contributions in its (last) record."""
    steps = {}
    try:
        with open(path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill
                if "step" in r:
                    steps[int(r["step"])] = len(r.get("contributions", []))
    except OSError:
        pass
    return steps


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build", help="the build folder")
    ap.add_argument("--minutes", type=float, default=10, help="how long faults are injected")
    ap.add_argument("--finish_minutes", type=float, default=10, help="bound on the job's finish after the faults")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=0, help="job steps (default: about 4 per second of --minutes)")
    ap.add_argument("--step_delay_ms", type=int, default=150, help="each worker's pause per window")
    ap.add_argument("--out", default="", help="folder for logs and soak.json (default: a fresh temporary one)")
    args = ap.parse_args()
    args.build = os.path.abspath(args.build)
    if not args.steps:
        args.steps = max(20, int(args.minutes * 60 * 4))
    for b in ("server/gradacc-server", "tests/gradacc_test_client", "worker/gradacc"):
        if not os.access(os.path.join(args.build, b), os.X_OK):
            print(f"soak: {b} is not built in {args.build}", file=sys.stderr)
            return 77
    args.out = os.path.abspath(args.out or tempfile.mkdtemp(prefix="gradacc_soak_"))
    os.makedirs(args.out, exist_ok=True)
    soak = Soak(args)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: (soak.cleanup(), sys.exit(130)))
    try:
        return soak.run()
    finally:
        soak.cleanup()
        print(f"soak: logs and soak.json in {args.out}")


if __name__ == "__main__":
    sys.exit(main())
