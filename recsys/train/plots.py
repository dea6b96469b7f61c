"""Figures of one training run, built from plain data (no MLflow here; the recipe logs them).

Each `*_figure` function is pure: numpy arrays (or tensors), the run's history or dataset
statistics in, a `matplotlib.figure.Figure` out. Figures are made with `Figure()` rather than
`pyplot`, so no GUI backend is touched (headless training, notebooks alike) and nothing is kept
in pyplot's global registry: a figure's memory goes when its last reference does.

`run_figures` gathers every figure the end of a run has data for, by artifact file name.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from recsys.config import DataConfig
from recsys.data.stats import DatasetStats, FeatureStats, StatsOptions, compute_stats
from recsys.schema import Schema

log = logging.getLogger(__name__)

# Rows read to estimate distinct ids per feature: enough for a stable HyperLogLog estimate of
# the ids a table sees often, cheap enough (seconds) to run at the end of every run.
COLLISION_SAMPLE_ROWS = 200_000
_NORM_CHUNK_ROWS = 1 << 16  # rows converted to float32 at a time: bounds memory on big tables
_DPI = 100
_CURVE_POINTS = 2001  # vertices drawn of a ROC curve (its AUC uses every threshold)


# -------------------------------------------------------------------------- learning curves


def learning_curves_figure(history: Sequence[Mapping[str, float]]) -> Figure:
    """Loss and AUC by step: training (over each log window) and validation.

    Args:
        history: `TrainResult.history`: dicts with "step" and metrics such as "train/loss",
            "train/auc", "valid/log_loss" / "valid/auc" (or "eval/..." when validation reads
            the eval rows).
    """
    held_out = "valid" if any(k.startswith("valid/") for h in history for k in h) else "eval"
    fig = Figure(figsize=(10, 4), dpi=_DPI)
    loss_ax, auc_ax = fig.subplots(1, 2)
    _plot_series(loss_ax, history, "train/loss", "train (loss)", marker=None)
    _plot_series(loss_ax, history, f"{held_out}/log_loss", f"{held_out} (log loss)", marker="o")
    loss_ax.set(title="Loss", xlabel="step", ylabel="log loss")
    _plot_series(auc_ax, history, "train/auc", "train", marker=None)
    _plot_series(auc_ax, history, f"{held_out}/auc", held_out, marker="o")
    auc_ax.set(title="AUC", xlabel="step", ylabel="AUC")
    for ax in (loss_ax, auc_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    return fig


def _plot_series(ax, history: Sequence[Mapping[str, float]], key: str, label: str, marker):
    points = [(h["step"], h[key]) for h in history if key in h and math.isfinite(h[key])]
    if points:
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, label=label, marker=marker, markersize=4)


# ------------------------------------------------------------------------ final evaluation


def roc_curve(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """False and true positive rates at every distinct threshold, and the area under them.

    Tied scores form one threshold (one diagonal step), so the area is the usual ROC AUC.
    Raises ValueError when the labels hold a single class (the curve is undefined).
    """
    y, p = _as_labels(labels), np.asarray(probs, dtype=np.float64).ravel()
    positives, n = int(y.sum()), len(y)
    if positives in (0, n):
        raise ValueError(f"ROC needs both classes; all {n} labels are {int(y[0]) if n else '-'}")
    order = np.argsort(-p, kind="stable")
    p, y = p[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(p)), n - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = last_of_tie + 1 - tp
    tpr = np.r_[0.0, tp / positives]
    fpr = np.r_[0.0, fp / (n - positives)]
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)  # trapezoids
    return fpr, tpr, area


def roc_figure(labels: np.ndarray, probs: np.ndarray) -> Figure:
    """The ROC curve with its AUC (6 decimals) in the legend, and the chance diagonal."""
    fpr, tpr, area = roc_curve(labels, probs)
    # A few thousand vertices draw the same picture as millions, at a fraction of the cost.
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), _CURVE_POINTS)).astype(int))
    fig = Figure(figsize=(5, 5), dpi=_DPI)
    ax = fig.subplots()
    ax.plot(fpr[keep], tpr[keep], label=f"model (AUC {area:.6f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance (AUC 0.5)")
    ax.set(
        title=f"ROC, final evaluation ({len(np.ravel(labels)):,} rows)",
        xlabel="false positive rate",
        ylabel="true positive rate",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def reliability_figure(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> Figure:
    """Calibration: mean predicted vs observed click rate per probability bin, over a bar of
    each bin's row count (so a point resting on few rows is seen as such)."""
    y, p = _as_labels(labels), np.asarray(probs, dtype=np.float64).ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Rounded first so that a probability on an edge (0.3 with 10 bins) opens the bin above.
    which = np.clip(np.floor(np.round(p * bins, 9)).astype(np.int64), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    filled = counts > 0
    predicted = np.bincount(which, weights=p, minlength=bins)[filled] / counts[filled]
    observed = np.bincount(which, weights=y, minlength=bins)[filled] / counts[filled]
    fig = Figure(figsize=(6, 6.5), dpi=_DPI)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    top.plot(predicted, observed, marker="o", label="model")
    ratio = p.sum() / y.sum() if y.sum() else math.nan
    top.set(
        title=f"Reliability, final evaluation\n(predicted / observed clicks {ratio:.4f})",
        ylabel="observed click rate",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    top.grid(alpha=0.3)
    top.legend(loc="upper left")
    bottom.bar(edges[:-1], counts, width=np.diff(edges), align="edge", edgecolor="white")
    bottom.set(xlabel="predicted click probability (bin)", ylabel="rows")
    if filled.any() and counts[filled].max() > 100 * counts[filled].min():
        bottom.set_yscale("log")  # CTR predictions pile up in a few bins
    fig.tight_layout()
    return fig


def prediction_histogram_figure(labels: np.ndarray, probs: np.ndarray, bins: int = 50) -> Figure:
    """Predicted probabilities of the clicked and the not-clicked rows, overlaid."""
    y, p = _as_labels(labels), np.asarray(probs, dtype=np.float64).ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    fig = Figure(figsize=(7, 4), dpi=_DPI)
    ax = fig.subplots()
    for value, name, color in ((0, "not clicked", "tab:blue"), (1, "clicked", "tab:orange")):
        rows = p[y == value]
        ax.hist(rows, bins=edges, histtype="stepfilled", alpha=0.45, color=color,
                label=f"label {value}: {name} ({len(rows):,})")  # fmt: skip
    ax.set(
        title="Predictions by label, final evaluation",
        xlabel="predicted click probability",
        ylabel="rows",
        xlim=(0, 1),
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def _as_labels(labels: np.ndarray) -> np.ndarray:
    y = np.asarray(labels, dtype=np.float64).ravel()
    return (y >= 0.5).astype(np.float64)  # labels arrive as 0/1 (float from the evaluator)


# ------------------------------------------------------------------------ embedding tables


def row_norms(table: Any) -> np.ndarray:
    """L2 norm of every row but row 0 (the missing-id row) of a [rows, dim] tensor or array.

    Converted to float32 a chunk at a time, so an fp16 or int table never doubles in memory.
    """
    rows = table.shape[0]
    out = np.empty(max(rows - 1, 0), dtype=np.float32)
    for start in range(1, rows, _NORM_CHUNK_ROWS):
        chunk = table[start : start + _NORM_CHUNK_ROWS]
        if isinstance(chunk, torch.Tensor):
            chunk = chunk.detach().to("cpu", torch.float32).numpy()
        out[start - 1 : start - 1 + len(chunk)] = np.linalg.norm(
            np.asarray(chunk, dtype=np.float32), axis=1
        )
    return out


def embedding_norms_figure(tables: Mapping[str, Any], bins: int = 50, columns: int = 3) -> Figure:
    """One histogram of row norms per embedding table (row 0, the missing-id row, left out).

    Counts go on a log scale once a bin holds 100 rows: rows no id ever reached stay at their
    initial norm and can outnumber the trained ones by orders of magnitude.
    """
    names = sorted(tables)
    columns = max(1, min(columns, len(names)))
    grid_rows = max(1, math.ceil(len(names) / columns))
    fig = Figure(figsize=(4 * columns, 2.8 * grid_rows + 0.6), dpi=_DPI)
    axes = np.atleast_1d(fig.subplots(grid_rows, columns, squeeze=False)).ravel()
    for ax, name in zip(axes, names, strict=False):
        norms = row_norms(tables[name])
        counts, _, _ = ax.hist(norms, bins=bins, color="tab:green")
        if counts.max(initial=0) >= 100:
            ax.set_yscale("log")
        dim = tables[name].shape[1]
        ax.set(title=f"{name} ({len(norms):,} rows x {dim})", xlabel="row L2 norm", ylabel="rows")
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.suptitle("Embedding row norms per table (row 0, the missing-id row, left out)")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------ collisions


def collision_stats(
    data: DataConfig, schema: Schema, max_rows: int = COLLISION_SAMPLE_ROWS
) -> DatasetStats:
    """Distinct ids and expected collision rates from the first `max_rows` training rows."""
    return compute_stats(data, schema, data.train_path, StatsOptions(max_rows=max_rows))


def collision_figure(stats: DatasetStats) -> Figure:
    """Expected hash-collision rate of every sparse feature, with its distinct ids and buckets.

    Args:
        stats: `compute_stats` of a sample of rows (see `collision_stats`); its row count is
            named in the title, since distinct counts grow with the sample.
    """
    features = [f for f in stats.features if f.collision_rate is not None]
    fig = Figure(figsize=(8, 1.2 + 0.45 * max(len(features), 1)), dpi=_DPI)
    ax = fig.subplots()
    names = [f.name for f in features]
    rates = [100.0 * f.collision_rate for f in features]
    bars = ax.barh(names, rates, color="tab:red")
    labels = [f"{r:.1f}%  ({f.distinct:,.0f} ids / {f.num_buckets:,} buckets{_shared(f)})"
              for r, f in zip(rates, features, strict=True)]  # fmt: skip
    ax.bar_label(bars, labels=labels, padding=3, fontsize=8)
    ax.invert_yaxis()  # schema order, top to bottom
    ax.set_xlim(0, max([1.0, *rates]) * 1.8)  # room for the labels right of the bars
    ax.set_xticks([t for t in ax.get_xticks() if 0 <= t <= 100])  # no ticks past 100%
    ax.set(
        title=f"Expected hash collision rate per sparse feature\n"
        f"(estimated from a sample of {stats.rows:,} rows)",
        xlabel="ids sharing their bucket with another id (%)",
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _shared(feature: FeatureStats) -> str:
    """Features that share a table share its buckets: the rate counts all of their ids."""
    return "" if feature.table in (None, feature.name) else f" of table {feature.table}"


# --------------------------------------------------------------------------------- the run


def run_figures(
    history: Sequence[Mapping[str, float]],
    labels: np.ndarray | None = None,
    probs: np.ndarray | None = None,
    tables: Mapping[str, Any] | None = None,
    stats: DatasetStats | None = None,
) -> dict[str, Figure]:
    """Every figure the inputs allow, by artifact file name ("plots/roc.png", ...).

    Inputs left None (no labels, no export, no statistics) skip their figures. A figure that
    fails is logged with its traceback and left out: plots must not fail a finished run.
    """
    makers: dict[str, Callable[[], Figure]] = {}
    if history:
        makers["plots/learning_curves.png"] = lambda: learning_curves_figure(history)
    if labels is not None and probs is not None and len(probs):
        makers["plots/roc.png"] = lambda: roc_figure(labels, probs)
        makers["plots/reliability.png"] = lambda: reliability_figure(labels, probs)
        makers["plots/predictions.png"] = lambda: prediction_histogram_figure(labels, probs)
    if tables:
        makers["plots/embedding_norms.png"] = lambda: embedding_norms_figure(tables)
    if stats is not None and any(f.collision_rate is not None for f in stats.features):
        makers["plots/collisions.png"] = lambda: collision_figure(stats)
    figures = {}
    for name, make in makers.items():
        try:
            figures[name] = make()
        except Exception:
            log.warning("could not draw %s; the run's other plots are kept", name, exc_info=True)
    return figures


__all__ = [
    "COLLISION_SAMPLE_ROWS",
    "collision_figure",
    "collision_stats",
    "embedding_norms_figure",
    "learning_curves_figure",
    "prediction_histogram_figure",
    "reliability_figure",
    "roc_curve",
    "roc_figure",
    "row_norms",
    "run_figures",
]
