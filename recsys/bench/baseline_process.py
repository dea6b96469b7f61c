"""The baselines in a process of their own, as a user's script would run them.

recsys changes process-wide settings while it trains (intra-op threads, glibc's malloc
thresholds: `recsys.train.allocator`), and a setting changed once stays changed for every
later run in that process. The baseline loops therefore run in a child process (spawned, so
nothing is inherited) that never trains with recsys: it reads the same file into the same
batches and runs one loop at a time when the parent asks, so rounds still alternate.
"""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from recsys.bench.baselines import DLRMShape, PlainLoop, TorchRecLoop
from recsys.bench.fixtures import criteo_config
from recsys.bench.training import premade
from recsys.distributed.env import init_distributed, shutdown_distributed
from recsys.schema import resolve_schema
from recsys.train.build import datasets

BASELINES = ("torchrec_dlrm", "plain_pytorch")


class BaselineProcess:
    """A child holding `BASELINES` built on the first `steps` batches of `parquet`."""

    def __init__(self, parquet: Path, overrides: list[str], steps: int):
        context = mp.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, str(parquet), overrides, steps), daemon=True
        )
        self._process.start()
        child.close()
        self._receive()  # ready: the baselines are built

    def run(self, name: str, threads: int, steps: int, max_seconds: float) -> tuple[int, float]:
        """(real rows trained, seconds) of one run of baseline `name` at `threads` threads."""
        self._conn.send((name, threads, steps, max_seconds))
        return self._receive()

    def close(self) -> None:
        if self._process.is_alive():
            self._conn.send(None)
            self._process.join(timeout=60)
        if self._process.is_alive():
            self._process.terminate()
        self._conn.close()

    def __enter__(self) -> BaselineProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _receive(self):
        try:
            reply = self._conn.recv()
        except EOFError as e:
            raise RuntimeError(
                f"the baseline process exited (code {self._process.exitcode}); its stderr "
                "above says why"
            ) from e
        if isinstance(reply, BaseException):
            raise reply
        return reply


def _serve(conn: Connection, parquet: str, overrides: list[str], steps: int) -> None:
    try:
        env = init_distributed("cpu")
        cfg = criteo_config(Path(parquet), "parquet", overrides)
        schema = resolve_schema(cfg.data, cfg.model.embedding_dim)
        batches = premade(datasets(cfg, schema, env).train, steps).batches
        shape = DLRMShape.from_config(cfg, schema)
        loops = {
            "torchrec_dlrm": TorchRecLoop(schema, shape, batches, env.device),
            "plain_pytorch": PlainLoop(schema, shape, batches, env.device),
        }
        rows = [b.num_real_rows for b in batches]
        conn.send(None)
    except Exception as e:  # the parent re-raises it
        conn.send(e)
        return
    while (asked := conn.recv()) is not None:
        name, threads, run_steps, max_seconds = asked
        torch.set_num_threads(threads)
        taken, seconds = loops[name].run(run_steps, max_seconds)
        conn.send((sum(rows[i % len(rows)] for i in range(taken)), seconds))
    shutdown_distributed()


__all__ = ["BASELINES", "BaselineProcess"]
