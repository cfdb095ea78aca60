#!/usr/bin/python3
"""Turns one run of tests/bench/scale.sh into its table, CSV and chart.

Input: the raw rows section,config,P,M,setting,metric,value,unit (section
A: 16M against M on gRPC, B: small windows, C: the largest job). Output:
Markdown (--md), CSV (--csv; kind,name,P,M,setting,metric,value,unit,
target,status: one measure row per figure, one kind=ratio row per ratio,
named "scale: ...") and a PNG chart (--png; needs python3-matplotlib,
which deploy/install-deps.sh installs; without it no file is written and
this says so).
"""
import argparse
import csv
import sys


def parse_args():
    ap = argparse.ArgumentParser()
    for name in ("raw", "csv", "md", "png", "commit", "machine"):
        ap.add_argument(f"--{name}", required=True)
    return ap.parse_args()


def label(p):
    return f"{p >> 20}M" if p % (1 << 20) == 0 else f"{p >> 10}K"


def load(path):
    values = {}
    with open(path) as f:
        for row in csv.reader(f):
            if len(row) < 8:
                continue
            section, config, p, m, setting, metric, value = row[:7]
            try:
                values[(section, config, int(p), int(m), setting, metric)] = float(value)
            except ValueError:
                continue
    return values


def fmt(v, digits=3):
    return "—" if v is None else f"{v:.{digits}g}"


