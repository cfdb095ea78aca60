#!/usr/bin/python3
"""Checks that the documentation names only what exists (ctest label docs, in tests/run.sh).

For README.md, docs/*.md and tests/bench/README.md:
  * every relative link [text](path#anchor) names a file or folder that
    exists, and an anchor that the target has (a heading's GitHub slug or an
    <a id="...">);
  * every repository path in backticks (`server/trainer.h`, `tests/gpu/run.sh`,
    ...) exists;
  * every --flag written after gradacc-server, gradacc-worker or the gradacc
    CLI on a line is a flag that binary's --help lists.
Usage: tests/docs_check.py [--server BIN --worker BIN --cli BIN] (without the
binaries the flag check is skipped, saying so). Exit 1 listing every problem.
"""
import argparse
import glob
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = ("proto/", "server/", "worker/", "common/", "tests/", "deploy/", "docs/", ".ci/")


def slug(heading):
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def anchors(path):
    out, fence = set(), False
    with open(path) as f:
        for line in f:
            if line.startswith("```"):
                fence = not fence
            if not fence and line.startswith("#"):
                out.add(slug(line.lstrip("#")))
            out.update(re.findall(r'<a id="([^"]+)"', line))
    return out


def help_flags(binary):
    text = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=60).stdout
    return set(re.findall(r"--([a-z][a-z0-9_]*)", text))


def check(doc, flags, problems):
    here = os.path.dirname(doc)
    rel = os.path.relpath(doc, ROOT)
    fence = False
    with open(doc) as f:
        lines = f.read().split("\n")
    for n, line in enumerate(lines, 1):
        if line.startswith("```"):
            fence = not fence
        where = f"{rel}:{n}"
        if not fence:
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"[a-z]+:", target):
                    continue
                path, _, anchor = target.partition("#")
                full = os.path.normpath(os.path.join(here, path)) if path else doc
                if not os.path.exists(full):
                    problems.append(f"{where}: link to {target}: {path} does not exist")
                elif anchor and full.endswith(".md") and anchor not in anchors(full):
                    problems.append(f"{where}: link to {target}: no heading or anchor '{anchor}' there")
            for code in re.findall(r"`([^`\s]+)`", line):
                code = code.rstrip(".,;:)")
                if code.startswith(TOP) and not re.search(r"[*<>{}$]|\.\.\.", code):
                    path = code.split(":")[0]
                    if not os.path.exists(os.path.join(ROOT, path)):
                        problems.append(f"{where}: `{code}` does not exist")
        if flags:
            for binary, known in flags.items():
                pattern = r"(?:^|[\s/`(])" + re.escape(binary) + r"(?=[\s`])(.*)"
                for m in re.finditer(pattern, line):
                    rest = re.split(r"[`|;&]|\s\\$|\s#", m.group(1))[0]
                    for flag in re.findall(r"(?<![\w-])--([a-z][a-z0-9_]*)", rest):
                        if flag not in known:
                            problems.append(f"{where}: {binary} --{flag}: not in {binary} --help")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server")
    ap.add_argument("--worker")
    ap.add_argument("--cli")
    a = ap.parse_args()
    docs = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "tests/bench/README.md")]
    docs += sorted(glob.glob(os.path.join(ROOT, "docs/*.md")))
    flags = {}
    if a.server and a.worker and a.cli:
        flags = {"gradacc-server": help_flags(a.server), "gradacc-worker": help_flags(a.worker),
                 "gradacc": help_flags(a.cli)}
        for name, known in flags.items():
            known.update({"help", "helpfull"})
            if len(known) < 5:
                print(f"docs_check: {name} --help lists almost no flags", file=sys.stderr)
                return 1
    else:
        print("docs_check: no binaries given: the flag check did not run", file=sys.stderr)
    problems = []
    for doc in docs:
        check(doc, flags, problems)
    for p in problems:
        print(p)
    print(f"docs_check: {len(docs)} documents, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
