"""Early stopping that keeps the best model (`trainer.early_stopping`).

At every validation `BestModel.judge` asks the rule (`recsys.train.stopping`) whether to stop.
When the metric improves (and `restore_best` is on), it writes a checkpoint of that step with
the run's own checkpoint code into `<output_dir>/best/step_<N>/`, keeping one. On disk, not in
memory: a copy of this rank's shards would double the memory the tables take, where a DCP
checkpoint costs one write per improvement (about what an epoch-end checkpoint costs) and
holds nothing. `best/` is not a `checkpoints/` folder, so `trainer.resume=latest` never picks it.

When training ends past the best step, `restore` loads the best step's weights back into the
sharded model (DCP reshards, as on resume), so the model evaluated on eval and exported is the
best one on validation. It then becomes the run's last checkpoint: those of later steps are
deleted and it moves to `checkpoints/step_<N>/`, so `trainer.resume=<run>` and
`trainer.warm_start=<run>` start from it too.

The rule's state (best value and step, evaluations without improvement, where the best
checkpoint is) travels in every checkpoint, so a resumed run stops and restores as the
uninterrupted one would.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch import nn

from recsys.config import CheckpointConfig, EarlyStoppingConfig
from recsys.distributed.env import DistEnv
from recsys.metrics import BinaryMetrics
from recsys.schema import Schema
from recsys.tracking import Tracker
from recsys.train.checkpoint import load_weights
from recsys.train.checkpoint_layout import CHECKPOINTS_DIR, META_FILE, promote_checkpoint
from recsys.train.loop import TrainState
from recsys.train.stopping import EarlyStopping

log = logging.getLogger(__name__)

BEST_DIR = "best"


class BestModel:
    """Judges validations, keeps the best step's checkpoint, restores it at the end.

    Args:
        config: trainer.early_stopping.
        checkpoints: trainer.checkpoint: with checkpoints on, a restored best step's
            checkpoint becomes the run's last one.
        output_dir: the run's folder; the best checkpoint goes to `<output_dir>/best/`.
        save: the run's checkpoint writer (`save_checkpoint` bound to model, optimizer, ...),
            called with output_dir, step, epoch, progress, keep_last and folder by name.
        env: this process's place in the process group.
        trained_start: the model at step 0 is trained (a warm start): its validation can be
            the best one, and is kept as such.
    """

    def __init__(
        self,
        config: EarlyStoppingConfig,
        checkpoints: CheckpointConfig,
        output_dir: Path,
        save: Callable[..., Path],
        env: DistEnv,
        trained_start: bool = False,
    ):
        self.config, self.rule = config, EarlyStopping(config)
        self.keep_checkpoints = checkpoints.writes_any
        self.output_dir, self._save, self.env = Path(output_dir), save, env
        self.path: Path | None = None  # the best step's checkpoint
        self.metrics: BinaryMetrics | None = None  # the best validation's metrics
        self.restored = False
        self.trained_start = trained_start

    @property
    def step(self) -> int | None:
        return self.rule.best_step

    def judge(self, metrics: BinaryMetrics, state: TrainState) -> str | None:
        """Record one validation at `state.step`; returns the stop reason, or None to go on.
        A collective when it improves (every rank writes its shards of the checkpoint)."""
        reason = self.rule.update(metrics, state.step)
        if self.rule.improved_at == state.step:
            self.metrics = metrics
            # step 0: nothing trained yet, unless the run started from a trained model
            if self.config.restore_best and (state.step > 0 or self.trained_start):
                self.path = self._save(
                    output_dir=self.output_dir, step=state.step, epoch=state.epoch,
                    progress=state.progress, keep_last=1, folder=BEST_DIR,
                )  # fmt: skip
        return reason

    def restore(self, model: nn.Module, schema: Schema, step: int) -> bool:
        """Training ended at `step`: when that is past the best step, load the best step's
        weights into `model` and (checkpoints on) make its checkpoint the run's last one.
        `best/` goes either way. True when the model changed. A collective."""
        best, path = self.rule.best_step, self.path
        self.restored = self.config.restore_best and path is not None and best != step
        if self.restored:
            load_weights(path, model, schema, self.env)
            log.info("restored the best model on validation: step %d (training ended at %d)",
                     best, step)  # fmt: skip
            if self.env.world_size > 1:
                dist.barrier()  # every rank has read it before it moves
            if self.keep_checkpoints:
                promote_checkpoint(path, self.output_dir, self.env)
        if self.env.is_main:
            shutil.rmtree(self.output_dir / BEST_DIR, ignore_errors=True)
        return self.restored

    def record(self, tracker: Tracker, step: int, reason: str | None, prefix: str) -> str | None:
        """Why training stopped (`reason`: early stopping's, or None), the best step and its
        validation metrics, to the tracker. Returns what the run's summary says of how it
        ended and with which model (None: it ran to its end with the last model)."""
        early_stopped = reason is not None
        ended = reason or "ran to trainer.epochs / trainer.max_steps"
        if self.restored:
            value = getattr(self.metrics, self.config.metric)
            ended += (
                f"; restored the model of step {self.step} "
                f"(best validation {self.config.metric} {value:.6f})"
            )
        tags = {"stop_reason": ended}
        metrics = {"train/early_stopped": float(early_stopped)}
        if self.step is not None and self.metrics is not None:
            tags |= {"best_step": str(self.step), "best_restored": str(self.restored).lower()}
            metrics["best/step"] = float(self.step)
            metrics |= self.metrics.as_dict(prefix=f"best/{prefix}_")
            metrics.pop(f"best/{prefix}_num_examples")
        tracker.set_tags(tags)
        tracker.log_metrics(metrics, step)
        return ended if early_stopped or self.restored else None

    # ---------------------------------------------------------------------- checkpoint state

    def state_dict(self) -> dict[str, Any]:
        """Plain values (what a checkpoint's `extra` may hold)."""
        return {
            **self.rule.state_dict(),
            "path": str(self.path) if self.path is not None else None,
            "metrics": asdict(self.metrics) if self.metrics is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any] | None, resumed: Path, step: int) -> None:
        """Go on judging as the run that wrote checkpoint `resumed` (at `step`) would have."""
        if not state:
            return
        self.rule.load_state_dict(state)
        self.metrics = BinaryMetrics(**state["metrics"]) if state["metrics"] else None
        if self.rule.best_step == step:  # the resumed checkpoint is the best step's
            self.path = Path(resumed)
        elif (found := _written(state["path"])) is not None:
            self.path = found
        elif self.config.restore_best and self.rule.best_step is not None:
            log.warning(
                "the best checkpoint of the resumed run (%s, step %s) is gone: early stopping "
                "starts afresh from step %d",
                state["path"], self.rule.best_step, step,
            )  # fmt: skip
            self.rule, self.metrics = EarlyStopping(self.config), None


def _written(path: str | None) -> Path | None:
    """A best step's checkpoint: where it was written (`<run>/best/step_<N>`), or where the
    end of its run moved it (`<run>/checkpoints/step_<N>`); None when neither is complete."""
    if path is None:
        return None
    written = Path(path)
    moved = written.parent.parent / CHECKPOINTS_DIR / written.name
    return next((p for p in (written, moved) if (p / META_FILE).is_file()), None)


__all__ = ["BEST_DIR", "BestModel"]
