"""Seeds and RNG states: what makes a run, and a resumed run, repeat itself."""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import numpy as np
import torch

from recsys.config import TrainerConfig
from recsys.distributed.env import DistEnv

log = logging.getLogger(__name__)


def configure_determinism(trainer: TrainerConfig) -> None:
    """`trainer.deterministic=true`: kernels that give the same bits on every run.

    On CPU the kernels recsys uses are deterministic for a fixed thread count, so a resumed
    run must use the same OMP_NUM_THREADS as the interrupted one; on CUDA cuBLAS needs a fixed
    workspace and cuDNN must not autotune.
    """
    if not trainer.deterministic:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    """This process's generator states (Python, NumPy, torch, CUDA when in use), as plain
    Python values and tensors only, so a checkpoint holding them loads with
    `torch.load(weights_only=True)` (no pickled NumPy objects to allow-list)."""
    version, internal, gauss_next = random.getstate()
    state = {
        "python": [version, list(internal), gauss_next],
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _numpy_state() -> dict[str, Any]:
    """NumPy's legacy global generator (MT19937) in its dict form, the key as an int64 tensor."""
    state = np.random.get_state(legacy=False)
    inner = state["state"]
    key = torch.from_numpy(inner["key"].astype(np.int64))
    return {**state, "state": {"key": key, "pos": int(inner["pos"])}}


def _set_numpy_state(state: dict[str, Any]) -> None:
    key = np.asarray(state["state"]["key"], dtype=np.int64).astype(np.uint32)
    np.random.set_state({**state, "state": {"key": key, "pos": int(state["state"]["pos"])}})


def restore_rng(trainer_state: dict[str, Any], env: DistEnv, seed: int) -> None:
    """Every rank's own generator states back from a checkpoint's trainer state; on another
    number of processes (no rank-to-rank correspondence) a reseed from (seed, step, rank)."""
    states = trainer_state["rng"]
    if trainer_state["world_size"] != env.world_size:
        log.warning(
            "checkpoint written by %d process(es), resumed on %d: RNG states reseeded from "
            "(trainer.seed, step, rank); the run is not bit-identical to an uninterrupted one.",
            trainer_state["world_size"],
            env.world_size,
        )
        reseed(seed, trainer_state["step"], env.rank)
        return
    state = states[env.rank]
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    _set_numpy_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def reseed(seed: int, step: int, rank: int) -> None:
    seed_everything(int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0]))


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
