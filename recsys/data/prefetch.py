"""Read ahead in a background thread of the training process, or make each batch when asked.

On a small machine, loader worker *processes* cost more than they save: every batch crosses a
process boundary as a handful of shared-memory tensors, and the worker competes with the
trainer's own threads for the same cores (measured on 2 cores: real-loader training at 0.5x
of in-memory batches with 1 worker, 0.82x in-process). A thread needs no copy, and Arrow,
numpy and torch release the GIL in their kernels, so reading and hashing the next batches
overlaps with the compute of the current one.

That overlap only pays while a core is free for the thread. When training's OpenMP threads
take every core, the loader thread preempts one of them and the others wait for it at the end
of every parallel op. There the trainer does better making each batch itself, between steps,
when it needs one (inline): on 2 cores with 2 training threads (Criteo layout, medians of 9
alternating rounds, samples/s as a share of pre-made batches') reading ahead gave 0.758 at
batch 4096 and 0.746 at 512, inline 0.792 and 0.804. `ReadAheadSwitch` says which of the two
runs now; the trainer's `ThreadChooser` sets it with the thread count it is trying.
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


class ReadAheadSwitch:
    """On: the loader thread makes batches ahead. Off: the consumer makes each one when it
    asks for it (the thread waits). Flipped by the consumer between items."""

    def __init__(self, read_ahead: bool = True):
        self._changed = threading.Condition()
        self._on = read_ahead

    @property
    def read_ahead(self) -> bool:
        return self._on

    def set(self, read_ahead: bool) -> None:
        if read_ahead != self._on:  # set before every step: no lock unless it changes
            with self._changed:
                self._on = read_ahead
                self._changed.notify_all()

    def wait(self, stop: threading.Event) -> bool:
        """Block until reading ahead is on (True) or `stop` is set and `wake` called (False)."""
        with self._changed:
            self._changed.wait_for(lambda: self._on or stop.is_set())
        return not stop.is_set()

    def wake(self) -> None:
        """Let waiting threads look at their stop event again."""
        with self._changed:
            self._changed.notify_all()


class ThreadPrefetcher(Iterable[T]):
    """Iterates `source` in a daemon thread, keeping up to `depth` items ready; or, while
    `switch` is off, on the consumer's thread, one item per request (in the same order).

    The thread starts with the iteration and is stopped and joined when the iterator ends,
    is closed (`close()`, or dropped) or the interpreter begins to exit, whichever comes
    first: one still running at teardown would be killed inside a torch or Arrow call, and
    that aborts the process.
    """

    def __init__(self, source: Iterable[T], depth: int = 4, switch: ReadAheadSwitch | None = None):
        self.source, self.depth = source, depth
        self.switch = switch or ReadAheadSwitch()

    def __iter__(self) -> Iterator[T]:
        reader = _ReadAhead(self.source, self.depth, self.switch)
        try:
            while True:
                item = reader.next()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:  # the consumer stopped early (max_steps, an error): let the producer go
            reader.stop()


class _ReadAhead:
    """One iteration's source, producer thread and queue, in `_running` until joined.

    Either side takes the next item from the source under `taking`, and the thread queues
    what it took before letting go, so items come out in the source's order whichever side
    made them. `slots` bounds the queue: the thread takes an item only with a slot free.
    """

    def __init__(self, source: Iterable, depth: int, switch: ReadAheadSwitch):
        self.items = iter(source)
        self.switch = switch
        self.ready: queue.SimpleQueue = queue.SimpleQueue()
        self.slots = threading.Semaphore(depth)
        self.taking = threading.Lock()
        self.exhausted = False  # the source ended or failed: nothing more to take
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._produce, daemon=True, name="recsys-loader")
        with _running_lock:
            _running.add(self)
        self.thread.start()

    def next(self) -> object:
        """The next item, _END or a _Failure: queued by the thread, or made here (switch off)."""
        if self.switch.read_ahead:
            item = self.ready.get()
            self.slots.release()
            return item
        with self.taking:
            try:
                item = self.ready.get_nowait()
            except queue.Empty:
                return self._take()
        self.slots.release()
        return item

    def _take(self) -> object:
        if self.exhausted:
            return _END
        try:
            return next(self.items)
        except StopIteration:
            self.exhausted = True
            return _END
        except BaseException as e:  # handed to the consumer, raised there with its traceback
            self.exhausted = True
            return _Failure(e)

    def _produce(self) -> None:
        _lower_priority()
        while self.switch.wait(self.stopping):
            self.slots.acquire()
            if self.stopping.is_set():
                return
            with self.taking:
                if self.exhausted:  # the consumer took the end itself
                    return
                item = self._take()
                self.ready.put(item)
            if self.exhausted:
                return

    def stop(self) -> None:
        """Ask the producer to stop, and wait for it (it may be in the middle of an item)."""
        # Woken, not polled: inline, every epoch ends with the thread waiting on the switch,
        # and a 0.1 s poll made each such end 0.1 s late.
        self.stopping.set()
        self.switch.wake()  # off: the thread waits on the switch
        self.slots.release()  # on, with the queue full: it waits for a slot
        self.thread.join()
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


def _lower_priority() -> None:
    """Yield the cores to the training threads; read-ahead only has to keep up on average."""
    # Not Linux, or not permitted: the thread runs at normal priority.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOADER_NICENESS)
