"""A background sender: the training thread enqueues tracking calls, one thread delivers them.

Why: MLflow calls are synchronous HTTP (or SQLite) requests. Made on the training thread, a
tracking server that goes away stalls training for minutes while MLflow's retries back off.
Here the training thread only appends to an in-memory queue (microseconds); the sender thread
delivers calls in the order they were made, retrying a failed call with capped exponential
backoff (1 s, 2 s, 4 s ... 30 s) until the server is back, so a run keeps every metric across
an outage. `close` flushes with a deadline and reports exactly what could not be delivered.

A call that fails with an error `is_transient` rejects (the server refused it: a bad value,
a deleted run) is not retried: it is counted as lost and reported, and delivery goes on.

The module is generic (any callables); the MLflow-specific parts are the two functions at the
bottom, `is_transient_mlflow_error` and `use_fail_fast_http`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

#: Calls held while the server is away; generous (a metrics call holds at most 1000 values).
MAX_QUEUED_CALLS = 100_000
#: First and largest wait between retries of a failed call.
BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 30.0
#: While flushing at close, retry at least this often so a returning server is seen quickly.
CLOSING_RETRY_S = 2.0
#: How often an idle sender checks whether the main thread has ended (see `_main_thread_gone`).
_POLL_S = 0.5
#: Seconds `close` waits by default for queued calls (tracking.flush_timeout_s).
DEFAULT_FLUSH_TIMEOUT_S = 60.0
#: What the sender sets for MLflow's own HTTP client (see `use_fail_fast_http`).
SENDER_HTTP_MAX_RETRIES = "0"
SENDER_HTTP_TIMEOUT_S = "10"


@dataclass
class _Task:
    what: str
    call: Callable[[], Any]
    items: int
    future: Future[Any] = field(default_factory=Future)


@dataclass
class SendReport:
    """What a sender delivered and lost; `lost_calls` / `lost_items` count by call name."""

    delivered: int = 0
    lost_calls: Counter[str] = field(default_factory=Counter)
    lost_items: Counter[str] = field(default_factory=Counter)
    first_error: str | None = None

    @property
    def complete(self) -> bool:
        """True when every call submitted was delivered."""
        return not self.lost_calls

    def summary(self) -> str:
        """E.g. "3 calls lost: log metrics x2 (1500 values), log artifact x1"."""
        if self.complete:
            return f"all {self.delivered} calls delivered"
        parts = [
            f"{w} x{n}" + (f" ({self.lost_items[w]} values)" if self.lost_items[w] != n else "")
            for w, n in self.lost_calls.items()
        ]
        return f"{sum(self.lost_calls.values())} calls lost: " + ", ".join(parts)


class Sender:
    """Delivers submitted calls in order on one background thread, retrying transient failures.

    Use: `submit` from any thread (never blocks); `close(timeout_s)` once, from the owner.
    """

    def __init__(
        self,
        name: str,
        *,
        is_transient: Callable[[BaseException], bool] = lambda err: True,
        max_queued: int = MAX_QUEUED_CALLS,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        closing_retry_s: float = CLOSING_RETRY_S,
    ) -> None:
        """Start the sender thread.

        Args:
            name: what the calls go to (e.g. the tracking URI), for messages and the thread name.
            is_transient: True for an error worth retrying (server away), False for a refusal.
            max_queued: calls held at most; further submits are dropped and counted as lost.
            backoff_initial_s, backoff_max_s: first and largest wait between retries.
            closing_retry_s: largest wait between retries while `close` flushes.
        """
        self.name = name
        self._is_transient = is_transient
        #: The first refused call's error (read by owners without the lock: one attribute).
        self.refused: BaseException | None = None
        self._max_queued = max_queued
        self._backoff = (backoff_initial_s, backoff_max_s, closing_retry_s)
        self._queue: deque[_Task] = deque()
        self._cond = threading.Condition()
        self._report = SendReport()
        self._deadline: float | None = None  # set by close: flush until then, then stop
        self._full_warned = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"tracking-sender[{name}]")
        self._thread.start()

    # ------------------------------------------------------------------ owner's side

    def submit(self, what: str, call: Callable[[], Any], items: int = 1) -> Future[Any]:
        """Queue `call` (named `what`, carrying `items` values) and return at once.

        Returns:
            A future with the call's result, or its error when it was refused or lost.
        """
        task = _Task(what, call, items)
        with self._cond:
            if self._deadline is not None or len(self._queue) >= self._max_queued:
                self._lose(task, "the sender is closed" if self._deadline else "queue full")
                return task.future
            self._queue.append(task)
            self._cond.notify()
        return task.future

    def pending(self) -> int:
        """Calls queued and not yet delivered (or lost)."""
        with self._cond:
            return len(self._queue)

    def report(self) -> SendReport:
        """A snapshot of what was delivered and lost so far."""
        with self._cond:
            r = self._report
            return SendReport(
                r.delivered, Counter(r.lost_calls), Counter(r.lost_items), r.first_error
            )

    def close(self, timeout_s: float) -> SendReport:
        """Deliver what is queued for up to `timeout_s` seconds, stop and join the thread.

        Calls still queued at the deadline are counted as lost. A KeyboardInterrupt while
        waiting stops delivery at once (the thread is still joined) and is raised again.
        """
        with self._cond:
            if self._deadline is None:
                self._deadline = time.monotonic() + max(0.0, timeout_s)
            self._cond.notify()
        try:
            self._join()
        except KeyboardInterrupt:
            self._abort()
            raise
        return self.report()

    def _join(self) -> None:
        """Wait for the thread; an in-flight call may outlast the deadline by its own timeout.

        Waits on an Event rather than `Thread.join` alone: a join cut short by Ctrl-C can leave
        the Thread reporting itself stopped while it still runs (CPython 3.11).
        """
        while not self._done.wait(timeout=_POLL_S):
            pass
        self._thread.join()

    def _abort(self) -> None:
        """Make the thread stop after its current call, and wait for it."""
        with self._cond:
            self._deadline = time.monotonic()
            self._cond.notify()
        self._join()

    # ------------------------------------------------------------------ sender thread

    def _run(self) -> None:
        """Deliver queued calls in order until closed (or the main thread is gone) and empty."""
        try:
            while (task := self._next()) is not None:
                self._deliver(task)
            with self._cond:
                while self._queue:
                    self._lose(self._queue.popleft(), "not delivered before the flush deadline")
        finally:
            self._done.set()

    def _next(self) -> _Task | None:
        """The head of the queue, waiting for one; None when it is time to stop."""
        with self._cond:
            while True:
                if self._past_deadline():
                    return None
                if self._queue:
                    return self._queue[0]
                if self._deadline is not None:
                    return None  # closing and all delivered
                if _main_thread_gone():
                    return None  # nothing queued and the interpreter is exiting
                self._cond.wait(timeout=_POLL_S)

    def _deliver(self, task: _Task) -> None:
        """Make `task`'s call until it succeeds, is refused, or the deadline passes."""
        wait_s = self._backoff[0]
        failures = 0
        while True:
            try:
                result = task.call()
            except Exception as err:
                if not self._is_transient(err):
                    self._refused(task, err)
                    return
                failures += 1
                if failures == 1:
                    self._warn_unreachable(task, err)
                if not self._sleep(wait_s):
                    return  # deadline: _run counts what is left as lost
                wait_s = min(wait_s * 2, self._backoff[1])
                continue
            self._delivered(task, result, failures)
            return

    def _delivered(self, task: _Task, result: Any, failures: int) -> None:
        with self._cond:
            self._queue.popleft()
            self._report.delivered += 1
            queued = len(self._queue)
        task.future.set_result(result)
        if failures:
            logger.warning(
                "Tracking at %s is reachable again after %d failed tries of '%s'; "
                "delivering the %d queued calls.",
                self.name,
                failures,
                task.what,
                queued,
            )

    def _refused(self, task: _Task, err: BaseException) -> None:
        with self._cond:
            self._queue.popleft()
            self._lose(task, f"refused: {err}", err)
        if self.refused is None:
            self.refused = err
            logger.warning(
                "Tracking call '%s' to %s was refused: %s. It is counted as lost (reported when "
                "the run ends); later calls are still sent.",
                task.what,
                self.name,
                err,
            )

    def _warn_unreachable(self, task: _Task, err: BaseException) -> None:
        logger.warning(
            "Tracking call '%s' to %s failed: %s. Training continues; %d calls are queued and "
            "retried with backoff (up to %g s apart) until the server is back.",
            task.what,
            self.name,
            err,
            self.pending(),
            self._backoff[1],
        )

    def _sleep(self, wait_s: float) -> bool:
        """Wait `wait_s` (shorter while closing); False when the deadline passed."""
        with self._cond:
            if self._deadline is not None:
                wait_s = min(wait_s, self._backoff[2])
            end = time.monotonic() + wait_s
            while (left := end - time.monotonic()) > 0:
                if self._past_deadline():
                    return False
                if self._deadline is None and _main_thread_gone():
                    self._start_exit_flush()
                self._cond.wait(timeout=min(left, _POLL_S))
            return not self._past_deadline()

    # ------------------------------------------------------------------ bookkeeping

    def _lose(self, task: _Task, why: str, err: BaseException | None = None) -> None:
        """Count `task` as lost (caller holds the lock) and fail its future."""
        self._report.lost_calls[task.what] += 1
        self._report.lost_items[task.what] += task.items
        if self._report.first_error is None:
            self._report.first_error = f"'{task.what}' {why}"
        if why == "queue full" and not self._full_warned:
            self._full_warned = True
            logger.warning(
                "Tracking queue for %s is full (%d calls): further calls are dropped and "
                "counted until it drains.",
                self.name,
                self._max_queued,
            )
        if why == "the sender is closed":
            logger.warning(
                "Tracking call '%s' to %s after the run ended: dropped.", task.what, self.name
            )
        if not task.future.done():
            task.future.set_exception(err or RuntimeError(f"tracking call '{task.what}' {why}"))

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _start_exit_flush(self) -> None:
        """The owner never called close and the interpreter is exiting: flush briefly, stop.

        The thread is not a daemon (daemon threads at interpreter teardown crash), so it must
        end on its own once the main thread is gone.
        """
        logger.warning(
            "Tracking sender for %s was never closed (a tracker not finished?); "
            "flushing %d calls for up to %g s before exit.",
            self.name,
            len(self._queue),
            self._backoff[1],
        )
        self._deadline = time.monotonic() + self._backoff[1]


