"""HyperLogLog distinct counting in numpy, over 64-bit mmh3 hashes of the ids' text.

2^p one-byte registers (16 KiB at the default p=14) estimate any number of distinct values with
a relative standard error of about 1.04 / sqrt(2^p) (0.8% at p=14). The estimate uses Ertl's
improved estimator ("New cardinality estimation algorithms for HyperLogLog sketches", 2017),
which needs no empirical bias tables and is unbiased from a handful of values to billions.

The hash seed is fixed and unrelated to any feature's bucketing seed, so the count of distinct
raw ids is independent of how those ids collide in a table.
"""

from __future__ import annotations

import math

import mmh3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HLL_SEED = 0x5EED_C0DE
DEFAULT_PRECISION = 14


class HyperLogLog:
    """A mergeable distinct-count sketch; `add` takes Arrow arrays of ids (nulls ignored)."""

    def __init__(self, precision: int = DEFAULT_PRECISION, seed: int = HLL_SEED):
        if not 4 <= precision <= 18:
            raise ValueError(f"HyperLogLog precision={precision}: need 4 <= precision <= 18.")
        self.p, self.seed = precision, seed
        self.registers = np.zeros(1 << precision, dtype=np.uint8)

    def add(self, values: pa.Array | pa.ChunkedArray) -> None:
        """Count the distinct non-null values of `values` (compared by their text)."""
        text = values if pa.types.is_string(values.type) else pc.cast(values, pa.string())
        uniques = pc.drop_null(pc.unique(text)).to_pylist()
        hashes = np.fromiter(
            (mmh3.hash64(u, self.seed, signed=False)[0] for u in uniques),
            dtype=np.uint64,
            count=len(uniques),
        )
        self.add_hashes(hashes)

    def add_hashes(self, hashes: np.ndarray) -> None:
        """Fold uniformly distributed uint64 hashes into the registers."""
        q = 64 - self.p
        index = (hashes >> np.uint64(q)).astype(np.intp)
        rest = hashes & np.uint64((1 << q) - 1)
        rank = (q + 1 - _bit_length(rest)).astype(np.uint8)  # leading zeros of the q bits + 1
        np.maximum.at(self.registers, index, rank)

    def merge(self, other: HyperLogLog) -> None:
        if (other.p, other.seed) != (self.p, self.seed):
            raise ValueError("cannot merge HyperLogLog sketches of different precision or seed.")
        np.maximum(self.registers, other.registers, out=self.registers)

    def estimate(self) -> float:
        """Estimated number of distinct values added (Ertl 2017, improved raw estimator)."""
        m, q = len(self.registers), 64 - self.p
        counts = np.bincount(self.registers, minlength=q + 2).astype(np.float64)
        z = m * _tau(1.0 - counts[q + 1] / m)
        for k in range(q, 0, -1):
            z = 0.5 * (z + counts[k])
        z += m * _sigma(counts[0] / m)
        return m * m / (2.0 * math.log(2.0) * z) if z > 0 else 0.0


def _bit_length(x: np.ndarray) -> np.ndarray:
    """Exact bit length of uint64 values (float log2 rounds just below powers of two)."""
    x = x.copy()
    n = np.zeros(len(x), dtype=np.int64)
    for shift in (32, 16, 8, 4, 2, 1):
        big = x >= np.uint64(1 << shift)
        n[big] += shift
        x[big] >>= np.uint64(shift)
    return n + (x > 0)


def _sigma(x: float) -> float:
    if x == 1.0:
        return math.inf
    y, z = 1.0, x
    while True:
        x *= x
        z_old, z = z, z + x * y
        y += y
        if z == z_old:
            return z


def _tau(x: float) -> float:
    if x in (0.0, 1.0):
        return 0.0
    y, z = 1.0, 1.0 - x
    while True:
        x = math.sqrt(x)
        z_old = z
        y *= 0.5
        z -= (1.0 - x) ** 2 * y
        if z == z_old:
            return z / 3.0
