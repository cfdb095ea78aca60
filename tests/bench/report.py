#!/usr/bin/env python3
"""Turns one run of tests/bench/run.sh into its table of medians and ratios.

Inputs: the RESULT lines the benchmark programs printed (run.sh collects them
as CSV: section,name,P,M,setting,metric,value,unit), the Google Benchmark
JSON of the kernels, and run.sh's environment lines (key=value). Prints the
table as Markdown and writes it as Markdown (--md) and as CSV (--csv: every
environment line, measurement and ratio, one a row). Standard library only.
"""
import argparse
import csv
import statistics
import sys

P16 = 16 << 20


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--raw", required=True)
    p.add_argument("--env", required=True)
    p.add_argument("--kernels")
    p.add_argument("--csv", required=True)
    p.add_argument("--md", required=True)
    return p.parse_args()


def label(n):
    n = int(n)
    if n % (1 << 20) == 0:
        return f"{n >> 20}M"
    if n % 1024 == 0:
        return f"{n >> 10}K"
    return str(n)


def fmt(v, digits=3):
    if v is None:
        return "—"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:.2f}"


class Results:
    def __init__(self, raw_path):
        self.rows = []
        self.notes = []
        with open(raw_path) as f:
            for rec in csv.reader(f):
                if len(rec) != 8:
                    continue
                section, name, p, m, setting, metric, value, unit = rec
                if section == "note":
                    self.notes.append((name, int(p), int(m), setting, unit))
                    continue
                self.rows.append(dict(section=section, name=name, p=int(p), m=int(m), setting=setting,
                                      metric=metric, value=float(value), unit=unit))

    def get(self, section, name, metric, p=None, m=None, setting=None):
        for r in self.rows:
            if (r["section"] == section and r["name"] == name and r["metric"] == metric
                    and (p is None or r["p"] == p) and (m is None or r["m"] == m)
                    and (setting is None or r["setting"] == setting)):
                return r["value"]
        return None

    def runs(self, section, name, metric):
        return [r["value"] for r in self.rows if r["section"] == section and r["name"] == name
                and r["metric"] == metric]


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def load_kernels(path):
    """{(benchmark, n): (median GB/s, median ms)} from Google Benchmark JSON."""
    import json
    out = {}
    if not path:
        return out
    with open(path) as f:
        data = json.load(f)
    for b in data.get("benchmarks", []):
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
            continue
        base = b.get("run_name") or b["name"].rsplit("_", 1)[0]
        parts = base.split("/")  # BM_AddInto/16777216[/real_time]
        name, n = parts[0], (parts[1] if len(parts) > 1 and parts[1].isdigit() else "0")
        unit = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b.get("time_unit", "ns")]
        key = (name.replace("BM_", ""), int(n or 0))
        if b.get("run_type") == "aggregate" or key not in out:
            out[key] = (b.get("bytes_per_second", 0) / 1e9, b["real_time"] * unit)
    return out


