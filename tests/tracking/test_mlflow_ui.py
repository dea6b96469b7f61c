"""The real `mlflow ui` serves a run logged by `open_tracker` (REST API and rendered page)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from recsys.config import TrackingConfig
from recsys.tracking import MlflowTracker, open_tracker

pytestmark = pytest.mark.slow

RUN_NAME = "ui-check"
CHROMIUM = Path("/usr/bin/chromium")
STARTUP_DEADLINE_S = 120.0


@dataclass
class Served:
    base_url: str
    experiment_id: str
    run_id: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll `url` until it answers 200; fail with the server log when it dies or times out."""
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow ui exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    pytest.fail(
        f"mlflow ui did not answer {url} in {STARTUP_DEADLINE_S}s:\n{log.read_text()[-3000:]}"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server's whole process group (uvicorn workers included)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):  # children may outlive the leader briefly
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A SQLite store holding one finished run, served by `mlflow ui` on a free port."""
    root = tmp_path_factory.mktemp("mlflow_ui")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with open_tracker(TrackingConfig(uri=uri, experiment="ui", run_name=RUN_NAME), {"a": 1}) as t:
        assert isinstance(t, MlflowTracker)
        t.log_metrics({"loss": 0.5}, step=1)
    port = _free_port()
    cmd = [
        str(Path(sys.executable).with_name("mlflow")), "ui",
        "--backend-store-uri", uri,
        "--default-artifact-root", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner workers
    log = root / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        base_url = f"http://127.0.0.1:{port}"
        _wait_until_up(f"{base_url}/health", proc, log)
        yield Served(base_url, t.experiment_id, t.run_id)
    finally:
        _stop(proc)


def test_rest_api_lists_the_run(served: Served) -> None:
    body = json.dumps({"experiment_ids": [served.experiment_id]}).encode()
    req = urllib.request.Request(
        f"{served.base_url}/api/2.0/mlflow/runs/search",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        runs = json.load(resp)["runs"]
    assert [(r["info"]["run_id"], r["info"]["run_name"]) for r in runs] == [
        (served.run_id, RUN_NAME)
    ]


@pytest.mark.parametrize("page", ["runs", "runs/{run_id}"])
def test_ui_page_shows_the_run(served: Served, page: str, tmp_path: Path) -> None:
    """Headless chromium renders the experiment's run list / the run page with the run name."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium)")
    url = f"{served.base_url}/#/experiments/{served.experiment_id}/{page.format(run_id=served.run_id)}"
    cmd = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}",
        "--virtual-time-budget=15000", "--dump-dom", url,
    ]  # fmt: skip
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    text = re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S))
    assert RUN_NAME in text, f"run name not in the page rendered from {url}: {text[:2000]}"
