"""Early stopping: the rule (pure); real runs that stop, say why in MLflow, and end with the
best model on validation."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

from recsys.compose import load_config
from recsys.config import EarlyStoppingConfig, StoppingMetric
from recsys.export.scorer import Scorer
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


def test_judgement_goes_through_a_checkpoint_as_plain_values() -> None:
    stopper = EarlyStopping(EarlyStoppingConfig(metric="auc", patience=2))
    stopper.update(_metrics(auc=0.6), 10)
    assert stopper.improved_at == 10
    stopper.update(_metrics(auc=0.55), 20)
    assert stopper.improved_at is None
    resumed = EarlyStopping(EarlyStoppingConfig(metric="auc", patience=2))
    resumed.load_state_dict(torch.load(_saved(stopper.state_dict()), weights_only=True))
    assert resumed.update(_metrics(auc=0.59), 30) is not None  # the second bad one in a row


def _saved(state: dict) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


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
        "trainer.early_stopping.restore_best=true",
    ]
    result = run(load_config(overrides, output_dir=str(tmp_path / "out")))
    steps_per_epoch = 24  # 3000 rows / 128
    assert result.stop_reason is not None and "validation log_loss" in result.stop_reason
    assert result.steps < 2 * steps_per_epoch and result.steps % 3 == 0
    client = MlflowClient(uri)
    mlrun = client.get_run(result.run_id)
    assert mlrun.data.tags["stop_reason"] == result.stop_reason
    valid = client.get_metric_history(result.run_id, "valid/log_loss")
    validations = list(range(3, result.steps + 1, 3))
    # Every validation, then the restored best model's at the step training stopped.
    assert [m.step for m in valid] == [*validations, result.steps]
    best = min(valid[:-1], key=lambda m: m.value)
    assert valid[-1].value == best.value and best.step < result.steps
    assert f"restored the model of step {best.step}" in result.stop_reason
    assert mlrun.data.tags["best_step"] == str(best.step)
    assert mlrun.data.metrics["best/step"] == best.step
    assert mlrun.data.metrics["best/valid_log_loss"] == best.value
    assert mlrun.data.metrics["train/early_stopped"] == 1.0
    # The final evaluation is on data.eval_path, once, at the step training stopped.
    final = client.get_metric_history(result.run_id, "eval/auc")
    assert [m.step for m in final] == [result.steps]
    assert "eval/auc" in result.metrics
    # The best step's checkpoint is the run's last one; later ones and best/ are gone.
    checkpoints = [p.name for p in (tmp_path / "out" / "checkpoints").iterdir()]
    assert f"step_{best.step}" in checkpoints and not (tmp_path / "out" / "best").exists()
    assert all(int(name.split("_")[1]) <= best.step for name in checkpoints)


def test_overfitting_run_stops_and_ends_with_the_best_validated_model(
    tiny_log: TinyLog, tmp_path: Path
) -> None:
    """Planted overfitting (bold sparse steps, many epochs, validation held out of training
    by default): training stops early, and the model evaluated and exported is the best
    validation step's, as its checkpoint loaded on its own shows, not the last step's."""
    common = tiny_log.overrides + ["tracking=none", "data.holdout.fraction=0.2"]
    bold = [
        "trainer.epochs=20",
        "trainer.sparse_lr=0.5",
        "trainer.early_stopping.patience=2",
        "trainer.early_stopping.restore_best=true",
    ]
    result = run(load_config(common + bold, output_dir=str(tmp_path / "run")))
    validations = [(int(h["step"]), h["valid/auc"]) for h in result.history if "valid/auc" in h]
    *judged, final = validations
    best_step, best_auc = max(judged, key=lambda v: v[1])
    assert result.steps < 20 * 19 and result.stop_reason.startswith("early stopping")
    assert judged[-1][0] == result.steps and judged[-1][1] < best_auc  # the last was worse
    assert final == (result.steps, best_auc)  # the final model is validated as the best

    # The best step's checkpoint on its own (warm start, no training): the same validation,
    # the same eval predictions and the same scores as the run's export.
    best = tmp_path / "run" / "checkpoints" / f"step_{best_step}"
    again = [f"trainer.warm_start={best}", "trainer.max_steps=0", "export.enabled=false"]
    loaded = run(load_config(common + again, output_dir=str(tmp_path / "loaded")))
    validated = next(h for h in loaded.history if "valid/auc" in h)
    assert validated["valid/auc"] == pytest.approx(best_auc, abs=1e-6)
    assert loaded.metrics["eval/auc"] == pytest.approx(result.metrics["eval/auc"], abs=1e-6)
    probs = pq.read_table(tmp_path / "loaded" / "eval_predictions.parquet")["prob"].to_numpy()
    ran = pq.read_table(tmp_path / "run" / "eval_predictions.parquet")["prob"].to_numpy()
    np.testing.assert_allclose(ran, probs, rtol=0, atol=1e-6)
    scores = Scorer(tmp_path / "run" / "export").score(pq.read_table(tiny_log.eval))
    np.testing.assert_allclose(scores, probs, rtol=0, atol=1e-5)


def test_warm_started_run_keeps_its_start_when_training_never_beats_it(
    tiny_log: TinyLog, tmp_path: Path
) -> None:
    """A warm start's step 0 is a trained model: it is validated before the first step, and
    early stopping restores it when every later validation is worse (here: wrecking steps)."""
    common = tiny_log.overrides + ["tracking=none", "export.enabled=false"]
    source = run(load_config(common + ["trainer.epochs=2"], output_dir=str(tmp_path / "source")))
    wreck = [
        f"trainer.warm_start={tmp_path / 'source'}",
        "trainer.epochs=3",
        "trainer.lr=30",
        "trainer.sparse_lr=30",
        "trainer.early_stopping.patience=1",
        "trainer.early_stopping.restore_best=true",
    ]
    result = run(load_config(common + wreck, output_dir=str(tmp_path / "warm")))
    validations = [(int(h["step"]), h["valid/auc"]) for h in result.history if "valid/auc" in h]
    assert validations[0][0] == 0 and validations[1][1] < validations[0][1]
    assert "restored the model of step 0" in result.stop_reason
    assert result.metrics["eval/auc"] == pytest.approx(source.metrics["eval/auc"], abs=1e-6)
