"""Processes tests start: a free local port for them, a gloo process group for spawned
workers, and stopping the servers (mlflow ui / server / models serve) in their own process
group: the leader and its uvicorn workers, whatever state they are in."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Iterator

import torch.distributed as dist


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gloo_group(rank: int, port: int, world_size: int = 2) -> Iterator[None]:
    """This spawned worker in a gloo process group on 127.0.0.1:`port`, destroyed on exit."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


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
