"""How a run starts and keeps its place: determinism, resume or warm start, periodic saving.

The recipe calls `configure_determinism` first, `restore` after the model and optimizers are
built (sharded), and `checkpointer` to get the object the training loop reports steps and
epoch ends to. The pieces themselves live in `recsys.train.checkpoint` and
`recsys.train.warm_start`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recsys.config import ConfigError, Schema, TrainConfig, TrainerConfig
from recsys.data.progress import EpochProgress
from recsys.distributed.env import DistEnv
from recsys.train.checkpoint import (
    ResumePoint,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from recsys.train.warm_start import WarmStartReport, warm_start

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


def restore(
    cfg: TrainConfig, model: nn.Module, optimizer: Any, schema: Schema, env: DistEnv
) -> tuple[ResumePoint | None, WarmStartReport | None]:
    """Resume (`trainer.resume`) or warm start (`trainer.warm_start`), or neither."""
    trainer = cfg.trainer
    if trainer.resume and trainer.warm_start:
        raise ConfigError(
            "trainer.resume and trainer.warm_start are both set: resume continues a run "
            "(optimizer state, step, data position); warm start begins a new one from its "
            "weights. Set one of them."
        )
    if trainer.resume:
        # load_checkpoint takes rank 0's folder, so all ranks load the same one even as new
        # ones appear.
        path = resolve_checkpoint(trainer.resume, Path(trainer.checkpoint.search_dir))
        return load_checkpoint(path, model, optimizer, schema, env, trainer.seed), None
    if trainer.warm_start:
        return None, warm_start(
            trainer.warm_start, model, schema, env, trainer.warm_start_skip_mismatched
        )
    return None, None


def resume_progress(point: ResumePoint | None) -> EpochProgress | None:
    """The loader position a resumed epoch starts from (None: from its first row)."""
    if point is None or point.progress is None:
        return None
    return EpochProgress.from_state_dict(point.progress)


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


def checkpointer(
    cfg: TrainConfig,
    model: nn.Module,
    optimizer: Any,
    schema: Schema,
    env: DistEnv,
    output_dir: Path,
) -> Checkpointer:
    """Saves as `trainer.checkpoint` says into `<output_dir>/checkpoints/`."""
    options = cfg.trainer.checkpoint
    save = partial(
        save_checkpoint, model=model, optimizer=optimizer, schema=schema, config=cfg, env=env
    )
    return Checkpointer(
        output_dir, options.every_n_steps, options.at_epoch_end, options.keep_last, save
    )


def provenance(point: ResumePoint | None, report: WarmStartReport | None) -> dict[str, str]:
    """Tags for the tracker: where this run's starting weights came from."""
    if point is not None:
        return {"resumed_from": str(point.path), "resumed_at_step": str(point.step)}
    if report is not None:
        return {
            "warm_started_from": str(report.source),
            "warm_start_tables": ",".join(report.tables),
        }
    return {}
