"""The run's figures: each built from synthetic arrays and checked on its artists; then every
figure of a real tiny run written as PNG."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score

from recsys.compose import load_config
from recsys.data.stats import DatasetStats, FeatureStats
from recsys.train import plots
from recsys.train.plots import (
    collision_figure,
    collision_stats,
    embedding_norms_figure,
    learning_curves_figure,
    prediction_histogram_figure,
    reliability_figure,
    roc_curve,
    roc_figure,
    row_norms,
    run_figures,
)
from recsys.train.recipe import run
from recsys.train.validate import validate

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _predictions(n: int = 5000, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from the probabilities, rounded to 2 decimals so that scores tie."""
    rng = np.random.default_rng(seed)
    probs = np.round(rng.beta(2, 5, n), 2)
    labels = (rng.random(n) < probs).astype(np.float32)
    return labels, probs


def _visible_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


def _legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


# -------------------------------------------------------------------------- learning curves


def test_learning_curves_show_train_and_validation_by_step() -> None:
    history = [
        {"step": 5.0, "train/loss": 0.70, "train/auc": 0.55, "epoch": 0.0},
        {"step": 10.0, "train/loss": 0.65, "train/auc": 0.60},
        {"step": 10.0, "valid/log_loss": 0.68, "valid/auc": 0.58, "epoch": 0.0},
        {"step": 15.0, "train/loss": 0.60, "train/auc": float("nan")},  # a one-class window
        {"step": 20.0, "valid/log_loss": 0.66, "valid/auc": 0.62},
    ]
    fig = learning_curves_figure(history)
    loss_ax, auc_ax = fig.axes
    assert loss_ax.get_title() == "Loss" and auc_ax.get_title() == "AUC"
    assert _legend_texts(loss_ax) == ["train (loss)", "valid (log loss)"]
    assert _legend_texts(auc_ax) == ["train", "valid"]
    train_loss, valid_loss = loss_ax.lines
    assert list(train_loss.get_xdata()) == [5.0, 10.0, 15.0]
    assert list(valid_loss.get_ydata()) == [0.68, 0.66]
    train_auc, _ = auc_ax.lines
    assert list(train_auc.get_xdata()) == [5.0, 10.0]  # the NaN point is left out


def test_learning_curves_use_eval_metrics_without_a_validation_set() -> None:
    history = [{"step": 5.0, "train/auc": 0.6}, {"step": 5.0, "eval/auc": 0.61}]
    fig = learning_curves_figure(history)
    assert _legend_texts(fig.axes[1]) == ["train", "eval"]
    assert fig.axes[0].get_legend() is None  # no loss logged: an empty panel, no legend


# ------------------------------------------------------------------------------------- ROC


def test_roc_auc_in_legend_equals_sklearn() -> None:
    labels, probs = _predictions()
    expected = roc_auc_score(labels, probs)
    fpr, tpr, area = roc_curve(labels, probs)
    assert area == pytest.approx(expected, abs=1e-12)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert len(fpr) == len(np.unique(probs)) + 1  # tied scores make one point

    ax = roc_figure(labels, probs).axes[0]
    legend = _legend_texts(ax)[0]
    shown = float(re.search(r"AUC ([0-9.]+)", legend).group(1))
    assert shown == pytest.approx(expected, abs=1e-6)
    assert ax.get_xlabel() == "false positive rate" and ax.get_ylabel() == "true positive rate"


def test_roc_of_a_large_evaluation_draws_a_bounded_curve() -> None:
    labels, probs = _predictions(n=50_000)
    probs = probs + np.random.default_rng(1).random(len(probs)) * 1e-3  # all distinct
    ax = roc_figure(labels, probs).axes[0]
    assert len(ax.lines[0].get_xdata()) <= plots._CURVE_POINTS
    shown = float(re.search(r"AUC ([0-9.]+)", _legend_texts(ax)[0]).group(1))
    assert shown == pytest.approx(roc_auc_score(labels, probs), abs=1e-6)


