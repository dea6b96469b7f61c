"""Golden values for the hashing trick: an upgrade must never silently remap ids."""

from __future__ import annotations

import mmh3
import numpy as np
import pyarrow as pa
import pytest

from recsys.hashing import MISSING_BUCKET, hash_array, hash_id


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
