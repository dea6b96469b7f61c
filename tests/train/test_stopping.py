"""Early stopping: the rule (pure), and a real run that stops and says why in MLflow."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from recsys.compose import load_config
from recsys.config import EarlyStoppingConfig, StoppingMetric
from recsys.metrics import BinaryMetrics
from recsys.train.recipe import run
from recsys.train.stopping import EarlyStopping
from tests.synthetic import TinyLog


def _metrics(auc: float = 0.5, log_loss: float = 0.7) -> BinaryMetrics:
    return BinaryMetrics(
        auc, log_loss, ne=log_loss / 0.69, calibration=1.0, ctr=0.5, num_examples=1
    )


def test_improving_metric_never_stops() -> None:
    stopper = EarlyStopping(EarlyStoppingConfig(enabled=True, metric="auc", patience=0))
    for step, auc in enumerate([0.55, 0.6, 0.61, 0.7, 0.71]):
        assert stopper.update(_metrics(auc=auc), step) is None
    assert stopper.best == 0.71 and stopper.best_step == 4


def test_stops_after_patience_evaluations_without_improvement() -> None:
    stopper = EarlyStopping(EarlyStoppingConfig(enabled=True, metric="log_loss", patience=2))
    assert stopper.update(_metrics(log_loss=0.6), 10) is None
    assert stopper.update(_metrics(log_loss=0.61), 20) is None  # 1 bad evaluation
    assert stopper.update(_metrics(log_loss=0.5), 30) is None  # improves: count resets
    assert stopper.update(_metrics(log_loss=0.5), 40) is None
    reason = stopper.update(_metrics(log_loss=0.55), 50)
    assert reason is not None
    assert "step 50" in reason and "log_loss" in reason and "0.500000 (step 30)" in reason


def test_min_delta_and_nan() -> None:
    stopper = EarlyStopping(
        EarlyStoppingConfig(enabled=True, metric="ne", patience=1, min_delta=0.01)
    )
    assert stopper.update(_metrics(log_loss=0.69), 1) is None
    assert stopper.update(_metrics(log_loss=0.685), 2) is not None  # better by < min_delta
    nan = EarlyStopping(EarlyStoppingConfig(enabled=True, metric="auc", patience=1))
    assert nan.update(_metrics(auc=0.6), 1) is None
    assert nan.update(_metrics(auc=math.nan), 2) is not None  # a diverged model stops


@pytest.mark.parametrize("metric", list(StoppingMetric))
def test_every_metric_has_a_direction(metric: StoppingMetric) -> None:
    """Config errors (metric=aucc, patience=-1) are test_validate's; here each choice works."""
    stopper = EarlyStopping(EarlyStoppingConfig(enabled=True, metric=metric, patience=1))
    assert stopper.update(_metrics(), 1) is None
    assert stopper.update(_metrics(), 2) is not None  # no improvement: stop


def test_run_with_diverging_lr_stops_early_and_logs_why(tiny_log: TinyLog, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    overrides = tiny_log.overrides + [
        f"tracking.uri={uri}",
        "export.enabled=false",
        f"data.valid_path={tiny_log.eval}",
        "trainer.epochs=2",
        "trainer.eval_every_n_steps=3",
        # Steps this large wreck the model: validation log loss stops improving at once.
        "trainer.lr=30",
        "trainer.sparse_lr=30",
        "trainer.early_stopping.enabled=true",
        "trainer.early_stopping.metric=log_loss",
        "trainer.early_stopping.patience=1",
    ]
    result = run(load_config(overrides, output_dir=str(tmp_path / "out")))
    steps_per_epoch = 24  # 3000 rows / 128
    assert result.stop_reason is not None and "validation log_loss" in result.stop_reason
    assert result.steps < 2 * steps_per_epoch and result.steps % 3 == 0
    client = MlflowClient(uri)
    mlrun = client.get_run(result.run_id)
    assert mlrun.data.tags["stop_reason"] == result.stop_reason
    valid = client.get_metric_history(result.run_id, "valid/log_loss")
    assert [m.step for m in valid] == list(range(3, result.steps + 1, 3))
    # The final evaluation is on data.eval_path, once, at the step training stopped.
    final = client.get_metric_history(result.run_id, "eval/auc")
    assert [m.step for m in final] == [result.steps]
    assert "eval/auc" in result.metrics
