"""Validation between training steps, and what it decides: whether training stops early.

The recipe's train step (recsys.train.recipe) runs the epochs and asks the
`ValidationMonitor` here when a validation is due: every `trainer.eval_every_n_steps` steps and
at each epoch end. The monitor evaluates the validation rows, records their metrics, lets early
stopping (recsys.train.best) and the validation hook (make tune's pruning:
recsys.train.tuning) judge them, and keeps the last validation so that the final evaluation
can reuse it. When training ends it puts the best model back. `best_model` builds the early
stopping it asks, as trainer.early_stopping says.

Kept apart from the recipe so that the recipe holds the order of a run's steps and this module
holds the judging of the model while it trains.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from torch import nn

from recsys.config import TrainerConfig
from recsys.distributed.env import DistEnv
from recsys.schema import Schema
from recsys.train.best import BestModel
from recsys.train.build import Datasets
from recsys.train.checkpoint import ResumePoint
from recsys.train.evaluator import Evaluation, evaluate
from recsys.train.loop import TrainState
from recsys.train.record import RunMetrics

log = logging.getLogger(__name__)

#: Called after each validation with its metrics (`valid/auc`, ...); a returned reason stops
#: training there, as early stopping does (make tune's pruning: recsys.train.tuning).
ValidationHook = Callable[[dict[str, float], DistEnv], str | None]


def best_model(
    trainer: TrainerConfig,
    data: Datasets,
    output_dir: Path,
    save: Callable[..., Path],
    env: DistEnv,
    resume: ResumePoint | None,
    warm_started: bool = False,
) -> BestModel | None:
    """Early stopping that keeps the best model (None: trainer.early_stopping is off); a
    resumed run goes on as its checkpoint. `save` writes the run's checkpoints (BestModel). A
    warm-started run's start can be its best model (`ValidationMonitor.validate_start`)."""
    stopping = trainer.early_stopping
    if not stopping.enabled:
        return None
    if data.valid is data.eval and env.is_main:
        log.warning(
            "trainer.early_stopping watches data.eval_path: eval metrics are no longer "
            "unseen. Set data.valid_path, or data.holdout.fraction > 0, to stop on validation."
        )
    best = BestModel(stopping, trainer.checkpoint, output_dir, save, env, warm_started)
    if resume is not None:
        best.load_state_dict(resume.extra.get("early_stopping"), resume.path, resume.step)
    return best


class ValidationMonitor:
    """The mid-run validations of one run, and why training stops (`stop_reason`; None while
    it goes on).

    Args:
        model: the sharded train model.
        data: this rank's streams; `data.valid` is validated, its metrics under
            `data.valid_prefix/`.
        schema: the run's resolved schema.
        env: this process's place in the process group.
        every_n_steps: trainer.eval_every_n_steps (None: at epoch ends only).
        best: early stopping that keeps the best model (None: off).
        hook: asked after each validation; a reason it returns stops training.
        run_metrics: where the validations' metrics go (the tracker, the run's history).
        predictions: the eval predictions file, written when validation reads the eval rows.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        data: Datasets,
        schema: Schema,
        env: DistEnv,
        every_n_steps: int | None,
        best: BestModel | None,
        hook: ValidationHook | None,
        run_metrics: RunMetrics,
        predictions: Path,
    ):
        self.model, self.data, self.schema, self.env = model, data, schema, env
        self.every_n_steps, self.best, self.hook = every_n_steps, best, hook
        self.run_metrics, self.predictions = run_metrics, predictions
        self.stop_reason: str | None = None
        self._last: tuple[int, Evaluation] | None = None  # the last validation and its step

    def due(self, step: int) -> bool:
        every = self.every_n_steps
        return every is not None and step % every == 0

    def validate(self, state: TrainState, ask_hook: bool = True) -> Evaluation:
        """Evaluate the validation rows, record them, and let early stopping judge (and the
        hook, unless `ask_hook` is false)."""
        data = self.data
        # On the eval rows, the predictions file is written too: the final evaluation may be
        # this one (reused when it ran at the last step).
        predictions = self.predictions if data.valid is data.eval else None
        evaluation = evaluate(self.model, data.valid, self.schema, self.env, predictions)
        self._last = (state.step, evaluation)
        self.run_metrics.record(evaluation, data.valid_prefix)
        if self.best is not None and self.stop_reason is None:
            self.stop_reason = self.best.judge(evaluation.metrics, state)
        if self.hook is not None and ask_hook:
            metrics = evaluation.metrics.as_dict(prefix=f"{data.valid_prefix}/")
            reason = self.hook(metrics, self.env)
            self.stop_reason = self.stop_reason or reason
        return evaluation

    def validate_start(self, state: TrainState) -> None:
        """Validate a warm-started model before its first step, so that early stopping keeps
        the start when training never beats it (after the first-order stage: the LR). The
        hook is not asked: make tune's k-th intermediate value stays the k-th trained epoch's
        validation, with or without a start to validate."""
        evaluation = self.validate(state, ask_hook=False)
        if self.env.is_main:
            log.info(
                "start (warm): step %d, %s AUC %.4f, log loss %.4f", state.step,
                self.data.valid_prefix, evaluation.metrics.auc, evaluation.metrics.log_loss,
            )  # fmt: skip

    def validated_at(self, step: int) -> Evaluation | None:
        """The validation already run at `step`, if any."""
        last = self._last
        return last[1] if last is not None and last[0] == step else None

    def at_epoch_end(self, state: TrainState) -> None:
        """The epoch's validation (run now unless one just ran), logged on rank 0."""
        evaluation = self.validated_at(state.step) or self.validate(state)
        if self.env.is_main:
            m = evaluation.metrics
            log.info(
                "epoch %d: step %d, %s AUC %.4f, log loss %.4f, %.0f samples/s",
                state.epoch, state.step, self.data.valid_prefix, m.auc, m.log_loss,
                state.samples_per_second,
            )  # fmt: skip

    def end_training(self, step: int) -> None:
        """The best model on validation back in place of the last one (trainer.early_stopping);
        why training stopped and which step was best, to the tracker."""
        best, data = self.best, self.data
        if best is not None:
            if best.restore(self.model, self.schema, step):
                self._last = None  # it described the last model, not this one
                if data.valid is not data.eval:  # the final model's validation metrics
                    self.run_metrics.log(best.metrics.as_dict(prefix=f"{data.valid_prefix}/"))
            tracker = self.run_metrics.tracker
            self.stop_reason = best.record(tracker, step, self.stop_reason, data.valid_prefix)
        if self.stop_reason is not None:
            log.info("%s", self.stop_reason)


__all__ = ["ValidationHook", "ValidationMonitor", "best_model"]
