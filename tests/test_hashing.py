"""Golden values for the hashing trick: an upgrade must never silently remap ids."""

from __future__ import annotations

import mmh3
import numpy as np
import pyarrow as pa
import pytest

from recsys.hashing import (
    MISSING_BUCKET,
    hash32_array,
    hash_array,
    hash_id,
    qr_split,
    second_seed,
)


def test_mmh3_matches_its_published_reference_value() -> None:
    # mmh3's own README: mmh3.hash("foo") == -156908512 (x86 32-bit, seed 0, signed).
    assert mmh3.hash("foo") == -156908512


@pytest.mark.parametrize(
    ("raw", "seed", "expected"),
    [
        ("196", 0, 552209005),
        ("196", 42, 3192579492),
        ("Comedy", 7, 991579132),
        ("héllo", 1, 3542237226),
    ],
)
def test_mmh3_unsigned_golden(raw: str, seed: int, expected: int) -> None:
    assert mmh3.hash(raw, seed, signed=False) == expected


@pytest.mark.parametrize(
    ("raw", "seed", "buckets", "expected"),
    [
        ("196", 0, 1000, 767),
        (196, 101, 4096, 1781),
        ("Comedy", 107, 64, 14),
        ("héllo", 1, 2**20, 150877),
        (-7, 3, 100, 15),
        (2**40, 9, 1000003, 254765),
        ("", 0, 10, MISSING_BUCKET),
        (None, 5, 10, MISSING_BUCKET),
    ],
)
def test_bucket_golden(raw: object, seed: int, buckets: int, expected: int) -> None:
    assert hash_id(raw, seed, buckets) == expected


def test_integer_and_text_ids_share_buckets() -> None:
    ints = hash_array(pa.array([196, 7, None], pa.int64()), 101, 4096)
    text = hash_array(pa.array(["196", "7", None]), 101, 4096)
    floats = hash_array(pa.array([196.0, 7.0, None]), 101, 4096)
    np.testing.assert_array_equal(ints, text)
    np.testing.assert_array_equal(ints, floats)
    assert ints[2] == MISSING_BUCKET


def test_vectorised_path_equals_reference() -> None:
    rng = np.random.default_rng(0)
    values = [f"id{int(v)}" for v in rng.zipf(1.5, 2000) % 5000] + [None, ""]
    chunked = pa.chunked_array([pa.array(values[:700]), pa.array(values[700:])])
    got = hash_array(chunked, 17, 999)
    assert got.dtype == np.int64
    assert got.tolist() == [hash_id(v, 17, 999) for v in values]
    assert got.min() >= 0 and got.max() < 999


def test_seed_changes_buckets() -> None:
    ids = pa.array([str(i) for i in range(200)])
    assert (hash_array(ids, 1, 10**6) != hash_array(ids, 2, 10**6)).mean() > 0.99


def test_large_string_and_dictionary_columns() -> None:
    plain = hash_array(pa.array(["a", "b", None]), 3, 50)
    large = hash_array(pa.array(["a", "b", None], pa.large_string()), 3, 50)
    dictionary = hash_array(pa.array(["a", "b", None]).dictionary_encode(), 3, 50)
    np.testing.assert_array_equal(plain, large)
    np.testing.assert_array_equal(plain, dictionary)


def test_empty_column() -> None:
    assert hash_array(pa.chunked_array([], pa.string()), 0, 10).shape == (0,)


# ------------------------------------------------------------ vectorised murmur3 against mmh3


def _reference(values: list, seed: int) -> np.ndarray:
    return np.array([mmh3.hash(str(v), seed, signed=False) for v in values], dtype=np.uint32)


@pytest.mark.parametrize("seed", [0, 7, 2**31 + 5, 2**32 - 1])
def test_hash32_of_integers_equals_mmh3_of_decimal_text(seed: int) -> None:
    rng = np.random.default_rng(seed % 1000)
    edges = [0, 1, -1, 9, 10, -10, 99, 100, 9999, 10**4, -(10**4), 2**63 - 1, -(2**63)]
    edges += (
        [10**k for k in range(19)]
        + [-(10**k) for k in range(19)]
        + [10**k - 1 for k in range(1, 19)]
    )
    drawn = rng.integers(-(2**63), 2**63 - 1, 5000, dtype=np.int64).tolist()
    small = rng.integers(-1000, 1000, 500).tolist()
    values = edges + drawn + small
    hashes, present = hash32_array(pa.array(values, pa.int64()), seed)
    np.testing.assert_array_equal(hashes, _reference(values, seed))
    assert present.all()


def test_hash32_of_other_integer_types() -> None:
    for kind, values in [
        (pa.int8(), [-128, 0, 127]),
        (pa.int32(), [-(2**31), 2**31 - 1, 5]),
        (pa.uint64(), [0, 2**64 - 1, 2**63]),
        (pa.uint16(), [0, 65535]),
    ]:
        hashes, _ = hash32_array(pa.array(values, kind), 11)
        np.testing.assert_array_equal(hashes, _reference(values, 11), err_msg=str(kind))


@pytest.mark.parametrize("seed", [0, 3, 2**32 - 1])
def test_hash32_of_unicode_strings_equals_mmh3(seed: int) -> None:
    rng = np.random.default_rng(seed % 97)
    # Code points across 1-, 2-, 3- and 4-byte UTF-8, lengths 0..40 characters.
    alphabet = [0x41, 0x7A, 0xE9, 0x3B1, 0x4E2D, 0x1F600, 0x10348, 0x30]
    values = [
        "".join(chr(int(c)) for c in rng.choice(alphabet, int(rng.integers(0, 41))))
        for _ in range(3000)
    ]
    hashes, present = hash32_array(pa.array(values), seed)
    np.testing.assert_array_equal(hashes[present], _reference(values, seed)[present])
    np.testing.assert_array_equal(present, [v != "" for v in values])