def test_roc_of_one_class_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="both classes; all 3 labels are 1"):
        roc_curve(np.ones(3), np.array([0.1, 0.5, 0.9]))


# ----------------------------------------------------------------------------- calibration


def test_reliability_counts_and_rates_per_bin() -> None:
    labels, probs = _predictions()
    probs[:3] = [0.0, 1.0, 0.999]  # the edges land in the first and last bins
    fig = reliability_figure(labels, probs, bins=10)
    top, bottom = fig.axes
    heights = [bar.get_height() for bar in bottom.patches]
    assert len(heights) == 10
    assert sum(heights) == len(probs)
    # the probabilities have 2 decimals: bins are their hundredths' tens, an edge opens a bin
    which = np.minimum(np.round(probs * 100).astype(int) // 10, 9)
    assert heights == [int((which == b).sum()) for b in range(10)]
    model = top.lines[1]
    filled = [b for b in range(10) if (which == b).any()]
    np.testing.assert_allclose(
        model.get_ydata(), [labels[which == b].mean() for b in filled], atol=1e-12
    )
    np.testing.assert_allclose(
        model.get_xdata(), [probs[which == b].mean() for b in filled], atol=1e-12
    )
    assert f"{probs.sum() / labels.sum():.4f}" in top.get_title()


def test_prediction_histogram_splits_rows_by_label() -> None:
    labels, probs = _predictions()
    ax = prediction_histogram_figure(labels, probs).axes[0]
    n1 = int(labels.sum())
    assert _legend_texts(ax) == [
        f"label 0: not clicked ({len(labels) - n1:,})",
        f"label 1: clicked ({n1:,})",
    ]
    assert ax.get_xlabel() == "predicted click probability"


# ------------------------------------------------------------------------ embedding tables


def test_row_norms_skip_the_missing_id_row_across_chunks() -> None:
    rows = plots._NORM_CHUNK_ROWS + 7  # two chunks
    table = np.random.default_rng(0).normal(size=(rows, 4)).astype(np.float32)
    expected = np.linalg.norm(table[1:], axis=1)
    np.testing.assert_allclose(row_norms(table), expected, rtol=1e-6)
    half = torch.from_numpy(table).half()
    np.testing.assert_allclose(
        row_norms(half), np.linalg.norm(half.float().numpy()[1:], axis=1), rtol=1e-6
    )
    assert row_norms(np.zeros((1, 4))).shape == (0,)


def test_embedding_norms_one_histogram_per_table() -> None:
    rng = np.random.default_rng(0)
    tables = {
        "user_id": torch.from_numpy(rng.normal(size=(2000, 8)).astype(np.float32)),
        "item_id": rng.normal(size=(65, 8)),
        "gender": rng.normal(size=(4, 8)),
        "genres": rng.normal(size=(33, 16)),
    }
    fig = embedding_norms_figure(tables, bins=20, columns=3)
    axes = _visible_axes(fig)
    assert len(axes) == 4 and len(fig.axes) == 6  # a 2 x 3 grid, two cells hidden
    for ax, name in zip(axes, sorted(tables), strict=True):
        assert ax.get_title().startswith(f"{name} ({tables[name].shape[0] - 1:,} rows x")
        assert len(ax.patches) == 20
        assert sum(p.get_height() for p in ax.patches) == tables[name].shape[0] - 1
    scales = {ax.get_title().split()[0]: ax.get_yscale() for ax in axes}
    assert scales["user_id"] == "log" and scales["gender"] == "linear"


# ------------------------------------------------------------------------------ collisions


def _stats() -> DatasetStats:
    def sparse(name: str, distinct: float, buckets: int, rate: float) -> FeatureStats:
        return FeatureStats(name, "id", name, rows=1234, distinct=distinct, table=name,
                            num_buckets=buckets, collision_rate=rate)  # fmt: skip

    dense = FeatureStats("age", "dense", "age", rows=1234, values={"mean": 30.0})
    shared = sparse("seller_id", 50, 512, 0.83)
    shared.table = "user_id"  # ids of both features hash into one table
    features = [sparse("user_id", 900, 512, 0.83), dense, sparse("gender", 2, 4, 1 / 3), shared]
    return DatasetStats(path="train.parquet", rows=1234, features=features)


def test_collision_figure_one_bar_per_sparse_feature() -> None:
    ax = collision_figure(_stats()).axes[0]
    widths = [bar.get_width() for bar in ax.patches]
    np.testing.assert_allclose(widths, [83.0, 100 / 3, 83.0])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["user_id", "gender", "seller_id"]
    assert "estimated from a sample of 1,234 rows" in ax.get_title()
    labels = [t.get_text() for t in ax.texts]
    assert labels[0] == "83.0%  (900 ids / 512 buckets)"
    assert labels[2] == "83.0%  (50 ids / 512 buckets of table user_id)"
    assert max(ax.get_xticks()) <= 100


def test_collision_stats_read_a_capped_sample(tiny_log, tmp_path: Path) -> None:
    cfg = load_config(tiny_log.overrides, output_dir=str(tmp_path / "out"))
    stats = collision_stats(cfg.data, validate(cfg), max_rows=500)
    assert stats.rows == 500
    rates = {f.name: f.collision_rate for f in stats.features if f.collision_rate is not None}
    assert {"user_id", "item_id", "gender"} <= set(rates)
    assert all(0.0 <= r <= 1.0 for r in rates.values())
    title = collision_figure(stats).axes[0].get_title()
    assert "sample of 500 rows" in title


# --------------------------------------------------------------------------------- the run


def test_run_figures_skips_what_it_has_no_data_for(caplog: pytest.LogCaptureFixture) -> None:
    history = [{"step": 1.0, "train/loss": 0.7}]
    assert set(run_figures(history)) == {"plots/learning_curves.png"}
    labels = np.ones(10)  # one class: no ROC, but the other plots of the predictions
    with caplog.at_level(logging.WARNING, logger="recsys.train.plots"):
        figures = run_figures(history, labels, np.linspace(0, 1, 10))
    assert set(figures) == {
        "plots/learning_curves.png",
        "plots/reliability.png",
        "plots/predictions.png",
    }
    assert "could not draw plots/roc.png" in caplog.text
    assert "both classes" in caplog.text


@pytest.mark.slow
def test_run_figures_of_a_tiny_run_write_pngs(tiny_log, tmp_path: Path) -> None:
    cfg = load_config(
        tiny_log.overrides + ["tracking=none", "trainer.epochs=1", "trainer.eval_every_n_steps=10"],
        output_dir=str(tmp_path / "out"),
    )
    result = run(cfg)
    predictions = pq.read_table(result.predictions_path)
    row_ids, probs = predictions["row_id"].to_numpy(), predictions["prob"].to_numpy()
    labels = pq.read_table(tiny_log.eval)["label"].to_numpy()[row_ids]  # row id = position
    tables = {
        p.stem: np.load(p, mmap_mode="r")
        for p in (result.export_dir / "tables").glob("*.npy")
        if not p.stem.endswith("__first_order")
    }
    stats = collision_stats(cfg.data, validate(cfg), max_rows=2000)

    figures = run_figures(result.history, labels, probs, tables, stats)

    assert set(figures) == {
        f"plots/{name}.png"
        for name in ("learning_curves", "roc", "reliability", "predictions")
        + ("embedding_norms", "collisions")
    }
    shown = float(
        re.search(r"AUC ([0-9.]+)", _legend_texts(figures["plots/roc.png"].axes[0])[0])[1]
    )
    assert shown == pytest.approx(result.metrics["eval/auc"], abs=1e-6)
    for name, fig in figures.items():
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        fig.savefig(path)
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1024, name
