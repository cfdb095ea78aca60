#!/usr/bin/python3
"""Checks the layers (ctest label unit): what may include what, and what the
Python module links.

  * common/ includes nothing of server/ or worker/; server/ nothing of
    worker/; worker/ nothing of server/ (channels and the client's wire
    helpers live in common/, the shard exchange's client in server/);
  * the Python module (--python-module, when built) does not link BLAS,
    LAPACK or zlib itself: its ELF NEEDED entries name none of them (the
    MLP training library stays with gradacc-worker; zlib still comes in
    through Debian's libgrpc and libprotobuf, which need it).
Exit 1 listing every violation.
"""
import argparse
import glob
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# folder -> the folders of ours it must not include from
FORBIDDEN = {"common": ("server/", "worker/"), "server": ("worker/",), "worker": ("server/",)}
UNWANTED_LIBS = re.compile(r"lib(open)?blas|libcblas|liblapack|libz\.so")


def include_violations():
    problems = []
    for folder, banned in FORBIDDEN.items():
        for path in sorted(glob.glob(os.path.join(ROOT, folder, "**", "*.*"), recursive=True)):
            if not path.endswith((".h", ".cc")):
                continue
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    m = re.match(r'#include "([^"]+)"', line)
                    if m and m.group(1).startswith(banned):
                        problems.append(f"{os.path.relpath(path, ROOT)}:{n}: includes {m.group(1)}")
    return problems


def module_violations(module):
    out = subprocess.run(["readelf", "-d", module], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
    if not needed:
        return [f"{module}: readelf shows no NEEDED entries (not a shared object?)"]
    return [f"{os.path.basename(module)} links {lib}" for lib in needed if UNWANTED_LIBS.search(lib)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-module", help="the built extension (_core*.so)")
    args = parser.parse_args()
    problems = include_violations()
    if args.python_module:
        problems += module_violations(args.python_module)
    else:
        print("layering_check: no --python-module: the module's links are not checked")
    for p in problems:
        print("layering_check:", p)
    if problems:
        return 1
    print("layering_check: layers hold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
