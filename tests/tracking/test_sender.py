"""The background sender: order, backoff, refusals and the loss report, with plain callables."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

import pytest

from recsys.tracking.sender import Sender, is_transient_mlflow_error

# Short waits so the tests run in well under a second; the shape (doubling, cap) is what counts.
FAST = {"backoff_initial_s": 0.02, "backoff_max_s": 0.08, "closing_retry_s": 0.02}


class Flaky:
    """A 'server' that raises ConnectionRefusedError for its first `failures` calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: list[float] = []
        self.received: list[int] = []

    def send(self, value: int) -> Callable[[], int]:
        def call() -> int:
            self.attempts.append(time.monotonic())
            if len(self.attempts) <= self.failures:
                raise ConnectionRefusedError("server away")
            self.received.append(value)
            return value

        return call


def test_retries_deliver_everything_in_order() -> None:
    server = Flaky(failures=4)
    sender = Sender("fake", **FAST)
    futures = [sender.submit("log metrics", server.send(i)) for i in range(50)]
    report = sender.close(timeout_s=10)
    assert server.received == list(range(50))
    assert [f.result(timeout=0) for f in futures] == list(range(50))
    assert report.complete and report.delivered == 50
    assert report.summary() == "all 50 calls delivered"


def test_backoff_doubles_up_to_the_cap() -> None:
    server = Flaky(failures=5)
    sender = Sender("fake", backoff_initial_s=0.02, backoff_max_s=0.08, closing_retry_s=1.0)
    sender.submit("log metrics", server.send(0))
    deadline = time.monotonic() + 10
    while not server.received and time.monotonic() < deadline:
        time.sleep(0.01)
    sender.close(timeout_s=1)
    gaps = [b - a for a, b in zip(server.attempts, server.attempts[1:], strict=False)]
    expected = [0.02, 0.04, 0.08, 0.08, 0.08]
    assert len(gaps) == len(expected)
    for gap, want in zip(gaps, expected, strict=True):
        assert want * 0.9 <= gap <= want + 0.5, (gaps, expected)  # slack: 2 busy cores


def test_submit_never_blocks_while_the_server_is_away() -> None:
    server = Flaky(failures=10**9)
    sender = Sender("fake", **FAST)
    took = []
    for i in range(2000):
        start = time.perf_counter()
        sender.submit("log metrics", server.send(i), items=3)
        took.append(time.perf_counter() - start)
    took.sort()
    # A blocking design never returns here (the server never comes back). The 99th percentile,
    # not the max: on a loaded 2-core machine the OS alone can pause any call for a while.
    assert took[len(took) * 99 // 100] < 0.01, took[-20:]
    assert sender.pending() == 2000
    report = sender.close(timeout_s=0.2)
    assert not report.complete and report.delivered == 0
    assert report.lost_calls == {"log metrics": 2000}
    assert report.lost_items == {"log metrics": 6000}
    assert "2000 calls lost: log metrics x2000 (6000 values)" in report.summary()
    assert sender.pending() == 0


def test_close_stops_and_joins_the_thread_and_later_submits_are_counted() -> None:
    before = set(threading.enumerate())
    sender = Sender("fake", **FAST)
    sender.close(timeout_s=1)
    assert set(threading.enumerate()) == before
    future = sender.submit("log metrics", lambda: 1)
    assert isinstance(future.exception(timeout=0), RuntimeError)
    assert sender.report().lost_calls == {"log metrics": 1}


def test_refused_call_is_lost_counted_and_later_calls_still_go(
    caplog: pytest.LogCaptureFixture,
) -> None:
    received: list[str] = []

    def refuse() -> None:
        raise ValueError("bad value")

    sender = Sender("fake", is_transient=lambda err: not isinstance(err, ValueError), **FAST)
    with caplog.at_level(logging.WARNING, logger="recsys.tracking.sender"):
        sender.submit("log params", refuse, items=2)
        sender.submit("log params", refuse, items=5)
        sender.submit("log metrics", lambda: received.append("m"))
        report = sender.close(timeout_s=5)
    assert received == ["m"]
    assert isinstance(sender.refused, ValueError)
    assert report.lost_calls == {"log params": 2} and report.lost_items == {"log params": 7}
    assert report.first_error is not None and "bad value" in report.first_error
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1  # warned once, not per call


def test_full_queue_drops_and_counts() -> None:
    gate = threading.Event()
    sender = Sender("fake", max_queued=3, **FAST)
    sender.submit("hold", lambda: gate.wait(5))
    for _ in range(5):
        sender.submit("log metrics", lambda: None)
    gate.set()
    report = sender.close(timeout_s=5)
    assert report.lost_calls == {"log metrics": 3}
    assert report.delivered == 3


def test_mlflow_error_classification() -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import (
        INVALID_PARAMETER_VALUE,
        REQUEST_LIMIT_EXCEEDED,
        RESOURCE_DOES_NOT_EXIST,
    )

    assert is_transient_mlflow_error(MlflowException("API request failed: connection refused"))
    assert is_transient_mlflow_error(MlflowException("slow", error_code=REQUEST_LIMIT_EXCEEDED))
    assert is_transient_mlflow_error(ConnectionRefusedError())
    assert is_transient_mlflow_error(TimeoutError())
    assert not is_transient_mlflow_error(MlflowException("x", error_code=INVALID_PARAMETER_VALUE))
    assert not is_transient_mlflow_error(MlflowException("x", error_code=RESOURCE_DOES_NOT_EXIST))
    assert not is_transient_mlflow_error(FileNotFoundError("model.pt"))
    assert not is_transient_mlflow_error(TypeError("bad argument"))


def test_ctrl_c_during_close_stops_the_flush_and_joins_the_thread() -> None:
    """A second Ctrl-C while finishing must not wait out the flush deadline nor leak the thread."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    server = Flaky(failures=10**9)
    sender = Sender("fake", backoff_initial_s=0.05, backoff_max_s=0.05, closing_retry_s=0.05)
    sender.submit("log metrics", server.send(0))
    previous = signal.signal(signal.SIGINT, interrupt)
    timer = threading.Timer(
        0.3, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)
    )
    start = time.monotonic()
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            sender.close(timeout_s=60)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - start < 10
    assert not sender._thread.is_alive()
    assert sender.report().lost_calls == {"log metrics": 1}
