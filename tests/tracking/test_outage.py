"""A tracking server that goes away mid-run loses nothing and never holds training up.

The slow test stops a real `mlflow server` (on 127.0.0.1) in the middle of a run, keeps
logging, starts it again on the same port and store, and reads every metric back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from recsys.config import TrackingConfig
from recsys.tracking import MlflowTracker, TrackingError, open_tracker
from tests.processes import free_port

STARTUP_DEADLINE_S = 120.0
HTTP_VARS = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")


@pytest.fixture(autouse=True)
def _restore_http_env() -> Iterator[None]:
    """A tracker sets MLflow's HTTP variables for the process; keep them out of other tests."""
    saved = {k: os.environ.get(k) for k in HTTP_VARS}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# ------------------------------------------------------------------ refused calls (fast)


@pytest.mark.slow  # creating the SQLite store alone takes ~5 s here
def test_refused_calls_are_reported_not_claimed_finished(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run MLflow refuses (deleted): the loss is counted and named, never silent success."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    tracker = open_tracker(TrackingConfig(uri=uri, experiment="refused", required=False), None)
    strict = open_tracker(TrackingConfig(uri=uri, experiment="refused", required=True), None)
    assert isinstance(tracker, MlflowTracker) and isinstance(strict, MlflowTracker)
    for run in (tracker, strict):
        client.delete_run(run.run_id)
        run.log_metrics({"loss": 1.0, "auc": 0.5}, step=0)  # returns at once, refused later
        run.log_metrics({"loss": 0.5}, step=1)
    with caplog.at_level(logging.INFO, logger="recsys.tracking"):
        tracker.finish()
    assert tracker.delivery.lost_calls == {"log metrics": 2, "finish run": 1}
    assert tracker.delivery.lost_items["log metrics"] == 3
    messages = [r.getMessage() for r in caplog.records]
    assert not any("ended FINISHED" in m for m in messages)
    incomplete = [m for m in messages if "INCOMPLETE" in m]
    assert (
        len(incomplete) == 1
        and "3 calls lost: log metrics x2 (3 values), finish run x1" in incomplete[0]
    )
    with pytest.raises(TrackingError, match="tracking.required"):
        strict.finish()


# ------------------------------------------------------------------- outage (real server)


def _start_server(root: Path, port: int) -> subprocess.Popen[bytes]:
    """`mlflow server` on 127.0.0.1:`port` over the store in `root`; waits until it answers."""
    cmd = [
        str(Path(sys.executable).with_name("mlflow")), "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--default-artifact-root", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = root / "server.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        health = f"http://127.0.0.1:{port}/health"
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
            urllib.request.urlopen(health, timeout=2) as resp,
        ):
            if resp.status == 200:
                return proc
        time.sleep(0.25)
    _kill(proc)
    pytest.fail(f"mlflow server did not come up in {STARTUP_DEADLINE_S}s:\n{log.read_text()}")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the server's whole process group (uvicorn workers too): an abrupt outage."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _log_steps(tracker: MlflowTracker, steps: range, pause_s: float) -> list[float]:
    """Log like a training loop does; the seconds each `log_metrics` call took."""
    took = []
    for step in steps:
        start = time.perf_counter()
        tracker.log_metrics({"loss": 1.0 / (step + 1), "auc": step / 1000}, step)
        took.append(time.perf_counter() - start)
        time.sleep(pause_s)  # the "training step"
    return took


@pytest.mark.slow
def test_server_outage_mid_run_loses_no_metric(tmp_path: Path) -> None:
    port = free_port()
    server = _start_server(tmp_path, port)
    try:
        cfg = TrackingConfig(uri=f"http://127.0.0.1:{port}", experiment="outage", required=True)
        tracker = open_tracker(cfg, {"trainer": {"lr": 0.1}})
        assert isinstance(tracker, MlflowTracker)
        tracker.flush_timeout_s = 120  # the restarted server needs a while on 2 busy cores
        _log_steps(tracker, range(0, 50), pause_s=0.005)

        _kill(server)
        down = _log_steps(tracker, range(50, 150), pause_s=0.03)  # ~3 s: several retries
        tracker.set_tags({"phase": "outage"})
        tracker.log_text("written while the server was away", "notes/outage.txt")
        assert tracker._sender.pending() > 0, "nothing queued: was the server really down?"

        server = _start_server(tmp_path, port)
        after = _log_steps(tracker, range(150, 200), pause_s=0.005)
        tracker.finish()
        _check_run(MlflowClient(f"http://127.0.0.1:{port}"), tracker, down + after)
    finally:
        _kill(server)


def _check_run(client: MlflowClient, tracker: MlflowTracker, took: list[float]) -> None:
    """Every step of every metric, the tag, the artifact and FINISHED reached the server."""
    took = sorted(took)
    # The 99th percentile: on a loaded 2-core machine the OS alone can pause any call a while.
    assert took[len(took) * 99 // 100] < 0.01, f"slowest log calls (s): {took[-5:]}"
    assert tracker.delivery.complete, tracker.delivery.summary()
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    for key in ("loss", "auc"):
        steps = [m.step for m in client.get_metric_history(tracker.run_id, key)]
        assert sorted(steps) == list(range(200)), f"{key}: missing {set(range(200)) - set(steps)}"
    assert run.data.tags["phase"] == "outage"
    assert run.data.params["trainer.lr"] == "0.1"
    assert [a.path for a in client.list_artifacts(tracker.run_id, "notes")] == ["notes/outage.txt"]
