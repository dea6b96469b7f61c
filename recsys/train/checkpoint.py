"""Saving and loading a checkpoint: sharded model + optimizers (torch.distributed.checkpoint),
position, RNG, schema. Where the files go and how step folders are found lives in
recsys.train.checkpoint_layout; the checks a checkpoint passes before it is loaded, in
recsys.train.checkpoint_checks.

Writing is atomic: every rank writes into `step_<N>.tmp/`, then, after a barrier, rank 0
renames it to `step_<N>/` and only then prunes old checkpoints. A crash while writing leaves a
`.tmp` folder that is never resumed from (and is removed by the next save), and the previous
checkpoint untouched. All ranks must see the same folder (a local disk for one host, a shared
file system for several).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn

from recsys.config import ConfigError
from recsys.distributed.env import DistEnv
from recsys.distributed.gather import broadcast_object, gather_objects
from recsys.schema import Schema
from recsys.train.checkpoint_checks import (
    check_format_version,
    check_schema,
    read_dcp_metadata,
    read_trainer_state,
)
from recsys.train.checkpoint_layout import (
    CHECKPOINTS_DIR,
    FORMAT_VERSION,
    META_FILE,
    STATE_FILE,
    STEP_PREFIX,
    TMP_SUFFIX,
    barrier,
    prune_checkpoints,
    read_meta,
)
from recsys.train.safe_dcp import BoundedFileSystemWriter, ChunkedSavePlanner, SafeFileSystemReader
from recsys.train.seeding import restore_rng, rng_state

log = logging.getLogger(__name__)

# The checkpoint's two sections; DCP flattens them into "<section>.<state key>".
MODEL_SECTION, OPTIMIZER_SECTION = "model", "optim"


@dataclass
class ResumePoint:
    """Where a restored run goes on from. `progress` is None at the start of `epoch`."""

    path: Path
    step: int
    epoch: int
    progress: dict[str, Any] | None  # EpochProgress.state_dict() of all ranks merged
    world_size: int  # of the run that wrote it
    extra: dict[str, Any]  # anything the caller saved beside (e.g. an LR scheduler's state)


# ------------------------------------------------------------------------------------ saving


class Checkpointer:
    """Decides when to save: every N steps and/or at epoch end, never twice for one step."""

    def __init__(
        self,
        output_dir: Path,
        every_n_steps: int | None,
        at_epoch_end: bool,
        keep_last: int,
        save: Callable[..., Path],
    ):
        if every_n_steps is not None and every_n_steps < 1:
            raise ConfigError(
                f"trainer.checkpoint.every_n_steps={every_n_steps}: need >= 1, or null for off."
            )
        if keep_last < 1:
            raise ConfigError(f"trainer.checkpoint.keep_last={keep_last}: keep at least 1.")
        self.output_dir, self.every_n_steps = Path(output_dir), every_n_steps
        self.at_epoch_end, self.keep_last = at_epoch_end, keep_last
        self._save = save  # called with output_dir, step, epoch, progress, keep_last by name
        self.last_saved_step: int | None = None
        self.saved: list[Path] = []

    def after_step(self, step: int, epoch: int, progress: Any) -> None:
        if self.every_n_steps and step % self.every_n_steps == 0:
            self._write(step, epoch, progress)

    def after_epoch(self, step: int, next_epoch: int) -> None:
        if self.at_epoch_end:
            self._write(step, next_epoch, None)

    def at_stop(self, step: int, epoch: int, progress: Any) -> None:
        """Training ends inside an epoch (max_steps, early stopping): keep the exact position,
        so a resume with a larger budget reads the rest of that epoch, not the next one."""
        if self.at_epoch_end or self.every_n_steps:
            self._write(step, epoch, progress)

    def _write(self, step: int, epoch: int, progress: Any) -> None:
        if step == 0 or step == self.last_saved_step:
            return  # nothing trained yet, or this step is saved already
        saved = self._save(
            output_dir=self.output_dir,
            step=step,
            epoch=epoch,
            progress=progress,
            keep_last=self.keep_last,
        )
        self.saved.append(saved)
        self.last_saved_step = step


def save_checkpoint(
    output_dir: Path,
    model: nn.Module,
    optimizer: Any,
    step: int,
    epoch: int,
    progress: Any | None,
    schema: Schema,
    config: Any,
    env: DistEnv,
    keep_last: int,
    extra: dict[str, Any] | None = None,
    folder: str = CHECKPOINTS_DIR,
) -> Path:
    """Write `<output_dir>/checkpoints/step_<step>/` atomically. A collective: all ranks call it.

    Args:
        progress: this rank's EpochProgress for `epoch` (merged over ranks here), or None
            when the checkpoint marks the start of `epoch`.
        optimizer: a torchrec KeyedOptimizer (CombinedOptimizer: fused sparse + dense).
        extra: small state saved as is (rank 0's), returned on load: plain Python values
            and tensors only (an LR scheduler's state_dict()), since loading never unpickles.
        folder: the folder under `output_dir` (another than `checkpoints/` is no resume
            candidate for `trainer.resume=latest`: the best step's copy, recsys.train.best).
    """
    started = time.perf_counter()
    root = Path(output_dir) / folder
    final, staging = root / f"{STEP_PREFIX}{step}", root / f"{STEP_PREFIX}{step}{TMP_SUFFIX}"
    if env.is_main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    barrier(env)
    # Param groups (learning rates) are not saved: the fused optimizer groups its tables by
    # rank, which would not fit another sharding, and the lr schedule is a function of the step.
    with _quiet_dcp():
        dcp.save(
            {MODEL_SECTION: model.state_dict(), OPTIMIZER_SECTION: optimizer.state_dict()},
            storage_writer=BoundedFileSystemWriter(staging),
            planner=ChunkedSavePlanner(),
        )
    progress_parts = gather_objects(progress.state_dict() if progress is not None else None, env)
    rng_states = gather_objects(rng_state(), env)
    if env.is_main:
        merged = _merge_progress(progress, progress_parts)
        trainer_state = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "epoch": epoch,
            "progress": merged,
            "rng": rng_states,
            "world_size": env.world_size,
            "extra": extra or {},
        }
        torch.save(trainer_state, staging / STATE_FILE)
        (staging / META_FILE).write_text(json.dumps(_meta(step, epoch, schema, config, env)))
    barrier(env)  # every rank's shards are on disk before the folder becomes visible
    if env.is_main:
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        prune_checkpoints(root, keep_last)
        log.info("checkpoint written: %s (%.2f s)", final, time.perf_counter() - started)
    barrier(env)
    return final


def _merge_progress(progress: Any | None, parts: list[dict | None]) -> dict | None:
    if progress is None:
        return None
    kind = type(progress)
    return kind.merge([kind.from_state_dict(p) for p in parts]).state_dict()


def _meta(step: int, epoch: int, schema: Schema, config: Any, env: DistEnv) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "step": step,
        "epoch": epoch,
        "world_size": env.world_size,
        "created_unix": time.time(),
        "schema": schema.to_dict(),
        "schema_fingerprint": schema.fingerprint(),
        "config": json.loads(json.dumps(asdict(config), default=str)),
    }


# ----------------------------------------------------------------------------------- loading


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: Any, schema: Schema, env: DistEnv, seed: int
) -> ResumePoint:
    """Restore model, optimizers and RNG from `path` in place. A collective: all ranks call it.

    RNG: on as many processes as wrote the checkpoint, every rank gets its own states back
    (bit-identical continuation). On another number of processes, there is no rank-to-rank
    correspondence: every rank is reseeded from (seed, step, rank) instead, with a warning.
    """
    path = Path(broadcast_object(str(Path(path).resolve()), env))
    meta = read_meta(path)
    check_format_version(meta, path)
    check_schema(meta["schema"], schema, path)
    read_dcp_metadata(path)  # refuses a tampered .metadata with a clear error, before DCP runs
    _init_optimizer_state(optimizer)
    model_state, optim_state = model.state_dict(), optimizer.state_dict()
    with _quiet_dcp():
        dcp.load(
            {MODEL_SECTION: model_state, OPTIMIZER_SECTION: optim_state},
            storage_reader=SafeFileSystemReader(path),
        )
    model.load_state_dict(model_state)
    optimizer.load_state_dict(optim_state)
    trainer_state = read_trainer_state(path)
    restore_rng(trainer_state, env, seed)
    log.info(
        "resumed from %s: step %d, epoch %d (written by %d process(es))",
        path,
        trainer_state["step"],
        trainer_state["epoch"],
        trainer_state["world_size"],
    )
    return ResumePoint(
        path=path,
        step=trainer_state["step"],
        epoch=trainer_state["epoch"],
        progress=trainer_state["progress"],
        world_size=trainer_state["world_size"],
        extra=trainer_state["extra"],
    )


def load_weights(path: Path, model: nn.Module, schema: Schema, env: DistEnv) -> None:
    """Only the model's weights from a checkpoint (no optimizer, RNG or position): the best
    step's, back in place at the end of a run. A collective: all ranks call it."""
    path = Path(broadcast_object(str(Path(path).resolve()), env))
    meta = read_meta(path)
    check_format_version(meta, path)
    check_schema(meta["schema"], schema, path)
    read_dcp_metadata(path)
    model_state = model.state_dict()
    with _quiet_dcp():
        dcp.load({MODEL_SECTION: model_state}, storage_reader=SafeFileSystemReader(path))
    model.load_state_dict(model_state)


def _init_optimizer_state(optimizer: Any) -> None:
    """Create lazily made optimizer state (Adam's moments) so the checkpoint loads into it.

    torchrec's KeyedOptimizer loads in place and refuses an empty state. The fused sparse
    optimizer's state exists from the start; only the dense one needs a (zero-gradient) step,
    whose effect on the weights is overwritten by the load that follows.
    """
    parts = optimizer.optimizers if hasattr(optimizer, "optimizers") else [("", optimizer)]
    for _, part in parts:
        if not part.state and any(p.requires_grad for p in part.params.values()):
            part.init_state()


# ------------------------------------------------------------------------------- helpers


@contextmanager
def _quiet_dcp() -> Iterator[None]:
    """TorchRec's tables are ShardedTensors, which DCP warns (on every rank, at every save)
    it will deprecate in favour of DTensor: nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*assuming the intent is to")  # 1 process
        yield
