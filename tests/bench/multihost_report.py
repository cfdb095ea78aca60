#!/usr/bin/env python3
"""Turns one run of tests/bench/multihost.sh into its table, CSV and chart.

Inputs: the programs' RESULT values (config,P,metric,value), the timed
phases (config,P,start,end in unix seconds), and the sampler's CSV (time,
CPU busy/total jiffies, every bridge port's rx/tx bytes: a port's rx is what
its host sent). Writes the Markdown table (--md), the CSV in the format of
tests/bench/report.py (--csv: kind,name,P,M,setting,metric,value,unit,
target,status; one kind=ratio row per ratio) and a PNG chart (--png: window
time per configuration with the links' floors drawn; needs python3-matplotlib).
"""
import argparse
import bisect
import csv
import sys

NAMES = {
    "ps1": "gradacc, shards on 1 server host",
    "ps2": "gradacc, shards on 2 server hosts",
    "ps4": "gradacc, shards on 4 server hosts",
    "colocated": "gradacc, shards co-located on the worker hosts",
    "hier": "gradacc hierarchical (2 ranks/host), 4 server hosts",
    "bf16": "gradacc, bf16 on the wire, 4 server hosts",
    "mpi": "Open MPI MPI_Allreduce (tuned default) + Adam",
    "mpi_ring": "Open MPI MPI_Allreduce (ring) + Adam",
    "gloo": "gloo all_reduce + torch.optim.Adam",
}
ORDER = list(NAMES)
BASELINES = ("mpi", "mpi_ring", "gloo")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name in ("results", "phases", "samples", "rate", "delay", "queue", "tcp", "machine", "commit", "csv", "md", "png"):
        p.add_argument("--" + name, required=True)
    p.add_argument("--rate-bits", type=float, required=True)
    p.add_argument("--per-host", required=True)  # a number, or auto
    p.add_argument("--process-per-shard", type=int, default=0)
    p.add_argument("--reps", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    return p.parse_args()


def label(n):
    n = int(n)
    return f"{n >> 20}M" if n % (1 << 20) == 0 else str(n)


def fmt(v, digits=3):
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.{digits}g}"


class Samples:
    def __init__(self, path):
        with open(path) as f:
            rows = list(csv.reader(f))
        self.header = rows[0]
        self.rows = [[float(x) for x in r] for r in rows[1:] if len(r) == len(self.header)]
        self.times = [r[0] for r in self.rows]
        self.links = sorted({h[2:].rsplit("_", 1)[0] for h in self.header if h.startswith("v-")})

    def at(self, t):
        """The sample nearest to time t."""
        i = bisect.bisect_left(self.times, t)
        if i == len(self.times):
            i -= 1
        elif i > 0 and t - self.times[i - 1] < self.times[i] - t:
            i -= 1
        return dict(zip(self.header, self.rows[i]))


def load(a):
    """The programs' values, the timed phases and the sampler."""
    values = {}
    for rec in csv.reader(open(a.results)):
        if len(rec) != 4:
            continue
        config, p, metric, value = rec
        try:
            values[(config, int(p), metric)] = float(value)
        except ValueError:
            values[(config, int(p), metric)] = value
    phases = {}
    for rec in csv.reader(open(a.phases)):
        if len(rec) == 4:
            phases[(rec[0], int(rec[1]))] = (float(rec[2]), float(rec[3]))
    return values, phases, Samples(a.samples)


def figures(a, values, phases, samples):
    """Per (configuration, P): window, link bytes, busiest link, CPU."""
    rate_bytes = a.rate_bits / 8
    sizes = sorted({k[1] for k in values})
    rows = []
    for p in sizes:
        for config in ORDER:
            w = values.get((config, p, "window_median"))
            if w is None and (config, p) not in phases:
                continue
            r = dict(config=config, p=p, window_ms=w, same=values.get((config, p, "bit_identical")))
            if (config, p) in phases:
                t0, t1 = phases[(config, p)]
                s0, s1 = samples.at(t0), samples.at(t1)
                dt = max(s1["t"] - s0["t"], 1e-9)
                per_link = {}
                for link in samples.links:
                    up = s1[f"v-{link}_rx"] - s0[f"v-{link}_rx"]
                    down = s1[f"v-{link}_tx"] - s0[f"v-{link}_tx"]
                    per_link[link] = (up / a.reps, down / a.reps, max(up, down) / dt / rate_bytes)
                busiest = max(per_link, key=lambda k: per_link[k][2])
                r.update(per_link=per_link, busiest=busiest, util=per_link[busiest][2],
                         cpu=(s1["cpu_busy"] - s0["cpu_busy"]) / max(s1["cpu_total"] - s0["cpu_total"], 1))
            rows.append(r)
    return sizes, rows


