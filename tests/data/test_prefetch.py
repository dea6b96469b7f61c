"""The read-ahead thread: same items in the same order, errors surface, early stops end it;
loader worker processes end with their iteration too."""

from __future__ import annotations

import multiprocessing
import threading
import time
from itertools import count, islice

import pytest

from recsys.compose import load_config
from recsys.data import loader
from recsys.data.loader import LoaderOptions, StreamingDataset, make_loader
from recsys.data.prefetch import ReadAheadSwitch, ThreadPrefetcher, stop_all
from recsys.schema import resolve_schema
from tests.synthetic import TinyLog


def _alive_loader_threads() -> int:
    return sum(t.name == "recsys-loader" and t.is_alive() for t in threading.enumerate())


def test_yields_every_item_in_order():
    assert list(ThreadPrefetcher(range(1000), depth=3)) == list(range(1000))


def test_switched_off_the_consumer_makes_each_item_itself():
    makers = []

    def source():
        for i in range(50):
            makers.append(threading.get_ident())
            yield i

    batches = ThreadPrefetcher(source(), depth=3, switch=ReadAheadSwitch(read_ahead=False))
    assert list(batches) == list(range(50))
    assert set(makers) == {threading.get_ident()}  # nothing was made ahead by the thread
    assert _alive_loader_threads() == 0


def test_flipping_the_switch_keeps_every_item_once_in_order():
    makers = []

    def source():
        for i in range(2000):
            makers.append(threading.get_ident())
            if i % 7 == 0:
                time.sleep(0.0005)  # let the thread race the consumer for the next item
            yield i

    switch = ReadAheadSwitch()
    seen = []
    for item in ThreadPrefetcher(source(), depth=4, switch=switch):
        seen.append(item)
        switch.set(read_ahead=(item // 50) % 2 == 0)  # as the trainer does between steps
    assert seen == list(range(2000))
    assert len(set(makers)) == 2  # both sides made some


def test_an_error_made_inline_reaches_the_consumer():
    def source():
        yield from range(3)
        raise ValueError("data/train.csv, line 4, column 'age': 'abc' is not a number")

    seen = []
    with pytest.raises(ValueError, match="line 4"):
        for item in ThreadPrefetcher(source(), switch=ReadAheadSwitch(read_ahead=False)):
            seen.append(item)
    assert seen == [0, 1, 2] and _alive_loader_threads() == 0


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


def test_closing_an_iterator_mid_way_ends_the_thread():
    batches = iter(ThreadPrefetcher(count(), depth=2))
    assert next(batches) == 0
    assert _alive_loader_threads() == 1
    batches.close()  # what an epoch left early does
    assert _alive_loader_threads() == 0


def test_threads_of_iterators_never_closed_are_stopped_at_exit():
    # An iterator still referenced at exit (a frame kept by a traceback, a reference cycle)
    # is never finalized; stop_all, run at exit, ends its thread while it can still finish.
    batches = iter(ThreadPrefetcher(count(), depth=2))
    next(batches)
    stop_all()
    assert _alive_loader_threads() == 0
    batches.close()  # still fine afterwards


def test_closing_an_iteration_of_the_loader_stops_its_worker_processes(tiny_log: TinyLog):
    schema = resolve_schema(load_config([]).data, 16)
    options = LoaderOptions(batch_size=64, num_workers=1)
    batches = iter(make_loader(StreamingDataset(str(tiny_log.train), schema, options)))
    next(batches)
    assert multiprocessing.active_children()
    batches.close()
    assert not multiprocessing.active_children()


def test_the_thread_reads_a_whole_block_ahead(tiny_log: TinyLog, monkeypatch: pytest.MonkeyPatch):
    """A block's batches all come after one featurize call: the queue has room for all of
    them, so the thread moves on to the next block while training takes this one."""
    monkeypatch.setattr(loader, "READ_BLOCK_ROWS", 640)  # 10 batches of 64 per block
    made = []
    monkeypatch.setattr(StreamingDataset, "_batch", _counting(StreamingDataset._batch, made))
    schema = resolve_schema(load_config([]).data, 16)
    dataset = StreamingDataset(str(tiny_log.train), schema, LoaderOptions(batch_size=64))
    batches = iter(make_loader(dataset))
    next(batches)
    deadline = time.monotonic() + 10
    while len(made) < 11 and time.monotonic() < deadline:
        time.sleep(0.01)
    batches.close()
    assert len(made) >= 11  # the one taken, and the rest of its block (+1) waiting


def _counting(method, calls: list):
    def counted(*args, **kwargs):
        calls.append(1)
        return method(*args, **kwargs)

    return counted
