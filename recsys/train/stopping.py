"""Early stopping on a validation metric (its config is checked by `recsys.train.validate`)."""

from __future__ import annotations

import math
from typing import Any

from recsys.config import EarlyStoppingConfig, StoppingMetric
from recsys.metrics import BinaryMetrics

_HIGHER_IS_BETTER = {
    StoppingMetric.auc: True,
    StoppingMetric.log_loss: False,
    StoppingMetric.ne: False,
}


class EarlyStopping:
    """Counts evaluations without improvement; says why to stop once `patience` is used up.

    An evaluation improves when it beats the best so far by more than `min_delta`; training
    stops at the `patience`-th evaluation in a row that does not (patience=0 or 1: the first).
    A NaN metric (a diverged model) never improves.
    """

    def __init__(self, config: EarlyStoppingConfig):
        self.config = config
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad_evaluations = 0

    def update(self, metrics: BinaryMetrics, step: int) -> str | None:
        """Record one evaluation at `step`; returns the stop reason, or None to go on."""
        value = float(getattr(metrics, self.config.metric))
        if self._improves(value):
            self.best, self.best_step, self.bad_evaluations = value, step, 0
            return None
        self.bad_evaluations += 1
        if self.bad_evaluations < self.config.patience:
            return None
        return (
            f"early stopping at step {step}: validation {self.config.metric} = {value:.6f} did "
            f"not improve on {self.best:.6f} (step {self.best_step}) by more than "
            f"{self.config.min_delta} for {self.bad_evaluations} evaluation(s) "
            f"(patience {self.config.patience})"
            if self.best is not None
            else f"early stopping at step {step}: validation {self.config.metric} is {value}"
        )

    @property
    def improved_at(self) -> int | None:
        """The step of the last evaluation, when it was a new best (else None)."""
        return self.best_step if self.bad_evaluations == 0 else None

    def state_dict(self) -> dict[str, Any]:
        """Plain values, for a checkpoint: a resumed run judges as the uninterrupted one."""
        return {
            "best": self.best,
            "best_step": self.best_step,
            "bad_evaluations": self.bad_evaluations,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step = state["best"], state["best_step"]
        self.bad_evaluations = int(state["bad_evaluations"])

    def _improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        delta = value - self.best if _HIGHER_IS_BETTER[self.config.metric] else self.best - value
        return delta > self.config.min_delta
