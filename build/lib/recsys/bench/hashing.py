"""Hashing throughput: the per-value mmh3 path the project started with vs the numpy one.

    .venv/bin/python -m recsys.bench.hashing [--ids N]

`bench_hashing()` returns one row per (input, path) with ids/s, so `make bench` can put it
in its table and JSON report.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import mmh3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.hashing import hash_array


def per_value_hash_array(values: pa.Array, seed: int, num_buckets: int) -> np.ndarray:
    """The original path: dictionary-encode, then one mmh3 call per distinct value."""
    text = values if pa.types.is_string(values.type) else pc.cast(values, pa.string())
    text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    encoded = pc.dictionary_encode(text)
    uniques = encoded.dictionary.to_pylist()
    hashes = np.fromiter(
        (mmh3.hash(u, seed, signed=False) for u in uniques), dtype=np.uint64, count=len(uniques)
    )
    buckets = (1 + hashes % np.uint64(num_buckets - 1)).astype(np.int64)
    indices = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    out = np.zeros(len(indices), dtype=np.int64)
    present = indices >= 0
    out[present] = buckets[indices[present]]
    return out


def bench_inputs(num_ids: int, seed: int = 0) -> dict[str, pa.Array]:
    """Criteo-like 8-hex categorical ids (nearly all distinct) and int64 ids (user-id-like)."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2**32, num_ids, dtype=np.uint64)
    hex_ids = pa.array(np.char.mod("%08x", words).astype(object), pa.string())
    int_ids = pa.array(rng.integers(0, 10**10, num_ids, dtype=np.int64))
    return {"criteo_hex8": hex_ids, "int64": int_ids}


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_hashing(num_ids: int = 1_000_000, repeats: int = 3) -> list[dict]:
    """ids/s of both paths on each input (best of `repeats`); checks they agree."""
    rows = []
    for name, values in bench_inputs(num_ids).items():
        old = per_value_hash_array(values, 7, 2**20)
        new = hash_array(values, 7, 2**20)
        if not np.array_equal(old, new):
            raise AssertionError(f"{name}: vectorised buckets differ from the per-value path")
        paths = {"per_value_mmh3": per_value_hash_array, "vectorised_numpy": hash_array}
        seconds = {
            p: _best_seconds(lambda f=f, v=values: f(v, 7, 2**20), repeats)
            for p, f in paths.items()
        }
        for path, s in seconds.items():
            rows.append(
                {
                    "input": name,
                    "path": path,
                    "ids": num_ids,
                    "seconds": s,
                    "ids_per_s": num_ids / s,
                    "speedup": seconds["per_value_mmh3"] / s,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    print(f"{'input':<12} {'path':<17} {'ids/s':>12} {'speedup':>8}")
    for row in bench_hashing(args.ids):
        print(
            f"{row['input']:<12} {row['path']:<17} {row['ids_per_s']:>12,.0f} {row['speedup']:>7.1f}x"
        )


if __name__ == "__main__":
    main()