class Report:

    def __init__(self, a, values):
        self.a, self.v = a, values
        self.md = [f"## gradacc scale — commit {a.commit}", "", f"Machine: {a.machine}. Medians of the timed windows; "
                   "a gradacc window is push + reduce + Adam + publish + pull, MPI's is MPI_Allreduce + the same "
                   "Adam on every rank.", ""]
        self.rows = [("kind", "name", "P", "M", "setting", "metric", "value", "unit", "target", "status")]
        self.ratios = []

    def get(self, section, config, p, m, setting, metric):
        return self.v.get((section, config, p, m, setting, metric))

    def measure(self, name, p, m, setting, metric, value, unit):
        if value is not None:
            self.rows.append(("measure", name, p, m, setting, metric, f"{value:.6g}", unit, "", ""))

    def ratio(self, name, value, target=None, ok=None, p="", m="", setting=""):
        status = "" if value is None or ok is None else ("ok" if ok(value) else "NOT MET")
        self.ratios.append(f"| {name} | {fmt(value)} | {target or 'info'} | {status} |")
        self.rows.append(("ratio", name, p, m, setting, "ratio", "" if value is None else f"{value:.6g}", "x",
                          target or "info", status))

    def section_a(self):
        ms = sorted({k[3] for k in self.v if k[0] == "A" and k[1] == "gradacc_server"})
        p = 16 << 20
        settings = (("grpc", "running sum"),
                    ("grpc-bdp", "running sum, --grpc_bdp_probe=true"),
                    ("grpc-buffers", "buffers (--running_sum=false)"))
        self.md += [f"### A. P = {label(p)} on gRPC against the number of workers", "",
                    "Three servers at each M: the running sum (the defaults: a server on loopback does not probe "
                    "the bandwidth-delay product, so a paused push stream holds at most its 1 MiB window); the "
                    "running sum with --grpc_bdp_probe=true (what a server listening beyond loopback does); "
                    "buffers (a "
                    "model-sized buffer per push, summed when the window closes, as before the running sum). "
                    "RSS in MB, windows in ms.", "",
                    "| M | " + " | ".join(f"{name}: RSS | B/param | window" for _, name in settings) +
                    " | MPI_Allreduce + Adam | running sum / MPI |",
                    "| ---: |" + " ---: | ---: | ---: |" * len(settings) + " ---: | ---: |"]
        self.a_rss = {s: {} for s, _ in settings}
        for m in ms:
            cells = []
            for setting, _ in settings:
                rss = self.get("A", "gradacc_server", p, m, setting, "peak_rss")
                win = self.get("A", "gradacc", p, m, setting, "window_median")
                per = rss * 2 ** 20 / p if rss else None
                self.a_rss[setting][m] = rss
                cells += [fmt(rss, 5), fmt(per), fmt(win)]
                self.measure("scale_server_rss", p, m, setting, "peak_rss", rss, "MB")
                self.measure("scale_server_bytes_per_param", p, m, setting, "bytes_per_param", per, "B")
                self.measure("scale_window", p, m, setting, "window_median", win, "ms")
            mpi = self.get("A", "mpi_allreduce", p, m, "hugetlb", "window_median")
            win = self.get("A", "gradacc", p, m, "grpc", "window_median")
            self.md.append(f"| {m} | " + " | ".join(cells) + f" | {fmt(mpi)} | {fmt(win / mpi if win and mpi else None)} |")
            self.measure("scale_mpi_allreduce", p, m, "hugetlb", "window_median", mpi, "ms")
        self.md.append("")
        for setting, name in settings:
            r2, r16 = self.a_rss[setting].get(2), self.a_rss[setting].get(16)
            main = setting == "grpc"
            self.ratio(f"scale: server RSS(M=16) / RSS(M=2), 16M gRPC, {name}", r16 / r2 if r16 and r2 else None,
                       "<= 1.15" if main else None, (lambda x: x <= 1.15) if main else None, p, 16, setting)
            self.ratio(f"scale: server bytes per parameter at M=16, 16M gRPC (Adam), {name}",
                       r16 * 2 ** 20 / p if r16 else None, "<= 24" if main else None,
                       (lambda x: x <= 24) if main else None, p, 16, setting)
            r32 = self.a_rss[setting].get(32)
            self.ratio(f"scale: server bytes per parameter at M=32, 16M gRPC (Adam), {name}",
                       r32 * 2 ** 20 / p if r32 else None, None, None, p, 32, setting)
        for m in (2, 4, 8, 16):
            win = self.get("A", "gradacc", p, m, "grpc", "window_median")
            win_b = self.get("A", "gradacc", p, m, "grpc-buffers", "window_median")
            mpi = self.get("A", "mpi_allreduce", p, m, "hugetlb", "window_median")
            self.ratio(f"scale: gRPC window / MPI_Allreduce + Adam, 16M M={m}", win / mpi if win and mpi else None,
                       "<= 1.5" if m == 2 else None, (lambda x: x <= 1.5) if m == 2 else None, p, m, "grpc")
            self.ratio(f"scale: gRPC window, running sum / buffers, 16M M={m}",
                       win / win_b if win and win_b else None, {4: "<= 1", 8: "< 1"}.get(m),
                       {4: (lambda x: x <= 1.0), 8: (lambda x: x < 1.0)}.get(m), p, m, "grpc")

    def section_b(self):
        keys = sorted({(k[2], k[3]) for k in self.v if k[0] == "B" and k[1] == "gradacc"})
        self.md += ["### B. Small windows", "",
                    "| P | M | shared memory, fast path (ms) | shared memory, RPCs (ms) | gRPC (ms) | "
                    "MPI_Allreduce + Adam (ms) | shm / MPI | shm RPCs / MPI | gRPC / MPI |",
                    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for p, m in keys:
            shm = self.get("B", "gradacc", p, m, "shm", "window_median")
            rpc = self.get("B", "gradacc", p, m, "shm-rpc", "window_median")
            grpc = self.get("B", "gradacc", p, m, "grpc", "window_median")
            mpi = self.get("B", "mpi_allreduce", p, m, "hugetlb", "window_median")
            self.md.append(f"| {label(p)} | {m} | {fmt(shm)} | {fmt(rpc)} | {fmt(grpc)} | {fmt(mpi)} | "
                           f"{fmt(shm / mpi if shm and mpi else None)} | {fmt(rpc / mpi if rpc and mpi else None)} | "
                           f"{fmt(grpc / mpi if grpc and mpi else None)} |")
            self.ratio(f"scale: shared-memory window, fast path / RPCs, {label(p)} M={m}",
                       shm / rpc if shm and rpc else None, None, None, p, m, "shm")
            for setting, value in (("shm", shm), ("shm-rpc", rpc), ("grpc", grpc)):
                self.measure("scale_window", p, m, setting, "window_median", value, "ms")
            self.measure("scale_mpi_allreduce", p, m, "hugetlb", "window_median", mpi, "ms")
            target = "<= 1.5" if p == 1 << 20 and m in (1, 2) else None
            self.ratio(f"scale: shared-memory window / MPI_Allreduce + Adam, {label(p)} M={m}",
                       shm / mpi if shm and mpi else None, target, (lambda x: x <= 1.5) if target else None, p, m,
                       "shm")
        self.md.append("")

    def section_c(self):
        keys = sorted({(k[2], k[3]) for k in self.v if k[0] == "C" and k[1] == "gradacc_server"})
        if not keys:
            return
        self.md += ["### C. The largest job this machine holds (4 shards in one server process, gRPC)", "",
                    "| P | M | server peak RSS (MB) | B / parameter | a worker's peak RSS (MB) | B / parameter | "
                    "window (ms) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for p, m in keys:
            rss = self.get("C", "gradacc_server", p, m, "grpc", "peak_rss")
            worker = self.get("C", "gradacc_worker", p, m, "grpc", "peak_rss")
            win = self.get("C", "gradacc", p, m, "grpc", "window_median")
            sb = rss * 2 ** 20 / p if rss else None
            wb = worker * 2 ** 20 / p if worker else None
            self.md.append(f"| {label(p)} | {m} | {fmt(rss, 5)} | {fmt(sb)} | {fmt(worker, 5)} | {fmt(wb)} | "
                           f"{fmt(win)} |")
            self.measure("scale_largest_server_bytes_per_param", p, m, "grpc", "bytes_per_param", sb, "B")
            self.measure("scale_largest_worker_bytes_per_param", p, m, "grpc", "bytes_per_param", wb, "B")
            self.measure("scale_largest_window", p, m, "grpc", "window_median", win, "ms")
        self.md.append("")

    def write(self):
        self.md += ["### Ratios", "", "| ratio | value | target | status |", "| --- | ---: | --- | --- |"]
        self.md += self.ratios + [""]
        with open(self.a.md, "w") as f:
            f.write("\n".join(self.md) + "\n")
        with open(self.a.csv, "w", newline="") as f:
            csv.writer(f).writerows(self.rows)
        print("\n".join(self.md))

    def chart(self):
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print(f"scale_report: python3-matplotlib is not installed (deploy/install-deps.sh installs it): no chart "
                  f"written, {self.a.png} does not exist", file=sys.stderr)
            return
        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
        for setting, style, name in (("grpc", "o-", "running sum"),
                                     ("grpc-bdp", "^-", "running sum, --grpc_bdp_probe=true"),
                                     ("grpc-buffers", "s--", "buffers")):
            pts = sorted((m, r) for m, r in self.a_rss[setting].items() if r)
            if pts:
                left.plot([m for m, _ in pts], [r for _, r in pts], style, label=f"server peak RSS, {name}")
        left.set_xscale("log", base=2)
        left.set_xlabel("gRPC workers M")
        left.set_ylabel("MB")
        left.set_title("A. server memory, P = 16M f32, Adam")
        left.legend()
        for p, style in ((64 << 10, "--"), (1 << 20, "-")):
            for config, setting, name in (("gradacc", "shm", "gradacc shm"),
                                          ("gradacc", "shm-rpc", "gradacc shm, no fast path"),
                                          ("gradacc", "grpc", "gradacc gRPC"),
                                          ("mpi_allreduce", "hugetlb", "MPI_Allreduce + Adam")):
                pts = sorted((k[3], v) for k, v in self.v.items()
                             if k[0] == "B" and k[1] == config and k[2] == p and k[4] == setting
                             and k[5] == "window_median")
                if pts:
                    right.plot([m for m, _ in pts], [v for _, v in pts], style, marker="o",
                               label=f"{name}, {label(p)}")
        right.set_xscale("log", base=2)
        right.set_yscale("log")
        right.set_xlabel("workers M")
        right.set_ylabel("window (ms, median)")
        right.set_title("B. small windows")
        right.legend(fontsize=7)
        fig.suptitle(f"gradacc scale — commit {self.a.commit}")
        fig.tight_layout()
        fig.savefig(self.a.png, dpi=100)


def main():
    a = parse_args()
    report = Report(a, load(a.raw))
    report.section_a()
    report.section_b()
    report.section_c()
    report.write()
    report.chart()
    return 0


if __name__ == "__main__":
    sys.exit(main())
