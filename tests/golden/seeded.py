"""job.proto's counter-based generator (UniformAt), shared by the golden-data
generators: uniform(seed, n)[j] = UniformAt(seed, j), a float64 in [0, 1)
with 24 bits, so scaled by a power of two it is exact in float32."""

import struct

import numpy as np


def uniform(seed, size):
    j = np.arange(size, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + j * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) * (1.0 / 16777216.0)


def f32_bits(f):
    """The bit pattern of f rounded to float32, as an int."""
    return struct.unpack("<I", struct.pack("<f", f))[0]
