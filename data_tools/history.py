"""Causal history features: what a click log knows about a user or an item at each row.

A production feature pipeline serves, with every request, counts from the log up to that
moment: how often this user has rated (clicked) before, and how often they liked it. A model
cannot learn that from ids alone when most users at serving time are new (85% of MovieLens'
eval rows come from users unseen in training): the history of the user's first ratings is
the only thing known about them.

Every value uses rows strictly earlier in time only: rows that share a timestamp with the
scored row are not its history (MovieLens stores seconds, and users rate in bursts), and the
row's own label never enters. Computed over the whole log before it is split, as serving
computes them from the log up to the request.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

PRIOR_COUNT_SUFFIX = "_prior_ratings"
PRIOR_RATE_SUFFIX = "_prior_like_rate"


def prior_outcomes(
    keys: np.ndarray, timestamps: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the rows of the same key strictly earlier in time: how many, how many positive.

    Args:
        keys: One key per row (e.g. user ids), any order.
        timestamps: One time per row; equal times are not each other's history.
        labels: 0/1 outcome per row.

    Returns:
        ``(count, positives)``, int64 arrays aligned with the input rows.
    """
    if len(keys) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.lexsort((timestamps, keys))
    key, time = keys[order], timestamps[order]
    row = np.arange(len(order), dtype=np.int64)
    starts_key = np.r_[True, key[1:] != key[:-1]]
    starts_time = starts_key | np.r_[True, time[1:] != time[:-1]]
    # Sorted by (key, time): a row's history is everything from its key's first row up to
    # (not including) the first row of its own (key, time) run.
    key_start = np.maximum.accumulate(np.where(starts_key, row, 0))
    time_start = np.maximum.accumulate(np.where(starts_time, row, 0))
    positives_before = np.r_[0, np.cumsum(labels[order].astype(np.int64))]
    count, positives = np.empty_like(row), np.empty_like(row)
    count[order] = time_start - key_start
    positives[order] = positives_before[time_start] - positives_before[key_start]
    return count, positives


def like_rate(count: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """Laplace-smoothed share of positives, (positives + 1) / (count + 2): 0.5 with no history.

    Smoothing keeps a user's first few ratings from reading as certainty (1 of 1 -> 0.67).
    """
    return (positives + 1.0) / (count + 2.0)


def with_history(table: pa.Table, keys: tuple[str, ...], time: str, label: str) -> pa.Table:
    """Append ``<key>_prior_ratings`` and ``<key>_prior_like_rate`` for each key column.

    The ``_id`` suffix is dropped from the names: ``user_id`` gives ``user_prior_ratings``.

    Args:
        table: The whole log (all splits), any row order; its order is kept.
        keys: Key columns, e.g. ``("user_id", "item_id")``.
        time: Timestamp column.
        label: 0/1 label column.

    Returns:
        ``table`` with two columns more per key (int64 counts, float64 rates).
    """
    timestamps = table[time].to_numpy()
    labels = table[label].to_numpy()
    for key in keys:
        count, positives = prior_outcomes(table[key].to_numpy(), timestamps, labels)
        prefix = key.removesuffix("_id")
        table = table.append_column(prefix + PRIOR_COUNT_SUFFIX, pa.array(count, pa.int64()))
        table = table.append_column(
            prefix + PRIOR_RATE_SUFFIX, pa.array(like_rate(count, positives), pa.float64())
        )
    return table
