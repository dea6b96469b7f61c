"""`recsys.train.tuning`: a tuning trial's objective, and its pruning from validation values."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import torch

from recsys.cli.tune_sweeper import _init_storage
from recsys.config import ConfigError
from recsys.distributed.env import DistEnv
from recsys.train.result import TrainResult
from recsys.train.tuning import PRUNED_ATTR, RUN_ID_ATTR, TrialPruning, validation_auc

ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")


def _study(tmp_path: Path) -> tuple[str, optuna.Study]:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    _init_storage(url)
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    for value in (0.70, 0.72):  # two completed trials, one validation each
        trial = study.ask()
        trial.report(value, 1)
        study.tell(trial, value)
    return url, study


def _hook(url: str, study: optuna.Study) -> TrialPruning:
    number = study.ask().number
    return TrialPruning(url, "s", number, optuna.pruners.MedianPruner(n_startup_trials=2))


def test_a_trial_below_the_median_is_pruned_and_says_so(tmp_path: Path) -> None:
    url, study = _study(tmp_path)
    hook = _hook(url, study)
    reason = hook({"valid/auc": 0.60, "valid/log_loss": 0.7}, ENV)
    assert reason is not None and "pruned by Optuna (trial 2)" in reason
    trial = optuna.load_study(study_name="s", storage=url).trials[2]
    assert trial.intermediate_values == {1: pytest.approx(0.60, abs=1e-12)}
    assert trial.user_attrs[PRUNED_ATTR] == 1 and hook.pruned_at == 1
    hook.finish("abc")
    assert optuna.load_study(study_name="s", storage=url).trials[2].user_attrs[RUN_ID_ATTR] == "abc"


def test_a_trial_above_the_median_goes_on(tmp_path: Path) -> None:
    url, study = _study(tmp_path)
    hook = _hook(url, study)
    assert hook({"valid/auc": 0.73}, ENV) is None
    assert hook({"valid/auc": 0.74}, ENV) is None  # validation 2: no trial to compare with
    values = optuna.load_study(study_name="s", storage=url).trials[2].intermediate_values
    assert values == {1: pytest.approx(0.73, abs=1e-12), 2: pytest.approx(0.74, abs=1e-12)}


def test_a_run_without_validation_metrics_cannot_be_tuned(tmp_path: Path) -> None:
    url, study = _study(tmp_path)
    with pytest.raises(ConfigError, match="data.holdout.fraction"):
        _hook(url, study)({"eval/auc": 0.9}, ENV)


def test_the_objective_is_the_final_models_validation_auc_never_eval() -> None:
    history = [
        {"step": 10.0, "valid/auc": 0.70},
        {"step": 20.0, "valid/auc": 0.68},
        {"step": 20.0, "valid/auc": 0.70},  # early stopping restored step 10's model
        {"step": 20.0, "eval/auc": 0.95},
    ]
    assert validation_auc(TrainResult(metrics={}, output_dir=Path("."), history=history)) == 0.70
    no_valid = TrainResult(metrics={"eval/auc": 0.9}, output_dir=Path("."), history=[history[-1]])
    assert math.isnan(validation_auc(no_valid))
