"""A trial of `make tune` seen from inside training: its objective, and pruning.

Hydra's Optuna sweeper asks Optuna for a trial's parameters and launches the trial as a Hydra
job, which gets overrides only, not Optuna's `Trial`. `make tune` keeps its study in a storage
the jobs can reach (a SQLite file in the sweep folder, or any Optuna RDB URL), so the job
reopens its own trial: after each validation `TrialPruning` reports the validation AUC as an
intermediate value and asks the study's pruner whether to stop (recsys.cli.tune launches the
trials and tells Optuna how each ended).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from recsys.config import ConfigError
from recsys.distributed.env import DistEnv
from recsys.distributed.gather import broadcast_object
from recsys.tracking.sweeps import OBJECTIVE
from recsys.train.result import TrainResult

if TYPE_CHECKING:
    from optuna.pruners import BasePruner
    from optuna.trial import Trial

log = logging.getLogger(__name__)

#: Optuna user attributes a trial's job sets: the validation it was pruned at (1-based), and
#: its MLflow run.
PRUNED_ATTR = "recsys.pruned_at_validation"
RUN_ID_ATTR = "recsys.mlflow_run_id"

NO_VALIDATION = (
    f"tuning needs validation metrics ({OBJECTIVE}), and this run has none: it validates on "
    "data.eval_path. Set data.valid_path, or data.holdout.fraction > 0 (the default holds out "
    "the last 5% of training rows): eval is never the objective."
)


def validation_auc(result: TrainResult) -> float:
    """The final model's validation AUC (the last `valid/auc` the run logged: after early
    stopping restored the best model, that model's); NaN when the run had no validation."""
    values = [h[OBJECTIVE] for h in result.history if OBJECTIVE in h]
    return values[-1] if values else math.nan


class TrialPruning:
    """The validation hook of one Optuna trial (`TrainRecipe.on_validation`).

    Every validation is reported as intermediate value k (k = 1, 2, ...: the k-th validation,
    so trials of any batch size compare at the same epoch ends); when the study's pruner says
    the trial is worse than the trials before it at that point, the hook returns a stop reason
    and training ends there. Rank 0 talks to the study and every rank gets its answer.
    """

    def __init__(self, storage: str, study_name: str, number: int, pruner: BasePruner | None):
        self.storage, self.study_name, self.number, self.pruner = (
            storage,
            study_name,
            number,
            pruner,
        )
        self.validations = 0
        self.pruned_at: int | None = None
        self._trial: Trial | None = None

    def __call__(self, metrics: dict[str, float], env: DistEnv) -> str | None:
        if OBJECTIVE not in metrics:  # the same metrics on every rank: all raise together
            raise ConfigError(NO_VALIDATION)
        self.validations += 1
        reason = self._judge(metrics[OBJECTIVE]) if env.is_main else None
        return broadcast_object(reason, env)

    def _judge(self, value: float) -> str | None:
        trial = self._open()
        trial.report(value, self.validations)
        if not trial.should_prune():
            return None
        self.pruned_at = self.validations
        trial.set_user_attr(PRUNED_ATTR, self.validations)
        return (
            f"pruned by Optuna (trial {self.number}): {OBJECTIVE} {value:.4f} at validation "
            f"{self.validations} is below what the trials before it had there"
        )

    def finish(self, run_id: str | None) -> None:
        """After the run: which MLflow run this trial is (rank 0), for the sweep's summary."""
        if run_id is not None:
            self._open().set_user_attr(RUN_ID_ATTR, run_id)

    def _open(self) -> Trial:
        if self._trial is None:
            import optuna  # only tuned runs pay for the import

            study = optuna.load_study(
                study_name=self.study_name, storage=self.storage, pruner=self.pruner
            )
            trial_id = study._storage.get_trial_id_from_study_id_trial_number(
                study._study_id, self.number
            )
            self._trial = optuna.trial.Trial(study, trial_id)
        return self._trial
