"""The read-ahead thread: same items in the same order, errors surface, early stops end it."""

from __future__ import annotations

import threading
from itertools import islice

import pytest

from recsys.data.prefetch import ThreadPrefetcher


def _alive_loader_threads() -> int:
    return sum(t.name == "recsys-loader" and t.is_alive() for t in threading.enumerate())


def test_yields_every_item_in_order():
    assert list(ThreadPrefetcher(range(1000), depth=3)) == list(range(1000))


def test_an_error_in_the_source_reaches_the_consumer_after_the_items_before_it():
    def source():
        yield from range(5)
        raise ValueError("data/train.csv, line 7, column 'age': 'abc' is not a number")

    seen = []
    with pytest.raises(ValueError, match="line 7"):
        for item in ThreadPrefetcher(source(), depth=2):
            seen.append(item)
    assert seen == list(range(5))


def test_stopping_early_ends_the_thread():
    produced = []

    def source():
        for i in range(10_000):
            produced.append(i)
            yield i

    assert list(islice(ThreadPrefetcher(source(), depth=2), 10)) == list(range(10))
    assert _alive_loader_threads() == 0
    assert len(produced) < 100  # bounded read-ahead: it did not run on to the end


def test_each_iteration_starts_over():
    batches = ThreadPrefetcher([1, 2, 3])
    assert list(batches) == list(batches) == [1, 2, 3]
