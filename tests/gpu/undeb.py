#!/usr/bin/env python3
"""Unpacks a .deb's files into a folder, without dpkg (the lent GPU machine may have none).

    python3 tests/gpu/undeb.py PACKAGE.deb PREFIX

A .deb is an ar archive whose data.tar.{xz,zst,gz} holds the files; only
xz and gz are read (Debian 12's packages use xz). Symlinks are kept.
"""
import io
import sys
import tarfile


def members(blob):
    if blob[:8] != b"!<arch>\n":
        raise SystemExit("not a .deb (ar) archive")
    at = 8
    while at + 60 <= len(blob):
        header = blob[at:at + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        yield name, blob[at + 60:at + 60 + size]
        at += 60 + size + (size & 1)


def main():
    deb, prefix = sys.argv[1], sys.argv[2]
    with open(deb, "rb") as f:
        blob = f.read()
    for name, data in members(blob):
        if name.startswith("data.tar"):
            mode = {"data.tar.xz": "r:xz", "data.tar.gz": "r:gz", "data.tar": "r:"}.get(name)
            if mode is None:
                raise SystemExit(f"{deb}: {name} is not readable here (xz or gz only)")
            with tarfile.open(fileobj=io.BytesIO(data), mode=mode) as tar:
                tar.extractall(prefix)
            return 0
    raise SystemExit(f"{deb}: no data.tar member")


if __name__ == "__main__":
    sys.exit(main())
