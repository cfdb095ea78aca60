#!/usr/bin/python3
"""Reads a safetensors file with nothing but the Python standard library,
following the format's specification (8-byte little-endian header length,
a JSON header of {name: {dtype, shape, data_offsets}}, then the raw bytes),
and prints each tensor's name, shape and sum. Exits non-zero on any
departure from the specification. Proves gradacc's output needs no gradacc
code to read; `safetensors.torch.load_file(path)` reads the same file.

    /usr/bin/python3 tests/python/read_safetensors.py final.safetensors
"""
import array
import json
import struct
import sys

path = sys.argv[1]
with open(path, "rb") as f:
    blob = f.read()
(n,) = struct.unpack("<Q", blob[:8])
header = json.loads(blob[8:8 + n])
data = blob[8 + n:]
assert (8 + n) % 8 == 0, "data is not 8-byte aligned"
meta = header.pop("__metadata__", {})
assert all(isinstance(v, str) for v in meta.values()), "metadata values must be strings"
end = 0
for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
    assert t["dtype"] == "F32", f"{name}: dtype {t['dtype']}"
    begin, stop = t["data_offsets"]
    assert begin == end, f"{name}: hole or overlap before it"
    count = 1
    for d in t["shape"]:
        count *= d
    assert stop - begin == 4 * count, f"{name}: size does not match shape"
    values = array.array("f")
    values.frombytes(data[begin:stop])
    if sys.byteorder != "little":
        values.byteswap()
    print(f"{name} {t['shape']} sum={sum(values):.6f}")
    end = stop
assert end == len(data), "trailing bytes"
print(f"metadata {json.dumps(meta, sort_keys=True)}")
