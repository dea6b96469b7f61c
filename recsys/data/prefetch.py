"""Read ahead in a background thread of the training process.

On a small machine, loader worker *processes* cost more than they save: every batch crosses a
process boundary as a handful of shared-memory tensors, and the worker competes with the
trainer's own threads for the same cores (measured on 2 cores: real-loader training at 0.5x
of in-memory batches with 1 worker, 0.82x in-process). A thread needs no copy, and Arrow,
numpy and torch release the GIL in their kernels, so reading and hashing the next batches
overlaps with the compute of the current one.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_END = object()
LOADER_NICENESS = 10  # Linux applies setpriority to one thread when given its thread id
_running: set[_ReadAhead] = set()  # read-ahead threads started and not yet joined
_running_lock = threading.Lock()


class ThreadPrefetcher(Iterable[T]):
    """Iterates `source` in a daemon thread, keeping up to `depth` items ready.

    The thread starts with the iteration and is stopped and joined when the iterator ends,
    is closed (`close()`, or dropped) or the interpreter begins to exit, whichever comes
    first: one still running at teardown would be killed inside a torch or Arrow call, and
    that aborts the process.
    """

    def __init__(self, source: Iterable[T], depth: int = 4):
        self.source, self.depth = source, depth

    def __iter__(self) -> Iterator[T]:
        reader = _ReadAhead(self.source, self.depth)
        try:
            while True:
                item = reader.ready.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:  # the consumer stopped early (max_steps, an error): let the producer go
            reader.stop()


class _ReadAhead:
    """One iteration's producer thread and its queue, in `_running` until joined."""

    def __init__(self, source: Iterable, depth: int):
        self.ready: queue.Queue = queue.Queue(maxsize=depth)
        self.stopping = threading.Event()
        self.thread = threading.Thread(
            target=_produce, args=(source, self.ready, self.stopping), daemon=True,
            name="recsys-loader",
        )  # fmt: skip
        with _running_lock:
            _running.add(self)
        self.thread.start()

    def stop(self) -> None:
        """Ask the producer to stop, and wait for it (it may be blocked on a full queue)."""
        self.stopping.set()
        while self.thread.is_alive():
            _drain(self.ready)
            self.thread.join(timeout=0.05)
        with _running_lock:
            _running.discard(self)


def stop_all() -> None:
    """Stop and join every read-ahead thread still running (an iterator never closed)."""
    with _running_lock:
        readers = list(_running)
    for reader in readers:
        reader.stop()


# Before interpreter teardown, while the threads can still finish the call they are in.
atexit.register(stop_all)


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def _produce(source: Iterable, ready: queue.Queue, stop: threading.Event) -> None:
    _lower_priority()
    try:
        for item in source:
            if not _put(ready, item, stop):
                return
        _put(ready, _END, stop)
    except BaseException as e:  # handed to the consumer, raised there with its traceback
        _put(ready, _Failure(e), stop)


def _lower_priority() -> None:
    """Yield the cores to the training threads; read-ahead only has to keep up on average."""
    # Not Linux, or not permitted: the thread runs at normal priority.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOADER_NICENESS)


def _put(ready: queue.Queue, item: object, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _drain(ready: queue.Queue) -> None:
    try:
        while True:
            ready.get_nowait()
    except queue.Empty:
        pass
