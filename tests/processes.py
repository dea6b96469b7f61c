"""Stopping the servers tests start (mlflow ui / server / models serve) in their own process
group: the leader and its uvicorn workers, whatever state they are in."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the group of `proc` (started with start_new_session=True), SIGKILL it after
    `grace_s` seconds, then SIGKILL what may be left (children can outlive the leader)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