def best_baseline(rows, p):
    base = [r for r in rows if r["p"] == p and r["config"] in BASELINES and r["window_ms"]]
    return min((r["window_ms"] for r in base), default=None)


def get(rows, config, p):
    return next((r for r in rows if r["config"] == config and r["p"] == p), None)


def header(a):
    md = [f"gradacc multihost benchmark — commit {a.commit}; {a.machine}", "",
          f"4 worker hosts (w0..w3) and 4 server hosts (s0..s3) as network namespaces on one bridge; every "
          f"host's link shaped to {a.rate} each way (tc tbf, queue {a.queue}), delay {a.delay}, TCP congestion control {a.tcp}; "
          f"{'shards of 128 Ki elements (P / 2^19 per server host: 32 at 16M, 128 at 64M)' if a.per_host == 'auto' else str(a.per_host) + ' shards per server host'} "
          f"in the sharded configurations, "
          f"{'one gradacc-server process each' if a.process_per_shard else 'served by one gradacc-server process per host'}; medians of {a.reps} windows after {a.warmup} warm-up; "
          f"gRPC only (no shared memory between hosts). Link bytes are per window, during the timed windows; "
          f"'busiest link' is its bytes over the timed windows' wall time against the shaped rate; CPU is the "
          f"whole machine's.", ""]
    csv_rows = [("kind", "name", "P", "M", "setting", "metric", "value", "unit", "target", "status"),
                ("env", "rate", "", "", "", "", a.rate, "", "", ""),
                ("env", "delay", "", "", "", "", a.delay, "", "", ""),
                ("env", "queue", "", "", "", "", a.queue, "", "", ""),
                ("env", "tcp_congestion_control", "", "", "", "", a.tcp, "", "", ""),
                ("env", "shards_per_server_host", "", "", "", "", a.per_host, "", "", ""),
                ("env", "machine", "", "", "", "", a.machine, "", "", ""),
                ("env", "commit", "", "", "", "", a.commit, "", "", "")]
    return md, csv_rows


def ratios(sizes, rows, md, csv_rows):
    md += ["### Ratios", "", "| check | value | target | status |", "| --- | ---: | --- | --- |"]
    for p in sizes:
        best = best_baseline(rows, p)
        for config, what, target, ok in (("ps4", "separate server hosts", "<= 0.75", lambda v: v <= 0.75),
                                         ("colocated", "co-located shards", "<= 1.1", lambda v: v <= 1.1)):
            r = get(rows, config, p)
            v = r["window_ms"] / best if r and r["window_ms"] and best else None
            status = "—" if v is None else ("ok" if ok(v) else "NOT MET")
            name = f"multihost window / best all-reduce+Adam, P={label(p)}, {what}"
            md.append(f"| {name} | {fmt(v)} | {target} | {status} |")
            csv_rows.append(("ratio", name, p, 4, config, "ratio", "" if v is None else f"{v:.6g}", "x", target,
                             status))
        r = get(rows, "ps4", p)
        if r and "util" in r:
            status = "ok" if r["util"] >= 0.8 else "NOT MET"
            name = f"multihost busiest link / shaped rate, P={label(p)}, separate server hosts"
            md.append(f"| {name} | {fmt(r['util'])} | >= 0.8 | {status} |")
            csv_rows.append(("ratio", name, p, 4, "ps4", "ratio", f"{r['util']:.6g}", "x", ">= 0.8", status))
    md.append("")