class Report:
    """The Markdown table and the CSV rows of one run, built section by section."""

    def __init__(self, args):
        self.env = []
        with open(args.env) as f:
            for line in f:
                k, _, v = line.rstrip("\n").partition("=")
                self.env.append((k, v))
        self.envd = dict(self.env)
        self.res = Results(args.raw)
        self.kernels = load_kernels(args.kernels)
        self.md = []
        self.csv_rows = [("kind", "name", "P", "M", "setting", "metric", "value", "unit", "target", "status")]
        for k, v in self.env:
            self.csv_rows.append(("env", k, "", "", "", "", v, "", "", ""))

    def check(self, name, value, target, ok, p="", m="", setting=""):
        """One row of the headline ratios."""
        if value is None:
            status = "—"
        elif target == "info":
            status = ""
        else:
            status = "ok" if ok(value) else "NOT MET"
        self.md.append(f"| {name} | {fmt(value)} | {target} | {status} |")
        self.csv_rows.append(("ratio", name, p, m, setting, "ratio", "" if value is None else f"{value:.6g}", "x",
                              target, status))

    def medians(self, section, name):
        runs = self.res.runs(section, name, "samples_per_s_run")
        return runs, (statistics.median(runs) if runs else None)

    def header(self):
        envd = self.envd
        self.md.append(f"gradacc benchmark: {envd.get('date', '?')} on {envd.get('host', '?')} — "
                       f"{envd.get('cpu', '?')}, {envd.get('cores', '?')} cores, {envd.get('mem_total_gb', '?')} GB, "
                       f"kernel {envd.get('kernel', '?')}, THP {envd.get('thp', '?')}, commit {envd.get('commit', '?')}")
        self.md.append("")
        self.md.append(f"Medians of {envd.get('reps', '?')}. Settings:")
        for k, v in self.env:
            if k.startswith("setting.") or k == "note" or k in ("mpi", "torch", "blas.ddp"):
                self.md.append(f"- {k.replace('setting.', '')}: {v}")
        self.md.append("")

    def ratios(self):
        res, kernels, check = self.res, self.kernels, self.check
        self.md += ["### Issue 5 ratios", "", "| check | value | target | status |", "| --- | ---: | --- | --- |"]
        add1 = kernels.get(("AddPlain", P16))
        addn = kernels.get(("AddPlainThreads", P16))
        addinto = kernels.get(("AddInto", P16))
        suminorder = kernels.get(("SumInOrder", P16))
        adds = [a[0] for a in (add1, addn) if a]
        check("AddInto (accumulate, dst += src) / best plain add (1 or all threads), 16M floats",
              ratio(addinto and addinto[0], max(adds, default=None)), ">= 0.85", lambda v: v >= 0.85, P16, 1)
        check("SumInOrder (2 contributions into a third buffer in DRAM) / best plain add, 16M floats",
              ratio(suminorder and suminorder[0], max(adds, default=None)), "info", None, P16, 1)
        check("AddInto / plain add on 1 thread, 16M floats", ratio(addinto and addinto[0], add1 and add1[0]),
              "info", None, P16, 1)
        tcp = res.get("tcp", "loopback", "gbps_median")
        for setting in ("grpc", "shm"):
            push = res.get("push", "gradacc_push", "gbps_median", setting=setting)
            pull = res.get("push", "gradacc_pull", "gbps_median", setting=setting)
            # Issue 13: against the best raw TCP configuration (1 or 2
            # connections, several socket buffer sizes).
            target = ">= 0.8" if setting == "grpc" else "info"
            check(f"push ({setting}) / best raw TCP, 16M floats, 1 worker", ratio(push, tcp), target,
                  lambda v: v >= 0.8, P16, 1, setting)
            check(f"pull ({setting}) / best raw TCP, 16M floats, 1 worker", ratio(pull, tcp), target,
                  lambda v: v >= 0.8, P16, 1, setting)
        for conns in ("1conn", "2conn"):
            floor = res.get("push", "grpc_floor", "gbps_median", setting=conns)
            check(f"gRPC alone (payload dropped on arrival, {conns[0]} connection{'s' if conns[0] != '1' else ''}) "
                  f"/ best raw TCP, 64 MiB", ratio(floor, tcp), "info", None, P16, 1, conns)
        for m in (2, 4):
            gloo = res.get("window", "gloo", "window_median", P16, m)
            mpi = [v for v in (res.get("window", "mpi_allreduce", "window_median", P16, m),
                               res.get("window", "mpi_reduce_bcast", "window_median", P16, m)) if v is not None]
            best_mpi = min(mpi) if mpi else None
            for setting in ("shm", "grpc"):
                w = res.get("window", "gradacc", "window_median", P16, m, setting)
                main_path = setting == "shm"
                check(f"window ({setting}) / gloo all_reduce+Adam, 16M, M={m}", ratio(w, gloo),
                      "<= 1" if main_path else "info", lambda v: v <= 1.0, P16, m, setting)
                check(f"window ({setting}) / best MPI (+Adam), 16M, M={m}", ratio(w, best_mpi),
                      "<= 1.25" if main_path else "<= 1.5",
                      (lambda v: v <= 1.25) if main_path else (lambda v: v <= 1.5), P16, m, setting)
        _, ours = self.medians("train", "gradacc")
        _, ddp = self.medians("train", "ddp")
        check("training samples/s, gradacc / DDP no_sync (MLP, 2 workers)", ratio(ours, ddp), ">= 1",
              lambda v: v >= 1.0, "", 2)
        _, ours = self.medians("train_torch", "gradacc")
        _, ddp = self.medians("train_torch", "ddp")
        check("training samples/s, gradacc Python workers / DDP no_sync (PyTorch CNN, 2 workers)", ratio(ours, ddp),
              ">= 1", lambda v: v >= 1.0, "", 2)
        self.md.append("")

    def windows(self):
        res, md = self.res, self.md
        md.append("### End-to-end window (median ms; push, reduce, Adam step, every rank holding the result)")
        md.append("")
        md.append("| P | M | gradacc shm | gradacc gRPC | MPI allreduce | MPI reduce+bcast | gloo | shm / gloo | "
                  "shm / best MPI | gRPC / gloo | gRPC / best MPI |")
        md.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        configs = sorted({(r["p"], r["m"]) for r in res.rows if r["section"] == "window"} |
                         {(n[1], n[2]) for n in res.notes if n[0] in ("gradacc", "gloo") or n[0].startswith("mpi")})
        for p, m in configs:
            shm = res.get("window", "gradacc", "window_median", p, m, "shm")
            grpc = res.get("window", "gradacc", "window_median", p, m, "grpc")
            on_shm = res.get("window", "gradacc", "ranks_on_shared_memory", p, m, "shm")
            shm_cell = fmt(shm) + (" (gRPC!)" if shm is not None and on_shm is not None and on_shm < m else "")
            ar = res.get("window", "mpi_allreduce", "window_median", p, m)
            rb = res.get("window", "mpi_reduce_bcast", "window_median", p, m)
            gloo = res.get("window", "gloo", "window_median", p, m)
            best = min([v for v in (ar, rb) if v is not None], default=None)
            md.append(f"| {label(p)} | {m} | {shm_cell} | {fmt(grpc)} | {fmt(ar)} | {fmt(rb)} | {fmt(gloo)} | "
                      f"{fmt(ratio(shm, gloo))} | {fmt(ratio(shm, best))} | {fmt(ratio(grpc, gloo))} | "
                      f"{fmt(ratio(grpc, best))} |")
        self.collectives(configs)
        if any(r["metric"] == "ranks_on_shared_memory" and r["setting"] == "shm" and r["value"] < r["m"]
               for r in res.rows):
            md.append("")
            md.append("(gRPC!): shared memory was asked for but some ranks moved their data through gRPC "
                      "(see the run's logs for why).")
        for name, p, m, setting, why in res.notes:
            md.append(f"- skipped {name} ({setting}) P={label(p)} M={m}: {why}")
        md.append("")

    def collectives(self, configs):
        coll = []
        for p, m in configs:
            cells = [self.res.get("window", name, "collective_median", p, m)
                     for name in ("mpi_allreduce", "mpi_reduce_bcast", "gloo")]
            if any(v is not None for v in cells):
                coll.append(f"| {label(p)} | {m} | " + " | ".join(fmt(v) for v in cells) + " |")
        if coll:
            self.md += ["", "The peers' collective alone (median ms, before the scale and the Adam step):", "",
                        "| P | M | MPI allreduce | MPI reduce+bcast | gloo all_reduce |",
                        "| ---: | ---: | ---: | ---: | ---: |"]
            self.md.extend(coll)

    def transfers(self):
        res = self.res
        self.md += ["### Transfers (GB/s, median [min–max])", "", "| what | GB/s |", "| --- | ---: |"]

        def transfer(title, section, name, setting=None):
            med = res.get(section, name, "gbps_median", setting=setting)
            lo = res.get(section, name, "gbps_min", setting=setting)
            hi = res.get(section, name, "gbps_max", setting=setting)
            span = f" [{fmt(lo)}–{fmt(hi)}]" if lo is not None else ""
            on_shm = res.get("push", "gradacc_push", "ranks_on_shared_memory", setting=setting)
            if setting == "shm" and on_shm == 0:
                title += ", fell back to gRPC"
            self.md.append(f"| {title} | {fmt(med)}{span} |")

        transfer("raw loopback TCP, 64 MiB messages, best configuration", "tcp", "loopback")
        for r in res.rows:
            if r["section"] == "tcp" and r["name"] == "loopback_config":
                self.md.append(f"| raw loopback TCP, {r['setting'].replace('_', ', ')} | {fmt(r['value'])} |")
        for setting in ("grpc", "shm"):
            transfer(f"gradacc Client::Push, 16M floats ({setting})", "push", "gradacc_push", setting)
            transfer(f"gradacc Client::Pull, 16M floats ({setting})", "push", "gradacc_pull", setting)
        for conns in ("1conn", "2conn"):
            transfer(f"gRPC alone, 64 MiB dropped on arrival, {conns[0]} connection(s)", "push", "grpc_floor", conns)
        self.md.append("")

    def kernel_table(self):
        kernels, md = self.kernels, self.md
        if not kernels:
            return
        md.append("### Kernels (median GB/s of memory touched over real time, ms; AddPlainThreads: the plain loop "
                  "on every hardware thread; gradacc's kernels use what they use)")
        md.append("")
        sizes = sorted({n for (_, n) in kernels})
        md.append("| kernel | " + " | ".join(label(n) for n in sizes) + " |")
        md.append("| --- |" + " ---: |" * len(sizes))
        for name in ("Memcpy", "AddPlain", "AddPlainThreads", "AddInto", "SumInOrder", "FirstNonFinite",
                     "SgdMomentumStep", "AdamStep"):
            cells = []
            for n in sizes:
                v = kernels.get((name, n))
                cells.append(f"{fmt(v[0])} GB/s, {fmt(v[1])} ms" if v else "—")
            md.append(f"| {name} | " + " | ".join(cells) + " |")
        md.append("")
        for (name, n), (gbps, ms) in sorted(kernels.items()):
            self.csv_rows.append(("measure", f"kernel_{name}", n, 1, "", "gbps_median", f"{gbps:.6g}", "GB/s", "",
                                  ""))
            self.csv_rows.append(("measure", f"kernel_{name}", n, 1, "", "time_median", f"{ms:.6g}", "ms", "", ""))

    def training(self, section, title, ours_label):
        """A training table: gradacc's and DDP's samples/s, every run and the median."""
        ours_runs, ours = self.medians(section, "gradacc")
        ddp_runs, ddp = self.medians(section, "ddp")
        if not ours_runs and not ddp_runs:
            return
        self.md += [f"### {title}", "", "| | samples/s (median) | runs |", "| --- | ---: | --- |",
                    f"| {ours_label} | {fmt(ours)} | {', '.join(fmt(v) for v in ours_runs) or '—'} |",
                    f"| PyTorch DDP, no_sync() | {fmt(ddp)} | {', '.join(fmt(v) for v in ddp_runs) or '—'} |",
                    f"| gradacc / DDP | {fmt(ratio(ours, ddp))} | |", ""]
        for name, value in (("gradacc", ours), ("ddp", ddp)):
            if value is not None:
                self.csv_rows.append(("measure", f"{section}_{name}", "", 2, "", "samples_per_s_median",
                                      f"{value:.6g}", "samples/s", "", ""))

    def write(self, args):
        for r in self.res.rows:
            self.csv_rows.append(("measure", f"{r['section']}_{r['name']}", r["p"], r["m"], r["setting"],
                                  r["metric"], f"{r['value']:.6g}", r["unit"], "", ""))
        for name, p, m, setting, why in self.res.notes:
            self.csv_rows.append(("skipped", name, p, m, setting, "", "", "", "", why))
        text = "\n".join(self.md) + "\n"
        sys.stdout.write(text)
        with open(args.md, "w") as f:
            f.write(text)
        with open(args.csv, "w", newline="") as f:
            csv.writer(f).writerows(self.csv_rows)


def main():
    args = parse_args()
    report = Report(args)
    report.header()
    report.ratios()
    report.windows()
    report.transfers()
    report.kernel_table()
    report.training("train", "Training throughput (main job's MLP 784-256-128-10, 2 workers)",
                    "gradacc (gradacc-worker, server on this host)")
    report.training("train_torch", "Training throughput (PyTorch CNN of worker/python/examples, 2 workers)",
                    "gradacc Python workers (gradacc.torch, server on this host)")
    report.write(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
