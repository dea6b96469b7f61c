"""Evaluations during training: every N steps and at epoch ends, with early stopping."""

from __future__ import annotations

import logging
from collections.abc import Callable

from torch import nn

from recsys.config import ConfigError, Schema, TrainerConfig
from recsys.data.loader import StreamingDataset
from recsys.distributed.env import DistEnv
from recsys.train.loop import Evaluation, TrainState, evaluate
from recsys.train.stopping import EarlyStopping

log = logging.getLogger(__name__)

Recorder = Callable[[Evaluation, TrainState, str], None]  # (evaluation, state, metric prefix)


class Evaluator:
    """Evaluates `data` every `trainer.eval_every_n_steps` steps (an `after_step` hook) and
    at epoch ends, records each evaluation under `prefix`, and asks training to stop when
    early stopping says so (every rank sees the same metrics, so all stop at the same step).
    """

    def __init__(
        self,
        model: nn.Module,
        data: StreamingDataset,
        schema: Schema,
        env: DistEnv,
        trainer: TrainerConfig,
        record: Recorder,
        prefix: str,
    ):
        every = trainer.eval_every_n_steps
        if every is not None and every < 1:
            raise ConfigError(
                f"trainer.eval_every_n_steps={every}: must be >= 1, or null (epoch ends only)."
            )
        self.model, self.data, self.schema, self.env = model, data, schema, env
        self.every, self.record, self.prefix = every, record, prefix
        stopping = trainer.early_stopping
        self.stopper = EarlyStopping(stopping) if stopping.enabled else None
        self.last: Evaluation | None = None
        self.last_step = -1

    def after_step(self, state: TrainState) -> None:
        if self.every is not None and state.step % self.every == 0:
            with state.paused():  # a train pipeline gives the model its own forwards back
                self.run(state)

    def at_epoch_end(self, state: TrainState) -> Evaluation:
        """The evaluation at this step (run now unless a step hook just ran it)."""
        if self.last is None or self.last_step != state.step:
            self.run(state)
        return self.last

    def run(self, state: TrainState) -> Evaluation:
        evaluation = evaluate(self.model, self.data, self.schema, self.env)
        self.last, self.last_step = evaluation, state.step
        self.record(evaluation, state, self.prefix)
        if self.stopper is not None and state.stop_reason is None:
            state.stop_reason = self.stopper.update(evaluation.metrics, state.step)
        return evaluation