def windows(sizes, rows, md, csv_rows):
    md += ["### Windows", "",
           "| P | configuration | window ms | / best all-reduce | busiest link (use) | per-window MB up/down on it "
           "| CPU | bit-identical |",
           "| ---: | --- | ---: | ---: | --- | --- | ---: | --- |"]
    for p in sizes:
        best = best_baseline(rows, p)
        for r in (x for x in rows if x["p"] == p):
            ratio = r["window_ms"] / best if r["window_ms"] and best else None
            link = r.get("busiest")
            up, down, util = r["per_link"][link] if link else (None, None, None)
            same = r["same"] if r["same"] is not None else ("—" if r["config"] in BASELINES else "not checked")
            md.append(f"| {label(p)} | {NAMES[r['config']]} | {fmt(r['window_ms'])} | {fmt(ratio)} | "
                      f"{link or '—'} ({fmt(util)}) | {fmt(up and up / 1e6)} / {fmt(down and down / 1e6)} | "
                      f"{fmt(r.get('cpu'))} | {same} |")
            for metric, value, unit in (("window_median", r["window_ms"], "ms"), ("busiest_link_use", util, "x"),
                                        ("cpu_use", r.get("cpu"), "x")):
                if value is not None:
                    csv_rows.append(("measure", f"multihost_{r['config']}", p, 4, r["config"], metric,
                                     f"{value:.6g}", unit, "", ""))
            for lk, (u, d, _) in sorted(r.get("per_link", {}).items()):
                csv_rows.append(("measure", f"multihost_{r['config']}", p, 4, lk, "link_bytes_up_per_window",
                                 f"{u:.6g}", "B", "", ""))
                csv_rows.append(("measure", f"multihost_{r['config']}", p, 4, lk, "link_bytes_down_per_window",
                                 f"{d:.6g}", "B", "", ""))
            if r["same"] is not None:
                csv_rows.append(("check", f"multihost_{r['config']}", p, 4, r["config"], "bit_identical",
                                 r["same"], "", "identical", "ok" if r["same"] == "identical" else "NOT MET"))
    md.append("")


def main():
    a = parse_args()
    values, phases, samples = load(a)
    sizes, rows = figures(a, values, phases, samples)
    md, csv_rows = header(a)
    ratios(sizes, rows, md, csv_rows)
    windows(sizes, rows, md, csv_rows)
    md += ["Floors per window on these links (S = 4P bytes): a parameter server whose pushes and pulls overlap "
           "perfectly needs S / rate; ring all-reduce needs 2(n-1)/n S / rate = 1.5 S / rate at n = 4.", ""]
    with open(a.md, "w") as f:
        f.write("\n".join(md) + "\n")
    with open(a.csv, "w", newline="") as f:
        csv.writer(f).writerows(csv_rows)
    print("\n".join(md))
    chart(a, sizes, rows, a.rate_bits / 8)
    return 0


def chart(a, sizes, rows, rate_bytes):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("multihost_report: python3-matplotlib is not installed (deploy/install-deps.sh installs it): no chart "
              f"written, {a.png} does not exist", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 5), squeeze=False)
    for ax, p in zip(axes[0], sizes):
        mine = [r for r in rows if r["p"] == p and r["window_ms"]]
        names = [r["config"] for r in mine]
        times = [r["window_ms"] / 1e3 for r in mine]
        colors = ["#888888" if n in BASELINES else "#1f77b4" for n in names]
        ax.bar(range(len(mine)), times, color=colors)
        ax.set_xticks(range(len(mine)))
        ax.set_xticklabels(names, rotation=35, ha="right")
        s = 4 * p
        ax.axhline(s / rate_bytes, color="green", linestyle="--", label="S / rate (PS floor)")
        ax.axhline(1.5 * s / rate_bytes, color="red", linestyle=":", label="1.5 S / rate (ring floor)")
        ax.set_ylabel("window (s, median)")
        ax.set_title(f"P = {label(p)} f32, links {a.rate}")
        ax.legend(fontsize=8)
    fig.suptitle(f"gradacc across 4 simulated worker hosts — commit {a.commit}")
    fig.tight_layout()
    fig.savefig(a.png, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