def _main_thread_gone() -> bool:
    return not threading.main_thread().is_alive()


# ------------------------------------------------------------------------------ MLflow parts


def is_transient_mlflow_error(err: BaseException) -> bool:
    """True when retrying `err` may succeed: no connection, a timeout, HTTP 5xx or 429.

    MLflow reports a server it cannot reach as an `MlflowException` with error code
    INTERNAL_ERROR (HTTP 500); a refusal (bad value, deleted run) maps to a 4xx code.
    """
    status = _http_status(err)
    if status is not None:
        return status >= 500 or status == 429
    if isinstance(err, FileNotFoundError | PermissionError | IsADirectoryError):
        return False  # a local file to upload is missing: waiting will not bring it back
    if isinstance(err, OSError):
        return True  # connection refused/reset, timeouts (requests' errors are OSErrors too)
    # SQLAlchemy's OperationalError: a database store locked or away for a moment.
    return type(err).__name__ == "OperationalError"


def _http_status(err: BaseException) -> int | None:
    """The HTTP status an error stands for; None when it says nothing about one."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        return err.get_http_status_code()
    response = getattr(err, "response", None)  # requests.HTTPError from artifact uploads
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def use_fail_fast_http() -> None:
    """Make MLflow's HTTP client give up fast, for this process, unless the user set otherwise.

    MLflow's defaults (7 retries with exponential backoff, 120 s timeout) hold a call for
    minutes when the server is away; the sender retries on its own schedule instead and must
    notice a returning server quickly. MLflow reads these variables on every request and has no
    per-client setting, so they are set process-wide once, when a tracker is created (setting
    them around each call would race with other threads using MLflow). Values the user set
    are kept.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", SENDER_HTTP_MAX_RETRIES)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", SENDER_HTTP_TIMEOUT_S)