def test_hash32_of_a_few_key_lengths_equals_mmh3() -> None:
    """Up to _FEW_LENGTHS lengths take one pass each, more take the sort: both exact."""
    rng = np.random.default_rng(7)
    for lengths in ((0, 8), (3, 8, 13), (1, 2, 5, 9, 17)):
        values = ["x" * int(n) + f"{i:04d}" for i, n in enumerate(rng.choice(lengths, 2000))]
        values[::7] = [""] * len(values[::7])
        hashes, present = hash32_array(pa.array(values), 11)
        np.testing.assert_array_equal(hashes[present], _reference(values, 11)[present])
        np.testing.assert_array_equal(present, [v != "" for v in values])


def test_hash32_of_one_key_length_with_missing_values_equals_mmh3() -> None:
    """Distinct 8-hex ids (read as one [m, 8] view of the data buffer) with empty strings and
    nulls among them, whole and sliced (the view starts at the slice's first offset)."""
    values = [f"{v:08x}" for v in np.random.default_rng(3).integers(0, 2**32, 20_000)]
    full = pa.array(values)
    values[::5] = [""] * len(values[::5])
    values[1::11] = [None] * len(values[1::11])
    expected = [hash_id(v, 9, 10**6) for v in values]
    assert hash_array(full, 9, 10**6).tolist() == [hash_id(v, 9, 10**6) for v in full.to_pylist()]
    assert hash_array(pa.array(values), 9, 10**6).tolist() == expected
    assert hash_array(pa.array(values).slice(7, 12_000), 9, 10**6).tolist() == expected[7:12_007]
    hashes, present = hash32_array(pa.array(values), 9)
    np.testing.assert_array_equal(hashes[present], _reference(values, 9)[present])
    np.testing.assert_array_equal(present, [bool(v) for v in values])


def test_hash32_of_sliced_chunked_and_repetitive_columns() -> None:
    """Sliced arrays (non-zero offset), chunks, and the dictionary path for repetitive data."""
    values = [f"{v:08x}" for v in np.random.default_rng(1).integers(0, 50, 20_000)]
    values[5] = None
    column = pa.chunked_array([pa.array(values[:9000]), pa.array(values[9000:])])
    sliced = pa.array(values).slice(3, 10_000)
    expected = [hash_id(v, 5, 10**6) for v in values]
    assert hash_array(column, 5, 10**6).tolist() == expected
    assert hash_array(sliced, 5, 10**6).tolist() == expected[3:10_003]
    assert hash_array(pa.array(values, pa.large_string()), 5, 10**6).tolist() == expected


def test_golden_buckets_through_the_vectorised_path() -> None:
    golden = [("196", 0, 1000, 767), (196, 101, 4096, 1781), ("Comedy", 107, 64, 14)]
    golden += [("héllo", 1, 2**20, 150877), (-7, 3, 100, 15), (2**40, 9, 1000003, 254765)]
    for raw, seed, buckets, expected in golden:
        kind = pa.int64() if isinstance(raw, int) else pa.string()
        assert hash_array(pa.array([raw], kind), seed, buckets).tolist() == [expected], raw


def test_seed_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="seed"):
        hash32_array(pa.array(["a"]), -1)


# ------------------------------------------------------------------- collision-reducing rules


def test_qr_split_is_complementary_and_keeps_missing() -> None:
    n, divisor = 1001, 32  # buckets 1..1000
    buckets = np.arange(n)
    quotient, remainder = qr_split(buckets, divisor)
    assert quotient[0] == remainder[0] == MISSING_BUCKET
    pairs = set(zip(quotient[1:].tolist(), remainder[1:].tolist(), strict=True))
    assert len(pairs) == n - 1  # no two buckets share both rows
    assert quotient[1:].min() == 1 and quotient.max() == 1 + -(-(n - 1) // divisor) - 1
    assert remainder[1:].min() == 1 and remainder.max() == divisor


def test_double_hashing_reduces_full_collisions() -> None:
    """Two ids share a double-hashed vector only if both hashes collide."""
    ids = pa.array(np.arange(20_000, dtype=np.int64))
    buckets = 4096
    first = hash_array(ids, 5, buckets)
    second = hash_array(ids, second_seed(5), buckets)
    _, counts = np.unique(first, return_counts=True)
    plain = counts[counts > 1].sum() / len(first)
    pair_keys = first * buckets + second
    _, pair_counts = np.unique(pair_keys, return_counts=True)
    double = pair_counts[pair_counts > 1].sum() / len(first)
    assert plain > 0.9  # 20k ids into 4095 buckets: nearly every id shares its bucket
    assert double < 0.03, double  # expected ~ 1 - exp(-20k / 4095**2) ~ 0.0012
    assert (first != second).mean() > 0.99  # the second seed gives another hash


def test_hashing_benchmark_runs_and_both_paths_agree() -> None:
    from recsys.bench.hashing import bench_hashing

    rows = bench_hashing(num_ids=3000, repeats=1)  # raises if the two paths disagree
    assert {(r["input"], r["path"]) for r in rows} == {
        (i, p) for i in ("criteo_hex8", "int64") for p in ("per_value_mmh3", "vectorised_numpy")
    }
    assert all(r["ids_per_s"] > 0 for r in rows)
