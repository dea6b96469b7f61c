"""Causal history features: only strictly earlier rows of the same key, never the row itself."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from data_tools.history import like_rate, prior_outcomes, with_history


def _brute_force(keys, times, labels):
    count = [
        sum(1 for k, t in zip(keys, times, strict=True) if k == key and t < time)
        for key, time in zip(keys, times, strict=True)
    ]
    positives = [
        sum(int(y) for k, t, y in zip(keys, times, labels, strict=True) if k == key and t < time)
        for key, time in zip(keys, times, strict=True)
    ]
    return count, positives


def test_ties_in_time_are_not_each_others_history() -> None:
    keys = np.array([7, 7, 7, 7, 3])
    times = np.array([10, 20, 20, 30, 20])
    labels = np.array([1, 0, 1, 1, 1])
    count, positives = prior_outcomes(keys, times, labels)
    assert count.tolist() == [0, 1, 1, 3, 0]
    assert positives.tolist() == [0, 1, 1, 2, 0]


def test_matches_brute_force_on_shuffled_rows() -> None:
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 20, 500)
    times = rng.integers(0, 60, 500)  # many ties
    labels = rng.integers(0, 2, 500)
    count, positives = prior_outcomes(keys, times, labels)
    want_count, want_positives = _brute_force(keys.tolist(), times.tolist(), labels.tolist())
    assert count.tolist() == want_count
    assert positives.tolist() == want_positives


def test_empty_log() -> None:
    count, positives = prior_outcomes(np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    assert count.shape == positives.shape == (0,)


def test_like_rate_is_half_without_history() -> None:
    assert like_rate(np.array([0, 1, 4]), np.array([0, 1, 1])).tolist() == pytest.approx(
        [0.5, 2 / 3, 1 / 3]
    )


def test_with_history_names_columns_by_key_and_keeps_row_order() -> None:
    table = pa.table({"user_id": [2, 1, 2], "ts": [5, 1, 9], "y": pa.array([1, 0, 0], pa.int8())})
    out = with_history(table, keys=("user_id",), time="ts", label="y")
    assert out.column_names == ["user_id", "ts", "y", "user_prior_ratings", "user_prior_like_rate"]
    assert out["user_prior_ratings"].to_pylist() == [0, 0, 1]
    assert out["user_prior_like_rate"].to_pylist() == pytest.approx([0.5, 0.5, 2 / 3])
